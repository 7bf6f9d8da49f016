//! What the hub and every trainer share, and nothing of the server: the wire
//! protocol (messages, error codes, tensor frames, input normalisation), the
//! reference network and the built-in data sets. The hub links it for its
//! protocol and its own evaluation; trainers link it through `kernal-client`.
//! No actix, no database.

pub mod data;
pub mod kernel;
pub mod model;
pub mod pem;
pub mod protocol;
