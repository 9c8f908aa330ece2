//! ICMP (RFC 792) and ICMPv6 (RFC 4443) headers, which share a layout:
//! type, code, checksum, then four bytes whose meaning depends on the type.
//!
//! Flow rule: query messages that carry an identifier (echo, and for ICMPv4
//! also timestamp, information and address-mask requests and replies) put
//! the identifier in both port fields of the flow key, so a request and its
//! reply meet in one flow and concurrent pings between two hosts stay apart.
//! All other messages (errors, neighbour discovery, router advertisements,
//! ...) get ports 0: one flow per host pair. Their types can't serve as
//! ports because a solicitation and its advertisement differ in type and
//! would split the conversation.

use super::{read_u16, Error, Result};

/// Type, code, checksum and the four type-specific bytes.
pub const HEADER_LEN: usize = 8;

/// Which of the two protocols a message belongs to; the type numbers differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpVersion {
    V4,
    V6,
}

pub mod v4 {
    pub const ECHO_REPLY: u8 = 0;
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const TIMESTAMP_REQUEST: u8 = 13;
    pub const TIMESTAMP_REPLY: u8 = 14;
    pub const INFO_REQUEST: u8 = 15;
    pub const INFO_REPLY: u8 = 16;
    pub const ADDRESS_MASK_REQUEST: u8 = 17;
    pub const ADDRESS_MASK_REPLY: u8 = 18;
}

pub mod v6 {
    pub const DEST_UNREACHABLE: u8 = 1;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    pub const NEIGHBOR_ADVERT: u8 = 136;
}

/// Whether messages of type `msg_type` carry an identifier and sequence
/// number (the identifier then is the flow's port).
pub fn is_query(version: IcmpVersion, msg_type: u8) -> bool {
    match version {
        IcmpVersion::V4 => matches!(
            msg_type,
            v4::ECHO_REPLY
                | v4::ECHO_REQUEST
                | v4::TIMESTAMP_REQUEST
                | v4::TIMESTAMP_REPLY
                | v4::INFO_REQUEST
                | v4::INFO_REPLY
                | v4::ADDRESS_MASK_REQUEST
                | v4::ADDRESS_MASK_REPLY
        ),
        IcmpVersion::V6 => matches!(msg_type, v6::ECHO_REQUEST | v6::ECHO_REPLY),
    }
}

#[derive(Debug, Clone, Copy)]
pub struct IcmpPacket<'a> {
    buffer: &'a [u8],
}

impl<'a> IcmpPacket<'a> {
    pub const fn new_unchecked(buffer: &'a [u8]) -> Self {
        IcmpPacket { buffer }
    }

    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        if buffer.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(IcmpPacket { buffer })
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer[0]
    }

    pub fn code(&self) -> u8 {
        self.buffer[1]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer, 2)
    }

    /// The four type-specific bytes (identifier and sequence number for
    /// queries, unused or MTU or pointer for errors).
    pub fn rest_of_header(&self) -> [u8; 4] {
        [self.buffer[4], self.buffer[5], self.buffer[6], self.buffer[7]]
    }

    /// Whether this message type carries an identifier and sequence number.
    pub fn is_query(&self, version: IcmpVersion) -> bool {
        is_query(version, self.msg_type())
    }

    /// The identifier of a query message, `None` for other types.
    pub fn query_ident(&self, version: IcmpVersion) -> Option<u16> {
        self.is_query(version).then(|| read_u16(self.buffer, 4))
    }

    /// The sequence number of a query message, `None` for other types.
    pub fn query_seq(&self, version: IcmpVersion) -> Option<u16> {
        self.is_query(version).then(|| read_u16(self.buffer, 6))
    }

    /// The value both port fields of the flow key take (see the module doc).
    pub fn flow_port(&self, version: IcmpVersion) -> u16 {
        self.query_ident(version).unwrap_or(0)
    }

    /// The message body after the 8-byte header: echo data, or the start of
    /// the offending packet for error messages.
    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::assert_truncations;

    fn message(kind: u8, code: u8, rest: [u8; 4]) -> [u8; 10] {
        let mut m = [kind, code, 0xf7, 0xff, 0, 0, 0, 0, 0x61, 0x62];
        m[4..8].copy_from_slice(&rest);
        m
    }

    #[test]
    fn echo_request_identifier_and_sequence() {
        let bytes = message(v4::ECHO_REQUEST, 0, [0x12, 0x34, 0x00, 0x07]);
        let p = IcmpPacket::new_checked(&bytes).unwrap();
        assert_eq!(p.msg_type(), 8);
        assert_eq!(p.code(), 0);
        assert_eq!(p.checksum(), 0xf7ff);
        assert_eq!(p.query_ident(IcmpVersion::V4), Some(0x1234));
        assert_eq!(p.query_seq(IcmpVersion::V4), Some(7));
        assert_eq!(p.flow_port(IcmpVersion::V4), 0x1234);
        assert_eq!(p.payload(), b"ab");
    }

    #[test]
    fn v4_query_types_carry_identifiers() {
        for kind in [0u8, 8, 13, 14, 15, 16, 17, 18] {
            let bytes = message(kind, 0, [0xab, 0xcd, 0, 1]);
            let p = IcmpPacket::new_checked(&bytes).unwrap();
            assert_eq!(p.flow_port(IcmpVersion::V4), 0xabcd, "type {kind}");
        }
    }

    #[test]
    fn errors_and_control_messages_get_port_zero() {
        // Port unreachable with a non-zero "unused" field.
        let bytes = message(v4::DEST_UNREACHABLE, 3, [0xab, 0xcd, 0, 1]);
        let p = IcmpPacket::new_checked(&bytes).unwrap();
        assert_eq!(p.query_ident(IcmpVersion::V4), None);
        assert_eq!(p.query_seq(IcmpVersion::V4), None);
        assert_eq!(p.flow_port(IcmpVersion::V4), 0);
        assert_eq!(p.rest_of_header(), [0xab, 0xcd, 0, 1]);
        for kind in [v4::TIME_EXCEEDED, 5, 9, 10] {
            let bytes = message(kind, 0, [1, 2, 3, 4]);
            assert_eq!(IcmpPacket::new_checked(&bytes).unwrap().flow_port(IcmpVersion::V4), 0);
        }
    }

    #[test]
    fn v6_echo_and_others() {
        for kind in [v6::ECHO_REQUEST, v6::ECHO_REPLY] {
            let bytes = message(kind, 0, [0x00, 0x2a, 0, 1]);
            let p = IcmpPacket::new_checked(&bytes).unwrap();
            assert_eq!(p.flow_port(IcmpVersion::V6), 42);
        }
        for kind in [v6::DEST_UNREACHABLE, v6::NEIGHBOR_SOLICIT, v6::NEIGHBOR_ADVERT] {
            let bytes = message(kind, 0, [0x00, 0x2a, 0, 1]);
            assert_eq!(IcmpPacket::new_checked(&bytes).unwrap().flow_port(IcmpVersion::V6), 0);
        }
        // ICMPv4 echo numbers mean nothing in ICMPv6 and vice versa.
        let bytes = message(v4::ECHO_REQUEST, 0, [0, 1, 0, 1]);
        assert_eq!(IcmpPacket::new_checked(&bytes).unwrap().flow_port(IcmpVersion::V6), 0);
        let bytes = message(v6::ECHO_REQUEST, 0, [0, 1, 0, 1]);
        assert_eq!(IcmpPacket::new_checked(&bytes).unwrap().flow_port(IcmpVersion::V4), 0);
    }

    #[test]
    fn every_shorter_prefix_is_truncated() {
        assert_truncations(&message(8, 0, [0, 1, 0, 1])[..8], IcmpPacket::new_checked);
    }
}
