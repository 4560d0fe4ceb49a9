//! The host agent's relay: the pod agent on the same node sends its polls and reports
//! here (to the node IP, a local delivery that needs no forwarding, no NAT and no overlay),
//! and the host agent passes them on to the coordinator over the node's underlay. So an
//! overlay, forwarding or NAT fault on a node, or a conntrack flush, cannot silence the
//! reports that describe it.
//!
//! The host agent advertises the relay's port when it polls (`relayPort`), and the
//! coordinator puts the relay's address in the pod agent's plan ([`Plan::relay`]): a pod
//! agent started with the coordinator's URL switches to the relay after its first plan.
//!
//! The relay is bounded like the coordinator ([`meshprobe_serve`], [`Limits::relay`]): it
//! listens on the node IP, admits connections only from this node's own pod range (which
//! the host agent reads from the coordinator at start, [`learn_pod_range`], and then from
//! each plan, [`Plan::pod_cidr`]; nobody before either answered), and gives
//! every connection deadlines and byte caps, so that a pod on another node, or a slow or
//! idle client, cannot take the node's agent down.
//!
//! Answers are streamed through as they arrive, so a heartbeat-streamed poll keeps its
//! heartbeat end to end: the pod agent notices a dead upstream as fast as a host agent.
//!
//! [`Plan::relay`]: meshprobe_core::plan::Plan::relay
//! [`Plan::pod_cidr`]: meshprobe_core::plan::Plan::pod_cidr
//! [`Limits::relay`]: meshprobe_serve::Limits::relay

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use meshprobe_core::api::{self, ApiError};

use crate::transport::{self, Base, TlsConfig};

/// Reports larger than this are refused (a 5,000-node report is under 2 MiB).
pub const MAX_BODY: usize = 8 << 20;

/// How long the relay waits for the coordinator's answer to begin: a v1 long poll holds
/// its answer up to a minute; everything else answers at once.
const UPSTREAM_HEAD: Duration = Duration::from_secs(75);

#[derive(Clone)]
struct Relay {
    upstream: Base,
    url: String,
}

/// The relay's routes: only what a pod agent needs, nothing else of the coordinator API.
pub fn router(
    upstream: &str,
    tls: Option<&TlsConfig>,
    server_name: Option<&str>,
) -> Result<Router, transport::TransportError> {
    let url = upstream.trim_end_matches('/').to_owned();
    let relay = Relay {
        upstream: transport::parse_base(&url, tls, server_name)?,
        url,
    };
    Ok(Router::new()
        .route(api::NEXT_PATTERN, get(poll))
        .route(api::REPORTS, post(forward))
        .route(api::REPORTS_OFFLINE, post(forward))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(relay))
}

/// Which clients the relay admits: addresses in this node's pod range, once a plan has
/// named it. Cheap to clone; the agent loop updates it from each plan.
#[derive(Clone, Debug, Default)]
pub struct Admission(Arc<RwLock<Option<meshprobe_core::PodCidr>>>);

impl Admission {
    /// Admits clients from `range` from now on.
    pub fn set(&self, range: Option<meshprobe_core::PodCidr>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = range;
    }

    /// Admits clients from `range`, unless a range is already set (a plan's is newer than
    /// the topology read at start).
    pub fn set_if_unset(&self, range: meshprobe_core::PodCidr) {
        let mut r = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if r.is_none() {
            *r = Some(range);
        }
    }

    /// Whether a client at `ip` is served.
    pub fn admits(&self, ip: IpAddr) -> bool {
        let IpAddr::V4(ip) = ip else {
            return false;
        };
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|r| r.net().contains(&ip))
    }
}

/// Asks the coordinator for `node`'s pod range until it answers, and admits it, unless a
/// plan got there first.
pub async fn learn_pod_range(
    client: crate::client::CoordinatorClient,
    node: meshprobe_core::NodeName,
    admission: Admission,
) {
    let mut wait = crate::agent::FIRST_BACKOFF;
    loop {
        match client.node(&node, std::time::Duration::from_secs(10)).await {
            Ok(answer) => {
                admission.set_if_unset(answer.pod_cidr);
                tracing::info!(pod_cidr = %answer.pod_cidr, "relay admits this node's pods");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read this node's pod range yet");
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(crate::agent::MAX_BACKOFF);
    }
}

/// Serves the relay on `listener` with [`meshprobe_serve::Limits::relay`], admitting the
/// clients `admission` names, until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    upstream: String,
    options: crate::client::ClientOptions,
    admission: Admission,
) -> Result<(), transport::TransportError> {
    serve_with(
        listener,
        upstream,
        options,
        admission,
        meshprobe_serve::Limits::relay(),
    )
    .await
}

/// [`serve`] with other bounds (tests shorten the deadlines).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    upstream: String,
    options: crate::client::ClientOptions,
    admission: Admission,
    limits: meshprobe_serve::Limits,
) -> Result<(), transport::TransportError> {
    let app = router(
        &upstream,
        options.tls.as_ref(),
        options.server_name.as_deref(),
    )?;
    let listener = meshprobe_serve::BoundedListener::new(listener, limits)
        .admit(Arc::new(move |ip| admission.admits(ip)));
    meshprobe_serve::serve(listener, app, std::future::pending()).await;
    Ok(())
}

/// Binds the relay's address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

fn refuse(status: StatusCode, error: String) -> Response {
    (status, Json(ApiError { error })).into_response()
}

async fn poll(
    State(relay): State<Relay>,
    Path((_node, kind)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    // Only pod agents' polls: the relay is not a way into the rest of the API.
    if kind != "pod" {
        return refuse(
            StatusCode::NOT_FOUND,
            "the relay forwards pod agents' polls only".to_owned(),
        );
    }
    pass(&relay, Method::GET, &uri, &headers, None).await
}

async fn forward(
    State(relay): State<Relay>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Pass the content type through as the client sent it: the coordinator judges it.
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    pass(&relay, method, &uri, &headers, Some((ct, body))).await
}

async fn pass(
    relay: &Relay,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Option<(String, Bytes)>,
) -> Response {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let body = body.as_ref().map(|(ct, b)| (ct.as_str(), b.clone()));
    let auth = headers.get(header::AUTHORIZATION);
    match transport::open(&relay.upstream, method, path, body, auth, UPSTREAM_HEAD).await {
        Ok(resp) => {
            let (parts, incoming) = resp.into_parts();
            let mut out = Response::new(Body::new(incoming));
            *out.status_mut() = parts.status;
            // The content type, and an overloaded coordinator's Retry-After: the pod
            // agent behind the relay is told to back off like any other agent.
            for name in [header::CONTENT_TYPE, header::RETRY_AFTER] {
                if let Some(v) = parts.headers.get(&name) {
                    out.headers_mut().insert(name, v.clone());
                }
            }
            out
        }
        Err(e) => {
            tracing::warn!(upstream = %relay.url, error = %e, "relay: coordinator unreachable");
            refuse(
                StatusCode::BAD_GATEWAY,
                format!("relay: coordinator {} unreachable: {e}", relay.url),
            )
        }
    }
}
