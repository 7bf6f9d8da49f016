//! Per-tensor clipping: each tensor of a member's delta is scaled down to
//! `tensor_clip_multiplier` times the round's (lower) median norm of that
//! tensor over its members.
//!
//! Why: a whole-delta norm bound lets a member spend its entire budget on
//! one tensor. The label-rotation attack of the `poisoning` scenario puts
//! all of it into the output layer, where the honest specialists' updates
//! (class-disjoint, so they largely cancel in the mean) leave the smallest
//! consensus; clipped as a whole it moved the output layer two to three
//! times as far as any honest member and cost 15-80 points of accuracy.
//! Bounded tensor by tensor (layer-wise clipping, as in per-layer
//! differential-privacy clipping), a member moves each tensor no more than
//! a typical member does. The reference is the round's own members, one
//! norm per trainer, and the lower median, so one member of three cannot
//! set it; an honest member is rarely clipped, and then only a little.

/// The bound of every tensor for a round whose members' per-tensor norms
/// are `norms[member][tensor]`: `multiplier` times the lower median of each
/// tensor's norms. None when off (`multiplier` 0), with fewer than two
/// members (a member is its own median) or one tensor (the whole-delta
/// bound already is a per-tensor bound).
pub fn tensor_bounds(norms: &[Vec<f64>], multiplier: f64) -> Option<Vec<f64>> {
    let tensors = norms.first()?.len();
    if multiplier <= 0.0 || norms.len() < 2 || tensors < 2 {
        return None;
    }
    let bounds = (0..tensors)
        .map(|t| {
            let col: Vec<f64> = norms
                .iter()
                .map(|m| m.get(t).copied().unwrap_or(0.0))
                .collect();
            super::robust::lower_median(&col).unwrap_or(0.0) * multiplier
        })
        .collect();
    Some(bounds)
}

/// L2 norm of each tensor of `delta` (`ranges` are the tensors' spans).
pub fn tensor_norms(delta: &[f32], ranges: &[std::ops::Range<usize>]) -> Vec<f64> {
    ranges
        .iter()
        .map(|r| super::l2_norm(delta.get(r.clone()).unwrap_or(&[])))
        .collect()
}

/// Scales each tensor of `delta` whose norm (`norms`) is above its bound
/// down to it; returns how many tensors were clipped.
pub fn clip_tensors(
    delta: &mut [f32],
    ranges: &[std::ops::Range<usize>],
    norms: &[f64],
    bounds: &[f64],
) -> usize {
    let mut clipped = 0;
    for ((r, n), b) in ranges.iter().zip(norms).zip(bounds) {
        if *n > *b && *n > 0.0 {
            let f = (*b / *n) as f32;
            if let Some(t) = delta.get_mut(r.clone()) {
                t.iter_mut().for_each(|x| *x *= f);
                clipped += 1;
            }
        }
    }
    clipped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_that_spends_its_norm_on_one_tensor_is_cut_to_a_typical_one() {
        let ranges = [0..2, 2..4];
        // Two honest members spread their step over both tensors; the liar
        // (same total norm as the larger honest one) puts all of it on the
        // second.
        let honest_a = [0.0f32, 0.5, 0.3, 0.4];
        let honest_b = [0.0f32, 0.5, 0.6, 0.0];
        let mut liar = [0.0f32, 0.0, 0.0, (0.5f64.powi(2) * 2.0).sqrt() as f32];
        let norms: Vec<Vec<f64>> = [&honest_a[..], &honest_b, &liar]
            .iter()
            .map(|d| tensor_norms(d, &ranges))
            .collect();
        let bounds = tensor_bounds(&norms, 1.0).unwrap();
        // Lower medians: first tensor {0.5, 0.5, 0} -> 0.5; second {0.5, 0.6, 0.707} -> 0.6.
        assert!(
            (bounds[0] - 0.5).abs() < 1e-9 && (bounds[1] - 0.6).abs() < 1e-6,
            "{bounds:?}"
        );
        let mut a = honest_a;
        assert_eq!(clip_tensors(&mut a, &ranges, &norms[0], &bounds), 0);
        assert_eq!(a, honest_a);
        assert_eq!(clip_tensors(&mut liar, &ranges, &norms[2], &bounds), 1);
        let n = tensor_norms(&liar, &ranges);
        assert!((n[1] - 0.6).abs() < 1e-6, "{n:?}");
        // Off, one member, or one tensor: no bound.
        assert_eq!(tensor_bounds(&norms, 0.0), None);
        assert_eq!(tensor_bounds(&norms[..1], 1.0), None);
        assert_eq!(tensor_bounds(&[vec![1.0], vec![2.0]], 1.0), None);
        let half = tensor_bounds(&norms, 0.5).unwrap();
        assert!((half[1] - 0.3).abs() < 1e-6);
    }
}
