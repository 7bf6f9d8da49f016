// Over 600 lines: the hub's pure decision structs kept beside the ~240 lines of unit tests that pin them down without actix.
//! The hub's decision logic as plain structs: a model's version, weights and
//! buffer of accepted updates, when to fold, and who may join. The Hub actor
//! only wires these to messages, so everything here is tested without actix.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::encoded::Encoded;
pub use super::round::{
    compute_fold, separate_poison, settle, stream_into, Accumulator, Arrival, Buffered, Fold,
    FoldInput, PayloadError, Poisoned, RoundError, Settlement, Vote, MAX_WEIGHT,
};
use crate::aggregation::robust::{Bounds, RobustState};
use crate::aggregation::{
    self, AggregationSettings, Intake, RoundClock, RoundDecision, ServerState,
};
use crate::model::{Evaluation, MlpSpec};
use crate::protocol::{
    ErrorCode, ModelLayout, Normalisation, NormalisationState, Refusal, StatsPool,
};

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
    pub encoded: Encoded,
    pub buffer: Vec<Buffered>,
    pub acc: Option<Accumulator>,
    pub clock: RoundClock,
    pub server: ServerState,
    /// The clipping bound and median claim tracked from earlier folds.
    pub robust: RobustState,
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

    pub fn from_stored(s: Option<&str>) -> Result<Self, StoredNormError> {
        match s {
            None => Ok(NormState::Off),
            Some(s) => serde_json::from_str(s).map_err(StoredNormError),
        }
    }
}

/// A model's stored normalisation that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("stored normalisation: {0}")]
pub struct StoredNormError(#[source] serde_json::Error);

/// What the hub is waiting for, shown in status and on the dashboard.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Waiting {
    /// Updates in the buffer.
    pub buffered: usize,
    /// Trainers with an update that counts (a round counts members).
    pub members: usize,
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
        weights: Arc<Vec<f32>>,
        encoded: Encoded,
    ) -> Self {
        ModelState {
            name,
            architecture,
            layout: Arc::new(layout),
            settings,
            overrides: None,
            version,
            weights,
            encoded,
            buffer: Vec::new(),
            acc: None,
            clock: RoundClock::default(),
            server: ServerState::default(),
            robust: RobustState::default(),
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

    /// Buffers an update; a trainer's earlier update of the same round is
    /// superseded (one vote per trainer: the newest, trained on the newest
    /// weights, counts).
    pub fn push(&mut self, b: Buffered, now: Instant) {
        if b.counts() {
            for old in self
                .buffer
                .iter_mut()
                .filter(|o| o.trainer == b.trainer && o.counts())
            {
                old.vote = Vote::Superseded;
                old.delta = None;
            }
        }
        self.buffer.push(b);
        self.clock.on_buffered(now);
    }

    /// The bounds an arriving update is folded with before its round's own
    /// figures are known: those of the last fold (corrected at fold time
    /// where the round differs).
    pub fn provisional_bounds(&self) -> Bounds {
        let s = &self.settings;
        Bounds {
            examples_cap: self
                .robust
                .median_examples
                .filter(|_| s.max_weight_ratio > 0.0)
                .map(|m| m * s.max_weight_ratio),
            clip_bound: aggregation::robust::clip_bound(
                aggregation::robust::norm_quantile(self.robust.norm_quantile, &[], s),
                s,
            ),
        }
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
            vote: Vote::Counts,
            coef: (0.0, 1.0),
            delta: None,
            ints: self.layout.integer_values(payload)?.map(Arc::from),
        };
        if self.settings.strategy.rule().intake() == Intake::RunningSum {
            let coef = self
                .provisional_bounds()
                .coefficient(&b.claim(), &self.settings);
            let n = self.layout.num_params();
            let acc = self.acc.get_or_insert_with(|| Accumulator::new(n));
            stream_into(acc, &self.layout, &mut b, coef, payload)?;
        } else {
            b.delta = Some(Arc::new(self.layout.decode(payload)?));
        }
        self.push(b, now);
        Ok(())
    }

    /// Drops the buffered updates of a revoked trainer (they keep their
    /// place until the fold, with no weight, so the running sum is corrected
    /// there); returns their ledger rows, to be refused.
    pub fn drop_trainer(&mut self, trainer: &str) -> Vec<i64> {
        let mut rows = Vec::new();
        for b in self
            .buffer
            .iter_mut()
            .filter(|b| b.trainer == trainer && b.vote != Vote::Dropped)
        {
            b.vote = Vote::Dropped;
            b.delta = None;
            rows.push(b.row_id);
        }
        rows
    }

    /// Trainers with an update that counts in the current round.
    pub fn members(&self) -> usize {
        self.buffer.iter().filter(|b| b.counts()).count()
    }

    pub fn decide(&self, now: Instant) -> RoundDecision {
        self.clock.decide(self.members(), &self.settings, now)
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
            members: self.members(),
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
        if self.folding || self.members() == 0 {
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
            robust: self.robust,
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
            robust: self.robust,
        })
    }

    /// The restored weights become `version`; the server optimizer starts
    /// over; `kept` (with its rebuilt accumulator) goes back in front of
    /// anything that arrived meanwhile.
    pub fn finish_rollback(
        &mut self,
        version: u64,
        weights: Arc<Vec<f32>>,
        encoded: Encoded,
        kept: Vec<Buffered>,
        acc: Option<Accumulator>,
        now: Instant,
    ) {
        self.version = version;
        self.weights = weights;
        self.encoded = encoded;
        self.server = ServerState::default();
        self.abort_fold(kept, acc, now);
    }

    /// `weights` are the fold's, as `encoded` shares them.
    pub fn finish_fold(
        &mut self,
        fold: Fold,
        weights: Arc<Vec<f32>>,
        encoded: Encoded,
        now: Instant,
    ) {
        self.version = fold.version;
        self.weights = weights;
        self.server = fold.server;
        self.robust = fold.robust;
        self.encoded = encoded;
        self.folding = false;
        self.clock.reset(self.members(), now);
    }

    /// Puts the updates back (in front of anything that arrived meanwhile)
    /// when a fold could not be committed: acknowledged updates are never dropped.
    pub fn abort_fold(&mut self, updates: Vec<Buffered>, acc: Option<Accumulator>, now: Instant) {
        let arrived = std::mem::take(&mut self.buffer);
        self.buffer = updates;
        // What arrived during the fold is newer than what goes back.
        for b in arrived {
            self.push(b, now);
        }
        if let Some(old) = acc {
            match self.acc.as_mut() {
                Some(cur) => cur.merge(&old),
                None => self.acc = Some(old),
            }
        }
        self.folding = false;
        self.clock.reset(self.members(), now);
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
    use crate::hub::round::tests::model;

    #[test]
    fn checks_updates() {
        let mut m = model();
        m.settings.max_num_examples = 100;
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
