//! Ethernet II frame header (destination, source, EtherType).
//!
//! A type field below 0x0600 is an 802.3 length, not an EtherType; such
//! frames carry LLC/SNAP, never IP directly, and the parser counts them as
//! non-IP.

use super::{read_u16, Error, Result};

pub const HEADER_LEN: usize = 14;

/// Smallest value of the type field that is an EtherType (IEEE 802.3 clause 3.2.6).
pub const MIN_ETHERTYPE: u16 = 0x0600;

#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<'a> {
    buffer: &'a [u8],
}

impl<'a> EthernetFrame<'a> {
    pub const fn new_unchecked(buffer: &'a [u8]) -> Self {
        EthernetFrame { buffer }
    }

    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        if buffer.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(EthernetFrame { buffer })
    }

    pub fn dst_addr(&self) -> [u8; 6] {
        self.mac(0)
    }

    pub fn src_addr(&self) -> [u8; 6] {
        self.mac(6)
    }

    fn mac(&self, at: usize) -> [u8; 6] {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.buffer[at..at + 6]);
        mac
    }

    /// The type/length field: an EtherType when `>= MIN_ETHERTYPE`.
    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer, 12)
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::assert_truncations;

    const FRAME: [u8; 16] = [
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, // dst
        0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, // src
        0x08, 0x00, // IPv4
        0x45, 0x00,
    ];

    #[test]
    fn reads_fields() {
        let f = EthernetFrame::new_checked(&FRAME).unwrap();
        assert_eq!(f.dst_addr(), [0x00, 0x11, 0x22, 0x33, 0x44, 0x55]);
        assert_eq!(f.src_addr(), [0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb]);
        assert_eq!(f.ethertype(), 0x0800);
        assert_eq!(f.payload(), &[0x45, 0x00]);
    }

    #[test]
    fn header_alone_has_empty_payload() {
        let f = EthernetFrame::new_checked(&FRAME[..HEADER_LEN]).unwrap();
        assert!(f.payload().is_empty());
    }

    #[test]
    fn every_shorter_prefix_is_truncated() {
        assert_truncations(&FRAME[..HEADER_LEN], EthernetFrame::new_checked);
    }
}
