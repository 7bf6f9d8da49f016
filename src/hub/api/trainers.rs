//! Registered trainers: list, revoke, reinstate.

use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use serde::Serialize;

use super::AdminRefusals;
use super::{read, refusal, require_admin, AppState};
use crate::db;
use crate::error::{ApiError, ErrorBody};
use crate::hub::hub_actor;

/// A registered trainer with its live figures.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TrainerView {
    pub name: String,
    pub specialty: String,
    pub revoked: bool,
    pub online: bool,
    /// The model it is connected to, while online.
    pub model: Option<String>,
    pub connected_since: Option<String>,
    pub last_seen: Option<String>,
    pub registered_at: String,
    /// Since the hub started.
    pub updates_accepted: u64,
    pub updates_refused: u64,
    /// `code: message` of the last refusal.
    pub last_refusal: Option<String>,
    pub last_loss: Option<f64>,
    pub specialty_accuracy: Option<f64>,
    pub global_accuracy: Option<f64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TrainersList {
    pub trainers: Vec<TrainerView>,
}

/// Registered trainers with live figures.
#[utoipa::path(
    tag = "trainers",
    responses(
        (status = 200, description = "Every registered trainer", body = TrainersList),
        (status = 503, description = "The hub is unavailable", body = ErrorBody),
    )
)]
#[get("/v1/trainers")]
pub async fn list_trainers(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let rows = read(&st.pool, db::list_trainers).await?;
    let s = st.hub.send(hub_actor::GetStatus).await?;
    let trainers = rows
        .into_iter()
        .map(|t| {
            let online = s.online.iter().find(|o| o.name == t.name);
            let live = s.live.get(&t.name).cloned().unwrap_or_default();
            TrainerView {
                online: online.is_some(),
                model: online.map(|o| o.model.clone()),
                connected_since: online.map(|o| o.connected_since.clone()),
                name: t.name,
                specialty: t.specialty,
                revoked: t.revoked,
                last_seen: t.last_seen,
                registered_at: t.created_at,
                updates_accepted: live.accepted,
                updates_refused: live.refused,
                last_refusal: live.last_refusal,
                last_loss: live.last_loss,
                specialty_accuracy: live.specialty_accuracy,
                global_accuracy: live.global_accuracy,
            }
        })
        .collect();
    Ok(HttpResponse::Ok().json(TrainersList { trainers }))
}

async fn set_revocation(
    req: &HttpRequest,
    st: &AppState,
    name: String,
    revoked: bool,
) -> Result<HttpResponse, ApiError> {
    require_admin(req, st)?;
    st.hub
        .send(hub_actor::SetRevocation {
            name: name.clone(),
            revoked,
        })
        .await?
        .map_err(refusal)?;
    Ok(HttpResponse::Ok().json(RevokedState { name, revoked }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RevokedState {
    pub name: String,
    pub revoked: bool,
}

/// Revoke a trainer and disconnect it (admin): its name can no longer join
/// until it is reinstated.
#[utoipa::path(
    tag = "trainers",
    security(("adminToken" = [])),
    params(("name" = String, Path, description = "Trainer name")),
    responses(
        (status = 200, description = "Revoked", body = RevokedState),
        (status = 404, description = "No such trainer (`unknown_trainer`)", body = ErrorBody),
        (status = 503, description = "The hub is unavailable", body = ErrorBody),
        AdminRefusals,
    )
)]
#[delete("/v1/trainers/{name}")]
pub async fn revoke_trainer(
    req: HttpRequest,
    st: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_revocation(&req, &st, path.into_inner(), true).await
}

/// Reinstate a revoked trainer (admin): its name may join again with the
/// token it registered.
#[utoipa::path(
    tag = "trainers",
    security(("adminToken" = [])),
    params(("name" = String, Path, description = "Trainer name")),
    responses(
        (status = 200, description = "Reinstated", body = RevokedState),
        AdminRefusals,
        (status = 404, description = "No such trainer (`unknown_trainer`)", body = ErrorBody),
        (status = 503, description = "The hub is unavailable", body = ErrorBody),
    )
)]
#[post("/v1/trainers/{name}/unrevoke")]
pub async fn unrevoke_trainer(
    req: HttpRequest,
    st: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    set_revocation(&req, &st, path.into_inner(), false).await
}
