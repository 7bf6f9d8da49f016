//! Evaluators' credentials and the reports they make: a report is written
//! into its version's `metrics` (under `evaluators.NAME`, and as the
//! version's `eval` unless the hub evaluated the version itself) in one
//! transaction with the evaluator's counters.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use serde::Serialize;

use super::schema::*;
use crate::error::DbError;

/// One evaluator of a model, as `GET /v1/models/{m}/evaluators` lists it
/// (never its token or hash).
#[derive(Debug, Clone, Queryable, Selectable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = evaluators)]
pub struct EvaluatorView {
    pub model: String,
    pub name: String,
    pub created_at: String,
    /// When an administrator revoked it (`DELETE`); null while it may report.
    pub revoked_at: Option<String>,
    /// Reports stored since it was issued.
    pub reports: i64,
    pub last_report_at: Option<String>,
}

#[derive(Insertable)]
#[diesel(table_name = evaluators)]
struct NewEvaluator<'a> {
    model: &'a str,
    name: &'a str,
    token_hash: &'a str,
    created_at: &'a str,
    reports: i64,
}

/// Stores a new evaluator. `Ok(false)`: the model already has (or had) one
/// of that name; names are not reused, so reports stay attributable.
pub fn insert_evaluator(
    conn: &mut SqliteConnection,
    model: &str,
    name: &str,
    token_hash: &str,
) -> Result<Option<EvaluatorView>, DbError> {
    conn.immediate_transaction(|c| {
        let taken: i64 = evaluators::table
            .filter(evaluators::model.eq(model))
            .filter(evaluators::name.eq(name))
            .count()
            .get_result(c)?;
        if taken > 0 {
            return Ok(None);
        }
        let now = super::time::now();
        diesel::insert_into(evaluators::table)
            .values(NewEvaluator {
                model,
                name,
                token_hash,
                created_at: &now,
                reports: 0,
            })
            .execute(c)?;
        Ok(Some(EvaluatorView {
            model: model.to_string(),
            name: name.to_string(),
            created_at: now,
            revoked_at: None,
            reports: 0,
            last_report_at: None,
        }))
    })
}

/// A model's evaluators, revoked ones included, by name.
pub fn list_evaluators(
    conn: &mut SqliteConnection,
    model: &str,
) -> Result<Vec<EvaluatorView>, DbError> {
    Ok(evaluators::table
        .filter(evaluators::model.eq(model))
        .order(evaluators::name.asc())
        .select(EvaluatorView::as_select())
        .load(conn)?)
}

/// Marks an evaluator revoked (kept on record). `None`: no such evaluator.
pub fn revoke_evaluator(
    conn: &mut SqliteConnection,
    model: &str,
    name: &str,
) -> Result<Option<EvaluatorView>, DbError> {
    conn.immediate_transaction(|c| {
        let target = evaluators::table
            .filter(evaluators::model.eq(model))
            .filter(evaluators::name.eq(name));
        diesel::update(target.filter(evaluators::revoked_at.is_null()))
            .set(evaluators::revoked_at.eq(Some(super::time::now())))
            .execute(c)?;
        Ok(target
            .select(EvaluatorView::as_select())
            .first(c)
            .optional()?)
    })
}

/// A model's evaluator's token hash, and whether it was revoked.
pub fn evaluator_token_hash(
    conn: &mut SqliteConnection,
    model: &str,
    name: &str,
) -> Result<Option<(String, bool)>, DbError> {
    let row: Option<(String, Option<String>)> = evaluators::table
        .filter(evaluators::model.eq(model))
        .filter(evaluators::name.eq(name))
        .select((evaluators::token_hash, evaluators::revoked_at))
        .first(conn)
        .optional()?;
    Ok(row.map(|(h, revoked)| (h, revoked.is_some())))
}

/// Whether a version's stored `eval` is an evaluator's report (or empty),
/// which a newer report may replace; the hub's own evaluation stays.
pub fn eval_is_replaceable(eval: Option<&serde_json::Value>) -> bool {
    match eval {
        None | Some(serde_json::Value::Null) => true,
        Some(e) => e.get("evaluator").is_some_and(|v| v.is_string()),
    }
}

/// Stores an evaluator's figures for a version: always under
/// `metrics.evaluators.NAME`, and as `metrics.eval` when the version has
/// no evaluation of the hub's own. `Ok(None)`: no such version (or
/// evaluator); `Ok(Some(true))`: the report is now the version's `eval`.
pub fn record_evaluator_report(
    conn: &mut SqliteConnection,
    model: &str,
    version: i64,
    evaluator: &str,
    figures: &serde_json::Value,
) -> Result<Option<bool>, DbError> {
    conn.immediate_transaction(|c| {
        let current: Option<String> = versions::table
            .filter(versions::model.eq(model))
            .filter(versions::version.eq(version))
            .select(versions::metrics)
            .first(c)
            .optional()?;
        let Some(current) = current else {
            return Ok(None);
        };
        let mut m: serde_json::Value =
            serde_json::from_str(&current).unwrap_or_else(|_| serde_json::json!({}));
        if !m.is_object() {
            m = serde_json::json!({});
        }
        let shown = eval_is_replaceable(m.get("eval"));
        if let Some(o) = m.as_object_mut() {
            let by = o
                .entry("evaluators")
                .or_insert_with(|| serde_json::json!({}));
            if !by.is_object() {
                *by = serde_json::json!({});
            }
            if let Some(by) = by.as_object_mut() {
                by.insert(evaluator.to_string(), figures.clone());
            }
            if shown {
                o.insert("eval".into(), figures.clone());
            }
        }
        let n = diesel::update(
            evaluators::table
                .filter(evaluators::model.eq(model))
                .filter(evaluators::name.eq(evaluator)),
        )
        .set((
            evaluators::reports.eq(evaluators::reports + 1),
            evaluators::last_report_at.eq(Some(super::time::now())),
        ))
        .execute(c)?;
        if n == 0 {
            return Ok(None);
        }
        diesel::update(
            versions::table
                .filter(versions::model.eq(model))
                .filter(versions::version.eq(version)),
        )
        .set(versions::metrics.eq(m.to_string()))
        .execute(c)?;
        Ok(Some(shown))
    })
}
