//! `kernal harness ... --keep-weights DIR`: the run's models as checkpoints
//! (`collective.safetensors`, `solo-<trainer>.safetensors`,
//! `centralised.safetensors` where one ran), so anyone can judge them
//! later (`kernal evaluate --weights`, or load them into PyTorch).

use std::path::Path;

use super::error::HarnessError;

/// Writes each `(stem, bytes)` as `DIR/<stem>.safetensors` (creating DIR)
/// and returns the paths written. A stem is a file name of its own (trainer
/// names are checked to be that); anything else is refused.
pub(super) fn write_all(
    dir: &Path,
    files: &[(String, Vec<u8>)],
) -> Result<Vec<String>, HarnessError> {
    let err = |p: &Path, e: std::io::Error| {
        HarnessError::Run(format!("--keep-weights {}: {e}", p.display()))
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let mut out = Vec::new();
    for (stem, bytes) in files {
        if stem.is_empty() || stem.contains(['/', '\\']) || stem.starts_with('.') {
            return Err(HarnessError::Run(format!(
                "--keep-weights: `{stem}` is not a file name"
            )));
        }
        let p = dir.join(format!("{stem}.safetensors"));
        std::fs::write(&p, bytes).map_err(|e| err(&p, e))?;
        out.push(p.display().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_each_file_and_refuses_paths() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("kept");
        let files = vec![
            ("collective".to_string(), vec![1u8, 2]),
            ("solo-a".into(), vec![3]),
        ];
        let written = write_all(&sub, &files).unwrap();
        assert_eq!(written.len(), 2);
        assert_eq!(
            std::fs::read(sub.join("solo-a.safetensors")).unwrap(),
            vec![3]
        );
        assert!(write_all(&sub, &[("../x".into(), vec![])]).is_err());
    }
}
