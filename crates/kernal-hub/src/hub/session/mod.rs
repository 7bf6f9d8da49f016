//! TrainerSession: one actor per trainer (or evaluator) WebSocket. Framing
//! lives in [`crate::hub::ws`]; message parsing and validation are plain
//! functions in [`parse`] and [`eval`], tested without actix. The actor's
//! parts are split by what they handle: [`actor`] (state, dispatch,
//! heartbeat), [`hello`], [`update`], [`eval`], [`evaluator`] and
//! [`refusal`].

mod actor;
mod eval;
mod evaluator;
mod hello;
mod parse;
mod phase;
mod refusal;
mod update;

pub use actor::{Connection, HandshakeSlot, SessionLimits, TrainerSession};
pub use eval::validate_eval;
pub use parse::{parse_client_message, validate_update_header, ParseRefusal, UpdateHeader};

pub use crate::protocol::Refusal;
