// Over 600 lines: the hub's pure decision structs kept beside the ~240 lines of unit tests that pin them down without actix.
//! The hub's decision logic as plain structs: a model's version, weights and
//! buffer of accepted updates, when to fold, and who may join. The Hub actor
//! only wires these to messages, so everything here is tested without actix.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::aggregation::{
    self, AggregateReport, AggregationSettings, Contribution, RoundClock, RoundDecision,
    ServerState,
};
use crate::model::{Evaluation, MlpSpec};
use crate::protocol::{
    ErrorCode, ModelLayout, Normalisation, NormalisationState, Refusal, StatsPool,
};

/// An accepted, durable update waiting in a model's buffer.
#[derive(Debug, Clone)]
pub struct Buffered {
    pub row_id: i64,
    pub update_id: String,
    pub trainer: String,
    pub base_version: u64,
    pub num_examples: u64,
    /// Staleness when it was accepted.
    pub staleness: u64,
    /// L2 norm of the delta (before clipping).
    pub norm: f64,
    pub clipped: bool,
    /// The delta, kept only for strategies that need every delta at fold
    /// time (median, trimmed mean); streamed ones live in the accumulator.
    pub delta: Option<Arc<Vec<f32>>>,
}

/// A durable update about to be buffered.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub row_id: i64,
    pub update_id: String,
    pub trainer: String,
    pub base_version: u64,
    pub num_examples: u64,
    /// Staleness recorded when it was accepted (a reloaded update keeps
    /// it); None: counted from the model's current version.
    pub staleness: Option<u64>,
    /// The delta's L2 norm when the session already computed it.
    pub norm: Option<f64>,
}

/// The factor that scales a delta of norm `norm` down to the clip norm.
fn clip_factor(norm: f64, s: &AggregationSettings) -> f32 {
    if s.clip_norm > 0.0 && norm > s.clip_norm as f64 {
        (s.clip_norm as f64 / norm) as f32
    } else {
        1.0
    }
}

/// Adds one update's weighted (and clipped) delta to the accumulator,
/// straight from its encoded bytes; returns whether it was clipped.
pub fn stream_into(
    acc: &mut Accumulator,
    layout: &ModelLayout,
    s: &AggregationSettings,
    b: &Buffered,
    payload: &[u8],
) -> Result<bool, crate::protocol::tensors::TensorError> {
    let factor = clip_factor(b.norm, s);
    let w = aggregation::contribution_weight(b.num_examples, b.staleness, s.staleness_exponent);
    let t = Instant::now();
    layout.accumulate(payload, &mut acc.sum, (w as f32) * factor)?;
    acc.seconds += t.elapsed().as_secs_f64();
    acc.weight += w;
    Ok(factor < 1.0)
}

/// Running weighted sum of streamed deltas: memory stays one model's worth
/// however many updates a round folds.
#[derive(Debug, Clone)]
pub struct Accumulator {
    pub sum: Vec<f32>,
    pub weight: f64,
    /// Time spent folding updates into `sum` as they arrived.
    pub seconds: f64,
}

/// Everything the hub holds about one model.
#[derive(Debug)]
pub struct ModelState {
    pub name: String,
    pub architecture: String,
    pub layout: Arc<ModelLayout>,
    pub settings: AggregationSettings,
    /// The overrides of a model created through the API (None: a model
    /// declared in config, whose settings follow the file).
    pub overrides: Option<crate::aggregation::AggregationOverrides>,
    pub version: u64,
    pub weights: Arc<Vec<f32>>,
    /// The current version encoded once as safetensors and shared by every
    /// session that sends it.
    pub encoded: Bytes,
    pub buffer: Vec<Buffered>,
    pub acc: Option<Accumulator>,
    pub clock: RoundClock,
    pub server: ServerState,
    /// A fold is being computed or committed; no second one starts meanwhile.
    pub folding: bool,
    /// After a fold could not be committed (storage), the next waits until
    /// then, doubling with each failure in a row.
    pub retry_at: Option<Instant>,
    pub failures: u32,
    pub last_metrics: Option<serde_json::Value>,
    /// The model's input normalisation.
    pub norm: NormState,
    /// When the first statistics of a pooling model arrived: the pool
    /// freezes `round_timeout_secs` later if nothing froze it before.
    pub norm_since: Option<Instant>,
    /// The held-out evaluation set an administrator attached (raw features).
    pub evalset: Option<Arc<crate::data::Dataset>>,
}

/// A model's input normalisation as the hub keeps (and stores) it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum NormState {
    /// No normalisation: trainers use their inputs as they are (or as they
    /// always did).
    #[default]
    Off,
    /// Collecting trainers' statistics.
    Pooling { pool: StatsPool },
    /// Fixed for the life of the model.
    Frozen { normalisation: Normalisation },
}

impl NormState {
    /// What trainers and `GET /v1/models/{m}` see.
    pub fn wire(&self) -> Option<Normalisation> {
        match self {
            NormState::Off => None,
            NormState::Pooling { pool } => Some(Normalisation {
                state: NormalisationState::Pooling,
                features: pool.features,
                mean: None,
                std: None,
                trainers: pool.reports.len(),
                count: pool.reports.values().map(|r| r.count).sum(),
            }),
            NormState::Frozen { normalisation } => Some(normalisation.clone()),
        }
    }

    /// The frozen statistics, if any.
    pub fn frozen(&self) -> Option<&Normalisation> {
        match self {
            NormState::Frozen { normalisation } => Some(normalisation),
            _ => None,
        }
    }

    /// The stored form (NULL for `Off`).
    pub fn to_stored(&self) -> Option<String> {
        match self {
            NormState::Off => None,
            other => serde_json::to_string(other).ok(),
        }
    }

    pub fn from_stored(s: Option<&str>) -> Result<Self, String> {
        match s {
            None => Ok(NormState::Off),
            Some(s) => serde_json::from_str(s).map_err(|e| format!("stored normalisation: {e}")),
        }
    }
}

/// A fold ready to be committed: the new weights and what went into them.
#[derive(Debug)]
pub struct Fold {
    pub version: u64,
    pub parent: u64,
    pub weights: Vec<f32>,
    pub report: AggregateReport,
    pub applied: Vec<Buffered>,
    pub acc: Option<Accumulator>,
    pub server: ServerState,
}

impl Fold {
    /// Whether the new weights and the server optimizer's state are all
    /// finite and below [`MAX_WEIGHT`]: a version that is not is never
    /// committed (the next fold from weights near f32's limit would overflow).
    pub fn is_finite(&self) -> bool {
        let finite = |v: &[f32]| v.iter().all(|x| x.abs() <= MAX_WEIGHT);
        finite(&self.weights)
            && self.server.momentum.as_deref().is_none_or(finite)
            && self.server.second_moment.as_deref().is_none_or(finite)
    }
}

/// Weights (and optimizer state) beyond this magnitude count as poisoned.
pub const MAX_WEIGHT: f32 = 1e30;

/// A fold whose result was not finite, taken apart: the updates that made
/// it so, and the rest with their accumulator rebuilt, to go back in the
/// buffer.
#[derive(Debug)]
pub struct Poisoned {
    pub culprits: Vec<Buffered>,
    pub kept: Vec<Buffered>,
    pub acc: Option<Accumulator>,
}

/// Finds which updates of a fold made it non-finite: the update with the
/// largest weighted norm is set aside until folding the others gives finite
/// weights (or none is left). Streamed updates are folded again from their
/// stored payloads (`payload`), kept ones from their deltas. A rare path:
/// each step folds the remaining updates once.
pub fn separate_poison(
    input: FoldInput,
    layout: &ModelLayout,
    mut payload: impl FnMut(&Buffered) -> Result<Vec<u8>, String>,
) -> Result<Poisoned, String> {
    let FoldInput {
        version,
        weights,
        mut updates,
        settings,
        server,
        ..
    } = input;
    let mut culprits = Vec::new();
    loop {
        let mut acc: Option<Accumulator> = None;
        for b in updates.iter().filter(|b| b.delta.is_none()) {
            let bytes = payload(b)?;
            let a = acc.get_or_insert_with(|| Accumulator {
                sum: vec![0.0; layout.num_params()],
                weight: 0.0,
                seconds: 0.0,
            });
            stream_into(a, layout, &settings, b, &bytes)
                .map_err(|e| format!("update {}: {e}", b.update_id))?;
        }
        let fold = compute_fold(FoldInput {
            version,
            weights: weights.clone(),
            updates: updates.clone(),
            acc: acc.clone(),
            settings: settings.clone(),
            server: server.clone(),
        });
        if fold.is_finite() || updates.is_empty() {
            return Ok(Poisoned {
                culprits,
                kept: updates,
                acc,
            });
        }
        let weight = |b: &Buffered| {
            aggregation::contribution_weight(
                b.num_examples,
                b.staleness,
                settings.staleness_exponent,
            ) * b.norm
        };
        let worst = updates
            .iter()
            .enumerate()
            .max_by(|(_, a), (_, b)| weight(a).total_cmp(&weight(b)))
            .map(|(i, _)| i)
            .unwrap_or(0);
        culprits.push(updates.remove(worst));
    }
}

/// What the hub is waiting for, shown in status and on the dashboard.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Waiting {
    pub buffered: usize,
    pub min_updates: usize,
    pub more_updates: usize,
    pub round_timeout_in_secs: Option<f64>,
    pub folding: bool,
}

impl ModelState {
    pub fn new(
        name: String,
        architecture: String,
        layout: ModelLayout,
        settings: AggregationSettings,
        version: u64,
        weights: Vec<f32>,
        encoded: Bytes,
    ) -> Self {
        ModelState {
            name,
            architecture,
            layout: Arc::new(layout),
            settings,
            overrides: None,
            version,
            weights: Arc::new(weights),
            encoded,
            buffer: Vec::new(),
            acc: None,
            clock: RoundClock::default(),
            server: ServerState::default(),
            folding: false,
            retry_at: None,
            failures: 0,
            last_metrics: None,
            norm: NormState::Off,
            norm_since: None,
            evalset: None,
        }
    }

    /// Staleness of an update based on `base`, or its refusal.
    pub fn check_base(&self, base: u64) -> Result<u64, Refusal> {
        aggregation::check_staleness(self.version, base, self.settings.max_staleness)
    }

    /// Refuses a delta whose L2 norm is above the model's `max_update_norm`.
    pub fn check_norm(&self, norm: f64) -> Result<(), Refusal> {
        let max = self.settings.max_update_norm;
        if max > 0.0 && (norm.is_nan() || norm > max as f64) {
            return Err(Refusal::new(
                ErrorCode::UpdateTooLargeNorm,
                format!(
                    "the update's L2 norm is {}; this model refuses updates above {} (max_update_norm)",
                    crate::range::show(norm),
                    crate::range::show(max as f64)
                ),
            ));
        }
        Ok(())
    }

    pub fn check_num_examples(&self, n: u64) -> Result<(), Refusal> {
        if n == 0 {
            return Err(Refusal::new(
                ErrorCode::BadNumExamples,
                "num_examples is 0; an update must come from at least one example".into(),
            ));
        }
        if n > self.settings.max_num_examples {
            return Err(Refusal::new(
                ErrorCode::BadNumExamples,
                format!(
                    "num_examples {n} is above this model's limit of {}",
                    self.settings.max_num_examples
                ),
            ));
        }
        Ok(())
    }

    pub fn push(&mut self, b: Buffered, now: Instant) {
        self.buffer.push(b);
        self.clock.on_buffered(now);
    }

    /// Buffers a durable update from its encoded payload. Streaming
    /// strategies fold it into the accumulator straight from the bytes; the
    /// others keep the decoded delta for the fold.
    pub fn push_payload(
        &mut self,
        a: Arrival,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), crate::protocol::tensors::TensorError> {
        let norm = match a.norm {
            Some(n) => n,
            None => self.layout.check_sum_squares(payload)?.sqrt(),
        };
        let mut b = Buffered {
            row_id: a.row_id,
            update_id: a.update_id,
            trainer: a.trainer,
            base_version: a.base_version,
            num_examples: a.num_examples,
            staleness: a
                .staleness
                .unwrap_or(self.version.saturating_sub(a.base_version)),
            norm,
            clipped: false,
            delta: None,
        };
        if aggregation::streams(self.settings.strategy) {
            let n = self.layout.num_params();
            let acc = self.acc.get_or_insert_with(|| Accumulator {
                sum: vec![0.0; n],
                weight: 0.0,
                seconds: 0.0,
            });
            b.clipped = stream_into(acc, &self.layout, &self.settings, &b, payload)?;
        } else {
            b.clipped = clip_factor(norm, &self.settings) < 1.0;
            b.delta = Some(Arc::new(self.layout.decode(payload)?));
        }
        self.push(b, now);
        Ok(())
    }

    pub fn decide(&self, now: Instant) -> RoundDecision {
        self.clock.decide(self.buffer.len(), &self.settings, now)
    }

    pub fn waiting(&self, now: Instant) -> Waiting {
        let (more, timeout) = match self.decide(now) {
            RoundDecision::Aggregate => (0, Some(0.0)),
            RoundDecision::WaitFor {
                more_updates,
                timeout_in,
            } => (more_updates, timeout_in.map(|d| d.as_secs_f64())),
        };
        Waiting {
            buffered: self.buffer.len(),
            min_updates: self.settings.min_updates,
            more_updates: more,
            round_timeout_in_secs: timeout,
            folding: self.folding,
        }
    }

    /// Takes the buffer for a fold when one is due. The caller computes the
    /// fold (possibly off-thread) with [`compute_fold`] and then either
    /// [`finish_fold`](Self::finish_fold)s or [`abort_fold`](Self::abort_fold)s.
    pub fn begin_fold(&mut self, now: Instant) -> Option<FoldInput> {
        if self.folding || self.buffer.is_empty() {
            return None;
        }
        if self.decide(now) != RoundDecision::Aggregate {
            return None;
        }
        self.folding = true;
        Some(FoldInput {
            version: self.version,
            weights: self.weights.clone(),
            updates: std::mem::take(&mut self.buffer),
            acc: self.acc.take(),
            settings: self.settings.clone(),
            server: self.server.clone(),
        })
    }

    /// Takes the buffer for a rollback (as [`begin_fold`](Self::begin_fold)
    /// does, due or not); None while a fold runs.
    pub fn begin_rollback(&mut self) -> Option<FoldInput> {
        if self.folding {
            return None;
        }
        self.folding = true;
        Some(FoldInput {
            version: self.version,
            weights: self.weights.clone(),
            updates: std::mem::take(&mut self.buffer),
            acc: self.acc.take(),
            settings: self.settings.clone(),
            server: self.server.clone(),
        })
    }

    /// The restored weights become `version`; the server optimizer starts
    /// over; `kept` (with its rebuilt accumulator) goes back in front of
    /// anything that arrived meanwhile.
    pub fn finish_rollback(
        &mut self,
        version: u64,
        weights: Vec<f32>,
        encoded: Bytes,
        kept: Vec<Buffered>,
        acc: Option<Accumulator>,
        now: Instant,
    ) {
        self.version = version;
        self.weights = Arc::new(weights);
        self.encoded = encoded;
        self.server = ServerState::default();
        self.abort_fold(kept, acc, now);
    }

    pub fn finish_fold(&mut self, fold: Fold, encoded: Bytes, now: Instant) {
        self.version = fold.version;
        self.weights = Arc::new(fold.weights);
        self.server = fold.server;
        self.encoded = encoded;
        self.folding = false;
        self.clock.reset(self.buffer.len(), now);
    }

    /// Puts the updates back (in front of anything that arrived meanwhile)
    /// when a fold could not be committed: acknowledged updates are never dropped.
    pub fn abort_fold(
        &mut self,
        mut updates: Vec<Buffered>,
        acc: Option<Accumulator>,
        now: Instant,
    ) {
        updates.append(&mut self.buffer);
        self.buffer = updates;
        if let Some(old) = acc {
            match self.acc.as_mut() {
                Some(cur) => {
                    aggregation::axpy(&mut cur.sum, 1.0, &old.sum);
                    cur.weight += old.weight;
                }
                None => self.acc = Some(old),
            }
        }
        self.folding = false;
        self.clock.reset(self.buffer.len(), now);
    }
}

/// The inputs of one fold, detached from the hub so it can run elsewhere.
#[derive(Debug)]
pub struct FoldInput {
    pub version: u64,
    pub weights: Arc<Vec<f32>>,
    pub updates: Vec<Buffered>,
    pub acc: Option<Accumulator>,
    pub settings: AggregationSettings,
    pub server: ServerState,
}

/// Folds the buffer into a copy of the weights with the model's strategy.
/// Streamed updates come from the accumulator, kept ones from their deltas;
/// the accumulator is handed back in the fold so a failed commit can restore it.
pub fn compute_fold(input: FoldInput) -> Fold {
    let s = &input.settings;
    let n = input.weights.len();
    let kept: Vec<Contribution<'_>> = input
        .updates
        .iter()
        .filter_map(|u| {
            u.delta.as_ref().map(|d| Contribution {
                delta: d.as_slice(),
                num_examples: u.num_examples,
                staleness: u.staleness,
            })
        })
        .collect();
    let acc_weight = input.acc.as_ref().map(|a| a.weight).unwrap_or(0.0);
    let mean_delta: Vec<f32> = if aggregation::streams(s.strategy) || kept.is_empty() {
        // Weighted mean of everything: the accumulator plus any kept deltas
        // (kept ones exist when the strategy changed since they arrived).
        let mut sum = input
            .acc
            .as_ref()
            .map(|a| a.sum.clone())
            .unwrap_or_else(|| vec![0.0; n]);
        let mut total = acc_weight;
        for c in &kept {
            let w =
                aggregation::contribution_weight(c.num_examples, c.staleness, s.staleness_exponent);
            aggregation::axpy(
                &mut sum,
                w as f32 * aggregation::clip_factor(c.delta, s.clip_norm),
                c.delta,
            );
            total += w;
        }
        if total > 0.0 {
            let inv = (1.0 / total) as f32;
            sum.iter_mut().for_each(|v| *v *= inv);
        }
        sum
    } else {
        // Robust strategies need every delta; streamed leftovers (from before
        // a strategy change) enter as one more contribution.
        let acc_mean: Option<Vec<f32>> = input.acc.as_ref().filter(|a| a.weight > 0.0).map(|a| {
            let inv = (1.0 / a.weight) as f32;
            a.sum.iter().map(|v| v * inv).collect()
        });
        let mut all = kept.clone();
        if let Some(m) = &acc_mean {
            all.push(Contribution {
                delta: m.as_slice(),
                num_examples: 1,
                staleness: 0,
            });
        }
        match s.strategy {
            aggregation::Strategy::Median => aggregation::coordinate_median(&all, s),
            _ => aggregation::trimmed_mean(&all, s),
        }
    };
    let mut weights = input.weights.as_ref().clone();
    let mut server = input.server;
    aggregation::apply_server_update(&mut weights, &mean_delta, s, &mut server);
    server.steps += 1;
    let k = input.updates.len();
    let report = AggregateReport {
        strategy: s.strategy,
        num_updates: k,
        total_examples: input.updates.iter().map(|u| u.num_examples).sum(),
        mean_staleness: if k == 0 {
            0.0
        } else {
            input
                .updates
                .iter()
                .map(|u| u.staleness as f64)
                .sum::<f64>()
                / k as f64
        },
        max_staleness: input.updates.iter().map(|u| u.staleness).max().unwrap_or(0),
        update_norm: aggregation::l2_norm(&mean_delta),
        clipped: input.updates.iter().filter(|u| u.clipped).count(),
    };
    drop(kept);
    Fold {
        version: input.version + 1,
        parent: input.version,
        weights,
        report,
        applied: input.updates,
        acc: input.acc,
        server,
    }
}

/// The hub's own evaluation of a version, for models it knows how to run on
/// the built-in data (an MLP with the digits shape).
pub fn evaluate_builtin(
    layout: &ModelLayout,
    weights: &[f32],
    test: Option<&crate::data::Dataset>,
    norm: Option<&Normalisation>,
) -> Option<Evaluation> {
    let spec = MlpSpec::from_layout(layout)?;
    let test = test?;
    if spec.inputs != test.dim || spec.classes != test.classes {
        return None;
    }
    match norm {
        Some(n) => {
            let mut t = test.clone();
            n.apply(&mut t.features);
            spec.evaluate(weights, &t).ok()
        }
        None => spec.evaluate(weights, test).ok(),
    }
}

/// The hub's evaluation of a version on an attached evaluation set, its
/// raw features normalised as trainers normalise theirs.
pub fn evaluate_evalset(
    layout: &ModelLayout,
    weights: &[f32],
    evalset: &crate::data::Dataset,
    norm: Option<&Normalisation>,
) -> Option<Evaluation> {
    let spec = MlpSpec::from_layout(layout)?;
    if spec.inputs != evalset.dim {
        return None;
    }
    let mut ds = evalset.clone();
    if let Some(n) = norm {
        n.apply(&mut ds.features);
    }
    ds.classes = spec.classes;
    spec.evaluate(weights, &ds).ok()
}

/// A registered trainer as the hub keeps it in memory.
#[derive(Debug, Clone)]
pub struct TrainerInfo {
    pub specialty: String,
    pub token_hash: String,
    pub revoked: bool,
}

/// What the hub requires of a connecting trainer before it may join.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Known name: the token must verify against this hash.
    Verify { token_hash: String },
    /// Unknown name that may register (trust on first use).
    Register,
}

/// Who may join, given the registry, the registration policy and the cap
/// on registered trainers (`hub.max_trainers`).
pub fn admit(
    trainers: &HashMap<String, TrainerInfo>,
    name: &str,
    open_registration: bool,
    allowed: &[String],
    max_trainers: usize,
) -> Result<Admission, Refusal> {
    match trainers.get(name) {
        Some(t) if t.revoked => Err(Refusal::new(
            ErrorCode::Revoked,
            format!("trainer `{name}` has been revoked by an administrator"),
        )),
        Some(t) => {
            if !open_registration && !allowed.is_empty() && !allowed.iter().any(|a| a == name) {
                return Err(Refusal::new(
                    ErrorCode::NotAllowed,
                    format!("trainer `{name}` is not in hub.allowed_trainers"),
                ));
            }
            Ok(Admission::Verify {
                token_hash: t.token_hash.clone(),
            })
        }
        None => {
            if trainers.len() >= max_trainers {
                Err(Refusal::new(
                    ErrorCode::TooManyTrainers,
                    format!("trainer `{name}` cannot register: this hub has {} registered trainers, its limit (hub.max_trainers); registered names still join", trainers.len()),
                ))
            } else if open_registration || allowed.iter().any(|a| a == name) {
                Ok(Admission::Register)
            } else {
                Err(Refusal::new(
                    ErrorCode::NotAllowed,
                    format!(
                        "trainer `{name}` is not registered and this hub does not accept new trainers"
                    ),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregation::Strategy;
    use std::time::Duration;

    fn settings() -> AggregationSettings {
        AggregationSettings {
            strategy: Strategy::Fedavg,
            min_updates: 2,
            round_timeout_secs: 5.0,
            max_staleness: 3,
            staleness_exponent: 0.0,
            server_lr: 1.0,
            momentum: 0.9,
            beta2: 0.99,
            tau: 1e-3,
            trim_fraction: 0.2,
            clip_norm: 0.0,
            max_num_examples: 100,
            max_update_norm: 0.0,
            normalisation_wait_secs: 5.0,
        }
    }

    fn model() -> ModelState {
        let layout = ModelLayout::new(vec![("w".into(), vec![2])]);
        ModelState::new(
            "m".into(),
            "custom".into(),
            layout,
            settings(),
            0,
            vec![0.0, 0.0],
            Bytes::new(),
        )
    }

    fn arrival(row_id: i64, id: &str, num_examples: u64) -> Arrival {
        Arrival {
            row_id,
            update_id: id.into(),
            trainer: "t".into(),
            base_version: 0,
            num_examples,
            staleness: None,
            norm: None,
        }
    }

    /// Three updates, two of values near f32's limit: the fold overflows,
    /// both are found (by re-reading their payloads) and the honest one is
    /// kept with a rebuilt accumulator.
    #[test]
    fn a_poisoned_fold_is_taken_apart() {
        let mut m = model();
        m.settings.min_updates = 3;
        let t = Instant::now();
        let layout = m_layout();
        let payloads: Vec<Vec<u8>> = [[3e38f32, 3e38], [1.0, 2.0], [-3e38, 3e38]]
            .iter()
            .map(|d| layout.encode(d, None).unwrap())
            .collect();
        for (i, p) in payloads.iter().enumerate() {
            m.push_payload(arrival(i as i64, &format!("u{i}"), 1), p, t)
                .unwrap();
        }
        let input = m.begin_fold(t).unwrap();
        let fold = compute_fold(FoldInput {
            version: input.version,
            weights: input.weights.clone(),
            updates: input.updates.clone(),
            acc: input.acc.clone(),
            settings: input.settings.clone(),
            server: input.server.clone(),
        });
        assert!(!fold.is_finite());
        let mut reads = 0;
        let p = separate_poison(input, &layout, |b| {
            reads += 1;
            Ok(payloads[b.row_id as usize].clone())
        })
        .unwrap();
        let mut culprits: Vec<i64> = p.culprits.iter().map(|b| b.row_id).collect();
        culprits.sort();
        assert_eq!(culprits, vec![0, 2]);
        assert_eq!(p.kept.len(), 1);
        assert!(reads >= 3);
        m.abort_fold(p.kept, p.acc, t);
        m.settings.min_updates = 1;
        let fold = compute_fold(m.begin_fold(t).unwrap());
        assert!(fold.is_finite());
        assert_eq!(fold.weights, vec![1.0, 2.0]);
    }

    fn upd(id: i64, base: u64, delta: Vec<f32>) -> Buffered {
        Buffered {
            row_id: id,
            update_id: format!("u{id}"),
            trainer: "t".into(),
            base_version: base,
            num_examples: 1,
            staleness: 0,
            norm: 1.0,
            clipped: false,
            delta: Some(Arc::new(delta)),
        }
    }

    #[test]
    fn streamed_updates_fold_like_kept_ones_and_survive_an_abort() {
        let mut m = model();
        let t = Instant::now();
        let enc = |d: [f32; 2]| m_layout().encode(&d, None).unwrap();
        m.push_payload(arrival(1, "a", 1), &enc([1.0, 2.0]), t)
            .unwrap();
        assert!(m.buffer[0].delta.is_none(), "fedavg streams");
        let input = m.begin_fold(t).map(|_| ()).is_none();
        assert!(input);
        m.push_payload(arrival(2, "b", 3), &enc([5.0, 6.0]), t)
            .unwrap();
        let input = m.begin_fold(t).unwrap();
        assert!(m.acc.is_none());
        // A failed commit hands the accumulator back.
        let fold = compute_fold(input);
        assert_eq!(fold.weights, vec![4.0, 5.0]);
        assert!(fold.is_finite());
        m.abort_fold(fold.applied, fold.acc, t);
        let fold = compute_fold(m.begin_fold(t).unwrap());
        assert_eq!(fold.weights, vec![4.0, 5.0]);
    }

    fn m_layout() -> ModelLayout {
        ModelLayout::new(vec![("w".into(), vec![2])])
    }

    #[test]
    fn folds_when_min_updates_buffered() {
        let mut m = model();
        let t = Instant::now();
        m.push(upd(1, 0, vec![1.0, 2.0]), t);
        assert!(m.begin_fold(t).is_none());
        assert_eq!(m.waiting(t).more_updates, 1);
        m.push(upd(2, 0, vec![3.0, 4.0]), t);
        let input = m.begin_fold(t).unwrap();
        assert!(m.folding);
        // An update arriving during the fold waits for the next one.
        m.push(upd(3, 0, vec![9.0, 9.0]), t);
        let fold = compute_fold(input);
        assert_eq!(fold.weights, vec![2.0, 3.0]);
        assert_eq!(fold.version, 1);
        m.finish_fold(fold, Bytes::new(), t);
        assert_eq!(m.version, 1);
        assert_eq!(m.buffer.len(), 1);
        assert!(!m.folding);
    }

    #[test]
    fn timeout_folds_a_partial_buffer_and_abort_keeps_updates() {
        let mut m = model();
        let t = Instant::now();
        m.push(upd(1, 0, vec![1.0, 1.0]), t);
        let later = t + Duration::from_secs(6);
        let input = m.begin_fold(later).unwrap();
        m.push(upd(2, 0, vec![0.0, 0.0]), later);
        m.abort_fold(input.updates, input.acc, later);
        assert_eq!(
            m.buffer.iter().map(|b| b.row_id).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(m.version, 0);
    }

    #[test]
    fn checks_updates() {
        let mut m = model();
        m.version = 5;
        assert_eq!(m.check_base(3), Ok(2));
        assert_eq!(m.check_base(1).unwrap_err().code, ErrorCode::StaleUpdate);
        assert_eq!(
            m.check_base(6).unwrap_err().code,
            ErrorCode::FutureBaseVersion
        );
        assert_eq!(
            m.check_num_examples(0).unwrap_err().code,
            ErrorCode::BadNumExamples
        );
        assert_eq!(
            m.check_num_examples(101).unwrap_err().code,
            ErrorCode::BadNumExamples
        );
        assert!(m.check_num_examples(100).is_ok());
        assert!(m.check_norm(1e40).is_ok(), "0 disables the bound");
        m.settings.max_update_norm = 10.0;
        assert!(m.check_norm(10.0).is_ok());
        assert_eq!(
            m.check_norm(10.5).unwrap_err().code,
            ErrorCode::UpdateTooLargeNorm
        );
        assert!(m.check_norm(f64::NAN).is_err());
    }

    #[test]
    fn admission_policy() {
        let mut reg = HashMap::new();
        reg.insert(
            "a".to_string(),
            TrainerInfo {
                specialty: "s".into(),
                token_hash: "h".into(),
                revoked: false,
            },
        );
        reg.insert(
            "r".to_string(),
            TrainerInfo {
                specialty: "s".into(),
                token_hash: "h".into(),
                revoked: true,
            },
        );
        assert_eq!(
            admit(&reg, "a", true, &[], 10),
            Ok(Admission::Verify {
                token_hash: "h".into()
            })
        );
        assert_eq!(admit(&reg, "new", true, &[], 10), Ok(Admission::Register));
        assert_eq!(
            admit(&reg, "r", true, &[], 10).unwrap_err().code,
            ErrorCode::Revoked
        );
        assert_eq!(
            admit(&reg, "new", false, &[], 10).unwrap_err().code,
            ErrorCode::NotAllowed
        );
        // At the cap a new name is refused; a registered one still joins.
        assert_eq!(
            admit(&reg, "new", true, &[], 2).unwrap_err().code,
            ErrorCode::TooManyTrainers
        );
        assert!(admit(&reg, "a", true, &[], 2).is_ok());
        assert_eq!(
            admit(&reg, "new", false, &["new".to_string()], 10),
            Ok(Admission::Register)
        );
    }
}
