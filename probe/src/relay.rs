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
}

/// The relay's routes: only what a pod agent needs, nothing else of the coordinator API.
pub fn router(upstream: &str) -> Router {
    let relay = Relay {
        upstream: upstream.trim_end_matches('/').to_owned(),
    };
    Router::new()
        .route("/v1/agents/{node}/pod/next", get(forward))
        .route("/v1/reports", post(forward))
        .route("/v1/reports/offline", post(forward))
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
    // Pass the content type through as the client sent it: the coordinator judges it.
    let payload = (!body.is_empty()).then(|| {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream");
        (ct.to_owned(), body)
    });
    // Long polls wait up to a minute upstream; give them that and a margin.
    match crate::transport::send(
        &relay.upstream,
        method,
        path,
        payload,
        Duration::from_secs(75),
    )
    .await
    {
        Ok(a) => {
            let mut out = (a.status, a.body).into_response();
            if let Some(ct) = a.content_type {
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
