//! The server side of RFC 6455 for the trainer endpoint, written for large
//! binary messages shared by many connections, on a port anyone can reach.
//!
//! `actix-web-actors` encodes every outgoing message into each connection's
//! own buffer (a 40 MB model sent to 50 trainers is 2 GB of copies held at
//! once) and reads every incoming frame whole with no limit across
//! connections. Here the outgoing side ([`crate::hub::outbox`]) hands the
//! dispatcher slices of one shared buffer, and the incoming side
//! ([`reader`]) asks a hub-wide byte budget ([`budget`]) before it holds a
//! large or fragmented message, so a burst of big updates waits in the
//! kernel's socket buffers instead of in the heap.

pub mod budget;
pub mod frame;
pub mod reader;
pub mod spool;

pub use budget::{Budget, Claim};
pub use frame::{
    apply_mask, frame_header, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT,
};
pub use reader::{Activity, FrameReader, Incoming, ReadError, ReaderLimits};
