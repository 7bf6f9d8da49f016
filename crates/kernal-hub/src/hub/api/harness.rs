//! Harness runs recorded on this hub.

use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use super::common::limit;
use super::{parse_json, read, read_body, refusal, AppState, JSON_LIMIT};
use super::{AdminAuth, AdminRefusals};
use crate::db;
use crate::error::{ApiError, ErrorBody};
use crate::hub::hub_actor;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Only runs of this scenario.
    pub scenario: Option<String>,
    /// The newest this many (1 to 10000, default 100).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<i64>,
}

/// A recorded run without its report (the list carries each report's summary).
#[derive(Serialize, utoipa::ToSchema)]
pub struct RunSummary {
    pub id: i64,
    pub scenario: String,
    pub passed: bool,
    pub collective_accuracy: Option<f64>,
    pub started_at: String,
    pub finished_at: String,
    /// The report's `summary` object, if it has one.
    #[schema(value_type = Option<Object>)]
    pub summary: Option<serde_json::Value>,
}

/// A recorded run with its full report.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RunDetail {
    pub id: i64,
    pub scenario: String,
    pub passed: bool,
    pub collective_accuracy: Option<f64>,
    pub started_at: String,
    pub finished_at: String,
    #[schema(value_type = Object)]
    pub report: serde_json::Value,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RunsList {
    pub runs: Vec<RunSummary>,
}

/// A stored report, whatever was stored (older hubs took any JSON).
fn report_of(r: &db::HarnessRunRow) -> serde_json::Value {
    match serde_json::from_str::<serde_json::Value>(&r.report) {
        Ok(v @ serde_json::Value::Object(_)) => v,
        _ => serde_json::json!({}),
    }
}

/// Recorded harness runs, newest first.
#[utoipa::path(
    tag = "harness",
    params(RunsQuery),
    responses(
        (status = 200, description = "Runs", body = RunsList),
        (status = 400, description = "Bad `limit`", body = ErrorBody),
    )
)]
#[get("/v1/harness/runs")]
pub async fn list_runs(
    st: web::Data<AppState>,
    q: web::Query<RunsQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let limit = limit(q.limit, 100, 10_000)?;
    let rows = read(&st.pool, move |c| {
        db::list_harness_runs(c, q.scenario.as_deref(), limit)
    })
    .await?;
    let runs = rows
        .iter()
        .map(|r| RunSummary {
            id: r.id,
            scenario: r.scenario.clone(),
            passed: r.passed,
            collective_accuracy: r.collective_accuracy,
            started_at: r.started_at.clone(),
            finished_at: r.finished_at.clone(),
            summary: report_of(r).get("summary").cloned(),
        })
        .collect();
    Ok(HttpResponse::Ok().json(RunsList { runs }))
}

/// One harness run with its full report.
#[utoipa::path(
    tag = "harness",
    params(("id" = i64, Path, description = "Run id")),
    responses(
        (status = 200, description = "The run", body = RunDetail),
        (status = 400, description = "Not a run id", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
    )
)]
#[get("/v1/harness/runs/{id}")]
pub async fn get_run(
    st: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let r = read(&st.pool, move |c| db::get_harness_run(c, id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no harness run {id}")))?;
    Ok(HttpResponse::Ok().json(RunDetail {
        id: r.id,
        report: report_of(&r),
        scenario: r.scenario,
        passed: r.passed,
        collective_accuracy: r.collective_accuracy,
        started_at: r.started_at,
        finished_at: r.finished_at,
    }))
}

/// A run to record.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordRun {
    /// Scenario name: 1 to 64 characters of `A-Z a-z 0-9 _ - .`
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub scenario: String,
    pub passed: bool,
    /// Between 0 and 1.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub collective_accuracy: Option<f64>,
    /// RFC 3339 time.
    #[schema(format = DateTime)]
    pub started_at: String,
    /// RFC 3339 time.
    #[schema(format = DateTime)]
    pub finished_at: String,
    /// The harness's JSON report: an object (its `summary`, an object too,
    /// is what the list shows).
    #[schema(value_type = ReportSchema)]
    pub report: serde_json::Value,
}

/// What a stored report must be (the harness writes much more).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ReportSchema {
    #[schema(value_type = Option<Object>)]
    summary: Option<serde_json::Value>,
}

/// What is wrong with a recorded run (a `bad_request` message).
#[derive(Debug, thiserror::Error)]
enum BadRun {
    #[error("scenario: {0}")]
    Scenario(crate::protocol::NameError),
    /// `range::key` says which key and why.
    #[error("{0}")]
    Accuracy(String),
    #[error("{key}: `{}` is not an RFC 3339 time ({error})", value.escape_default())]
    Time {
        key: &'static str,
        value: String,
        error: chrono::ParseError,
    },
    #[error("report.summary: must be an object")]
    SummaryNotObject,
    #[error("report: must be a JSON object")]
    ReportNotObject,
}

impl RecordRun {
    fn validate(&self) -> Result<(), BadRun> {
        crate::protocol::validate_name(&self.scenario).map_err(BadRun::Scenario)?;
        if let Some(a) = self.collective_accuracy {
            crate::range::key(
                "collective_accuracy",
                a,
                0.0,
                1.0,
                crate::range::Ends::Closed,
            )
            .map_err(BadRun::Accuracy)?;
        }
        for (key, t) in [
            ("started_at", &self.started_at),
            ("finished_at", &self.finished_at),
        ] {
            chrono::DateTime::parse_from_rfc3339(t).map_err(|error| BadRun::Time {
                key,
                value: t.clone(),
                error,
            })?;
        }
        match &self.report {
            serde_json::Value::Object(o) => match o.get("summary") {
                None | Some(serde_json::Value::Null) | Some(serde_json::Value::Object(_)) => Ok(()),
                Some(_) => Err(BadRun::SummaryNotObject),
            },
            _ => Err(BadRun::ReportNotObject),
        }
    }
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunId {
    pub id: i64,
}

/// Record a harness run (admin).
#[utoipa::path(
    tag = "harness",
    security(("adminToken" = [])),
    request_body = RecordRun,
    responses(
        (status = 201, description = "Recorded", body = RunId),
        (status = 400, description = "Bad body (the message names the field)", body = ErrorBody),
        AdminRefusals,
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 503, description = "The hub is unavailable", body = ErrorBody),
    )
)]
#[post("/v1/harness/runs")]
pub async fn record_run(
    req: HttpRequest,
    st: web::Data<AppState>,
    payload: web::Payload,
    _admin: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    let body = read_body(&req, payload, JSON_LIMIT).await?;
    let b: RecordRun = parse_json(&body)?;
    b.validate()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let id = st
        .hub
        .send(hub_actor::RecordHarnessRun(db::NewHarnessRun {
            report: b.report.to_string(),
            scenario: b.scenario,
            passed: b.passed,
            collective_accuracy: b.collective_accuracy,
            started_at: b.started_at,
            finished_at: b.finished_at,
        }))
        .await?
        .map_err(refusal)?;
    Ok(HttpResponse::Created().json(RunId { id }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeletedRun {
    pub id: i64,
    pub deleted: bool,
}

/// Delete a recorded run (admin).
#[utoipa::path(
    tag = "harness",
    security(("adminToken" = [])),
    params(("id" = i64, Path, description = "Run id")),
    responses(
        (status = 200, description = "Deleted", body = DeletedRun),
        (status = 400, description = "Not a run id", body = ErrorBody),
        AdminRefusals,
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 503, description = "The hub is unavailable", body = ErrorBody),
    )
)]
#[delete("/v1/harness/runs/{id}")]
pub async fn delete_run(
    st: web::Data<AppState>,
    path: web::Path<i64>,
    _admin: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let deleted = st
        .hub
        .send(hub_actor::DeleteHarnessRun(id))
        .await?
        .map_err(refusal)?;
    if !deleted {
        return Err(ApiError::not_found(format!("no harness run {id}")));
    }
    Ok(HttpResponse::Ok().json(DeletedRun { id, deleted }))
}
