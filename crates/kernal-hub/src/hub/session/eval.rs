//! A trainer's `eval` of a version and its feature statistics (`stats`):
//! checked here, recorded by the hub.

use actix::prelude::*;

use super::actor::TrainerSession;
use super::phase::Phase;
use crate::hub::hub_actor;
use crate::protocol::{ClientMessage, ErrorCode, FeatureStats, Refusal, ServerMessage};

/// Checks what an `eval` reports (the hub checks the version exists).
pub fn validate_eval(
    specialty_accuracy: Option<f64>,
    global_accuracy: Option<f64>,
    loss: Option<f64>,
) -> Result<(), Refusal> {
    for (name, v) in [
        ("specialty_accuracy", specialty_accuracy),
        ("global_accuracy", global_accuracy),
    ] {
        if let Some(x) = v {
            if !(0.0..=1.0).contains(&x) {
                return Err(Refusal::new(
                    ErrorCode::BadEval,
                    format!("{name} must be between 0 and 1, not {x}"),
                ));
            }
        }
    }
    if let Some(l) = loss {
        if !(l.is_finite() && l >= 0.0) {
            return Err(Refusal::new(
                ErrorCode::BadEval,
                format!("loss must be a finite number >= 0, not {l}"),
            ));
        }
    }
    Ok(())
}

impl TrainerSession {
    /// A welcomed trainer's feature statistics, pooled by the hub.
    pub(super) fn on_stats(&mut self, stats: FeatureStats, ctx: &mut Context<Self>) {
        let Phase::Ready(r) = &self.phase else {
            return;
        };
        let submit = hub_actor::SubmitStats {
            trainer: r.name.clone(),
            model: r.model.clone(),
            stats,
        };
        self.ask_hub(ctx, submit, |act, (trainers, frozen)| {
            act.send(&ServerMessage::StatsReceived { trainers, frozen })
        });
    }

    /// A welcomed trainer's `eval` of a version.
    pub(super) fn on_eval(&mut self, msg: ClientMessage, ctx: &mut Context<Self>) {
        let (
            Phase::Ready(r),
            ClientMessage::Eval {
                version,
                specialty_accuracy,
                global_accuracy,
                loss,
                num_examples,
                specialty_bits_per_byte,
                global_bits_per_byte,
            },
        ) = (&self.phase, msg)
        else {
            return;
        };
        let bpb = [specialty_bits_per_byte, global_bits_per_byte];
        if let Err(Refusal { code, message }) =
            validate_eval(specialty_accuracy, global_accuracy, loss)
                .and_then(|()| crate::hub::kernel_eval::validate_bits_per_byte(bpb))
        {
            return self.error(ctx, code, message, None);
        }
        let eval = hub_actor::SubmitEval {
            trainer: r.name.clone(),
            specialty: r.specialty.clone(),
            model: r.model.clone(),
            version,
            specialty_accuracy,
            global_accuracy,
            loss,
            num_examples,
        };
        self.ask_hub(ctx, eval, |_, ()| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eval_figures_are_checked() {
        assert!(validate_eval(Some(0.5), Some(1.0), Some(0.3)).is_ok());
        assert!(validate_eval(None, None, None).is_ok());
        assert_eq!(
            validate_eval(Some(5.0), None, None).unwrap_err().code,
            ErrorCode::BadEval
        );
        assert!(validate_eval(None, Some(-0.1), None).is_err());
        assert!(validate_eval(None, None, Some(-1.0)).is_err());
    }
}
