//! Deleting a model (`DELETE /v1/models/{m}`): its versions, its ledger
//! rows with their payloads, its evaluations and sessions go in one
//! transaction, and a row of `model_deletions` records what went, so a
//! deletion is never silent.

use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use serde::Serialize;

use super::schema::*;
use crate::error::DbError;

/// The audit record of one deleted model.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Serialize, utoipa::ToSchema)]
#[diesel(table_name = model_deletions)]
pub struct ModelDeletion {
    #[diesel(skip_insertion)]
    pub id: i64,
    pub model: String,
    pub architecture: String,
    /// When the model was created.
    pub created_at: String,
    /// Its newest version when it was deleted.
    pub last_version: i64,
    /// Rows removed: versions (checkpoints), ledger updates, evaluations.
    pub versions: i64,
    pub updates: i64,
    pub evaluations: i64,
    /// Blob files (checkpoints and payloads) removed from `<db>.blobs/`.
    pub files: i64,
    /// `?force=true`: connected trainers were disconnected.
    pub forced: bool,
    pub disconnected: i64,
    pub deleted_at: String,
}

/// A blob file to remove once the transaction committed, with its size.
pub type DoomedFile = (String, Option<u64>);

/// Deletes `model` and everything stored for it, recording the deletion.
/// `None` when there is no such model.
pub fn delete_model(
    conn: &mut SqliteConnection,
    model: &str,
    forced: bool,
    disconnected: i64,
) -> Result<Option<(ModelDeletion, Vec<DoomedFile>)>, DbError> {
    conn.immediate_transaction(|c| {
        let row: Option<(String, String)> = models::table
            .filter(models::name.eq(model))
            .select((models::architecture, models::created_at))
            .first(c)
            .optional()?;
        let Some((architecture, created_at)) = row else {
            return Ok(None);
        };
        let mut files: Vec<DoomedFile> = versions::table
            .filter(versions::model.eq(model))
            .filter(versions::weights_file.is_not_null())
            .select(versions::weights_file)
            .load::<Option<String>>(c)?
            .into_iter()
            .flatten()
            .map(|f| (f, None))
            .collect();
        let payloads: Vec<(Option<String>, i64)> = updates::table
            .filter(updates::model.eq(model))
            .filter(updates::payload_file.is_not_null())
            .select((updates::payload_file, updates::bytes))
            .load(c)?;
        files.extend(
            payloads
                .into_iter()
                .filter_map(|(f, n)| f.map(|f| (f, Some(n.max(0) as u64)))),
        );
        let last_version: Option<i64> = versions::table
            .filter(versions::model.eq(model))
            .select(diesel::dsl::max(versions::version))
            .first(c)?;
        let n_versions =
            diesel::delete(versions::table.filter(versions::model.eq(model))).execute(c)?;
        let n_updates =
            diesel::delete(updates::table.filter(updates::model.eq(model))).execute(c)?;
        let n_evals =
            diesel::delete(evaluations::table.filter(evaluations::model.eq(model))).execute(c)?;
        diesel::delete(sessions::table.filter(sessions::model.eq(model))).execute(c)?;
        diesel::delete(models::table.filter(models::name.eq(model))).execute(c)?;
        let record = ModelDeletion {
            id: 0,
            model: model.to_string(),
            architecture,
            created_at,
            last_version: last_version.unwrap_or(0),
            versions: n_versions as i64,
            updates: n_updates as i64,
            evaluations: n_evals as i64,
            files: files.len() as i64,
            forced,
            disconnected,
            deleted_at: super::time::now(),
        };
        let id = diesel::insert_into(model_deletions::table)
            .values(&record)
            .returning(model_deletions::id)
            .get_result(c)?;
        Ok(Some((ModelDeletion { id, ..record }, files)))
    })
}

/// Every recorded deletion, newest first.
pub fn list_model_deletions(conn: &mut SqliteConnection) -> Result<Vec<ModelDeletion>, DbError> {
    Ok(model_deletions::table
        .order(model_deletions::id.desc())
        .select(ModelDeletion::as_select())
        .load(conn)?)
}
