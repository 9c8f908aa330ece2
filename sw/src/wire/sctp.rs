//! SCTP common header (RFC 9260): ports, verification tag, checksum, and
//! the chunks that follow it.

use super::{read_u16, read_u32, Error, Result};

pub const HEADER_LEN: usize = 12;
pub const CHUNK_HEADER_LEN: usize = 4;

#[derive(Debug, Clone, Copy)]
pub struct SctpPacket<'a> {
    buffer: &'a [u8],
}

impl<'a> SctpPacket<'a> {
    pub const fn new_unchecked(buffer: &'a [u8]) -> Self {
        SctpPacket { buffer }
    }

    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        if buffer.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(SctpPacket { buffer })
    }

    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer, 0)
    }

    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer, 2)
    }

    pub fn verification_tag(&self) -> u32 {
        read_u32(self.buffer, 4)
    }

    pub fn checksum(&self) -> u32 {
        read_u32(self.buffer, 8)
    }

    /// Everything after the common header.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[HEADER_LEN..]
    }

    pub fn chunks(&self) -> SctpChunks<'a> {
        SctpChunks { rest: self.payload() }
    }
}

/// One chunk: type, flags, and the value bytes its length covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SctpChunk<'a> {
    pub kind: u8,
    pub flags: u8,
    pub value: &'a [u8],
}

pub const CHUNK_DATA: u8 = 0;
pub const CHUNK_INIT: u8 = 1;
pub const CHUNK_INIT_ACK: u8 = 2;
pub const CHUNK_ABORT: u8 = 6;
pub const CHUNK_SHUTDOWN: u8 = 7;

/// Walks the chunks. A chunk length below 4 is `Malformed`, one running past
/// the buffer `Truncated`; either ends the walk. Padding to 4 bytes after
/// the last chunk may be missing.
#[derive(Debug, Clone)]
pub struct SctpChunks<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for SctpChunks<'a> {
    type Item = Result<SctpChunk<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = core::mem::take(&mut self.rest);
        if rest.len() < CHUNK_HEADER_LEN {
            return Some(Err(Error::Truncated));
        }
        let len = usize::from(read_u16(rest, 2));
        if len < CHUNK_HEADER_LEN {
            return Some(Err(Error::Malformed));
        }
        if rest.len() < len {
            return Some(Err(Error::Truncated));
        }
        let padded = len.next_multiple_of(4).min(rest.len());
        self.rest = &rest[padded..];
        Some(Ok(SctpChunk { kind: rest[0], flags: rest[1], value: &rest[CHUNK_HEADER_LEN..len] }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::assert_truncations;

    /// 2905 -> 3868 (M3UA -> Diameter ports), tag 0x01020304; one DATA chunk
    /// of 5 value bytes padded to 12, then a SHUTDOWN chunk of 8.
    #[rustfmt::skip]
    const PACKET: [u8; 36] = [
        0x0b, 0x59, 0x0f, 0x1c, 0x01, 0x02, 0x03, 0x04, 0xca, 0xfe, 0xba, 0xbe, //
        CHUNK_DATA, 0x03, 0x00, 0x09, 1, 2, 3, 4, 5, 0, 0, 0, //
        CHUNK_SHUTDOWN, 0x00, 0x00, 0x08, 0, 0, 0, 42, //
        0, 0, 0, 0,
    ];

    #[test]
    fn reads_common_header() {
        let p = SctpPacket::new_checked(&PACKET).unwrap();
        assert_eq!(p.src_port(), 2905);
        assert_eq!(p.dst_port(), 3868);
        assert_eq!(p.verification_tag(), 0x01020304);
        assert_eq!(p.checksum(), 0xcafebabe);
    }

    #[test]
    fn walks_chunks() {
        let p = SctpPacket::new_checked(&PACKET[..32]).unwrap();
        let chunks: Vec<_> = p.chunks().collect::<Result<_>>().unwrap();
        assert_eq!(
            chunks,
            vec![
                SctpChunk { kind: CHUNK_DATA, flags: 3, value: &[1, 2, 3, 4, 5] },
                SctpChunk { kind: CHUNK_SHUTDOWN, flags: 0, value: &[0, 0, 0, 42] },
            ]
        );
    }

    #[test]
    fn last_chunk_may_lack_padding() {
        let p = SctpPacket::new_checked(&PACKET[..21]).unwrap();
        let chunks: Vec<_> = p.chunks().collect::<Result<_>>().unwrap();
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].value, &[1, 2, 3, 4, 5]);
    }

    #[test]
    fn bad_chunk_lengths() {
        // Trailing zeros read as a chunk of length 0.
        let p = SctpPacket::new_checked(&PACKET).unwrap();
        assert_eq!(p.chunks().nth(2), Some(Err(Error::Malformed)));
        assert_eq!(p.chunks().count(), 3);
        // A chunk longer than what was captured.
        let p = SctpPacket::new_checked(&PACKET[..30]).unwrap();
        assert_eq!(p.chunks().nth(1), Some(Err(Error::Truncated)));
        let p = SctpPacket::new_checked(&PACKET[..14]).unwrap();
        assert_eq!(p.chunks().collect::<Vec<_>>(), vec![Err(Error::Truncated)]);
    }

    #[test]
    fn every_shorter_prefix_is_truncated() {
        assert_truncations(&PACKET[..12], SctpPacket::new_checked);
    }
}
