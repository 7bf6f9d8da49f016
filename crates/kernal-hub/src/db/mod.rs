//! SQLite storage through diesel. Every function here is blocking: the hub
//! calls writes from the Persister (a SyncArbiter thread) and reads inside
//! `web::block`, never on an async executor thread.

pub mod acked;
pub mod blobs;
mod conn;
mod deletions;
mod evaluators;
pub mod health;
mod reads;
mod rows;
pub mod schema;
mod time;
mod writes;

pub use deletions::*;
pub use evaluators::*;
pub use reads::*;
pub use rows::*;
pub use writes::*;

pub use blobs::BlobStore;
pub use conn::{
    connect, make_private, max_update_id, pool, quick_check, run_migrations, set_cache_kib,
    start_checkpointer, wal_checkpoint, DbPool, DEFAULT_CACHE_KIB, MIGRATIONS,
};
pub use health::StorageHealth;
pub use time::now;

#[cfg(test)]
mod tests;
