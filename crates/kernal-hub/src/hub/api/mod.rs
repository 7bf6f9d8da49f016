//! The REST API and the WebSocket upgrades. Reads go through the r2d2 pool
//! inside `web::block`; anything that changes state goes through the Hub
//! actor. Every handler carries its OpenAPI description (`utoipa`), and one
//! list below both registers the handlers and builds the document, so the
//! two cannot drift apart.

pub mod create_checks;
pub mod evaluators;
pub mod harness;
pub mod learning;
pub mod model_delete;
pub mod models;
pub mod ops;
pub mod sockets;
pub mod trainer_tokens;
pub mod trainers;
pub mod updates;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

use crate::config::HubConfig;
use crate::db::{self, DbPool};
use crate::error::{ApiError, ErrorBody};
use crate::hub::dashboard;
use crate::hub::hub_actor::Hub;
use crate::hub::metrics::{HotMetrics, MetricsAggregator};
use crate::hub::ws::Budget;
use crate::protocol::{ErrorCode, Refusal};
use models::AggregationQuery;

/// Shared by every worker (cloned `Addr`s, never looked up globally).
#[derive(Clone)]
pub struct AppState {
    pub hub: Addr<Hub>,
    pub metrics: Addr<MetricsAggregator>,
    pub persister: Addr<crate::hub::persister::Persister>,
    pub pool: DbPool,
    pub blobs: db::BlobStore,
    pub admin_token: Arc<str>,
    /// The key of hub-issued trainer tokens (`POST /v1/trainer-tokens`).
    pub tokens: crate::hub::secrets::TokenKey,
    /// The hub's current settings: a config reload changes the live ones
    /// (limits apply to new connections).
    pub config: Arc<RwLock<HubConfig>>,
    /// Connections waiting for their hello, in all and per address.
    pub handshakes: Arc<Handshakes>,
    /// Bytes of large incoming messages held at once, over all trainers.
    pub budget: Budget,
    /// Per-update counters the sessions write directly.
    pub hot: Arc<HotMetrics>,
    pub started_at: String,
    pub reload:
        Arc<dyn Fn(bool) -> Result<Vec<String>, crate::hub::reload::ReloadError> + Send + Sync>,
}

impl AppState {
    /// A copy of the current hub settings.
    pub fn hub_config(&self) -> Result<HubConfig, ApiError> {
        self.config
            .read()
            .map(|c| c.clone())
            .map_err(|_| ApiError::internal("config lock poisoned"))
    }
}

/// Connections that have not completed their hello: counted in all and per
/// remote address, so a flood of idle sockets from one place cannot take
/// every slot.
#[derive(Default)]
pub struct Handshakes {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Handshakes {
    /// Takes a slot, or says which limit is full.
    pub fn enter(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<crate::hub::session::HandshakeSlot, String> {
        if self.total.fetch_add(1, Ordering::SeqCst) >= max_total {
            self.total.fetch_sub(1, Ordering::SeqCst);
            return Err(format!(
                "too many connections are waiting for their hello (limit {max_total}); try again shortly"
            ));
        }
        if let Some(ip) = ip {
            let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = m.entry(ip).or_insert(0);
            if *n >= max_per_ip {
                drop(m);
                self.total.fetch_sub(1, Ordering::SeqCst);
                return Err(format!(
                    "too many connections from {ip} are waiting for their hello (limit {max_per_ip}); try again shortly"
                ));
            }
            *n += 1;
        }
        let me = self.clone();
        Ok(crate::hub::session::HandshakeSlot::new(move || {
            me.total.fetch_sub(1, Ordering::SeqCst);
            if let Some(ip) = ip {
                let mut m = me.per_ip.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(n) = m.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        m.remove(&ip);
                    }
                }
            }
        }))
    }

    pub fn waiting(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

/// Declares every endpoint once: the server registers exactly these
/// handlers and the OpenAPI document lists exactly their descriptions.
macro_rules! endpoints {
    ($( $module:ident :: $handler:ident ),* $(,)?) => {
        #[derive(OpenApi)]
        #[openapi(
            info(
                title = "kernal hub",
                description = "REST API of the kernal collaborative training hub. Every error is `{code, message}` with a stable code (docs/PROTOCOL.md). Calls marked admin need `Authorization: Bearer <admin token>`."
            ),
            paths($( $module::$handler ),*),
            modifiers(&Security, &AggregationQuery, &Ranges),
            tags(
                (name = "ops", description = "Health, metrics, configuration"),
                (name = "hub", description = "The hub as a whole"),
                (name = "models", description = "Models, versions and checkpoints"),
                (name = "trainers", description = "Registered trainers and the trainer WebSocket"),
                (name = "updates", description = "The contributions ledger"),
                (name = "harness", description = "Recorded scenario runs"),
                (name = "events", description = "The live event feed"),
                (name = "dashboard", description = "The web dashboard"),
            )
        )]
        pub struct ApiDoc;

        fn register(cfg: &mut web::ServiceConfig) {
            $( cfg.service($module::$handler); )*
        }
    };
}

endpoints!(
    ops::healthz,
    ops::prometheus,
    ops::openapi,
    ops::status,
    ops::reload,
    models::list_models,
    models::create_model,
    models::get_model,
    models::list_versions,
    models::get_version,
    models::get_weights,
    models::list_evaluations,
    models::rollback,
    model_delete::delete_model,
    model_delete::deleted_models,
    learning::freeze_normalisation,
    learning::reset_normalisation,
    learning::put_evalset,
    evaluators::issue_evaluator,
    evaluators::list_evaluators,
    evaluators::revoke_evaluator,
    trainers::list_trainers,
    trainers::revoke_trainer,
    trainers::unrevoke_trainer,
    trainer_tokens::issue_trainer_tokens,
    sockets::trainer_ws,
    sockets::events_ws,
    updates::list_updates,
    harness::list_runs,
    harness::record_run,
    harness::get_run,
    harness::delete_run,
    dashboard::index,
    dashboard::asset,
);

/// The admin token as an HTTP bearer scheme.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "adminToken",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        doc.servers = Some(vec![utoipa::openapi::Server::new("http://127.0.0.1:5001")]);
    }
}

/// The aggregation settings' ranges, from their one declaration.
struct Ranges;

impl utoipa::Modify for Ranges {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        crate::aggregation::settings::document_ranges(doc);
    }
}

/// The OpenAPI document of the REST API, built once.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    static DOC: std::sync::OnceLock<utoipa::openapi::OpenApi> = std::sync::OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi).clone()
}

/// A documented path's segments (`None` for a parameter) and its methods.
type Route = (Vec<Option<String>>, Vec<String>);

/// Each documented path as its segments (`None` for a `{parameter}`), with
/// its methods: what an unmatched request is checked against.
fn route_table() -> &'static [Route] {
    static TABLE: std::sync::OnceLock<Vec<Route>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let doc = serde_json::to_value(openapi_document()).unwrap_or_default();
        doc["paths"]
            .as_object()
            .map(|paths| {
                paths
                    .iter()
                    .map(|(path, ops)| {
                        let segs = path
                            .trim_start_matches('/')
                            .split('/')
                            .map(|s| (!s.starts_with('{')).then(|| s.to_string()))
                            .collect();
                        let methods = ops
                            .as_object()
                            .map(|o| o.keys().map(|m| m.to_ascii_uppercase()).collect())
                            .unwrap_or_default();
                        (segs, methods)
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// The methods a path has, if it is one of the API's.
fn allowed_methods(path: &str) -> Option<Vec<String>> {
    let given: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut found: Vec<String> = Vec::new();
    for (segs, methods) in route_table() {
        let matches = segs.len() == given.len()
            && segs
                .iter()
                .zip(&given)
                .all(|(s, g)| s.as_deref().is_none_or(|s| s == *g));
        if matches {
            found.extend(methods.iter().cloned());
        }
    }
    (!found.is_empty()).then_some(found)
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::bad_request(format!("bad query string: {e}")).into()),
    )
    .app_data(
        web::PathConfig::default()
            .error_handler(|e, _| ApiError::bad_request(format!("bad path: {e}")).into()),
    );
    register(cfg);
    cfg.default_service(web::to(not_found));
}

/// An unmatched request: 405 with `Allow` for a known path, 404 otherwise.
async fn not_found(req: HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    if let Some(methods) = allowed_methods(req.path()) {
        let e = ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!(
                "{} is not a method of {} (it has {})",
                req.method(),
                req.path(),
                methods.join(", ")
            ),
        );
        let mut r = e.error_response();
        if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&methods.join(", ")) {
            r.headers_mut().insert(actix_web::http::header::ALLOW, v);
        }
        return r;
    }
    ApiError::not_found(format!(
        "no such endpoint: {} {} (see /openapi.json)",
        req.method(),
        req.path()
    ))
    .error_response()
}

/// Runs a blocking read on a pool connection, off the executor.
pub async fn read<T: Send + 'static>(
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

/// The refusals every admin route shares, for the OpenAPI document.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum AdminRefusals {
    /// Admin token missing
    #[response(status = 401)]
    Missing(ErrorBody<'static>),
    /// Wrong admin token
    #[response(status = 403)]
    Wrong(ErrorBody<'static>),
}

/// The headers of a WebSocket upgrade (RFC 6455), for the OpenAPI document.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct UpgradeHeaders {
    /// `websocket`
    #[serde(rename = "Upgrade")]
    upgrade: String,
    /// `Upgrade`
    #[serde(rename = "Connection")]
    connection: String,
    /// 16 random bytes, base64 (RFC 6455)
    #[serde(rename = "Sec-WebSocket-Key")]
    key: String,
    /// `13`
    #[serde(rename = "Sec-WebSocket-Version")]
    version: String,
}

/// Mutating calls need `Authorization: Bearer <admin token>` (the scheme's
/// name in any case, as RFC 7235 says). Checked before any body is read.
pub fn require_admin(req: &HttpRequest, st: &AppState) -> Result<(), ApiError> {
    let Some(h) = req.headers().get("authorization") else {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "this call needs the admin token: `Authorization: Bearer <token>`",
        ));
    };
    let given = bearer(h.to_str().unwrap_or(""));
    if !constant_time_eq(given.as_bytes(), st.admin_token.as_bytes()) {
        return Err(ApiError::new(ErrorCode::Forbidden, "wrong admin token"));
    }
    Ok(())
}

/// The credentials of an `Authorization` header: after `Bearer ` in any
/// case, or the whole value.
fn bearer(header: &str) -> &str {
    let given = header.trim();
    match given.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => given,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a request body of at most `limit` bytes: refused on its
/// Content-Length before reading when that says more, else as soon as the
/// bytes read pass it.
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    let declared = req
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0).min(1 << 20) as usize);
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("could not read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// JSON bodies of admin calls are small.
pub const JSON_LIMIT: usize = 1 << 20;

/// Parses a JSON body; the error says what is wrong with it. A number with
/// no fraction is an integer wherever one is expected (`2.0` where a count
/// is due), as JSON Schema and Python's `json.dumps(2.0)` have it.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON body: {e}")))?;
    integral_floats_as_integers(&mut v);
    serde_json::from_value(v).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

fn integral_floats_as_integers(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f >= 0.0 && f < u64::MAX as f64 {
                    *v = serde_json::Value::from(f as u64);
                } else if f.fract() == 0.0 && f < 0.0 && f >= i64::MIN as f64 {
                    *v = serde_json::Value::from(f as i64);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(integral_floats_as_integers),
        serde_json::Value::Object(o) => o.values_mut().for_each(integral_floats_as_integers),
        _ => {}
    }
}

pub fn refusal(r: Refusal) -> ApiError {
    ApiError::new(r.code, r.message)
}

/// `{"name": ..., "version": ...}` of a created model.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct Created {
    pub name: String,
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_slots_are_bounded_in_all_and_per_address() {
        let h = Arc::new(Handshakes::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = h.enter(Some(a), 3, 2).unwrap();
        let _a2 = h.enter(Some(a), 3, 2).unwrap();
        assert!(h.enter(Some(a), 3, 2).unwrap_err().contains("10.0.0.1"));
        let _b1 = h.enter(Some(b), 3, 2).unwrap();
        assert!(h
            .enter(Some(b), 3, 2)
            .unwrap_err()
            .contains("too many connections are"));
        assert_eq!(h.waiting(), 3);
        drop(a1);
        assert_eq!(h.waiting(), 2);
        let _a3 = h.enter(Some(a), 3, 2).unwrap();
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for (header, ok) in [
            ("Bearer tok", true),
            ("bearer tok", true),
            ("BEARER  tok ", true),
            ("tok", true),
            ("Bearer nope", false),
            ("Basic tok", false),
        ] {
            assert_eq!(
                constant_time_eq(bearer(header).as_bytes(), b"tok"),
                ok,
                "{header}"
            );
        }
    }
}
