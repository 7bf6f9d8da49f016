//! TLS material both ends load: PEM certificates and the one rustls crypto
//! provider (no process-wide default), for the hub's server configuration
//! and the trainers' client configuration alike.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

/// Certificates of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut std::io::BufReader::new(f)).collect();
    let certs = certs.map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The rustls provider every part of kernal uses (no process-wide default).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
