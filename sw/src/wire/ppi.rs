//! Per-Packet Information header (LINKTYPE_PPI): capture metadata (radio
//! fields, mostly) in front of a frame of another link type.
//!
//! Version 0, flags, a little-endian header length covering the whole PPI
//! header with its fields, and the little-endian link type of the frame
//! that follows. The metadata never was on the wire, so the parser reads
//! the inner frame as if captured under its own link type.

use super::{Error, Result};

/// Version, flags, length and link type.
pub const HEADER_LEN: usize = 8;

#[derive(Debug, Clone, Copy)]
pub struct PpiHeader<'a> {
    buffer: &'a [u8],
}

impl<'a> PpiHeader<'a> {
    pub const fn new_unchecked(buffer: &'a [u8]) -> Self {
        PpiHeader { buffer }
    }

    /// Checks the fixed header, version 0, and that the stated length
    /// covers the fixed header and fits in the buffer.
    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        if buffer.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let h = PpiHeader { buffer };
        if buffer[0] != 0 || h.header_len() < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if buffer.len() < h.header_len() {
            return Err(Error::Truncated);
        }
        Ok(h)
    }

    pub fn flags(&self) -> u8 {
        self.buffer[1]
    }

    /// Length of the PPI header including its fields.
    pub fn header_len(&self) -> usize {
        usize::from(u16::from_le_bytes([self.buffer[2], self.buffer[3]]))
    }

    /// The pcap link type of the inner frame.
    pub fn link_type(&self) -> u32 {
        u32::from_le_bytes([self.buffer[4], self.buffer[5], self.buffer[6], self.buffer[7]])
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[self.header_len()..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::assert_truncations;

    #[test]
    fn reads_header_and_skips_fields() {
        // A 16-byte header: 8 fixed bytes and one 8-byte field.
        let bytes = [0, 0, 16, 0, 1, 0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0xaa];
        let h = PpiHeader::new_checked(&bytes).unwrap();
        assert_eq!((h.flags(), h.header_len(), h.link_type()), (0, 16, 1));
        assert_eq!(h.payload(), &[0xaa]);
    }

    #[test]
    fn malformed_version_and_length() {
        assert_eq!(PpiHeader::new_checked(&[1, 0, 8, 0, 1, 0, 0, 0]).err(), Some(Error::Malformed));
        assert_eq!(PpiHeader::new_checked(&[0, 0, 4, 0, 1, 0, 0, 0]).err(), Some(Error::Malformed));
    }

    #[test]
    fn every_shorter_prefix_is_truncated() {
        assert_truncations(&[0, 0, 12, 0, 105, 0, 0, 0, 1, 2, 3, 4], PpiHeader::new_checked);
    }
}
