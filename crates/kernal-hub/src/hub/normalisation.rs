//! A model's pooled input normalisation changing state: the freeze (robust
//! to outlier reports, see `protocol::robust_stats`) and an administrator's
//! reset back to pooling after a bad freeze.

use crate::hub::state::NormState;
use crate::protocol::{RobustFreeze, StatsPool};

impl NormState {
    /// Freezes a pool: outlier reports are left out and counts capped, or
    /// no normalisation when nobody reported. `None`: nothing changed (not
    /// pooling, or the reports disagree with no majority and `force` is
    /// false, so the pool waits for more reports or its deadline; or it was
    /// reset and nobody has reported yet).
    pub fn freeze(&mut self, force: bool) -> Option<RobustFreeze> {
        let NormState::Pooling { pool } = self else {
            return None;
        };
        if pool.after_reset && pool.reports.is_empty() {
            return None;
        }
        let verdict = pool.freeze_robust();
        if verdict.undecided && !force {
            return None;
        }
        *self = match verdict.normalisation.clone() {
            Some(normalisation) => NormState::Frozen { normalisation },
            None => NormState::Off,
        };
        Some(verdict)
    }

    /// Back to pooling, with no report: frozen statistics are dropped and a
    /// pool's reports too (trainers send fresh ones). `None` for a model
    /// without normalisation (nothing tells how many features it has, and
    /// its trainers never expected statistics to be asked of them).
    pub fn reset(&mut self) -> Option<()> {
        let features = match self {
            NormState::Off => return None,
            NormState::Pooling { pool } => pool.features,
            NormState::Frozen { normalisation } => normalisation.features,
        };
        let mut pool = StatsPool::new(features);
        pool.after_reset = true;
        *self = NormState::Pooling { pool };
        Some(())
    }
}
