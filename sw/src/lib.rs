//! The software flowtable: packet parsing into flow keys, the flow table
//! with its per-flow state and counters, TCP lifecycle and expiry timers,
//! and the context applications attach to flows.

pub mod context;
pub mod index;
pub mod key;
pub mod memory;
pub mod packet;
pub mod parse;
pub mod pipeline;
pub mod ports;
pub mod table;
pub mod tcp;
pub mod timer;
pub mod wire;

pub use key::{Direction, FlowKey};
pub use packet::{Fragment, LinkType, PacketInfo, SkipCounters, SkipReason};
pub use ports::{Ingress, PortMap};
pub use table::{
    AdoptError, AdoptedFlow, DirCounters, Flow, FlowId, FlowTable, Framing, FullPolicy, Lookup, Stage, TableConfig,
    Timeouts,
};
pub use tcp::TcpState;
