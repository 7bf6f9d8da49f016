//! The learner of the built-in `kernel` model: a byte-level transformer
//! trained with AdamW on random windows of the member's code (its
//! specialty's part of the shipped Linux excerpts, or its own tree with
//! `--source`), reporting bits per byte on its own held-out code and on all
//! the held-out code it knows.

use kernal_core::kernel::{corpus, KernelSpec, KernelTrainSettings};
use kernal_core::protocol::ModelLayout;

use crate::{EvalReport, Learner, Trained};

/// Windows of the model's context a trainer scores each held-out text on
/// per version: bounded work between two rounds of training.
pub const EVAL_WINDOWS: usize = 32;

/// Local training defaults of the kernel model, chosen by measurement
/// (README "The kernel AI"): 40 AdamW steps of 16 windows per version
/// (about 2 s on one free core for the built-in sizes) keep versions a few
/// seconds apart with three trainers on two cores.
pub const DEFAULT_STEPS: usize = 40;
pub const DEFAULT_BATCH: usize = 16;
pub const DEFAULT_LR: f64 = 5e-3;

/// What a kernel learner trains and evaluates on.
#[derive(Debug, Clone)]
pub struct KernelTexts {
    pub train: Vec<u8>,
    /// The member's own held-out code (its specialty's, or its tree's).
    pub own_heldout: Vec<u8>,
    /// All the held-out code it knows: the three specialties' together (for
    /// an own tree, the same as `own_heldout`).
    pub all_heldout: Vec<u8>,
}

impl KernelTexts {
    /// The shipped corpus seen from a specialty.
    pub fn for_specialty(specialty: &str) -> Result<Self, corpus::CorpusError> {
        let all = corpus::heldout_all()?;
        let own = if corpus::is_builtin_specialty(specialty) {
            corpus::heldout_text(specialty)?
        } else {
            all.clone()
        };
        Ok(KernelTexts {
            train: corpus::train_text(specialty)?,
            own_heldout: own,
            all_heldout: all,
        })
    }

    /// A member's own tree (`--source`), split by file.
    pub fn for_source(
        roots: &[std::path::PathBuf],
        exts: &[String],
    ) -> Result<Self, corpus::CorpusError> {
        let files = corpus::source_files(roots, exts)?;
        let (train, held) = corpus::split_source(&files);
        Ok(KernelTexts {
            train,
            own_heldout: held.clone(),
            all_heldout: held,
        })
    }
}

pub struct KernelLearner {
    pub spec: KernelSpec,
    pub texts: KernelTexts,
    pub settings: KernelTrainSettings,
}

impl KernelLearner {
    /// Refuses texts too short to train on with the model's context.
    pub fn new(
        spec: KernelSpec,
        texts: KernelTexts,
        settings: KernelTrainSettings,
    ) -> Result<Self, String> {
        let need = spec.context + 1;
        if texts.train.len() < need {
            return Err(format!(
                "{} bytes of training code; the kernel model needs at least {need}",
                texts.train.len()
            ));
        }
        Ok(KernelLearner {
            spec,
            texts,
            settings,
        })
    }
}

impl Learner for KernelLearner {
    fn check_layout(&self, layout: &ModelLayout) -> Result<(), String> {
        match KernelSpec::from_layout(layout) {
            Some(s) if s == self.spec => Ok(()),
            Some(s) => Err(format!(
                "the hub's kernel model is {s:?}, this trainer was built for {:?}",
                self.spec
            )),
            None => Err("the hub's model is not a kernel language model".into()),
        }
    }

    fn train(&mut self, global: &[f32], version: u64) -> Result<Trained, String> {
        let s = KernelTrainSettings {
            seed: self.settings.seed ^ version.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ..self.settings
        };
        let (weights, bpb) = self
            .spec
            .train(global, &self.texts.train, &s)
            .map_err(|e| e.to_string())?;
        Ok(Trained {
            weights,
            // Bytes predicted this round: trainers doing equal work weigh the same.
            num_examples: (s.steps * s.batch * s.window.min(self.spec.context)) as u64,
            loss: bpb,
        })
    }

    fn evaluate(&mut self, global: &[f32], _version: u64) -> Result<Option<EvalReport>, String> {
        let own = self
            .spec
            .bits_per_byte(global, &self.texts.own_heldout, EVAL_WINDOWS)
            .map_err(|e| e.to_string())?;
        let all = if self.texts.all_heldout == self.texts.own_heldout {
            own
        } else {
            self.spec
                .bits_per_byte(global, &self.texts.all_heldout, EVAL_WINDOWS)
                .map_err(|e| e.to_string())?
        };
        Ok(Some(EvalReport {
            // Mean cross-entropy in nats, as every learner reports its loss.
            loss: Some(all.bits_per_byte * std::f64::consts::LN_2),
            num_examples: all.bytes,
            specialty_bits_per_byte: Some(own.bits_per_byte),
            global_bits_per_byte: Some(all.bits_per_byte),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learner_trains_and_reports_bits_per_byte() {
        let spec = KernelSpec {
            d_model: 16,
            layers: 1,
            context: 16,
        };
        let texts = KernelTexts::for_specialty("graphics").unwrap();
        assert_ne!(texts.own_heldout, texts.all_heldout);
        let settings = KernelTrainSettings {
            steps: 2,
            batch: 2,
            window: 16,
            lr: 1e-3,
            weight_decay: 0.0,
            seed: 1,
        };
        let mut l = KernelLearner::new(spec, texts, settings).unwrap();
        assert!(l.check_layout(&spec.layout()).is_ok());
        assert!(l
            .check_layout(&KernelSpec { context: 8, ..spec }.layout())
            .is_err());
        let w = spec.init_weights(1);
        let t = l.train(&w, 0).unwrap();
        assert_eq!(t.weights.len(), w.len());
        assert_eq!(t.num_examples, 64);
        let r = l.evaluate(&w, 0).unwrap().unwrap();
        assert!(r.specialty_bits_per_byte.unwrap() > 7.0);
        assert!(r.global_bits_per_byte.unwrap() > 7.0);
    }
}
