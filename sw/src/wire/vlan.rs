//! IEEE 802.1Q VLAN tag and 802.1ad (QinQ) service tag.
//!
//! The view starts after the tag protocol identifier (TPID), which sits
//! where an EtherType would: two bytes of tag control (PCP, DEI, VLAN id)
//! then the EtherType of what follows, possibly another tag.

use super::{ethertype, read_u16, Error, Result};

/// Tag control plus inner EtherType.
pub const TAG_LEN: usize = 4;

/// Whether an EtherType announces a VLAN tag: 802.1Q, 802.1ad, or the
/// pre-standard 0x9100 outer tag.
pub fn is_tag(ethertype: u16) -> bool {
    matches!(ethertype, ethertype::VLAN | ethertype::QINQ | ethertype::QINQ_LEGACY)
}

#[derive(Debug, Clone, Copy)]
pub struct VlanTag<'a> {
    buffer: &'a [u8],
}

impl<'a> VlanTag<'a> {
    pub const fn new_unchecked(buffer: &'a [u8]) -> Self {
        VlanTag { buffer }
    }

    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        if buffer.len() < TAG_LEN {
            return Err(Error::Truncated);
        }
        Ok(VlanTag { buffer })
    }

    /// Priority code point (3 bits).
    pub fn pcp(&self) -> u8 {
        self.buffer[0] >> 5
    }

    /// Drop eligible indicator.
    pub fn dei(&self) -> bool {
        self.buffer[0] & 0x10 != 0
    }

    /// The 12-bit VLAN identifier; 0 means a priority-only tag.
    pub fn vlan_id(&self) -> u16 {
        read_u16(self.buffer, 0) & 0x0fff
    }

    /// EtherType of the encapsulated frame (or of the next tag).
    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer, 2)
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[TAG_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::assert_truncations;

    #[test]
    fn reads_tag_control() {
        // PCP 5, DEI set, VID 0xabc, inner IPv6.
        let bytes = [0xba, 0xbc, 0x86, 0xdd, 0x60];
        let t = VlanTag::new_checked(&bytes).unwrap();
        assert_eq!(t.pcp(), 5);
        assert!(t.dei());
        assert_eq!(t.vlan_id(), 0xabc);
        assert_eq!(t.ethertype(), ethertype::IPV6);
        assert_eq!(t.payload(), &[0x60]);
    }

    #[test]
    fn recognises_tag_protocol_ids() {
        assert!(is_tag(0x8100));
        assert!(is_tag(0x88a8));
        assert!(is_tag(0x9100));
        assert!(!is_tag(0x0800));
        assert!(!is_tag(0x86dd));
    }

    #[test]
    fn every_shorter_prefix_is_truncated() {
        assert_truncations(&[0x00, 0x0a, 0x08, 0x00], VlanTag::new_checked);
    }
}
