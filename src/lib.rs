//! flowtable: the pieces the binary wires together — packet sources, the
//! replay driver and the daemon — kept in a library so tests reach them.

pub mod args;
pub mod backend;
pub mod bench;
#[cfg(feature = "dpdk")]
pub mod bench_rte_hash;
pub mod bench_stages;
pub mod client;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod export;
pub mod manual;
pub mod replay;
pub mod report;
pub mod runtime;
pub mod source;
pub mod stall;
