//! The REST API and the WebSocket upgrades. Reads go through the r2d2 pool
//! inside `web::block`; anything that changes state goes through the Hub
//! actor. Every handler carries its OpenAPI description (`utoipa`), and one
//! list below both registers the handlers and builds the document, so the
//! two cannot drift apart.

pub mod admin;
pub mod common;
pub mod create_checks;
pub mod evaluators;
pub mod harness;
pub mod learning;
pub mod model_delete;
pub mod models;
pub mod ops;
pub mod sockets;
pub mod state;
pub mod trainer_tokens;
pub mod trainers;
pub mod updates;
pub mod versions;

use actix_web::{web, HttpRequest, HttpResponse};
use utoipa::OpenApi;

use crate::error::ApiError;
use crate::hub::dashboard;
use crate::protocol::ErrorCode;
use models::AggregationQuery;

pub use admin::{AdminAuth, AdminRefusals};
pub use common::{parse_json, read, read_body, refusal, Created, UpgradeHeaders, JSON_LIMIT};
pub use state::{AppState, Handshakes, HandshakesFull};

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
    versions::list_versions,
    versions::get_version,
    versions::get_weights,
    versions::list_evaluations,
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
