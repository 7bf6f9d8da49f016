//! SQLite storage through diesel. Every function here is blocking: the hub
//! calls writes from the Persister (a SyncArbiter thread) and reads inside
//! `web::block`, never on an async executor thread.

pub mod acked;
pub mod blobs;
pub mod health;
pub mod schema;

pub use blobs::BlobStore;
pub use health::StorageHealth;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::sqlite::SqliteConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use serde::Serialize;

use crate::error::DbError;
use schema::*;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

pub type DbPool = Pool<ConnectionManager<SqliteConnection>>;

/// Pragmas every connection needs: WAL so readers never block the writer,
/// a busy timeout instead of instant SQLITE_BUSY, and enforced foreign keys.
/// A 16 MiB page cache lets a batch of a thousand update rows commit without
/// spilling pages to the WAL half-way; statement journals stay in memory
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
                       PRAGMA cache_size = -16384; PRAGMA temp_store = MEMORY; \
                       PRAGMA wal_autocheckpoint = 16384; \
                       PRAGMA journal_size_limit = 134217728;";
const READ_PRAGMAS: &str = "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                            PRAGMA cache_size = -16384; PRAGMA temp_store = MEMORY;";

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[derive(Debug)]
struct Pragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for Pragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(READ_PRAGMAS)
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
    Ok(conn)
}

/// Creates `path` with mode 0600 if it is missing, or narrows the mode of
/// an existing file to 0600 (the ledger holds trainers' updates).
pub fn make_private(path: &Path) -> Result<(), DbError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |e: std::io::Error| DbError::Io(format!("{}: {e}", path.display()));
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
            loop {
                std::thread::sleep(Duration::from_millis(500));
                if conn.is_none() {
                    conn = connect(&path).ok();
                }
                if let Some(c) = conn.as_mut() {
                    match wal_checkpoint(c) {
                        Ok(frames) if frames >= WAL_RESTART_FRAMES => {
                            flag.store(true, Ordering::Release)
                        }
                        Ok(_) => {}
                        Err(e) => {
                            log::warn!("WAL checkpoint failed: {e}");
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
const WAL_RESTART_FRAMES: i64 = 16384;

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

/// Opens the read pool used by REST handlers.
pub fn pool(path: &Path, size: u32) -> Result<DbPool, DbError> {
    let manager = ConnectionManager::<SqliteConnection>::new(path.to_string_lossy());
    Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(10))
        .connection_customizer(Box::new(Pragmas))
        .build(manager)
        .map_err(|e| DbError::Pool(e.to_string()))
}

pub fn run_migrations(conn: &mut SqliteConnection) -> Result<(), DbError> {
    conn.run_pending_migrations(MIGRATIONS)
        .map_err(|e| DbError::Migration(e.to_string()))?;
    Ok(())
}

// ---------------------------------------------------------------- rows

#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize)]
#[diesel(table_name = models)]
pub struct ModelRow {
    pub name: String,
    pub architecture: String,
    pub layout: String,
    pub settings: Option<String>,
    pub created_at: String,
    /// JSON of `hub::state::NormState`; NULL: no normalisation.
    pub normalisation: Option<String>,
    /// The evaluation set's CSV as uploaded.
    #[serde(skip)]
    pub evalset: Option<String>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = versions)]
pub struct NewVersion<'a> {
    pub model: &'a str,
    pub version: i64,
    pub parent: Option<i64>,
    pub num_updates: i32,
    pub weights: &'a [u8],
    pub metrics: String,
    pub created_at: String,
    /// Set when the checkpoint is in a blob file (then `weights` is empty).
    pub weights_file: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = versions)]
pub struct VersionMeta {
    #[serde(skip)]
    pub id: i64,
    pub model: String,
    pub version: i64,
    pub parent: Option<i64>,
    pub num_updates: i32,
    #[serde(skip)]
    pub metrics: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize)]
#[diesel(table_name = trainers)]
pub struct TrainerRow {
    pub name: String,
    pub specialty: String,
    #[serde(skip)]
    pub token_hash: String,
    pub revoked: bool,
    pub created_at: String,
    pub last_seen: Option<String>,
}

// NULL, not DEFAULT, for a None: a batch of rows with DEFAULT cannot be one
// SQLite statement, and no nullable column of `updates` has another default.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = updates, treat_none_as_default_value = false)]
pub struct NewUpdate<'a> {
    pub update_id: &'a str,
    pub trainer: &'a str,
    pub model: &'a str,
    pub base_version: i64,
    pub num_examples: i64,
    pub staleness: i64,
    pub loss: Option<f64>,
    pub bytes: i64,
    pub status: &'a str,
    pub refusal_code: Option<&'a str>,
    pub refusal_message: Option<&'a str>,
    pub received_at: String,
    pub payload: Option<&'a [u8]>,
    pub payload_file: Option<&'a str>,
}

/// One entry of the contributions ledger.
#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = updates)]
pub struct UpdateRow {
    /// Ledger id: increasing, the cursor of `GET /v1/updates?after=`.
    pub id: i64,
    pub update_id: String,
    pub trainer: String,
    pub model: String,
    pub base_version: i64,
    pub num_examples: i64,
    pub staleness: i64,
    pub loss: Option<f64>,
    pub bytes: i64,
    pub status: String,
    pub applied_in_version: Option<i64>,
    pub refusal_code: Option<String>,
    pub refusal_message: Option<String>,
    pub received_at: String,
}

#[derive(Debug, Clone, Insertable, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = evaluations)]
pub struct EvalRow {
    pub model: String,
    pub version: i64,
    pub trainer: String,
    pub specialty: String,
    pub specialty_accuracy: Option<f64>,
    pub global_accuracy: Option<f64>,
    pub loss: Option<f64>,
    pub num_examples: Option<i64>,
    pub created_at: String,
}

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = harness_runs)]
pub struct HarnessRunRow {
    pub id: i64,
    pub scenario: String,
    pub passed: bool,
    pub collective_accuracy: Option<f64>,
    #[serde(skip)]
    pub report: String,
    pub started_at: String,
    pub finished_at: String,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = harness_runs)]
pub struct NewHarnessRun {
    pub scenario: String,
    pub passed: bool,
    pub collective_accuracy: Option<f64>,
    pub report: String,
    pub started_at: String,
    pub finished_at: String,
}

/// A pending (acknowledged, not yet applied) update reloaded at start.
#[derive(Debug, Clone, Queryable)]
pub struct PendingRow {
    pub id: i64,
    pub update_id: String,
    pub trainer: String,
    pub base_version: i64,
    pub num_examples: i64,
    pub staleness: i64,
    pub payload: Option<Vec<u8>>,
    pub payload_file: Option<String>,
}

// ---------------------------------------------------------------- writes

/// Outcome of recording an accepted update.
#[derive(Debug, Clone, PartialEq)]
pub enum InsertOutcome {
    /// Newly durable; `row_id` names it in the ledger.
    Inserted { row_id: i64 },
    /// The same (model, trainer, update_id) was accepted before.
    Duplicate {
        status: String,
        staleness: i64,
        base_version: i64,
    },
}

pub fn insert_update(
    conn: &mut SqliteConnection,
    row: &NewUpdate<'_>,
) -> Result<InsertOutcome, DbError> {
    conn.immediate_transaction(|conn| insert_update_in(conn, row))
}

/// Inserts a batch of updates in one transaction: one commit for all, which
/// is what makes a thousand small updates cheap. Should any row fail, the
/// batch is rolled back and each row is tried in its own transaction, so one
/// bad row does not take the others with it (and the common path needs no
/// savepoint per row).
pub fn insert_updates(
    conn: &mut SqliteConnection,
    rows: &[NewUpdate<'_>],
) -> Result<Vec<Result<InsertOutcome, DbError>>, DbError> {
    // The unique index on (model, trainer, update_id) refuses a duplicate;
    // it is rare (a resend after a reconnect), so the batch does not look
    // for one first, and the per-row path below sorts it out.
    let all = conn.immediate_transaction(|conn| {
        let mut ids = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(INSERT_CHUNK) {
            ids.extend(insert_chunk(conn, chunk)?);
        }
        Ok::<_, DbError>(ids)
    });
    match all {
        Ok(ids) => Ok(ids
            .into_iter()
            .map(|row_id| Ok(InsertOutcome::Inserted { row_id }))
            .collect()),
        Err(_) => Ok(rows.iter().map(|row| insert_update(conn, row)).collect()),
    }
}

/// Rows per INSERT statement of a batch. One statement of many rows costs a
/// fraction of as many single-row statements (each has its own statement
/// lookup, binding and VDBE run: two thirds of the writer's time per update
/// at a thousand trainers); full chunks share one cached statement.
const INSERT_CHUNK: usize = 32;

#[derive(QueryableByName)]
struct LastId {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

/// Inserts `rows` with one statement and returns their ids in order: the
/// writer holds the database's write lock and the ids are AUTOINCREMENT, so
/// the rows of one statement get consecutive ids ending at the last one.
fn insert_chunk(conn: &mut SqliteConnection, rows: &[NewUpdate<'_>]) -> Result<Vec<i64>, DbError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let n = diesel::insert_into(updates::table)
        .values(rows)
        .execute(conn)?;
    if n != rows.len() {
        return Err(DbError::Corrupt(format!(
            "inserted {n} of {} update rows",
            rows.len()
        )));
    }
    let last = diesel::sql_query("SELECT last_insert_rowid() AS id")
        .get_result::<LastId>(conn)?
        .id;
    let first = last - rows.len() as i64 + 1;
    Ok((first..=last).collect())
}

fn insert_update_in(
    conn: &mut SqliteConnection,
    row: &NewUpdate<'_>,
) -> Result<InsertOutcome, DbError> {
    {
        let existing: Option<(String, i64, i64)> = updates::table
            .filter(updates::model.eq(row.model))
            .filter(updates::trainer.eq(row.trainer))
            .filter(updates::update_id.eq(row.update_id))
            .filter(updates::refusal_code.is_null())
            .select((updates::status, updates::staleness, updates::base_version))
            .first(conn)
            .optional()?;
        if let Some((status, staleness, base_version)) = existing {
            return Ok(InsertOutcome::Duplicate {
                status,
                staleness,
                base_version,
            });
        }
        let row_id: i64 = diesel::insert_into(updates::table)
            .values(row)
            .returning(updates::id)
            .get_result(conn)?;
        Ok(InsertOutcome::Inserted { row_id })
    }
}

pub fn insert_refused(conn: &mut SqliteConnection, row: &NewUpdate<'_>) -> Result<(), DbError> {
    diesel::insert_into(updates::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

/// Writes a new version and marks the updates it folded in as applied, in one
/// transaction: either both are visible after a crash or neither is.
pub fn commit_version(
    conn: &mut SqliteConnection,
    v: &NewVersion<'_>,
    applied_row_ids: &[i64],
    refused_row_ids: &[i64],
) -> Result<Vec<(String, Option<u64>)>, DbError> {
    conn.immediate_transaction(|conn| {
        diesel::insert_into(versions::table)
            .values(v)
            .execute(conn)?;
        let mut files = refuse_pending_in(
            conn,
            refused_row_ids,
            crate::protocol::ErrorCode::RolledBack.as_str(),
            &format!(
                "the model was rolled back by an administrator (new version {}); this update was trained from a discarded version",
                v.version
            ),
        )?;
        for chunk in applied_row_ids.chunks(500) {
            let f: Vec<(Option<String>, i64)> = updates::table
                .filter(updates::id.eq_any(chunk))
                .filter(updates::payload_file.is_not_null())
                .select((updates::payload_file, updates::bytes))
                .load(conn)?;
            // A payload file holds exactly the payload: its size is known.
            files.extend(
                f.into_iter()
                    .filter_map(|(f, n)| f.map(|f| (f, Some(n.max(0) as u64)))),
            );
            let n = diesel::update(
                updates::table
                    .filter(updates::id.eq_any(chunk))
                    .filter(updates::status.eq("pending")),
            )
            .set((
                updates::status.eq("applied"),
                updates::applied_in_version.eq(v.version),
                updates::payload.eq(None::<Vec<u8>>),
                updates::payload_file.eq(None::<String>),
            ))
            .execute(conn)?;
            if n != chunk.len() {
                // Folding an update twice would corrupt the ledger; abort the
                // whole version instead.
                return Err(DbError::Corrupt(format!(
                    "version {} of {}: {} of {} updates were not pending",
                    v.version,
                    v.model,
                    chunk.len() - n,
                    chunk.len()
                )));
            }
        }
        Ok(files)
    })
}

/// Marks pending updates refused with `code`; returns the payload files
/// they named (with their sizes), to retire once this has committed.
pub fn refuse_pending(
    conn: &mut SqliteConnection,
    ids: &[i64],
    code: &str,
    message: &str,
) -> Result<Vec<(String, Option<u64>)>, DbError> {
    conn.immediate_transaction(|conn| refuse_pending_in(conn, ids, code, message))
}

fn refuse_pending_in(
    conn: &mut SqliteConnection,
    ids: &[i64],
    code: &str,
    message: &str,
) -> Result<Vec<(String, Option<u64>)>, DbError> {
    let mut files = Vec::new();
    for chunk in ids.chunks(500) {
        let f: Vec<(Option<String>, i64)> = updates::table
            .filter(updates::id.eq_any(chunk))
            .filter(updates::status.eq("pending"))
            .filter(updates::payload_file.is_not_null())
            .select((updates::payload_file, updates::bytes))
            .load(conn)?;
        files.extend(
            f.into_iter()
                .filter_map(|(f, n)| f.map(|f| (f, Some(n.max(0) as u64)))),
        );
        diesel::update(
            updates::table
                .filter(updates::id.eq_any(chunk))
                .filter(updates::status.eq("pending")),
        )
        .set((
            updates::status.eq("refused"),
            updates::refusal_code.eq(code),
            updates::refusal_message.eq(message),
            updates::payload.eq(None::<Vec<u8>>),
            updates::payload_file.eq(None::<String>),
        ))
        .execute(conn)?;
    }
    Ok(files)
}

/// Where a pending update's payload is: inline bytes, or a blob file.
pub type StoredPayload = (Option<Vec<u8>>, Option<String>);

/// A pending update's stored payload.
pub fn pending_payload(
    conn: &mut SqliteConnection,
    row_id: i64,
) -> Result<Option<StoredPayload>, DbError> {
    Ok(updates::table
        .filter(updates::id.eq(row_id))
        .filter(updates::status.eq("pending"))
        .select((updates::payload, updates::payload_file))
        .first(conn)
        .optional()?)
}

/// Drops the weights of the versions of `model` after `from` up to `upto`
/// that still have them (the rows, metrics and lineage stay); returns the
/// blob files they named, for the caller to retire once this has committed.
pub fn prune_weights(
    conn: &mut SqliteConnection,
    model: &str,
    from: i64,
    upto: i64,
) -> Result<Vec<String>, DbError> {
    conn.immediate_transaction(|conn| {
        let files: Vec<Option<String>> = versions::table
            .filter(versions::model.eq(model))
            .filter(versions::version.gt(from))
            .filter(versions::version.le(upto))
            .filter(versions::weights_file.is_not_null())
            .select(versions::weights_file)
            .load(conn)?;
        diesel::update(
            versions::table
                .filter(versions::model.eq(model))
                .filter(versions::version.gt(from))
                .filter(versions::version.le(upto))
                .filter(versions::weights_file.is_not_null().or(diesel::dsl::sql::<
                    diesel::sql_types::Bool,
                >(
                    "length(weights) > 0"
                ))),
        )
        .set((
            versions::weights.eq(Vec::<u8>::new()),
            versions::weights_file.eq(None::<String>),
        ))
        .execute(conn)?;
        Ok(files.into_iter().flatten().collect())
    })
}

pub fn insert_model(
    conn: &mut SqliteConnection,
    row: &ModelRow,
    v0: &NewVersion<'_>,
) -> Result<(), DbError> {
    conn.immediate_transaction(|conn| {
        diesel::insert_into(models::table)
            .values(row)
            .execute(conn)?;
        diesel::insert_into(versions::table)
            .values(v0)
            .execute(conn)?;
        Ok(())
    })
}

pub fn upsert_trainer(conn: &mut SqliteConnection, row: &TrainerRow) -> Result<(), DbError> {
    diesel::insert_into(trainers::table)
        .values(row)
        .on_conflict(trainers::name)
        .do_update()
        .set((
            trainers::token_hash.eq(&row.token_hash),
            trainers::specialty.eq(&row.specialty),
            trainers::revoked.eq(row.revoked),
        ))
        .execute(conn)?;
    Ok(())
}

pub fn set_revoked(
    conn: &mut SqliteConnection,
    name: &str,
    revoked: bool,
) -> Result<bool, DbError> {
    let n = diesel::update(trainers::table.filter(trainers::name.eq(name)))
        .set(trainers::revoked.eq(revoked))
        .execute(conn)?;
    Ok(n > 0)
}

pub fn open_session(
    conn: &mut SqliteConnection,
    id: &str,
    trainer: &str,
    specialty: &str,
    model: &str,
    remote: Option<&str>,
) -> Result<(), DbError> {
    let ts = now();
    diesel::update(trainers::table.filter(trainers::name.eq(trainer)))
        .set((
            trainers::last_seen.eq(&ts),
            trainers::specialty.eq(specialty),
        ))
        .execute(conn)?;
    diesel::insert_into(sessions::table)
        .values((
            sessions::id.eq(id),
            sessions::trainer.eq(trainer),
            sessions::model.eq(model),
            sessions::remote.eq(remote),
            sessions::connected_at.eq(&ts),
        ))
        .execute(conn)?;
    Ok(())
}

pub fn close_session(
    conn: &mut SqliteConnection,
    id: &str,
    trainer: &str,
    reason: &str,
) -> Result<(), DbError> {
    let ts = now();
    diesel::update(sessions::table.filter(sessions::id.eq(id)))
        .set((
            sessions::disconnected_at.eq(&ts),
            sessions::close_reason.eq(reason),
        ))
        .execute(conn)?;
    diesel::update(trainers::table.filter(trainers::name.eq(trainer)))
        .set(trainers::last_seen.eq(&ts))
        .execute(conn)?;
    Ok(())
}

/// Sessions left open by a crash are closed at start so the table tells the truth.
pub fn close_stale_sessions(conn: &mut SqliteConnection) -> Result<usize, DbError> {
    Ok(
        diesel::update(sessions::table.filter(sessions::disconnected_at.is_null()))
            .set((
                sessions::disconnected_at.eq(now()),
                sessions::close_reason.eq("hub restarted"),
            ))
            .execute(conn)?,
    )
}

pub fn insert_eval(conn: &mut SqliteConnection, row: &EvalRow) -> Result<(), DbError> {
    diesel::insert_into(evaluations::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

pub fn insert_harness_run(
    conn: &mut SqliteConnection,
    row: &NewHarnessRun,
) -> Result<i64, DbError> {
    Ok(diesel::insert_into(harness_runs::table)
        .values(row)
        .returning(harness_runs::id)
        .get_result(conn)?)
}

// ---------------------------------------------------------------- reads

pub fn list_models(conn: &mut SqliteConnection) -> Result<Vec<ModelRow>, DbError> {
    Ok(models::table
        .order(models::name.asc())
        .select(ModelRow::as_select())
        .load(conn)?)
}

/// Stores a model's normalisation state (JSON).
pub fn set_normalisation(
    conn: &mut SqliteConnection,
    model: &str,
    json: Option<&str>,
) -> Result<(), DbError> {
    diesel::update(models::table.filter(models::name.eq(model)))
        .set(models::normalisation.eq(json))
        .execute(conn)?;
    Ok(())
}

/// Stores (or with `None` removes) a model's evaluation set.
pub fn set_evalset(
    conn: &mut SqliteConnection,
    model: &str,
    csv: Option<&str>,
) -> Result<(), DbError> {
    diesel::update(models::table.filter(models::name.eq(model)))
        .set(models::evalset.eq(csv))
        .execute(conn)?;
    Ok(())
}

/// Merges `eval` into a version's metrics (the hub's evaluation arrives
/// after the version is committed).
pub fn set_version_eval(
    conn: &mut SqliteConnection,
    model: &str,
    version: i64,
    eval: &serde_json::Value,
) -> Result<(), DbError> {
    conn.immediate_transaction(|conn| {
        let current: Option<String> = versions::table
            .filter(versions::model.eq(model))
            .filter(versions::version.eq(version))
            .select(versions::metrics)
            .first(conn)
            .optional()?;
        let Some(current) = current else {
            return Ok(());
        };
        let mut m: serde_json::Value =
            serde_json::from_str(&current).unwrap_or_else(|_| serde_json::json!({}));
        if let Some(o) = m.as_object_mut() {
            o.insert("eval".into(), eval.clone());
        }
        diesel::update(
            versions::table
                .filter(versions::model.eq(model))
                .filter(versions::version.eq(version)),
        )
        .set(versions::metrics.eq(m.to_string()))
        .execute(conn)?;
        Ok(())
    })
}

pub fn get_model(conn: &mut SqliteConnection, name: &str) -> Result<Option<ModelRow>, DbError> {
    Ok(models::table
        .filter(models::name.eq(name))
        .select(ModelRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn latest_version(conn: &mut SqliteConnection, model: &str) -> Result<Option<i64>, DbError> {
    Ok(versions::table
        .filter(versions::model.eq(model))
        .select(diesel::dsl::max(versions::version))
        .first::<Option<i64>>(conn)?)
}

pub fn list_versions(
    conn: &mut SqliteConnection,
    model: &str,
    limit: i64,
) -> Result<Vec<VersionMeta>, DbError> {
    let mut rows: Vec<VersionMeta> = versions::table
        .filter(versions::model.eq(model))
        .order(versions::version.desc())
        .limit(limit)
        .select(VersionMeta::as_select())
        .load(conn)?;
    rows.reverse();
    Ok(rows)
}

/// One evaluation report's figures: (version, global accuracy, loss,
/// examples).
pub type EvalFigures = (i64, Option<f64>, Option<f64>, Option<i64>);

/// The trainers' evaluation reports of versions from `from_version` on.
pub fn evaluation_figures(
    conn: &mut SqliteConnection,
    model: &str,
    from_version: i64,
) -> Result<Vec<EvalFigures>, DbError> {
    Ok(evaluations::table
        .filter(evaluations::model.eq(model))
        .filter(evaluations::version.ge(from_version))
        .select((
            evaluations::version,
            evaluations::global_accuracy,
            evaluations::loss,
            evaluations::num_examples,
        ))
        .load(conn)?)
}

pub fn get_version(
    conn: &mut SqliteConnection,
    model: &str,
    version: i64,
) -> Result<Option<VersionMeta>, DbError> {
    Ok(versions::table
        .filter(versions::model.eq(model))
        .filter(versions::version.eq(version))
        .select(VersionMeta::as_select())
        .first(conn)
        .optional()?)
}

/// A version's checkpoint bytes, from the row or from its blob file.
pub fn get_weights(
    conn: &mut SqliteConnection,
    blobs: &BlobStore,
    model: &str,
    version: i64,
) -> Result<Option<Vec<u8>>, DbError> {
    let row: Option<(Vec<u8>, Option<String>)> = versions::table
        .filter(versions::model.eq(model))
        .filter(versions::version.eq(version))
        .select((versions::weights, versions::weights_file))
        .first(conn)
        .optional()?;
    match row {
        None => Ok(None),
        Some((_, Some(file))) => {
            // A pruned checkpoint's file is reused for later blobs. If the
            // row still names the file after it was read, it was not pruned
            // before the read ended (files are retired only after the
            // pruning commits), so these are the version's bytes.
            let read = blobs.get(&file);
            let still: Option<Option<String>> = versions::table
                .filter(versions::model.eq(model))
                .filter(versions::version.eq(version))
                .select(versions::weights_file)
                .first(conn)
                .optional()?;
            match (read, still) {
                (Ok(bytes), Some(Some(f))) if f == file => Ok(Some(bytes)),
                (Err(e), Some(Some(f))) if f == file => Err(e),
                // Pruned meanwhile: empty weights, as for any pruned version.
                (_, Some(_)) => Ok(Some(Vec::new())),
                (_, None) => Ok(None),
            }
        }
        Some((w, None)) => Ok(Some(w)),
    }
}

/// Every blob file the database still refers to.
pub fn referenced_blobs(
    conn: &mut SqliteConnection,
) -> Result<std::collections::HashSet<String>, DbError> {
    let mut set = std::collections::HashSet::new();
    let v: Vec<Option<String>> = versions::table.select(versions::weights_file).load(conn)?;
    let u: Vec<Option<String>> = updates::table
        .filter(updates::payload_file.is_not_null())
        .select(updates::payload_file)
        .load(conn)?;
    set.extend(v.into_iter().flatten());
    set.extend(u.into_iter().flatten());
    Ok(set)
}

pub fn list_trainers(conn: &mut SqliteConnection) -> Result<Vec<TrainerRow>, DbError> {
    Ok(trainers::table
        .order(trainers::name.asc())
        .select(TrainerRow::as_select())
        .load(conn)?)
}

/// Which ledger rows to list.
#[derive(Debug, Clone, Default)]
pub struct UpdateFilter<'a> {
    pub model: Option<&'a str>,
    pub trainer: Option<&'a str>,
    pub status: Option<&'a str>,
    /// Rows after this id, oldest first (paging); None: the newest rows.
    pub after: Option<i64>,
}

/// Ledger rows, oldest first: after `f.after` (the next page), or the
/// newest `limit`.
pub fn list_updates(
    conn: &mut SqliteConnection,
    f: &UpdateFilter<'_>,
    limit: i64,
) -> Result<Vec<UpdateRow>, DbError> {
    let mut q = updates::table.into_boxed();
    if let Some(m) = f.model {
        q = q.filter(updates::model.eq(m.to_string()));
    }
    if let Some(t) = f.trainer {
        q = q.filter(updates::trainer.eq(t.to_string()));
    }
    if let Some(s) = f.status {
        q = q.filter(updates::status.eq(s.to_string()));
    }
    if let Some(after) = f.after {
        return Ok(q
            .filter(updates::id.gt(after))
            .order(updates::id.asc())
            .limit(limit)
            .select(UpdateRow::as_select())
            .load(conn)?);
    }
    let mut rows: Vec<UpdateRow> = q
        .order(updates::id.desc())
        .limit(limit)
        .select(UpdateRow::as_select())
        .load(conn)?;
    rows.reverse();
    Ok(rows)
}

pub fn pending_updates(
    conn: &mut SqliteConnection,
    model: &str,
) -> Result<Vec<PendingRow>, DbError> {
    Ok(updates::table
        .filter(updates::model.eq(model))
        .filter(updates::status.eq("pending"))
        .order(updates::id.asc())
        .select((
            updates::id,
            updates::update_id,
            updates::trainer,
            updates::base_version,
            updates::num_examples,
            updates::staleness,
            updates::payload,
            updates::payload_file,
        ))
        .load(conn)?)
}

pub fn list_evaluations(
    conn: &mut SqliteConnection,
    model: &str,
    limit: i64,
) -> Result<Vec<EvalRow>, DbError> {
    let mut rows: Vec<EvalRow> = evaluations::table
        .filter(evaluations::model.eq(model))
        .order(evaluations::id.desc())
        .limit(limit)
        .select(EvalRow::as_select())
        .load(conn)?;
    rows.reverse();
    Ok(rows)
}

/// The federated evaluations reported for one version.
pub fn version_evaluations(
    conn: &mut SqliteConnection,
    model: &str,
    version: i64,
) -> Result<Vec<EvalRow>, DbError> {
    Ok(evaluations::table
        .filter(evaluations::model.eq(model))
        .filter(evaluations::version.eq(version))
        .order(evaluations::id.asc())
        .limit(100_000)
        .select(EvalRow::as_select())
        .load(conn)?)
}

pub fn delete_harness_run(conn: &mut SqliteConnection, id: i64) -> Result<bool, DbError> {
    Ok(diesel::delete(harness_runs::table.filter(harness_runs::id.eq(id))).execute(conn)? > 0)
}

pub fn list_harness_runs(
    conn: &mut SqliteConnection,
    scenario: Option<&str>,
    limit: i64,
) -> Result<Vec<HarnessRunRow>, DbError> {
    let mut q = harness_runs::table.into_boxed();
    if let Some(s) = scenario {
        q = q.filter(harness_runs::scenario.eq(s.to_string()));
    }
    Ok(q.order(harness_runs::id.desc())
        .limit(limit)
        .select(HarnessRunRow::as_select())
        .load(conn)?)
}

pub fn get_harness_run(
    conn: &mut SqliteConnection,
    id: i64,
) -> Result<Option<HarnessRunRow>, DbError> {
    Ok(harness_runs::table
        .filter(harness_runs::id.eq(id))
        .select(HarnessRunRow::as_select())
        .first(conn)
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_up_down_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connect(&dir.path().join("m.db")).unwrap();
        run_migrations(&mut conn).unwrap();
        assert!(list_models(&mut conn).unwrap().is_empty());
        conn.revert_all_migrations(MIGRATIONS).unwrap();
        // Every table is gone after the down migrations.
        let left: i64 = diesel::sql_query(
            "SELECT count(*) AS n FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' AND name != '__diesel_schema_migrations'",
        )
        .get_result::<Count>(&mut conn)
        .unwrap()
        .n;
        assert_eq!(left, 0);
        run_migrations(&mut conn).unwrap();
        assert!(list_trainers(&mut conn).unwrap().is_empty());
    }

    /// One object of the schema as SQLite records it.
    #[derive(QueryableByName, Debug, PartialEq)]
    struct SchemaObject {
        #[diesel(sql_type = diesel::sql_types::Text)]
        kind: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        sql: Option<String>,
    }

    fn schema(conn: &mut SqliteConnection) -> Vec<SchemaObject> {
        diesel::sql_query(
            "SELECT type AS kind, name, sql FROM sqlite_master \
             WHERE name NOT LIKE 'sqlite_%' AND name != '__diesel_schema_migrations' \
             ORDER BY type, name",
        )
        .load(conn)
        .unwrap()
    }

    /// Each migration's down undoes exactly its up: the schema after the
    /// down is the schema before the up, and up again gives the same schema.
    #[test]
    fn each_migration_down_restores_the_schema_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connect(&dir.path().join("s.db")).unwrap();
        let migrations = conn.pending_migrations(MIGRATIONS).unwrap();
        assert!(migrations.len() >= 4);
        for m in &migrations {
            let before = schema(&mut conn);
            conn.run_migration(m.as_ref()).unwrap();
            let after = schema(&mut conn);
            assert_ne!(before, after, "{} changes nothing", m.name());
            conn.revert_migration(m.as_ref()).unwrap();
            assert_eq!(schema(&mut conn), before, "{} down", m.name());
            conn.run_migration(m.as_ref()).unwrap();
            assert_eq!(schema(&mut conn), after, "{} up again", m.name());
        }
    }

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    #[test]
    fn ledger_idempotency_and_atomic_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = connect(&dir.path().join("l.db")).unwrap();
        run_migrations(&mut conn).unwrap();
        let m = ModelRow {
            name: "m".into(),
            architecture: "custom".into(),
            layout: "{}".into(),
            settings: None,
            created_at: now(),
            normalisation: None,
            evalset: None,
        };
        let v0 = NewVersion {
            model: "m",
            version: 0,
            parent: None,
            num_updates: 0,
            weights: b"w",
            metrics: "{}".into(),
            created_at: now(),
            weights_file: None,
        };
        insert_model(&mut conn, &m, &v0).unwrap();
        let u = NewUpdate {
            update_id: "u1",
            trainer: "t",
            model: "m",
            base_version: 0,
            num_examples: 3,
            staleness: 0,
            loss: None,
            bytes: 1,
            status: "pending",
            refusal_code: None,
            refusal_message: None,
            received_at: now(),
            payload: Some(b"d"),
            payload_file: None,
        };
        let InsertOutcome::Inserted { row_id } = insert_update(&mut conn, &u).unwrap() else {
            panic!("first insert must insert")
        };
        assert!(matches!(
            insert_update(&mut conn, &u).unwrap(),
            InsertOutcome::Duplicate { .. }
        ));
        // A batch with a duplicate of an earlier row and one within itself:
        // the others are still inserted, each duplicate is reported as such.
        let u2 = NewUpdate {
            update_id: "u2",
            ..u.clone()
        };
        let out = insert_updates(&mut conn, &[u2.clone(), u.clone(), u2.clone()]).unwrap();
        let kinds: Vec<&str> = out
            .iter()
            .map(|r| match r {
                Ok(InsertOutcome::Inserted { .. }) => "inserted",
                Ok(InsertOutcome::Duplicate { .. }) => "duplicate",
                Err(_) => "error",
            })
            .collect();
        assert_eq!(kinds, ["inserted", "duplicate", "duplicate"]);
        let Ok(InsertOutcome::Inserted { row_id: u2_id }) = out[0] else {
            panic!("u2 inserted")
        };
        let v1 = NewVersion {
            version: 1,
            parent: Some(0),
            ..v0.clone()
        };
        commit_version(&mut conn, &v1, &[row_id, u2_id], &[]).unwrap();
        // Applying the same update again aborts the whole version.
        let v2 = NewVersion {
            version: 2,
            parent: Some(1),
            ..v0.clone()
        };
        assert!(commit_version(&mut conn, &v2, &[row_id], &[]).is_err());
        assert_eq!(latest_version(&mut conn, "m").unwrap(), Some(1));
        let only_m = UpdateFilter {
            model: Some("m"),
            ..Default::default()
        };
        let rows = list_updates(&mut conn, &only_m, 10).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.status == "applied"));
        assert_eq!(rows[0].applied_in_version, Some(1));
        // Still a duplicate once applied (the index no longer follows the
        // status), and a refused id does not block accepting it later.
        match insert_update(&mut conn, &u).unwrap() {
            InsertOutcome::Duplicate { status, .. } => assert_eq!(status, "applied"),
            other => panic!("expected a duplicate, got {other:?}"),
        }
        let refused = NewUpdate {
            update_id: "u3",
            status: "refused",
            refusal_code: Some("stale_update"),
            refusal_message: Some("too old"),
            payload: None,
            ..u.clone()
        };
        insert_refused(&mut conn, &refused).unwrap();
        insert_refused(&mut conn, &refused).unwrap();
        // A batch over several statements: every id names its own row.
        let ids: Vec<String> = (0..75).map(|i| format!("b{i}")).collect();
        let batch: Vec<NewUpdate<'_>> = ids
            .iter()
            .map(|id| NewUpdate {
                update_id: id,
                bytes: id.len() as i64,
                ..u.clone()
            })
            .collect();
        let out = insert_updates(&mut conn, &batch).unwrap();
        for (o, id) in out.iter().zip(&ids) {
            let Ok(InsertOutcome::Inserted { row_id }) = o else {
                panic!("{id} not inserted: {o:?}")
            };
            let stored: String = updates::table
                .find(row_id)
                .select(updates::update_id)
                .first(&mut conn)
                .unwrap();
            assert_eq!(&stored, id);
        }
        let u3 = NewUpdate {
            update_id: "u3",
            ..u.clone()
        };
        assert!(matches!(
            insert_update(&mut conn, &u3).unwrap(),
            InsertOutcome::Inserted { .. }
        ));
    }

    /// Under a writer that never pauses, the checkpoint thread alone never
    /// reaches the WAL's end; with the writer's catch-up the WAL starts over.
    #[test]
    fn wal_starts_over_under_a_busy_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let mut conn = connect(&path).unwrap();
        conn.batch_execute("PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (x BLOB NOT NULL);")
            .unwrap();
        let due = start_checkpointer(&path).expect("checkpoint thread");
        let write = |conn: &mut SqliteConnection| {
            conn.immediate_transaction(|c| {
                diesel::sql_query("INSERT INTO t (x) VALUES (zeroblob(65536))")
                    .execute(c)
                    .map(|_| ())
            })
            .unwrap()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !due.swap(false, Ordering::AcqRel) {
            assert!(std::time::Instant::now() < deadline, "no checkpoint pass");
            write(&mut conn);
        }
        let before = wal_checkpoint(&mut conn).unwrap();
        assert!(before >= WAL_RESTART_FRAMES, "{before} frames");
        // The next transaction starts the WAL over, unless the checkpoint
        // thread's own pass happens to hold it at that instant; then the
        // next one does.
        let restarted = (0..20).any(|_| {
            write(&mut conn);
            wal_checkpoint(&mut conn).unwrap() < before
        });
        assert!(restarted, "the WAL never started over from {before} frames");
    }
}
