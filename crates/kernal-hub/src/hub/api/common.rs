//! Helpers the handlers share: reading the database off the executor,
//! bounded bodies and lenient JSON, `?limit=`, and the answers several
//! resources give alike.

use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use crate::db::{self, DbPool};
use crate::error::ApiError;
use crate::protocol::{ErrorCode, Refusal};

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

pub fn unknown_model(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::UnknownModel,
        format!("no model named `{}`", name.escape_default()),
    )
}

/// `?limit=`: how many of the newest rows to return.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// The newest this many (1 to 100000; default 1000 for versions, 5000
    /// for evaluations).
    #[param(minimum = 1, maximum = 100000)]
    pub limit: Option<i64>,
}

/// Checks an optional `limit` against its range.
pub fn limit(given: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match given {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(format!(
            "limit: must be between 1 and {max} (got {n})"
        ))),
    }
}

pub async fn ensure_model(pool: &DbPool, name: &str) -> Result<(), ApiError> {
    let n = name.to_string();
    match read(pool, move |c| db::get_model(c, &n)).await? {
        Some(_) => Ok(()),
        None => Err(unknown_model(name)),
    }
}
