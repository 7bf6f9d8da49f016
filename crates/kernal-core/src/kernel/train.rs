//! Local training of the kernel model (AdamW on random windows of a text)
//! and its evaluation in bits per byte.

use candle_core::{Device, Tensor};
use candle_nn::Optimizer;
use rand::{Rng, SeedableRng};

use super::model::{KernelError, KernelSpec};

/// Local training settings of the kernel model.
#[derive(Debug, Clone, Copy)]
pub struct KernelTrainSettings {
    /// AdamW steps per global version.
    pub steps: usize,
    /// Windows per step.
    pub batch: usize,
    /// Bytes per window (at most the model's context).
    pub window: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub seed: u64,
}

/// A figure in bits per byte: mean cross-entropy over every predicted byte,
/// divided by ln 2.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BitsPerByte {
    pub bits_per_byte: f64,
    /// Bytes predicted.
    pub bytes: u64,
}

fn batch_tensors(
    text: &[u8],
    starts: &[usize],
    len: usize,
    dev: &Device,
) -> Result<(Tensor, Tensor), KernelError> {
    let mut x = Vec::with_capacity(starts.len() * len);
    let mut y = Vec::with_capacity(starts.len() * len);
    for &s in starts {
        x.extend(text[s..s + len].iter().map(|&b| b as u32));
        y.extend(text[s + 1..s + len + 1].iter().map(|&b| b as u32));
    }
    Ok((
        Tensor::from_vec(x, (starts.len(), len), dev)?,
        Tensor::from_vec(y, starts.len() * len, dev)?,
    ))
}

impl KernelSpec {
    /// Trains from `weights` for `s.steps` AdamW steps on windows of `text`
    /// drawn at random (seeded); returns the weights and the mean loss in
    /// bits per byte.
    pub fn train(
        &self,
        weights: &[f32],
        text: &[u8],
        s: &KernelTrainSettings,
    ) -> Result<(Vec<f32>, f64), KernelError> {
        let window = s.window.min(self.context).max(1);
        if text.len() < window + 1 {
            return Err(KernelError::Input(format!(
                "{} bytes of text; training needs at least {}",
                text.len(),
                window + 1
            )));
        }
        let dev = Device::Cpu;
        let vars = self.vars(weights, &dev)?;
        if s.steps == 0 {
            return Ok((weights.to_vec(), 0.0));
        }
        let params = candle_nn::ParamsAdamW {
            lr: s.lr,
            weight_decay: s.weight_decay,
            ..Default::default()
        };
        let mut opt = candle_nn::AdamW::new(vars.all(), params)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(s.seed);
        let mut loss_sum = 0.0f64;
        for _ in 0..s.steps {
            let starts: Vec<usize> = (0..s.batch.max(1))
                .map(|_| rng.gen_range(0..text.len() - window))
                .collect();
            let (x, y) = batch_tensors(text, &starts, window, &dev)?;
            let logits = self.forward(&vars, &x)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
            opt.backward_step(&loss)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
        }
        let bpb = loss_sum / s.steps as f64 / std::f64::consts::LN_2;
        Ok((vars.flatten()?, bpb))
    }

    /// Bits per byte of `weights` on `text`, over at most `max_windows`
    /// windows of the full context spread evenly over the text (every one
    /// when it holds fewer): deterministic, and bounded in cost.
    pub fn bits_per_byte(
        &self,
        weights: &[f32],
        text: &[u8],
        max_windows: usize,
    ) -> Result<BitsPerByte, KernelError> {
        let dev = Device::Cpu;
        let vars = self.vars(weights, &dev)?;
        self.bits_per_byte_vars(&vars, text, max_windows)
    }

    /// [`bits_per_byte`](Self::bits_per_byte) with the variables already
    /// built (several texts scored with one set of weights).
    pub fn bits_per_byte_vars(
        &self,
        vars: &super::model::KernelVars,
        text: &[u8],
        max_windows: usize,
    ) -> Result<BitsPerByte, KernelError> {
        let dev = &Device::Cpu;
        if text.len() < 2 {
            return Ok(BitsPerByte {
                bits_per_byte: 0.0,
                bytes: 0,
            });
        }
        let len = self.context.min(text.len() - 1);
        let all = (text.len() - 1) / len;
        let n = all.min(max_windows.max(1));
        // Windows tile the text when all fit; otherwise n of them evenly spaced.
        let starts: Vec<usize> = (0..n).map(|i| i * all / n * len).collect();
        let (mut nats, mut count) = (0.0f64, 0u64);
        for chunk in starts.chunks(16) {
            let (x, y) = batch_tensors(text, chunk, len, dev)?;
            let logits = self.forward(vars, &x)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &y)?.to_scalar::<f32>()? as f64;
            let k = (chunk.len() * len) as u64;
            nats += loss * k as f64;
            count += k;
        }
        Ok(BitsPerByte {
            bits_per_byte: nats / count as f64 / std::f64::consts::LN_2,
            bytes: count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::corpus;

    #[test]
    fn training_lowers_bits_per_byte() {
        let spec = KernelSpec {
            d_model: 32,
            layers: 1,
            context: 32,
        };
        let text = corpus::train_text("security").unwrap();
        let held = corpus::heldout_text("security").unwrap();
        let w0 = spec.init_weights(3);
        let before = spec.bits_per_byte(&w0, &held, 8).unwrap();
        assert!((before.bits_per_byte - 8.0).abs() < 0.2, "{before:?}");
        assert_eq!(before.bytes, 8 * 32);
        let s = KernelTrainSettings {
            steps: 60,
            batch: 8,
            window: 32,
            lr: 1e-2,
            weight_decay: 0.0,
            seed: 1,
        };
        let (w, loss) = spec.train(&w0, &text, &s).unwrap();
        assert!(loss.is_finite());
        let after = spec.bits_per_byte(&w, &held, 8).unwrap();
        assert!(after.bits_per_byte < 6.0, "{before:?} -> {after:?}");
        assert_eq!(spec.bits_per_byte(&w, &held, 8).unwrap(), after);
    }
}
