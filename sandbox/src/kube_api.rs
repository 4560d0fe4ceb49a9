//! A fake Kubernetes API server that speaks the real wire format, for tests and for
//! `meshprobe lab up --kube-api`: lists, newline-delimited watch streams that resume from
//! a resource version, label and field selectors, `Status` errors, 410 Gone, create, merge
//! patches, and server-side apply with field ownership and conflicts (what leader election
//! on a Lease relies on).
//!
//! It also answers `TokenReview`s for the ServiceAccount tokens it issued
//! ([`FakeApi::issue_token`]), with the pod claims a real API server adds to projected
//! tokens.
//!
//! It is a fixture, not an API server: no authentication of its own clients, no admission, no validation
//! beyond what the clients under test depend on. Strategic-merge patches are applied as
//! JSON merge patches (the same thing for the maps-only objects patched here). What it
//! serves at the start comes from [`lab_objects`] for the sandbox, or from the test.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::addr::{
    CLUSTER_CIDR, INGRESS_HOST, KUBE_DNS_SVC, LabPlan, NODE_PORT, PodKind, VXLAN_PORT, WEB_PORT,
    WEB_SVC,
};

/// A resource type the fake serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Resource {
    plural: &'static str,
    kind: &'static str,
    api_version: &'static str,
    namespaced: bool,
}

const RESOURCES: [Resource; 7] = [
    Resource {
        plural: "nodes",
        kind: "Node",
        api_version: "v1",
        namespaced: false,
    },
    Resource {
        plural: "pods",
        kind: "Pod",
        api_version: "v1",
        namespaced: true,
    },
    Resource {
        plural: "services",
        kind: "Service",
        api_version: "v1",
        namespaced: true,
    },
    Resource {
        plural: "configmaps",
        kind: "ConfigMap",
        api_version: "v1",
        namespaced: true,
    },
    Resource {
        plural: "ingresses",
        kind: "Ingress",
        api_version: "networking.k8s.io/v1",
        namespaced: true,
    },
    Resource {
        plural: "leases",
        kind: "Lease",
        api_version: "coordination.k8s.io/v1",
        namespaced: true,
    },
    Resource {
        plural: "events",
        kind: "Event",
        api_version: "v1",
        namespaced: true,
    },
];

fn resource_of_kind(kind: &str) -> Option<Resource> {
    RESOURCES.iter().copied().find(|r| r.kind == kind)
}

/// Who owns a field: the field manager and whether it applied (server-side apply) or
/// updated (create, patch) it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Owner {
    manager: String,
    applied: bool,
}

/// One stored object and the owners of its leaf fields (dotted paths).
#[derive(Clone, Debug)]
struct Stored {
    object: Value,
    owners: BTreeMap<String, Owner>,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    /// (plural, namespace or "", name) -> object.
    objects: BTreeMap<(&'static str, String, String), Stored>,
    /// Watch events, oldest first: (resource version, plural, event).
    events: Vec<(u64, &'static str, Value)>,
}

/// The fake API's state. Share it as `Arc<FakeApi>`; [`FakeApi::router`] serves it.
pub struct FakeApi {
    inner: Mutex<Inner>,
    /// Bumped on every write and on going down, to wake open watches.
    changed: watch::Sender<u64>,
    down: AtomicBool,
    /// Watches from before this resource version get 410 Gone.
    compacted: AtomicU64,
    watches: AtomicU64,
    /// Issued ServiceAccount tokens: token -> what it was issued for.
    tokens: Mutex<BTreeMap<String, Issued>>,
    reviews: AtomicU64,
}

/// What a fake ServiceAccount token was issued for (a projected token of a pod).
#[derive(Clone, Debug)]
struct Issued {
    namespace: String,
    pod: String,
    service_account: String,
    audience: String,
}

/// The API group path of TokenReview.
const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// How long the fake holds a watch open before ending it (the client then re-watches from
/// its last resource version). Real servers hold it for the client's `timeoutSeconds`.
const WATCH_HOLD: Duration = Duration::from_secs(20);

impl FakeApi {
    /// A fake API holding `objects` (each with `kind`, `metadata.name` and, when
    /// namespaced, `metadata.namespace`). Objects of kinds it does not serve are an error.
    pub fn new(objects: impl IntoIterator<Item = Value>) -> Result<Arc<Self>, String> {
        let api = Arc::new(Self {
            inner: Mutex::new(Inner {
                rv: 1000,
                ..Inner::default()
            }),
            changed: watch::channel(0).0,
            down: AtomicBool::new(false),
            compacted: AtomicU64::new(0),
            watches: AtomicU64::new(0),
            tokens: Mutex::new(BTreeMap::new()),
            reviews: AtomicU64::new(0),
        });
        for o in objects {
            api.apply(o)?;
        }
        Ok(api)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds or replaces an object, as a controller's update would, and records the watch
    /// event (ADDED or MODIFIED).
    pub fn apply(&self, obj: Value) -> Result<(), String> {
        let kind = obj["kind"].as_str().unwrap_or_default();
        let res = resource_of_kind(kind).ok_or_else(|| format!("kind {kind:?} is not served"))?;
        let name = obj["metadata"]["name"]
            .as_str()
            .ok_or("an object without metadata.name")?
            .to_owned();
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if res.namespaced == ns.is_empty() {
            return Err(format!(
                "{kind} {name}: namespace {ns:?} does not fit the kind"
            ));
        }
        let mut inner = self.lock();
        let owners = inner
            .objects
            .get(&(res.plural, ns.clone(), name.clone()))
            .map(|s| s.owners.clone())
            .unwrap_or_default();
        store(&mut inner, res, ns, name, obj, owners);
        drop(inner);
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Deletes an object and records the DELETED event. Returns whether it existed.
    pub fn delete(&self, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        let Some(res) = resource_of_kind(kind) else {
            return false;
        };
        let mut inner = self.lock();
        let key = (
            res.plural,
            namespace.unwrap_or("").to_owned(),
            name.to_owned(),
        );
        let Some(mut s) = inner.objects.remove(&key) else {
            return false;
        };
        inner.rv += 1;
        let rv = inner.rv;
        s.object["metadata"]["resourceVersion"] = json!(rv.to_string());
        inner.events.push((
            rv,
            res.plural,
            json!({ "type": "DELETED", "object": s.object }),
        ));
        drop(inner);
        self.changed.send_modify(|v| *v += 1);
        true
    }

    /// One object, as stored.
    pub fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let res = resource_of_kind(kind)?;
        self.lock()
            .objects
            .get(&(
                res.plural,
                namespace.unwrap_or("").to_owned(),
                name.to_owned(),
            ))
            .map(|s| s.object.clone())
    }

    /// Every stored object of `kind`.
    pub fn list(&self, kind: &str) -> Vec<Value> {
        let Some(res) = resource_of_kind(kind) else {
            return Vec::new();
        };
        self.lock()
            .objects
            .iter()
            .filter(|((p, _, _), _)| *p == res.plural)
            .map(|(_, s)| s.object.clone())
            .collect()
    }

    /// Takes the API server down (every request gets 503 and open watches end) or brings
    /// it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Whether the fake is down.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// Compacts history, as etcd does: open watches end, and a watch resuming from a
    /// resource version before now gets `410 Gone` ("too old resource version"), so the
    /// client must list again.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.rv += 1;
        let rv = inner.rv;
        inner.events.retain(|(r, _, _)| *r >= rv);
        drop(inner);
        self.compacted.store(rv, Ordering::SeqCst);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Issues a projected ServiceAccount token for pod `namespace/pod` (which must exist
    /// when the token is reviewed) with `audience`, as the kubelet would.
    pub fn issue_token(
        &self,
        namespace: &str,
        pod: &str,
        service_account: &str,
        audience: &str,
    ) -> String {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let token = format!(
            "eyJhbGciOiJSUzI1NiJ9.fixture-{}-{namespace}-{pod}.sig",
            tokens.len()
        );
        tokens.insert(
            token.clone(),
            Issued {
                namespace: namespace.to_owned(),
                pod: pod.to_owned(),
                service_account: service_account.to_owned(),
                audience: audience.to_owned(),
            },
        );
        token
    }

    /// TokenReviews answered so far.
    pub fn reviews(&self) -> u64 {
        self.reviews.load(Ordering::SeqCst)
    }

    /// Answers a TokenReview as the API server does: the user and its pod claims when
    /// the token is one it issued for an existing pod and one of the requested audiences;
    /// `authenticated: false` with an error otherwise.
    fn review(&self, body: &Bytes) -> Response {
        self.reviews.fetch_add(1, Ordering::SeqCst);
        let review = match parse_body(body) {
            Ok(v) => v,
            Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
        };
        let token = review["spec"]["token"].as_str().unwrap_or("");
        let wanted: Vec<&str> = review["spec"]["audiences"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let issued = self
            .tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned();
        let denied = |error: &str| {
            (
                StatusCode::CREATED,
                axum::Json(json!({
                    "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                    "metadata": { "creationTimestamp": null },
                    "spec": review["spec"].clone(),
                    "status": { "user": {}, "error": error },
                })),
            )
                .into_response()
        };
        let Some(i) = issued else {
            return denied("[invalid bearer token, token lookup failed]");
        };
        if !wanted.is_empty() && !wanted.contains(&i.audience.as_str()) {
            return denied(
                "[invalid bearer token, token audiences [\"kubernetes\"] is invalid for the target audiences]",
            );
        }
        let Some(pod) = self.get("Pod", Some(&i.namespace), &i.pod) else {
            return denied(&format!(
                "[invalid bearer token, pods \"{}\" not found]",
                i.pod
            ));
        };
        let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
        (
            StatusCode::CREATED,
            axum::Json(json!({
                "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                "metadata": { "creationTimestamp": null },
                "spec": review["spec"].clone(),
                "status": {
                    "authenticated": true,
                    "user": {
                        "username": format!("system:serviceaccount:{}:{}", i.namespace, i.service_account),
                        "uid": format!("uid-sa-{}-{}", i.namespace, i.service_account),
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", i.namespace), "system:authenticated"],
                        "extra": {
                            "authentication.kubernetes.io/node-name": [node],
                            "authentication.kubernetes.io/pod-name": [i.pod],
                            "authentication.kubernetes.io/pod-uid": [pod["metadata"]["uid"].clone()],
                        },
                    },
                    "audiences": [i.audience],
                },
            })),
        )
            .into_response()
    }

    /// Watch requests served so far.
    pub fn watches(&self) -> u64 {
        self.watches.load(Ordering::SeqCst)
    }

    /// The HTTP router serving this state.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(self))
    }

    /// Serves on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }
}

/// Stores `obj` under a new resource version and records its event.
fn store(
    inner: &mut Inner,
    res: Resource,
    ns: String,
    name: String,
    mut obj: Value,
    owners: BTreeMap<String, Owner>,
) -> Value {
    inner.rv += 1;
    let rv = inner.rv;
    let key = (res.plural, ns, name);
    let existed = inner.objects.contains_key(&key);
    obj["apiVersion"] = json!(res.api_version);
    obj["kind"] = json!(res.kind);
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    if obj["metadata"]["uid"].is_null() {
        obj["metadata"]["uid"] = json!(format!("uid-{}-{}-{}", res.plural, key.1, key.2));
    }
    inner.events.push((
        rv,
        res.plural,
        json!({ "type": if existed { "MODIFIED" } else { "ADDED" }, "object": obj }),
    ));
    inner.objects.insert(
        key,
        Stored {
            object: obj.clone(),
            owners,
        },
    );
    obj
}

/// A `Status` error response, shaped as the API server sends it.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    (
        code,
        axum::Json(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16(),
        })),
    )
        .into_response()
}

/// The request's query parameters (the last of a repeated one wins).
fn query_of(uri: &axum::http::Uri) -> Result<BTreeMap<String, String>, String> {
    axum::extract::Query::<BTreeMap<String, String>>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| e.body_text())
}

/// One requirement of a label or field selector.
#[derive(Debug, PartialEq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
}

fn parse_selector(s: &str) -> Vec<Req> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            if let Some((k, v)) = t.split_once("!=") {
                Req::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Req::Eq(k.trim().into(), v.trim().into())
            } else {
                Req::Exists(t.into())
            }
        })
        .collect()
}

/// Whether `obj` passes the namespace and the label and field selectors.
fn selected(obj: &Value, ns: &str, labels: &[Req], fields: &[Req]) -> bool {
    let meta = &obj["metadata"];
    if !ns.is_empty() && meta["namespace"] != ns {
        return false;
    }
    let label = |k: &str| meta["labels"][k].as_str().map(str::to_owned);
    let field = |k: &str| match k {
        "metadata.name" => meta["name"].as_str().map(str::to_owned),
        "metadata.namespace" => meta["namespace"].as_str().map(str::to_owned),
        "spec.nodeName" => obj["spec"]["nodeName"].as_str().map(str::to_owned),
        _ => None,
    };
    let ok = |reqs: &[Req], get: &dyn Fn(&str) -> Option<String>| {
        reqs.iter().all(|r| match r {
            Req::Eq(k, v) => get(k).as_deref() == Some(v.as_str()),
            Req::Ne(k, v) => get(k).as_deref() != Some(v.as_str()),
            Req::Exists(k) => get(k).is_some(),
        })
    };
    ok(labels, &label) && ok(fields, &field)
}

/// The request's target: resource, namespace ("" for all or cluster-scoped), name.
fn route(path: &str) -> Option<(Resource, String, Option<String>)> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ((*v).to_owned(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let (ns, plural, name) = match rest {
        ["namespaces", ns, plural] => (*ns, *plural, None),
        // The status subresource is served as the object itself.
        ["namespaces", ns, plural, name] | ["namespaces", ns, plural, name, "status"] => {
            (*ns, *plural, Some(*name))
        }
        [plural] => ("", *plural, None),
        [plural, name] | [plural, name, "status"] => ("", *plural, Some(*name)),
        _ => return None,
    };
    let res = RESOURCES
        .iter()
        .copied()
        .find(|r| r.plural == plural && r.api_version == gv)?;
    if !res.namespaced && !ns.is_empty() {
        return None;
    }
    Some((res, ns.to_owned(), name.map(str::to_owned)))
}

async fn handle(State(api): State<Arc<FakeApi>>, req: Request) -> Response {
    if api.is_down() {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the API server is down (fixture)",
        );
    }
    let path = req.uri().path().to_owned();
    let query = match query_of(req.uri()) {
        Ok(q) => q,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    if path == "/version" {
        return axum::Json(json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.1-meshprobe-fixture",
            "gitCommit": "0000000", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
        }))
        .into_response();
    }
    if path == TOKEN_REVIEWS && req.method() == Method::POST {
        return match axum::body::to_bytes(req.into_body(), 1 << 20).await {
            Ok(b) => api.review(&b),
            Err(e) => status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
        };
    }
    let Some((res, ns, name)) = route(&path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        );
    };
    let method = req.method().clone();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = match axum::body::to_bytes(req.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
    };
    match (method, name) {
        (Method::GET, Some(name)) => {
            match api.lock().objects.get(&(res.plural, ns, name.clone())) {
                Some(s) => axum::Json(s.object.clone()).into_response(),
                None => not_found(res, &name),
            }
        }
        (Method::GET, None) => {
            let labels = parse_selector(query.get("labelSelector").map_or("", String::as_str));
            let fields = parse_selector(query.get("fieldSelector").map_or("", String::as_str));
            if matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
                watch_response(api, res, ns, labels, fields, &query)
            } else {
                let inner = api.lock();
                let items: Vec<Value> = inner
                    .objects
                    .iter()
                    .filter(|((p, _, _), s)| {
                        *p == res.plural && selected(&s.object, &ns, &labels, &fields)
                    })
                    .map(|(_, s)| s.object.clone())
                    .collect();
                axum::Json(json!({
                    "kind": format!("{}List", res.kind), "apiVersion": res.api_version,
                    "metadata": { "resourceVersion": inner.rv.to_string() }, "items": items,
                }))
                .into_response()
            }
        }
        (Method::POST, None) => create(&api, res, ns, &body, &query),
        (Method::PATCH, Some(name)) => patch(&api, res, ns, name, &body, &content_type, &query),
        (m, _) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{m} {path} is not supported by the fixture"),
        ),
    }
}

fn not_found(res: Resource, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{} \"{name}\" not found", res.plural),
    )
}

fn parse_body(body: &Bytes) -> Result<Value, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    if !v.is_object() {
        return Err("the body is not an object".into());
    }
    Ok(v)
}

fn create(
    api: &FakeApi,
    res: Resource,
    ns: String,
    body: &Bytes,
    query: &BTreeMap<String, String>,
) -> Response {
    let mut obj = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let Some(name) = obj["metadata"]["name"].as_str().map(str::to_owned) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value",
        );
    };
    if res.namespaced {
        obj["metadata"]["namespace"] = json!(ns);
    }
    let mut inner = api.lock();
    if inner
        .objects
        .contains_key(&(res.plural, ns.clone(), name.clone()))
    {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", res.plural),
        );
    }
    let owner = Owner {
        manager: query
            .get("fieldManager")
            .cloned()
            .unwrap_or_else(|| "unknown".into()),
        applied: false,
    };
    let mut owners = BTreeMap::new();
    leaves(&without_identity(&obj), "", &mut |p, _| {
        owners.insert(p, owner.clone());
    });
    let stored = store(&mut inner, res, ns, name, obj, owners);
    drop(inner);
    api.changed.send_modify(|v| *v += 1);
    (StatusCode::CREATED, axum::Json(stored)).into_response()
}

/// The object without the fields that identify it (they are nobody's to own).
fn without_identity(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("apiVersion");
        o.remove("kind");
        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "name",
                "namespace",
                "resourceVersion",
                "uid",
                "managedFields",
            ] {
                m.remove(k);
            }
            if m.is_empty() {
                o.remove("metadata");
            }
        }
    }
    v
}

/// Calls `f` for every leaf (a scalar, an array or null) with its dotted path.
fn leaves(v: &Value, prefix: &str, f: &mut dyn FnMut(String, &Value)) {
    match v.as_object() {
        Some(o) if !o.is_empty() => {
            for (k, x) in o {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(x, &p, f);
            }
        }
        _ if !prefix.is_empty() => f(prefix.to_owned(), v),
        _ => {}
    }
}

fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn set_at(v: &mut Value, path: &str, x: Value) {
    let mut cur = v;
    let parts: Vec<&str> = path.split('.').collect();
    for k in &parts[..parts.len() - 1] {
        if !cur.get(*k).is_some_and(Value::is_object) {
            cur[*k] = Value::Object(Map::new());
        }
        cur = &mut cur[*k];
    }
    cur[parts[parts.len() - 1]] = x;
}

fn remove_at(v: &mut Value, path: &str) {
    let (parent, last) = match path.rsplit_once('.') {
        Some((p, l)) => (at_mut(v, p), l),
        None => (Some(v), path),
    };
    if let Some(o) = parent.and_then(Value::as_object_mut) {
        o.remove(last);
    }
}

fn at_mut<'a>(v: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.').try_fold(v, |v, k| v.get_mut(k))
}

fn patch(
    api: &FakeApi,
    res: Resource,
    ns: String,
    name: String,
    body: &Bytes,
    content_type: &str,
    query: &BTreeMap<String, String>,
) -> Response {
    let body = match parse_body(body) {
        Ok(v) => v,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let manager = query.get("fieldManager").cloned();
    let force = query.get("force").is_some_and(|f| f == "true");
    let media = content_type.split(';').next().unwrap_or("").trim();
    let apply = match media {
        "application/apply-patch+yaml" => true,
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => false,
        other => {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                &format!("the fixture does not take patches of type {other:?}"),
            );
        }
    };
    let mut inner = api.lock();
    let key = (res.plural, ns.clone(), name.clone());
    let existing = inner.objects.get(&key).cloned();
    let (mut obj, mut owners) = match existing {
        Some(s) => (s.object, s.owners),
        // Server-side apply creates; a merge patch needs the object.
        None if apply => {
            let mut meta = json!({ "name": name });
            if res.namespaced {
                meta["namespace"] = json!(ns);
            }
            (json!({ "metadata": meta }), BTreeMap::new())
        }
        None => return not_found(res, &name),
    };
    let mut body = body;
    // Strategic merge of `status.conditions`: merged by `type`, as the API server does
    // (a JSON merge patch would replace the list, and the kubelet's conditions with it).
    if media == "application/strategic-merge-patch+json"
        && let Some(new) = body["status"]["conditions"].as_array().cloned()
    {
        let mut merged: Vec<Value> = obj["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for c in new {
            match merged.iter_mut().find(|m| m["type"] == c["type"]) {
                Some(m) => *m = c,
                None => merged.push(c),
            }
        }
        body["status"]["conditions"] = Value::Array(merged);
    }
    let config = without_identity(&body);
    if apply {
        let Some(manager) = manager else {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "PATCH, fieldManager: Required value: is required for apply patch",
            );
        };
        let me = Owner {
            manager: manager.clone(),
            applied: true,
        };
        let mut conflicts = Vec::new();
        let mut mine = Vec::new();
        leaves(&config, "", &mut |p, v| {
            if let Some(owner) = owners.get(&p)
                && owner.manager != manager
                && at(&obj, &p) != Some(v)
            {
                conflicts.push(format!("conflict with \"{}\": .{p}", owner.manager));
            }
            mine.push((p, v.clone()));
        });
        if !conflicts.is_empty() && !force {
            return status(
                StatusCode::CONFLICT,
                "Conflict",
                &format!(
                    "Apply failed with {} conflict(s): {}",
                    conflicts.len(),
                    conflicts.join(", ")
                ),
            );
        }
        // Fields this manager applied before and no longer applies are removed.
        let dropped: Vec<String> = owners
            .iter()
            .filter(|(p, o)| **o == me && !mine.iter().any(|(q, _)| q == *p))
            .map(|(p, _)| p.clone())
            .collect();
        for p in dropped {
            owners.remove(&p);
            remove_at(&mut obj, &p);
        }
        for (p, v) in mine {
            if v.is_null() {
                remove_at(&mut obj, &p);
                owners.remove(&p);
            } else {
                set_at(&mut obj, &p, v);
                owners.insert(p, me.clone());
            }
        }
    } else {
        let me = Owner {
            manager: manager.unwrap_or_else(|| "unknown".into()),
            applied: false,
        };
        leaves(&config, "", &mut |p, v| {
            if v.is_null() {
                remove_at(&mut obj, &p);
                owners.retain(|q, _| q != &p && !q.starts_with(&format!("{p}.")));
            } else {
                set_at(&mut obj, &p, v.clone());
                owners.insert(p, me.clone());
            }
        });
    }
    let stored = store(&mut inner, res, ns, name, obj, owners);
    drop(inner);
    api.changed.send_modify(|v| *v += 1);
    axum::Json(stored).into_response()
}

fn watch_response(
    api: Arc<FakeApi>,
    res: Resource,
    ns: String,
    labels: Vec<Req>,
    fields: Vec<Req>,
    query: &BTreeMap<String, String>,
) -> Response {
    api.watches.fetch_add(1, Ordering::SeqCst);
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    if since != 0 && since < api.compacted.load(Ordering::SeqCst) {
        let line = json!({ "type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410,
        }})
        .to_string()
            + "\n";
        return Response::new(Body::from(line));
    }
    let hold = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(WATCH_HOLD, |s| Duration::from_secs(s).min(WATCH_HOLD));
    let state = WatchState {
        rx: api.changed.subscribe(),
        api,
        res,
        ns,
        labels,
        fields,
        since,
        deadline: Instant::now() + hold,
    };
    let stream = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if st.api.is_down() || st.since < st.api.compacted.load(Ordering::SeqCst) {
                return None;
            }
            st.rx.borrow_and_update();
            let lines: String = {
                let inner = st.api.lock();
                let mut out = String::new();
                for (rv, plural, ev) in &inner.events {
                    if *rv > st.since
                        && *plural == st.res.plural
                        && selected(&ev["object"], &st.ns, &st.labels, &st.fields)
                    {
                        out += &ev.to_string();
                        out.push('\n');
                    }
                }
                st.since = st.since.max(inner.rv);
                out
            };
            if !lines.is_empty() {
                return Some((Ok::<_, Infallible>(lines), st));
            }
            match tokio::time::timeout_at(st.deadline, st.rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return None,
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| {
            status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                &e.to_string(),
            )
        })
}

struct WatchState {
    api: Arc<FakeApi>,
    rx: watch::Receiver<u64>,
    res: Resource,
    ns: String,
    labels: Vec<Req>,
    fields: Vec<Req>,
    since: u64,
    deadline: Instant,
}

/// The namespace meshprobe is installed in (deploy/namespace.yaml).
pub const MESHPROBE_NAMESPACE: &str = "meshprobe";

/// The sandbox cluster as the Kubernetes API would describe it: its nodes (with flannel's
/// annotations), CoreDNS pods, the kube-dns Service, the opted-in web NodePort Service and
/// Ingress, flannel's ConfigMap, and meshprobe's own agent pods.
pub fn lab_objects(plan: &LabPlan) -> Vec<Value> {
    let ready = |kind: &str| json!([{ "type": kind, "status": "True", "lastTransitionTime": "2026-11-01T10:00:00Z" }]);
    let mut out = Vec::new();
    for n in &plan.nodes {
        out.push(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": n.name,
                "labels": { "kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux" },
                "annotations": {
                    "flannel.alpha.coreos.com/backend-data": json!({ "VNI": 1, "VtepMAC": n.vtep_mac }).to_string(),
                    "flannel.alpha.coreos.com/backend-type": "vxlan",
                    "flannel.alpha.coreos.com/public-ip": n.ip.to_string(),
                },
            },
            "spec": { "podCIDR": n.pod_cidr(), "podCIDRs": [n.pod_cidr()] },
            "status": {
                "addresses": [
                    { "type": "InternalIP", "address": n.ip.to_string() },
                    { "type": "Hostname", "address": n.name },
                ],
                "conditions": ready("Ready"),
            },
        }));
        let pod = |name: String, ns: &str, labels: Value, ip: Ipv4Addr, host_network: bool| {
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": { "name": name, "namespace": ns, "labels": labels },
                "spec": {
                    "nodeName": n.name, "hostNetwork": host_network,
                    "containers": [{ "name": "main", "image": "fixture" }],
                },
                "status": {
                    "phase": "Running", "hostIP": n.ip.to_string(),
                    "podIP": ip.to_string(), "podIPs": [{ "ip": ip.to_string() }],
                    "conditions": ready("Ready"),
                },
            })
        };
        if let Some(c) = &n.coredns {
            out.push(pod(
                c.clone(),
                "kube-system",
                json!({ "k8s-app": "kube-dns" }),
                n.pod_ip(PodKind::Dns),
                false,
            ));
        }
        for (component, ip, host) in [
            ("agent-host", n.ip, true),
            ("agent-pod", n.pod_ip(PodKind::Probe), false),
        ] {
            out.push(pod(
                format!("meshprobe-{component}-{}", n.name),
                MESHPROBE_NAMESPACE,
                json!({ "app.kubernetes.io/name": "meshprobe", "app.kubernetes.io/component": component }),
                ip,
                host,
            ));
        }
    }
    out.push(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "kube-dns", "namespace": "kube-system", "labels": { "k8s-app": "kube-dns" } },
        "spec": {
            "type": "ClusterIP", "clusterIP": KUBE_DNS_SVC.to_string(), "selector": { "k8s-app": "kube-dns" },
            "ports": [
                { "name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53 },
                { "name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53 },
                { "name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153 },
            ],
        },
    }));
    out.push(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": "web", "namespace": "default",
            "labels": { "app": "web", "meshprobe.io/probe": "true" },
            "annotations": { "meshprobe.io/path": "/" },
        },
        "spec": {
            "type": "NodePort", "clusterIP": WEB_SVC.to_string(), "selector": { "app": "web" },
            "ports": [{ "port": 80, "protocol": "TCP", "targetPort": WEB_PORT, "nodePort": NODE_PORT }],
        },
    }));
    out.push(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": { "name": "web", "namespace": "default", "labels": { "meshprobe.io/probe": "true" } },
        "spec": { "rules": [{ "host": INGRESS_HOST, "http": { "paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": { "service": { "name": "web", "port": { "number": 80 } } },
        }]}}]},
        "status": { "loadBalancer": { "ingress": [{ "ip": plan.ingress().ip.to_string() }] } },
    }));
    out.push(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": "kube-flannel-cfg", "namespace": "kube-flannel", "labels": { "app": "flannel" } },
        "data": {
            "net-conf.json": json!({
                "Network": CLUSTER_CIDR,
                "Backend": { "Type": "vxlan", "Port": VXLAN_PORT, "VNI": 1 },
            }).to_string(),
        },
    }));
    out
}

/// A kubeconfig for a client of the fake API at `server` (plain HTTP, no credentials).
pub fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fixture\n  cluster:\n    server: {server}\ncontexts:\n- name: fixture\n  context:\n    cluster: fixture\n    user: fixture\nusers:\n- name: fixture\n  user: {{}}\ncurrent-context: fixture\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_and_escapes() {
        let q = |uri: &str| query_of(&uri.parse().expect("uri")).expect("query");
        assert_eq!(
            q("/api/v1/pods?labelSelector=app.kubernetes.io%2Fname%3Dmeshprobe%2Ck8s-app")["labelSelector"],
            "app.kubernetes.io/name=meshprobe,k8s-app"
        );
        assert_eq!(q("/x?a=bad%zz%4")["a"], "bad%zz%4");
        let reqs = parse_selector("a=b, c!=d,e==f,g");
        assert_eq!(
            reqs,
            [
                Req::Eq("a".into(), "b".into()),
                Req::Ne("c".into(), "d".into()),
                Req::Eq("e".into(), "f".into()),
                Req::Exists("g".into()),
            ]
        );
        let obj = json!({ "metadata": { "name": "x", "namespace": "n", "labels": { "a": "b", "g": "" } } });
        assert!(selected(&obj, "n", &reqs[..1], &[]));
        assert!(selected(
            &obj,
            "",
            &parse_selector("a=b,g,c!=d"),
            &parse_selector("metadata.name=x")
        ));
        assert!(!selected(&obj, "m", &[], &[]));
        assert!(!selected(&obj, "", &parse_selector("a!=b"), &[]));
        assert!(!selected(&obj, "", &[], &parse_selector("metadata.name=y")));
    }

    #[test]
    fn routes() {
        let (r, ns, name) =
            route("/apis/coordination.k8s.io/v1/namespaces/mp/leases/l").expect("lease");
        assert_eq!(
            (r.kind, ns.as_str(), name.as_deref()),
            ("Lease", "mp", Some("l"))
        );
        let (r, ns, name) = route("/api/v1/nodes").expect("nodes");
        assert_eq!((r.kind, ns.as_str(), name), ("Node", "", None));
        assert!(
            route("/api/v1/namespaces/x/nodes").is_none(),
            "nodes are cluster-scoped"
        );
        assert!(
            route("/apis/networking.k8s.io/v1/pods").is_none(),
            "wrong group"
        );
    }

    #[test]
    fn lab_objects_are_all_served_kinds() {
        let plan = LabPlan::new("mp-kube", 3).expect("plan");
        let api = FakeApi::new(lab_objects(&plan)).expect("served");
        assert!(api.get("Node", None, "n1").is_some());
        assert!(
            api.get("ConfigMap", Some("kube-flannel"), "kube-flannel-cfg")
                .is_some()
        );
        assert!(FakeApi::new([json!({ "kind": "Secret", "metadata": { "name": "s" } })]).is_err());
        assert!(
            FakeApi::new([json!({ "kind": "Pod", "metadata": { "name": "p" } })]).is_err(),
            "pods are namespaced"
        );
    }
}
