//! Limits the hub takes from its process and its settings: open files,
//! connection threads, and what each trainer connection is held to.

use std::time::Duration;

use super::session;

#[cfg(unix)]
fn nofile() -> Option<libc::rlimit> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0).then_some(rl)
}

/// The process's soft open-files limit.
pub fn nofile_limit() -> Option<u64> {
    #[cfg(unix)]
    return nofile().map(|rl| rl.rlim_cur);
    #[cfg(not(unix))]
    None
}

/// Raises the soft open-files limit to the hard limit (a thousand trainers
/// need a thousand sockets on each side). Returns the new soft limit.
pub fn raise_nofile_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut rl = nofile()?;
        if rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            // SAFETY: setrlimit only reads the struct it is given.
            let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) };
        }
        nofile_limit()
    }
    #[cfg(not(unix))]
    None
}

/// The connection threads for `hub.http_workers` (0: one per core).
pub(super) fn http_workers(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// What a new trainer connection is held to, from the current settings.
pub fn session_limits_of(h: &crate::config::HubConfig) -> session::SessionLimits {
    session::SessionLimits {
        max_message_bytes: h.max_message_bytes,
        max_prehello_bytes: h.max_prehello_bytes,
        max_fragments: h.max_fragments,
        max_outbound_bytes: h.max_outbound_bytes,
        hello_timeout: Duration::from_secs(h.hello_timeout_secs),
        heartbeat_interval: Duration::from_secs(h.heartbeat_interval_secs),
        client_timeout: Duration::from_secs(h.client_timeout_secs),
        model_hold: Duration::from_millis(h.model_hold_ms),
        min_upload_bytes_per_sec: h.min_upload_bytes_per_sec,
        inflight_share: h.max_inflight_share,
    }
}
