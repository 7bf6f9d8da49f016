//! The kernel model's text: the shipped Linux 6.1 excerpts (embedded, see
//! `data/kernel/README`), split by file into training and held-out code per
//! specialty, and a member's own source tree (`--source`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::data::fnv1a;

static CORPUS_GZ: &[u8] = include_bytes!("../../../../data/kernel/corpus.gz");
static MANIFEST: &str = include_str!("../../../../data/kernel/MANIFEST");

/// The specialties the shipped corpus has, with the Linux directory each
/// one's code comes from.
pub const SPECIALTIES: &[(&str, &str)] = &[
    ("networking", "net/"),
    ("graphics", "drivers/gpu/drm/"),
    ("security", "security/"),
];

/// Held-out code of subsystems no trainer has (fs/, mm/).
pub const UNSEEN: &str = "unseen";

/// Largest own tree `--source` reads (bytes of matching files); past it the
/// remaining files are left out, so a trainer pointed at `/` stays bounded.
pub const MAX_SOURCE_BYTES: u64 = 64 << 20;
/// Files larger than this are skipped by `--source` (generated tables).
pub const MAX_SOURCE_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error("the embedded kernel corpus is damaged: {0}")]
    Embedded(String),
    #[error("{path}: {message}")]
    Io { path: String, message: String },
    #[error("{0}")]
    Empty(String),
}

/// One file of the corpus.
#[derive(Debug, Clone)]
pub struct CorpusFile {
    pub heldout: bool,
    pub specialty: String,
    /// Path relative to the Linux tree.
    pub path: String,
    pub bytes: Vec<u8>,
}

/// The shipped corpus, decompressed once per process (1.2 MB).
pub fn builtin() -> Result<&'static [CorpusFile], CorpusError> {
    static CELL: OnceLock<Result<Vec<CorpusFile>, String>> = OnceLock::new();
    CELL.get_or_init(parse_builtin)
        .as_deref()
        .map_err(|e| CorpusError::Embedded(e.clone()))
}

fn parse_builtin() -> Result<Vec<CorpusFile>, String> {
    let mut text = Vec::new();
    flate2::read::GzDecoder::new(CORPUS_GZ)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    let mut files = Vec::new();
    let mut off = 0usize;
    for line in MANIFEST.lines().filter(|l| !l.trim().is_empty()) {
        let parts: Vec<&str> = line.splitn(4, ' ').collect();
        let [set, specialty, len, path] = parts[..] else {
            return Err(format!("bad MANIFEST line `{line}`"));
        };
        let len: usize = len.parse().map_err(|_| format!("bad length in `{line}`"))?;
        let end = off
            .checked_add(len)
            .filter(|e| *e <= text.len())
            .ok_or_else(|| format!("MANIFEST runs past the corpus at `{line}`"))?;
        files.push(CorpusFile {
            heldout: set == "heldout",
            specialty: specialty.to_string(),
            path: path.to_string(),
            bytes: text[off..end].to_vec(),
        });
        off = end;
    }
    if off != text.len() {
        return Err(format!("{} bytes not listed in MANIFEST", text.len() - off));
    }
    Ok(files)
}

fn join<'a>(files: impl Iterator<Item = &'a CorpusFile>) -> Vec<u8> {
    let mut out = Vec::new();
    for f in files {
        out.extend_from_slice(&f.bytes);
    }
    out
}

/// Whether `specialty` has its own part of the shipped corpus.
pub fn is_builtin_specialty(specialty: &str) -> bool {
    SPECIALTIES.iter().any(|(s, _)| *s == specialty)
}

/// The training code of a specialty: its own subsystem's training files, or
/// for any other name a deterministic third of all of them (file `i` of the
/// training files where `i % 3 == fnv1a(specialty) % 3`).
pub fn train_text(specialty: &str) -> Result<Vec<u8>, CorpusError> {
    let files = builtin()?;
    let train = files.iter().filter(|f| !f.heldout && f.specialty != UNSEEN);
    if is_builtin_specialty(specialty) {
        Ok(join(train.filter(|f| f.specialty == specialty)))
    } else {
        let shard = (fnv1a(specialty) % 3) as usize;
        Ok(join(
            train
                .enumerate()
                .filter(|(i, _)| i % 3 == shard)
                .map(|(_, f)| f),
        ))
    }
}

/// The held-out code of one part of the corpus (`networking`, `graphics`,
/// `security` or `unseen`), never trained on.
pub fn heldout_text(part: &str) -> Result<Vec<u8>, CorpusError> {
    Ok(join(
        builtin()?
            .iter()
            .filter(|f| f.heldout && f.specialty == part),
    ))
}

/// The held-out code of the three specialties together.
pub fn heldout_all() -> Result<Vec<u8>, CorpusError> {
    Ok(join(
        builtin()?
            .iter()
            .filter(|f| f.heldout && f.specialty != UNSEEN),
    ))
}

/// The files under `roots` (files or directories, walked in path order)
/// whose name ends with one of `exts`, at most [`MAX_SOURCE_FILE_BYTES`]
/// each and [`MAX_SOURCE_BYTES`] in all. Symbolic links are not followed.
pub fn source_files(
    roots: &[PathBuf],
    exts: &[String],
) -> Result<Vec<(PathBuf, Vec<u8>)>, CorpusError> {
    let io = |p: &Path, e: std::io::Error| CorpusError::Io {
        path: p.display().to_string(),
        message: e.to_string(),
    };
    let mut paths = Vec::new();
    for root in roots {
        let meta = std::fs::metadata(root).map_err(|e| io(root, e))?;
        if meta.is_file() {
            paths.push(root.clone());
            continue;
        }
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .map_err(|e| io(&dir, e))?
                .filter_map(|e| e.ok())
                .collect();
            entries.sort_by_key(|e| e.path());
            for e in entries.into_iter().rev() {
                let Ok(ft) = e.file_type() else { continue };
                let p = e.path();
                if ft.is_dir() {
                    stack.push(p);
                } else if ft.is_file()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| exts.iter().any(|x| n.ends_with(x.as_str())))
                {
                    paths.push(p);
                }
            }
        }
    }
    paths.sort();
    paths.dedup();
    let mut out = Vec::new();
    let mut total = 0u64;
    for p in paths {
        let len = std::fs::metadata(&p).map_err(|e| io(&p, e))?.len();
        if len == 0 || len > MAX_SOURCE_FILE_BYTES || total + len > MAX_SOURCE_BYTES {
            continue;
        }
        let bytes = std::fs::read(&p).map_err(|e| io(&p, e))?;
        total += bytes.len() as u64;
        out.push((p, bytes));
    }
    if out.is_empty() {
        return Err(CorpusError::Empty(format!(
            "no file ending in {} (1 byte to {} MiB) under {}",
            exts.join(", "),
            MAX_SOURCE_FILE_BYTES >> 20,
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(out)
}

/// A member's own tree split by file: one file in ten (by a hash of its
/// path) is held out for evaluation; with fewer than ten files, the last
/// tenth of the text. Returns (training text, held-out text).
pub fn split_source(files: &[(PathBuf, Vec<u8>)]) -> (Vec<u8>, Vec<u8>) {
    let (mut train, mut held) = (Vec::new(), Vec::new());
    if files.len() >= 10 {
        for (p, b) in files {
            if fnv1a(&p.to_string_lossy()).is_multiple_of(10) {
                held.extend_from_slice(b);
            } else {
                train.extend_from_slice(b);
            }
        }
    }
    if held.is_empty() || train.is_empty() {
        let all: Vec<u8> = files.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        let cut = all.len() - all.len() / 10;
        return (all[..cut].to_vec(), all[cut..].to_vec());
    }
    (train, held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_parts_are_disjoint_and_sized() {
        let files = builtin().unwrap();
        for (s, dir) in SPECIALTIES {
            let train: Vec<_> = files
                .iter()
                .filter(|f| f.specialty == *s && !f.heldout)
                .collect();
            let held: Vec<_> = files
                .iter()
                .filter(|f| f.specialty == *s && f.heldout)
                .collect();
            assert!(train.iter().chain(&held).all(|f| f.path.starts_with(dir)));
            assert!(train.iter().all(|t| held.iter().all(|h| h.path != t.path)));
            let n: usize = train.iter().map(|f| f.bytes.len()).sum();
            assert!((250_000..400_000).contains(&n), "{s}: {n}");
            assert!(!heldout_text(s).unwrap().is_empty());
        }
        assert!(!heldout_text(UNSEEN).unwrap().is_empty());
        // Another specialty gets a deterministic share of all three.
        let a = train_text("compilers").unwrap();
        assert_eq!(a, train_text("compilers").unwrap());
        assert!(a.len() > 200_000 && a.len() < 500_000);
    }

    #[test]
    fn source_tree_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        for i in 0..12 {
            std::fs::write(
                dir.path().join(format!("sub/f{i}.c")),
                format!("int f{i};\n"),
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), "not code").unwrap();
        let files = source_files(&[dir.path().to_path_buf()], &[".c".into(), ".h".into()]).unwrap();
        assert_eq!(files.len(), 12);
        let (train, held) = split_source(&files);
        assert!(!train.is_empty() && !held.is_empty());
        assert!(source_files(&[dir.path().to_path_buf()], &[".rs".into()]).is_err());
    }
}
