//! The streaming fold: the running weighted sum a round's updates are
//! folded into as they arrive (strategies of [`Intake::RunningSum`]), and the
//! mean it gives at fold time. The one place the sum is added to, merged and
//! divided.
//!
//! [`Intake::RunningSum`]: super::Intake::RunningSum

use std::time::Instant;

use super::reduce::axpy;
use crate::protocol::tensors::TensorError;
use crate::protocol::ModelLayout;

/// Running weighted sum of streamed deltas: memory stays one model's worth
/// however many updates a round folds.
#[derive(Debug, Clone)]
pub struct Accumulator {
    pub sum: Vec<f32>,
    pub weight: f64,
    /// Time spent folding updates into `sum` as they arrived.
    pub seconds: f64,
}

impl Accumulator {
    pub fn new(n: usize) -> Self {
        Accumulator {
            sum: vec![0.0; n],
            weight: 0.0,
            seconds: 0.0,
        }
    }

    /// Adds one update's delta with coefficient `(weight, clip factor)`,
    /// straight from its encoded bytes.
    pub fn add_payload(
        &mut self,
        layout: &ModelLayout,
        coef: (f64, f32),
        payload: &[u8],
    ) -> Result<(), TensorError> {
        let t = Instant::now();
        // A mapped (spooled) payload is read a window at a time, so folding
        // it does not make all of it resident.
        let mut release = crate::mapped::release;
        let window = crate::mapped::window_for(payload, &mut release);
        layout.accumulate_windowed(payload, &mut self.sum, (coef.0 as f32) * coef.1, window)?;
        self.seconds += t.elapsed().as_secs_f64();
        self.weight += coef.0;
        Ok(())
    }

    /// Takes in the sum of an earlier accumulator (a fold that was put back).
    pub fn merge(&mut self, old: &Accumulator) {
        axpy(&mut self.sum, 1.0, &old.sum);
        self.weight += old.weight;
    }

    /// The mean of this sum as one contribution (None: nothing was added).
    pub fn mean(&self) -> Option<Vec<f32>> {
        (self.weight > 0.0).then(|| {
            let inv = (1.0 / self.weight) as f32;
            self.sum.iter().map(|v| v * inv).collect()
        })
    }
}

/// The weighted mean of a round: the running sum (if any) plus deltas
/// kept whole with their coefficients (kept ones exist when the strategy
/// changed since they arrived); zeros of length `n` when nothing weighs.
pub fn running_mean(acc: Option<Accumulator>, kept: &[((f64, f32), &[f32])], n: usize) -> Vec<f32> {
    // The sum becomes the mean in its own buffer (a 400 MB model's fold
    // must not copy it).
    let mut total = acc.as_ref().map(|a| a.weight).unwrap_or(0.0);
    let mut sum = acc.map(|a| a.sum).unwrap_or_else(|| vec![0.0; n]);
    for (coef, d) in kept {
        axpy(&mut sum, (coef.0 as f32) * coef.1, d);
        total += coef.0;
    }
    if total > 0.0 {
        let inv = (1.0 / total) as f32;
        sum.iter_mut().for_each(|v| *v *= inv);
    }
    sum
}
