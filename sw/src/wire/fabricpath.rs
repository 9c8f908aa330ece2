//! Cisco FabricPath (EtherType 0x8903): an outer Ethernet header whose
//! addresses name switches, the EtherType, a 2-byte FTag/TTL, then the
//! whole inner Ethernet frame as the host sent it. 16 bytes precede the
//! inner frame.
//!
//! The view covers the FabricPath header from the start of the frame.

use super::{read_u16, Error, Result};

/// Outer addresses, EtherType and FTag/TTL.
pub const HEADER_LEN: usize = 16;

#[derive(Debug, Clone, Copy)]
pub struct FabricPathHeader<'a> {
    buffer: &'a [u8],
}

impl<'a> FabricPathHeader<'a> {
    pub const fn new_unchecked(buffer: &'a [u8]) -> Self {
        FabricPathHeader { buffer }
    }

    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        if buffer.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(FabricPathHeader { buffer })
    }

    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer, 12)
    }

    /// Forwarding tag: the multidestination tree or topology (10 bits).
    pub fn ftag(&self) -> u16 {
        read_u16(self.buffer, 14) >> 6
    }

    pub fn ttl(&self) -> u8 {
        self.buffer[15] & 0x3f
    }

    /// The inner Ethernet frame.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{assert_truncations, ethertype};

    // The first 17 bytes of a FabricPath frame in ajp.pcap.
    const FRAME: [u8; 17] = [2, 0x0a, 0xbd, 0, 0, 0, 2, 0x0a, 0xbc, 0, 0, 0, 0x89, 0x03, 0x40, 0x20, 0x00];

    #[test]
    fn reads_header() {
        let h = FabricPathHeader::new_checked(&FRAME).unwrap();
        assert_eq!(h.ethertype(), ethertype::FABRICPATH);
        assert_eq!((h.ftag(), h.ttl()), (0x100, 0x20));
        assert_eq!(h.payload(), &[0x00]);
    }

    #[test]
    fn every_shorter_prefix_is_truncated() {
        assert_truncations(&FRAME[..16], FabricPathHeader::new_checked);
    }
}
