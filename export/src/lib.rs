//! Flow records out of the host. Every flow ends in one
//! [`FlowRecord`](flowtable_offload::FlowRecord); this crate turns records
//! into IPFIX messages ([`ipfix`]: RFC 7011 messages of RFC 5103 biflow
//! records, templates for IPv4 and IPv6) and hands them to any number of
//! sinks ([`sink`]), each behind its own bounded queue and thread, so a
//! slow or absent collector never holds up the packet path or the other
//! sinks, and what a sink drops is counted.
//!
//! The configuration schema is not known here: the root package turns its
//! `export` section into [`sink::IpfixConfig`].

pub mod ipfix;
pub mod sink;

pub use ipfix::{Encoder, ExportFacts, IpfixError, MessageBuilder, DOCUMENTATION_PEN, REVERSE_PEN};
pub use sink::{IpfixConfig, QueueMode, SinkStatus, Sinks, Transport};
