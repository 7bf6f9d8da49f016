//! The reductions strategies are made of, as plain functions over flat
//! `f32` buffers: weights, norms, clipping, means and coordinate-wise
//! order statistics.

use super::settings::AggregationSettings;

/// One buffered update as the strategies see it.
#[derive(Debug, Clone)]
pub struct Contribution<'a> {
    pub delta: &'a [f32],
    pub num_examples: u64,
    pub staleness: u64,
    /// Clip factor applied to the delta (1: as sent).
    pub scale: f32,
}

/// Weight of an update: its examples, discounted polynomially by staleness
/// (FedBuff's `1/(1+s)^a`), so old knowledge counts but less.
pub fn contribution_weight(num_examples: u64, staleness: u64, exponent: f64) -> f64 {
    num_examples as f64 / (1.0 + staleness as f64).powf(exponent)
}

pub fn l2_norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt()
}

/// Scale factor that brings `v` down to `clip_norm` (1.0 when within it or
/// when clipping is off).
pub fn clip_factor(v: &[f32], clip_norm: f32) -> f32 {
    scale_to(l2_norm(v), (clip_norm > 0.0).then_some(clip_norm as f64))
}

/// The factor that scales a delta of norm `norm` down to `bound` (1.0 when
/// within it or without a bound): the one clipping rule, whether the bound
/// is the fixed `clip_norm` or the adaptive one of `robust::Bounds`.
pub fn scale_to(norm: f64, bound: Option<f64>) -> f32 {
    match bound {
        Some(b) if norm > b && norm > 0.0 => (b / norm) as f32,
        _ => 1.0,
    }
}

/// `acc += a * x`: the inner loop of every mean, written so it vectorises.
#[inline]
pub fn axpy(acc: &mut [f32], a: f32, x: &[f32]) {
    for (o, v) in acc.iter_mut().zip(x.iter()) {
        *o += a * *v;
    }
}

/// Weighted mean of the (scaled) deltas.
pub fn weighted_mean(contribs: &[Contribution<'_>], s: &AggregationSettings) -> Vec<f32> {
    let n = contribs.first().map(|c| c.delta.len()).unwrap_or(0);
    let mut acc = vec![0.0f32; n];
    let weights: Vec<f64> = contribs
        .iter()
        .map(|c| contribution_weight(c.num_examples, c.staleness, s.staleness_exponent))
        .collect();
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return acc;
    }
    for (c, w) in contribs.iter().zip(weights) {
        axpy(&mut acc, (w / total) as f32 * c.scale, c.delta);
    }
    acc
}

/// Coordinate-wise median (unweighted: weights are what a Byzantine trainer
/// would lie about). Even counts take the mean of the two middle values.
pub fn coordinate_median(contribs: &[Contribution<'_>]) -> Vec<f32> {
    coordinate_reduce(contribs, |col| {
        let k = col.len();
        col.sort_unstable_by(|a, b| a.total_cmp(b));
        if k % 2 == 1 {
            col[k / 2]
        } else {
            0.5 * (col[k / 2 - 1] + col[k / 2])
        }
    })
}

/// Coordinate-wise trimmed mean: drops `floor(trim_fraction * k)` values at
/// each end, averages the rest.
pub fn trimmed_mean(contribs: &[Contribution<'_>], trim_fraction: f32) -> Vec<f32> {
    let trim = trim_count(contribs.len(), trim_fraction);
    coordinate_reduce(contribs, move |col| {
        col.sort_unstable_by(|a, b| a.total_cmp(b));
        let kept = &col[trim..col.len() - trim];
        kept.iter().sum::<f32>() / kept.len() as f32
    })
}

/// How many values `trimmed_mean` drops at each end of `k`: the share
/// `trim_fraction`, but at least one from 3 members on (a trimmed mean that
/// trims nothing is a mean, and one liar of three would own it), and never
/// so many that nothing is left.
pub fn trim_count(k: usize, trim_fraction: f32) -> usize {
    let trim = ((trim_fraction as f64) * k as f64).floor() as usize;
    let trim = if k >= 3 { trim.max(1) } else { trim };
    trim.min(k.saturating_sub(1) / 2)
}

fn coordinate_reduce(
    contribs: &[Contribution<'_>],
    mut f: impl FnMut(&mut Vec<f32>) -> f32,
) -> Vec<f32> {
    let n = contribs.first().map(|c| c.delta.len()).unwrap_or(0);
    let mut out = vec![0.0f32; n];
    let mut col = Vec::with_capacity(contribs.len());
    for (i, o) in out.iter_mut().enumerate() {
        col.clear();
        col.extend(contribs.iter().map(|c| c.delta[i] * c.scale));
        *o = f(&mut col);
    }
    out
}
