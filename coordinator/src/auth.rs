//! Who is talking: every request's credential, checked before a handler runs, and what
//! each kind of caller may do.
//!
//! | route | who |
//! |---|---|
//! | `/healthz`, `/readyz` | anyone (the kubelet's probes) |
//! | agents' polls, reports, offline reports | the cluster secret, or the node's own credential (static: [`meshprobe_core::auth`]; Kubernetes: a ServiceAccount token of an agent pod on that node, [`TokenReviewer`]) |
//! | `POST /v1/rounds` (and every other write) | the cluster secret or an operator credential |
//! | every other `GET` (reports, topology, `/metrics`) | anyone, unless reads are closed; then any valid credential |
//!
//! A missing or invalid credential gets 401 with `WWW-Authenticate: Bearer`; a valid one
//! that does not cover the request gets 403. With [`Auth::insecure`] (`--insecure-no-auth`)
//! nothing is checked, and every round says so in its warnings.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use meshprobe_core::NodeName;
use meshprobe_core::api as wire;
use meshprobe_core::auth::{ClusterSecret, Subject, Verified, is_derived_credential};

use crate::rounds::Coordinator;

/// Longest `Authorization` header value read (a projected ServiceAccount token is about
/// 1 KiB).
pub const MAX_CREDENTIAL: usize = 8192;

/// Who made a request, as far as the coordinator could tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No credential, on a route that needs none.
    Anonymous,
    /// Authentication is off (`--insecure-no-auth`).
    Insecure,
    /// The cluster secret itself.
    Cluster,
    /// A node's agents (a node credential, or an agent pod's ServiceAccount token).
    Node(NodeName),
    /// An operator credential.
    Operator(String),
}

impl Caller {
    /// Whether this caller may poll and report as `node`'s agents.
    pub fn may_act_for(&self, node: &NodeName) -> bool {
        match self {
            Caller::Insecure | Caller::Cluster => true,
            Caller::Node(n) => n == node,
            Caller::Anonymous | Caller::Operator(_) => false,
        }
    }

    /// Whether this caller may start rounds (and make other operator writes).
    pub fn may_operate(&self) -> bool {
        matches!(
            self,
            Caller::Insecure | Caller::Cluster | Caller::Operator(_)
        )
    }

    /// The 403 message for a caller acting for `node` without the right.
    pub fn not_for(&self, node: &NodeName) -> String {
        match self {
            Caller::Node(n) => {
                format!("this credential is node {n}'s; it cannot poll or report for node {node}")
            }
            other => format!(
                "{other} cannot poll or report for node {node}; agents need their node's credential"
            ),
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Anonymous => f.write_str("an anonymous caller"),
            Caller::Insecure => f.write_str("anyone (authentication is off)"),
            Caller::Cluster => f.write_str("the cluster secret"),
            Caller::Node(n) => write!(f, "node {n}'s credential"),
            Caller::Operator(n) => write!(f, "operator {n}'s credential"),
        }
    }
}

/// A token the API server could not vouch for.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The API server says the token is not valid (expired, wrong audience, deleted pod).
    #[error("the API server did not authenticate the token: {0}")]
    Rejected(String),
    /// Authenticated, but not as a meshprobe agent pod the coordinator knows.
    #[error("{0}")]
    NotAnAgent(String),
    /// The API server could not be asked.
    #[error("cannot verify the token (TokenReview failed): {source}")]
    Unavailable {
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A future a [`TokenReviewer`] returns.
pub type ReviewFuture<'a> =
    Pin<Box<dyn Future<Output = Result<NodeName, ReviewError>> + Send + 'a>>;

/// Verifies a Kubernetes ServiceAccount token and says which node the agent pod it was
/// issued to runs on ([`crate::kube_auth`]).
pub trait TokenReviewer: Send + Sync {
    /// The node whose agent presented `token`.
    fn review<'a>(&'a self, token: &'a str) -> ReviewFuture<'a>;
}

/// Why a request was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthFailure {
    /// No `Authorization: Bearer` header.
    #[error(
        "this coordinator requires a credential: pass --token-file FILE (the cluster secret, or a credential from `meshprobe credential`)"
    )]
    Missing,
    /// A header that is not `Bearer <token>`, or too long.
    #[error(
        "the Authorization header must be `Bearer <credential>` of at most {MAX_CREDENTIAL} bytes"
    )]
    Malformed,
    /// A credential that this coordinator does not accept.
    #[error("the credential is not valid for this coordinator")]
    Invalid,
    /// A ServiceAccount token that was not verified.
    #[error(transparent)]
    Review(#[from] ReviewError),
}

/// The coordinator's authentication settings.
#[derive(Clone)]
pub struct Auth {
    insecure: bool,
    secret: Option<ClusterSecret>,
    reviewer: Option<Arc<dyn TokenReviewer>>,
    closed_reads: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("insecure", &self.insecure)
            .field("secret", &self.secret.is_some())
            .field("reviewer", &self.reviewer.is_some())
            .field("closed_reads", &self.closed_reads)
            .finish()
    }
}

impl Default for Auth {
    /// Authentication off: what `Settings::default()` (tests, embedding) uses. The binary
    /// always sets it from its flags, and refuses to start with neither credentials nor
    /// `--insecure-no-auth`.
    fn default() -> Self {
        Self::insecure()
    }
}

impl Auth {
    /// No authentication (`--insecure-no-auth`): every request is allowed.
    pub fn insecure() -> Self {
        Self {
            insecure: true,
            secret: None,
            reviewer: None,
            closed_reads: false,
        }
    }

    /// Credentials required: the cluster secret and the credentials derived from it, and,
    /// with a reviewer, Kubernetes ServiceAccount tokens of agent pods.
    pub fn required(
        secret: Option<ClusterSecret>,
        reviewer: Option<Arc<dyn TokenReviewer>>,
    ) -> Self {
        Self {
            insecure: false,
            secret,
            reviewer,
            closed_reads: false,
        }
    }

    /// Reads need a credential too.
    pub fn with_closed_reads(mut self, closed: bool) -> Self {
        self.closed_reads = closed;
        self
    }

    /// Whether authentication is off.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// Who sent `headers`.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthFailure> {
        if self.insecure {
            return Ok(Caller::Insecure);
        }
        let token = bearer(headers)?.ok_or(AuthFailure::Missing)?;
        if let Some(secret) = &self.secret {
            match secret.verify(token.as_bytes()) {
                Ok(Verified::Cluster) => return Ok(Caller::Cluster),
                Ok(Verified::Subject(Subject::Node(n))) => return Ok(Caller::Node(n)),
                Ok(Verified::Subject(Subject::Operator(n))) => return Ok(Caller::Operator(n)),
                Err(_) if is_derived_credential(token.as_bytes()) => {
                    return Err(AuthFailure::Invalid);
                }
                Err(_) => {}
            }
        }
        match &self.reviewer {
            Some(r) if !is_derived_credential(token.as_bytes()) => {
                Ok(Caller::Node(r.review(token).await?))
            }
            _ => Err(AuthFailure::Invalid),
        }
    }
}

/// The bearer token of `headers`, if any.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, AuthFailure> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    if v.len() > MAX_CREDENTIAL {
        return Err(AuthFailure::Malformed);
    }
    let v = v.to_str().map_err(|_| AuthFailure::Malformed)?;
    let (scheme, token) = v.split_once(' ').ok_or(AuthFailure::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthFailure::Malformed);
    }
    Ok(Some(token.trim()))
}

/// What a route needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// Liveness and readiness: nothing.
    Open,
    /// Reading results.
    Read,
    /// An agent's poll or report (the handler checks the node).
    Agent,
    /// Starting rounds and every other write.
    Operate,
}

fn access(method: &Method, path: &str) -> Access {
    if path == wire::HEALTHZ || path == wire::READYZ {
        return Access::Open;
    }
    let agent_poll = path.starts_with("/v1/agents/") && path.ends_with("/next");
    let agent_write = path == wire::REPORTS || path == wire::REPORTS_OFFLINE;
    match *method {
        // HEAD is GET without the body: the same credential, so the same 401 without one.
        Method::GET | Method::HEAD if agent_poll => Access::Agent,
        // Raw agent reports, however reads are set: operators only.
        Method::GET | Method::HEAD if path == wire::REPORTS_OFFLINE => Access::Operate,
        Method::GET | Method::HEAD => Access::Read,
        Method::POST if agent_write => Access::Agent,
        _ => Access::Operate,
    }
}

fn refuse(status: StatusCode, message: String) -> Response {
    let mut r = (status, axum::Json(wire::ApiError { error: message })).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"meshprobe\""),
        );
    }
    r
}

/// The middleware: authenticates, refuses what the caller may not do, and hands the
/// handlers the [`Caller`] (an extension) for the node checks only they can make.
pub async fn layer(State(c): State<Arc<Coordinator>>, mut req: Request, next: Next) -> Response {
    let access = access(req.method(), req.uri().path());
    if access == Access::Open {
        return next.run(req).await;
    }
    let auth = c.auth();
    let caller = match auth.authenticate(req.headers()).await {
        Ok(caller) => caller,
        Err(AuthFailure::Missing) if access == Access::Read && !auth.closed_reads => {
            Caller::Anonymous
        }
        Err(e @ AuthFailure::Review(ReviewError::Unavailable { .. })) => {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        }
        Err(e) => {
            tracing::debug!(path = req.uri().path(), error = %e, "request refused");
            return refuse(StatusCode::UNAUTHORIZED, e.to_string());
        }
    };
    if access == Access::Operate && !caller.may_operate() {
        return refuse(
            StatusCode::FORBIDDEN,
            format!(
                "{caller} cannot start rounds or change the coordinator; that takes the cluster secret or an operator credential (`meshprobe credential --operator NAME`)"
            ),
        );
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_what_they_need() {
        assert_eq!(access(&Method::GET, "/healthz"), Access::Open);
        assert_eq!(access(&Method::GET, "/v1/agents"), Access::Read);
        assert_eq!(access(&Method::GET, "/metrics"), Access::Read);
        assert_eq!(
            access(&Method::GET, "/v1/agents/n1/host/next"),
            Access::Agent
        );
        assert_eq!(
            access(&Method::HEAD, "/v1/agents/n1/host/next"),
            Access::Agent,
            "issue 22, row 10: HEAD without a token got 403, not 401"
        );
        assert_eq!(access(&Method::POST, "/v1/reports"), Access::Agent);
        assert_eq!(access(&Method::POST, "/v1/reports/offline"), Access::Agent);
        assert_eq!(access(&Method::GET, "/v1/reports/offline"), Access::Operate);
        assert_eq!(access(&Method::POST, "/v1/rounds"), Access::Operate);
        assert_eq!(access(&Method::DELETE, "/v1/rounds/3"), Access::Operate);
    }

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(v).expect("header"),
        );
        h
    }

    #[tokio::test]
    async fn static_credentials() {
        let secret = ClusterSecret::from_bytes(b"0123456789abcdef0123").expect("secret");
        let n1 = NodeName::new("n1").expect("name");
        let cred = secret.credential(&Subject::Node(n1.clone()));
        let auth = Auth::required(Some(secret), None);
        let caller = auth
            .authenticate(&headers(&format!("Bearer {cred}")))
            .await
            .expect("valid");
        assert_eq!(caller, Caller::Node(n1.clone()));
        assert!(caller.may_act_for(&n1));
        assert!(!caller.may_act_for(&NodeName::new("n2").expect("name")));
        assert!(!caller.may_operate());
        assert_eq!(
            auth.authenticate(&headers("Bearer 0123456789abcdef0123"))
                .await
                .expect("secret"),
            Caller::Cluster
        );
        assert!(matches!(
            auth.authenticate(&HeaderMap::new()).await,
            Err(AuthFailure::Missing)
        ));
        assert!(matches!(
            auth.authenticate(&headers("Basic Zm9vOmJhcg==")).await,
            Err(AuthFailure::Malformed)
        ));
        assert!(matches!(
            auth.authenticate(&headers("Bearer 0123456789abcdef0124"))
                .await,
            Err(AuthFailure::Invalid)
        ));
        assert!(matches!(
            auth.authenticate(&headers(&format!("Bearer {}", cred.replace("n1", "n2"))))
                .await,
            Err(AuthFailure::Invalid)
        ));
    }
}
