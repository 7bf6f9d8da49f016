//! Scoring each new version of a `kernel` model in bits per byte on the
//! shipped held-out code (see `hub::kernel_eval`), off the actor and after
//! the commit, like an evaluation set: the figures land in the version's
//! `metrics.eval` and in the model's last metrics.

use actix::prelude::*;

use super::core::Hub;
use crate::hub::persister;

impl Hub {
    /// Evaluates the model's current version on a blocking thread. One
    /// evaluation per model at a time: a version committed while one runs
    /// is not scored (its `eval` stays null), so a fast model cannot queue
    /// evaluations without bound.
    pub(super) fn evaluate_kernel_later(
        &mut self,
        model: &str,
        version: u64,
        ctx: &mut Context<Self>,
    ) {
        let Some(m) = self.models.get(model) else {
            return;
        };
        if !self.kernel_evaluating.insert(model.to_string()) {
            return;
        }
        let layout = m.layout.clone();
        let weights = m.weights.clone();
        let persister = self.persister.clone();
        let name = model.to_string();
        let fut = async move {
            let figures = actix_web::rt::task::spawn_blocking(move || {
                crate::hub::kernel_eval::evaluate_kernel(&layout, &weights)
            })
            .await
            .ok()
            .flatten();
            let json = figures
                .as_ref()
                .map(|f| serde_json::to_value(f).unwrap_or_default());
            if let Some(json) = &json {
                let stored = persister
                    .send(persister::RecordVersionEval {
                        model: name.clone(),
                        version,
                        eval: json.clone(),
                    })
                    .await;
                if !matches!(stored, Ok(Ok(()))) {
                    log::warn!("model {name}: could not store the evaluation of version {version}");
                }
            }
            (figures, json, name)
        };
        ctx.spawn(fut.into_actor(self).map(move |(figures, json, name), act, _| {
            act.kernel_evaluating.remove(&name);
            let (Some(f), Some(json)) = (figures, json) else {
                return;
            };
            act.record_current_eval(&name, version, json);
            log::info!(
                "model {name}: version {version} scores {:.3} bits per byte on held-out kernel code ({}; unseen subsystems {:.3})",
                f.bits_per_byte,
                f.per_specialty
                    .iter()
                    .map(|(s, b)| format!("{s} {b:.3}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                f.unseen_bits_per_byte
            );
        }));
    }
}
