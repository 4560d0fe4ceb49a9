//! The host agent's relay: the pod agent on the same node sends its polls and reports
//! here (to the node IP, a local delivery that needs no forwarding and no overlay), and
//! the host agent passes them on to the coordinator over the node's underlay. So an
//! overlay or forwarding fault on a node cannot silence the reports that describe it.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

/// Reports larger than this are refused (a 5,000-node report is under 2 MiB).
pub const MAX_BODY: usize = 8 << 20;

#[derive(Clone)]
struct Relay {
    upstream: String,
    http: reqwest::Client,
}

/// The relay's routes: only what a pod agent needs, nothing else of the coordinator API.
pub fn router(upstream: &str) -> Router {
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new());
    let relay = Relay {
        upstream: upstream.trim_end_matches('/').to_owned(),
        http,
    };
    Router::new()
        .route("/v1/agents/{node}/pod/next", get(forward))
        .route("/v1/reports", post(forward))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(relay)
}

/// Serves the relay on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, upstream: String) -> std::io::Result<()> {
    axum::serve(listener, router(&upstream)).await
}

/// Binds the relay's address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

async fn forward(
    State(relay): State<Relay>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("{}{path}", relay.upstream);
    let mut req = relay.http.request(method, &url).body(body);
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        req = req.header(header::CONTENT_TYPE, ct);
    }
    match req.send().await {
        Ok(resp) => {
            let status =
                StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let ct = resp.headers().get(header::CONTENT_TYPE).cloned();
            let bytes = resp.bytes().await.unwrap_or_default();
            let mut out = (status, bytes).into_response();
            if let Some(ct) = ct {
                out.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            out
        }
        Err(e) => {
            tracing::warn!(upstream = %relay.upstream, error = %e, "relay: coordinator unreachable");
            let mut out = (
                StatusCode::BAD_GATEWAY,
                format!("relay: coordinator unreachable: {e}"),
            )
                .into_response();
            out.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            out
        }
    }
}
