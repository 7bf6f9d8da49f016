//! Registered trainers: list, revoke, reinstate.

use actix_web::{delete, get, post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use super::common::limit;
use super::{read, refusal, AppState};
use super::{AdminAuth, AdminRefusals};
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
    /// The `after` of the next page, or none when this page reached the
    /// last registered name.
    pub next_after: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TrainersQuery {
    /// At most this many trainers (1 to 100000, default 1000).
    #[param(minimum = 1, maximum = 100000)]
    pub limit: Option<i64>,
    /// Paging: the trainers whose names sort after this one. Without it,
    /// the first `limit` names.
    pub after: Option<String>,
}

/// Registered trainers with live figures, by name, a page at a time: pass
/// each page's `next_after` as `after` until it is null (as `/v1/updates`).
#[utoipa::path(
    tag = "trainers",
    params(TrainersQuery),
    responses(
        (status = 200, description = "A page of registered trainers", body = TrainersList),
        (status = 400, description = "Bad query parameter", body = ErrorBody),
        (status = 503, description = "The hub is unavailable", body = ErrorBody),
    )
)]
#[get("/v1/trainers")]
pub async fn list_trainers(
    st: web::Data<AppState>,
    q: web::Query<TrainersQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let limit = limit(q.limit, 1000, 100_000)?;
    let after = q.after;
    let rows = read(&st.pool, move |c| {
        db::list_trainers_page(c, after.as_deref(), limit)
    })
    .await?;
    let next_after = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.name.clone()))
        .flatten();
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
    Ok(HttpResponse::Ok().json(TrainersList {
        trainers,
        next_after,
    }))
}

async fn set_revocation(
    st: &AppState,
    name: String,
    revoked: bool,
) -> Result<HttpResponse, ApiError> {
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
    st: web::Data<AppState>,
    path: web::Path<String>,
    _admin: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    set_revocation(&st, path.into_inner(), true).await
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
    st: web::Data<AppState>,
    path: web::Path<String>,
    _admin: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    set_revocation(&st, path.into_inner(), false).await
}
