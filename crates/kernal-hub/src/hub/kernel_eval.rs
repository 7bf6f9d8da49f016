//! The hub's evaluation of the built-in `kernel` model: bits per byte of a
//! version on each specialty's held-out Linux code and on code of subsystems
//! no trainer has. Runs on a blocking thread, never on the hub actor, and
//! reads a fixed number of bytes per part so its cost per version is bounded
//! whatever the corpus.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::kernel::{corpus, KernelSpec};
use crate::protocol::ModelLayout;

use super::version_metrics::{KernelCompletion, KernelEvalFigures};

/// The prompt each scored version completes, for the dashboard: the start
/// of a networking function, so the team sees the model write kernel code.
pub const COMPLETION_PROMPT: &str = "static int tcp_";
/// Bytes of that completion: each is one forward pass over at most the
/// model's context (about 0.1 s for all of them with the built-in sizes).
pub const COMPLETION_BYTES: usize = 96;
/// Sampled, not greedy: a young model's greedy text is one byte repeated
/// (`* * * *`), its samples show what it learned. A fixed seed keeps the
/// same weights giving the same text.
pub const COMPLETION_TEMPERATURE: f64 = 0.7;

/// Windows of the model's context scored per part (specialty or unseen):
/// 32 windows of 64 bytes is 2 KiB per part, 8 KiB per version: measured
/// at 0.5-1 s on a loaded two-core machine for the built-in sizes.
pub const WINDOWS_PER_PART: usize = 32;

/// A held-out part's name and text.
type Part = (String, Vec<u8>);

/// The held-out texts, decompressed once per process.
fn parts() -> Option<&'static [Part]> {
    static CELL: OnceLock<Option<Vec<Part>>> = OnceLock::new();
    CELL.get_or_init(|| {
        let mut out = Vec::new();
        for (s, _) in corpus::SPECIALTIES {
            out.push((s.to_string(), corpus::heldout_text(s).ok()?));
        }
        out.push((
            corpus::UNSEEN.to_string(),
            corpus::heldout_text(corpus::UNSEEN).ok()?,
        ));
        Some(out)
    })
    .as_deref()
}

/// The figures of `weights` of a kernel model, or None when the layout is
/// not one (or the evaluation failed, which it logs).
pub fn evaluate_kernel(layout: &ModelLayout, weights: &[f32]) -> Option<KernelEvalFigures> {
    let spec = KernelSpec::from_layout(layout)?;
    let parts = parts()?;
    let vars = match spec.vars(weights, &candle_core::Device::Cpu) {
        Ok(v) => v,
        Err(e) => {
            log::warn!("kernel evaluation: {e}");
            return None;
        }
    };
    let mut per_specialty = BTreeMap::new();
    let (mut sum, mut bytes, mut unseen) = (0.0, 0u64, 0.0);
    for (name, text) in parts {
        let e = match spec.bits_per_byte_vars(&vars, text, WINDOWS_PER_PART) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("kernel evaluation on {name}: {e}");
                return None;
            }
        };
        bytes += e.bytes;
        if name == corpus::UNSEEN {
            unseen = e.bits_per_byte;
        } else {
            sum += e.bits_per_byte;
            per_specialty.insert(name.clone(), e.bits_per_byte);
        }
    }
    // One completion of bounded length per scored version, on the same
    // blocking thread: the dashboard reads it with the figures.
    let completion = spec
        .complete(
            weights,
            COMPLETION_PROMPT.as_bytes(),
            COMPLETION_BYTES,
            COMPLETION_TEMPERATURE,
            1,
        )
        .map_err(|e| log::warn!("kernel completion: {e}"))
        .ok()
        .map(|b| KernelCompletion {
            prompt: COMPLETION_PROMPT.to_string(),
            text: String::from_utf8_lossy(&b).into_owned(),
        });
    Some(KernelEvalFigures {
        bits_per_byte: sum / per_specialty.len().max(1) as f64,
        per_specialty,
        unseen_bits_per_byte: unseen,
        bytes,
        dataset: "kernel-heldout",
        completion,
    })
}

/// Checks the bits-per-byte figures of a trainer's `eval` message
/// (`specialty_bits_per_byte`, `global_bits_per_byte`): finite, 0 to 64 (a
/// byte never costs more than a few dozen bits, even to a bad model).
pub fn validate_bits_per_byte(figures: [Option<f64>; 2]) -> Result<(), crate::protocol::Refusal> {
    let names = ["specialty_bits_per_byte", "global_bits_per_byte"];
    for (name, v) in names.iter().zip(figures) {
        if let Some(x) = v {
            if !(x.is_finite() && (0.0..=64.0).contains(&x)) {
                return Err(crate::protocol::Refusal::new(
                    crate::protocol::ErrorCode::BadEval,
                    format!("{name} must be a number from 0 to 64, not {x}"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_each_part_and_only_kernel_layouts() {
        let spec = crate::kernel::DEFAULT_SPEC;
        let f = evaluate_kernel(&spec.layout(), &spec.init_weights(42)).unwrap();
        assert_eq!(f.per_specialty.len(), 3);
        assert!((f.bits_per_byte - 8.0).abs() < 0.3, "{f:?}");
        assert_eq!(f.bytes, 4 * (WINDOWS_PER_PART * spec.context) as u64);
        let c = f.completion.unwrap();
        assert_eq!(c.prompt, COMPLETION_PROMPT);
        assert!(!c.text.is_empty() && c.text.len() <= 4 * COMPLETION_BYTES);
        let mlp = crate::model::MlpSpec {
            inputs: 4,
            hidden: 4,
            classes: 2,
        };
        assert!(evaluate_kernel(&mlp.layout(), &mlp.init_weights(1)).is_none());
    }
}
