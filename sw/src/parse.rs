//! Packet parsing entry point: link layer to flow key. (Being written.)

use crate::packet::{LinkType, PacketInfo, SkipReason};

/// Parses one frame into the summary the flow table needs.
pub fn parse_packet(
    _link: LinkType,
    _frame: &[u8],
    _wire_len: u32,
    _ingress: u8,
) -> Result<PacketInfo, SkipReason> {
    Err(SkipReason::UnsupportedLinkType)
}
