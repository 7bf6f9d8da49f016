//! A model's evaluators: issue (the token is shown once), list, revoke.
//! An evaluator scores each new version on its own held-out data and
//! reports it over the trainer WebSocket (`role: evaluator`); see
//! docs/PROTOCOL.md.

use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use super::{parse_json, read, read_body, AppState, JSON_LIMIT};
use super::{AdminAuth, AdminRefusals};
use crate::db::{self, EvaluatorView};
use crate::error::{ApiError, ErrorBody};
use crate::hub::hub_actor;
use crate::hub::metrics::{self, HubEvent};
use crate::hub::persister;
use crate::protocol::{validate_name, ErrorCode};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEvaluator {
    /// 1 to 64 characters of `A-Z a-z 0-9 _ - .`, unique per model (a
    /// revoked name is not issued again).
    pub name: String,
}

/// An issued evaluator with its token: the only time the token is shown.
#[derive(Serialize, utoipa::ToSchema)]
pub struct IssuedEvaluator {
    pub model: String,
    pub name: String,
    /// Give it to the evaluator (`hello` with `role: evaluator`). The hub
    /// keeps only its argon2 hash.
    pub token: String,
    pub created_at: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EvaluatorState {
    #[serde(flatten)]
    pub evaluator: EvaluatorView,
    /// Connected now.
    pub online: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EvaluatorsList {
    pub evaluators: Vec<EvaluatorState>,
}

async fn model_exists(st: &AppState, model: &str) -> Result<(), ApiError> {
    let name = model.to_string();
    let found = read(&st.pool, move |c| db::get_model(c, &name)).await?;
    if found.is_none() {
        return Err(ApiError::new(
            ErrorCode::UnknownModel,
            format!("no model named `{}`", model.escape_default()),
        ));
    }
    Ok(())
}

/// Issue an evaluator for a model (admin). The answer carries its token,
/// shown this once; the hub stores only a hash.
#[utoipa::path(
    tag = "models",
    security(("adminToken" = [])),
    params(("model" = String, Path, description = "Model name")),
    request_body = NewEvaluator,
    responses(
        (status = 201, description = "Issued: the token, shown once", body = IssuedEvaluator),
        (status = 400, description = "Bad body or name", body = ErrorBody),
        AdminRefusals,
        (status = 404, description = "No such model (`unknown_model`)", body = ErrorBody),
        (status = 409, description = "The model has (or had) an evaluator of that name (`conflict`)", body = ErrorBody),
        (status = 503, description = "The hub is unavailable", body = ErrorBody),
    )
)]
#[post("/v1/models/{model}/evaluators")]
pub async fn issue_evaluator(
    req: HttpRequest,
    st: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
    _admin: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    let model = path.into_inner();
    let body = read_body(&req, payload, JSON_LIMIT).await?;
    let b: NewEvaluator = parse_json(&body)?;
    validate_name(&b.name).map_err(|e| ApiError::bad_request(format!("evaluator {e}")))?;
    model_exists(&st, &model).await?;
    let token = crate::hub::evaluator_tokens::new_token();
    let t = token.clone();
    let token_hash = web::block(move || crate::hub::evaluator_tokens::hash(&t))
        .await?
        .map_err(|e| ApiError::new(ErrorCode::Internal, e))?;
    let stored = st
        .persister
        .send(persister::InsertEvaluator {
            model: model.clone(),
            name: b.name.clone(),
            token_hash,
        })
        .await??;
    let Some(view) = stored else {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "model `{model}` has (or had) an evaluator named `{}`; names are not issued twice, choose another",
                b.name
            ),
        ));
    };
    log::info!("evaluator {} issued for model {model}", b.name);
    st.metrics
        .do_send(metrics::Event(HubEvent::EvaluatorCredential {
            model: model.clone(),
            evaluator: b.name.clone(),
            revoked: false,
        }));
    Ok(HttpResponse::Created().json(IssuedEvaluator {
        model,
        name: view.name,
        token,
        created_at: view.created_at,
    }))
}

/// A model's evaluators, revoked ones included (never their tokens).
#[utoipa::path(
    tag = "models",
    params(("model" = String, Path, description = "Model name")),
    responses(
        (status = 200, description = "The model's evaluators", body = EvaluatorsList),
        (status = 404, description = "No such model (`unknown_model`)", body = ErrorBody),
        (status = 503, description = "The hub is unavailable", body = ErrorBody),
    )
)]
#[get("/v1/models/{model}/evaluators")]
pub async fn list_evaluators(
    st: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let model = path.into_inner();
    model_exists(&st, &model).await?;
    let m = model.clone();
    let rows = read(&st.pool, move |c| db::list_evaluators(c, &m)).await?;
    let online = st.hub.send(hub_actor::OnlineEvaluators { model }).await?;
    let evaluators = rows
        .into_iter()
        .map(|e| EvaluatorState {
            online: online.contains(&e.name),
            evaluator: e,
        })
        .collect();
    Ok(HttpResponse::Ok().json(EvaluatorsList { evaluators }))
}

/// Revoke an evaluator (admin): it is disconnected (`revoked`) and its
/// token no longer works; its row and reports stay on record.
#[utoipa::path(
    tag = "models",
    security(("adminToken" = [])),
    params(
        ("model" = String, Path, description = "Model name"),
        ("name" = String, Path, description = "Evaluator name"),
    ),
    responses(
        (status = 200, description = "Revoked", body = EvaluatorView),
        AdminRefusals,
        (status = 404, description = "No such evaluator (`unknown_evaluator`)", body = ErrorBody),
        (status = 503, description = "The hub is unavailable", body = ErrorBody),
    )
)]
#[delete("/v1/models/{model}/evaluators/{name}")]
pub async fn revoke_evaluator(
    st: web::Data<AppState>,
    path: web::Path<(String, String)>,
    _admin: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    let (model, name) = path.into_inner();
    let revoked = st
        .persister
        .send(persister::RevokeEvaluator {
            model: model.clone(),
            name: name.clone(),
        })
        .await??;
    let Some(view) = revoked else {
        return Err(ApiError::new(
            ErrorCode::UnknownEvaluator,
            format!(
                "model `{}` has no evaluator `{}`",
                model.escape_default(),
                name.escape_default()
            ),
        ));
    };
    log::info!("evaluator {name} of model {model} revoked");
    st.hub.do_send(hub_actor::EvaluatorRevoked { model, name });
    Ok(HttpResponse::Ok().json(view))
}
