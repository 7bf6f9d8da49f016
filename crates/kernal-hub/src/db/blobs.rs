//! Large payloads and checkpoints as files beside the database.

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::StorageHealth;
use crate::error::DbError;

/// Large payloads and checkpoints as files in `<database>.blobs/`, so a
/// 400 MB update is one sequential file write instead of a SQLite blob write
/// through the WAL. Files are written completely before the row naming them
/// commits; files no row names (a crash in between) are removed at start.
///
/// Removed files are kept as spares and written over, under the same name,
/// by a later blob: overwriting a file whose blocks and cached pages exist
/// costs a quarter of creating a file, allocating its blocks and later
/// unlinking it (measured: 0.35 ms against 1.4 ms for 4 MB on ext4), and a
/// thousand small updates a second do not contend for the directory's lock.
/// A name is only reused after the transaction that stopped naming it
/// committed, so no two live rows can share a file.
#[derive(Debug, Clone)]
pub struct BlobStore {
    pub dir: std::path::PathBuf,
    /// Blobs at least this large go to files.
    pub threshold: usize,
    spares: Arc<Mutex<Spares>>,
    /// Where write failures are recorded (shared with the whole hub).
    health: Arc<StorageHealth>,
}

#[derive(Debug, Default)]
struct Spares {
    files: Vec<(String, u64)>,
    bytes: u64,
    /// Open handles of files written here, by name, so a spare is written
    /// over without an `open` and `close`: at ten thousand small updates a
    /// second those two were a third of the cost of storing a payload, on
    /// the connection threads. Bounded by `open_limit` (see `keep_open`).
    open: std::collections::HashMap<String, std::fs::File>,
    open_limit: usize,
}

/// At most this many spare files, holding at most this many bytes.
const SPARE_FILES: usize = 4096;
const SPARE_BYTES: u64 = 1 << 30;

impl BlobStore {
    pub fn for_db(db: &Path, threshold: usize) -> BlobStore {
        let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".blobs");
        BlobStore {
            dir: db.with_file_name(name),
            threshold,
            spares: Arc::new(Mutex::new(Spares::default())),
            health: Arc::default(),
        }
    }

    /// Records write failures in `health` (the hub's one record).
    pub fn with_health(mut self, health: Arc<StorageHealth>) -> BlobStore {
        self.health = health;
        self
    }

    pub fn health(&self) -> &Arc<StorageHealth> {
        &self.health
    }

    /// Keeps up to `n` handles of files written here open (none by default).
    pub fn keep_open(self, n: usize) -> BlobStore {
        if let Ok(mut s) = self.spares.lock() {
            s.open_limit = n;
        }
        self
    }

    /// The open handle of a file written here, taken out while it is used.
    fn take_handle(&self, name: &str) -> Option<std::fs::File> {
        self.spares.lock().ok()?.open.remove(name)
    }

    /// Keeps a handle of a file just written, while there is room.
    fn keep_handle(&self, name: &str, f: std::fs::File) {
        if let Ok(mut s) = self.spares.lock() {
            if s.open.len() < s.open_limit {
                s.open.insert(name.to_string(), f);
            }
        }
    }

    /// How many blob files are held open.
    pub fn open_handles(&self) -> usize {
        self.spares.lock().map(|s| s.open.len()).unwrap_or(0)
    }

    /// A spare file, the one of exactly `len` bytes if there is one.
    fn take_spare(&self, len: u64) -> Option<(String, u64)> {
        let mut s = self.spares.lock().ok()?;
        let i = s
            .files
            .iter()
            .position(|(_, l)| *l == len)
            .or_else(|| s.files.len().checked_sub(1))?;
        let f = s.files.swap_remove(i);
        s.bytes -= f.1;
        Some(f)
    }

    /// Writes `bytes` over a spare file.
    fn reuse(&self, name: &str, size: u64, parts: &[&[u8]]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let f = match self.take_handle(name) {
            Some(f) => f,
            None => std::fs::OpenOptions::new()
                .write(true)
                .open(self.dir.join(name))?,
        };
        let mut at = 0u64;
        for p in parts {
            f.write_all_at(p, at)?;
            at += p.len() as u64;
        }
        if size != len as u64 {
            f.set_len(len as u64)?;
        }
        self.keep_handle(name, f);
        Ok(())
    }

    pub fn wants(&self, len: usize) -> bool {
        self.threshold > 0 && len >= self.threshold
    }

    /// Writes a new blob file and returns its name. Durable against a crash
    /// of the process (the page cache survives `kill -9`), like SQLite's WAL
    /// with `synchronous=NORMAL`.
    pub fn put(&self, bytes: &[u8]) -> Result<String, DbError> {
        self.put_parts(&[bytes])
    }

    /// [`put`](Self::put) of `parts` written one after the other (a version
    /// is its header and a view of its weights).
    pub fn put_parts(&self, parts: &[&[u8]]) -> Result<String, DbError> {
        let r = self.put_inner(parts);
        match &r {
            Ok(_) => self.health.wrote(),
            Err(e) => self.health.failed(&e.to_string()),
        }
        r
    }

    fn put_inner(&self, parts: &[&[u8]]) -> Result<String, DbError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if let Some((spare, size)) = self.take_spare(len as u64) {
            match self.reuse(&spare, size, parts) {
                Ok(()) => return Ok(spare),
                Err(e) => {
                    log::debug!("blob spare {spare} not reusable: {e}");
                    let _ = std::fs::remove_file(self.dir.join(&spare));
                }
            }
        }
        let name = format!("{}.safetensors", uuid::Uuid::new_v4().simple());
        let path = self.dir.join(&name);
        let write = || -> std::io::Result<std::fs::File> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            // Payloads are trainers' data: readable by the hub's user only.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            for p in parts {
                f.write_all(p)?;
            }
            Ok(f)
        };
        let written = match write() {
            // The directory is made by the first blob (not on every write:
            // at ten thousand small updates a second the `mkdir` shows).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.dir)
                    .map_err(|e| DbError::io(self.dir.display(), e))?;
                write()
            }
            r => r,
        };
        let f = written.map_err(|e| DbError::io(path.display(), e))?;
        self.keep_handle(&name, f);
        Ok(name)
    }

    pub fn get(&self, name: &str) -> Result<Vec<u8>, DbError> {
        if name.contains('/') || name.contains("..") {
            return Err(DbError::Corrupt(format!("bad blob name {name}")));
        }
        std::fs::read(self.dir.join(name)).map_err(|e| match e.kind() {
            // A missing file is data lost; anything else is the disk.
            std::io::ErrorKind::NotFound => DbError::Corrupt(format!("blob {name}: {e}")),
            _ => DbError::io(format_args!("blob {name}"), e),
        })
    }

    /// Retires a file no row names any more (the caller's transaction that
    /// stopped naming it has committed): kept as a spare while there is room,
    /// removed otherwise. The sweep at start removes spares with any other
    /// file no row names.
    pub fn remove(&self, name: &str) {
        if let Some(path) = self.retire(name, None) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Like [`BlobStore::remove`], but hands back the path to unlink when
    /// the file cannot be kept, so the caller can unlink it elsewhere:
    /// keeping a spare is a `stat`, unlinking a large file takes milliseconds.
    /// `size` is the file's size when the caller knows it (a `stat` per
    /// folded update shows at ten thousand updates a second).
    pub fn retire(&self, name: &str, size: Option<u64>) -> Option<std::path::PathBuf> {
        if name.contains('/') || name.contains("..") {
            return None;
        }
        let path = self.dir.join(name);
        let size = size.unwrap_or_else(|| std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0));
        if let Ok(mut s) = self.spares.lock() {
            if size > 0 && s.files.len() < SPARE_FILES && s.bytes + size <= SPARE_BYTES {
                s.files.push((name.to_string(), size));
                s.bytes += size;
                return None;
            }
            s.open.remove(name);
        }
        Some(path)
    }

    /// The path of a file to remove for good (a deleted model's): never
    /// kept as a spare, so its bytes leave the disk.
    pub fn forget(&self, name: &str) -> Option<std::path::PathBuf> {
        if name.contains('/') || name.contains("..") {
            return None;
        }
        if let Ok(mut s) = self.spares.lock() {
            s.open.remove(name);
        }
        Some(self.dir.join(name))
    }

    /// Takes every spare file out of the pool, for removal: a deleted
    /// model's retired payloads may be among them, and spares are only a
    /// cache (no row names them).
    pub fn drain_spares(&self) -> Vec<std::path::PathBuf> {
        let Ok(mut s) = self.spares.lock() else {
            return Vec::new();
        };
        s.bytes = 0;
        let files = std::mem::take(&mut s.files);
        files
            .into_iter()
            .map(|(name, _)| {
                s.open.remove(&name);
                self.dir.join(name)
            })
            .collect()
    }

    /// Removes files no row refers to; returns how many.
    pub fn sweep(&self, keep: &std::collections::HashSet<String>) -> usize {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut n = 0;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !keep.contains(&name) {
                if let Ok(mut s) = self.spares.lock() {
                    s.open.remove(&name);
                }
                let _ = std::fs::remove_file(e.path());
                n += 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_files_are_written_over_through_their_kept_handles() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::for_db(&dir.path().join("b.db"), 16).keep_open(8);
        let a = blobs.put(&[1u8; 100]).unwrap();
        let b = blobs.put(&[2u8; 100]).unwrap();
        assert_eq!(blobs.open_handles(), 2);
        // Retired as a spare, a file keeps its handle; the next blob of any
        // size is written over it through that handle, truncated to fit.
        assert!(blobs.retire(&a, Some(100)).is_none());
        let c = blobs.put(&[3u8; 40]).unwrap();
        assert_eq!(c, a);
        assert_eq!(blobs.get(&c).unwrap(), vec![3u8; 40]);
        assert_eq!(blobs.get(&b).unwrap(), vec![2u8; 100]);
        assert_eq!(blobs.open_handles(), 2);
        // A file that cannot be kept as a spare loses its handle too.
        blobs.spares.lock().unwrap().bytes = SPARE_BYTES;
        let path = blobs.retire(&b, Some(100)).expect("no room for a spare");
        std::fs::remove_file(path).unwrap();
        assert_eq!(blobs.open_handles(), 1);
        // The sweep at start drops the handles of what it removes.
        assert_eq!(blobs.sweep(&std::collections::HashSet::new()), 1);
        assert_eq!(blobs.open_handles(), 0);
    }

    #[test]
    fn blob_files_are_private_and_io_errors_are_not_corruption() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::for_db(&dir.path().join("p.db"), 1);
        let name = blobs.put(&[1u8; 10]).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&blobs.dir.join(&name)), 0o600);
        assert_eq!(mode(&blobs.dir), 0o700);
        // A directory the hub cannot write to: an I/O error, counted.
        std::fs::set_permissions(&blobs.dir, std::fs::Permissions::from_mode(0o500)).unwrap();
        let err = blobs.put(&[2u8; 10]);
        std::fs::set_permissions(&blobs.dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        // root ignores directory permissions; the check only means something
        // where they apply.
        if let Err(e) = err {
            assert!(matches!(e, DbError::Io(_)), "{e}");
            assert!(blobs.health().failing());
            assert_eq!(blobs.health().errors(), 1);
            blobs.put(&[3u8; 10]).unwrap();
            assert!(!blobs.health().failing());
        }
    }
}
