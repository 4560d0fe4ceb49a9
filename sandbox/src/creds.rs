//! The lab's credentials and certificates: the lab runs as production should, with every
//! agent authenticated by its own node's credential and the coordinator serving TLS.
//!
//! In the lab's state directory:
//! - `cluster-secret`: 32 random bytes as hex, the coordinator's `--token-file`;
//! - `node-<name>.credential`: each node's credential, its two agents' `--token-file`;
//! - `operator.credential`: the operator `lab`'s credential, what `check` presents;
//! - `ca.pem`, and `coordinator.pem` / `coordinator-key.pem`: a CA made for this lab only
//!   (its key is not kept), and the coordinator's certificate for the control namespace's
//!   address. Agents and `check` verify it with `--ca-file ca.pem`.
//!
//! Every file is created mode 0600.

use std::io::{Read as _, Write as _};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use meshprobe_core::NodeName;
use meshprobe_core::auth::{ClusterSecret, Subject};

/// The cluster secret's file name.
pub const SECRET: &str = "cluster-secret";
/// The operator credential's file name.
pub const OPERATOR: &str = "operator.credential";
/// The CA certificate's file name.
pub const CA: &str = "ca.pem";
/// The coordinator certificate's file name.
pub const CERT: &str = "coordinator.pem";
/// The coordinator key's file name.
pub const KEY: &str = "coordinator-key.pem";
/// The operator the lab's `check` runs as.
pub const OPERATOR_NAME: &str = "lab";

/// Making the lab's credentials failed.
#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("cannot make the lab's certificates: {0}")]
    Cert(#[from] rcgen::Error),
    /// A secret or name was refused.
    #[error(transparent)]
    Auth(#[from] meshprobe_core::auth::AuthError),
    /// The CA file does not hold a usable certificate.
    #[error("{path}: {reason}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn write_private(path: &Path, content: &[u8]) -> Result<(), CredsError> {
    let io = |source| CredsError::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(content))
        .map_err(io)
}

/// A node's credential file in `dir`.
pub fn node_credential_path(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("node-{node}.credential"))
}

/// Writes a fresh secret, a credential per node in `nodes`, the operator's credential, a
/// CA and the coordinator's certificate for `coordinator_ip` into `dir`.
pub fn write(dir: &Path, nodes: &[NodeName], coordinator_ip: Ipv4Addr) -> Result<(), CredsError> {
    let mut raw = [0u8; 32];
    let urandom = Path::new("/dev/urandom");
    std::fs::File::open(urandom)
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(|source| CredsError::Io {
            path: urandom.to_owned(),
            source,
        })?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let secret = ClusterSecret::from_bytes(hex.as_bytes())?;
    write_private(&dir.join(SECRET), format!("{hex}\n").as_bytes())?;
    for n in nodes {
        let c = secret.credential(&Subject::Node(n.clone()));
        write_private(
            &node_credential_path(dir, n.as_str()),
            format!("{c}\n").as_bytes(),
        )?;
    }
    let op = secret.credential(&Subject::operator(OPERATOR_NAME)?);
    write_private(&dir.join(OPERATOR), format!("{op}\n").as_bytes())?;

    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "meshprobe lab CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate()?;
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    // Its address in the lab, and loopback, where `lab forward` (and `demo --keep`) serve
    // it to a browser on this machine.
    let mut leaf = rcgen::CertificateParams::new(vec![
        "meshprobe-coordinator".to_owned(),
        "localhost".to_owned(),
    ])?;
    leaf.subject_alt_names
        .push(rcgen::SanType::IpAddress(coordinator_ip.into()));
    leaf.subject_alt_names
        .push(rcgen::SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "meshprobe coordinator (lab)");
    let leaf_key = rcgen::KeyPair::generate()?;
    let cert = leaf.signed_by(&leaf_key, &ca)?;
    write_private(&dir.join(CA), ca.pem().as_bytes())?;
    write_private(&dir.join(CERT), cert.pem().as_bytes())?;
    write_private(&dir.join(KEY), leaf_key.serialize_pem().as_bytes())?;
    Ok(())
}

/// A TLS client configuration trusting the lab's CA in `dir` (for the lab's own readiness
/// checks).
pub fn client_tls(dir: &Path) -> Result<Arc<rustls::ClientConfig>, CredsError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let path = dir.join(CA);
    let bad = |reason: String| CredsError::Ca {
        path: path.clone(),
        reason,
    };
    let pem = std::fs::read(&path).map_err(|source| CredsError::Io {
        path: path.clone(),
        source,
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
