//! TLS for the hub (`hub.tls_cert`, `hub.tls_key`): HTTPS for the REST API
//! and the dashboard, WSS for trainers, without a proxy in front.

use std::path::Path;

use super::HubError;

/// The server configuration from a PEM certificate chain and its key.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, HubError> {
    let certs = kernal_core::pem::load_certs(cert)
        .map_err(|e| HubError::Other(format!("hub.tls_cert: {e}")))?;
    let f = std::fs::File::open(key)
        .map_err(|e| HubError::Other(format!("hub.tls_key: {}: {e}", key.display())))?;
    let key_der = rustls_pemfile::private_key(&mut std::io::BufReader::new(f))
        .map_err(|e| HubError::Other(format!("hub.tls_key: {}: {e}", key.display())))?
        .ok_or_else(|| {
            HubError::Other(format!(
                "hub.tls_key: {}: no PEM private key in it",
                key.display()
            ))
        })?;
    rustls::ServerConfig::builder_with_provider(kernal_core::pem::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| HubError::Other(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| HubError::Other(format!("hub.tls_cert / hub.tls_key: {e}")))
}
