//! `kernal trainer` on the built-in `kernel` language model: which code the
//! member trains on (its specialty's part of the shipped Linux excerpts, or
//! its own tree with `--source`) and with which local settings.

use kernal_client::kernel::{KernelLearner, KernelTexts, DEFAULT_BATCH, DEFAULT_LR, DEFAULT_STEPS};

use super::cli::{TrainerArgs, TrainerCliError};
use kernal_core::data;
use kernal_core::kernel::{KernelSpec, KernelTrainSettings};

/// The learner for a kernel model of `spec`, or why the arguments do not fit.
pub fn learner(args: &TrainerArgs, spec: KernelSpec) -> Result<KernelLearner, TrainerCliError> {
    if args.data.is_some() {
        return Err(TrainerCliError::Shape(format!(
            "model `{}` is a language model of source code: give it code with --source DIR, not --data FILE.csv",
            args.model
        )));
    }
    let texts = if args.source.is_empty() {
        KernelTexts::for_specialty(&args.specialty)
    } else {
        KernelTexts::for_source(&args.source, &args.ext)
    }
    .map_err(|e| TrainerCliError::Data(e.to_string()))?;
    let settings = KernelTrainSettings {
        steps: args.steps.unwrap_or(DEFAULT_STEPS),
        batch: args.batch_size.unwrap_or(DEFAULT_BATCH),
        window: spec.context,
        lr: args.lr.unwrap_or(DEFAULT_LR),
        weight_decay: 0.0,
        seed: data::fnv1a(&args.name),
    };
    if settings.steps == 0 || settings.batch == 0 || !(settings.lr.is_finite() && settings.lr > 0.0)
    {
        return Err(TrainerCliError::Data(
            "--steps and --batch-size must be at least 1 and --lr a positive number".into(),
        ));
    }
    KernelLearner::new(spec, texts, settings).map_err(TrainerCliError::Data)
}
