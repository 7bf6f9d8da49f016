//! Health, metrics, the OpenAPI document, the hub's status and reload.

use actix_web::{get, post, web, HttpResponse};
use serde::Serialize;

use super::AppState;
use super::{AdminAuth, AdminRefusals};
use crate::error::{ApiError, ErrorBody};
use crate::hub::hub_actor::{self, ModelStatus, OnlineTrainer};
use crate::hub::metrics::{self, Snapshot};

/// Whether the hub serves and stores.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`; `degraded` (serving, but acknowledged updates were found
    /// missing at start); `unhealthy` (an actor stopped, or writes fail).
    pub status: String,
    /// What is wrong, one sentence each.
    pub problems: Vec<String>,
    /// Failed writes to the database or blob files since start.
    pub storage_errors: u64,
    /// Acknowledged updates the ledger no longer had at start (at most).
    pub lost_acknowledged_updates: u64,
}

/// Liveness and storage: 200 while the hub serves and can store what it is
/// sent, 503 when one of its actors is gone or writes fail.
#[utoipa::path(
    tag = "ops",
    responses(
        (status = 200, description = "Serving (`ok` or `degraded`)", body = Health),
        (status = 503, description = "An actor is gone or storage fails", body = Health),
    )
)]
#[get("/healthz")]
pub async fn healthz(st: web::Data<AppState>) -> HttpResponse {
    let mut problems = Vec::new();
    for (name, up) in [
        ("hub", st.hub.connected()),
        ("database writer", st.persister.connected()),
        ("metrics", st.metrics.connected()),
    ] {
        if !up {
            problems.push(format!("the {name} actor has stopped"));
        }
    }
    let health = st.blobs.health();
    if health.troubled() {
        // Until no write has failed for 30 s: a full disk still lets small
        // writes through between the refused updates.
        problems.push(format!(
            "the hub cannot write to its storage (updates may be refused): {}",
            health.last_error().unwrap_or_default()
        ));
    }
    let lost = health.lost_acknowledged();
    let verdict = if !problems.is_empty() {
        "unhealthy"
    } else if lost > 0 {
        problems.push(format!(
            "up to {lost} acknowledged update(s) were missing from the ledger at start"
        ));
        "degraded"
    } else {
        "ok"
    };
    let body = Health {
        status: verdict.into(),
        problems,
        storage_errors: health.errors(),
        lost_acknowledged_updates: lost,
    };
    if verdict == "unhealthy" {
        HttpResponse::ServiceUnavailable().json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}

/// Prometheus text exposition.
#[utoipa::path(
    tag = "ops",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain"),
        (status = 503, description = "The metrics actor is gone", body = ErrorBody),
    )
)]
#[get("/metrics")]
pub async fn prometheus(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let mut text = st.metrics.send(metrics::RenderPrometheus).await?;
    text.push_str(&metrics::storage_metrics(st.blobs.health()));
    Ok(HttpResponse::Ok()
        .content_type(prometheus_client::encoding::prometheus_text::CONTENT_TYPE)
        .body(text))
}

/// This OpenAPI document.
#[utoipa::path(
    tag = "ops",
    responses((status = 200, description = "OpenAPI document", content_type = "application/json"))
)]
#[get("/openapi.json")]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(super::openapi_document())
}

/// The hub as a whole.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Status {
    pub kernal_version: String,
    pub protocol: u32,
    pub started_at: String,
    pub uptime_secs: f64,
    pub stopping: bool,
    pub open_registration: bool,
    pub connected_trainers: usize,
    pub models: Vec<ModelStatus>,
    pub online: Vec<OnlineTrainer>,
    pub metrics: Snapshot,
}

/// Hub status: uptime, models and what each waits for, online trainers, rates.
#[utoipa::path(
    tag = "hub",
    responses(
        (status = 200, description = "Status", body = Status),
        (status = 503, description = "The hub is unavailable", body = ErrorBody),
    )
)]
#[get("/v1/status")]
pub async fn status(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let s = st.hub.send(hub_actor::GetStatus).await?;
    let m = st.metrics.send(metrics::GetSnapshot).await?;
    Ok(HttpResponse::Ok().json(Status {
        kernal_version: env!("CARGO_PKG_VERSION").into(),
        protocol: crate::protocol::PROTOCOL_VERSION,
        started_at: st.started_at.clone(),
        uptime_secs: m.uptime_secs,
        stopping: s.stopping,
        open_registration: s.open_registration,
        connected_trainers: s.online.len(),
        models: s.models,
        online: s.online,
        metrics: m,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Reloaded {
    pub reloaded: bool,
    /// What changed, one line per key (restart-only keys say so).
    pub changed: Vec<String>,
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
pub struct ReloadQuery {
    /// Apply a file that no longer sets keys the running file set (they
    /// return to their defaults). Without it such a file is refused (409)
    /// with the keys named: a truncated save must not reopen registration.
    #[serde(default)]
    pub allow_removed_keys: bool,
}

/// Re-reads the config file and applies what can change live (admin).
#[utoipa::path(
    tag = "ops",
    security(("adminToken" = [])),
    params(ReloadQuery),
    responses(
        (status = 200, description = "Reloaded", body = Reloaded),
        (status = 400, description = "The file is invalid; the old config stays", body = ErrorBody),
        AdminRefusals,
        (status = 409, description = "The file no longer sets keys the running file set (named); the old config stays (`conflict`)", body = ErrorBody),
    )
)]
#[post("/v1/admin/reload")]
pub async fn reload(
    st: web::Data<AppState>,
    query: web::Query<ReloadQuery>,
    _admin: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    let f = st.reload.clone();
    let allow = query.allow_removed_keys;
    match web::block(move || f(allow)).await? {
        Ok(changed) => Ok(HttpResponse::Ok().json(Reloaded {
            reloaded: true,
            changed,
        })),
        Err(e @ crate::hub::reload::ReloadError::RemovedKeys(_)) => Err(ApiError::new(
            crate::protocol::ErrorCode::Conflict,
            e.to_string(),
        )),
        Err(e) => Err(ApiError::bad_request(e.to_string())),
    }
}
