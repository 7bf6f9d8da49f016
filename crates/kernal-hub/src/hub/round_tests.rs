//! Rounds and folds on hand-checked numbers, without actix.

use super::*;
use crate::aggregation::Strategy;
use crate::hub::encoded::Encoded;
use crate::hub::state::ModelState;
use std::collections::HashMap;
use std::time::Duration;
use std::time::Instant;

pub(crate) fn settings() -> AggregationSettings {
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
        clip_quantile: 0.0,
        clip_lr: 0.2,
        clip_multiplier: 1.0,
        tensor_clip_multiplier: 0.0,
        max_weight_ratio: 0.0,
        screen_max_share: 0.0,
        max_num_examples: 1_000_000_000,
        max_update_norm: 0.0,
        normalisation_wait_secs: 5.0,
        integer_rules: Default::default(),
    }
}

fn layout() -> ModelLayout {
    ModelLayout::new(vec![("w".into(), vec![2])])
}

pub(crate) fn model() -> ModelState {
    ModelState::new(
        "m".into(),
        "custom".into(),
        layout(),
        settings(),
        0,
        Arc::new(vec![0.0, 0.0]),
        Encoded::default(),
    )
}

fn arrival(row_id: i64, trainer: &str, num_examples: u64) -> Arrival {
    Arrival {
        row_id,
        update_id: format!("u{row_id}"),
        trainer: trainer.into(),
        base_version: 0,
        num_examples,
        staleness: None,
        norm: None,
    }
}

fn upd(id: i64, trainer: &str, delta: Vec<f32>) -> Buffered {
    Buffered {
        row_id: id,
        update_id: format!("u{id}"),
        trainer: trainer.into(),
        base_version: 0,
        num_examples: 1,
        staleness: 0,
        norm: aggregation::l2_norm(&delta),
        clipped: false,
        vote: Vote::Counts,
        coef: (0.0, 1.0),
        delta: Some(Arc::new(delta)),
        ints: None,
    }
}

/// The payloads of a test round by ledger row, as the fold task reads them
/// back from the ledger.
#[derive(Default)]
struct Ledger {
    rows: HashMap<i64, Vec<u8>>,
    reads: usize,
}

impl Ledger {
    fn push(&mut self, m: &mut ModelState, row: i64, trainer: &str, n: u64, d: [f32; 2]) {
        let bytes = layout().encode(&d, None).unwrap();
        m.push_payload(arrival(row, trainer, n), &bytes, Instant::now())
            .unwrap();
        self.rows.insert(row, bytes);
    }

    fn fold(&mut self, mut input: FoldInput) -> Fold {
        let settled = settle(&mut input, &layout(), |b| {
            self.reads += 1;
            Ok(self.rows[&b.row_id].clone())
        })
        .unwrap();
        compute_fold(input, &settled)
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
    let mut l = Ledger::default();
    l.push(&mut m, 0, "x", 1, [3e38, 3e38]);
    l.push(&mut m, 1, "h", 1, [1.0, 2.0]);
    l.push(&mut m, 2, "y", 1, [-3e38, 3e38]);
    let mut input = m.begin_fold(t).unwrap();
    let settled = settle(&mut input, &layout(), |b| Ok(l.rows[&b.row_id].clone())).unwrap();
    let again = FoldInput {
        version: input.version,
        weights: input.weights.clone(),
        updates: input.updates.clone(),
        acc: None,
        settings: input.settings.clone(),
        server: input.server.clone(),
        robust: input.robust,
    };
    let fold = compute_fold(input, &settled);
    assert!(!fold.is_finite());
    let mut reads = 0;
    let p = separate_poison(again, &settled, &layout(), |b| {
        reads += 1;
        Ok(l.rows[&b.row_id].clone())
    })
    .unwrap();
    let mut culprits: Vec<i64> = p.culprits.iter().map(|b| b.row_id).collect();
    culprits.sort();
    assert_eq!(culprits, vec![0, 2]);
    assert_eq!(p.kept.len(), 1);
    assert!(reads >= 3);
    m.abort_fold(p.kept, p.acc, t);
    m.settings.min_updates = 1;
    let fold = l.fold(m.begin_fold(t).unwrap());
    assert!(fold.is_finite());
    assert_eq!(fold.weights, vec![1.0, 2.0]);
}

#[test]
fn streamed_updates_fold_like_kept_ones_and_survive_an_abort() {
    let mut m = model();
    let t = Instant::now();
    let mut l = Ledger::default();
    l.push(&mut m, 1, "a", 1, [1.0, 2.0]);
    assert!(m.buffer[0].delta.is_none(), "fedavg streams");
    assert!(m.begin_fold(t).is_none());
    l.push(&mut m, 2, "b", 3, [5.0, 6.0]);
    let mut input = m.begin_fold(t).unwrap();
    assert!(m.acc.is_none());
    let settled = settle(&mut input, &layout(), |b| Ok(l.rows[&b.row_id].clone())).unwrap();
    // The running sum becomes the new weights in its own buffer, so a
    // failed commit puts the round back without it...
    let fold = compute_fold(input, &settled);
    assert_eq!(fold.weights, vec![4.0, 5.0]);
    assert!(fold.is_finite());
    assert!(fold.acc.is_none());
    m.abort_fold(fold.applied, fold.acc, t);
    assert_eq!(l.reads, 0, "nothing to rebuild: no bounds on");
    // ...and an update arriving meanwhile starts a new sum: the next fold
    // finds the put-back ones missing from it and rebuilds it from the
    // stored payloads.
    l.push(&mut m, 3, "c", 4, [9.0, 10.0]);
    let fold = l.fold(m.begin_fold(t).unwrap());
    assert_eq!(fold.weights, vec![6.5, 7.5]);
    assert_eq!(l.reads, 3);
}

#[test]
fn folds_when_min_updates_buffered() {
    let mut m = model();
    let t = Instant::now();
    m.push(upd(1, "a", vec![1.0, 2.0]), t);
    assert!(m.begin_fold(t).is_none());
    assert_eq!(m.waiting(t).more_updates, 1);
    m.push(upd(2, "b", vec![3.0, 4.0]), t);
    let input = m.begin_fold(t).unwrap();
    assert!(m.folding);
    // An update arriving during the fold waits for the next one.
    m.push(upd(3, "a", vec![9.0, 9.0]), t);
    let fold = Ledger::default().fold(input);
    assert_eq!(fold.weights, vec![2.0, 3.0]);
    assert_eq!(fold.version, 1);
    let w = Arc::new(fold.weights.clone());
    m.finish_fold(fold, w, Encoded::default(), t);
    assert_eq!(m.version, 1);
    assert_eq!(m.buffer.len(), 1);
    assert!(!m.folding);
}

#[test]
fn timeout_folds_a_partial_buffer_and_abort_keeps_updates() {
    let mut m = model();
    let t = Instant::now();
    m.push(upd(1, "a", vec![1.0, 1.0]), t);
    let later = t + Duration::from_secs(6);
    let input = m.begin_fold(later).unwrap();
    m.push(upd(2, "b", vec![0.0, 0.0]), later);
    m.abort_fold(input.updates, input.acc, later);
    assert_eq!(
        m.buffer.iter().map(|b| b.row_id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(m.version, 0);
}

/// A trainer flooding a round has one vote: its newest update counts, the
/// others are consumed without weight, and they do not make the round due.
#[test]
fn one_vote_per_trainer() {
    for strategy in [Strategy::Fedavg, Strategy::Median] {
        let mut m = model();
        m.settings.strategy = strategy;
        m.settings.min_updates = 2;
        let t = Instant::now();
        let mut l = Ledger::default();
        l.push(&mut m, 1, "liar", 1, [100.0, 100.0]);
        l.push(&mut m, 2, "liar", 1, [100.0, 100.0]);
        l.push(&mut m, 3, "liar", 1, [-2.0, -2.0]);
        assert!(m.begin_fold(t).is_none(), "one trainer is one member");
        assert_eq!((m.waiting(t).buffered, m.waiting(t).members), (3, 1));
        l.push(&mut m, 4, "honest", 1, [2.0, 4.0]);
        let fold = l.fold(m.begin_fold(t).unwrap());
        assert_eq!(fold.weights, vec![0.0, 1.0], "{strategy:?}");
        assert_eq!(
            (fold.report.members, fold.report.superseded),
            (2, 2),
            "{strategy:?}"
        );
        assert_eq!(fold.labels(Vote::Superseded), vec!["liar/u1", "liar/u2"]);
        assert_eq!(fold.consumed_rows(), vec![1, 2, 3, 4]);
    }
}

/// A claim of 1e8 examples weighs what the median member weighs, corrected
/// at fold time from the stored payload.
#[test]
fn claimed_examples_are_capped_at_the_median() {
    let mut m = model();
    m.settings.max_weight_ratio = 1.0;
    m.settings.min_updates = 3;
    let t = Instant::now();
    let mut l = Ledger::default();
    l.push(&mut m, 1, "a", 400, [1.0, 0.0]);
    l.push(&mut m, 2, "b", 400, [0.0, 1.0]);
    l.push(&mut m, 3, "liar", 100_000_000, [-10.0, -10.0]);
    let fold = l.fold(m.begin_fold(t).unwrap());
    // Equal weights: (1 + 0 - 10) / 3, (0 + 1 - 10) / 3.
    assert!((fold.weights[0] + 3.0).abs() < 1e-5, "{:?}", fold.weights);
    assert!((fold.weights[1] + 3.0).abs() < 1e-5);
    assert_eq!(fold.report.examples_cap, Some(400.0));
    assert_eq!(l.reads, 3, "the sum is rebuilt once");
    assert_eq!(fold.robust.median_examples, Some(400.0));
    // The next round starts from that cap: a liar is folded capped at
    // once, and nobody needs a correction.
    let w = Arc::new(fold.weights.clone());
    m.finish_fold(fold, w, Encoded::default(), t);
    l.reads = 0;
    l.push(&mut m, 4, "a", 400, [1.0, 0.0]);
    l.push(&mut m, 5, "b", 400, [0.0, 1.0]);
    l.push(&mut m, 6, "liar", 100_000_000, [-10.0, -10.0]);
    l.fold(m.begin_fold(t).unwrap());
    assert_eq!(l.reads, 0);
}

/// The first fold clips at the median norm of its own members (correcting
/// the streamed sum), and hands the next fold a bound that moved by at most
/// exp(clip_lr).
#[test]
fn adaptive_clipping_from_the_first_fold() {
    let mut m = model();
    m.settings.clip_quantile = 0.5;
    m.settings.min_updates = 3;
    let t = Instant::now();
    let mut l = Ledger::default();
    l.push(&mut m, 1, "a", 1, [0.6, 0.8]); // norm 1
    l.push(&mut m, 2, "b", 1, [0.0, 2.0]); // norm 2
    l.push(&mut m, 3, "liar", 1, [0.0, -999.0]); // norm 999
    let fold = l.fold(m.begin_fold(t).unwrap());
    assert_eq!(fold.report.clip_bound, Some(2.0));
    // a as sent, b as sent, the liar scaled to norm 2.
    let expect = [(0.6 + 0.0 + 0.0) / 3.0, (0.8 + 2.0 - 2.0) / 3.0];
    assert!(
        (fold.weights[0] - expect[0]).abs() < 1e-5,
        "{:?}",
        fold.weights
    );
    assert!((fold.weights[1] - expect[1]).abs() < 1e-5);
    assert_eq!(fold.report.clipped, 1);
    let next = fold.robust.norm_quantile.unwrap();
    // 2 of 3 within: 2 * exp(-0.2 * (2/3 - 1/2)).
    assert!((next - 2.0 * (-0.2f64 * (2.0 / 3.0 - 0.5)).exp()).abs() < 1e-9);
}

#[test]
fn a_revoked_trainers_buffered_updates_do_not_count() {
    let mut m = model();
    m.settings.min_updates = 2;
    let t = Instant::now();
    let mut l = Ledger::default();
    l.push(&mut m, 1, "gone", 1, [50.0, 50.0]);
    l.push(&mut m, 2, "a", 1, [1.0, 1.0]);
    assert_eq!(m.drop_trainer("gone"), vec![1]);
    assert!(m.begin_fold(t).is_none(), "one member left");
    l.push(&mut m, 3, "b", 1, [3.0, 3.0]);
    let fold = l.fold(m.begin_fold(t).unwrap());
    assert_eq!(fold.weights, vec![2.0, 2.0]);
    assert_eq!(fold.report.dropped, 1);
    assert_eq!(fold.consumed_rows(), vec![2, 3]);
}

/// Per-tensor clipping on the streamed path: members' deltas are read back
/// (a superseded one is not, and has no weight), each tensor is cut to the
/// round's lower-median norm of that tensor, and the accumulator is not
/// used for that fold.
#[test]
fn per_tensor_clipping_reads_members_back_and_cuts_a_one_tensor_step() {
    let two = ModelLayout::new(vec![("a".into(), vec![2]), ("b".into(), vec![2])]);
    let mut s = settings();
    s.min_updates = 3;
    s.tensor_clip_multiplier = 1.0;
    let mut m = ModelState::new(
        "m".into(),
        "custom".into(),
        two.clone(),
        s,
        0,
        Arc::new(vec![0.0; 4]),
        Encoded::default(),
    );
    let t = Instant::now();
    let mut rows: HashMap<i64, Vec<u8>> = HashMap::new();
    let sends: [(i64, &str, [f32; 4]); 4] = [
        (0, "liar", [0.0, 0.0, 0.0, 300.0]),
        (1, "a", [0.0, 0.5, 0.3, 0.4]),
        (2, "b", [0.0, 0.5, 0.6, 0.0]),
        (3, "liar", [0.0, 0.0, 0.0, 3.0]),
    ];
    for (row, who, d) in sends {
        let bytes = two.encode(&d, None).unwrap();
        m.push_payload(arrival(row, who, 1), &bytes, t).unwrap();
        rows.insert(row, bytes);
    }
    let mut input = m.begin_fold(t).unwrap();
    let mut read = Vec::new();
    let settled = settle(&mut input, &two, |b| {
        read.push(b.row_id);
        Ok(rows[&b.row_id].clone())
    })
    .unwrap();
    read.sort();
    assert_eq!(read, vec![1, 2, 3], "members only");
    assert_eq!(settled.tensor_clipped, 1);
    let fold = compute_fold(input, &settled);
    let want = [0.0f32, 1.0 / 3.0, 0.3, 1.0 / 3.0];
    assert!(
        fold.weights
            .iter()
            .zip(want)
            .all(|(a, b)| (a - b).abs() < 1e-6),
        "{:?}",
        fold.weights
    );
    assert_eq!(fold.report.tensor_clipped, 1);
    assert_eq!(fold.report.superseded, 1);
}
