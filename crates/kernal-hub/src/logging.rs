//! Logging through env_logger, with a filter that a config reload can swap
//! (env_logger's own filter is fixed once built).

use std::sync::RwLock;

use log::{Log, Metadata, Record};

struct Reloadable {
    inner: RwLock<env_logger::Logger>,
}

static LOGGER: std::sync::OnceLock<&'static Reloadable> = std::sync::OnceLock::new();

fn build(level: &str) -> env_logger::Logger {
    let mut b = env_logger::Builder::new();
    b.parse_filters(level);
    if let Ok(f) = std::env::var("RUST_LOG") {
        // RUST_LOG wins over the config file, as documented.
        b.parse_filters(&f);
    }
    // Under systemd the journal stamps each line itself.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        b.format_timestamp(None);
    }
    b.build()
}

impl Log for Reloadable {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        self.inner.read().map(|l| l.enabled(m)).unwrap_or(false)
    }
    fn log(&self, r: &Record<'_>) {
        if let Ok(l) = self.inner.read() {
            l.log(r);
        }
    }
    fn flush(&self) {
        if let Ok(l) = self.inner.read() {
            l.flush();
        }
    }
}

/// Installs the logger with `level` (env_logger filter syntax); `RUST_LOG` overrides it.
pub fn init(level: &str) {
    let logger = build(level);
    let max = logger.filter();
    let leaked: &'static Reloadable = Box::leak(Box::new(Reloadable {
        inner: RwLock::new(logger),
    }));
    if log::set_logger(leaked).is_ok() {
        log::set_max_level(max);
        let _ = LOGGER.set(leaked);
    }
}

/// Applies a new filter (config reload). Returns false when `RUST_LOG` is set,
/// since it overrides the config.
pub fn set_level(level: &str) -> bool {
    if std::env::var_os("RUST_LOG").is_some() {
        return false;
    }
    if let Some(l) = LOGGER.get() {
        let logger = build(level);
        log::set_max_level(logger.filter());
        if let Ok(mut w) = l.inner.write() {
            *w = logger;
        }
    }
    true
}
