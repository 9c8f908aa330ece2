//! What the parser extracts from one packet, and why a packet was skipped.

use crate::key::{Direction, FlowKey};
use serde::Serialize;

/// Link-layer framing of a capture or interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    Ethernet,
    /// Raw IP, version from the first nibble (pcap RAW, IPV4, IPV6).
    RawIp,
    /// Linux cooked capture v1 (SLL).
    LinuxSll,
    /// Linux cooked capture v2 (SLL2).
    LinuxSll2,
    /// BSD loopback: a 4-byte address family in host order of the writer.
    Null,
    /// OpenBSD loopback: a 4-byte address family in network order.
    Loop,
    /// PPP, with or without address and control (pcap PPP). Frames that
    /// start with a Cisco HDLC address are read as Cisco HDLC.
    Ppp,
    /// Cisco HDLC (pcap C_HDLC).
    CiscoHdlc,
    /// Per-Packet Information header, then a frame of the link type it names.
    Ppi,
}

impl LinkType {
    /// Maps a pcap LINKTYPE_ value; `None` for framings we don't parse.
    pub fn from_pcap(linktype: u32) -> Option<LinkType> {
        Some(match linktype {
            1 => LinkType::Ethernet,
            0 => LinkType::Null,
            108 => LinkType::Loop,
            12 | 14 | 101 | 228 | 229 => LinkType::RawIp,
            113 => LinkType::LinuxSll,
            276 => LinkType::LinuxSll2,
            9 => LinkType::Ppp,
            104 => LinkType::CiscoHdlc,
            192 => LinkType::Ppi,
            _ => return None,
        })
    }
}

/// Fragment position of an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not a fragment.
    Whole,
    /// First fragment (offset 0, more fragments): carries the L4 header.
    First { id: u32 },
    /// A later fragment: no L4 header, attributed through its IP id.
    Later { id: u32 },
}

/// The parsed summary of one packet; everything the flow table needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    /// Canonical flow key. For `Fragment::Later` the ports are zero.
    pub key: FlowKey,
    pub dir: Direction,
    /// The port the packet arrived on; `key.zone` is its zone.
    pub port: u8,
    /// Length on the wire (the capture's original length, not the snap).
    pub wire_len: u32,
    /// TCP flags byte (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10), 0 otherwise.
    pub tcp_flags: u8,
    /// ICMP and ICMPv6: the message's type and code (the key holds only
    /// the echo identifier); `[0, 0]` for other protocols.
    pub icmp: [u8; 2],
    pub fragment: Fragment,
    /// Offset of the L4 payload in the frame (0 when unknown), for DPI hooks.
    pub payload_offset: u16,
    /// Bytes of the frame before the (outer) IP header: the link layer with
    /// its VLAN tags and encapsulations (saturating at 255). With
    /// `trailer`, what turns frame bytes into IP octets (header and
    /// payload, as IPFIX's octetDeltaCount counts them).
    pub l2_len: u8,
    /// Bytes after the IP packet's own length (Ethernet padding of short
    /// frames, a captured FCS), saturating; 0 when the IP length covers
    /// the frame's rest.
    pub trailer: u16,
}

impl PacketInfo {
    /// A whole (unfragmented) packet of `wire_len` bytes arriving on
    /// `port`, with no link-layer facts: what generators, benches and
    /// tests feed the table.
    pub fn whole(key: FlowKey, dir: Direction, port: u8, wire_len: u32, tcp_flags: u8) -> PacketInfo {
        PacketInfo {
            key,
            dir,
            port,
            wire_len,
            tcp_flags,
            icmp: [0; 2],
            fragment: Fragment::Whole,
            payload_offset: 0,
            l2_len: 0,
            trailer: 0,
        }
    }

    /// IP octets (header and payload) of this packet.
    pub fn ip_len(&self) -> u32 {
        self.wire_len.saturating_sub(u32::from(self.l2_len) + u32::from(self.trailer))
    }
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Why a packet produced no flow; each reason is counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    UnsupportedLinkType,
    TruncatedLink,
    /// Not IPv4/IPv6 (ARP, LLDP, PPP control, MPLS pseudowires, ...).
    NonIp,
    TruncatedIp,
    BadIpVersion,
    BadIpHeader,
    TruncatedTransport,
    BadTransportHeader,
}

impl SkipReason {
    pub const ALL: [SkipReason; 8] = [
        SkipReason::UnsupportedLinkType,
        SkipReason::TruncatedLink,
        SkipReason::NonIp,
        SkipReason::TruncatedIp,
        SkipReason::BadIpVersion,
        SkipReason::BadIpHeader,
        SkipReason::TruncatedTransport,
        SkipReason::BadTransportHeader,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::UnsupportedLinkType => "unsupported-link-type",
            SkipReason::TruncatedLink => "truncated-link",
            SkipReason::NonIp => "non-ip",
            SkipReason::TruncatedIp => "truncated-ip",
            SkipReason::BadIpVersion => "bad-ip-version",
            SkipReason::BadIpHeader => "bad-ip-header",
            SkipReason::TruncatedTransport => "truncated-transport",
            SkipReason::BadTransportHeader => "bad-transport-header",
        }
    }

    pub fn index(self) -> usize {
        SkipReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// Counters of skipped packets by reason; indexable without allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkipCounters {
    pub counts: [u64; SkipReason::ALL.len()],
}

impl SkipCounters {
    #[inline]
    pub fn add(&mut self, reason: SkipReason) {
        self.counts[reason as usize] += 1;
    }
    pub fn get(&self, reason: SkipReason) -> u64 {
        self.counts[reason as usize]
    }
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
    pub fn iter(&self) -> impl Iterator<Item = (SkipReason, u64)> + '_ {
        SkipReason::ALL.iter().map(|r| (*r, self.counts[*r as usize]))
    }
}
