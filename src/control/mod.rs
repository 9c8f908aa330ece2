//! The control protocol (`flowtable-control`) and the daemon's server of it.

pub use flowtable_control::*;

pub mod server;
