//! Packet sources: capture files (from `flowtable-capture`), the synthetic
//! generator, live interfaces and DPDK ports.

pub use flowtable_capture::{pcap, CaptureLosses, PacketSource, RawPacket, SourceError};

pub mod afpacket;
#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod synth;
