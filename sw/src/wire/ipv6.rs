//! IPv6 header (RFC 8200) and the extension headers that sit between it and
//! the transport header: hop-by-hop options, routing, destination options,
//! fragment, and the IPsec Authentication Header (RFC 4302).
//!
//! [`skip_extension_headers`] walks that chain to the first header that is
//! not one of them. It stops at ESP, whose payload is encrypted, at No Next
//! Header, and at any fragment with a non-zero offset, whose payload is the
//! middle of some other packet's data. AH is also found after IPv4 headers
//! and is skipped there with the same view.

use super::{ip_proto, read_u16, read_u32, Error, Result};

pub const HEADER_LEN: usize = 40;

#[derive(Debug, Clone, Copy)]
pub struct Ipv6Packet<'a> {
    buffer: &'a [u8],
}

impl<'a> Ipv6Packet<'a> {
    pub const fn new_unchecked(buffer: &'a [u8]) -> Self {
        Ipv6Packet { buffer }
    }

    /// Checks that the fixed header is present. Like the IPv4 view it leaves
    /// the version nibble to the caller.
    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        if buffer.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Ipv6Packet { buffer })
    }

    pub fn version(&self) -> u8 {
        self.buffer[0] >> 4
    }

    pub fn traffic_class(&self) -> u8 {
        (read_u16(self.buffer, 0) >> 4) as u8
    }

    pub fn flow_label(&self) -> u32 {
        read_u32(self.buffer, 0) & 0x000f_ffff
    }

    pub fn payload_len(&self) -> u16 {
        read_u16(self.buffer, 4)
    }

    pub fn next_header(&self) -> u8 {
        self.buffer[6]
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer[7]
    }

    pub fn src_addr(&self) -> [u8; 16] {
        self.addr(8)
    }

    pub fn dst_addr(&self) -> [u8; 16] {
        self.addr(24)
    }

    fn addr(&self, at: usize) -> [u8; 16] {
        let mut addr = [0u8; 16];
        addr.copy_from_slice(&self.buffer[at..at + 16]);
        addr
    }

    /// The payload as captured, extension headers included: up to the
    /// payload length, or less when the capture was cut short. A payload
    /// length of 0 (jumbogram, or segmentation offload) runs to the end of
    /// the buffer.
    pub fn payload(&self) -> &'a [u8] {
        let len = usize::from(self.payload_len());
        let rest = &self.buffer[HEADER_LEN..];
        if len == 0 {
            rest
        } else {
            &rest[..len.min(rest.len())]
        }
    }
}

/// Hop-by-hop, routing or destination options header: all three share the
/// next-header / length-in-8-octet-units layout.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6ExtHeader<'a> {
    buffer: &'a [u8],
}

impl<'a> Ipv6ExtHeader<'a> {
    pub const fn new_unchecked(buffer: &'a [u8]) -> Self {
        Ipv6ExtHeader { buffer }
    }

    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        if buffer.len() < 2 {
            return Err(Error::Truncated);
        }
        let header = Ipv6ExtHeader { buffer };
        if buffer.len() < header.header_len() {
            return Err(Error::Truncated);
        }
        Ok(header)
    }

    pub fn next_header(&self) -> u8 {
        self.buffer[0]
    }

    /// Length in bytes; the field counts 8-octet units beyond the first.
    pub fn header_len(&self) -> usize {
        (usize::from(self.buffer[1]) + 1) * 8
    }

    /// Options or routing data after the two fixed bytes.
    pub fn data(&self) -> &'a [u8] {
        &self.buffer[2..self.header_len()]
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[self.header_len()..]
    }
}

pub const FRAGMENT_HEADER_LEN: usize = 8;

#[derive(Debug, Clone, Copy)]
pub struct Ipv6FragmentHeader<'a> {
    buffer: &'a [u8],
}

impl<'a> Ipv6FragmentHeader<'a> {
    pub const fn new_unchecked(buffer: &'a [u8]) -> Self {
        Ipv6FragmentHeader { buffer }
    }

    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        if buffer.len() < FRAGMENT_HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(Ipv6FragmentHeader { buffer })
    }

    pub fn next_header(&self) -> u8 {
        self.buffer[0]
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        read_u16(self.buffer, 2) & 0xfff8
    }

    pub fn more_frags(&self) -> bool {
        self.buffer[3] & 0x01 != 0
    }

    pub fn ident(&self) -> u32 {
        read_u32(self.buffer, 4)
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[FRAGMENT_HEADER_LEN..]
    }
}

/// The fixed part of an Authentication Header: next header, length, reserved,
/// SPI, sequence number.
pub const AUTH_HEADER_MIN_LEN: usize = 12;

#[derive(Debug, Clone, Copy)]
pub struct AuthHeader<'a> {
    buffer: &'a [u8],
}

impl<'a> AuthHeader<'a> {
    pub const fn new_unchecked(buffer: &'a [u8]) -> Self {
        AuthHeader { buffer }
    }

    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        if buffer.len() < 2 {
            return Err(Error::Truncated);
        }
        let header = AuthHeader { buffer };
        if header.header_len() < AUTH_HEADER_MIN_LEN {
            return Err(Error::Malformed);
        }
        if buffer.len() < header.header_len() {
            return Err(Error::Truncated);
        }
        Ok(header)
    }

    pub fn next_header(&self) -> u8 {
        self.buffer[0]
    }

    /// Length in bytes; the field counts 4-octet units minus 2.
    pub fn header_len(&self) -> usize {
        (usize::from(self.buffer[1]) + 2) * 4
    }

    pub fn spi(&self) -> u32 {
        read_u32(self.buffer, 4)
    }

    pub fn sequence(&self) -> u32 {
        read_u32(self.buffer, 8)
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[self.header_len()..]
    }
}

/// Fragmentation fields of an IPv6 fragment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentInfo {
    pub ident: u32,
    /// Offset in bytes.
    pub offset: u16,
    pub more: bool,
}

/// The header found after the extension-header chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer<'a> {
    /// Protocol number of that header (TCP, UDP, ..., ESP, No Next Header),
    /// or for a non-first fragment the protocol its data belongs to.
    pub protocol: u8,
    /// Bytes of extension headers skipped before it.
    pub offset: usize,
    /// The bytes from that header on.
    pub payload: &'a [u8],
    /// The fragment header met on the way, if any.
    pub fragment: Option<FragmentInfo>,
}

/// Whether `protocol` is an extension header [`skip_extension_headers`]
/// steps over.
pub fn is_skipped_extension(protocol: u8) -> bool {
    matches!(
        protocol,
        ip_proto::HOP_BY_HOP
            | ip_proto::IPV6_ROUTING
            | ip_proto::IPV6_DEST_OPTS
            | ip_proto::IPV6_FRAGMENT
            | ip_proto::AH
    )
}

/// Skips the extension headers at the start of `payload`, `first` being the
/// IPv6 header's next-header value.
///
/// Every header advances by at least 8 bytes, so the walk ends within the
/// buffer. `Truncated` when a header runs past the buffer, `Malformed` for
/// an AH whose length can't hold its own fixed fields.
pub fn skip_extension_headers(first: u8, payload: &[u8]) -> Result<UpperLayer<'_>> {
    let mut protocol = first;
    let mut offset = 0;
    let mut fragment = None;
    loop {
        let rest = &payload[offset..];
        let (next, len) = match protocol {
            ip_proto::HOP_BY_HOP | ip_proto::IPV6_ROUTING | ip_proto::IPV6_DEST_OPTS => {
                let header = Ipv6ExtHeader::new_checked(rest)?;
                (header.next_header(), header.header_len())
            }
            ip_proto::AH => {
                let header = AuthHeader::new_checked(rest)?;
                (header.next_header(), header.header_len())
            }
            ip_proto::IPV6_FRAGMENT => {
                let header = Ipv6FragmentHeader::new_checked(rest)?;
                let info =
                    FragmentInfo { ident: header.ident(), offset: header.frag_offset(), more: header.more_frags() };
                fragment = Some(info);
                if info.offset != 0 {
                    // The data is the middle of a packet: whatever it holds
                    // is not a header.
                    let offset = offset + FRAGMENT_HEADER_LEN;
                    return Ok(UpperLayer {
                        protocol: header.next_header(),
                        offset,
                        payload: &payload[offset..],
                        fragment,
                    });
                }
                (header.next_header(), FRAGMENT_HEADER_LEN)
            }
            _ => return Ok(UpperLayer { protocol, offset, payload: rest, fragment }),
        };
        protocol = next;
        offset += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::assert_truncations;

    /// 2001:db8::1 -> 2001:db8::2, traffic class 0xb8, flow 0x12345,
    /// payload length 8, UDP, hop limit 64.
    fn header(next: u8, payload_len: u16) -> [u8; 40] {
        let mut h = [0u8; 40];
        h[..4].copy_from_slice(&[0x6b, 0x81, 0x23, 0x45]);
        h[4..6].copy_from_slice(&payload_len.to_be_bytes());
        h[6] = next;
        h[7] = 64;
        h[8..10].copy_from_slice(&[0x20, 0x01]);
        h[10..12].copy_from_slice(&[0x0d, 0xb8]);
        h[23] = 1;
        h[24..26].copy_from_slice(&[0x20, 0x01]);
        h[26..28].copy_from_slice(&[0x0d, 0xb8]);
        h[39] = 2;
        h
    }

    #[test]
    fn reads_fixed_header() {
        let mut bytes = [0u8; 48];
        bytes[..40].copy_from_slice(&header(17, 8));
        let p = Ipv6Packet::new_checked(&bytes).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0xb8);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 8);
        assert_eq!(p.next_header(), 17);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(&p.src_addr()[..4], &[0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(p.src_addr()[15], 1);
        assert_eq!(p.dst_addr()[15], 2);
        assert_eq!(p.payload().len(), 8);
    }

    #[test]
    fn payload_length_bounds_the_payload() {
        let mut bytes = [0u8; 60];
        bytes[..40].copy_from_slice(&header(17, 8));
        assert_eq!(Ipv6Packet::new_checked(&bytes).unwrap().payload().len(), 8);
        // Cut by the snap length.
        assert_eq!(Ipv6Packet::new_checked(&bytes[..44]).unwrap().payload().len(), 4);
        // Zero: runs to the end.
        bytes[..40].copy_from_slice(&header(17, 0));
        assert_eq!(Ipv6Packet::new_checked(&bytes).unwrap().payload().len(), 20);
    }

    #[test]
    fn fixed_header_truncations() {
        assert_truncations(&header(17, 0), Ipv6Packet::new_checked);
    }

    #[test]
    fn no_extension_headers() {
        let payload = [0x12, 0x34, 0x00, 0x35, 0, 8, 0, 0];
        let up = skip_extension_headers(ip_proto::UDP, &payload).unwrap();
        assert_eq!(up, UpperLayer { protocol: 17, offset: 0, payload: &payload, fragment: None });
    }

    /// Hop-by-hop (8 bytes) -> routing (24 bytes) -> destination options
    /// (16 bytes) -> AH (16 bytes) -> TCP.
    fn chain() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&[ip_proto::IPV6_ROUTING, 0, 1, 4, 0, 0, 0, 0]);
        b.extend_from_slice(&[ip_proto::IPV6_DEST_OPTS, 2, 0, 1]);
        b.extend_from_slice(&[0u8; 20]);
        b.extend_from_slice(&[ip_proto::AH, 1, 1, 12]);
        b.extend_from_slice(&[0u8; 12]);
        b.extend_from_slice(&[ip_proto::TCP, 2, 0, 0, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 7]);
        b.extend_from_slice(&[0u8; 4]);
        b.extend_from_slice(&[0x01, 0xbb, 0xc0, 0x00]);
        b
    }

    #[test]
    fn walks_a_chain_to_the_transport_header() {
        let b = chain();
        let up = skip_extension_headers(ip_proto::HOP_BY_HOP, &b).unwrap();
        assert_eq!(up.protocol, ip_proto::TCP);
        assert_eq!(up.offset, 8 + 24 + 16 + 16);
        assert_eq!(up.payload, &[0x01, 0xbb, 0xc0, 0x00]);
        assert_eq!(up.fragment, None);
    }

    #[test]
    fn chain_cut_anywhere_before_the_transport_header_is_truncated() {
        let b = chain();
        for cut in 0..64 {
            let r = skip_extension_headers(ip_proto::HOP_BY_HOP, &b[..cut]);
            assert_eq!(r.err(), Some(Error::Truncated), "cut {cut}");
        }
        // Cut right after the last extension header: the walk reaches TCP
        // with nothing of it captured; the transport parser reports that.
        let up = skip_extension_headers(ip_proto::HOP_BY_HOP, &b[..64]).unwrap();
        assert_eq!(up.protocol, ip_proto::TCP);
        assert!(up.payload.is_empty());
    }

    #[test]
    fn reads_auth_header() {
        let b = chain();
        let ah = AuthHeader::new_checked(&b[48..]).unwrap();
        assert_eq!(ah.next_header(), ip_proto::TCP);
        assert_eq!(ah.header_len(), 16);
        assert_eq!(ah.spi(), 0xdeadbeef);
        assert_eq!(ah.sequence(), 7);
        assert_eq!(ah.payload(), &b[64..]);
        assert_truncations(&b[48..64], AuthHeader::new_checked);
    }

    #[test]
    fn auth_header_too_short_for_itself_is_malformed() {
        let bytes = [ip_proto::TCP, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(AuthHeader::new_checked(&bytes).err(), Some(Error::Malformed));
        assert_eq!(skip_extension_headers(ip_proto::AH, &bytes).err(), Some(Error::Malformed));
    }

    #[test]
    fn reads_generic_extension_header() {
        let b = chain();
        let h = Ipv6ExtHeader::new_checked(&b[8..]).unwrap();
        assert_eq!(h.next_header(), ip_proto::IPV6_DEST_OPTS);
        assert_eq!(h.header_len(), 24);
        assert_eq!(h.data().len(), 22);
        assert_truncations(&b[8..32], Ipv6ExtHeader::new_checked);
    }

    fn fragment(next: u8, offset: u16, more: bool, ident: u32) -> [u8; 8] {
        let field = offset | u16::from(more);
        let mut f = [next, 0, 0, 0, 0, 0, 0, 0];
        f[2..4].copy_from_slice(&field.to_be_bytes());
        f[4..8].copy_from_slice(&ident.to_be_bytes());
        f
    }

    #[test]
    fn reads_fragment_header() {
        let bytes = fragment(ip_proto::UDP, 1448, true, 0x8765_4321);
        let f = Ipv6FragmentHeader::new_checked(&bytes).unwrap();
        assert_eq!(f.next_header(), ip_proto::UDP);
        assert_eq!(f.frag_offset(), 1448);
        assert!(f.more_frags());
        assert_eq!(f.ident(), 0x8765_4321);
        assert_truncations(&bytes, Ipv6FragmentHeader::new_checked);
    }

    #[test]
    fn first_fragment_continues_to_the_transport_header() {
        let mut b = fragment(ip_proto::UDP, 0, true, 9).to_vec();
        b.extend_from_slice(&[0, 53, 0, 53, 0, 8, 0, 0]);
        let up = skip_extension_headers(ip_proto::IPV6_FRAGMENT, &b).unwrap();
        assert_eq!(up.protocol, ip_proto::UDP);
        assert_eq!(up.offset, 8);
        assert_eq!(up.fragment, Some(FragmentInfo { ident: 9, offset: 0, more: true }));
    }

    #[test]
    fn later_fragment_stops_the_walk() {
        // The data happens to look like a hop-by-hop header; it must not be
        // read as one.
        let mut b = fragment(ip_proto::HOP_BY_HOP, 8, false, 0xffff_ffff).to_vec();
        b.extend_from_slice(&[0, 200, 0, 0]);
        let up = skip_extension_headers(ip_proto::IPV6_FRAGMENT, &b).unwrap();
        assert_eq!(up.protocol, ip_proto::HOP_BY_HOP);
        assert_eq!(up.offset, 8);
        assert_eq!(up.payload, &[0, 200, 0, 0]);
        assert_eq!(up.fragment, Some(FragmentInfo { ident: 0xffff_ffff, offset: 8, more: false }));
    }

    #[test]
    fn stops_at_esp_and_no_next_header() {
        let b = [ip_proto::ESP, 0, 0, 0, 0, 0, 0, 0, 0xaa, 0xbb];
        let up = skip_extension_headers(ip_proto::IPV6_DEST_OPTS, &b).unwrap();
        assert_eq!((up.protocol, up.offset), (ip_proto::ESP, 8));
        let b = [ip_proto::IPV6_NO_NEXT, 0, 0, 0, 0, 0, 0, 0];
        let up = skip_extension_headers(ip_proto::HOP_BY_HOP, &b).unwrap();
        assert_eq!((up.protocol, up.offset), (ip_proto::IPV6_NO_NEXT, 8));
        assert!(up.payload.is_empty());
    }
}
