//! Everything the REST API and recovery read, through the pool.

use super::blobs::BlobStore;
use super::rows::*;
use super::schema::*;
use crate::error::DbError;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;

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

/// At most `limit` registered trainers by name, those after `after` (a
/// name) when given: a page of `GET /v1/trainers`.
pub fn list_trainers_page(
    conn: &mut SqliteConnection,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<TrainerRow>, DbError> {
    let mut q = trainers::table
        .order(trainers::name.asc())
        .select(TrainerRow::as_select())
        .limit(limit)
        .into_boxed();
    if let Some(a) = after {
        q = q.filter(trainers::name.gt(a.to_string()));
    }
    Ok(q.load(conn)?)
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
