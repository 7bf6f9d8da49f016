//! Hub-issued trainer tokens: high-entropy tokens the hub checks with a
//! fast keyed hash instead of argon2 (see `hub::secrets`), so a fleet of
//! thousands can rejoin a restarted hub in seconds.

use actix_web::{post, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::IntoParams;

use super::AppState;
use super::{AdminAuth, AdminRefusals};
use crate::error::{ApiError, ErrorBody};

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct IssueQuery {
    /// How many tokens (1 to 10000, default 1).
    #[param(minimum = 1, maximum = 10000)]
    pub count: Option<i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct IssuedTokens {
    /// Each `kt1_` and 64 hex digits. Not stored anywhere: give each to one
    /// trainer, whose first hello registers its name with it.
    pub tokens: Vec<String>,
}

/// Issue trainer tokens (admin). A trainer registering with one of these is
/// checked with a fast keyed hash on every hello (microseconds) instead of
/// argon2 (tens of milliseconds); tokens chosen by people keep argon2.
#[utoipa::path(
    tag = "trainers",
    security(("adminToken" = [])),
    params(IssueQuery),
    responses(
        (status = 200, description = "New tokens", body = IssuedTokens),
        (status = 400, description = "Bad count", body = ErrorBody),
        AdminRefusals,
    )
)]
#[post("/v1/trainer-tokens")]
pub async fn issue_trainer_tokens(
    st: web::Data<AppState>,
    q: web::Query<IssueQuery>,
    _admin: AdminAuth,
) -> Result<HttpResponse, ApiError> {
    let count = match q.count {
        None => 1,
        Some(n) if (1..=10_000).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "count: must be between 1 and 10000 (got {n})"
            )))
        }
    };
    let tokens = (0..count).map(|_| st.tokens.issue()).collect();
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(IssuedTokens { tokens }))
}
