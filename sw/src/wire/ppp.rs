//! PPP frames as pcap's LINKTYPE_PPP stores them (RFC 1661, RFC 1662): an
//! optional address/control pair `ff 03`, then a protocol field of one
//! byte (when compressed: the byte is odd) or two.
//!
//! Some captures of Cisco serial links are written as LINKTYPE_PPP though
//! they hold Cisco HDLC frames; their first byte is a Cisco HDLC address
//! (0x0f or 0x8f), never a valid PPP start, so [`is_cisco_hdlc`] tells
//! them apart as libpcap and Wireshark do.

use super::{ethertype, Error, Result};

pub const ADDRESS: u8 = 0xff;
pub const CONTROL: u8 = 0x03;

/// PPP protocol numbers of the network layers the parser follows.
pub mod protocol {
    pub const IPV4: u16 = 0x0021;
    pub const IPV6: u16 = 0x0057;
    pub const MPLS_UNICAST: u16 = 0x0281;
    pub const MPLS_MULTICAST: u16 = 0x0283;
}

/// The EtherType that stands for a PPP protocol, for the protocols the
/// parser follows.
pub fn ethertype_of(protocol: u16) -> Option<u16> {
    Some(match protocol {
        protocol::IPV4 => ethertype::IPV4,
        protocol::IPV6 => ethertype::IPV6,
        protocol::MPLS_UNICAST => ethertype::MPLS_UNICAST,
        protocol::MPLS_MULTICAST => ethertype::MPLS_MULTICAST,
        _ => return None,
    })
}

/// Whether a LINKTYPE_PPP frame is in fact Cisco HDLC.
pub fn is_cisco_hdlc(frame: &[u8]) -> bool {
    matches!(frame.first(), Some(&super::cisco_hdlc::ADDRESS_UNICAST) | Some(&super::cisco_hdlc::ADDRESS_BROADCAST))
}

#[derive(Debug, Clone, Copy)]
pub struct PppFrame<'a> {
    buffer: &'a [u8],
    protocol: u16,
    header_len: usize,
}

impl<'a> PppFrame<'a> {
    /// Reads the optional address/control and the protocol field.
    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        let start = if buffer.first() == Some(&ADDRESS) {
            match buffer.get(1) {
                None => return Err(Error::Truncated),
                Some(&CONTROL) => 2,
                Some(_) => return Err(Error::Malformed),
            }
        } else {
            0
        };
        let first = *buffer.get(start).ok_or(Error::Truncated)?;
        let (protocol, len) = if first & 1 == 1 {
            // Protocol-field compression: a single odd byte.
            (u16::from(first), 1)
        } else {
            let second = *buffer.get(start + 1).ok_or(Error::Truncated)?;
            // The low byte of a full protocol number is odd (RFC 1661 2).
            if second & 1 == 0 {
                return Err(Error::Malformed);
            }
            (u16::from_be_bytes([first, second]), 2)
        };
        Ok(PppFrame { buffer, protocol, header_len: start + len })
    }

    pub fn protocol(&self) -> u16 {
        self.protocol
    }

    /// Address/control (when present) and protocol field.
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[self.header_len..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::assert_truncations;

    #[test]
    fn with_and_without_address_and_control() {
        let full = PppFrame::new_checked(&[0xff, 0x03, 0x00, 0x21, 0x45]).unwrap();
        assert_eq!((full.protocol(), full.header_len(), full.payload()), (0x0021, 4, &[0x45][..]));
        let bare = PppFrame::new_checked(&[0x00, 0x57, 0x60]).unwrap();
        assert_eq!((bare.protocol(), bare.header_len()), (protocol::IPV6, 2));
        let compressed = PppFrame::new_checked(&[0x21, 0x45]).unwrap();
        assert_eq!((compressed.protocol(), compressed.header_len()), (protocol::IPV4, 1));
    }

    #[test]
    fn malformed_fields() {
        // Address without the control byte.
        assert_eq!(PppFrame::new_checked(&[0xff, 0x00, 0x00, 0x21]).err(), Some(Error::Malformed));
        // An even low byte is no protocol number.
        assert_eq!(PppFrame::new_checked(&[0x00, 0x20]).err(), Some(Error::Malformed));
    }

    #[test]
    fn maps_network_protocols_to_ethertypes() {
        assert_eq!(ethertype_of(protocol::IPV4), Some(ethertype::IPV4));
        assert_eq!(ethertype_of(protocol::IPV6), Some(ethertype::IPV6));
        assert_eq!(ethertype_of(protocol::MPLS_UNICAST), Some(ethertype::MPLS_UNICAST));
        // LCP is PPP's own control traffic.
        assert_eq!(ethertype_of(0xc021), None);
    }

    #[test]
    fn tells_cisco_hdlc_apart() {
        assert!(is_cisco_hdlc(&[0x0f, 0x00, 0x08, 0x00]));
        assert!(is_cisco_hdlc(&[0x8f, 0x00, 0x80, 0x35]));
        assert!(!is_cisco_hdlc(&[0xff, 0x03, 0x00, 0x21]));
        assert!(!is_cisco_hdlc(&[]));
    }

    #[test]
    fn every_shorter_prefix_is_truncated() {
        assert_truncations(&[0xff, 0x03, 0x00, 0x21], PppFrame::new_checked);
        assert_truncations(&[0x00, 0x21], PppFrame::new_checked);
    }
}
