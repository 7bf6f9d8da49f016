//! REST API and WebSocket endpoints. Reads go through the r2d2 pool inside
//! `web::block`; anything that changes state goes through the Hub actor.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::{Actor, Addr, AsyncContext};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use serde::Deserialize;

use crate::db::{self, DbPool};
use crate::error::ApiError;
use crate::hub::events::EventsSession;
use crate::hub::hub_actor::{self, Hub};
use crate::hub::metrics::{self, MetricsAggregator};
use crate::hub::session::{Connection, SessionLimits, TrainerSession};
use crate::hub::ws::{Activity, Budget, FrameReader, Outbox, OutboxBody};
use crate::protocol::{ErrorCode, ModelLayout};
use crate::trainer::net::MlpSpec;

/// Shared by every worker (cloned `Addr`s, never looked up globally).
#[derive(Clone)]
pub struct AppState {
    pub hub: Addr<Hub>,
    pub metrics: Addr<MetricsAggregator>,
    pub pool: DbPool,
    pub blobs: db::BlobStore,
    pub admin_token: Arc<str>,
    /// Live limits: a config reload changes them for new connections.
    pub limits: Arc<std::sync::RwLock<SessionLimits>>,
    pub handshakes: Arc<AtomicUsize>,
    pub max_pending_handshakes: Arc<AtomicUsize>,
    /// Bytes of large incoming payloads held at once, over all trainers.
    pub budget: Budget,
    /// Per-update counters the sessions write directly.
    pub hot: Arc<crate::hub::metrics::HotMetrics>,
    pub started_at: String,
    pub reload: Arc<dyn Fn() -> Result<Vec<String>, String> + Send + Sync>,
}

/// Declares every route once: the server registers exactly this list and the
/// OpenAPI document is generated from it, so the two cannot drift apart.
macro_rules! routes {
    ($( ($method:ident, $path:expr, $handler:path, $tag:expr, $summary:expr) ),* $(,)?) => {
        /// (method, path, tag, summary) of every route the server registers.
        pub const ROUTES: &[(&str, &str, &str, &str)] = &[ $( (stringify!($method), $path, $tag, $summary) ),* ];
        fn register(cfg: &mut web::ServiceConfig) {
            $( cfg.route($path, web::$method().to($handler)); )*
        }
    };
}

routes! {
    (get, "/healthz", healthz, "ops", "Liveness: `{\"status\":\"ok\"}`."),
    (get, "/metrics", prometheus, "ops", "Prometheus text exposition."),
    (get, "/openapi.json", openapi, "ops", "This OpenAPI 3 document."),
    (get, "/v1/status", status, "hub", "Hub status: uptime, models and what each waits for, online trainers, rates."),
    (get, "/v1/models", list_models, "models", "Models with current version, strategy and connected trainers."),
    (post, "/v1/models", create_model, "models", "Create a model (admin): JSON for the built-in MLP, or a safetensors body with `?name=`."),
    (get, "/v1/models/{model}", get_model, "models", "One model: tensors, aggregation settings, waiting state, last metrics."),
    (get, "/v1/models/{model}/versions", list_versions, "models", "Version history with metrics (`?limit=`)."),
    (get, "/v1/models/{model}/versions/{version}", get_version, "models", "One version (number or `latest`): metadata, metrics, federated evaluations."),
    (get, "/v1/models/{model}/versions/{version}/weights", get_weights, "models", "The version's checkpoint as safetensors."),
    (get, "/v1/models/{model}/evaluations", list_evaluations, "models", "Federated evaluations reported by trainers."),
    (get, "/v1/trainers", list_trainers, "trainers", "Registered trainers with live figures."),
    (get, "/v1/trainers/ws", trainer_ws, "trainers", "Trainer protocol v1 WebSocket (see docs/PROTOCOL.md)."),
    (delete, "/v1/trainers/{name}", revoke_trainer, "trainers", "Revoke and disconnect a trainer (admin)."),
    (get, "/v1/updates", list_updates, "updates", "The contributions ledger (`?model=&trainer=&status=&limit=`)."),
    (get, "/v1/harness/runs", list_harness_runs, "harness", "Recorded harness runs (`?scenario=&limit=`)."),
    (post, "/v1/harness/runs", record_harness_run, "harness", "Record a harness run (admin)."),
    (get, "/v1/harness/runs/{id}", get_harness_run, "harness", "One harness run with its full report."),
    (get, "/v1/events", events_ws, "events", "WebSocket feed of hub events, one JSON object per message."),
    (post, "/v1/admin/reload", reload, "ops", "Re-read the config file (admin)."),
    (get, "/", crate::hub::dashboard::index, "dashboard", "The live dashboard (HTML)."),
    (get, "/assets/{file}", crate::hub::dashboard::asset, "dashboard", "Dashboard assets (embedded)."),
}

pub fn configure(cfg: &mut web::ServiceConfig, max_body: usize) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(1 << 20)
            .error_handler(|e, _| {
                ApiError::bad_request(format!("malformed JSON body: {e}")).into()
            }),
    )
    .app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::bad_request(format!("bad query string: {e}")).into()),
    )
    .app_data(
        web::PathConfig::default()
            .error_handler(|e, _| ApiError::bad_request(format!("bad path: {e}")).into()),
    )
    .app_data(web::PayloadConfig::default().limit(max_body));
    register(cfg);
}

fn error_response(description: &str) -> serde_json::Value {
    serde_json::json!({"description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// The OpenAPI 3 document of the REST API, generated from [`ROUTES`].
pub fn openapi_document() -> serde_json::Value {
    let mut paths = serde_json::Map::new();
    for (method, path, tag, summary) in ROUTES {
        let params: Vec<serde_json::Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| serde_json::json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut op = serde_json::json!({
            "tags": [tag],
            "summary": summary,
            "operationId": format!("{}_{}", method, path.trim_matches('/').replace(['/', '{', '}', '.'], "_")),
            "parameters": params,
            "responses": {
                "200": {"description": "Success"},
                "400": error_response("Bad request"),
                "404": error_response("Not found"),
            }
        });
        if summary.contains("(admin)") {
            op["security"] = serde_json::json!([{"adminToken": []}]);
            op["responses"]["401"] = error_response("Admin token missing");
            op["responses"]["403"] = error_response("Wrong admin token");
        }
        let entry = paths
            .entry(path.to_string())
            .or_insert_with(|| serde_json::json!({}));
        entry[*method] = op;
    }
    serde_json::json!({
        "openapi": "3.0.3",
        "info": {"title": "kernal hub", "version": env!("CARGO_PKG_VERSION"),
                 "description": "REST API of the kernal collaborative training hub. Errors are {code, message}."},
        "servers": [{"url": "http://127.0.0.1:5001"}],
        "paths": paths,
        "components": {
            "schemas": {"Error": {"type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}}
        }
    })
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(openapi_document())
}

async fn read<T: Send + 'static>(
    pool: &DbPool,
    f: impl FnOnce(&mut diesel::SqliteConnection) -> Result<T, crate::error::DbError> + Send + 'static,
) -> Result<T, ApiError> {
    let pool = pool.clone();
    web::block(move || {
        let mut conn = pool
            .get()
            .map_err(|e| crate::error::DbError::Pool(e.to_string()))?;
        f(&mut conn)
    })
    .await?
    .map_err(ApiError::from)
}

/// Mutating calls need `Authorization: Bearer <admin token>`.
fn require_admin(req: &HttpRequest, st: &AppState) -> Result<(), ApiError> {
    let Some(h) = req.headers().get("authorization") else {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "this call needs the admin token: `Authorization: Bearer <token>`",
        ));
    };
    let given = h.to_str().unwrap_or("").trim();
    let given = given.strip_prefix("Bearer ").unwrap_or(given).trim();
    if !constant_time_eq(given.as_bytes(), st.admin_token.as_bytes()) {
        return Err(ApiError::new(ErrorCode::Forbidden, "wrong admin token"));
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn refusal((code, message): (ErrorCode, String)) -> ApiError {
    ApiError::new(code, message)
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn prometheus(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let text = st.metrics.send(metrics::RenderPrometheus).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}

async fn status(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let s = st.hub.send(hub_actor::GetStatus).await?;
    let m = st.metrics.send(metrics::GetSnapshot).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "kernal_version": env!("CARGO_PKG_VERSION"),
        "protocol": crate::protocol::PROTOCOL_VERSION,
        "started_at": st.started_at,
        "uptime_secs": m.uptime_secs,
        "stopping": s.stopping,
        "open_registration": s.open_registration,
        "connected_trainers": s.online.len(),
        "models": s.models,
        "online": s.online,
        "metrics": m,
    })))
}

async fn list_models(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let s = st.hub.send(hub_actor::GetStatus).await?;
    let models: Vec<_> = s
        .models
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "architecture": m.architecture,
                "version": m.version,
                "num_params": m.num_params,
                "strategy": m.settings.strategy,
                "connected_trainers": m.connected_trainers,
                "waiting": m.waiting,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "models": models })))
}

async fn get_model(
    st: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let s = st.hub.send(hub_actor::GetStatus).await?;
    let m = s
        .models
        .into_iter()
        .find(|m| m.name == name)
        .ok_or_else(|| {
            ApiError::new(ErrorCode::UnknownModel, format!("no model named `{name}`"))
        })?;
    Ok(HttpResponse::Ok().json(m))
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<i64>,
}

async fn ensure_model(pool: &DbPool, name: &str) -> Result<(), ApiError> {
    let n = name.to_string();
    let found = read(pool, move |c| db::get_model(c, &n)).await?;
    if found.is_none() {
        return Err(ApiError::new(
            ErrorCode::UnknownModel,
            format!("no model named `{name}`"),
        ));
    }
    Ok(())
}

async fn list_versions(
    st: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<LimitQuery>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    ensure_model(&st.pool, &name).await?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 100_000);
    let rows = read(&st.pool, move |c| db::list_versions(c, &name, limit)).await?;
    let versions: Vec<_> = rows.iter().map(version_json).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "versions": versions })))
}

fn version_json(v: &db::VersionMeta) -> serde_json::Value {
    let metrics: serde_json::Value = serde_json::from_str(&v.metrics).unwrap_or_default();
    serde_json::json!({
        "model": v.model,
        "version": v.version,
        "parent": v.parent,
        "num_updates": v.num_updates,
        "created_at": v.created_at,
        "metrics": metrics,
    })
}

async fn resolve_version(pool: &DbPool, model: &str, v: &str) -> Result<i64, ApiError> {
    ensure_model(pool, model).await?;
    if v == "latest" {
        let m = model.to_string();
        return read(pool, move |c| db::latest_version(c, &m))
            .await?
            .ok_or_else(|| ApiError::not_found(format!("model `{model}` has no version")));
    }
    v.parse::<i64>().map_err(|_| {
        ApiError::bad_request(format!(
            "version must be a number or `latest`, not `{}`",
            v.escape_default()
        ))
    })
}

async fn get_version(
    st: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (model, v) = path.into_inner();
    let version = resolve_version(&st.pool, &model, &v).await?;
    let m2 = model.clone();
    let row = read(&st.pool, move |c| db::get_version(c, &m2, version))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("model `{model}` has no version {version}")))?;
    let m3 = model.clone();
    let evals = read(&st.pool, move |c| db::list_evaluations(c, &m3, 100_000)).await?;
    let evals: Vec<_> = evals.into_iter().filter(|e| e.version == version).collect();
    let mut j = version_json(&row);
    j["evaluations"] = serde_json::to_value(evals).unwrap_or_default();
    Ok(HttpResponse::Ok().json(j))
}

async fn get_weights(
    st: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (model, v) = path.into_inner();
    let version = resolve_version(&st.pool, &model, &v).await?;
    let m2 = model.clone();
    let blobs = st.blobs.clone();
    let bytes = read(&st.pool, move |c| db::get_weights(c, &blobs, &m2, version))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("model `{model}` has no version {version}")))?;
    if bytes.is_empty() {
        return Err(ApiError::new(
            ErrorCode::WeightsPruned,
            format!(
                "the weights of version {version} of `{model}` were dropped: the hub keeps the \
                 newest hub.keep_weights_versions checkpoints of each model"
            ),
        ));
    }
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((
            "content-disposition",
            format!("attachment; filename=\"{model}-v{version}.safetensors\""),
        ))
        .insert_header(("x-kernal-version", version.to_string()))
        .body(bytes))
}

async fn list_evaluations(
    st: web::Data<AppState>,
    path: web::Path<String>,
    q: web::Query<LimitQuery>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    ensure_model(&st.pool, &name).await?;
    let limit = q.limit.unwrap_or(5000).clamp(1, 100_000);
    let rows = read(&st.pool, move |c| db::list_evaluations(c, &name, limit)).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "evaluations": rows })))
}

/// Body of `POST /v1/models` as JSON: a built-in architecture. Uploading
/// initial weights instead is a `application/octet-stream` safetensors body
/// with `?name=...` (and optional aggregation keys) in the query string.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateModelJson {
    name: String,
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    inputs: Option<usize>,
    #[serde(default)]
    hidden: Option<usize>,
    #[serde(default)]
    classes: Option<usize>,
    #[serde(default)]
    seed: Option<u64>,
    /// Parameter count of a `flat` model.
    #[serde(default)]
    params: Option<usize>,
    #[serde(default)]
    aggregation: Option<crate::config::ModelConfig>,
}

#[derive(Deserialize)]
struct CreateModelQuery {
    name: Option<String>,
    #[serde(flatten)]
    rest: std::collections::HashMap<String, String>,
}

async fn create_model(
    req: HttpRequest,
    st: web::Data<AppState>,
    q: web::Query<CreateModelQuery>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &st)?;
    let ctype = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let msg = if ctype.starts_with("application/octet-stream") {
        let name = q
            .name
            .clone()
            .ok_or_else(|| ApiError::bad_request("query parameter `name` is required"))?;
        crate::protocol::validate_name(&name).map_err(ApiError::bad_request)?;
        let overrides = overrides_from_query(&q.rest)?;
        let (layout, weights) =
            ModelLayout::from_safetensors(&body).map_err(|e| ApiError::new(e.code, e.message))?;
        let arch = if MlpSpec::from_layout(&layout).is_some() {
            "mlp"
        } else {
            "custom"
        };
        hub_actor::CreateModel {
            name,
            architecture: arch.into(),
            layout,
            weights,
            overrides,
        }
    } else {
        let j: CreateModelJson = serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
        crate::protocol::validate_name(&j.name).map_err(ApiError::bad_request)?;
        let arch = j.architecture.clone().unwrap_or_else(|| "mlp".into());
        if arch == "flat" {
            // One flat f32 tensor of zeros: for load tests and for trainers
            // that keep their own structure in a flat buffer.
            let n = j.params.unwrap_or(0);
            if n == 0 || n > 1_000_000_000 {
                return Err(ApiError::bad_request(
                    "a flat model needs `params` between 1 and 1,000,000,000",
                ));
            }
            let msg = hub_actor::CreateModel {
                name: j.name.clone(),
                architecture: "flat".into(),
                layout: ModelLayout::new(vec![("weights".into(), vec![n])]),
                weights: vec![0.0; n],
                overrides: j.aggregation.unwrap_or_default(),
            };
            st.hub.send(msg).await?.map_err(refusal)?;
            return Ok(
                HttpResponse::Created().json(serde_json::json!({"name": j.name, "version": 0}))
            );
        }
        if arch != "mlp" && arch != "digits" {
            return Err(ApiError::bad_request(format!(
                "unknown architecture `{arch}` (known: mlp, flat); upload weights as safetensors for any other network"
            )));
        }
        let spec = MlpSpec {
            inputs: j.inputs.unwrap_or(64),
            hidden: j.hidden.unwrap_or(64),
            classes: j.classes.unwrap_or(10),
        };
        if spec.inputs == 0
            || spec.hidden == 0
            || spec.classes < 2
            || spec.hidden > 65_536
            || spec.inputs > 1_000_000
        {
            return Err(ApiError::bad_request("inputs, hidden and classes must be positive (classes at least 2) and reasonably sized"));
        }
        hub_actor::CreateModel {
            name: j.name,
            architecture: "mlp".into(),
            layout: spec.layout(),
            weights: spec.init_weights(j.seed.unwrap_or(42)),
            overrides: j.aggregation.unwrap_or_default(),
        }
    };
    let name = msg.name.clone();
    st.hub.send(msg).await?.map_err(refusal)?;
    Ok(HttpResponse::Created().json(serde_json::json!({"name": name, "version": 0})))
}

fn overrides_from_query(
    q: &std::collections::HashMap<String, String>,
) -> Result<crate::config::ModelConfig, ApiError> {
    let mut table = toml::Table::new();
    for (k, v) in q {
        let value = v
            .parse::<i64>()
            .map(toml::Value::Integer)
            .or_else(|_| v.parse::<f64>().map(toml::Value::Float))
            .unwrap_or_else(|_| toml::Value::String(v.clone()));
        table.insert(k.clone(), value);
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|e| ApiError::bad_request(format!("bad aggregation settings: {e}")))
}

async fn list_trainers(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let rows = read(&st.pool, db::list_trainers).await?;
    let s = st.hub.send(hub_actor::GetStatus).await?;
    let trainers: Vec<_> = rows
        .into_iter()
        .map(|t| {
            let online = s.online.iter().find(|o| o.name == t.name);
            let live = s.live.get(&t.name).cloned().unwrap_or_default();
            serde_json::json!({
                "name": t.name,
                "specialty": t.specialty,
                "revoked": t.revoked,
                "online": online.is_some(),
                "model": online.map(|o| o.model.clone()),
                "connected_since": online.map(|o| o.connected_since.clone()),
                "last_seen": t.last_seen,
                "registered_at": t.created_at,
                "updates_accepted": live.accepted,
                "updates_refused": live.refused,
                "last_refusal": live.last_refusal,
                "last_loss": live.last_loss,
                "specialty_accuracy": live.specialty_accuracy,
                "global_accuracy": live.global_accuracy,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "trainers": trainers })))
}

async fn revoke_trainer(
    req: HttpRequest,
    st: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &st)?;
    let name = path.into_inner();
    st.hub
        .send(hub_actor::Revoke { name: name.clone() })
        .await?
        .map_err(refusal)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"name": name, "revoked": true})))
}

#[derive(Deserialize)]
struct UpdatesQuery {
    model: Option<String>,
    trainer: Option<String>,
    status: Option<String>,
    limit: Option<i64>,
}

async fn list_updates(
    st: web::Data<AppState>,
    q: web::Query<UpdatesQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    if let Some(s) = &q.status {
        if !["pending", "applied", "refused"].contains(&s.as_str()) {
            return Err(ApiError::bad_request(
                "status must be one of pending, applied, refused",
            ));
        }
    }
    if let Some(m) = &q.model {
        ensure_model(&st.pool, m).await?;
    }
    let limit = q.limit.unwrap_or(1000).clamp(1, 1_000_000);
    let rows = read(&st.pool, move |c| {
        db::list_updates(
            c,
            q.model.as_deref(),
            q.trainer.as_deref(),
            q.status.as_deref(),
            limit,
        )
    })
    .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "updates": rows })))
}

#[derive(Deserialize)]
struct RunsQuery {
    scenario: Option<String>,
    limit: Option<i64>,
}

async fn list_harness_runs(
    st: web::Data<AppState>,
    q: web::Query<RunsQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = q.into_inner();
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let rows = read(&st.pool, move |c| {
        db::list_harness_runs(c, q.scenario.as_deref(), limit)
    })
    .await?;
    let runs: Vec<_> = rows
        .iter()
        .map(|r| {
            // The list carries each report's summary, not the whole report.
            let mut j = run_json(r);
            j["summary"] = j["report"]["summary"].take();
            if let Some(o) = j.as_object_mut() {
                o.remove("report");
            }
            j
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "runs": runs })))
}

async fn get_harness_run(
    st: web::Data<AppState>,
    path: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let r = read(&st.pool, move |c| db::get_harness_run(c, id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no harness run {id}")))?;
    Ok(HttpResponse::Ok().json(run_json(&r)))
}

/// A recorded harness run with its parsed report.
fn run_json(r: &db::HarnessRunRow) -> serde_json::Value {
    let report: serde_json::Value = serde_json::from_str(&r.report).unwrap_or_default();
    serde_json::json!({
        "id": r.id, "scenario": r.scenario, "passed": r.passed,
        "collective_accuracy": r.collective_accuracy,
        "started_at": r.started_at, "finished_at": r.finished_at,
        "report": report,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HarnessRunBody {
    scenario: String,
    passed: bool,
    #[serde(default)]
    collective_accuracy: Option<f64>,
    started_at: String,
    finished_at: String,
    report: serde_json::Value,
}

async fn record_harness_run(
    req: HttpRequest,
    st: web::Data<AppState>,
    body: web::Json<HarnessRunBody>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &st)?;
    let b = body.into_inner();
    crate::protocol::validate_name(&b.scenario).map_err(ApiError::bad_request)?;
    let id = st
        .hub
        .send(hub_actor::RecordHarnessRun(db::NewHarnessRun {
            scenario: b.scenario,
            passed: b.passed,
            collective_accuracy: b.collective_accuracy,
            report: b.report.to_string(),
            started_at: b.started_at,
            finished_at: b.finished_at,
        }))
        .await?
        .map_err(refusal)?;
    Ok(HttpResponse::Created().json(serde_json::json!({"id": id})))
}

async fn reload(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &st)?;
    let f = st.reload.clone();
    let changed = web::block(move || f()).await?;
    match changed {
        Ok(changed) => {
            Ok(HttpResponse::Ok().json(serde_json::json!({"reloaded": true, "changed": changed})))
        }
        Err(e) => Err(ApiError::bad_request(e)),
    }
}

async fn trainer_ws(
    req: HttpRequest,
    stream: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    // Bound the connections that have not said hello yet: a flood of idle
    // sockets is refused up front instead of holding memory until timeout.
    let limit = st.max_pending_handshakes.load(Ordering::SeqCst);
    let pending = st.handshakes.fetch_add(1, Ordering::SeqCst);
    if pending >= limit {
        st.handshakes.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::new(
            ErrorCode::TooManyHandshakes,
            format!(
                "too many connections waiting for their hello (limit {limit}); try again shortly"
            ),
        )
        .into());
    }
    let limits = match st.limits.read() {
        Ok(l) => l.clone(),
        Err(_) => {
            st.handshakes.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::internal("limits lock poisoned").into());
        }
    };
    let mut res = match ws::handshake(&req) {
        Ok(r) => r,
        Err(e) => {
            // No session starts, so none can release the slot itself.
            st.handshakes.fetch_sub(1, Ordering::SeqCst);
            return Err(e.into());
        }
    };
    let outbox = Outbox::new(st.hot.clone(), limits.model_hold);
    let activity = Activity::new();
    let reader = FrameReader::new(
        stream,
        activity.clone(),
        limits.max_message_bytes,
        limits.max_fragments,
        st.budget.clone(),
    );
    let incoming =
        futures_util::stream::unfold(
            reader,
            |mut r| async move { r.next().await.map(|m| (m, r)) },
        );
    let session = TrainerSession::new(
        Connection {
            remote: req.peer_addr().map(|a| a.to_string()),
            outbox: outbox.clone(),
            activity,
            hot: st.hot.clone(),
        },
        st.hub.clone(),
        st.metrics.clone(),
        limits,
        st.handshakes.clone(),
        st.blobs.clone(),
    );
    TrainerSession::create(|ctx| {
        ctx.add_stream(incoming);
        session
    });
    Ok(res.streaming(OutboxBody::new(outbox)))
}

async fn events_ws(
    req: HttpRequest,
    stream: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    ws::start(EventsSession::new(st.metrics.clone()), &req, stream)
}
