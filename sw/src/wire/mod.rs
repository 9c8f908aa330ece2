//! Typed zero-copy views over protocol headers, one module per protocol.
//!
//! Every view wraps a borrowed byte slice. `new_checked` verifies that the
//! slice holds the whole header and that the header's own length fields are
//! consistent; after that the accessors index without further checks and
//! cannot go out of bounds. `new_unchecked` skips the verification for
//! callers that have already done it. The views are read-only: the
//! flowtable classifies packets, it never rewrites them.

pub mod cisco_hdlc;
pub mod ethernet;
pub mod fabricpath;
pub mod icmp;
pub mod ipv4;
pub mod ipv6;
pub mod linux_sll;
pub mod mpls;
pub mod null;
pub mod ppi;
pub mod ppp;
pub mod pppoe;
pub mod sctp;
pub mod tcp;
pub mod udp;
pub mod vlan;

use core::fmt;

/// Why a buffer could not be viewed as a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The buffer ends before the header does (cut by the snap length or
    /// simply too short).
    Truncated,
    /// A length or type field contradicts the header itself, e.g. an IPv4
    /// header length below 20 bytes.
    Malformed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("truncated header"),
            Error::Malformed => f.write_str("malformed header"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = core::result::Result<T, Error>;

/// EtherType values the parser dispatches on.
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const VLAN: u16 = 0x8100;
    pub const IPV6: u16 = 0x86dd;
    /// 802.1ad service tag (outer tag of QinQ).
    pub const QINQ: u16 = 0x88a8;
    /// Pre-standard QinQ outer tag, still sent by some switches.
    pub const QINQ_LEGACY: u16 = 0x9100;
    pub const MPLS_UNICAST: u16 = 0x8847;
    pub const MPLS_MULTICAST: u16 = 0x8848;
    pub const PPPOE_DISCOVERY: u16 = 0x8863;
    pub const PPPOE_SESSION: u16 = 0x8864;
    /// Cisco FabricPath: an inner Ethernet frame follows.
    pub const FABRICPATH: u16 = 0x8903;
}

/// IP protocol numbers the parser dispatches on.
pub mod ip_proto {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6_ROUTING: u8 = 43;
    pub const IPV6_FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const IPV6_NO_NEXT: u8 = 59;
    pub const IPV6_DEST_OPTS: u8 = 60;
    pub const SCTP: u8 = 132;
    pub const UDP_LITE: u8 = 136;
}

#[inline]
pub(crate) fn read_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([buf[at], buf[at + 1]])
}

#[inline]
pub(crate) fn read_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Asserts that a view accepts `bytes` and rejects every shorter prefix of it
/// as truncated. Shared by the per-protocol tests.
#[cfg(test)]
pub(crate) fn assert_truncations<'a, T>(bytes: &'a [u8], check: impl Fn(&'a [u8]) -> Result<T>) {
    assert!(check(bytes).is_ok(), "full header rejected");
    for cut in 0..bytes.len() {
        assert_eq!(check(&bytes[..cut]).err(), Some(Error::Truncated), "prefix of {cut} bytes not reported truncated");
    }
}
