//! Per-tensor clipping of a round's members at fold time
//! (`aggregation::tensor_clip` decides the bounds). It needs every member's
//! delta at once: streamed updates are read back from their stored payloads
//! and kept, so a fold of k members holds k deltas while it runs (the
//! running sum is not used for that fold).

use std::sync::Arc;

// One name a line: a braced `super::round::{..}` counts as an import of
// `round` itself (tests/source_layout.rs), and `round` imports this module.
use super::round::Buffered;
use super::round::PayloadError;
use super::round::RoundError;
use crate::aggregation::tensor_clip;
use crate::protocol::ModelLayout;

/// Each tensor's span in the flat weights.
pub fn tensor_ranges(layout: &ModelLayout) -> Vec<std::ops::Range<usize>> {
    layout
        .offsets()
        .into_iter()
        .zip(&layout.tensors)
        .map(|(o, t)| o..o + t.numel())
        .collect()
}

/// Whether a round of `members` members of `layout` is clipped tensor by
/// tensor: on (`multiplier` > 0), two members or more, two tensors or more.
pub fn applies(layout: &ModelLayout, members: usize, multiplier: f32) -> bool {
    multiplier > 0.0 && members >= 2 && layout.tensors.len() >= 2
}

/// Scales each member's tensors down to the round's per-tensor bound and
/// keeps every member's delta (reading streamed ones back with `payload`).
/// `coefs` are the members' settled coefficients (weight, whole-delta clip
/// factor), in the order of `updates`; the bound is taken on the deltas as
/// the whole-delta clip leaves them. Returns how many members had a tensor
/// clipped.
pub fn clip_members(
    updates: &mut [Buffered],
    coefs: &[(f64, f32)],
    layout: &ModelLayout,
    multiplier: f32,
    mut payload: impl FnMut(&Buffered) -> Result<Vec<u8>, PayloadError>,
) -> Result<usize, RoundError> {
    let ranges = tensor_ranges(layout);
    let mut norms = Vec::new();
    for (b, coef) in updates.iter_mut().zip(coefs) {
        if !b.counts() {
            continue;
        }
        if b.delta.is_none() {
            let bytes = payload(b)?;
            let d = layout
                .decode(&bytes)
                .map_err(|e| RoundError::tensor(&b.update_id, e))?;
            b.delta = Some(Arc::new(d));
        }
        let d = b.delta.as_deref().map(Vec::as_slice).unwrap_or(&[]);
        let n: Vec<f64> = tensor_clip::tensor_norms(d, &ranges)
            .into_iter()
            .map(|x| x * coef.1 as f64)
            .collect();
        norms.push(n);
    }
    let Some(bounds) = tensor_clip::tensor_bounds(&norms, multiplier as f64) else {
        return Ok(0);
    };
    let mut clipped = 0;
    let members = updates.iter_mut().zip(coefs).filter(|(b, _)| b.counts());
    for ((b, coef), n) in members.zip(&norms) {
        let Some(d) = b.delta.as_mut() else {
            continue;
        };
        // The stored delta is unscaled: its bound is the round's divided by
        // the whole-delta factor applied at the fold.
        let f = (coef.1 as f64).max(f64::MIN_POSITIVE);
        let own: Vec<f64> = n.iter().map(|x| x / f).collect();
        let scaled: Vec<f64> = bounds.iter().map(|x| x / f).collect();
        if own.iter().zip(&scaled).any(|(a, b)| a > b) {
            let d = Arc::make_mut(d);
            tensor_clip::clip_tensors(d, &ranges, &own, &scaled);
            clipped += 1;
        }
    }
    Ok(clipped)
}
