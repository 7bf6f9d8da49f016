//! What one connection tells the reconnecting loop when it ends.

use super::error::ClientError;
use crate::protocol::ErrorCode;

pub(crate) enum Flow {
    Continue,
    /// Reconnect (the connection ended or the hub asked us to go).
    Reconnect(String),
    /// Stop for good with this error.
    Fatal(ClientError),
}

/// The error a trainer stops with when the hub refuses it for good.
pub(super) fn refused(code: ErrorCode, message: String) -> ClientError {
    let code = code.as_str().into();
    ClientError::Refused { code, message }
}
