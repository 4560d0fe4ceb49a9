//! deploy/ is valid Kubernetes: every object of the kustomize base deserialises into its
//! k8s-openapi type and serialises back to exactly what the file says (so a misspelt or
//! misplaced field, which a lenient parser would drop, fails here), and the security
//! posture the docs promise holds. When `kubectl` is installed (CI makes sure it is),
//! `kubectl kustomize deploy/` is rendered and checked the same way.

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::Deserialize;
use serde_json::Value;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
/// The kustomize base every install and overlay builds on.
const BASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/base");

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Kustomization {
    #[allow(dead_code, reason = "checked by serde's shape only")]
    api_version: String,
    #[allow(dead_code, reason = "checked by serde's shape only")]
    kind: String,
    namespace: Option<String>,
    resources: Vec<String>,
    #[serde(default)]
    #[allow(dead_code, reason = "checked by serde's shape only")]
    images: Vec<Value>,
}

fn docs(text: &str, origin: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{origin}: not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Round-trips `v` through the k8s-openapi type `T`; the difference, if any, in words.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Result<(), String> {
    let typed: T =
        serde_json::from_value(v.clone()).map_err(|e| format!("does not deserialise: {e}"))?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    diff("", v, &back).map_or(Ok(()), Err)
}

/// The first place where `a` (the file) has something `b` (the typed object) lost or changed.
fn diff(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x.iter().find_map(|(k, va)| match y.get(k) {
            Some(vb) => diff(&format!("{path}.{k}"), va, vb),
            None => Some(format!(
                "{path}.{k} is not a field of this kind (misspelt or misplaced?)"
            )),
        }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (va, vb))| diff(&format!("{path}[{i}]"), va, vb)),
        _ if a == b => None,
        _ => Some(format!("{path}: {a} became {b}")),
    }
}

fn validate(v: &Value) -> Result<(), String> {
    let kind = v["kind"].as_str().unwrap_or_default();
    match kind {
        "Namespace" => round_trip::<Namespace>(v),
        "ServiceAccount" => round_trip::<ServiceAccount>(v),
        "ClusterRole" => round_trip::<ClusterRole>(v),
        "ClusterRoleBinding" => round_trip::<ClusterRoleBinding>(v),
        "Role" => round_trip::<Role>(v),
        "RoleBinding" => round_trip::<RoleBinding>(v),
        "StatefulSet" => round_trip::<StatefulSet>(v),
        "DaemonSet" => round_trip::<DaemonSet>(v),
        "Service" => round_trip::<Service>(v),
        "PodDisruptionBudget" => round_trip::<PodDisruptionBudget>(v),
        "NetworkPolicy" => round_trip::<NetworkPolicy>(v),
        other => Err(format!("unexpected kind {other:?}")),
    }
}

fn base() -> (Kustomization, Vec<Value>) {
    let k: Kustomization = serde_yaml_ng::from_str(
        &std::fs::read_to_string(Path::new(BASE).join("kustomization.yaml"))
            .expect("kustomization"),
    )
    .expect("kustomization.yaml has only known fields");
    let mut all = Vec::new();
    for r in &k.resources {
        let text =
            std::fs::read_to_string(Path::new(BASE).join(r)).unwrap_or_else(|e| panic!("{r}: {e}"));
        all.extend(docs(&text, r));
    }
    (k, all)
}

fn find<'a>(all: &'a [Value], kind: &str, name: &str) -> &'a Value {
    all.iter()
        .find(|v| v["kind"] == kind && v["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn every_object_is_a_valid_kubernetes_object() {
    let (_, all) = base();
    assert!(all.len() >= 10, "{} objects", all.len());
    let errors: Vec<String> = all
        .iter()
        .filter_map(|v| {
            validate(v)
                .err()
                .map(|e| format!("{} {}: {e}", v["kind"], v["metadata"]["name"]))
        })
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn the_diff_catches_a_misspelt_field() {
    let (_, all) = base();
    let mut ds = find(&all, "DaemonSet", "meshprobe-agent-host").clone();
    ds["spec"]["template"]["spec"]["hostNetwrok"] = Value::Bool(true);
    let err = validate(&ds).expect_err("a typo must not pass");
    assert!(err.contains("hostNetwrok"), "{err}");
}

#[test]
fn security_posture_is_what_the_readme_promises() {
    let (k, all) = base();
    assert_eq!(k.namespace.as_deref(), Some("meshprobe"));
    let host = &find(&all, "DaemonSet", "meshprobe-agent-host")["spec"]["template"]["spec"];
    assert_eq!(host["hostNetwork"], true);
    assert_eq!(
        host["automountServiceAccountToken"], false,
        "agents never talk to the API"
    );
    assert_eq!(
        host["tolerations"],
        serde_json::json!([{ "operator": "Exists" }]),
        "tolerates every taint"
    );
    let c = &host["containers"][0];
    assert_eq!(
        c["securityContext"]["capabilities"],
        serde_json::json!({ "drop": ["ALL"], "add": ["NET_RAW", "NET_ADMIN"] })
    );
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());

    let pod = &find(&all, "DaemonSet", "meshprobe-agent-pod")["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostNetwork"],
        Value::Null,
        "the pod agent lives in the pod network"
    );
    assert_eq!(
        pod["securityContext"]["sysctls"][0]["name"],
        "net.ipv4.ping_group_range"
    );
    let pc = &pod["containers"][0];
    assert_eq!(
        pc["securityContext"]["capabilities"],
        serde_json::json!({ "drop": ["ALL"] }),
        "no capability at all"
    );
    assert!(
        pc["args"]
            .as_array()
            .expect("args")
            .iter()
            .any(|a| a == "http://$(HOST_IP):7071"),
        "reports via the host agent's relay"
    );

    let sts = find(&all, "StatefulSet", "meshprobe-coordinator");
    let coord = &sts["spec"]["template"]["spec"];
    assert_eq!(
        coord["hostNetwork"], true,
        "reports reach it over the underlay"
    );
    let cc = &coord["containers"][0];
    let args: Vec<&str> = cc["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        args.windows(2)
            .any(|w| w == ["--lease", "meshprobe-coordinator"]),
        "two replicas elect a leader: {args:?}"
    );
    assert_eq!(cc["readinessProbe"]["httpGet"]["path"], "/readyz");
    // Host agents find the coordinator without cluster DNS (which may be what is broken).
    let url = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "MESHPROBE_COORDINATOR")
        .expect("MESHPROBE_COORDINATOR")["value"]
        .as_str()
        .expect("a value")
        .to_owned();
    assert!(
        url.contains("$(MESHPROBE_COORDINATOR_SERVICE_HOST)") && !url.contains(".svc"),
        "{url}"
    );
    assert_eq!(host["dnsPolicy"], "Default");

    // RBAC: read-only everywhere, but for its own Lease and TokenReviews (issue 11).
    let cr = find(&all, "ClusterRole", "meshprobe-coordinator");
    for rule in cr["rules"].as_array().expect("rules") {
        // The writes: TokenReviews, node conditions and Events (issues 11 and 13).
        let write = match rule["resources"][0].as_str().unwrap_or("") {
            "tokenreviews" | "events" => Some("create"),
            "nodes/status" => Some("patch"),
            _ => None,
        };
        for verb in rule["verbs"].as_array().expect("verbs") {
            let verb = verb.as_str().unwrap_or("");
            assert!(
                ["get", "list", "watch"].contains(&verb) || write == Some(verb),
                "ClusterRole verb {verb} on {}",
                rule["resources"]
            );
        }
    }
    assert!(
        cr["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .any(|r| r["resources"] == serde_json::json!(["tokenreviews"])),
        "the coordinator verifies agents' tokens"
    );

    // Issue 11: agents present a projected token for audience meshprobe (no API token),
    // the coordinator serves TLS and holds the cluster secret.
    for ds in ["meshprobe-agent-host", "meshprobe-agent-pod"] {
        let spec = &find(&all, "DaemonSet", ds)["spec"]["template"]["spec"];
        let sources = spec["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == "identity")
            .unwrap_or_else(|| panic!("{ds}: an identity volume"))["projected"]["sources"]
            .clone();
        assert_eq!(
            sources[0]["serviceAccountToken"]["audience"], "meshprobe",
            "{ds}"
        );
        let args = &spec["containers"][0]["args"];
        assert!(
            args.as_array()
                .expect("args")
                .windows(2)
                .any(|w| w[0] == "--token-file" && w[1] == "/var/run/secrets/meshprobe/token"),
            "{ds}: {args}"
        );
    }
    assert!(
        url.starts_with("https://"),
        "host agents speak TLS to the coordinator: {url}"
    );
    for flag in ["--tls-cert", "--tls-key", "--token-file"] {
        assert!(args.contains(&flag), "coordinator {flag}: {args:?}");
    }
    assert_eq!(cc["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    let np = find(&all, "NetworkPolicy", "meshprobe-coordinator");
    assert_eq!(
        np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "coordinator"
    );
    let lease = find(&all, "Role", "meshprobe-coordinator-lease");
    assert_eq!(
        lease["rules"][0]["resourceNames"],
        serde_json::json!(["meshprobe-coordinator"])
    );
}

#[test]
fn kustomize_renders_the_base() {
    let out = match Command::new("kubectl").args(["kustomize", DEPLOY]).output() {
        Ok(o) => o,
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: kubectl is not installed (CI installs kubernetes-client)");
            return;
        }
        Err(e) => panic!("CI must install kubectl (Debian's kubernetes-client): {e}"),
    };
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = docs(&String::from_utf8_lossy(&out.stdout), "kubectl kustomize");
    let (_, files) = base();
    assert_eq!(rendered.len(), files.len(), "every object is rendered");
    for v in &rendered {
        let kind = v["kind"].as_str().unwrap_or_default();
        if !matches!(kind, "Namespace" | "ClusterRole" | "ClusterRoleBinding") {
            assert_eq!(
                v["metadata"]["namespace"], "meshprobe",
                "{kind} {}",
                v["metadata"]["name"]
            );
        }
        validate(v).unwrap_or_else(|e| panic!("rendered {kind} {}: {e}", v["metadata"]["name"]));
        if kind == "DaemonSet" || kind == "StatefulSet" {
            assert_eq!(
                v["spec"]["template"]["spec"]["containers"][0]["image"],
                "ghcr.io/meshprobe/meshprobe:0.1.0"
            );
        }
    }
}

/// Issue 23, item 4: baselines and history survive a restart and the leader change an
/// upgrade makes: each replica's `--data-dir` is its own PersistentVolumeClaim. The memory
/// limit is at least the 5,000-node peak in docs/benchmarks.md.
#[test]
fn the_history_sits_on_a_claim_and_memory_fits_the_scale_table() {
    let (_, all) = base();
    let sts = find(&all, "StatefulSet", "meshprobe-coordinator");
    let spec = &sts["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let dir = args
        .windows(2)
        .find(|w| w[0] == "--data-dir")
        .map(|w| w[1])
        .expect("the coordinator keeps a history (--data-dir)");
    let mount = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["mountPath"] == dir)
        .unwrap_or_else(|| panic!("nothing is mounted at the data dir {dir}"));
    assert_ne!(mount["readOnly"], true);
    let claims = sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .expect("volumeClaimTemplates");
    assert!(
        claims
            .iter()
            .any(|t| t["metadata"]["name"] == mount["name"]),
        "{} is a claim of its own per replica, not an emptyDir",
        mount["name"]
    );
    assert!(
        !spec["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| v["name"] == mount["name"]),
        "a pod volume of the same name would shadow the claim"
    );
    // docs/benchmarks.md's scale table: "| 5,000 (10,000) | ... | 1,406 MiB | ...".
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/benchmarks.md"))
            .expect("docs/benchmarks.md");
    let row = readme
        .lines()
        .find(|l| l.starts_with("| 5,000 (10,000) |"))
        .expect("the scale table has a 5,000-node row");
    let peak_mib: u64 = row
        .split('|')
        .map(str::trim)
        .find_map(|cell| cell.strip_suffix(" MiB"))
        .map(|n| n.replace(',', "").parse().expect("a number of MiB"))
        .expect("the row's peak RSS");
    let limit = c["resources"]["limits"]["memory"]
        .as_str()
        .expect("a limit");
    let limit_mib: u64 = if let Some(g) = limit.strip_suffix("Gi") {
        g.parse::<u64>().expect("Gi") * 1024
    } else {
        limit
            .strip_suffix("Mi")
            .expect("Mi or Gi")
            .parse()
            .expect("Mi")
    };
    assert!(
        limit_mib >= peak_mib,
        "the limit {limit} is below the 5,000-node peak of {peak_mib} MiB"
    );
}

/// Every directory under deploy/ with a kustomization.
fn kustomizations() -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        if dir.join("kustomization.yaml").exists() {
            out.push(dir.to_path_buf());
        }
        for e in std::fs::read_dir(dir).expect("read deploy/").flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new(DEPLOY), &mut out);
    out.sort();
    out
}

/// `kubectl kustomize DIR`, or `None` when kubectl is missing outside CI.
fn kustomize(dir: &Path) -> Option<Vec<Value>> {
    let out = match Command::new("kubectl").arg("kustomize").arg(dir).output() {
        Ok(o) => o,
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: kubectl is not installed (CI installs kubernetes-client)");
            return None;
        }
        Err(e) => panic!("CI must install kubectl (Debian's kubernetes-client): {e}"),
    };
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(docs(
        &String::from_utf8_lossy(&out.stdout),
        &dir.display().to_string(),
    ))
}

/// The Prometheus Operator's objects, as far as meshprobe writes them: the fields of its
/// CRDs (monitoring.coreos.com/v1), unknown ones refused (kubernetes-validate has no
/// schema for CRDs).
#[allow(
    dead_code,
    reason = "the fields are checked by serde's shape; the test reads a few"
)]
mod operator {
    use serde::Deserialize;
    use serde_json::Value;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(crate) struct Object<S> {
        pub(crate) api_version: String,
        pub(crate) kind: String,
        pub(crate) metadata: Value,
        pub(crate) spec: S,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(crate) struct ServiceMonitorSpec {
        pub(crate) selector: Value,
        pub(crate) endpoints: Vec<Endpoint>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(crate) struct Endpoint {
        pub(crate) port: String,
        pub(crate) scheme: Option<String>,
        pub(crate) path: Option<String>,
        pub(crate) interval: Option<String>,
        pub(crate) tls_config: Option<TlsConfig>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(crate) struct TlsConfig {
        pub(crate) server_name: Option<String>,
        pub(crate) ca: Option<SecretOrConfigMap>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(crate) struct SecretOrConfigMap {
        pub(crate) secret: Option<KeySelector>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(crate) struct KeySelector {
        pub(crate) name: String,
        pub(crate) key: String,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub(crate) struct PrometheusRuleSpec {
        pub(crate) groups: Vec<Value>,
    }
}

/// Issue 23, item 3: every kustomization under deploy/ renders (the ServiceMonitor overlay
/// stopped with "cycle detected"), and what it renders passes `kubernetes-validate
/// --strict` for the newest Kubernetes that tool knows; the Prometheus Operator's objects,
/// which it has no schema for, pass their own typed check.
#[test]
fn every_kustomization_renders_and_validates() {
    let dirs = kustomizations();
    assert!(dirs.len() >= 4, "{dirs:?}");
    let validator = Command::new("kubernetes-validate")
        .arg("--version")
        .output();
    let have_validator = match validator {
        Ok(o) => o.status.success(),
        Err(_) if std::env::var_os("CI").is_none() => {
            eprintln!("kubernetes-validate is not installed (pip install kubernetes-validate)");
            false
        }
        Err(e) => panic!("CI must install kubernetes-validate (PyPI): {e}"),
    };
    let scratch = std::env::temp_dir().join(format!("meshprobe-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    for dir in &dirs {
        let Some(objects) = kustomize(dir) else {
            return;
        };
        assert!(!objects.is_empty(), "{} renders nothing", dir.display());
        for v in &objects {
            let kind = v["kind"].as_str().unwrap_or_default();
            let name = &v["metadata"]["name"];
            match kind {
                "ServiceMonitor" => {
                    serde_json::from_value::<operator::Object<operator::ServiceMonitorSpec>>(
                        v.clone(),
                    )
                    .unwrap_or_else(|e| panic!("{}: ServiceMonitor {name}: {e}", dir.display()));
                }
                "PrometheusRule" => {
                    serde_json::from_value::<operator::Object<operator::PrometheusRuleSpec>>(
                        v.clone(),
                    )
                    .unwrap_or_else(|e| panic!("{}: PrometheusRule {name}: {e}", dir.display()));
                }
                _ => {
                    validate(v).unwrap_or_else(|e| panic!("{}: {kind} {name}: {e}", dir.display()))
                }
            }
        }
        if have_validator {
            let file = scratch.join("rendered.yaml");
            let text: Vec<String> = objects
                .iter()
                .map(|v| serde_yaml_ng::to_string(v).expect("YAML"))
                .collect();
            std::fs::write(&file, text.join("---\n")).expect("write the rendering");
            let out = Command::new("kubernetes-validate")
                .args(["--strict", "--quiet", "--no-warn"])
                .arg(&file)
                .output()
                .expect("run kubernetes-validate");
            assert!(
                out.status.success(),
                "kubernetes-validate --strict on {}:\n{}{}",
                dir.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
}

/// Issue 23, item 3: the ServiceMonitor scrapes the port the Service has, over HTTPS with
/// the CA of the coordinator's certificate and a name the certificate carries; it and the
/// PrometheusRule carry the `release` label kube-prometheus-stack selects by default.
#[test]
fn the_servicemonitor_speaks_https_to_the_services_port() {
    let overlay = Path::new(DEPLOY).join("overlays/servicemonitor");
    let Some(objects) = kustomize(&overlay) else {
        return;
    };
    let sm = find(&objects, "ServiceMonitor", "meshprobe-coordinator");
    let svc = find(&objects, "Service", "meshprobe-coordinator");
    let sts = find(&objects, "StatefulSet", "meshprobe-coordinator");
    let ep: operator::Endpoint =
        serde_json::from_value(sm["spec"]["endpoints"][0].clone()).expect("an endpoint");
    assert!(
        svc["spec"]["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["name"] == ep.port.as_str()),
        "the ServiceMonitor's port {} is not a port of the Service",
        ep.port
    );
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels")
    {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "the selector misses the Service"
        );
    }
    let tls_secret = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "tls")
        .expect("a tls volume")["secret"]["secretName"]
        .clone();
    assert_eq!(
        ep.scheme.as_deref(),
        Some("https"),
        "the coordinator serves TLS"
    );
    let tls = ep.tls_config.expect("tlsConfig");
    let ca = tls.ca.and_then(|c| c.secret).expect("the CA from a Secret");
    assert_eq!(ca.name, tls_secret.as_str().expect("a name"));
    assert_eq!(ca.key, "ca.crt");
    let certs = std::fs::read_to_string(Path::new(BASE).join("../cert-manager.yaml"))
        .expect("cert-manager.yaml");
    let names: Vec<Value> = docs(&certs, "cert-manager.yaml")
        .into_iter()
        .filter(|d| d["kind"] == "Certificate")
        .flat_map(|d| {
            d["spec"]["dnsNames"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    let server_name = tls.server_name.expect("serverName: endpoints are node IPs");
    assert!(
        names.iter().any(|n| n == server_name.as_str()),
        "{server_name} is not in the certificate's names {names:?}"
    );
    let Some(rules) = kustomize(&Path::new(DEPLOY).join("monitoring")) else {
        return;
    };
    for (kind, v) in [
        ("ServiceMonitor", sm),
        (
            "PrometheusRule",
            find(&rules, "PrometheusRule", "meshprobe"),
        ),
    ] {
        assert!(
            v["metadata"]["labels"]["release"].is_string(),
            "{kind}: kube-prometheus-stack selects on `release`"
        );
    }
}
