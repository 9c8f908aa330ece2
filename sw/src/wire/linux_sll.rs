//! Linux "cooked" capture headers, written by `tcpdump -i any`: SLL (v1,
//! LINKTYPE_LINUX_SLL) and SLL2 (LINKTYPE_LINUX_SLL2).
//!
//! Both carry the protocol as an EtherType for the device types we meet;
//! values below 0x0600 are Linux `ETH_P_*` pseudo-protocols (802.2 LLC,
//! 802.3 raw, CAN, netlink families) and never IP.

use super::{read_u16, read_u32, Error, Result};

pub const SLL_HEADER_LEN: usize = 16;
pub const SLL2_HEADER_LEN: usize = 20;

/// Link-layer address bytes both versions reserve.
const ADDR_SPACE: usize = 8;

/// Packet direction as the kernel saw it (`PACKET_*`).
pub mod packet_type {
    pub const HOST: u8 = 0;
    pub const BROADCAST: u8 = 1;
    pub const MULTICAST: u8 = 2;
    pub const OTHERHOST: u8 = 3;
    pub const OUTGOING: u8 = 4;
}

/// SLL v1: packet type, ARPHRD type, address length, 8 address bytes,
/// protocol.
#[derive(Debug, Clone, Copy)]
pub struct SllHeader<'a> {
    buffer: &'a [u8],
}

impl<'a> SllHeader<'a> {
    pub const fn new_unchecked(buffer: &'a [u8]) -> Self {
        SllHeader { buffer }
    }

    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        if buffer.len() < SLL_HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(SllHeader { buffer })
    }

    pub fn packet_type(&self) -> u16 {
        read_u16(self.buffer, 0)
    }

    pub fn arphrd_type(&self) -> u16 {
        read_u16(self.buffer, 2)
    }

    /// The link-layer source address, at most the 8 bytes the header keeps.
    pub fn addr(&self) -> &'a [u8] {
        let len = usize::from(read_u16(self.buffer, 4)).min(ADDR_SPACE);
        &self.buffer[6..6 + len]
    }

    pub fn protocol(&self) -> u16 {
        read_u16(self.buffer, 14)
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[SLL_HEADER_LEN..]
    }
}

/// SLL2: protocol, reserved, interface index, ARPHRD type, packet type,
/// address length, 8 address bytes.
#[derive(Debug, Clone, Copy)]
pub struct Sll2Header<'a> {
    buffer: &'a [u8],
}

impl<'a> Sll2Header<'a> {
    pub const fn new_unchecked(buffer: &'a [u8]) -> Self {
        Sll2Header { buffer }
    }

    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        if buffer.len() < SLL2_HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Sll2Header { buffer })
    }

    pub fn protocol(&self) -> u16 {
        read_u16(self.buffer, 0)
    }

    pub fn interface_index(&self) -> u32 {
        read_u32(self.buffer, 4)
    }

    pub fn arphrd_type(&self) -> u16 {
        read_u16(self.buffer, 8)
    }

    pub fn packet_type(&self) -> u8 {
        self.buffer[10]
    }

    pub fn addr(&self) -> &'a [u8] {
        let len = usize::from(self.buffer[11]).min(ADDR_SPACE);
        &self.buffer[12..12 + len]
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[SLL2_HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::assert_truncations;

    const SLL: [u8; 17] = [
        0x00, 0x04, // outgoing
        0x00, 0x01, // ARPHRD_ETHER
        0x00, 0x06, // address length
        0x02, 0x42, 0xac, 0x11, 0x00, 0x02, 0x00, 0x00, // address + padding
        0x08, 0x00, // IPv4
        0x45,
    ];

    const SLL2: [u8; 21] = [
        0x86, 0xdd, // IPv6
        0x00, 0x00, // reserved
        0x00, 0x00, 0x00, 0x07, // ifindex
        0x00, 0x01, // ARPHRD_ETHER
        0x00, // to us
        0x06, // address length
        0x02, 0x42, 0xac, 0x11, 0x00, 0x02, 0x00, 0x00, //
        0x60,
    ];

    #[test]
    fn reads_sll() {
        let h = SllHeader::new_checked(&SLL).unwrap();
        assert_eq!(h.packet_type(), u16::from(packet_type::OUTGOING));
        assert_eq!(h.arphrd_type(), 1);
        assert_eq!(h.addr(), &[0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
        assert_eq!(h.protocol(), 0x0800);
        assert_eq!(h.payload(), &[0x45]);
    }

    #[test]
    fn reads_sll2() {
        let h = Sll2Header::new_checked(&SLL2).unwrap();
        assert_eq!(h.protocol(), 0x86dd);
        assert_eq!(h.interface_index(), 7);
        assert_eq!(h.arphrd_type(), 1);
        assert_eq!(h.packet_type(), packet_type::HOST);
        assert_eq!(h.addr().len(), 6);
        assert_eq!(h.payload(), &[0x60]);
    }

    #[test]
    fn oversized_address_length_is_clamped() {
        let mut sll = SLL;
        sll[4] = 0xff;
        assert_eq!(SllHeader::new_checked(&sll).unwrap().addr().len(), 8);
        let mut sll2 = SLL2;
        sll2[11] = 0xff;
        assert_eq!(Sll2Header::new_checked(&sll2).unwrap().addr().len(), 8);
    }

    #[test]
    fn every_shorter_prefix_is_truncated() {
        assert_truncations(&SLL[..SLL_HEADER_LEN], SllHeader::new_checked);
        assert_truncations(&SLL2[..SLL2_HEADER_LEN], Sll2Header::new_checked);
    }
}
