//! BSD loopback headers: a 4-byte address family before the IP packet.
//!
//! LINKTYPE_NULL stores the family in the byte order of the machine that
//! wrote the capture, which the reader doesn't know; family values fit in
//! 16 bits, so a value with upper bits set was written in the other order.
//! LINKTYPE_LOOP (OpenBSD) always uses network order. The IPv6 family number
//! differs between the BSDs; all of them are recognised.

use super::{Error, Result};

pub const HEADER_LEN: usize = 4;

pub const AF_INET: u32 = 2;
/// AF_INET6 on NetBSD, OpenBSD and BSD/OS.
pub const AF_INET6_BSD: u32 = 24;
pub const AF_INET6_FREEBSD: u32 = 28;
pub const AF_INET6_DARWIN: u32 = 30;

/// What an address family says follows the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Ipv4,
    Ipv6,
    Other(u32),
}

impl Family {
    pub fn from_af(af: u32) -> Family {
        match af {
            AF_INET => Family::Ipv4,
            AF_INET6_BSD | AF_INET6_FREEBSD | AF_INET6_DARWIN => Family::Ipv6,
            other => Family::Other(other),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct LoopbackHeader<'a> {
    buffer: &'a [u8],
}

impl<'a> LoopbackHeader<'a> {
    pub const fn new_unchecked(buffer: &'a [u8]) -> Self {
        LoopbackHeader { buffer }
    }

    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        if buffer.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(LoopbackHeader { buffer })
    }

    fn raw(&self) -> [u8; 4] {
        [self.buffer[0], self.buffer[1], self.buffer[2], self.buffer[3]]
    }

    /// The family of a LINKTYPE_NULL header, in whichever byte order it was
    /// written.
    pub fn null_family(&self) -> u32 {
        let little = u32::from_le_bytes(self.raw());
        if little & 0xffff_0000 != 0 {
            little.swap_bytes()
        } else {
            little
        }
    }

    /// The family of a LINKTYPE_LOOP header (network order).
    pub fn loop_family(&self) -> u32 {
        u32::from_be_bytes(self.raw())
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::assert_truncations;

    #[test]
    fn null_family_in_either_byte_order() {
        for af in [AF_INET, AF_INET6_BSD, AF_INET6_FREEBSD, AF_INET6_DARWIN, 17] {
            let le = af.to_le_bytes();
            let be = af.to_be_bytes();
            assert_eq!(LoopbackHeader::new_checked(&le).unwrap().null_family(), af);
            assert_eq!(LoopbackHeader::new_checked(&be).unwrap().null_family(), af);
        }
    }

    #[test]
    fn loop_family_is_network_order() {
        let h = LoopbackHeader::new_checked(&[0, 0, 0, 24, 0x60]).unwrap();
        assert_eq!(h.loop_family(), AF_INET6_BSD);
        assert_eq!(h.payload(), &[0x60]);
        // Little-endian bytes are not reinterpreted for LOOP.
        let h = LoopbackHeader::new_checked(&[2, 0, 0, 0]).unwrap();
        assert_eq!(h.loop_family(), 0x0200_0000);
    }

    #[test]
    fn families() {
        assert_eq!(Family::from_af(2), Family::Ipv4);
        assert_eq!(Family::from_af(24), Family::Ipv6);
        assert_eq!(Family::from_af(28), Family::Ipv6);
        assert_eq!(Family::from_af(30), Family::Ipv6);
        assert_eq!(Family::from_af(10), Family::Other(10));
    }

    #[test]
    fn every_shorter_prefix_is_truncated() {
        assert_truncations(&[2, 0, 0, 0], LoopbackHeader::new_checked);
    }
}
