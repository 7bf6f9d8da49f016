//! The admin token. An admin handler takes [`AdminAuth`] as an argument,
//! so the check cannot be left out of a new one: actix runs it before the
//! handler body, and it is the handler's last argument so that a bad path
//! or query is still reported first, as it was when each handler checked
//! by hand. No body is read before it.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};

use super::state::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::protocol::ErrorCode;

/// The request carried the admin token (`Authorization: Bearer <token>`,
/// the scheme's name in any case, as RFC 7235 says).
#[derive(Debug, Clone, Copy)]
pub struct AdminAuth;

impl FromRequest for AdminAuth {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(admin_of(req))
    }
}

fn admin_of(req: &HttpRequest) -> Result<AdminAuth, ApiError> {
    let Some(st) = req.app_data::<web::Data<AppState>>() else {
        return Err(ApiError::internal("the hub's state is not configured"));
    };
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
    Ok(AdminAuth)
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

#[cfg(test)]
mod tests {
    use super::*;

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
