//! What a model learns from beyond updates: its input normalisation (frozen
//! by an administrator) and the held-out evaluation set the hub scores every
//! version on.

use actix_web::{post, put, web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::{read_body, refusal, AppState};
use super::{AdminAuth, AdminRefusals};
use crate::error::{ApiError, ErrorBody};
use crate::hub::hub_actor;
use crate::protocol::Normalisation;

/// Largest evaluation set accepted, in bytes of CSV. The hub keeps each
/// model's set in memory (about two thirds of the CSV's size as f32) and
/// stores the CSV: with `hub.max_models` models this bounds both.
pub const EVALSET_LIMIT: usize = 16 << 20;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Frozen {
    pub model: String,
    /// The frozen statistics; `null` when no trainer had reported any (the
    /// model then has no normalisation).
    pub normalisation: Option<Normalisation>,
}

/// Freezes a pooling model's input normalisation now (admin), from the
/// statistics trainers have reported so far. Trainers waiting for it get a
/// `normalisation` message.
#[utoipa::path(
    tag = "models",
    security(("adminToken" = [])),
    params(("model" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "Frozen", body = Frozen),
        AdminRefusals,
        (status = 404, description = "No such model (`unknown_model`)", body = ErrorBody),
        (status = 409, description = "The model has no federated normalisation, or it is already frozen", body = ErrorBody),
        (status = 503, description = "The hub is unavailable", body = ErrorBody),
    )
)]
#[post("/v1/models/{model}/normalisation/freeze")]
pub async fn freeze_normalisation(
    st: web::Data<AppState>,
    path: web::Path<String>,
    _admin: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    let model = path.into_inner();
    let normalisation = st
        .hub
        .send(hub_actor::FreezeNormalisation {
            model: model.clone(),
        })
        .await?
        .map_err(refusal)?;
    Ok(HttpResponse::Ok().json(Frozen {
        model,
        normalisation,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Reset {
    pub model: String,
    /// The model's normalisation now: `pooling`, with no report yet.
    pub normalisation: Option<Normalisation>,
}

/// Undoes a bad freeze (admin): the model's input normalisation goes back
/// to pooling, its frozen statistics (or the reports pooled so far) are
/// dropped, and every connected trainer of the model gets a `normalisation`
/// message with `state: pooling`, sends fresh statistics and waits for the
/// new freeze. The current weights stay: they were trained on the old
/// scaling (roll back to a version from before the bad freeze, or keep
/// training; see the README).
#[utoipa::path(
    tag = "models",
    security(("adminToken" = [])),
    params(("model" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "Pooling again", body = Reset),
        AdminRefusals,
        (status = 404, description = "No such model (`unknown_model`)", body = ErrorBody),
        (status = 409, description = "The model has no input normalisation", body = ErrorBody),
        (status = 503, description = "The hub is unavailable", body = ErrorBody),
    )
)]
#[post("/v1/models/{model}/normalisation/reset")]
pub async fn reset_normalisation(
    st: web::Data<AppState>,
    path: web::Path<String>,
    _admin: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    let model = path.into_inner();
    let normalisation = st
        .hub
        .send(hub_actor::ResetNormalisation {
            model: model.clone(),
        })
        .await?
        .map_err(refusal)?;
    Ok(HttpResponse::Ok().json(Reset {
        model,
        normalisation,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EvalsetStored {
    pub model: String,
    pub rows: usize,
    pub features: usize,
}

/// Attaches (or replaces) a model's held-out evaluation set (admin): a CSV
/// in the `--data` format (numeric features, integer label last, optional
/// header), raw features. The hub scores every new version on it after the
/// version is committed, normalised as trainers normalise theirs; the
/// result is the version's `metrics.eval` (`dataset: "evalset"`).
#[utoipa::path(
    tag = "models",
    security(("adminToken" = [])),
    params(("model" = String, Path, description = "Model name")),
    request_body(content = String, content_type = "text/csv", description = "features..., label"),
    responses(
        (status = 200, description = "Stored; the current version is being evaluated", body = EvalsetStored),
        (status = 400, description = "Not a CSV of the model's width and classes, or not an MLP model (`bad_request`); a value that is NaN, infinite or beyond the f32 range (`bad_eval`, naming line and column)", body = ErrorBody),
        AdminRefusals,
        (status = 404, description = "No such model (`unknown_model`)", body = ErrorBody),
        (status = 413, description = "Over 16 MiB", body = ErrorBody),
        (status = 503, description = "The hub is unavailable", body = ErrorBody),
    )
)]
#[put("/v1/models/{model}/evalset")]
pub async fn put_evalset(
    req: HttpRequest,
    st: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
    _admin: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    let model = path.into_inner();
    let body = read_body(&req, payload, EVALSET_LIMIT).await?;
    let csv = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("the evaluation set is not UTF-8 text"))?;
    let (csv, data) =
        web::block(move || crate::data::parse_dataset(&csv, "evaluation set").map(|d| (csv, d)))
            .await
            .map_err(|e| ApiError::new(crate::protocol::ErrorCode::Internal, e.to_string()))?
            .map_err(|e| match e {
                // A value f32 cannot hold is the data's fault, as a NaN is:
                // `bad_eval`, naming line and column; a malformed file is a
                // bad request.
                crate::data::DataError::Value { .. } => {
                    ApiError::new(crate::protocol::ErrorCode::BadEval, e.to_string())
                }
                other => ApiError::bad_request(other.to_string()),
            })?;
    let (rows, features) = (data.len(), data.dim);
    st.hub
        .send(hub_actor::SetEvalset {
            model: model.clone(),
            csv,
            data,
        })
        .await?
        .map_err(refusal)?;
    Ok(HttpResponse::Ok().json(EvalsetStored {
        model,
        rows,
        features,
    }))
}
