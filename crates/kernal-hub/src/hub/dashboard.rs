//! The dashboard: one page and its assets, embedded in the binary so the hub
//! works offline (no CDN).

use actix_web::{get, web, HttpResponse};

use crate::error::ApiError;

const INDEX: &str = include_str!("../../../../assets/index.html");

/// (name, content type, bytes) of every asset.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../../assets/dashboard.js"),
    ),
    (
        "kernel.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../../assets/kernel.js"),
    ),
    (
        "dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../../assets/dashboard.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../../../assets/vendor/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../../../../assets/vendor/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../../../../assets/vendor/uPlot.LICENSE"),
    ),
];

/// The live dashboard (HTML).
#[utoipa::path(tag = "dashboard", responses((status = 200, description = "The dashboard page", content_type = "text/html")))]
#[get("/")]
pub async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("cache-control", "no-cache"))
        .body(INDEX)
}

/// The dashboard's scripts, styles and the uPlot licence (embedded).
#[utoipa::path(
    tag = "dashboard",
    params(("file" = String, Path, description = "Asset name, e.g. `dashboard.js`")),
    responses(
        (status = 200, description = "The asset", content_type = "text/plain"),
        (status = 404, description = "No such asset", body = crate::error::ErrorBody),
    )
)]
#[get("/assets/{file}")]
pub async fn asset(path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let (_, ctype, bytes) = ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| ApiError::not_found(format!("no asset named `{name}`")))?;
    Ok(HttpResponse::Ok()
        .content_type(*ctype)
        .insert_header(("cache-control", "public, max-age=3600"))
        .body(*bytes))
}
