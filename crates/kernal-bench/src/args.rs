//! `kernal bench`'s options: the binary's command line parses straight into
//! them (README and docs/benchmarks.md document each flag).

use kernal_hub::aggregation::Strategy;

/// `kernal bench` options (the CLI parses straight into this).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Use this running hub instead of starting one (needs --admin-token).
    #[arg(long)]
    pub hub: Option<String>,
    #[arg(long, env = "KERNAL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Parameters of the flat float32 model.
    #[arg(long)]
    pub params: usize,
    /// Synthetic trainers.
    #[arg(long)]
    pub trainers: usize,
    /// Versions measured (after the warm-up).
    #[arg(long)]
    pub versions: u64,
    /// Versions run before measuring.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Updates per version (default: every trainer).
    #[arg(long)]
    pub min_updates: Option<usize>,
    /// fedavg, fedavgm, fedadam, median or trimmed_mean.
    #[arg(long, default_value = "fedavg", value_parser = kernal_hub::config::by_name::<Strategy>)]
    pub strategy: Strategy,
    /// Send float16 deltas.
    #[arg(long = "f16")]
    pub half: bool,
    /// One JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// For a `wss://`/`https://` hub with a private CA: trust this PEM file too.
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
    /// After the run, SIGKILL the bench's own hub, restart it on the same
    /// database, and measure how long every trainer takes to be welcomed
    /// again when all reconnect at once (a fleet after a hub restart).
    #[arg(long)]
    pub rejoin: bool,
}
