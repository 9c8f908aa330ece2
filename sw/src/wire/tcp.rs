//! TCP header (RFC 9293): ports, sequence numbers, flags, options.
//!
//! `new_checked` wants the whole header, options included, as given by the
//! data offset; a data offset below 5 words is malformed.

use super::{read_u16, read_u32, Error, Result};

pub const MIN_HEADER_LEN: usize = 20;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_SYN: u8 = 0x02;
pub const FLAG_RST: u8 = 0x04;
pub const FLAG_PSH: u8 = 0x08;
pub const FLAG_ACK: u8 = 0x10;
pub const FLAG_URG: u8 = 0x20;
pub const FLAG_ECE: u8 = 0x40;
pub const FLAG_CWR: u8 = 0x80;

#[derive(Debug, Clone, Copy)]
pub struct TcpPacket<'a> {
    buffer: &'a [u8],
}

impl<'a> TcpPacket<'a> {
    pub const fn new_unchecked(buffer: &'a [u8]) -> Self {
        TcpPacket { buffer }
    }

    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        if buffer.len() < MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let packet = TcpPacket { buffer };
        if packet.header_len() < MIN_HEADER_LEN {
            return Err(Error::Malformed);
        }
        if buffer.len() < packet.header_len() {
            return Err(Error::Truncated);
        }
        Ok(packet)
    }

    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer, 0)
    }

    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer, 2)
    }

    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer, 4)
    }

    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer, 8)
    }

    /// Header length in bytes, from the data offset.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer[12] >> 4) * 4
    }

    /// The eight flag bits CWR..FIN (the `FLAG_*` constants).
    pub fn flags(&self) -> u8 {
        self.buffer[13]
    }

    /// The ECN nonce bit that precedes CWR (RFC 3540, historic).
    pub fn ns(&self) -> bool {
        self.buffer[12] & 0x01 != 0
    }

    pub fn window_len(&self) -> u16 {
        read_u16(self.buffer, 14)
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer, 16)
    }

    pub fn urgent_at(&self) -> u16 {
        read_u16(self.buffer, 18)
    }

    pub fn options(&self) -> &'a [u8] {
        &self.buffer[MIN_HEADER_LEN..self.header_len()]
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[self.header_len()..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::assert_truncations;

    /// 49152 -> 443, SYN, 12 bytes of options (MSS, NOP, NOP, SACK-permitted,
    /// NOP, NOP, NOP, NOP), 2 bytes of payload.
    const SYN: [u8; 34] = [
        0xc0, 0x00, 0x01, 0xbb, // ports
        0x00, 0x00, 0x10, 0x00, // seq
        0x00, 0x00, 0x00, 0x00, // ack
        0x80, 0x02, 0xfa, 0xf0, // data offset 8, SYN, window
        0x12, 0x34, 0x00, 0x00, // checksum, urgent
        0x02, 0x04, 0x05, 0xb4, 0x01, 0x01, 0x04, 0x02, 0x01, 0x01, 0x01, 0x01, //
        0xaa, 0xbb,
    ];

    #[test]
    fn reads_fields() {
        let t = TcpPacket::new_checked(&SYN).unwrap();
        assert_eq!(t.src_port(), 49152);
        assert_eq!(t.dst_port(), 443);
        assert_eq!(t.seq_number(), 0x1000);
        assert_eq!(t.ack_number(), 0);
        assert_eq!(t.header_len(), 32);
        assert_eq!(t.flags(), FLAG_SYN);
        assert!(!t.ns());
        assert_eq!(t.window_len(), 0xfaf0);
        assert_eq!(t.checksum(), 0x1234);
        assert_eq!(t.urgent_at(), 0);
        assert_eq!(t.options(), &SYN[20..32]);
        assert_eq!(t.payload(), &[0xaa, 0xbb]);
    }

    #[test]
    fn all_flag_bits() {
        let mut bytes = SYN;
        bytes[12] |= 0x01;
        bytes[13] = 0xff;
        let t = TcpPacket::new_checked(&bytes).unwrap();
        assert!(t.ns());
        assert_eq!(t.flags(), FLAG_FIN | FLAG_SYN | FLAG_RST | FLAG_PSH | FLAG_ACK | FLAG_URG | FLAG_ECE | FLAG_CWR);
    }

    #[test]
    fn data_offset_below_five_is_malformed() {
        for words in 0..5u8 {
            let mut bytes = SYN;
            bytes[12] = words << 4;
            assert_eq!(TcpPacket::new_checked(&bytes).err(), Some(Error::Malformed));
        }
    }

    #[test]
    fn data_offset_past_buffer_is_truncated() {
        let mut bytes = SYN;
        bytes[12] = 0xf0; // 60 bytes of header, 34 captured
        assert_eq!(TcpPacket::new_checked(&bytes).err(), Some(Error::Truncated));
    }

    #[test]
    fn every_shorter_prefix_is_truncated() {
        assert_truncations(&SYN[..32], TcpPacket::new_checked);
    }
}
