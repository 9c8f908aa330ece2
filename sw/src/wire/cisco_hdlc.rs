//! Cisco HDLC (LINKTYPE_C_HDLC): an address byte, a control byte of 0 and
//! an EtherType, 4 bytes in all.

use super::{read_u16, Error, Result};

pub const HEADER_LEN: usize = 4;
pub const ADDRESS_UNICAST: u8 = 0x0f;
pub const ADDRESS_BROADCAST: u8 = 0x8f;
/// EtherType of SLARP, the keepalive and address protocol of these links.
pub const SLARP: u16 = 0x8035;

#[derive(Debug, Clone, Copy)]
pub struct CiscoHdlcHeader<'a> {
    buffer: &'a [u8],
}

impl<'a> CiscoHdlcHeader<'a> {
    pub const fn new_unchecked(buffer: &'a [u8]) -> Self {
        CiscoHdlcHeader { buffer }
    }

    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        if buffer.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(CiscoHdlcHeader { buffer })
    }

    pub fn address(&self) -> u8 {
        self.buffer[0]
    }

    pub fn control(&self) -> u8 {
        self.buffer[1]
    }

    /// EtherType of the payload.
    pub fn protocol(&self) -> u16 {
        read_u16(self.buffer, 2)
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{assert_truncations, ethertype};

    #[test]
    fn reads_header() {
        let h = CiscoHdlcHeader::new_checked(&[0x0f, 0x00, 0x08, 0x00, 0x45]).unwrap();
        assert_eq!((h.address(), h.control(), h.protocol()), (ADDRESS_UNICAST, 0, ethertype::IPV4));
        assert_eq!(h.payload(), &[0x45]);
        let slarp = CiscoHdlcHeader::new_checked(&[0x8f, 0x00, 0x80, 0x35]).unwrap();
        assert_eq!((slarp.address(), slarp.protocol()), (ADDRESS_BROADCAST, SLARP));
    }

    #[test]
    fn every_shorter_prefix_is_truncated() {
        assert_truncations(&[0x0f, 0x00, 0x88, 0x47], CiscoHdlcHeader::new_checked);
    }
}
