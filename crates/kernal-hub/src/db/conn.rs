//! Opening the database: the writer connection and the read pool with their
//! pragmas, migrations, integrity checks and the WAL checkpointer.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::health;
use super::schema::*;
use crate::error::DbError;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

pub type DbPool = Pool<ConnectionManager<SqliteConnection>>;

/// Pragmas every connection needs: WAL so readers never block the writer,
/// a busy timeout instead of instant SQLITE_BUSY, and enforced foreign keys.
/// The page cache is set apart (`hub.db_cache_kib`, [`set_cache_kib`]);
/// statement journals stay in memory
/// instead of temporary files; and the WAL is folded back into the database
/// every 16384 pages instead of 1000, so the few pages every commit touches
/// (the ledger's tail and indexes) are copied back once, not every second.
/// A WAL that a burst grew is cut back to 128 MiB when it starts over.
///
/// The busy timeout comes first: switching to WAL takes a lock, and without
/// a timeout a connection opened while the writer holds one failed at once
/// ("database is locked" on about one start in five). Read connections do
/// not switch the mode (the writer did, and it is kept in the file).
const PRAGMAS: &str = "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
                       PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL; \
                       PRAGMA temp_store = MEMORY; \
                       PRAGMA wal_autocheckpoint = 16384; \
                       PRAGMA journal_size_limit = 134217728;";
const READ_PRAGMAS: &str = "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                            PRAGMA temp_store = MEMORY;";

/// Page cache of each connection (KiB) unless `hub.db_cache_kib` says
/// otherwise. The writer only ever appends to the ledger and the versions,
/// and its cache stays valid across its own transactions, so a large cache
/// filled with every page it ever wrote: at 16 MiB the hub's resident set grew
/// by about 1 KB per version for 16,000 versions. A batch of a thousand
/// update rows touches a few hundred pages, which 2 MiB holds.
pub const DEFAULT_CACHE_KIB: u64 = 2048;

/// Sets a connection's page cache to `kib` KiB (SQLite's negative
/// `cache_size`): the most memory it keeps, however large the database grows.
pub fn set_cache_kib(conn: &mut SqliteConnection, kib: u64) -> Result<(), DbError> {
    conn.batch_execute(&format!("PRAGMA cache_size = -{kib};"))?;
    Ok(())
}

#[derive(Debug)]
struct Pragmas {
    cache_kib: u64,
}

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for Pragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(READ_PRAGMAS)
            .and_then(|_| conn.batch_execute(&format!("PRAGMA cache_size = -{};", self.cache_kib)))
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Opens the single writer connection. The database file is created (or
/// kept) readable by the hub's user only; SQLite gives its WAL and shared
/// memory files the same mode.
pub fn connect(path: &Path) -> Result<SqliteConnection, DbError> {
    make_private(path)?;
    let mut conn = SqliteConnection::establish(&path.to_string_lossy())?;
    conn.batch_execute(PRAGMAS)?;
    set_cache_kib(&mut conn, DEFAULT_CACHE_KIB)?;
    Ok(conn)
}

/// Creates `path` with mode 0600 if it is missing, or narrows the mode of
/// an existing file to 0600 (the ledger holds trainers' updates).
pub fn make_private(path: &Path) -> Result<(), DbError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |e: std::io::Error| DbError::io(path.display(), e);
    match std::fs::metadata(path) {
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))
                    .map_err(io)?;
                log::warn!(
                    "{} was readable by others (mode {mode:o}); narrowed to {:o}",
                    path.display(),
                    mode & 0o700
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map(|_| ())
            .map_err(io),
        Err(e) => Err(io(e)),
    }
}

#[derive(QueryableByName)]
struct CheckRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    quick_check: String,
}

/// `PRAGMA quick_check`: the database's structure is sound, or what is wrong.
pub fn quick_check(conn: &mut SqliteConnection) -> Result<(), DbError> {
    let rows: Vec<CheckRow> = diesel::sql_query("PRAGMA quick_check").load(conn)?;
    let problems: Vec<String> = rows
        .into_iter()
        .map(|r| r.quick_check)
        .filter(|r| r != "ok")
        .take(5)
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(DbError::Corrupt(format!(
            "PRAGMA quick_check failed: {}",
            problems.join("; ")
        )))
    }
}

/// The highest ledger id.
pub fn max_update_id(conn: &mut SqliteConnection) -> Result<i64, DbError> {
    Ok(updates::table
        .select(diesel::dsl::max(updates::id))
        .first::<Option<i64>>(conn)?
        .unwrap_or(0))
}

/// Starts the thread that folds the WAL back into the database every 500 ms
/// (`PRAGMA wal_checkpoint(PASSIVE)`: it never waits for the writer or
/// readers). It runs as long as the process; returns None if it could not
/// start, and then the writer keeps SQLite's automatic checkpoints.
///
/// The flag it returns is raised after each pass that copied a sizeable WAL:
/// a busy writer is nearly always inside a transaction when the pass ends,
/// so the pass never reaches the WAL's end, SQLite never starts the WAL over
/// and it grows without bound (gigabytes in a minute of a thousand
/// trainers), making every page lookup and write slower. The writer answers
/// the flag with [`wal_checkpoint`] between two of its transactions.
pub fn start_checkpointer(path: &Path) -> Option<Arc<AtomicBool>> {
    let path = path.to_path_buf();
    let due = Arc::new(AtomicBool::new(false));
    let flag = due.clone();
    std::thread::Builder::new()
        .name("kernal-checkpoint".into())
        .spawn(move || {
            let mut conn = None;
            let mut trouble = health::TroubleLog::new("WAL checkpoint", Duration::from_secs(60));
            loop {
                std::thread::sleep(Duration::from_millis(500));
                if conn.is_none() {
                    conn = connect(&path).ok();
                }
                if let Some(c) = conn.as_mut() {
                    match wal_checkpoint(c) {
                        Ok(frames) => {
                            trouble.succeeded();
                            if frames >= WAL_RESTART_FRAMES {
                                flag.store(true, Ordering::Release)
                            }
                        }
                        Err(e) => {
                            // Every 500 ms while the disk is full: logged
                            // when it starts, each minute, and when it ends.
                            trouble.failed(&e);
                            conn = None;
                        }
                    }
                }
                if !path.exists() {
                    // The database is gone (a test's temporary directory).
                    return;
                }
            }
        })
        .ok()
        .map(|_| due)
}

/// A WAL this long (16384 frames, about 64 MiB) is worth starting over:
/// each catch-up costs the writer two fsyncs (about 20 ms), so not after
/// every pass.
pub(super) const WAL_RESTART_FRAMES: i64 = 16384;

#[derive(QueryableByName)]
struct CheckpointRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    log: i64,
}

/// A passive checkpoint; returns the WAL's length in frames. Run by the
/// writer between transactions after the checkpoint thread's pass, only the
/// frames committed since that pass are left to copy, and with none left the
/// writer's next transaction starts the WAL over.
pub fn wal_checkpoint(conn: &mut SqliteConnection) -> Result<i64, DbError> {
    let rows: Vec<CheckpointRow> =
        diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)").load(conn)?;
    Ok(rows.first().map(|r| r.log).unwrap_or(0))
}

/// Opens the read pool used by REST handlers, each connection with a page
/// cache of `cache_kib` KiB.
pub fn pool(path: &Path, size: u32, cache_kib: u64) -> Result<DbPool, DbError> {
    let manager = ConnectionManager::<SqliteConnection>::new(path.to_string_lossy());
    Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(10))
        .connection_customizer(Box::new(Pragmas { cache_kib }))
        .build(manager)
        .map_err(|e| DbError::Pool(e.to_string()))
}

pub fn run_migrations(conn: &mut SqliteConnection) -> Result<(), DbError> {
    conn.run_pending_migrations(MIGRATIONS)
        .map_err(|e| DbError::Migration(e.to_string()))?;
    Ok(())
}
