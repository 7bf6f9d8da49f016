//! Library error types. The REST API renders every error as
//! `{"code": ..., "message": ...}`; codes are stable strings users' scripts match on.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::protocol::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration ({source_name}): {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
}

impl ConfigError {
    pub fn invalid(source_name: &str, e: impl std::fmt::Display) -> Self {
        ConfigError::Invalid {
            source_name: source_name.to_string(),
            message: e.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Diesel(#[from] diesel::result::Error),
    #[error("database connection error: {0}")]
    Connection(#[from] diesel::ConnectionError),
    #[error("database pool error: {0}")]
    Pool(String),
    #[error("migration error: {0}")]
    Migration(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Reading or writing a file failed (permissions, disk full, ...): the
    /// data may be fine, the hub cannot reach it.
    #[error("storage I/O error: {0}")]
    Io(String),
    #[error("storage error: {0}")]
    Storage(String),
}

/// An error answered to a REST client.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

/// Every REST error: a stable code (see docs/PROTOCOL.md) and a sentence.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// Stable error code, for scripts to match on.
    pub code: &'a str,
    /// What went wrong, for people.
    pub message: &'a str,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        log::error!("{e}");
        ApiError::internal(e.to_string())
    }
}

impl ApiError {
    /// 413 for a body over its limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body is over this call's limit of {limit} bytes"),
        )
    }
}

impl From<actix_web::error::BlockingError> for ApiError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        ApiError::internal(e.to_string())
    }
}

impl From<actix::MailboxError> for ApiError {
    fn from(e: actix::MailboxError) -> Self {
        ApiError::new(ErrorCode::ShuttingDown, format!("hub unavailable: {e}"))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(ErrorBody {
            code: self.code.as_str(),
            message: &self.message,
        })
    }
}

/// Why the hub could not start or keep running: its caller (the daemon, a
/// test, the harness) decides whether to exit or retry.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("stored model `{model}` is unreadable: {message}")]
    Corrupt { model: String, message: String },
    #[error("{0}")]
    Other(String),
}
