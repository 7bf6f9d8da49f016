//! The acknowledgement mark: the newest ledger id the hub acknowledged,
//! written beside the database after each batch of updates commits and
//! before their acks go out.
//!
//! SQLite recovers its WAL up to the first frame it cannot verify; a
//! damaged commit frame drops that commit and every later one without a
//! word. Comparing this mark with the ledger at start turns that silent
//! loss into an error that names what is missing. The mark is written like
//! the WAL is with `synchronous=NORMAL` (to the page cache, which survives
//! `kill -9`), so the two agree after any crash of the process.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::DbError;

pub struct AckMark {
    file: File,
    last: i64,
}

/// `<db>.acked`, beside the database.
pub fn mark_path(db: &Path) -> PathBuf {
    let mut name = db.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".acked");
    db.with_file_name(name)
}

/// The recorded mark, if there is one.
pub fn read(db: &Path) -> Option<i64> {
    let bytes = std::fs::read(mark_path(db)).ok()?;
    let b: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(i64::from_le_bytes(b))
}

/// Removes the mark (a new database starts without one).
pub fn reset(db: &Path) {
    let _ = std::fs::remove_file(mark_path(db));
}

impl AckMark {
    pub fn open(db: &Path) -> Result<AckMark, DbError> {
        let path = mark_path(db);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| DbError::io(path.display(), e))?;
        Ok(AckMark {
            file,
            last: read(db).unwrap_or(0),
        })
    }

    /// Records that every ledger id up to `id` was acknowledged.
    pub fn record(&mut self, id: i64) -> Result<(), DbError> {
        if id <= self.last {
            return Ok(());
        }
        self.file
            .write_all_at(&id.to_le_bytes(), 0)
            .map_err(|e| DbError::io("acknowledgement mark", e))?;
        self.last = id;
        Ok(())
    }
}

/// What the ledger lost, if anything: the mark says `acked`, the ledger's
/// newest id is `newest`.
pub fn lost(acked: Option<i64>, newest: i64) -> Option<(i64, i64)> {
    match acked {
        Some(a) if a > newest => Some((newest, a)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_survives_reopening_and_only_grows() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        assert_eq!(read(&db), None);
        let mut m = AckMark::open(&db).unwrap();
        m.record(7).unwrap();
        m.record(3).unwrap();
        assert_eq!(read(&db), Some(7));
        drop(m);
        let mut m = AckMark::open(&db).unwrap();
        m.record(9).unwrap();
        assert_eq!(read(&db), Some(9));
        assert_eq!(lost(Some(9), 9), None);
        assert_eq!(lost(Some(9), 8), Some((8, 9)));
        assert_eq!(lost(None, 8), None);
        reset(&db);
        assert_eq!(read(&db), None);
    }
}
