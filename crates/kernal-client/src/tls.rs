//! TLS on the client side (trainer, harness, benchmark): the public roots
//! every client trusts, plus a private CA a team's hub may use (`--ca`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use kernal_core::pem::{load_certs, provider};

/// Why the client's TLS or HTTP set-up failed; each message names what to
/// fix (the file, or the library's reason).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `load_certs` already names the file in its message.
    #[error("{0}")]
    Certificates(String),
    #[error("{}: {source}", path.display())]
    BadCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{0}")]
    Protocols(rustls::Error),
    #[error("{0}")]
    Http(#[from] reqwest::Error),
}

/// A client configuration trusting the public web roots and, if given, the
/// certificates of `ca` (a private CA or a self-signed hub certificate).
pub fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(p) = ca {
        for cert in load_certs(p).map_err(TlsError::Certificates)? {
            roots.add(cert).map_err(|source| TlsError::BadCertificate {
                path: p.to_path_buf(),
                source,
            })?;
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocols)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// An HTTP client for the hub's REST API with the same trust as the
/// trainer's WebSocket.
pub fn http_client(
    tls: &Arc<rustls::ClientConfig>,
    timeout: Option<std::time::Duration>,
) -> Result<reqwest::Client, TlsError> {
    let mut b = reqwest::Client::builder().use_preconfigured_tls((**tls).clone());
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    Ok(b.build()?)
}
