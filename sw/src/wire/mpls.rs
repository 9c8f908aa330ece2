//! MPLS label stack entries (RFC 3032, EtherType 0x8847 unicast and 0x8848
//! multicast): 4 bytes each, label, traffic class, bottom-of-stack bit and
//! TTL. The label stack says nothing of what lies under it; like most
//! decoders, [`under_stack`] guesses IPv4 or IPv6 from the first nibble.

use super::{read_u32, Error, Result};

pub const ENTRY_LEN: usize = 4;

#[derive(Debug, Clone, Copy)]
pub struct LabelEntry<'a> {
    buffer: &'a [u8],
}

impl<'a> LabelEntry<'a> {
    pub const fn new_unchecked(buffer: &'a [u8]) -> Self {
        LabelEntry { buffer }
    }

    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        if buffer.len() < ENTRY_LEN {
            return Err(Error::Truncated);
        }
        Ok(LabelEntry { buffer })
    }

    fn raw(&self) -> u32 {
        read_u32(self.buffer, 0)
    }

    /// The 20-bit label.
    pub fn label(&self) -> u32 {
        self.raw() >> 12
    }

    pub fn traffic_class(&self) -> u8 {
        ((self.raw() >> 9) & 0x7) as u8
    }

    /// Whether this is the last entry of the stack.
    pub fn bottom_of_stack(&self) -> bool {
        self.raw() & 0x100 != 0
    }

    pub fn ttl(&self) -> u8 {
        self.buffer[3]
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[ENTRY_LEN..]
    }
}

/// Steps over a whole label stack and returns the length of the stack.
pub fn stack_len(buffer: &[u8]) -> Result<usize> {
    let mut at = 0;
    loop {
        let entry = LabelEntry::new_checked(buffer.get(at..).unwrap_or_default())?;
        at += ENTRY_LEN;
        if entry.bottom_of_stack() {
            return Ok(at);
        }
    }
}

/// What the payload under the bottom of the stack seems to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    Ipv4,
    Ipv6,
    /// Anything else: pseudowire control word, Ethernet over MPLS, ...
    Other,
}

/// Guesses the payload from its first nibble; `Err(Truncated)` when empty.
pub fn under_stack(payload: &[u8]) -> Result<Payload> {
    match payload.first().map(|b| b >> 4) {
        None => Err(Error::Truncated),
        Some(4) => Ok(Payload::Ipv4),
        Some(6) => Ok(Payload::Ipv6),
        Some(_) => Ok(Payload::Other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::assert_truncations;

    #[test]
    fn reads_entry() {
        // Label 18, TC 5, bottom of stack, TTL 254.
        let e = LabelEntry::new_checked(&[0x00, 0x01, 0x2b, 0xfe, 0x45]).unwrap();
        assert_eq!((e.label(), e.traffic_class(), e.bottom_of_stack(), e.ttl()), (18, 5, true, 254));
        assert_eq!(e.payload(), &[0x45]);
        let e = LabelEntry::new_checked(&[0xff, 0xff, 0xf0, 0x01]).unwrap();
        assert_eq!((e.label(), e.bottom_of_stack()), (0xfffff, false));
    }

    #[test]
    fn walks_stacks() {
        assert_eq!(stack_len(&[0, 0x01, 0x21, 64, 0x45]), Ok(4));
        assert_eq!(stack_len(&[0, 0x01, 0x20, 64, 0, 0x02, 0x20, 64, 0, 0x03, 0x21, 64, 0x60]), Ok(12));
        // No bottom of stack before the buffer ends.
        assert_eq!(stack_len(&[0, 0x01, 0x20, 64, 0, 0x02]), Err(Error::Truncated));
    }

    #[test]
    fn guesses_payload_from_first_nibble() {
        assert_eq!(under_stack(&[0x45]), Ok(Payload::Ipv4));
        assert_eq!(under_stack(&[0x60]), Ok(Payload::Ipv6));
        assert_eq!(under_stack(&[0x00, 0x00]), Ok(Payload::Other));
        assert_eq!(under_stack(&[]), Err(Error::Truncated));
    }

    #[test]
    fn every_shorter_prefix_is_truncated() {
        assert_truncations(&[0, 0x01, 0x21, 64], LabelEntry::new_checked);
        assert_truncations(&[0, 0x01, 0x20, 64, 0, 0x01, 0x21, 64], stack_len);
    }
}
