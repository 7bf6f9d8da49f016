//! TLS on the client side (trainer, harness, benchmark): the public roots
//! every client trusts, plus a private CA a team's hub may use (`--ca`).

use std::path::Path;
use std::sync::Arc;

pub use kernal_core::pem::{load_certs, provider};

/// A client configuration trusting the public web roots and, if given, the
/// certificates of `ca` (a private CA or a self-signed hub certificate).
pub fn client_config(ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(p) = ca {
        for cert in load_certs(p)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// An HTTP client for the hub's REST API with the same trust as the
/// trainer's WebSocket.
pub fn http_client(
    tls: &Arc<rustls::ClientConfig>,
    timeout: Option<std::time::Duration>,
) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder().use_preconfigured_tls((**tls).clone());
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build().map_err(|e| e.to_string())
}
