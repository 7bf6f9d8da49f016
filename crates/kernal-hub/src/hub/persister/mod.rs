//! The Persister: the one SQLite writer, on a SyncArbiter thread so diesel's
//! blocking calls never run on an async executor. Messages are handled in the
//! order they are sent, which is what makes `Flush` a barrier. The actor is in
//! `core.rs`, the ledger's messages in `ledger.rs`, the rest in `records.rs`
//! and `evaluators.rs`.

mod core;
mod evaluators;
mod ledger;
mod records;

pub use self::core::Persister;
pub use evaluators::*;
pub use ledger::*;
pub use records::*;
