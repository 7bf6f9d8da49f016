pub mod data;
pub mod net;
