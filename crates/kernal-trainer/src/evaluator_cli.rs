//! `kernal evaluator NAME [TOKEN] --model M`: the evaluator role as a
//! command. It scores every new version of the model on the built-in
//! held-out data the reference trainer evaluates on (the digits test split,
//! the shipped held-out kernel code) or on a CSV of held-out rows
//! (`--data`), and reports it to the hub as the version's hub evaluation.

use std::path::PathBuf;
use std::process::ExitCode;

use kernal_client::connection::{ClientError, ClientEvent};
use kernal_client::evaluator::{run_evaluator, EvaluatorOptions, EvaluatorSummary, LearnerScorer};
use kernal_client::MlpLearner;

use super::cli::{fetch_layout, Specialties, TrainerArgs, TrainerCliError};
use kernal_core::data;
use kernal_core::model::{MlpSpec, TrainSettings};

#[derive(clap::Args, Debug)]
pub struct EvaluatorCmd {
    /// The evaluator's name, as issued (`POST /v1/models/{m}/evaluators`).
    pub name: String,
    /// The evaluator's token. Visible to other users in `ps`: prefer
    /// --token-file or KERNAL_TOKEN.
    pub token: Option<String>,
    /// Read the token from this file (its first line).
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// The model it evaluates.
    #[arg(long)]
    pub model: String,
    #[arg(long, default_value = "ws://127.0.0.1:5001")]
    pub hub: String,
    /// For `wss://` hubs with a private CA or a self-signed certificate.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Score classifiers on these held-out rows (features..., integer label
    /// last) instead of the built-in digits test split. The whole file is
    /// scored: it is the evaluator's own held-out data.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Stop after this many reports were recorded.
    #[arg(long)]
    pub max_versions: Option<u64>,
    /// One JSON object per event on stdout instead of lines on stderr.
    #[arg(long)]
    pub json: bool,
    /// Config file (for the `[specialties]` table).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Runs the command; exit codes as `kernal trainer`'s (2: bad data or
/// refused by the hub, 1: other errors). The caller loads `--config` (for
/// its `[specialties]`) and sets up logging.
pub fn main(cmd: EvaluatorCmd, specialties: &Specialties) -> ExitCode {
    let fail = |code: u8, e: &dyn std::fmt::Display| {
        eprintln!("kernal evaluator: {e}");
        ExitCode::from(code)
    };
    let token = match crate::token::token(
        cmd.token.clone(),
        cmd.token_file.as_deref(),
        "evaluator",
        "second",
    ) {
        Ok(t) => t,
        Err(e) => return fail(2, &e),
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(1, &e),
    };
    match rt.block_on(run(cmd, token, specialties)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(e.exit_code() as u8, &e),
    }
}

async fn run(
    cmd: EvaluatorCmd,
    token: String,
    specialties: &Specialties,
) -> Result<EvaluatorSummary, TrainerCliError> {
    let tls = kernal_client::tls::client_config(cmd.ca.as_deref())
        .map_err(|e| TrainerCliError::Data(e.to_string()))?;
    let layout = fetch_layout(&cmd.hub, &cmd.model, &tls).await?;
    let mut opts = EvaluatorOptions::new(&cmd.hub, &cmd.name, &token, &cmd.model);
    opts.tls = Some(tls);
    opts.max_versions = cmd.max_versions;
    if let Some(spec) = kernal_core::kernel::KernelSpec::from_layout(&layout) {
        // All three specialties' held-out code: what the hub scores too.
        let args = TrainerArgs {
            name: cmd.name.clone(),
            specialty: "evaluator".into(),
            token: String::new(),
            ca: None,
            hub: cmd.hub.clone(),
            model: cmd.model.clone(),
            data: cmd.data.clone(),
            source: Vec::new(),
            ext: Vec::new(),
            local_epochs: 1,
            min_steps: 0,
            steps: None,
            lr: None,
            batch_size: None,
            max_versions: None,
            json: cmd.json,
            compression: Default::default(),
        };
        let learner = super::kernel::learner(&args, spec)?;
        return serve(opts, LearnerScorer(learner), cmd.json).await;
    }
    let spec = MlpSpec::from_layout(&layout).ok_or_else(|| {
        TrainerCliError::Shape(format!(
            "model `{}` is neither an MLP nor the kernel language model: score it with your own code (kernal_client::evaluator::Scorer, or kernal_trainer.Evaluator in Python)",
            cmd.model
        ))
    })?;
    let settings = TrainSettings {
        epochs: 1,
        lr: 0.1,
        batch_size: 32,
        seed: data::fnv1a(&cmd.name),
    };
    let learner = match &cmd.data {
        Some(path) => {
            let mut ds = data::load_csv(path).map_err(|e| TrainerCliError::Data(e.to_string()))?;
            if ds.dim != spec.inputs || ds.classes > spec.classes {
                return Err(TrainerCliError::Shape(format!(
                    "{} has {} features and {} classes, but model `{}` takes {} inputs and has {} classes",
                    path.display(), ds.dim, ds.classes, cmd.model, spec.inputs, spec.classes
                )));
            }
            ds.classes = spec.classes;
            // Every row is held out: no training part is needed.
            MlpLearner::for_parts(spec, ds.clone(), ds, settings)
        }
        None => {
            if spec.inputs != 64 || spec.classes != 10 {
                return Err(TrainerCliError::Shape(format!(
                    "model `{}` takes {} inputs and {} classes, not the built-in digits' 64 and 10: give its held-out rows with --data FILE.csv",
                    cmd.model, spec.inputs, spec.classes
                )));
            }
            MlpLearner::for_digits(spec, "evaluator", specialties, settings)
                .map_err(TrainerCliError::Data)?
        }
    };
    serve(opts, LearnerScorer(learner), cmd.json).await
}

async fn serve<L: kernal_client::Learner>(
    opts: EvaluatorOptions,
    scorer: LearnerScorer<L>,
    json: bool,
) -> Result<EvaluatorSummary, TrainerCliError> {
    let on_event = move |e: &ClientEvent| {
        if json {
            if let Ok(s) = serde_json::to_string(e) {
                println!("{s}");
            }
            return;
        }
        let line = match e {
            ClientEvent::Welcome { model, version, .. } => {
                format!("joined model {model} at version {version} as an evaluator")
            }
            ClientEvent::Reported {
                version,
                accuracy,
                loss,
                bits_per_byte,
                num_examples,
                current,
            } => format!(
                "version {version}: {}{}{} on {num_examples} examples{}",
                accuracy
                    .map(|a| format!("accuracy {:.1}% ", a * 100.0))
                    .unwrap_or_default(),
                loss.map(|l| format!("loss {l:.4} ")).unwrap_or_default(),
                bits_per_byte
                    .map(|b| format!("{b:.3} bits/byte "))
                    .unwrap_or_default(),
                if *current {
                    ""
                } else {
                    " (stored; the hub's own evaluation is shown)"
                }
            ),
            ClientEvent::Error { code, message, .. } => format!("error {code}: {message}"),
            ClientEvent::Reconnect {
                attempt,
                in_secs,
                reason,
            } => {
                format!("hub unavailable ({reason}); reconnect #{attempt} in {in_secs:.1}s")
            }
            ClientEvent::NeverReached { message, .. } => message.clone(),
            ClientEvent::Done { acked, .. } => format!("done: {acked} report(s) recorded"),
            _ => return,
        };
        eprintln!("{line}");
    };
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    run_evaluator(opts, scorer, on_event, stop)
        .await
        .map_err(|e: ClientError| TrainerCliError::Client(e))
}
