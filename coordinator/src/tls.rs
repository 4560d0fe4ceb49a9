//! HTTPS for the coordinator: rustls (ring, the workspace's one provider) with the
//! certificate and key from `--tls-cert`/`--tls-key`, which in a cluster come from a
//! Secret that cert-manager may renew.
//!
//! The files are read again when they change (checked at most every
//! [`RELOAD_CHECK`] during handshakes), so a renewed certificate is served without a
//! restart; a renewal that does not parse keeps the last good one, with a warning.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

/// How often, at most, the files are checked for a renewal.
pub const RELOAD_CHECK: Duration = Duration::from_secs(30);

/// The certificate or key is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no usable PEM.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key does not suit rustls (an unsupported algorithm, or not the certificate's).
    #[error("the key and certificate cannot be used together: {0}")]
    Key(#[source] rustls::Error),
}

fn load(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.to_owned(),
            source,
        })
    };
    let pem = |p: &Path, reason: String| TlsError::Pem {
        path: p.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(cert, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(pem(cert, "holds no certificate".to_owned()));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| pem(key, format!("no PEM private key: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(certs, key_der, &provider).map_err(TlsError::Key)?;
    Ok(Arc::new(certified))
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Serves the certificate of two files, reloading them when they change.
#[derive(Debug)]
struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    current: Arc<CertifiedKey>,
    stamps: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.checked.elapsed() >= RELOAD_CHECK {
            s.checked = Instant::now();
            let stamps = (modified(&self.cert), modified(&self.key));
            if stamps != s.stamps {
                match load(&self.cert, &self.key) {
                    Ok(k) => {
                        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                        s.current = k;
                        s.stamps = stamps;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate changed but cannot be used; serving the previous one");
                    }
                }
            }
        }
        Some(Arc::clone(&s.current))
    }
}

/// The server configuration for `cert` and `key` (PEM files).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let current = load(cert, key)?;
    let resolver = Reloading {
        cert: cert.to_owned(),
        key: key.to_owned(),
        state: Mutex::new(State {
            current,
            stamps: (modified(cert), modified(key)),
            checked: Instant::now(),
        }),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Key)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
