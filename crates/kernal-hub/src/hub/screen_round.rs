//! The hub's side of screening (`aggregation::screening`): which data a
//! model is screened on, and a round's members as candidates.
//!
//! The data: for the built-in `digits`, a fixed stratified sample of the
//! training split (the hub's "root data", as FLTrust calls it: drawn like a
//! member's, never the held-out rows the hub reports accuracy on); for an
//! MLP model with an evaluation set, that set (the operator's held-out
//! rows: the only data the hub has for it). Models the hub cannot evaluate
//! (custom architectures, the language model) are not screened.

use std::sync::{Arc, OnceLock};

use crate::aggregation::screening::{self, Candidate};
use crate::data::Dataset;
use crate::model::MlpSpec;
use crate::protocol::{ModelLayout, Normalisation};

use super::round::{Buffered, FoldInput, PayloadError, Vote};

/// Share of each class of the digits training split the hub screens on.
const ROOT_FRACTION: f64 = 0.1;
/// Fixed, so every hub screens on the same rows.
const ROOT_SEED: u64 = 0x5c7ee9;

/// The built-in model's screening rows (drawn once per process).
pub fn digits_root_data() -> Option<Arc<Dataset>> {
    static ROOT: OnceLock<Option<Arc<Dataset>>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let split = crate::data::digits_split().ok()?;
        let root = crate::data::stratified_split(&split.train, ROOT_FRACTION, ROOT_SEED).test;
        Some(Arc::new(root))
    })
    .clone()
}

/// What a fold is screened on: the model's MLP shape and data, normalised
/// as trainers normalise theirs.
pub struct ScreenSet {
    spec: MlpSpec,
    data: Dataset,
}

impl ScreenSet {
    pub fn new(
        layout: &ModelLayout,
        data: &Dataset,
        norm: Option<&Normalisation>,
    ) -> Option<ScreenSet> {
        let spec = MlpSpec::from_layout(layout)?;
        if spec.inputs != data.dim || data.is_empty() {
            return None;
        }
        let mut data = data.clone();
        if let Some(n) = norm {
            n.apply(&mut data.features);
        }
        data.classes = spec.classes;
        Some(ScreenSet { spec, data })
    }

    fn loss(&self, weights: &[f32]) -> Option<f64> {
        self.spec.evaluate(weights, &self.data).ok().map(|e| e.loss)
    }
}

/// Screens a settled round: members the fold is measurably better without
/// are marked [`Vote::Screened`]. Returns how many; the caller settles the
/// round again (the running sum is rebuilt without them). Streamed members'
/// deltas are read back with `payload`; an update that cannot be read ends
/// the screen without a decision (the fold goes on as it was).
pub fn screen_round(
    input: &mut FoldInput,
    layout: &ModelLayout,
    set: &ScreenSet,
    mut payload: impl FnMut(&Buffered) -> Result<Vec<u8>, PayloadError>,
) -> usize {
    let members: Vec<usize> = (0..input.updates.len())
        .filter(|&i| input.updates[i].counts())
        .collect();
    let limit = screening::max_rejected(members.len(), input.settings.screen_max_share);
    if limit == 0 {
        return 0;
    }
    let n = layout.num_params();
    let mut deltas: Vec<(f64, Vec<f32>)> = Vec::with_capacity(members.len());
    for &i in &members {
        let b = &input.updates[i];
        let (weight, factor) = b.coef;
        let delta = match &b.delta {
            Some(d) => d.iter().map(|v| v * factor).collect(),
            None => {
                let Ok(bytes) = payload(b) else { return 0 };
                let mut d = vec![0.0f32; n];
                if layout.accumulate(&bytes, &mut d, factor).is_err() {
                    return 0;
                }
                d
            }
        };
        deltas.push((weight, delta));
    }
    let candidates: Vec<Candidate> = deltas
        .iter()
        .map(|(w, d)| Candidate {
            weight: *w,
            delta: d,
        })
        .collect();
    let Some(s) = screening::screen(
        &input.weights,
        &candidates,
        input.settings.server_lr,
        limit,
        |w| set.loss(w),
    ) else {
        return 0;
    };
    for &r in &s.rejected {
        let b = &mut input.updates[members[r]];
        log::info!(
            "screen: left {} out of version {} (loss on the hub's data {:.4} with every member, {:.4} without)",
            b.label(),
            input.version + 1,
            s.loss_all,
            s.loss_kept
        );
        b.vote = Vote::Screened;
    }
    s.rejected.len()
}
