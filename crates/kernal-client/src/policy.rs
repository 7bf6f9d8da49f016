//! What the connection loop does about the hub's `error` messages and about
//! an update too large to send. The rule per code is the error table's
//! [`ClientAction`] (crates/kernal-core/src/protocol/errors.rs), the one
//! source the Python package follows too, so a refusal that no retry can
//! change stops the trainer instead of looping.

use crate::connection::ClientError;
use crate::protocol::{ClientAction, ErrorCode};

/// The loop's answer to one `error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The unacknowledged update it answered is refused for good: forget it.
    pub drop_pending: bool,
    pub next: Next,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    Continue,
    Reconnect,
    GiveUp,
}

/// `ours`: the error names the update this trainer is waiting on.
/// `fatal`: the hub closes the connection after it.
pub(crate) fn on_error(code: ErrorCode, fatal: bool, ours: bool) -> Decision {
    let action = code.client_action();
    let drop_pending = ours && action == ClientAction::DropUpdate;
    let next = match action {
        ClientAction::GiveUp => Next::GiveUp,
        ClientAction::Resend if ours => Next::Reconnect,
        _ if fatal => Next::Reconnect,
        _ => Next::Continue,
    };
    Decision { drop_pending, next }
}

/// Refuses, before sending, an update larger than the hub said it takes
/// (`welcome.max_message_bytes`, the effective limit): the hub would close
/// the connection with `message_too_large`, and every resend would too.
pub(crate) fn check_size(
    payload_bytes: usize,
    max_message_bytes: usize,
) -> Result<(), ClientError> {
    if payload_bytes <= max_message_bytes {
        return Ok(());
    }
    Err(ClientError::Refused {
        code: ErrorCode::MessageTooLarge.as_str().into(),
        message: format!(
            "this update is {payload_bytes} bytes and the hub takes messages of at most \
             {max_message_bytes} bytes (welcome.max_message_bytes): compress it (f16/bf16 halves it) \
             or ask the hub's administrator to raise hub.max_message_bytes, \
             hub.max_inflight_update_bytes and hub.max_inflight_share"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_table_alone_says_when_to_give_up() {
        // No list of codes here: every code gives up exactly when the
        // table's `client_action` says so, whatever the hub adds later.
        for &code in ErrorCode::ALL {
            let gives_up = code.client_action() == ClientAction::GiveUp;
            for (fatal, ours) in [(true, true), (true, false), (false, true), (false, false)] {
                let d = on_error(code, fatal, ours);
                assert_eq!(d.next == Next::GiveUp, gives_up, "{code}");
                assert_eq!(
                    d.drop_pending,
                    ours && code.client_action() == ClientAction::DropUpdate,
                    "{code}"
                );
            }
        }
    }

    #[test]
    fn refused_updates_are_dropped_and_stored_ones_resent() {
        let d = on_error(ErrorCode::StaleUpdate, false, true);
        assert_eq!((d.drop_pending, d.next), (true, Next::Continue));
        let d = on_error(ErrorCode::StaleUpdate, false, false);
        assert!(!d.drop_pending);
        let d = on_error(ErrorCode::Internal, false, true);
        assert_eq!((d.drop_pending, d.next), (false, Next::Reconnect));
        let d = on_error(ErrorCode::ShuttingDown, true, false);
        assert_eq!((d.drop_pending, d.next), (false, Next::Reconnect));
        let d = on_error(ErrorCode::HelloTimeout, true, false);
        assert_eq!(d.next, Next::Reconnect);
    }

    #[test]
    fn an_update_over_the_limit_is_refused_before_sending() {
        assert!(check_size(100, 100).is_ok());
        let e = check_size(101, 100).unwrap_err();
        assert!(matches!(&e, ClientError::Refused { code, .. } if code == "message_too_large"));
        assert!(e.to_string().contains("101 bytes"), "{e}");
    }
}
