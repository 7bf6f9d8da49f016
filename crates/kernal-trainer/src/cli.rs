//! `kernal trainer NAME SPECIALTY TOKEN`: the reference trainer as a command,
//! with a live status line or JSON events on stdout.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use kernal_client::connection::{self, ClientEvent, ClientOptions};
use kernal_client::MlpLearner;
use kernal_core::data;
use kernal_core::model::{MlpSpec, TrainSettings};
use kernal_core::protocol::ModelLayout;

use super::status::StatusLine;
pub use crate::args::{TrainerArgs, TrainerCliError};

/// Asks the hub for the model's tensors, retrying while it is not up yet.
pub(crate) async fn fetch_layout(
    hub: &str,
    model: &str,
    tls: &std::sync::Arc<rustls::ClientConfig>,
) -> Result<ModelLayout, TrainerCliError> {
    let url = format!("{}/v1/models/{}", connection::http_url(hub), model);
    let http = kernal_client::tls::http_client(tls, Some(Duration::from_secs(10)))
        .map_err(|e| TrainerCliError::Other(e.to_string()))?;
    let mut wait = 0.25f64;
    for attempt in 0..40 {
        match http.get(&url).send().await {
            Ok(r) if r.status().as_u16() == 404 => {
                return Err(TrainerCliError::Shape(format!(
                    "the hub has no model `{model}`"
                )))
            }
            Ok(r) if r.status().is_success() => {
                let v: serde_json::Value = r
                    .json()
                    .await
                    .map_err(|e| TrainerCliError::Other(e.to_string()))?;
                let tensors = serde_json::from_value(v["tensors"].clone())
                    .map_err(|e| TrainerCliError::Other(format!("model description: {e}")))?;
                return Ok(ModelLayout { tensors });
            }
            other => {
                if attempt == 0 {
                    log::warn!(
                        "hub not reachable yet ({}); retrying",
                        match other {
                            Ok(r) => r.status().to_string(),
                            Err(e) => e.to_string(),
                        }
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        wait = (wait * 2.0).min(5.0);
    }
    Err(TrainerCliError::Other(format!(
        "cannot reach the hub at {url}"
    )))
}

/// The digits specialties (`[specialties]` of the config: specialty name to
/// its classes), which the built-in digits learner shards by.
pub type Specialties = std::collections::BTreeMap<String, Vec<u32>>;

pub async fn run(
    args: TrainerArgs,
    specialties: &Specialties,
) -> Result<connection::Summary, TrainerCliError> {
    let tls = kernal_client::tls::client_config(args.ca.as_deref())
        .map_err(|e| TrainerCliError::Data(e.to_string()))?;
    let layout = fetch_layout(&args.hub, &args.model, &tls).await?;
    if let Some(spec) = kernal_core::kernel::KernelSpec::from_layout(&layout) {
        let learner = super::kernel::learner(&args, spec)?;
        return serve(args, tls, learner).await;
    }
    if !args.source.is_empty() {
        return Err(TrainerCliError::Shape(format!(
            "--source trains a language model; model `{}` is a classifier (use --data FILE.csv)",
            args.model
        )));
    }
    let spec = MlpSpec::from_layout(&layout).ok_or_else(|| {
        TrainerCliError::Shape(format!(
            "model `{}` is not an MLP this trainer can train (tensors: {:?})",
            args.model,
            layout
                .tensors
                .iter()
                .map(|t| (&t.name, &t.shape))
                .collect::<Vec<_>>()
        ))
    })?;
    let settings = TrainSettings {
        epochs: args.local_epochs,
        lr: args.lr.unwrap_or(0.1),
        batch_size: args.batch_size.unwrap_or(32),
        seed: data::fnv1a(&args.name),
    };
    let learner = match &args.data {
        Some(path) => {
            let ds = data::load_csv(path).map_err(|e| TrainerCliError::Data(e.to_string()))?;
            if ds.dim != spec.inputs || ds.classes > spec.classes {
                return Err(TrainerCliError::Shape(format!(
                    "{} has {} features and {} classes, but model `{}` takes {} inputs and has {} classes; create a model for this data (POST /v1/models with inputs={} classes={}) and join it with --model",
                    path.display(), ds.dim, ds.classes, args.model, spec.inputs, spec.classes, ds.dim, ds.classes
                )));
            }
            let mut ds = ds;
            ds.classes = spec.classes;
            MlpLearner::for_csv(spec, &ds, settings)
        }
        None => MlpLearner::for_digits(spec, &args.specialty, specialties, settings)
            .map_err(TrainerCliError::Data)?,
    }
    .with_min_steps(args.min_steps);
    serve(args, tls, learner).await
}

/// Runs the connection loop with `learner`, drawing the status line or
/// printing JSON events.
async fn serve<L: kernal_client::Learner>(
    args: TrainerArgs,
    tls: std::sync::Arc<rustls::ClientConfig>,
    learner: L,
) -> Result<connection::Summary, TrainerCliError> {
    let mut opts = ClientOptions::new(&args.hub, &args.name, &args.specialty, &args.token);
    opts.model = args.model.clone();
    opts.tls = Some(tls);
    opts.max_versions = args.max_versions;
    opts.compression = args.compression;
    // A spinner only means something on a terminal: under systemd, nohup or
    // `> trainer.log` indicatif draws nothing at all, so there the status
    // goes out as plain lines instead: one per acknowledged update, with the
    // evaluation of the version it was trained on.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if args.json || !tty {
        None
    } else {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} {prefix:.bold} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.set_prefix(format!("{} ({})", args.name, args.specialty));
        b.enable_steady_tick(Duration::from_millis(200));
        Some(b)
    };
    let mut line = StatusLine::default();
    let json = args.json;
    let on_event = move |e: &ClientEvent| {
        if json {
            if let Ok(s) = serde_json::to_string(e) {
                println!("{s}");
            }
            return;
        }
        line.apply(e);
        let note = matches!(
            e,
            ClientEvent::Error { .. }
                | ClientEvent::Reconnect { .. }
                | ClientEvent::Welcome { .. }
                | ClientEvent::NeverReached { .. }
        );
        match &bar {
            Some(b) => {
                if note {
                    b.println(line.note.clone());
                }
                if let ClientEvent::Done { .. } = e {
                    b.finish_with_message(line.render());
                }
                b.set_message(line.render());
            }
            None if note => eprintln!("{}", line.note),
            None if matches!(e, ClientEvent::Ack { .. } | ClientEvent::Done { .. }) => {
                eprintln!("{}", line.render())
            }
            None => {}
        }
    };
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    Ok(connection::run(opts, learner, on_event, stop).await?)
}
