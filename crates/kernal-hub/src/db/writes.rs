//! Everything that writes: the ledger, versions, models, trainers and their
//! sessions, evaluations and harness runs. Called by the Persister, the one
//! writer, off the executor.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;

use super::rows::*;
use super::schema::*;
use super::time::now;
use crate::error::DbError;

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
    if let Some(d) = accepted_before(conn, row.model, row.trainer, row.update_id)? {
        return Ok(d);
    }
    let row_id: i64 = diesel::insert_into(updates::table)
        .values(row)
        .returning(updates::id)
        .get_result(conn)?;
    Ok(InsertOutcome::Inserted { row_id })
}

/// The ledger's accepted row (pending or applied) of this update id, as the
/// [`InsertOutcome::Duplicate`] a resend of it is answered with: one lookup
/// of the `updates_accepted_once` index.
pub fn accepted_before(
    conn: &mut SqliteConnection,
    model: &str,
    trainer: &str,
    update_id: &str,
) -> Result<Option<InsertOutcome>, DbError> {
    let existing: Option<(String, i64, i64)> = updates::table
        .filter(updates::model.eq(model))
        .filter(updates::trainer.eq(trainer))
        .filter(updates::update_id.eq(update_id))
        .filter(updates::refusal_code.is_null())
        .select((updates::status, updates::staleness, updates::base_version))
        .first(conn)
        .optional()?;
    Ok(existing.map(
        |(status, staleness, base_version)| InsertOutcome::Duplicate {
            status,
            staleness,
            base_version,
        },
    ))
}

pub fn insert_refused(conn: &mut SqliteConnection, row: &NewUpdate<'_>) -> Result<(), DbError> {
    diesel::insert_into(updates::table)
        .values(row)
        .execute(conn)?;
    Ok(())
}

/// Records a refused update, unless the ledger already accepted the same
/// (model, trainer, update_id): then the refusal was of a resend, which is
/// answered as a duplicate whatever its payload and leaves the ledger as it
/// was. Returns that duplicate, or None once the refusal is recorded.
pub fn refuse_unless_accepted(
    conn: &mut SqliteConnection,
    row: &NewUpdate<'_>,
) -> Result<Option<InsertOutcome>, DbError> {
    conn.immediate_transaction(|conn| {
        if !row.update_id.is_empty() {
            if let Some(d) = accepted_before(conn, row.model, row.trainer, row.update_id)? {
                return Ok(Some(d));
            }
        }
        insert_refused(conn, row)?;
        Ok(None)
    })
}

/// Writes a new version and marks the updates it folded in as applied, in one
/// transaction: either both are visible after a crash or neither is.
pub fn commit_version(
    conn: &mut SqliteConnection,
    v: &NewVersion<'_>,
    applied_row_ids: &[i64],
    refused_row_ids: &[i64],
    revoked_row_ids: &[i64],
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
        files.extend(refuse_pending_in(
            conn,
            revoked_row_ids,
            crate::protocol::ErrorCode::Revoked.as_str(),
            &format!(
                "its trainer was revoked by an administrator before version {} was folded",
                v.version
            ),
        )?);
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
