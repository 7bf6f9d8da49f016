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
    /// As `Io`, on a disk (or quota) with no room left: the hub is sound,
    /// the update can be sent again once room is made.
    #[error("storage I/O error: {0}")]
    IoFull(String),
    #[error("storage error: {0}")]
    Storage(String),
}

/// SQLite's message for `SQLITE_FULL` (its fixed `sqlite3ErrStr` text; diesel
/// passes SQLite's message on, not its code).
const SQLITE_FULL: &str = "database or disk is full";

/// How a full disk reads once it is text: SQLite's words, then the
/// system's for ENOSPC and EDQUOT, then Rust's for `ErrorKind::StorageFull`.
const FULL_WORDS: &[&str] = &[
    SQLITE_FULL,
    "No space left on device",
    "Disk quota exceeded",
    "no storage space",
];

impl DbError {
    /// A failed file operation on `what`, kept apart when the disk is full.
    pub fn io(what: impl std::fmt::Display, e: std::io::Error) -> Self {
        let message = format!("{what}: {e}");
        match e.kind() {
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
                DbError::IoFull(message)
            }
            _ => DbError::Io(message),
        }
    }

    /// The stable code a client sees for this failure: a full disk and an
    /// unreachable store are the hub's trouble, not the request's, and a
    /// trainer sends the update again (`resend`); what is left (constraint
    /// violations, corrupt or unmigrated data) is `internal`.
    pub fn code(&self) -> ErrorCode {
        use diesel::result::{DatabaseErrorKind as Kind, Error as D};
        match self {
            DbError::IoFull(_) => ErrorCode::StorageFull,
            // One failure passed on as text (a batch's error given to each
            // of its updates) is known full by SQLite's or the system's words.
            DbError::Storage(m) if FULL_WORDS.iter().any(|w| m.contains(w)) => {
                ErrorCode::StorageFull
            }
            DbError::Diesel(D::DatabaseError(_, info)) if info.message().contains(SQLITE_FULL) => {
                ErrorCode::StorageFull
            }
            DbError::Diesel(D::DatabaseError(
                Kind::Unknown
                | Kind::ClosedConnection
                | Kind::ReadOnlyTransaction
                | Kind::SerializationFailure
                | Kind::UnableToSendCommand,
                _,
            ))
            | DbError::Connection(_)
            | DbError::Pool(_)
            | DbError::Io(_)
            | DbError::Storage(_) => ErrorCode::StorageUnavailable,
            DbError::Diesel(_) | DbError::Migration(_) | DbError::Corrupt(_) => ErrorCode::Internal,
        }
    }
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
        ApiError::new(e.code(), e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error as D};

    fn sqlite(kind: DatabaseErrorKind, message: &str) -> DbError {
        DbError::Diesel(D::DatabaseError(kind, Box::new(message.to_string())))
    }

    /// A full disk and an unreachable store have their own codes, in
    /// trainers' refusals and REST bodies alike; the rest stays `internal`.
    #[actix_rt::test]
    async fn storage_failures_have_their_own_codes() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let enospc = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        for (e, code) in [
            (
                sqlite(DatabaseErrorKind::Unknown, "database or disk is full"),
                ErrorCode::StorageFull,
            ),
            (DbError::io("blob", full), ErrorCode::StorageFull),
            (DbError::io("blob", enospc), ErrorCode::StorageFull),
            (DbError::io("blob", denied), ErrorCode::StorageUnavailable),
            (
                sqlite(DatabaseErrorKind::Unknown, "disk I/O error"),
                ErrorCode::StorageUnavailable,
            ),
            (
                DbError::Pool("timed out".into()),
                ErrorCode::StorageUnavailable,
            ),
            (
                DbError::Storage("persister unavailable".into()),
                ErrorCode::StorageUnavailable,
            ),
            (
                DbError::Storage("database error: database or disk is full".into()),
                ErrorCode::StorageFull,
            ),
            (
                sqlite(DatabaseErrorKind::UniqueViolation, "UNIQUE"),
                ErrorCode::Internal,
            ),
            (
                DbError::Corrupt("bad blob name".into()),
                ErrorCode::Internal,
            ),
            (DbError::Diesel(D::NotFound), ErrorCode::Internal),
        ] {
            assert_eq!(e.code(), code, "{e}");
            let api = ApiError::from(e);
            assert_eq!(api.code, code);
            assert_eq!(api.status_code().as_u16(), code.http_status());
            let body = actix_web::body::to_bytes(api.error_response().into_body()).await;
            let body: serde_json::Value = serde_json::from_slice(&body.unwrap()).unwrap();
            assert_eq!(body["code"], code.as_str());
        }
        assert_eq!(ErrorCode::StorageFull.http_status(), 507);
        assert_eq!(ErrorCode::StorageUnavailable.http_status(), 503);
        // The message a person reads is the one it always was.
        assert_eq!(
            DbError::io(
                "hub.db.blobs",
                std::io::Error::from(std::io::ErrorKind::StorageFull)
            )
            .to_string(),
            format!(
                "storage I/O error: hub.db.blobs: {}",
                std::io::Error::from(std::io::ErrorKind::StorageFull)
            )
        );
    }
}
