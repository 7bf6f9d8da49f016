//! `DELETE /v1/models/{model}` (admin) and the audit record it leaves
//! (`GET /v1/deleted-models`). What is removed and in which order is the
//! hub actor's `DeleteModel` (hub_actor/delete.rs).

use actix_web::{delete, get, web, HttpResponse};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{read, refusal, AppState};
use super::{AdminAuth, AdminRefusals};
use crate::db::{self, ModelDeletion};
use crate::error::{ApiError, ErrorBody};
use crate::hub::hub_actor;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Disconnect the model's connected trainers (they get `model_deleted`)
    /// instead of refusing with 409 `model_in_use`.
    pub force: Option<bool>,
}

/// Delete a model (admin): its versions, checkpoints, ledger rows with
/// their payloads, evaluations and blob files. Refused while trainers are
/// connected unless `?force=true`. The deletion is recorded (`GET
/// /v1/deleted-models`) and published (event `model_deleted`). A model
/// defined in the configuration file is refused (409 `conflict`).
#[utoipa::path(
    tag = "models",
    security(("adminToken" = [])),
    params(("model" = String, Path, description = "Model name"), DeleteQuery),
    responses(
        (status = 200, description = "Deleted: the audit record", body = ModelDeletion),
        (status = 400, description = "A bad query", body = ErrorBody),
        AdminRefusals,
        (status = 404, description = "No such model", body = ErrorBody),
        (status = 409, description = "Trainers are connected (`model_in_use`), a version is being made, or the model is in the configuration file (`conflict`)", body = ErrorBody),
        (status = 503, description = "The hub is unavailable", body = ErrorBody),
    )
)]
#[delete("/v1/models/{model}")]
pub async fn delete_model(
    st: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<DeleteQuery>,
    _admin: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    let record = st
        .hub
        .send(hub_actor::DeleteModel {
            name: path.into_inner(),
            force: q.force.unwrap_or(false),
        })
        .await?
        .map_err(refusal)?;
    Ok(HttpResponse::Ok().json(record))
}

/// Every model deletion, newest first: the model, what went with it and
/// whether its trainers were disconnected.
#[utoipa::path(
    tag = "models",
    responses(
        (status = 200, description = "Deletions, newest first", body = Vec<ModelDeletion>),
        (status = 503, description = "The hub is unavailable", body = ErrorBody),
    )
)]
#[get("/v1/deleted-models")]
pub async fn deleted_models(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let rows = read(&st.pool, db::list_model_deletions).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "deletions": rows })))
}
