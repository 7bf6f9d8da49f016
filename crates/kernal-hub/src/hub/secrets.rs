//! The admin token: from the config, or generated once into a file only
//! the hub's user can read.

use std::path::Path;

use crate::config::Config;
use crate::error::HubError;

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

// ---------------------------------------------------------------- trainer tokens
//
// Two kinds of trainer token, told apart by their stored hash:
//
// - Hub-issued (`POST /v1/trainer-tokens`): `kt1_` and 64 hex digits, 16
//   random bytes followed by the first 16 bytes of an HMAC of them under the
//   hub's token key, so the hub recognises its own tokens without keeping a
//   list. 128 random bits cannot be guessed, so their stored hash may be
//   fast: HMAC-SHA256 under the same key (`$kernal-hmac$` and 64 hex digits),
//   a microsecond per hello instead of argon2's 35 ms. The key lives in a
//   0600 file next to the database (`token.key` in the state directory), never
//   in it: a stolen database alone cannot test a single guess, and with the
//   key too, 128 random bits are still out of reach.
// - Any other token (chosen by a person, perhaps guessable): argon2 as
//   before, checked two at a time. Tokens registered before this existed are
//   all of this kind and keep working unchanged.

/// The prefix of a hub-issued trainer token.
pub const ISSUED_PREFIX: &str = "kt1_";
/// The prefix of a stored HMAC-SHA256 token hash.
const HMAC_PREFIX: &str = "$kernal-hmac$";

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token key file {0}: {1}")]
    KeyFile(String, std::io::Error),
    #[error("token key file {0} does not hold 64 hex digits")]
    BadKey(String),
    #[error("argon2: {0}")]
    Argon2(String),
}

/// The hub's secret for issuing and checking fast trainer tokens.
#[derive(Clone)]
pub struct TokenKey(ring::hmac::Key);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

impl TokenKey {
    pub fn from_bytes(raw: &[u8; 32]) -> Self {
        TokenKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, raw))
    }

    /// Loads `token.key` from the state directory, creating it (0600, 32
    /// random bytes as hex) at first start.
    pub fn load_or_create(cfg: &Config) -> Result<Self, TokenError> {
        let dir = cfg.state_dir();
        let path = dir.join("token.key");
        let name = path.display().to_string();
        if path.exists() {
            let text =
                std::fs::read_to_string(&path).map_err(|e| TokenError::KeyFile(name.clone(), e))?;
            let raw: [u8; 32] = unhex(text.trim())
                .and_then(|v| v.try_into().ok())
                .ok_or(TokenError::BadKey(name))?;
            return Ok(Self::from_bytes(&raw));
        }
        std::fs::create_dir_all(&dir).map_err(|e| TokenError::KeyFile(name.clone(), e))?;
        let mut raw = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
        write_private(&path, &hex(&raw)).map_err(|e| TokenError::KeyFile(name.clone(), e))?;
        log::info!("generated the trainer token key into {name} (mode 0600)");
        Ok(Self::from_bytes(&raw))
    }

    fn tag(&self, domain: &[u8], data: &[u8]) -> ring::hmac::Tag {
        let mut ctx = ring::hmac::Context::with_key(&self.0);
        ctx.update(domain);
        ctx.update(data);
        ctx.sign()
    }

    /// A new hub-issued trainer token.
    pub fn issue(&self) -> String {
        let mut random = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
        let tag = self.tag(b"issue", &random);
        format!(
            "{ISSUED_PREFIX}{}{}",
            hex(&random),
            hex(&tag.as_ref()[..16])
        )
    }

    /// Whether `token` is one this hub issued (its MAC checks out).
    pub fn issued(&self, token: &str) -> bool {
        let Some(raw) = token.strip_prefix(ISSUED_PREFIX).and_then(unhex) else {
            return false;
        };
        if raw.len() != 32 {
            return false;
        }
        let tag = self.tag(b"issue", &raw[..16]);
        // Every byte compared whatever the first difference (constant time).
        tag.as_ref()[..16]
            .iter()
            .zip(&raw[16..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    fn stored_hmac(&self, token: &str) -> String {
        format!(
            "{HMAC_PREFIX}{}",
            hex(self.tag(b"store", token.as_bytes()).as_ref())
        )
    }
}

/// Whether checking a token against `stored` is the slow kind (argon2),
/// which must run off the connection thread and be rationed.
pub fn slow_check(stored: &str) -> bool {
    !stored.starts_with(HMAC_PREFIX)
}

/// Whether hashing `token` for registration is the slow kind.
pub fn slow_hash(key: &TokenKey, token: &str) -> bool {
    !key.issued(token)
}

/// The one place trainer tokens are hashed for storage: HMAC-SHA256 under the
/// hub's key for hub-issued tokens, argon2 with a fresh salt for any other.
/// (The evaluator role's tokens go through here too.)
pub fn hash_token(key: &TokenKey, token: &str) -> Result<String, TokenError> {
    if key.issued(token) {
        return Ok(key.stored_hmac(token));
    }
    use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(token.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| TokenError::Argon2(e.to_string()))
}

/// Checks `token` against a stored hash of either kind (constant time for
/// the fast kind; argon2's own check for the other).
pub fn verify_token(key: &TokenKey, token: &str, stored: &str) -> bool {
    if let Some(hexed) = stored.strip_prefix(HMAC_PREFIX) {
        let Some(want) = unhex(hexed) else {
            return false;
        };
        let signed = [b"store".as_slice(), token.as_bytes()].concat();
        return ring::hmac::verify(&key.0, &signed, &want).is_ok();
    }
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    match PasswordHash::new(stored) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(token.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_hash_fast_and_others_with_argon2() {
        let key = TokenKey::from_bytes(&[7u8; 32]);
        let t = key.issue();
        assert!(t.starts_with(ISSUED_PREFIX) && t.len() == ISSUED_PREFIX.len() + 64);
        assert!(key.issued(&t));
        let h = hash_token(&key, &t).unwrap();
        assert!(!slow_check(&h) && !h.contains(&t[4..]));
        assert!(verify_token(&key, &t, &h));
        assert!(!verify_token(&key, &key.issue(), &h));
        // Another hub's key neither recognises the token nor accepts its hash.
        let other = TokenKey::from_bytes(&[8u8; 32]);
        assert!(!other.issued(&t));
        assert!(!verify_token(&other, &t, &h));
        // A forged token of the right shape is a person's token: argon2.
        let forged = format!("{ISSUED_PREFIX}{}", "ab".repeat(32));
        assert!(!key.issued(&forged));
        let hf = hash_token(&key, &forged).unwrap();
        assert!(slow_check(&hf) && hf.starts_with("$argon2"));
        assert!(verify_token(&key, &forged, &hf));
        // A person's token (and every token stored before) stays argon2.
        let hp = hash_token(&key, "s3cret").unwrap();
        assert!(slow_check(&hp) && !hp.contains("s3cret"));
        assert!(verify_token(&key, "s3cret", &hp));
        assert!(!verify_token(&key, "other", &hp));
        assert!(!verify_token(&key, "s3cret", "$kernal-hmac$zz"));
    }
}
