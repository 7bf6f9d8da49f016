//! Screening a round on the hub's own data: leave out the member whose
//! update makes the folded model worse on data the hub holds (Reject On
//! Negative Influence, Nelson et al. 2008; the loss-based rejection of Fang
//! et al. 2020; FLTrust's "root dataset" is the same idea).
//!
//! Why statistics of the round are not enough: specialists that each see
//! other classes send updates that largely cancel, while a liar pushes one
//! direction every fold, so at a typical member's weight and norm it moves
//! the model as much as the whole honest consensus, and it looks no more
//! unusual than a member alone with its class. What tells them apart is
//! what each does to the model: an honest specialist's step lowers the loss
//! on data of every class more than it raises it (without it, its classes
//! are forgotten); a label rotation raises it. So the fold is tried with
//! and without each member, and a member is left out when the model is
//! measurably better without it, at most `screen_max_share` of the round.
//!
//! Pure computation: the loss is a closure, so the decision is tested here
//! without a model, and the hub supplies the evaluation.

/// A member of the round as the screen sees it: its weight in the mean
/// (`num_examples` after the cap) and its delta already clipped.
pub struct Candidate<'a> {
    pub weight: f64,
    pub delta: &'a [f32],
}

/// What the screen decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Screened {
    /// Indexes (into the candidates) left out, in the order they were.
    pub rejected: Vec<usize>,
    /// Loss of the fold with every member.
    pub loss_all: f64,
    /// Loss of the fold actually kept.
    pub loss_kept: f64,
}

/// A member is left out only when leaving it out lowers the loss by more
/// than this share of it: evaluation noise must not silence anyone.
pub const TOLERANCE: f64 = 1e-3;

/// How many of `members` a fold may leave out: at most `share` of them,
/// and always fewer than half, so the honest majority decides.
pub fn max_rejected(members: usize, share: f32) -> usize {
    if members < 3 || share <= 0.0 {
        return 0;
    }
    let by_share = (members as f64 * share as f64).floor() as usize;
    by_share.min((members - 1) / 2)
}

/// Greedily leaves out the member whose absence lowers the loss most, while
/// that lowers it by more than [`TOLERANCE`], at most `limit` of them.
/// `loss` scores a candidate model; None (it could not be evaluated, or
/// was not finite) stops the screen with what was decided so far.
///
/// A candidate model is `weights + server_lr * sum of the kept members'
/// weighted deltas / the whole round's weight`: the server step without
/// momentum, with the denominator of the whole round kept fixed. Leaving a
/// member out then removes exactly its own share of the step; if the mean
/// were renormalised over the rest, every other member's step would grow,
/// and a member whose classes are already learnt would look harmful only
/// because the step without it is larger.
pub fn screen(
    weights: &[f32],
    members: &[Candidate<'_>],
    server_lr: f32,
    limit: usize,
    mut loss: impl FnMut(&[f32]) -> Option<f64>,
) -> Option<Screened> {
    let n = weights.len();
    if members.iter().any(|m| m.delta.len() != n) {
        return None;
    }
    let mut kept: Vec<usize> = (0..members.len()).collect();
    let mut sum = vec![0.0f64; n];
    let mut total = 0.0f64; // the whole round's weight: fixed below
    for m in members {
        for (s, d) in sum.iter_mut().zip(m.delta) {
            *s += m.weight * *d as f64;
        }
        total += m.weight;
    }
    let mut model = vec![0.0f32; n];
    let mut score = |sum: &[f64], total: f64, model: &mut Vec<f32>| -> Option<f64> {
        if total <= 0.0 {
            return None;
        }
        for ((o, w), s) in model.iter_mut().zip(weights).zip(sum) {
            *o = w + server_lr * (*s / total) as f32;
        }
        loss(model).filter(|l| l.is_finite())
    };
    let loss_all = score(&sum, total, &mut model)?;
    let whole = total;
    let mut current = loss_all;
    let mut rejected = Vec::new();
    while rejected.len() < limit && kept.len() > 2 {
        let mut best: Option<(usize, f64)> = None;
        for (pos, &i) in kept.iter().enumerate() {
            let m = &members[i];
            let without: Vec<f64> = sum
                .iter()
                .zip(m.delta)
                .map(|(s, d)| s - m.weight * *d as f64)
                .collect();
            // A candidate that cannot be scored (weights beyond f32) means
            // the round is a matter for the fold's non-finite check, which
            // refuses exactly the culprits: the screen decides no more.
            let Some(l) = score(&without, whole, &mut model) else {
                return Some(Screened {
                    rejected,
                    loss_all,
                    loss_kept: current,
                });
            };
            if best.is_none_or(|(_, b)| l < b) {
                best = Some((pos, l));
            }
        }
        let Some((pos, l)) = best else { break };
        if current - l <= TOLERANCE * current.abs().max(1e-12) {
            break;
        }
        let i = kept.remove(pos);
        let m = &members[i];
        for (s, d) in sum.iter_mut().zip(m.delta) {
            *s -= m.weight * *d as f64;
        }
        current = l;
        rejected.push(i);
    }
    Some(Screened {
        rejected,
        loss_all,
        loss_kept: current,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loss: squared distance to a target model.
    fn dist(target: &[f32]) -> impl FnMut(&[f32]) -> Option<f64> + '_ {
        move |w| {
            Some(
                w.iter()
                    .zip(target)
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum(),
            )
        }
    }

    #[test]
    fn a_member_pulling_away_from_the_target_is_left_out() {
        let w = [0.0f32; 3];
        let target = [1.0f32, 1.0, 1.0];
        // Three specialists, each moving a different coordinate towards the
        // target (they do not agree with each other), and a liar.
        let a = [1.0f32, 0.0, 0.0];
        let b = [0.0f32, 1.0, 0.0];
        let c = [0.0f32, 0.0, 1.0];
        let liar = [-1.0f32, -1.0, -1.0];
        let members: Vec<Candidate> = [&a, &b, &c, &liar]
            .iter()
            .map(|d| Candidate {
                weight: 1.0,
                delta: &d[..],
            })
            .collect();
        let s = screen(&w, &members, 1.0, max_rejected(4, 0.34), dist(&target)).unwrap();
        assert_eq!(s.rejected, vec![3]);
        assert!(s.loss_kept < s.loss_all);
    }

    #[test]
    fn honest_specialists_are_all_kept() {
        let w = [0.0f32; 3];
        let target = [1.0f32, 1.0, 1.0];
        let a = [1.0f32, 0.0, 0.0];
        let b = [0.0f32, 1.0, 0.0];
        let c = [0.0f32, 0.0, 1.0];
        let members: Vec<Candidate> = [&a, &b, &c]
            .iter()
            .map(|d| Candidate {
                weight: 1.0,
                delta: &d[..],
            })
            .collect();
        let s = screen(&w, &members, 1.0, 1, dist(&target)).unwrap();
        assert!(s.rejected.is_empty(), "{s:?}");
    }

    #[test]
    fn never_half_the_round() {
        assert_eq!(max_rejected(2, 0.5), 0);
        assert_eq!(max_rejected(3, 0.34), 1);
        assert_eq!(max_rejected(4, 0.34), 1);
        assert_eq!(max_rejected(4, 0.5), 1);
        assert_eq!(max_rejected(10, 0.34), 3);
        assert_eq!(max_rejected(10, 0.0), 0);
    }

    #[test]
    fn a_round_with_an_unscorable_candidate_is_left_to_the_non_finite_check() {
        let w = [0.0f32; 1];
        let (a, b, c) = ([3e38f32], [-3e38f32], [0.01f32]);
        let members: Vec<Candidate> = [&a, &b, &c]
            .iter()
            .map(|d| Candidate {
                weight: 1.0,
                delta: &d[..],
            })
            .collect();
        let finite = |m: &[f32]| {
            m.iter()
                .all(|x| x.abs() < 1e30)
                .then_some(m[0].abs() as f64)
        };
        let s = screen(&w, &members, 1.0, 1, finite).unwrap();
        assert!(s.rejected.is_empty(), "{s:?}");
    }

    #[test]
    fn an_unscorable_model_decides_nothing() {
        let w = [0.0f32; 2];
        let a = [1.0f32, 0.0];
        let members = [Candidate {
            weight: 1.0,
            delta: &a,
        }];
        assert!(screen(&w, &members, 1.0, 1, |_| None).is_none());
        let short = [1.0f32];
        let members = [Candidate {
            weight: 1.0,
            delta: &short,
        }];
        assert!(screen(&w, &members, 1.0, 1, |_| Some(0.0)).is_none());
    }
}
