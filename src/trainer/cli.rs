//! `kernal trainer NAME SPECIALTY TOKEN`: the reference trainer as a command,
//! with a live status line or JSON events on stdout.

use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::data;
use crate::model::{MlpSpec, TrainSettings};
use crate::protocol::ModelLayout;
use kernal_client::connection::{self, ClientEvent, ClientOptions, Compression};
use kernal_client::MlpLearner;

#[derive(Debug, Clone)]
pub struct TrainerArgs {
    pub name: String,
    pub specialty: String,
    pub token: String,
    /// Extra trust for a `wss://` hub (PEM).
    pub ca: Option<PathBuf>,
    pub hub: String,
    pub model: String,
    pub data: Option<PathBuf>,
    pub local_epochs: usize,
    pub lr: f64,
    pub batch_size: usize,
    pub max_versions: Option<u64>,
    pub json: bool,
    pub compression: Compression,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainerCliError {
    #[error("{0}")]
    Data(String),
    #[error("{0}")]
    Shape(String),
    #[error(transparent)]
    Client(#[from] connection::ClientError),
    #[error("{0}")]
    Other(String),
}

impl TrainerCliError {
    /// 2 for problems with what the user gave (data, shapes, refusal), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            TrainerCliError::Data(_) | TrainerCliError::Shape(_) => 2,
            TrainerCliError::Client(connection::ClientError::Refused { .. }) => 2,
            _ => 1,
        }
    }
}

/// Asks the hub for the model's tensors, retrying while it is not up yet.
async fn fetch_layout(
    hub: &str,
    model: &str,
    tls: &std::sync::Arc<rustls::ClientConfig>,
) -> Result<ModelLayout, TrainerCliError> {
    let url = format!("{}/v1/models/{}", connection::http_url(hub), model);
    let http = kernal_client::tls::http_client(tls, Some(Duration::from_secs(10)))
        .map_err(TrainerCliError::Other)?;
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

pub async fn run(args: TrainerArgs, cfg: &Config) -> Result<connection::Summary, TrainerCliError> {
    let tls =
        kernal_client::tls::client_config(args.ca.as_deref()).map_err(TrainerCliError::Data)?;
    let layout = fetch_layout(&args.hub, &args.model, &tls).await?;
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
        lr: args.lr,
        batch_size: args.batch_size,
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
        None => MlpLearner::for_digits(spec, &args.specialty, &cfg.specialties, settings)
            .map_err(TrainerCliError::Data)?,
    };
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
            ClientEvent::Error { .. } | ClientEvent::Reconnect { .. } | ClientEvent::Welcome { .. }
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

/// The human status line: version, local loss, own-specialty and global accuracy.
#[derive(Default)]
struct StatusLine {
    version: u64,
    loss: Option<f64>,
    own: Option<f64>,
    global: Option<f64>,
    hub: Option<f64>,
    acked: u64,
    refused: u64,
    note: String,
}

impl StatusLine {
    fn apply(&mut self, e: &ClientEvent) {
        match e {
            ClientEvent::Welcome {
                version,
                registered,
                model,
                ..
            } => {
                self.version = *version;
                self.note = format!(
                    "joined model {model} at version {version}{}",
                    if *registered { " (registered)" } else { "" }
                );
            }
            ClientEvent::Version {
                version,
                hub_accuracy,
                ..
            } => {
                self.version = *version;
                self.hub = hub_accuracy.or(self.hub);
            }
            ClientEvent::Evaluation {
                specialty_accuracy,
                global_accuracy,
                ..
            } => {
                self.own = *specialty_accuracy;
                self.global = *global_accuracy;
            }
            ClientEvent::Trained { loss, .. } => self.loss = Some(*loss),
            ClientEvent::Ack { .. } => self.acked += 1,
            ClientEvent::Error { code, message, .. } => {
                self.refused += 1;
                self.note = format!("error {code}: {message}");
            }
            ClientEvent::Reconnect {
                attempt,
                in_secs,
                reason,
            } => {
                self.note =
                    format!("hub unavailable ({reason}); reconnect #{attempt} in {in_secs:.1}s");
            }
            ClientEvent::Normalisation {
                state,
                features,
                trainers,
            } => {
                self.note = match state.as_str() {
                    "pooling" => format!(
                        "sent feature statistics; waiting for the hub to pool them ({trainers} trainer(s) so far)"
                    ),
                    "frozen" => format!(
                        "inputs normalised with the model's statistics ({features} features, {trainers} trainer(s))"
                    ),
                    _ => "the model has no input normalisation".into(),
                };
            }
            ClientEvent::Done { .. } => {}
        }
    }

    fn render(&self) -> String {
        let pct = |v: Option<f64>| {
            v.map(|x| format!("{:.1}%", x * 100.0))
                .unwrap_or_else(|| "-".into())
        };
        format!(
            "version {} | local loss {} | own specialty {} | all digits {} | hub eval {} | acked {}",
            self.version,
            self.loss.map(|l| format!("{l:.3}")).unwrap_or_else(|| "-".into()),
            pct(self.own),
            pct(self.global),
            pct(self.hub),
            self.acked
        )
    }
}
