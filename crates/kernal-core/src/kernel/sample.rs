//! Completions: the kernel model continuing a prompt, greedy or sampled.

use candle_core::{Device, Tensor, D};
use rand::{Rng, SeedableRng};

use super::model::{KernelError, KernelSpec};

/// Longest completion [`KernelSpec::complete`] produces, whatever is asked:
/// each byte is one forward pass.
pub const MAX_COMPLETION_BYTES: usize = 4096;

impl KernelSpec {
    /// Continues `prompt` by up to `max_bytes` bytes (capped at
    /// [`MAX_COMPLETION_BYTES`]). Temperature 0 is greedy (deterministic);
    /// above it, bytes are drawn from the softened distribution with `seed`.
    /// An empty prompt starts from a newline.
    pub fn complete(
        &self,
        weights: &[f32],
        prompt: &[u8],
        max_bytes: usize,
        temperature: f64,
        seed: u64,
    ) -> Result<Vec<u8>, KernelError> {
        if !temperature.is_finite() || temperature < 0.0 {
            return Err(KernelError::Input(format!(
                "temperature must be 0 or more (got {temperature})"
            )));
        }
        let dev = Device::Cpu;
        let vars = self.vars(weights, &dev)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut text: Vec<u8> = if prompt.is_empty() {
            b"\n".to_vec()
        } else {
            prompt.to_vec()
        };
        let start = text.len();
        for _ in 0..max_bytes.min(MAX_COMPLETION_BYTES) {
            let ctx = &text[text.len().saturating_sub(self.context)..];
            let ids: Vec<u32> = ctx.iter().map(|&b| b as u32).collect();
            let x = Tensor::from_vec(ids, (1, ctx.len()), &dev)?;
            let logits = self.forward(&vars, &x)?.get(ctx.len() - 1)?;
            let next = if temperature == 0.0 {
                logits.argmax(D::Minus1)?.to_scalar::<u32>()? as u8
            } else {
                let p = candle_nn::ops::softmax(&(logits / temperature)?, D::Minus1)?
                    .to_vec1::<f32>()?;
                let r: f32 = rng.gen();
                let mut acc = 0.0;
                let mut pick = 255u8;
                for (i, q) in p.iter().enumerate() {
                    acc += q;
                    if r < acc {
                        pick = i as u8;
                        break;
                    }
                }
                pick
            };
            text.push(next);
        }
        Ok(text[start..].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_is_bounded_and_greedy_is_deterministic() {
        let spec = KernelSpec {
            d_model: 16,
            layers: 1,
            context: 8,
        };
        let w = spec.init_weights(5);
        let a = spec.complete(&w, b"static int tcp_", 20, 0.0, 1).unwrap();
        assert_eq!(a.len(), 20);
        assert_eq!(
            a,
            spec.complete(&w, b"static int tcp_", 20, 0.0, 2).unwrap()
        );
        let s = spec.complete(&w, b"", 10, 1.0, 3).unwrap();
        assert_eq!(s.len(), 10);
        assert!(spec.complete(&w, b"x", 1, -1.0, 3).is_err());
        assert_eq!(
            spec.complete(&w, b"x", 1 << 30, 0.0, 3)
                .map(|v| v.len() <= MAX_COMPLETION_BYTES)
                .ok(),
            Some(true)
        );
    }
}
