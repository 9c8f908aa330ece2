//! Raw bindings to the parts of DPDK that flowtable's rte_flow backend
//! and DPDK packet source use: EAL start-up, ethdev port setup, the
//! rte_flow API (sync and async/template), mbufs and mempools.
//!
//! Generated at build time by bindgen from the installed libdpdk headers;
//! the `ft_*` functions are a small C shim over DPDK's static inline
//! datapath functions (rx/tx burst, mbuf accessors) and `rte_errno`.

//!
//! Empty unless the `bind` feature is on (flowtable's `dpdk` feature).

#![allow(non_upper_case_globals, non_camel_case_types, non_snake_case, dead_code)]
#![allow(clippy::all)]
#![allow(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "bind")]
include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// The libdpdk version the bindings were generated from (pkg-config's).
#[cfg(feature = "bind")]
pub const DPDK_VERSION: &str = env!("DPDK_VERSION");
