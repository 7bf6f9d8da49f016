//! The built-in `kernel` model: a small byte-level language model of C
//! source (candle), its corpus (Linux 6.1 excerpts or a member's own tree),
//! local training, evaluation in bits per byte and sampling.

pub mod checkpoint;
pub mod corpus;
pub mod model;
pub mod sample;
pub mod train;

pub use model::{KernelError, KernelSpec, DEFAULT_SPEC};
pub use train::{BitsPerByte, KernelTrainSettings};
