//! Large binary messages written to their file as they arrive, instead of
//! into the heap: a 400 MB update costs the hub a window of memory, not
//! 400 MB (issue 22: hub RSS follows the model, not the updates).
//!
//! The file is created in the blob directory under a blob's name, so once
//! the update is accepted it *is* its blob (the session adopts it: no second
//! write), and a crash before any row names it leaves a file the sweep at
//! start removes. A message refused or dropped removes its file.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::OwnedSemaphorePermit;

use super::frame::apply_mask;
use crate::mapped::Mapping;
use crate::protocol::ErrorCode;

/// Where and from what size binary messages are spooled.
#[derive(Debug, Clone)]
pub struct SpoolDir {
    pub dir: PathBuf,
    /// Unfragmented binary messages at least this large go to a file.
    pub min_bytes: usize,
}

/// A spooled file, removed when the last holder drops it unless it was
/// kept as a blob.
#[derive(Debug)]
pub struct SpoolFile {
    path: PathBuf,
    name: String,
    kept: AtomicBool,
}

impl SpoolFile {
    /// Keeps the file (it is now the update's blob) and returns its name.
    pub fn keep(&self) -> String {
        self.kept.store(true, Ordering::Release);
        self.name.clone()
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        if !self.kept.load(Ordering::Acquire) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A spooled message: its bytes (a mapping of the file) and the file.
#[derive(Debug, Clone)]
pub struct Spooled {
    pub bytes: Bytes,
    pub file: Arc<SpoolFile>,
}

/// A message being written to its file.
pub(super) struct SpoolWriter {
    out: std::fs::File,
    file: Arc<SpoolFile>,
    /// Unmasking happens here, a piece at a time, before the write.
    scratch: Vec<u8>,
    failed: Option<std::io::Error>,
}

impl SpoolWriter {
    pub(super) fn create(spool: &SpoolDir) -> std::io::Result<SpoolWriter> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let name = format!("{}.safetensors", uuid::Uuid::new_v4().simple());
        let path = spool.dir.join(&name);
        let open = || {
            // Payloads are trainers' data: readable by the hub's user only.
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
        };
        let out = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&spool.dir)?;
                open()?
            }
            r => r?,
        };
        Ok(SpoolWriter {
            out,
            file: Arc::new(SpoolFile {
                path,
                name,
                kept: AtomicBool::new(false),
            }),
            scratch: Vec::new(),
            failed: None,
        })
    }

    /// Unmasks and writes one piece of the payload (`done` bytes of it
    /// came before). After a failed write the rest is only counted, so the
    /// connection stays in step with its frames.
    pub(super) fn write(&mut self, piece: &[u8], mask: [u8; 4], done: usize) {
        if self.failed.is_some() {
            return;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(piece);
        apply_mask(&mut self.scratch, mask, done);
        if let Err(e) = self.out.write_all(&self.scratch) {
            self.failed = Some(e);
        }
    }

    /// The written message as mapped bytes holding `permits` while they
    /// live, or the stable code and sentence of why it could not be stored.
    pub(super) fn finish(
        self,
        permits: Vec<OwnedSemaphorePermit>,
    ) -> Result<Spooled, (ErrorCode, String)> {
        let refuse = |e: std::io::Error| {
            let code = match e.kind() {
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                    ErrorCode::StorageFull
                }
                _ => ErrorCode::StorageUnavailable,
            };
            (code, format!("the update could not be stored: {e}"))
        };
        if let Some(e) = self.failed {
            return Err(refuse(e));
        }
        let bytes = Mapping::bytes(&self.out, (permits, self.file.clone())).map_err(refuse)?;
        Ok(Spooled {
            bytes,
            file: self.file,
        })
    }
}
