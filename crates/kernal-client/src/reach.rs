//! "Never reached the hub": a client whose first connection attempts all
//! fail says so once, naming the address, the port and the OS error, so a
//! wrong port or a hub that is not running is told apart from a hub that
//! went away (which the reconnect lines report). The Python package says
//! the same (`HubUnreachable`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::events::ClientEvent;

/// Failed attempts, none ever welcomed, before the sentence is said.
pub const NEVER_REACHED_AFTER: u32 = 3;

/// Watches a client's events for a welcome and counts failed connection
/// attempts until there is one.
#[derive(Default)]
pub(crate) struct Reach {
    welcomed: Arc<AtomicBool>,
    failures: u32,
    said: bool,
}

impl Reach {
    /// Wraps the user's event callback so a welcome is noticed.
    pub(crate) fn watch<'a>(
        &self,
        mut on_event: impl FnMut(&ClientEvent) + Send + 'a,
    ) -> impl FnMut(&ClientEvent) + Send + 'a {
        let welcomed = self.welcomed.clone();
        move |e: &ClientEvent| {
            if matches!(e, ClientEvent::Welcome { .. }) {
                welcomed.store(true, Ordering::Relaxed);
            }
            on_event(e)
        }
    }

    /// A connection attempt ended with `reason`. Returns the one
    /// `never_reached` event when it is due: the attempts so far could not
    /// even open a connection (`connect: ...`) and none was ever welcomed.
    pub(crate) fn failed(&mut self, url: &str, reason: &str) -> Option<ClientEvent> {
        if self.said || self.welcomed.load(Ordering::Relaxed) {
            return None;
        }
        let os_error = reason.strip_prefix("connect: ")?;
        self.failures += 1;
        if self.failures < NEVER_REACHED_AFTER {
            return None;
        }
        self.said = true;
        Some(never_reached(url, self.failures, os_error))
    }
}

/// `host:port` of a WebSocket URL (the port its scheme implies if none).
pub fn address_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("ws", url));
    let host = rest.split('/').next().unwrap_or(rest);
    let has_port = host
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    if has_port {
        host.to_string()
    } else if scheme == "wss" {
        format!("{host}:443")
    } else {
        format!("{host}:80")
    }
}

fn never_reached(url: &str, attempts: u32, error: &str) -> ClientEvent {
    let address = address_of(url);
    ClientEvent::NeverReached {
        message: format!(
            "never reached the hub at {address} ({url}): {attempts} connection attempts failed: {error}; \
             still trying. Is the hub running, and is {address} its address and port?"
        ),
        url: url.to_string(),
        address,
        attempts,
        error: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn said_once_after_the_first_failures_and_never_after_a_welcome() {
        let mut r = Reach::default();
        let url = "ws://127.0.0.1:5999/v1/trainers/ws";
        let refused = "connect: IO error: Connection refused (os error 111)";
        assert!(r.failed(url, refused).is_none());
        assert!(r.failed(url, "connection closed").is_none());
        assert!(r.failed(url, refused).is_none());
        let Some(ClientEvent::NeverReached {
            address,
            message,
            attempts,
            ..
        }) = r.failed(url, refused)
        else {
            panic!("not said")
        };
        assert_eq!((address.as_str(), attempts), ("127.0.0.1:5999", 3));
        assert!(message.contains("os error 111"), "{message}");
        assert!(r.failed(url, refused).is_none(), "said twice");

        let mut r = Reach::default();
        let mut seen = 0;
        let mut on = r.watch(|_| seen += 1);
        on(&ClientEvent::Welcome {
            trainer: "a".into(),
            model: "m".into(),
            version: 0,
            registered: false,
            session_id: "s".into(),
        });
        drop(on);
        assert_eq!(seen, 1);
        for _ in 0..5 {
            assert!(r.failed(url, refused).is_none(), "the hub was reached once");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(address_of("ws://h:1/v1/trainers/ws"), "h:1");
        assert_eq!(address_of("wss://h/v1/trainers/ws"), "h:443");
        assert_eq!(address_of("ws://h/x"), "h:80");
    }
}
