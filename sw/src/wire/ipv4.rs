//! IPv4 header (RFC 791): addresses, protocol, fragmentation fields and
//! options.
//!
//! `new_checked` verifies the header length field and that the buffer holds
//! the whole header including options. It does not check the version
//! nibble, so the caller can tell a wrong version from a broken header.
//! The payload ends at the total length, which strips Ethernet padding; a
//! total length of 0 is what captures of TCP segmentation offload show, and
//! then the payload runs to the end of the buffer.

use super::{read_u16, Error, Result};

/// Header length without options.
pub const MIN_HEADER_LEN: usize = 20;

#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<'a> {
    buffer: &'a [u8],
}

impl<'a> Ipv4Packet<'a> {
    pub const fn new_unchecked(buffer: &'a [u8]) -> Self {
        Ipv4Packet { buffer }
    }

    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        if buffer.len() < MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let packet = Ipv4Packet { buffer };
        let header_len = packet.header_len();
        if header_len < MIN_HEADER_LEN {
            return Err(Error::Malformed);
        }
        if buffer.len() < header_len {
            return Err(Error::Truncated);
        }
        let total_len = usize::from(packet.total_len());
        if total_len != 0 && total_len < header_len {
            return Err(Error::Malformed);
        }
        Ok(packet)
    }

    pub fn version(&self) -> u8 {
        self.buffer[0] >> 4
    }

    /// Header length in bytes, options included.
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer[0] & 0x0f) * 4
    }

    pub fn dscp(&self) -> u8 {
        self.buffer[1] >> 2
    }

    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer, 2)
    }

    pub fn ident(&self) -> u16 {
        read_u16(self.buffer, 4)
    }

    pub fn dont_frag(&self) -> bool {
        self.buffer[6] & 0x40 != 0
    }

    pub fn more_frags(&self) -> bool {
        self.buffer[6] & 0x20 != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (read_u16(self.buffer, 6) & 0x1fff) << 3
    }

    pub fn ttl(&self) -> u8 {
        self.buffer[8]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer[9]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer, 10)
    }

    pub fn src_addr(&self) -> [u8; 4] {
        [self.buffer[12], self.buffer[13], self.buffer[14], self.buffer[15]]
    }

    pub fn dst_addr(&self) -> [u8; 4] {
        [self.buffer[16], self.buffer[17], self.buffer[18], self.buffer[19]]
    }

    /// The raw option bytes between the fixed header and the payload.
    pub fn options(&self) -> Ipv4Options<'a> {
        Ipv4Options { rest: &self.buffer[MIN_HEADER_LEN..self.header_len()] }
    }

    /// The payload as captured: up to the total length, or less when the
    /// capture was cut short.
    pub fn payload(&self) -> &'a [u8] {
        let total_len = usize::from(self.total_len());
        let end = if total_len == 0 { self.buffer.len() } else { total_len.min(self.buffer.len()) };
        &self.buffer[self.header_len()..end]
    }
}

/// One IPv4 option: its type byte and the bytes after the length byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Option<'a> {
    pub kind: u8,
    pub data: &'a [u8],
}

pub const OPTION_END: u8 = 0;
pub const OPTION_NOP: u8 = 1;

/// Walks the options area. Stops at End of Options; yields one `Malformed`
/// error and stops when a length byte is missing or runs past the header.
#[derive(Debug, Clone)]
pub struct Ipv4Options<'a> {
    rest: &'a [u8],
}

impl<'a> Ipv4Options<'a> {
    pub fn as_bytes(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Ipv4Options<'a> {
    type Item = Result<Ipv4Option<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&kind, after_kind) = self.rest.split_first()?;
        match kind {
            OPTION_END => {
                self.rest = &[];
                None
            }
            OPTION_NOP => {
                self.rest = after_kind;
                Some(Ok(Ipv4Option { kind, data: &[] }))
            }
            _ => {
                let len = after_kind.first().map(|l| usize::from(*l));
                match len {
                    Some(len) if len >= 2 && len <= self.rest.len() => {
                        let data = &self.rest[2..len];
                        self.rest = &self.rest[len..];
                        Some(Ok(Ipv4Option { kind, data }))
                    }
                    _ => {
                        self.rest = &[];
                        Some(Err(Error::Malformed))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::assert_truncations;

    /// 10.0.0.1 -> 192.168.1.2, UDP, total length 28, id 0x1234, DF.
    const PLAIN: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0xab, 0xcd, //
        10, 0, 0, 1, 192, 168, 1, 2, //
        0x04, 0xd2, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00,
    ];

    #[test]
    fn reads_fixed_header() {
        let p = Ipv4Packet::new_checked(&PLAIN).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), 17);
        assert_eq!(p.checksum(), 0xabcd);
        assert_eq!(p.src_addr(), [10, 0, 0, 1]);
        assert_eq!(p.dst_addr(), [192, 168, 1, 2]);
        assert_eq!(p.payload(), &PLAIN[20..]);
        assert_eq!(p.options().count(), 0);
    }

    #[test]
    fn fragment_fields() {
        let mut bytes = PLAIN;
        // MF set, offset 185 * 8 = 1480 bytes.
        bytes[6] = 0x20;
        bytes[7] = 185;
        let p = Ipv4Packet::new_checked(&bytes).unwrap();
        assert!(p.more_frags());
        assert!(!p.dont_frag());
        assert_eq!(p.frag_offset(), 1480);
        // Largest offset the 13-bit field holds.
        bytes[6] = 0x1f;
        bytes[7] = 0xff;
        let p = Ipv4Packet::new_checked(&bytes).unwrap();
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0x1fff * 8);
    }

    #[test]
    fn payload_stops_at_total_length_and_strips_padding() {
        let mut padded = [0u8; 40];
        padded[..28].copy_from_slice(&PLAIN);
        let p = Ipv4Packet::new_checked(&padded).unwrap();
        assert_eq!(p.payload().len(), 8);
    }

    #[test]
    fn payload_cut_by_snap_length() {
        let p = Ipv4Packet::new_checked(&PLAIN[..24]).unwrap();
        assert_eq!(p.payload(), &PLAIN[20..24]);
    }

    #[test]
    fn zero_total_length_runs_to_buffer_end() {
        let mut bytes = PLAIN;
        bytes[2] = 0;
        bytes[3] = 0;
        let p = Ipv4Packet::new_checked(&bytes).unwrap();
        assert_eq!(p.payload().len(), 8);
    }

    #[test]
    fn header_length_below_twenty_is_malformed() {
        for ihl in 0..5u8 {
            let mut bytes = PLAIN;
            bytes[0] = 0x40 | ihl;
            assert_eq!(Ipv4Packet::new_checked(&bytes).err(), Some(Error::Malformed));
        }
    }

    #[test]
    fn total_length_inside_header_is_malformed() {
        let mut bytes = PLAIN;
        bytes[3] = 19;
        assert_eq!(Ipv4Packet::new_checked(&bytes).err(), Some(Error::Malformed));
        bytes[3] = 20;
        assert!(Ipv4Packet::new_checked(&bytes).unwrap().payload().is_empty());
    }

    #[test]
    fn version_is_left_to_the_caller() {
        let mut bytes = PLAIN;
        bytes[0] = 0x65;
        assert_eq!(Ipv4Packet::new_checked(&bytes).unwrap().version(), 6);
    }

    /// Header with 8 option bytes: NOP, record-route of 7 bytes.
    fn with_options() -> [u8; 28] {
        let mut bytes = [0u8; 28];
        bytes[..20].copy_from_slice(&PLAIN[..20]);
        bytes[0] = 0x47;
        bytes[3] = 28;
        bytes[20..28].copy_from_slice(&[0x01, 0x07, 0x07, 0x04, 10, 0, 0, 9]);
        bytes
    }

    #[test]
    fn walks_options() {
        let bytes = with_options();
        let p = Ipv4Packet::new_checked(&bytes).unwrap();
        assert_eq!(p.header_len(), 28);
        assert!(p.payload().is_empty());
        let opts: Vec<_> = p.options().collect::<Result<_>>().unwrap();
        assert_eq!(
            opts,
            vec![Ipv4Option { kind: OPTION_NOP, data: &[] }, Ipv4Option { kind: 0x07, data: &[0x04, 10, 0, 0, 9] },]
        );
    }

    #[test]
    fn end_of_options_stops_the_walk() {
        let mut bytes = with_options();
        bytes[20] = OPTION_END;
        let p = Ipv4Packet::new_checked(&bytes).unwrap();
        assert_eq!(p.options().count(), 0);
    }

    #[test]
    fn option_length_past_header_is_malformed() {
        let mut bytes = with_options();
        bytes[22] = 8; // the option claims one byte more than is left
        let p = Ipv4Packet::new_checked(&bytes).unwrap();
        let opts: Vec<_> = p.options().collect();
        assert_eq!(opts.len(), 2);
        assert_eq!(opts[1], Err(Error::Malformed));
        // A length below 2 would never advance.
        bytes[22] = 1;
        let p = Ipv4Packet::new_checked(&bytes).unwrap();
        assert_eq!(p.options().nth(1), Some(Err(Error::Malformed)));
        // A kind byte with no length byte after it.
        bytes[27] = 0x44;
        let opts = Ipv4Options { rest: &bytes[27..] };
        assert_eq!(opts.collect::<Vec<_>>(), vec![Err(Error::Malformed)]);
    }

    #[test]
    fn every_shorter_prefix_is_truncated() {
        assert_truncations(&PLAIN[..20], Ipv4Packet::new_checked);
        assert_truncations(&with_options(), Ipv4Packet::new_checked);
    }
}
