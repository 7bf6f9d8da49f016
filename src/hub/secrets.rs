//! The admin token: from the config, or generated once into a file only
//! the hub's user can read.

use std::path::Path;

use super::HubError;
use crate::config::Config;

/// Loads or creates the admin token: config first, else a 0600 file in the
/// state directory (generated at first start; its path is logged, never the token).
pub fn admin_token(cfg: &Config) -> Result<String, HubError> {
    if !cfg.hub.admin_token.is_empty() {
        return Ok(cfg.hub.admin_token.clone());
    }
    let dir = cfg.state_dir();
    let path = dir.join("admin.token");
    if path.exists() {
        let t = std::fs::read_to_string(&path)
            .map_err(|e| HubError::Io(path.display().to_string(), e))?;
        let t = t.trim().to_string();
        if !t.is_empty() {
            log::info!("admin token read from {}", path.display());
            return Ok(t);
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| HubError::Io(dir.display().to_string(), e))?;
    use rand::RngCore;
    let mut raw = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &token).map_err(|e| HubError::Io(path.display().to_string(), e))?;
    log::warn!(
        "generated an admin token into {} (mode 0600); use it as `Authorization: Bearer <token>`",
        path.display()
    );
    Ok(token)
}

fn write_private(path: &Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(content.as_bytes())?;
        f.write_all(b"\n")
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, content)
    }
}
