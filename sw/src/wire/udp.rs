//! UDP header (RFC 768). UDP-Lite (RFC 3828) shares the layout, with a
//! checksum coverage where UDP has its length; the parser reads its ports
//! through this view without the length check.

use super::{read_u16, Error, Result};

pub const HEADER_LEN: usize = 8;

#[derive(Debug, Clone, Copy)]
pub struct UdpPacket<'a> {
    buffer: &'a [u8],
}

impl<'a> UdpPacket<'a> {
    pub const fn new_unchecked(buffer: &'a [u8]) -> Self {
        UdpPacket { buffer }
    }

    /// Checks the header is present and its length field is either 0 (an
    /// IPv6 jumbogram, RFC 2675) or at least the header itself.
    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        if buffer.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let packet = UdpPacket { buffer };
        let len = usize::from(packet.len());
        if len != 0 && len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        Ok(packet)
    }

    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer, 0)
    }

    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer, 2)
    }

    /// Length of header plus data (for UDP-Lite: the checksum coverage).
    pub fn len(&self) -> u16 {
        read_u16(self.buffer, 4)
    }

    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer, 6)
    }

    /// The data as captured: up to the length field, or less when the
    /// capture was cut short; to the end of the buffer when the length is 0.
    pub fn payload(&self) -> &'a [u8] {
        let len = usize::from(self.len());
        let end = if len == 0 { self.buffer.len() } else { len.min(self.buffer.len()) };
        &self.buffer[HEADER_LEN..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::assert_truncations;

    const DNS: [u8; 12] = [0xd4, 0x31, 0x00, 0x35, 0x00, 0x0b, 0xbe, 0xef, 1, 2, 3, 0xff];

    #[test]
    fn reads_fields() {
        let u = UdpPacket::new_checked(&DNS).unwrap();
        assert_eq!(u.src_port(), 54321);
        assert_eq!(u.dst_port(), 53);
        assert_eq!(u.len(), 11);
        assert!(!u.is_empty());
        assert_eq!(u.checksum(), 0xbeef);
        // The fourth data byte lies past the length: trailer, not payload.
        assert_eq!(u.payload(), &[1, 2, 3]);
    }

    #[test]
    fn payload_cut_by_snap_length() {
        let u = UdpPacket::new_checked(&DNS[..9]).unwrap();
        assert_eq!(u.payload(), &[1]);
    }

    #[test]
    fn zero_length_runs_to_buffer_end() {
        let mut bytes = DNS;
        bytes[5] = 0;
        assert_eq!(UdpPacket::new_checked(&bytes).unwrap().payload().len(), 4);
    }

    #[test]
    fn length_inside_header_is_malformed() {
        for len in 1..8u8 {
            let mut bytes = DNS;
            bytes[5] = len;
            assert_eq!(UdpPacket::new_checked(&bytes).err(), Some(Error::Malformed));
        }
        let mut bytes = DNS;
        bytes[5] = 8;
        let u = UdpPacket::new_checked(&bytes).unwrap();
        assert!(u.is_empty());
        assert!(u.payload().is_empty());
    }

    #[test]
    fn every_shorter_prefix_is_truncated() {
        assert_truncations(&DNS[..8], UdpPacket::new_checked);
    }
}
