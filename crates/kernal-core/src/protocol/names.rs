//! What a name may be. Trainer, specialty, scenario and model names end up
//! in log lines, URLs and (for models) file and directory names, so one
//! rule, here, serves the hub, the config and the harness alike.

use thiserror::Error;

/// Why a name was refused; the text is what users see after "trainer ",
/// "specialty " or a config key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("a name has 1 to 64 characters")]
    Length,
    #[error("name `{0}` may only contain letters, digits, `_`, `-` and `.`")]
    Characters(String),
    #[error("model name `{0}` is a path component (`.` or `..`); choose another name")]
    PathComponent(String),
    #[error("model name `{0}` is a reserved device name on Windows (CON, PRN, AUX, NUL, COM1-9, LPT1-9, in any case, with or without an extension); choose another name")]
    DeviceName(String),
}

/// Names a model may not have: `.` and `..` are path components, and these
/// are device names on Windows whatever the case or extension (`con.txt`
/// is the console too).
const RESERVED_DEVICE_NAMES: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8",
    "COM9", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
];

/// Checks a trainer or model name: short, printable, no path characters.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > 64 {
        return Err(NameError::Length);
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(NameError::Characters(name.escape_default().to_string()));
    }
    Ok(())
}

/// A model's name is also a file name: on top of [`validate_name`], no
/// path component and no Windows device name.
pub fn validate_model_name(name: &str) -> Result<(), NameError> {
    validate_name(name)?;
    if name == "." || name == ".." {
        return Err(NameError::PathComponent(name.to_string()));
    }
    let stem = name.split('.').next().unwrap_or(name);
    if RESERVED_DEVICE_NAMES
        .iter()
        .any(|r| r.eq_ignore_ascii_case(stem))
    {
        return Err(NameError::DeviceName(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_file_names() {
        assert!(validate_model_name("digits").is_ok());
        assert!(validate_model_name("v1.2").is_ok());
        for bad in [".", "..", "CON", "con.txt", "Lpt9", "nul.tar.gz"] {
            assert!(validate_model_name(bad).is_err(), "{bad}");
        }
        assert_eq!(validate_name(""), Err(NameError::Length));
        assert!(matches!(
            validate_name("a/b"),
            Err(NameError::Characters(_))
        ));
        // Trainer names may be device names: they never become files.
        assert!(validate_name("con").is_ok());
    }
}
