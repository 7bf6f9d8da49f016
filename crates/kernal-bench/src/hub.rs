//! The benchmark's own hub: a `kernal hub` child process, so its peak RSS
//! and CPU time can be read from /proc.

use super::args::BenchArgs;
use super::error::BenchError;
use kernal_hub::hub::child::ChildHub;

/// The benchmark's own hub: limits sized for the run.
pub(crate) fn start_own_hub(args: &BenchArgs) -> Result<ChildHub, BenchError> {
    let mut hub = toml::Table::new();
    let max_msg = (args.params * 4 + (1 << 20)).max(256 << 20);
    hub.insert("max_message_bytes".into(), (max_msg as i64).into());
    hub.insert("client_timeout_secs".into(), 120i64.into());
    // A benchmark makes thousands of versions nobody will download: keep the
    // newest few checkpoints, as a production hub keeps a bounded history.
    hub.insert("keep_weights_versions".into(), 3i64.into());
    // Every synthetic trainer connects and registers at once from one address
    // (a real fleet from many): the per-address caps are hub-wide ones here.
    for key in [
        "max_pending_handshakes",
        "max_prehello_per_ip",
        "registrations_per_ip_per_hour",
        "max_trainers",
    ] {
        hub.insert(key.into(), ((args.trainers + 16) as i64).into());
    }
    if max_msg > 128 << 20 {
        // A message holds its bytes in the in-flight budget: a 400 MB update
        // needs a budget of that size, held by one connection at a time.
        hub.insert(
            "max_inflight_update_bytes".into(),
            ((max_msg + (1 << 20)) as i64).into(),
        );
        hub.insert("max_inflight_share".into(), 1.0f64.into());
    }
    hub.insert(
        "max_model_params".into(),
        (args.params.max(100_000_000) as i64).into(),
    );
    let mut root = toml::Table::new();
    root.insert("hub".into(), toml::Value::Table(hub));
    ChildHub::start(root).map_err(BenchError)
}
