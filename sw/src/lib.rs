//! The software flowtable: packet parsing into flow keys, the flow table
//! with its per-flow state and counters, TCP lifecycle and expiry timers.

pub mod key;
pub mod packet;
pub mod parse;
pub mod wire;

pub use key::{Direction, FlowKey};
pub use packet::{Fragment, LinkType, PacketInfo, SkipCounters, SkipReason};
