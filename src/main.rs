//! The `kernal` command: parses the CLI and dispatches to the crates that do
//! the work (`kernal-hub`, `kernal-trainer`, `kernal-harness`, `kernal-bench`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kernal_client::connection::Compression;
use kernal_hub::config::{CliOverrides, Config};
use kernal_hub::hub::ConfigSource;
use kernal_trainer::cli::TrainerArgs;

#[derive(Parser)]
#[command(
    name = "kernal",
    version,
    about = "Collaborative training hub: hub daemon, reference trainer and scenario harness"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the trainer's variant costs nothing,
// and boxing its fields would hide them from clap's derive.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the hub daemon.
    Hub {
        /// Config file layered over the built-in defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Address to listen on (default 127.0.0.1:5001).
        #[arg(long)]
        bind: Option<String>,
        /// SQLite database file.
        #[arg(long)]
        db: Option<String>,
        /// Once serving, write the address it listens on (`127.0.0.1:40123`)
        /// to this file: with `--bind 127.0.0.1:0` the kernel picks the port.
        #[arg(long)]
        addr_file: Option<PathBuf>,
    },
    /// Run the reference trainer: learns on its specialty's data and shares with the hub.
    Trainer {
        name: String,
        specialty: String,
        /// The trainer's token. Visible to other users in `ps`: prefer
        /// --token-file or KERNAL_TOKEN.
        token: Option<String>,
        /// Read the token from this file (its first line).
        #[arg(long, conflicts_with = "token")]
        token_file: Option<PathBuf>,
        /// For `wss://` hubs with a private CA or a self-signed certificate:
        /// trust the certificates in this PEM file too.
        #[arg(long)]
        ca: Option<PathBuf>,
        #[arg(long, default_value = "ws://127.0.0.1:5001")]
        hub: String,
        /// The hub's model: `kernel` (the built-in language model of C
        /// source), `digits` (the fast digits demo) or one you created.
        #[arg(long, default_value = "kernel")]
        model: String,
        /// Train on this CSV (features..., integer label last) instead of the built-in digits.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Kernel model: train on this source tree (repeatable) instead of
        /// the shipped Linux excerpts of the specialty.
        #[arg(long)]
        source: Vec<PathBuf>,
        /// Kernel model: which files of --source to read, by name ending.
        #[arg(long, value_delimiter = ',', default_value = ".c,.h")]
        ext: Vec<String>,
        /// Classifiers: epochs over the local data per version.
        #[arg(long, default_value_t = 2)]
        local_epochs: usize,
        /// Classifiers: fewest mini-batch steps per version (a small file
        /// gets more passes than --local-epochs; 0: epochs only).
        #[arg(long, default_value_t = kernal_client::DEFAULT_MIN_STEPS)]
        min_steps: usize,
        /// Kernel model: AdamW steps per version (default 40).
        #[arg(long)]
        steps: Option<usize>,
        /// Learning rate (default 0.1 for classifiers, 0.005 for the kernel model).
        #[arg(long)]
        lr: Option<f64>,
        /// Batch size (default 32 rows for classifiers, 16 windows for the kernel model).
        #[arg(long)]
        batch_size: Option<usize>,
        /// Stop after training on this many global versions.
        #[arg(long)]
        max_versions: Option<u64>,
        /// One JSON object per event on stdout instead of the status line.
        #[arg(long)]
        json: bool,
        /// Send deltas as f16 or bf16 (halves the bytes).
        #[arg(long, value_parser = kernal_hub::config::by_name::<Compression>, default_value = "none")]
        compress: Compression,
        /// Config file (for the `[specialties]` table).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run an evaluator: scores every new version of a model on held-out
    /// data and reports it to the hub as the version's hub evaluation.
    Evaluator(kernal_trainer::evaluator_cli::EvaluatorCmd),
    /// Bits per byte of a `kernel` checkpoint on source files or directories.
    Evaluate {
        /// The model kind (only `kernel`, the language model, is scored in bits per byte).
        #[arg(long, default_value = "kernel")]
        model: String,
        /// The checkpoint (safetensors: a version's weights from the hub, or
        /// one the harness kept).
        #[arg(long)]
        weights: PathBuf,
        /// Files and directories to score (directories: files by --ext).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Which files of a directory to read, by name ending.
        #[arg(long, value_delimiter = ',', default_value = ".c,.h")]
        ext: Vec<String>,
        /// Bytes scored at most; beyond it, windows spread evenly over the text.
        #[arg(long, default_value_t = kernal_trainer::kernel_cli::DEFAULT_EVAL_BYTES)]
        max_bytes: usize,
        /// One JSON object instead of the sentence.
        #[arg(long)]
        json: bool,
    },
    /// Completes a prompt with a `kernel` checkpoint or the hub's latest version.
    Complete {
        /// The checkpoint to use.
        #[arg(long, required_unless_present = "hub", conflicts_with = "hub")]
        weights: Option<PathBuf>,
        /// Download the latest version of --model from this hub instead.
        #[arg(long)]
        hub: Option<String>,
        #[arg(long, default_value = "kernel")]
        model: String,
        /// Bytes to add to the prompt (at most 4096).
        #[arg(long, default_value_t = 200)]
        max_bytes: usize,
        /// 0 is greedy (deterministic); above, bytes are sampled.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        prompt: String,
    },
    /// Load benchmark: N synthetic trainers against a hub, R versions.
    Bench(kernal_bench::BenchArgs),
    /// Run a multi-trainer scenario (config/scenarios/NAME.toml) and check its pass criteria.
    Harness {
        /// Scenario name (or a path to a .toml file).
        #[arg(required_unless_present = "list")]
        scenario: Option<String>,
        /// List the available scenarios.
        #[arg(long)]
        list: bool,
        /// Run against this hub instead of starting one.
        #[arg(long)]
        hub: Option<String>,
        /// Write the full report as JSON to this file.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Seed (overrides the scenario's).
        #[arg(long)]
        seed: Option<u64>,
        /// Admin token of --hub, to record the run there (or KERNAL_ADMIN_TOKEN).
        #[arg(long, env = "KERNAL_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// For an `https://` hub with a private CA: trust this PEM file too.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Write the run's models to this directory: collective.safetensors,
        /// solo-<trainer>.safetensors and, where run, centralised.safetensors.
        #[arg(long, value_name = "DIR")]
        keep_weights: Option<PathBuf>,
    },
}

fn init_logging(level: &str) {
    kernal_hub::logging::init(level);
}

/// The hub's allocator setting: process-wide, so it belongs to the process
/// (here), not to a library an embedder links.
///
/// glibc raises its mmap threshold after freeing a large block, so the
/// 19 MiB argon2 work areas of a hello storm end up in heap arenas and stay
/// resident (measured: 1.85 GiB peak for 400 hellos, 84 MiB with a fixed
/// threshold). A fixed 16 MiB threshold returns those at once while update
/// buffers of a few MB keep being reused from the heap.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's tuning; called before the hub
    // starts any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 * 1024 * 1024);
        // Fixing the threshold also fixes the trim threshold at 128 KiB,
        // which would give every freed update buffer back to the kernel.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 * 1024 * 1024);
    }
}

fn main() -> ExitCode {
    // A panic anywhere ends the process with a failure status (systemd's
    // Restart=on-failure then restarts the hub), never leaves it half alive.
    kernal_hub::hub::daemon::exit_on_panic();
    let cli = Cli::parse();
    match cli.command {
        Command::Evaluate {
            model,
            weights,
            paths,
            ext,
            max_bytes,
            json,
        } => {
            init_logging("warn");
            match kernal_trainer::kernel_cli::evaluate(&model, &weights, &paths, &ext, max_bytes) {
                Ok(r) if json => {
                    println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Ok(r) => {
                    println!(
                        "{:.4} bits per byte on {} bytes predicted ({} file(s), {} bytes)",
                        r.bits_per_byte, r.bytes, r.files, r.text_bytes
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("kernal evaluate: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Complete {
            weights,
            hub,
            model,
            max_bytes,
            temperature,
            seed,
            prompt,
        } => {
            init_logging("warn");
            use kernal_trainer::kernel_cli::WeightsFrom;
            let from = match (weights, hub) {
                (Some(p), _) => WeightsFrom::File(p),
                (None, Some(url)) => WeightsFrom::Hub { url, model },
                (None, None) => {
                    eprintln!("kernal complete: give --weights FILE or --hub URL");
                    return ExitCode::from(2);
                }
            };
            match kernal_trainer::kernel_cli::complete(&from, &prompt, max_bytes, temperature, seed)
            {
                Ok(text) => {
                    println!("{prompt}{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("kernal complete: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Bench(args) => {
            init_logging("warn");
            if args.params == 0 || args.trainers == 0 || args.versions == 0 {
                eprintln!("kernal bench: --params, --trainers and --versions must be at least 1");
                return ExitCode::from(2);
            }
            ExitCode::from(kernal_bench::run_cli(args) as u8)
        }
        Command::Harness {
            scenario,
            list,
            hub,
            report,
            seed,
            admin_token,
            ca,
            quiet,
            keep_weights,
        } => {
            init_logging("warn");
            if list {
                return ExitCode::from(kernal_harness::list_cli() as u8);
            }
            let args = kernal_harness::HarnessArgs {
                scenario: scenario.unwrap_or_default(),
                hub,
                report,
                seed,
                admin_token,
                ca,
                progress: !quiet,
                keep_weights,
            };
            ExitCode::from(kernal_harness::run_cli(args) as u8)
        }
        Command::Hub {
            config,
            bind,
            db,
            addr_file,
        } => {
            let overrides = CliOverrides { bind, db };
            let cfg = match Config::load(config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("kernal hub: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&cfg.log.level);
            tune_allocator();
            let source = ConfigSource {
                file: config,
                cli: overrides,
                use_env: true,
            };
            match kernal_hub::hub::daemon::run(cfg, source, addr_file) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e}");
                    eprintln!("kernal hub: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Evaluator(cmd) => {
            let cfg = match Config::load(cmd.config.as_deref(), &CliOverrides::default()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("kernal evaluator: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging("warn");
            kernal_trainer::evaluator_cli::main(cmd, &cfg.specialties)
        }
        Command::Trainer {
            name,
            specialty,
            token,
            token_file,
            ca,
            hub,
            model,
            data,
            source,
            ext,
            local_epochs,
            min_steps,
            steps,
            lr,
            batch_size,
            max_versions,
            json,
            compress,
            config,
        } => {
            let cfg = match Config::load(config.as_deref(), &CliOverrides::default()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("kernal trainer: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging("warn");
            let token = match kernal_trainer::token::token(
                token,
                token_file.as_deref(),
                "trainer",
                "third",
            ) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("kernal trainer: {e}");
                    return ExitCode::from(2);
                }
            };
            let args = TrainerArgs {
                name,
                specialty,
                token,
                ca,
                hub,
                model,
                data,
                source,
                ext,
                local_epochs,
                min_steps,
                steps,
                lr,
                batch_size,
                max_versions,
                json,
                compression: compress,
            };
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("kernal trainer: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(kernal_trainer::cli::run(args, &cfg.specialties)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kernal trainer: {e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
    }
}
