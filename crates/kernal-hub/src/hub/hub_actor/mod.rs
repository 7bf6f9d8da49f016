//! The Hub actor: owns every model's state and the set of connected sessions,
//! admits trainers, accepts updates (acking only after the Persister made them
//! durable), folds buffers into new versions and broadcasts them. The actor,
//! its state and shared plumbing are in `core.rs`; each group of messages
//! has its own file: [`join`] (hello, join, leave), [`updates`], [`fold`] (making a
//! version), [`refusals`] (refusing an update, or answering a resend of an
//! accepted one as a duplicate), [`rollback`] (the request in `rollback_message.rs`), [`learning`] (normalisation, evaluation),
//! [`admin`] (models, revocation, config, shutdown), [`delete`] (deleting
//! a model), [`evaluators`] (the evaluator role), [`status`], [`kernel`] (scoring the built-in language model).

mod admin;
mod core;
mod delete;
mod evaluators;
mod fold;
mod join;
mod kernel;
mod learning;
mod refusals;
mod rollback;
mod rollback_message;
mod status;
mod updates;

pub use self::core::{Hub, HubParts, ToSession, TrainerLive};
pub use admin::*;
pub use delete::*;
pub use evaluators::*;
pub use join::*;
pub use learning::*;
pub use rollback_message::*;
pub use status::*;
pub use updates::*;

pub use crate::protocol::Refusal;

// `fold.rs` takes the names it uses through `use super::*` (it is rewritten
// on another branch); these keep every name that glob saw in scope, so it
// compiles unchanged. Nothing else here uses them.
#[allow(unused_imports)]
use self::core::{persisted, EvaluatorEntry, Evaluators, PersistReply, SessionEntry, FEED_BATCH};
#[allow(unused_imports)]
use super::version_metrics::{EvalFigures, RollbackFigures, VersionMetrics};
#[allow(unused_imports)]
use std::collections::{BTreeMap, HashMap};
#[allow(unused_imports)]
use std::sync::Arc;
#[allow(unused_imports)]
use std::time::{Duration, Instant};

#[allow(unused_imports)]
use actix::prelude::*;
#[allow(unused_imports)]
use bytes::Bytes;
#[allow(unused_imports)]
use serde::Serialize;

#[allow(unused_imports)]
use crate::aggregation::AggregationSettings;
#[allow(unused_imports)]
use crate::config::Config;
#[allow(unused_imports)]
use crate::data::Dataset;
#[allow(unused_imports)]
use crate::db::{BlobStore, DbPool};
#[allow(unused_imports)]
use crate::db::{EvalRow, InsertOutcome, ModelRow, NewHarnessRun, TrainerRow};
#[allow(unused_imports)]
use crate::error::DbError;
#[allow(unused_imports)]
use crate::hub::encoded::Encoded;
#[allow(unused_imports)]
use crate::hub::metrics::{self, HubEvent, MetricsAggregator};
#[allow(unused_imports)]
use crate::hub::outbox::Outbox;
#[allow(unused_imports)]
use crate::hub::persister::{self, Persister, UpdateRecord};
#[allow(unused_imports)]
use crate::hub::state::{
    self, Accumulator, Admission, Arrival, Buffered, Fold, FoldInput, ModelState, NormState,
    Poisoned, TrainerInfo, Vote, Waiting,
};
#[allow(unused_imports)]
use crate::model::Evaluation;
#[allow(unused_imports)]
use crate::protocol::{
    ErrorCode, FeatureStats, ModelLayout, Normalisation, ServerMessage, TensorSpec,
};
