//! Where a trainer's or an evaluator's token comes from: the positional
//! argument, else `--token-file`, else `KERNAL_TOKEN` (so it need not show in
//! `ps`). One rule for both commands.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("--token-file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("--token-file {0}: the file is empty")]
    Empty(String),
    #[error("give the {role}'s token: as the {position} argument, with --token-file FILE, or in KERNAL_TOKEN")]
    Missing {
        role: &'static str,
        position: &'static str,
    },
}

/// The token of `role` (`trainer`, `evaluator`), whose positional token
/// argument is the `position`th (`third`, `second`).
pub fn token(
    given: Option<String>,
    file: Option<&Path>,
    role: &'static str,
    position: &'static str,
) -> Result<String, TokenError> {
    if let Some(t) = given {
        return Ok(t);
    }
    if let Some(p) = file {
        let text = std::fs::read_to_string(p).map_err(|source| TokenError::Read {
            path: p.display().to_string(),
            source,
        })?;
        let t = text.lines().next().unwrap_or("").trim().to_string();
        if t.is_empty() {
            return Err(TokenError::Empty(p.display().to_string()));
        }
        return Ok(t);
    }
    match std::env::var("KERNAL_TOKEN") {
        Ok(t) if !t.is_empty() => Ok(t),
        _ => Err(TokenError::Missing { role, position }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_given_token_wins_then_the_file_first_line() {
        assert_eq!(
            token(Some("a".into()), None, "trainer", "third").unwrap(),
            "a"
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "  kt1_x \nignored\n").unwrap();
        assert_eq!(token(None, Some(&f), "trainer", "third").unwrap(), "kt1_x");
        std::fs::write(&f, "\n").unwrap();
        assert!(matches!(
            token(None, Some(&f), "trainer", "third"),
            Err(TokenError::Empty(_))
        ));
    }
}
