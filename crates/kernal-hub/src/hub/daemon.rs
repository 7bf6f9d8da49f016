//! `kernal hub`: the long-running daemon around [`start_hub`]:
//! signals (SIGTERM/SIGINT stop, SIGHUP reloads), systemd readiness and
//! watchdog notifications.

use std::net::TcpListener;
use std::time::Duration;

pub use super::limits::{nofile_limit, raise_nofile_limit};
use super::reload::ConfigSource;
use super::start::start_hub;
use crate::config::Config;
use crate::error::HubError;

use sd_notify::NotifyState;

/// Tells systemd about a state change when run with `Type=notify`; a no-op
/// otherwise. A failure is logged, never fatal: the hub serves either way.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("sd_notify({states:?}): {e}");
    }
}

/// Binds with SO_REUSEADDR so a restarted hub (after a crash or `kill -9`)
/// gets its port back at once despite connections in TIME_WAIT.
pub fn bind(addr: &str) -> Result<TcpListener, HubError> {
    use std::net::ToSocketAddrs;
    let err = |e: std::io::Error| HubError::Io(format!("bind {addr}"), e);
    let sa = addr
        .to_socket_addrs()
        .map_err(err)?
        .next()
        .ok_or_else(|| HubError::Other(format!("bind {addr}: no address")))?;
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(sa),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )
    .map_err(err)?;
    sock.set_reuse_address(true).map_err(err)?;
    sock.bind(&sa.into()).map_err(err)?;
    sock.listen(4096).map_err(err)?;
    Ok(sock.into())
}

/// Makes any panic, on any thread, end the process with status 101 once the
/// panic message is written: an actor that panics would otherwise leave a
/// process that answers `/healthz` but serves nobody, and systemd restarts
/// only a process that exits. `_exit` skips destructors and other threads'
/// locks, which a panicking process cannot trust.
pub fn exit_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        log::error!("panic: {info}; exiting so that the service manager restarts the process");
        // SAFETY: _exit ends the process at once; nothing runs afterwards.
        unsafe { libc::_exit(101) };
    }));
}

/// Runs the hub until SIGTERM or SIGINT. Returns after a clean shutdown.
pub fn run(
    cfg: Config,
    source: ConfigSource,
    addr_file: Option<std::path::PathBuf>,
) -> Result<(), HubError> {
    // Every trainer is a socket: take the hard open-files limit.
    if let Some(n) = raise_nofile_limit() {
        log::debug!("open files limit: {n}");
    }
    let listener = bind(&cfg.hub.bind)?;
    let sys = actix_rt::System::new();
    sys.block_on(async move {
        let (handle, server) = start_hub(listener, cfg, source).await?;
        actix_rt::spawn(server);
        if let Some(path) = &addr_file {
            // Written whole under a temporary name, then renamed: a reader
            // never sees half an address.
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, handle.addr.to_string())
                .and_then(|_| std::fs::rename(&tmp, path))
                .map_err(|e| HubError::Io(path.display().to_string(), e))?;
        }
        notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
        // `watchdog_enabled` honours WATCHDOG_PID: a watchdog meant for
        // another process (a wrapper that exec'd us not) is not ours to ping.
        if let Some(interval) = sd_notify::watchdog_enabled() {
            // Ping at half the watchdog interval, from the actor system, so a
            // wedged event loop stops the pings and systemd restarts us.
            let every = (interval / 2).max(Duration::from_millis(100));
            actix_rt::spawn(async move {
                loop {
                    actix_rt::time::sleep(every).await;
                    notify(&[NotifyState::Watchdog]);
                }
            });
        }
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(|e| HubError::Io("signal".into(), e))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| HubError::Io("signal".into(), e))?;
        let mut hup = signal(SignalKind::hangup()).map_err(|e| HubError::Io("signal".into(), e))?;
        loop {
            tokio::select! {
                _ = term.recv() => { log::info!("SIGTERM received"); break; }
                _ = int.recv() => { log::info!("SIGINT received"); break; }
                _ = hup.recv() => {
                    notify(&[NotifyState::Reloading]);
                    let h = handle.clone();
                    match actix_web::rt::task::spawn_blocking(move || h.reload()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => log::error!("config reload refused, keeping the old config: {e}"),
                        Err(e) => log::error!("config reload failed: {e}"),
                    }
                    notify(&[NotifyState::Ready]);
                }
            }
        }
        notify(&[NotifyState::Stopping]);
        handle.shutdown().await;
        Ok(())
    })
}
