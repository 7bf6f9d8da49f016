//! The trainer's human status line: version, local loss, and the global
//! model's figures on the trainer's own data and on all of it (accuracy for
//! a classifier, bits per byte for the kernel language model).

use kernal_client::connection::ClientEvent;

/// The human status line.
#[derive(Default)]
pub struct StatusLine {
    version: u64,
    loss: Option<f64>,
    own: Option<f64>,
    global: Option<f64>,
    hub: Option<f64>,
    /// Bits per byte of the global model on own and on all held-out code
    /// (a language model: then the line shows these instead of accuracy).
    own_bpb: Option<f64>,
    all_bpb: Option<f64>,
    acked: u64,
    refused: u64,
    pub note: String,
}

impl StatusLine {
    pub fn apply(&mut self, e: &ClientEvent) {
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
                specialty_bits_per_byte,
                global_bits_per_byte,
                ..
            } => {
                self.own = *specialty_accuracy;
                self.global = *global_accuracy;
                self.own_bpb = *specialty_bits_per_byte;
                self.all_bpb = *global_bits_per_byte;
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
            ClientEvent::NeverReached { message, .. } => self.note = message.clone(),
            ClientEvent::Reported {
                version,
                accuracy,
                loss,
                bits_per_byte,
                ..
            } => {
                self.version = *version;
                self.hub = accuracy.or(self.hub);
                self.loss = *loss;
                self.all_bpb = bits_per_byte.or(self.all_bpb);
            }
            ClientEvent::Done { .. } => {}
        }
    }

    pub fn render(&self) -> String {
        let pct = |v: Option<f64>| {
            v.map(|x| format!("{:.1}%", x * 100.0))
                .unwrap_or_else(|| "-".into())
        };
        if self.own_bpb.is_some() || self.all_bpb.is_some() {
            let bpb = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
            return format!(
                "version {} | local loss {} bits/byte | own subsystem {} bits/byte | all subsystems {} bits/byte | acked {}",
                self.version,
                bpb(self.loss),
                bpb(self.own_bpb),
                bpb(self.all_bpb),
                self.acked
            );
        }
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
