//! Packet parsing: from a captured frame to the flow key and the few fields
//! the flow table needs.
//!
//! Walks link layer (Ethernet with up to any number of 802.1Q / 802.1ad /
//! 0x9100 tags, of which the first two are kept; Linux SLL and SLL2; BSD
//! loopback; raw IP; PPP; Cisco HDLC; PPI before any of these), then the
//! shims between link and network layer (PPPoE session, an MPLS label stack
//! with IPv4 or IPv6 under it as its first nibble says, Cisco FabricPath
//! with the inner Ethernet frame, VLAN tags inside any of these), recorded
//! in the key's `encap` bits; then IPv4 or IPv6 (extension headers skipped, IPsec
//! AH skipped after either), then the transport header. TCP, UDP, UDP-Lite
//! and SCTP give ports; ICMP and ICMPv6 follow the rule in
//! [`crate::wire::icmp`]; every other IP protocol (GRE, ESP, OSPF, ...) is a
//! flow between two addresses with ports 0.
//!
//! Tunnels are not decapsulated: IP-in-IP, GRE, VXLAN, GTP and the like are
//! keyed on their outer header, which is what a NIC matches on before any
//! decapsulation action.
//!
//! Fragments: a first IPv4 fragment (offset 0, MF set) or an IPv6 fragment
//! header with offset 0 and M set is parsed normally and marked
//! `Fragment::First`; any fragment with a non-zero offset is
//! `Fragment::Later`, keyed with ports 0 and no transport parsing, its IP id
//! (16 bits for IPv4, 32 for IPv6) left for the table to attribute it.
//!
//! The plain frame (untagged or singly tagged Ethernet, IPv4 without
//! options or IPv6 without extension headers, TCP, UDP or ICMP, not a
//! fragment) takes a fast path, [`plain_ethernet`], that skips the walk and
//! is held to give what the walk gives; every other frame is walked.
//!
//! The parser never panics on any input and never allocates: every
//! transport header goes through a checked [`crate::wire`] view, the fast
//! path's link and IP fields through checked slice reads, and the result
//! is a plain value.

use crate::key::encap;
use crate::key::FlowKey;
use crate::packet::{Fragment, LinkType, PacketInfo, SkipReason};
use crate::ports::Ingress;
use crate::wire::cisco_hdlc::CiscoHdlcHeader;
use crate::wire::fabricpath::FabricPathHeader;
use crate::wire::icmp::{IcmpPacket, IcmpVersion};
use crate::wire::ipv4::Ipv4Packet;
use crate::wire::ipv6::{self, AuthHeader, Ipv6Packet};
use crate::wire::linux_sll::{Sll2Header, SllHeader};
use crate::wire::mpls;
use crate::wire::null::{Family, LoopbackHeader};
use crate::wire::ppi::PpiHeader;
use crate::wire::ppp::{self, PppFrame};
use crate::wire::pppoe::PppoeSession;
use crate::wire::sctp::{self, SctpPacket};
use crate::wire::tcp::TcpPacket;
use crate::wire::udp::{self, UdpPacket};
use crate::wire::{ethernet, ethertype, ip_proto, vlan, Error};

/// Parses one frame into the summary the flow table needs.
///
/// `wire_len` is the frame's length on the wire as the capture recorded it
/// (not the possibly shorter captured length); `ingress` is the port the
/// frame arrived on and its zone, which goes into the key.
pub fn parse_packet(link: LinkType, frame: &[u8], wire_len: u32, ingress: Ingress) -> Result<PacketInfo, SkipReason> {
    if link == LinkType::Ethernet {
        if let Some(info) = plain_ethernet(frame, wire_len, ingress) {
            return Ok(info);
        }
    }
    parse_any(link, frame, wire_len, ingress)
}

/// The frame most traffic is, parsed without the walk: Ethernet II with at
/// most one VLAN tag, carrying IPv4 without options or IPv6 without
/// extension headers, not a fragment, then TCP, UDP or ICMP. `None` for
/// any other frame, and for one that is any of those but would not parse,
/// so that [`parse_any`] decides (and names the reason). What it returns
/// is what `parse_any` returns for the same frame: the unit tests and the
/// fuzz target compare the two, and an integration test does on every
/// frame of the shared captures and on mutations of them.
///
/// The walk costs about 340 instructions a frame (callgrind), spread over
/// its steps' checks and the structures they hand on; this about 180, and
/// in a replay it runs on the one thread every packet crosses.
///
/// Public for the tests and fuzz targets that hold it to that.
#[doc(hidden)]
#[inline(always)]
pub fn plain_ethernet(frame: &[u8], wire_len: u32, ingress: Ingress) -> Option<PacketInfo> {
    let kind = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let (l3, kind, vlan) = if vlan::is_tag(kind) {
        let tag = vlan::VlanTag::new_checked(frame.get(ethernet::HEADER_LEN..)?).ok()?;
        (ethernet::HEADER_LEN + vlan::TAG_LEN, tag.ethertype(), tag.vlan_id())
    } else {
        (ethernet::HEADER_LEN, kind, 0)
    };
    let ip = frame.get(l3..)?;
    let (src, dst, protocol, l4_offset, l4, ip_len, version) = match kind {
        ethertype::IPV4 => {
            // Version 4, no options, offset 0 and MF clear, a total length
            // that covers the header (0 is the walk's to decide).
            const HEADER: usize = crate::wire::ipv4::MIN_HEADER_LEN;
            if ip.len() < HEADER || ip[0] != 0x45 || ip[6] & 0x3f != 0 || ip[7] != 0 {
                return None;
            }
            let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            if total_len < HEADER {
                return None;
            }
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src[..4].copy_from_slice(&ip[12..16]);
            dst[..4].copy_from_slice(&ip[16..20]);
            (src, dst, ip[9], l3 + HEADER, &ip[HEADER..total_len.min(ip.len())], total_len, IpVersion::V4)
        }
        ethertype::IPV6 => {
            if ip.len() < ipv6::HEADER_LEN || ip[0] >> 4 != 6 {
                return None;
            }
            let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            if payload_len == 0 {
                return None;
            }
            let src: [u8; 16] = ip[8..24].try_into().ok()?;
            let dst: [u8; 16] = ip[24..40].try_into().ok()?;
            let rest = &ip[ipv6::HEADER_LEN..];
            (
                src,
                dst,
                ip[6],
                l3 + ipv6::HEADER_LEN,
                &rest[..payload_len.min(rest.len())],
                ipv6::HEADER_LEN + payload_len,
                IpVersion::V6,
            )
        }
        _ => return None,
    };
    let transport = match protocol {
        ip_proto::TCP | ip_proto::UDP | ip_proto::ICMP | ip_proto::ICMPV6 => transport(protocol, l4).ok()?,
        _ => return None,
    };
    let link = LinkInfo { offset: l3, version, vlan_outer: vlan, vlan_inner: 0, encap: 0 };
    let network = Network { src, dst, protocol, fragment: Fragment::Whole, l4, l4_offset, ip_len: Some(ip_len) };
    Some(summary(&link, &network, &transport, wire_len, ingress))
}

/// Any frame of any link type: the walk through every layer the module's
/// comment names. Public for the tests and fuzz targets that compare it
/// with [`plain_ethernet`].
#[doc(hidden)]
pub fn parse_any(link: LinkType, frame: &[u8], wire_len: u32, ingress: Ingress) -> Result<PacketInfo, SkipReason> {
    let l3 = link_layer(link, frame)?;
    let network = match l3.version {
        IpVersion::V4 => ipv4(frame, l3.offset)?,
        IpVersion::V6 => ipv6(frame, l3.offset)?,
    };
    let transport = match network.fragment {
        Fragment::Later { .. } => Transport::NONE,
        _ => transport(network.protocol, network.l4)?,
    };
    Ok(summary(&l3, &network, &transport, wire_len, ingress))
}

/// What the layers found, as the flow table takes it.
#[inline(always)]
fn summary(l3: &LinkInfo, network: &Network, transport: &Transport, wire_len: u32, ingress: Ingress) -> PacketInfo {
    let (mut key, dir) = FlowKey::canonical(
        network.src,
        network.dst,
        transport.src_port,
        transport.dst_port,
        network.protocol,
        l3.version == IpVersion::V6,
        l3.vlan_outer,
        l3.vlan_inner,
        ingress.zone,
    );
    key.encap = l3.encap;
    PacketInfo {
        key,
        dir,
        port: ingress.port,
        wire_len,
        tcp_flags: transport.tcp_flags,
        icmp: transport.icmp,
        fragment: network.fragment,
        // Frames longer than 64 KiB (possible only with odd captures) leave
        // the payload offset unknown rather than wrapped.
        payload_offset: u16::try_from(network.l4_offset + transport.header_len).unwrap_or(0),
        l2_len: u8::try_from(l3.offset).unwrap_or(u8::MAX),
        trailer: trailer_len(wire_len, l3.offset, network.ip_len),
    }
}

/// Bytes of the frame on the wire past the IP packet's own length (padding,
/// a captured FCS): what it holds beyond its link header and IP packet; 0
/// when the IP header does not say its length (an IPv6 jumbogram).
fn trailer_len(wire_len: u32, l3_offset: usize, ip_len: Option<usize>) -> u16 {
    let Some(ip_len) = ip_len else { return 0 };
    let after = (wire_len as usize).saturating_sub(l3_offset).saturating_sub(ip_len);
    u16::try_from(after).unwrap_or(u16::MAX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IpVersion {
    V4,
    V6,
}

/// Where the IP header starts and what the link layer said about it.
struct LinkInfo {
    offset: usize,
    version: IpVersion,
    vlan_outer: u16,
    vlan_inner: u16,
    /// Bits of [`encap`] met on the way.
    encap: u8,
}

/// A link-layer header that doesn't parse: too short is a truncated link
/// layer; a contradicting field (a PPP address without its control byte, a
/// PPPoE version other than 1) means the frame isn't one that carries IP.
fn link_error(e: Error) -> SkipReason {
    match e {
        Error::Truncated => SkipReason::TruncatedLink,
        Error::Malformed => SkipReason::NonIp,
    }
}

fn link_layer(link: LinkType, frame: &[u8]) -> Result<LinkInfo, SkipReason> {
    let truncated = link_error;
    match link {
        LinkType::Ethernet => {
            let eth = ethernet::EthernetFrame::new_checked(frame).map_err(truncated)?;
            if eth.ethertype() != ethertype::FABRICPATH {
                return after_ethertype(frame, ethernet::HEADER_LEN, eth.ethertype(), 0);
            }
            // FabricPath: its header replaces the outer Ethernet header and
            // the host's whole Ethernet frame follows.
            let fp = FabricPathHeader::new_checked(frame).map_err(truncated)?;
            let inner = ethernet::EthernetFrame::new_checked(fp.payload()).map_err(truncated)?;
            let offset = crate::wire::fabricpath::HEADER_LEN + ethernet::HEADER_LEN;
            after_ethertype(frame, offset, inner.ethertype(), encap::FABRICPATH)
        }
        LinkType::LinuxSll => {
            let sll = SllHeader::new_checked(frame).map_err(truncated)?;
            after_ethertype(frame, crate::wire::linux_sll::SLL_HEADER_LEN, sll.protocol(), 0)
        }
        LinkType::LinuxSll2 => {
            let sll = Sll2Header::new_checked(frame).map_err(truncated)?;
            after_ethertype(frame, crate::wire::linux_sll::SLL2_HEADER_LEN, sll.protocol(), 0)
        }
        LinkType::Ppp if ppp::is_cisco_hdlc(frame) => link_layer(LinkType::CiscoHdlc, frame),
        LinkType::Ppp => {
            let ppp = PppFrame::new_checked(frame).map_err(truncated)?;
            let kind = ppp::ethertype_of(ppp.protocol()).ok_or(SkipReason::NonIp)?;
            after_ethertype(frame, ppp.header_len(), kind, encap::PPP)
        }
        LinkType::CiscoHdlc => {
            let hdlc = CiscoHdlcHeader::new_checked(frame).map_err(truncated)?;
            after_ethertype(frame, crate::wire::cisco_hdlc::HEADER_LEN, hdlc.protocol(), encap::CISCO_HDLC)
        }
        LinkType::Ppi => {
            let ppi = PpiHeader::new_checked(frame).map_err(truncated)?;
            // The metadata never was on the wire: the inner frame is read
            // under its own link type. 802.11 and the rest aren't parsed;
            // PPI in PPI would be nonsense.
            let inner = match LinkType::from_pcap(ppi.link_type()) {
                Some(LinkType::Ppi) | None => return Err(SkipReason::UnsupportedLinkType),
                Some(inner) => inner,
            };
            let mut info = link_layer(inner, ppi.payload())?;
            info.offset += ppi.header_len();
            Ok(info)
        }
        LinkType::Null | LinkType::Loop => {
            let header = LoopbackHeader::new_checked(frame).map_err(truncated)?;
            let af = match link {
                LinkType::Loop => header.loop_family(),
                _ => header.null_family(),
            };
            let version = match Family::from_af(af) {
                Family::Ipv4 => IpVersion::V4,
                Family::Ipv6 => IpVersion::V6,
                Family::Other(_) => return Err(SkipReason::NonIp),
            };
            Ok(untagged(crate::wire::null::HEADER_LEN, version))
        }
        LinkType::RawIp => match frame.first().map(|b| b >> 4) {
            None => Err(SkipReason::TruncatedIp),
            Some(4) => Ok(untagged(0, IpVersion::V4)),
            Some(6) => Ok(untagged(0, IpVersion::V6)),
            Some(_) => Err(SkipReason::BadIpVersion),
        },
    }
}

fn untagged(offset: usize, version: IpVersion) -> LinkInfo {
    LinkInfo { offset, version, vlan_outer: 0, vlan_inner: 0, encap: 0 }
}

/// Follows an EtherType at `offset` through VLAN tags, PPPoE and MPLS to the network header. Every tag is stepped over; the outermost
/// two are kept for the key. Each step consumes bytes, so the walk ends.
fn after_ethertype(frame: &[u8], mut offset: usize, mut kind: u16, mut encaps: u8) -> Result<LinkInfo, SkipReason> {
    let mut vlans = [0u16; 2];
    let mut depth = 0;
    let rest = |offset: usize| frame.get(offset..).unwrap_or_default();
    let version = loop {
        match kind {
            ethertype::IPV4 => break IpVersion::V4,
            ethertype::IPV6 => break IpVersion::V6,
            k if vlan::is_tag(k) => {
                let tag = vlan::VlanTag::new_checked(rest(offset)).map_err(link_error)?;
                if let Some(slot) = vlans.get_mut(depth) {
                    *slot = tag.vlan_id();
                }
                depth += 1;
                kind = tag.ethertype();
                offset += vlan::TAG_LEN;
            }
            ethertype::PPPOE_SESSION => {
                let session = PppoeSession::new_checked(rest(offset)).map_err(link_error)?;
                encaps |= encap::PPPOE;
                kind = ppp::ethertype_of(session.protocol()).ok_or(SkipReason::NonIp)?;
                offset += crate::wire::pppoe::SESSION_LEN;
            }
            ethertype::MPLS_UNICAST | ethertype::MPLS_MULTICAST => {
                offset += mpls::stack_len(rest(offset)).map_err(link_error)?;
                encaps |= encap::MPLS;
                break match mpls::under_stack(rest(offset)).map_err(|_| SkipReason::TruncatedIp)? {
                    mpls::Payload::Ipv4 => IpVersion::V4,
                    mpls::Payload::Ipv6 => IpVersion::V6,
                    mpls::Payload::Other => return Err(SkipReason::NonIp),
                };
            }
            _ => return Err(SkipReason::NonIp),
        }
    };
    Ok(LinkInfo { offset, version, vlan_outer: vlans[0], vlan_inner: vlans[1], encap: encaps })
}

/// The network layer's contribution: addresses, the protocol of what
/// follows, and where that starts.
struct Network<'a> {
    src: [u8; 16],
    dst: [u8; 16],
    protocol: u8,
    fragment: Fragment,
    /// The bytes from the transport header on (bounded by the IP length).
    l4: &'a [u8],
    /// Offset of `l4` in the frame.
    l4_offset: usize,
    /// The IP packet's length as its header says (IPv4 total length, IPv6
    /// payload length plus the fixed header); None for a jumbogram.
    ip_len: Option<usize>,
}

fn ip_error(e: Error) -> SkipReason {
    match e {
        Error::Truncated => SkipReason::TruncatedIp,
        Error::Malformed => SkipReason::BadIpHeader,
    }
}

/// The IP header at `offset`, after checking the version nibble agrees with
/// what the link layer announced.
fn ip_bytes(frame: &[u8], offset: usize, version: u8) -> Result<&[u8], SkipReason> {
    let bytes = frame.get(offset..).unwrap_or_default();
    match bytes.first() {
        None => Err(SkipReason::TruncatedIp),
        Some(b) if b >> 4 != version => Err(SkipReason::BadIpVersion),
        Some(_) => Ok(bytes),
    }
}

fn ipv4(frame: &[u8], offset: usize) -> Result<Network<'_>, SkipReason> {
    let ip = Ipv4Packet::new_checked(ip_bytes(frame, offset, 4)?).map_err(ip_error)?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src[..4].copy_from_slice(&ip.src_addr());
    dst[..4].copy_from_slice(&ip.dst_addr());
    let id = u32::from(ip.ident());
    let fragment = if ip.frag_offset() != 0 {
        Fragment::Later { id }
    } else if ip.more_frags() {
        Fragment::First { id }
    } else {
        Fragment::Whole
    };
    let mut protocol = ip.protocol();
    let mut l4 = ip.payload();
    let mut l4_offset = offset + ip.header_len();
    if protocol == ip_proto::AH && !matches!(fragment, Fragment::Later { .. }) {
        let ah = AuthHeader::new_checked(l4).map_err(ip_error)?;
        protocol = ah.next_header();
        l4 = ah.payload();
        l4_offset += ah.header_len();
    }
    let ip_len = Some(usize::from(ip.total_len()));
    Ok(Network { src, dst, protocol, fragment, l4, l4_offset, ip_len })
}

fn ipv6(frame: &[u8], offset: usize) -> Result<Network<'_>, SkipReason> {
    let ip = Ipv6Packet::new_checked(ip_bytes(frame, offset, 6)?).map_err(ip_error)?;
    let upper = ipv6::skip_extension_headers(ip.next_header(), ip.payload()).map_err(ip_error)?;
    let fragment = match upper.fragment {
        Some(f) if f.offset != 0 => Fragment::Later { id: f.ident },
        Some(f) if f.more => Fragment::First { id: f.ident },
        // Offset 0 without M: an atomic fragment (RFC 6946), a whole packet.
        _ => Fragment::Whole,
    };
    Ok(Network {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        protocol: upper.protocol,
        fragment,
        l4: upper.payload,
        l4_offset: offset + ipv6::HEADER_LEN + upper.offset,
        ip_len: match ip.payload_len() {
            0 => None,
            n => Some(ipv6::HEADER_LEN + usize::from(n)),
        },
    })
}

/// Ports, TCP flags and transport header length (0 for port-less protocols).
struct Transport {
    src_port: u16,
    dst_port: u16,
    tcp_flags: u8,
    /// ICMP type and code.
    icmp: [u8; 2],
    header_len: usize,
}

impl Transport {
    const NONE: Transport = Transport { src_port: 0, dst_port: 0, tcp_flags: 0, icmp: [0; 2], header_len: 0 };
}

fn transport_error(e: Error) -> SkipReason {
    match e {
        Error::Truncated => SkipReason::TruncatedTransport,
        Error::Malformed => SkipReason::BadTransportHeader,
    }
}

#[inline(always)]
fn transport(protocol: u8, l4: &[u8]) -> Result<Transport, SkipReason> {
    Ok(match protocol {
        ip_proto::TCP => {
            let tcp = TcpPacket::new_checked(l4).map_err(transport_error)?;
            Transport {
                src_port: tcp.src_port(),
                dst_port: tcp.dst_port(),
                tcp_flags: tcp.flags(),
                icmp: [0; 2],
                header_len: tcp.header_len(),
            }
        }
        ip_proto::UDP => {
            let udp = UdpPacket::new_checked(l4).map_err(transport_error)?;
            ports(udp.src_port(), udp.dst_port(), udp::HEADER_LEN)
        }
        ip_proto::UDP_LITE => {
            // Same layout as UDP, but the length field is a checksum
            // coverage, so only the header's presence is checked.
            if l4.len() < udp::HEADER_LEN {
                return Err(SkipReason::TruncatedTransport);
            }
            let udp = UdpPacket::new_unchecked(l4);
            ports(udp.src_port(), udp.dst_port(), udp::HEADER_LEN)
        }
        ip_proto::SCTP => {
            let sctp = SctpPacket::new_checked(l4).map_err(transport_error)?;
            ports(sctp.src_port(), sctp.dst_port(), sctp::HEADER_LEN)
        }
        ip_proto::ICMP | ip_proto::ICMPV6 => {
            let version = if protocol == ip_proto::ICMP { IcmpVersion::V4 } else { IcmpVersion::V6 };
            let icmp = IcmpPacket::new_checked(l4).map_err(transport_error)?;
            let port = icmp.flow_port(version);
            Transport { icmp: [icmp.msg_type(), icmp.code()], ..ports(port, port, crate::wire::icmp::HEADER_LEN) }
        }
        _ => Transport::NONE,
    })
}

fn ports(src_port: u16, dst_port: u16, header_len: usize) -> Transport {
    Transport { src_port, dst_port, tcp_flags: 0, icmp: [0; 2], header_len }
}

/// Checks the invariants any successful parse must hold, panicking on the
/// first that fails: the payload offset inside the frame, the ingress
/// carried through, VLAN ids in range, no ports on a later fragment, TCP
/// flags only on TCP, an ICMP type and code only on ICMP, an IPv4 key's upper address bytes zero, the key
/// canonical (rebuilding it from its own endpoints gives it back), no
/// unknown encapsulation bits.
///
/// Public for the fuzz targets (`fuzz/`), which check every parse the
/// fuzzer produces with it; the unit tests below use it too.
#[doc(hidden)]
pub fn check_invariants(frame: &[u8], info: &PacketInfo, ingress: Ingress) {
    assert!(usize::from(info.payload_offset) <= frame.len());
    assert_eq!((info.port, info.key.zone), (ingress.port, ingress.zone));
    assert!(info.key.vlan_outer < 4096 && info.key.vlan_inner < 4096);
    if matches!(info.fragment, Fragment::Later { .. }) {
        assert_eq!((info.key.port_lo, info.key.port_hi), (0, 0));
    }
    if info.key.proto != 6 {
        assert_eq!(info.tcp_flags, 0);
    }
    if !matches!(info.key.proto, 1 | 58) || matches!(info.fragment, Fragment::Later { .. }) {
        assert_eq!(info.icmp, [0, 0]);
    }
    if !info.key.is_ipv6() {
        assert_eq!(&info.key.addr_lo[4..], &[0u8; 12]);
        assert_eq!(&info.key.addr_hi[4..], &[0u8; 12]);
    }
    let e = info.key.endpoints(info.dir);
    let (k, d) = FlowKey::canonical(
        crate::key::ip_bytes(e.src).0,
        crate::key::ip_bytes(e.dst).0,
        e.sport,
        e.dport,
        info.key.proto,
        info.key.is_ipv6(),
        info.key.vlan_outer,
        info.key.vlan_inner,
        ingress.zone,
    );
    assert_eq!((FlowKey { encap: info.key.encap, ..k }, d), (info.key, info.dir));
    assert_eq!(info.key.encap & !0x1f, 0, "unknown encapsulation bits");
    assert!((info.key.addr_lo, info.key.port_lo) <= (info.key.addr_hi, info.key.port_hi));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{TCP_ACK, TCP_SYN};
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    const A4: [u8; 4] = [10, 0, 0, 1];
    const B4: [u8; 4] = [192, 168, 7, 9];

    fn a6() -> [u8; 16] {
        "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets()
    }
    fn b6() -> [u8; 16] {
        "2001:db8:ffff::2".parse::<Ipv6Addr>().unwrap().octets()
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn eth(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        f.extend_from_slice(&kind.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn tag(vid: u16, inner: u16) -> Vec<u8> {
        cat(&[&(0xe000 | vid).to_be_bytes(), &inner.to_be_bytes()])
    }

    /// IPv4 header + payload; `frag` is the 16-bit flags/offset field.
    fn ip4(proto: u8, src: [u8; 4], dst: [u8; 4], id: u16, frag: u16, payload: &[u8]) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&total.to_be_bytes());
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&frag.to_be_bytes());
        h.extend_from_slice(&[64, proto, 0, 0]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(payload);
        h
    }

    fn ip6(next: u8, src: [u8; 16], dst: [u8; 16], payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.extend_from_slice(&[next, 64]);
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(payload);
        h
    }

    fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = cat(&[&sport.to_be_bytes(), &dport.to_be_bytes()]);
        h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        h.extend_from_slice(payload);
        h
    }

    fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let len = (8 + payload.len()) as u16;
        cat(&[&sport.to_be_bytes(), &dport.to_be_bytes(), &len.to_be_bytes(), &[0, 0], payload])
    }

    fn icmp(kind: u8, ident: u16) -> Vec<u8> {
        cat(&[&[kind, 0, 0, 0], &ident.to_be_bytes(), &[0, 1], b"ping"])
    }

    fn v4(a: [u8; 4]) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(a))
    }

    fn parse(link: LinkType, frame: &[u8]) -> Result<PacketInfo, SkipReason> {
        parse_packet(link, frame, frame.len() as u32, Ingress::port(0))
    }

    #[test]
    fn tcp_over_ethernet() {
        let frame = eth(0x0800, &ip4(6, A4, B4, 1, 0x4000, &tcp(40000, 443, TCP_SYN, b"hello")));
        let info = parse_packet(LinkType::Ethernet, &frame, 1514, Ingress { port: 3, zone: 2 }).unwrap();
        let e = info.key.endpoints(info.dir);
        assert_eq!((e.src, e.dst, e.sport, e.dport), (v4(A4), v4(B4), 40000, 443));
        assert_eq!(info.key.proto, 6);
        assert_eq!((info.port, info.key.zone), (3, 2), "the port on the packet, the zone in the key");
        assert!(!info.key.is_ipv6());
        assert_eq!((info.key.vlan_outer, info.key.vlan_inner), (0, 0));
        assert_eq!(info.wire_len, 1514);
        assert_eq!(info.tcp_flags, TCP_SYN);
        assert_eq!(info.fragment, Fragment::Whole);
        assert_eq!(info.payload_offset, 14 + 20 + 20);
        assert_eq!(&frame[usize::from(info.payload_offset)..], b"hello");
    }

    /// Which frames the fast path takes, and that it then agrees with the
    /// walk; every other frame is the walk's alone.
    #[test]
    fn the_fast_path_takes_plain_frames_only() {
        let ingress = Ingress { port: 3, zone: 2 };
        let mut options = ip4(6, A4, B4, 1, 0, &tcp(1, 2, TCP_SYN, b""));
        options[0] = 0x46;
        options.splice(20..20, [1, 1, 1, 0]);
        let mut zero_len = ip4(17, A4, B4, 1, 0, &udp(1, 2, b"x"));
        zero_len[2..4].copy_from_slice(&[0, 0]);
        let mut padded = eth(0x0800, &ip4(17, A4, B4, 1, 0, &udp(53, 5353, b"")));
        padded.resize(60, 0);
        let taken: Vec<(&str, Vec<u8>)> = vec![
            ("IPv4 TCP", eth(0x0800, &ip4(6, A4, B4, 1, 0x4000, &tcp(40000, 443, TCP_SYN, b"hello")))),
            ("IPv4 UDP, padded", padded),
            ("IPv6 TCP", eth(0x86dd, &ip6(6, a6(), b6(), &tcp(443, 40000, TCP_ACK, b"x")))),
            ("IPv6 UDP", eth(0x86dd, &ip6(17, b6(), a6(), &udp(53, 9, b"q")))),
            ("VLAN, IPv4 TCP", eth(0x8100, &cat(&[&tag(7, 0x0800), &ip4(6, A4, B4, 1, 0, &tcp(1, 2, 0, b""))]))),
            ("ICMP echo", eth(0x0800, &ip4(1, A4, B4, 1, 0, &icmp(8, 77)))),
            (
                "ICMPv6 echo behind a VLAN tag",
                eth(0x8100, &cat(&[&tag(9, 0x86dd), &ip6(58, a6(), b6(), &icmp(128, 5))])),
            ),
        ];
        let walked: Vec<(&str, Vec<u8>)> = vec![
            (
                "two VLAN tags",
                eth(0x88a8, &cat(&[&tag(7, 0x8100), &tag(8, 0x0800), &ip4(6, A4, B4, 1, 0, &tcp(1, 2, 0, b""))])),
            ),
            ("PPPoE", eth(0x8864, &[0x11, 0, 0, 1, 0, 22, 0, 0x21])),
            ("IPv4 options", eth(0x0800, &options)),
            ("IPv4 total length 0", eth(0x0800, &zero_len)),
            ("IPv4 total length 19", {
                let mut f = eth(0x0800, &ip4(6, A4, B4, 1, 0, &tcp(1, 2, 0, b"")));
                f[16..18].copy_from_slice(&19u16.to_be_bytes());
                f
            }),
            ("later fragment, offset in its high bits", eth(0x0800, &ip4(17, A4, B4, 9, 0x0100, b"abcdefgh"))),
            ("IPv6 payload length 0", {
                let mut f = eth(0x86dd, &ip6(6, a6(), b6(), &tcp(1, 2, 0, b"")));
                f[18..20].copy_from_slice(&[0, 0]);
                f
            }),
            ("first fragment", eth(0x0800, &ip4(17, A4, B4, 9, 0x2000, &udp(1, 2, b"abcdefgh")))),
            ("later fragment", eth(0x0800, &ip4(17, A4, B4, 9, 1, b"abcdefgh"))),
            ("GRE", eth(0x0800, &ip4(47, A4, B4, 1, 0, &[0; 8]))),
            (
                "IPv6 extension header",
                eth(0x86dd, &ip6(0, a6(), b6(), &cat(&[&[17, 0, 0, 0, 0, 0, 0, 0], &udp(1, 2, b"")]))),
            ),
            ("TCP cut short", eth(0x0800, &ip4(6, A4, B4, 1, 0, &tcp(1, 2, 0, b"")))[..50].to_vec()),
            ("IPv4 version 6", {
                let mut f = eth(0x0800, &ip4(6, A4, B4, 1, 0, &tcp(1, 2, 0, b"")));
                f[14] = 0x65;
                f
            }),
        ];
        for (what, frame) in &taken {
            let fast = plain_ethernet(frame, 1514, ingress);
            assert!(fast.is_some(), "{what}: not taken");
            assert_eq!(fast.ok_or(SkipReason::NonIp), parse_any(LinkType::Ethernet, frame, 1514, ingress), "{what}");
        }
        for (what, frame) in &walked {
            assert_eq!(plain_ethernet(frame, 1514, ingress), None, "{what}: taken");
            assert_eq!(
                parse_packet(LinkType::Ethernet, frame, 1514, ingress),
                parse_any(LinkType::Ethernet, frame, 1514, ingress),
                "{what}"
            );
        }
    }

    #[test]
    fn both_directions_share_a_key() {
        let fwd = eth(0x0800, &ip4(6, A4, B4, 1, 0, &tcp(40000, 443, TCP_SYN, b"")));
        let rev = eth(0x0800, &ip4(6, B4, A4, 1, 0, &tcp(443, 40000, TCP_SYN | TCP_ACK, b"")));
        let f = parse(LinkType::Ethernet, &fwd).unwrap();
        let r = parse(LinkType::Ethernet, &rev).unwrap();
        assert_eq!(f.key, r.key);
        assert_eq!(f.dir, r.dir.reverse());
        assert_eq!(r.tcp_flags, TCP_SYN | TCP_ACK);
    }

    #[test]
    fn ethernet_padding_is_not_payload() {
        let mut frame = eth(0x0800, &ip4(17, A4, B4, 1, 0, &udp(53, 5353, b"")));
        frame.resize(60, 0);
        let info = parse(LinkType::Ethernet, &frame).unwrap();
        assert_eq!(info.key.proto, 17);
        assert_eq!(info.payload_offset, 14 + 20 + 8);
        // 14 bytes of link header, 28 of IP, 18 of padding.
        assert_eq!((info.l2_len, info.trailer, info.ip_len()), (14, 18, 28));
    }

    #[test]
    fn ip_octets_from_link_header_and_ip_length() {
        let ip = ip4(17, A4, B4, 1, 0, &udp(1000, 2000, b"abcd"));
        let tagged = eth(0x8100, &cat(&[&tag(100, 0x0800), &ip]));
        let info = parse(LinkType::Ethernet, &tagged).unwrap();
        assert_eq!((info.l2_len, info.trailer, info.ip_len()), (18, 0, 32));
        // A snap-cut frame: the IP length still counts, from the wire length.
        let long = eth(0x8100, &cat(&[&tag(100, 0x0800), &ip4(17, A4, B4, 1, 0, &udp(1000, 2000, &[7; 200]))]));
        let info = parse_packet(LinkType::Ethernet, &long[..64], long.len() as u32, Ingress::default()).unwrap();
        assert_eq!((info.l2_len, info.trailer, info.ip_len()), (18, 0, 228));
        let raw = parse(LinkType::RawIp, &ip).unwrap();
        assert_eq!((raw.l2_len, raw.trailer, raw.ip_len()), (0, 0, 32));
    }

    #[test]
    fn vlan_tags() {
        let ip = ip4(17, A4, B4, 1, 0, &udp(1000, 2000, b"x"));
        let single = eth(0x8100, &cat(&[&tag(100, 0x0800), &ip]));
        let info = parse(LinkType::Ethernet, &single).unwrap();
        assert_eq!((info.key.vlan_outer, info.key.vlan_inner), (100, 0));
        assert_eq!(info.payload_offset, 14 + 4 + 20 + 8);

        for outer_tpid in [0x88a8u16, 0x9100, 0x8100] {
            let qinq = eth(outer_tpid, &cat(&[&tag(200, 0x8100), &tag(300, 0x0800), &ip]));
            let info = parse(LinkType::Ethernet, &qinq).unwrap();
            assert_eq!((info.key.vlan_outer, info.key.vlan_inner), (200, 300), "tpid {outer_tpid:#x}");
            assert_eq!(info.payload_offset, 14 + 8 + 20 + 8);
        }

        // A third tag is stepped over but not kept.
        let triple = eth(0x88a8, &cat(&[&tag(1, 0x8100), &tag(2, 0x8100), &tag(3, 0x0800), &ip]));
        let info = parse(LinkType::Ethernet, &triple).unwrap();
        assert_eq!((info.key.vlan_outer, info.key.vlan_inner), (1, 2));
        assert_eq!(info.key.port_lo, 1000);

        // Tagged and untagged copies of a flow are different flows.
        let plain = parse(LinkType::Ethernet, &eth(0x0800, &ip)).unwrap();
        assert_ne!(plain.key, parse(LinkType::Ethernet, &single).unwrap().key);
    }

    #[test]
    fn ipv6_with_extension_headers() {
        let mut ext = vec![60, 0, 1, 4, 0, 0, 0, 0]; // hop-by-hop -> dest opts
        ext.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]); // dest opts -> TCP
        ext.extend_from_slice(&tcp(443, 50000, TCP_ACK, b"data"));
        let frame = eth(0x86dd, &ip6(0, a6(), b6(), &ext));
        let info = parse(LinkType::Ethernet, &frame).unwrap();
        assert!(info.key.is_ipv6());
        assert_eq!(info.key.proto, 6);
        let e = info.key.endpoints(info.dir);
        assert_eq!(e.src, IpAddr::V6(Ipv6Addr::from(a6())));
        assert_eq!((e.sport, e.dport), (443, 50000));
        assert_eq!(info.tcp_flags, TCP_ACK);
        assert_eq!(&frame[usize::from(info.payload_offset)..], b"data");
    }

    #[test]
    fn ipv4_fragments() {
        let l4 = udp(5000, 6000, &[0u8; 32]);
        let first = eth(0x0800, &ip4(17, A4, B4, 0xbeef, 0x2000, &l4));
        let info = parse(LinkType::Ethernet, &first).unwrap();
        assert_eq!(info.fragment, Fragment::First { id: 0xbeef });
        assert_eq!((info.key.port_lo, info.key.port_hi), (5000, 6000));

        // Offset 8 bytes, more to come: data that looks like a UDP header
        // must not be read as one.
        let middle = eth(0x0800, &ip4(17, A4, B4, 0xbeef, 0x2001, &l4));
        let info = parse(LinkType::Ethernet, &middle).unwrap();
        assert_eq!(info.fragment, Fragment::Later { id: 0xbeef });
        assert_eq!((info.key.port_lo, info.key.port_hi, info.key.proto), (0, 0, 17));
        assert_eq!(info.payload_offset, 14 + 20);

        let last = eth(0x0800, &ip4(17, A4, B4, 0xbeef, 0x0004, &[1, 2]));
        let info = parse(LinkType::Ethernet, &last).unwrap();
        assert_eq!(info.fragment, Fragment::Later { id: 0xbeef });

        // A later fragment too short for any transport header is still fine.
        let info = parse(LinkType::Ethernet, &eth(0x0800, &ip4(6, A4, B4, 7, 0x0010, &[]))).unwrap();
        assert_eq!(info.fragment, Fragment::Later { id: 7 });
    }

    fn frag6(next: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
        cat(&[&[next, 0], &(offset | u16::from(more)).to_be_bytes(), &id.to_be_bytes()])
    }

    #[test]
    fn ipv6_fragments() {
        let l4 = udp(5000, 6000, &[0u8; 16]);
        let first = eth(0x86dd, &ip6(44, a6(), b6(), &cat(&[&frag6(17, 0, true, 0xdead_beef), &l4])));
        let info = parse(LinkType::Ethernet, &first).unwrap();
        assert_eq!(info.fragment, Fragment::First { id: 0xdead_beef });
        assert_eq!((info.key.port_lo, info.key.port_hi), (5000, 6000));
        assert_eq!(info.payload_offset, 14 + 40 + 8 + 8);

        let later = eth(0x86dd, &ip6(44, a6(), b6(), &cat(&[&frag6(17, 1232, false, 0xdead_beef), &l4])));
        let info = parse(LinkType::Ethernet, &later).unwrap();
        assert_eq!(info.fragment, Fragment::Later { id: 0xdead_beef });
        assert_eq!((info.key.port_lo, info.key.port_hi, info.key.proto), (0, 0, 17));
        assert_eq!(info.payload_offset, 14 + 40 + 8);

        let atomic = eth(0x86dd, &ip6(44, a6(), b6(), &cat(&[&frag6(17, 0, false, 5), &l4])));
        assert_eq!(parse(LinkType::Ethernet, &atomic).unwrap().fragment, Fragment::Whole);
    }

    #[test]
    fn icmp_echo_identifier_is_both_ports() {
        let req = eth(0x0800, &ip4(1, A4, B4, 1, 0, &icmp(8, 0x4242)));
        let rep = eth(0x0800, &ip4(1, B4, A4, 1, 0, &icmp(0, 0x4242)));
        let q = parse(LinkType::Ethernet, &req).unwrap();
        let r = parse(LinkType::Ethernet, &rep).unwrap();
        assert_eq!(q.key, r.key);
        assert_ne!(q.dir, r.dir);
        assert_eq!((q.key.port_lo, q.key.port_hi, q.key.proto), (0x4242, 0x4242, 1));
        assert_eq!(&req[usize::from(q.payload_offset)..], b"ping");

        let other = eth(0x0800, &ip4(1, A4, B4, 1, 0, &icmp(8, 0x4343)));
        assert_ne!(parse(LinkType::Ethernet, &other).unwrap().key, q.key);

        let unreachable = eth(0x0800, &ip4(1, B4, A4, 1, 0, &icmp(3, 0x4242)));
        let u = parse(LinkType::Ethernet, &unreachable).unwrap();
        assert_eq!((u.key.port_lo, u.key.port_hi), (0, 0));
        // Type and code ride beside the key, which holds only the identifier.
        assert_eq!((q.icmp, r.icmp, u.icmp), ([8, 0], [0, 0], [3, 0]));
        let mut port_unreachable = icmp(3, 0);
        port_unreachable[1] = 3;
        let pu = parse(LinkType::Ethernet, &eth(0x0800, &ip4(1, B4, A4, 1, 0, &port_unreachable))).unwrap();
        assert_eq!((pu.icmp, pu.key), ([3, 3], u.key));
    }

    #[test]
    fn icmpv6() {
        let echo = eth(0x86dd, &ip6(58, a6(), b6(), &icmp(128, 7)));
        let info = parse(LinkType::Ethernet, &echo).unwrap();
        assert_eq!((info.key.port_lo, info.key.port_hi, info.key.proto), (7, 7, 58));
        assert_eq!(info.icmp, [128, 0]);
        let solicit = eth(0x86dd, &ip6(58, a6(), b6(), &icmp(135, 7)));
        let info = parse(LinkType::Ethernet, &solicit).unwrap();
        assert_eq!((info.key.port_lo, info.key.port_hi), (0, 0));
    }

    #[test]
    fn other_protocols_are_portless_and_tunnels_keep_the_outer_header() {
        // GRE carrying IPv4: the flow is the GRE flow between the outer
        // addresses.
        let inner = ip4(6, [1, 1, 1, 1], [2, 2, 2, 2], 1, 0, &tcp(1, 2, 0, b""));
        let gre = cat(&[&[0, 0, 0x08, 0x00], &inner]);
        let info = parse(LinkType::Ethernet, &eth(0x0800, &ip4(47, A4, B4, 1, 0, &gre))).unwrap();
        assert_eq!((info.key.proto, info.key.port_lo, info.key.port_hi), (47, 0, 0));
        assert_eq!(info.key.lo(), v4(A4));
        assert_eq!(info.payload_offset, 14 + 20);

        // IPv4 in IPv4 and IPv6 in IPv4.
        let info = parse(LinkType::Ethernet, &eth(0x0800, &ip4(4, A4, B4, 1, 0, &inner))).unwrap();
        assert_eq!((info.key.proto, info.key.lo(), info.key.hi()), (4, v4(A4), v4(B4)));
        let inner6 = ip6(17, a6(), b6(), &udp(1, 2, b""));
        let info = parse(LinkType::Ethernet, &eth(0x0800, &ip4(41, A4, B4, 1, 0, &inner6))).unwrap();
        assert_eq!((info.key.proto, info.key.port_lo), (41, 0));

        // VXLAN is UDP to port 4789: keyed on the outer UDP ports.
        let vxlan = udp(33333, 4789, &cat(&[&[8, 0, 0, 0, 0, 0, 1, 0], &eth(0x0800, &inner)]));
        let info = parse(LinkType::Ethernet, &eth(0x0800, &ip4(17, A4, B4, 1, 0, &vxlan))).unwrap();
        assert_eq!((info.key.proto, info.key.port_lo, info.key.port_hi), (17, 33333, 4789));

        // ESP after IPv6: port-less.
        let info = parse(LinkType::Ethernet, &eth(0x86dd, &ip6(50, a6(), b6(), &[0; 16]))).unwrap();
        assert_eq!((info.key.proto, info.key.port_lo), (50, 0));
    }

    #[test]
    fn authentication_header_is_skipped() {
        let ah = |next: u8| cat(&[&[next, 4, 0, 0], &[0xaa; 4], &[0, 0, 0, 1], &[0; 12]]);
        let v4 = eth(0x0800, &ip4(51, A4, B4, 1, 0, &cat(&[&ah(1), &icmp(8, 99)])));
        let info = parse(LinkType::Ethernet, &v4).unwrap();
        assert_eq!((info.key.proto, info.key.port_lo), (1, 99));
        assert_eq!(&v4[usize::from(info.payload_offset)..], b"ping");
        let v6 = eth(0x86dd, &ip6(51, a6(), b6(), &cat(&[&ah(17), &udp(500, 4500, b"")])));
        let info = parse(LinkType::Ethernet, &v6).unwrap();
        assert_eq!((info.key.proto, info.key.port_lo, info.key.port_hi), (17, 500, 4500));
        // An AH whose length can't hold its own fields.
        let bad = eth(0x0800, &ip4(51, A4, B4, 1, 0, &[6, 0, 0, 0, 0, 0, 0, 0]));
        assert_eq!(parse(LinkType::Ethernet, &bad), Err(SkipReason::BadIpHeader));
    }

    #[test]
    fn sctp_and_udp_lite_ports() {
        let sctp = cat(&[&2905u16.to_be_bytes(), &3868u16.to_be_bytes(), &[0; 8]]);
        let info = parse(LinkType::Ethernet, &eth(0x0800, &ip4(132, A4, B4, 1, 0, &sctp))).unwrap();
        assert_eq!((info.key.proto, info.key.port_lo, info.key.port_hi), (132, 2905, 3868));
        // UDP-Lite coverage of 0 would be a bad UDP length; it is valid here.
        let lite = cat(&[&1234u16.to_be_bytes(), &80u16.to_be_bytes(), &[0, 0, 0, 0]]);
        let info = parse(LinkType::Ethernet, &eth(0x0800, &ip4(136, A4, B4, 1, 0, &lite))).unwrap();
        assert_eq!((info.key.proto, info.key.port_lo, info.key.port_hi), (136, 1234, 80));
        let cut = eth(0x0800, &ip4(136, A4, B4, 1, 0, &lite[..7]));
        assert_eq!(parse(LinkType::Ethernet, &cut), Err(SkipReason::TruncatedTransport));
    }

    fn pppoe(protocol: u16, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() + 2) as u16;
        cat(&[&[0x11, 0x00, 0x00, 0x2a], &len.to_be_bytes(), &protocol.to_be_bytes(), payload])
    }

    #[test]
    fn pppoe_sessions_plain_and_behind_vlan_tags() {
        let ip = ip4(17, A4, B4, 1, 0, &udp(53, 5353, b"q"));
        let plain = parse(LinkType::Ethernet, &eth(0x0800, &ip)).unwrap();
        let info = parse(LinkType::Ethernet, &eth(0x8864, &pppoe(0x0021, &ip))).unwrap();
        assert_eq!(info.key.encap, encap::PPPOE);
        assert_eq!((info.key.port_lo, info.key.port_hi), (53, 5353));
        assert_eq!(info.payload_offset, 14 + 8 + 20 + 8);
        // The same 5-tuple without PPPoE is another flow.
        assert_ne!(info.key, plain.key);
        assert_eq!(FlowKey { encap: 0, ..info.key }, plain.key);

        // Two VLAN tags, then PPPoE (as in dns.pcap), IPv6 inside.
        let ip6_pkt = ip6(6, a6(), b6(), &tcp(1, 2, 0, b"x"));
        let qinq = eth(0x8100, &cat(&[&tag(10, 0x8100), &tag(20, 0x8864), &pppoe(0x0057, &ip6_pkt)]));
        let info = parse(LinkType::Ethernet, &qinq).unwrap();
        assert_eq!((info.key.vlan_outer, info.key.vlan_inner, info.key.encap), (10, 20, encap::PPPOE));
        assert!(info.key.is_ipv6());
        assert_eq!(&qinq[usize::from(info.payload_offset)..], b"x");

        // PPP control traffic (LCP) and discovery carry no IP.
        assert_eq!(parse(LinkType::Ethernet, &eth(0x8864, &pppoe(0xc021, &[1, 1, 0, 4]))), Err(SkipReason::NonIp));
        assert_eq!(parse(LinkType::Ethernet, &eth(0x8863, &[0x11, 0x09, 0, 0, 0, 0])), Err(SkipReason::NonIp));
        // MPLS inside PPPoE.
        let labelled = pppoe(0x0281, &cat(&[&[0, 0, 0x11, 64], &ip]));
        let info = parse(LinkType::Ethernet, &eth(0x8864, &labelled)).unwrap();
        assert_eq!(info.key.encap, encap::PPPOE | encap::MPLS);
        let frame = eth(0x8864, &pppoe(0x0021, &ip));
        assert_eq!(parse(LinkType::Ethernet, &frame[..14 + 7]), Err(SkipReason::TruncatedLink));
        assert_eq!(parse(LinkType::Ethernet, &frame[..14 + 8]), Err(SkipReason::TruncatedIp));
    }

    #[test]
    fn mpls_label_stacks() {
        let ip = ip4(6, A4, B4, 1, 0, &tcp(179, 40000, 0, b""));
        let one = eth(0x8847, &cat(&[&[0x00, 0x01, 0x21, 0xfe], &ip]));
        let info = parse(LinkType::Ethernet, &one).unwrap();
        assert_eq!((info.key.encap, info.key.port_lo), (encap::MPLS, 179));
        assert_eq!(info.payload_offset, 14 + 4 + 20 + 20);

        // Three labels, multicast EtherType, behind a VLAN tag, IPv6 under.
        let ip6_pkt = ip6(17, a6(), b6(), &udp(1, 2, b""));
        let stack = [0, 0x01, 0x20, 64, 0, 0x02, 0x20, 64, 0, 0x03, 0x21, 64];
        let three = eth(0x8100, &cat(&[&tag(7, 0x8848), &stack, &ip6_pkt]));
        let info = parse(LinkType::Ethernet, &three).unwrap();
        assert_eq!((info.key.vlan_outer, info.key.encap), (7, encap::MPLS));
        assert!(info.key.is_ipv6());
        assert_eq!(info.payload_offset as usize, 18 + 12 + 40 + 8);

        // A pseudowire control word under the stack is not IP.
        let pw = eth(0x8847, &cat(&[&[0, 0x01, 0x21, 64], &[0; 4], &ip]));
        assert_eq!(parse(LinkType::Ethernet, &pw), Err(SkipReason::NonIp));
        // A stack without its bottom runs off the frame.
        assert_eq!(parse(LinkType::Ethernet, &eth(0x8847, &[0, 0x01, 0x20, 64])), Err(SkipReason::TruncatedLink));
        assert_eq!(parse(LinkType::Ethernet, &one[..18]), Err(SkipReason::TruncatedIp));
    }

    #[test]
    fn fabricpath_inner_frame() {
        let ip = ip4(6, A4, B4, 1, 0, &tcp(8009, 38856, 0, b""));
        let inner = eth(0x8100, &cat(&[&tag(7, 0x0800), &ip]));
        let outer = cat(&[&[2, 0x0a, 0xbd, 0, 0, 0, 2, 0x0a, 0xbc, 0, 0, 0, 0x89, 0x03, 0x40, 0x20], &inner]);
        let info = parse(LinkType::Ethernet, &outer).unwrap();
        assert_eq!((info.key.encap, info.key.vlan_outer, info.key.port_lo), (encap::FABRICPATH, 7, 8009));
        assert_eq!(info.payload_offset as usize, 16 + 18 + 20 + 20);
        // The same packet without FabricPath keys alike but for the bit.
        let plain = parse(LinkType::Ethernet, &inner).unwrap();
        assert_eq!(FlowKey { encap: 0, ..info.key }, plain.key);
        for cut in 14..16 + 14 {
            assert_eq!(parse(LinkType::Ethernet, &outer[..cut]), Err(SkipReason::TruncatedLink), "cut {cut}");
        }
    }

    #[test]
    fn ppp_and_cisco_hdlc_links() {
        let ip = ip4(17, A4, B4, 1, 0, &udp(443, 44083, b""));
        for header in [&[0x00, 0x21][..], &[0xff, 0x03, 0x00, 0x21], &[0x21]] {
            let info = parse(LinkType::Ppp, &cat(&[header, &ip])).unwrap();
            assert_eq!((info.key.encap, info.key.port_lo), (encap::PPP, 443), "{header:?}");
            assert_eq!(info.payload_offset as usize, header.len() + 28);
        }
        let v6 = ip6(6, a6(), b6(), &tcp(1, 2, 0, b""));
        assert!(parse(LinkType::Ppp, &cat(&[&[0xff, 0x03, 0x00, 0x57], &v6])).unwrap().key.is_ipv6());
        // LCP, and an address without control.
        assert_eq!(parse(LinkType::Ppp, &[0xff, 0x03, 0xc0, 0x21, 1, 1, 0, 4]), Err(SkipReason::NonIp));
        assert_eq!(parse(LinkType::Ppp, &cat(&[&[0xff, 0x00, 0x00, 0x21], &ip])), Err(SkipReason::NonIp));
        assert_eq!(parse(LinkType::Ppp, &[0xff, 0x03, 0x00]), Err(SkipReason::TruncatedLink));

        let hdlc = cat(&[&[0x0f, 0x00, 0x08, 0x00], &ip]);
        let info = parse(LinkType::CiscoHdlc, &hdlc).unwrap();
        assert_eq!((info.key.encap, info.payload_offset), (encap::CISCO_HDLC, 32));
        // Cisco HDLC frames stored as PPP (BGP_Cisco_hdlc_slarp.pcap).
        assert_eq!(parse(LinkType::Ppp, &hdlc).unwrap().key, info.key);
        // MPLS over Cisco HDLC (BGP_redist.pcap).
        let labelled = cat(&[&[0x0f, 0x00, 0x88, 0x47, 0x00, 0x01, 0x2d, 0xfe], &ip]);
        assert_eq!(parse(LinkType::CiscoHdlc, &labelled).unwrap().key.encap, encap::CISCO_HDLC | encap::MPLS);
        // SLARP keepalives.
        assert_eq!(parse(LinkType::CiscoHdlc, &[0x8f, 0, 0x80, 0x35, 0, 0, 0, 2]), Err(SkipReason::NonIp));
        assert_eq!(parse(LinkType::CiscoHdlc, &hdlc[..3]), Err(SkipReason::TruncatedLink));
    }

    #[test]
    fn ppi_then_inner_link_type() {
        let frame = eth(0x0800, &ip4(17, A4, B4, 1, 0, &udp(5353, 5353, b"")));
        let plain = parse(LinkType::Ethernet, &frame).unwrap();
        // 8 fixed bytes and one 8-byte field, inner Ethernet (as in someip_sd_sample.pcap).
        let ppi = cat(&[&[0, 0, 16, 0, 1, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0], &frame]);
        let info = parse(LinkType::Ppi, &ppi).unwrap();
        assert_eq!(info.key, plain.key);
        assert_eq!(info.payload_offset, plain.payload_offset + 16);
        // Raw IP inside.
        let raw = cat(&[&[0, 0, 8, 0, 101, 0, 0, 0], &ip4(6, A4, B4, 1, 0, &tcp(1, 2, 0, b""))]);
        assert_eq!(parse(LinkType::Ppi, &raw).unwrap().payload_offset, 8 + 40);
        // 802.11 (105) is not parsed; neither is PPI in PPI.
        let wifi = cat(&[&[0, 0, 8, 0, 105, 0, 0, 0], &[0; 40]]);
        assert_eq!(parse(LinkType::Ppi, &wifi), Err(SkipReason::UnsupportedLinkType));
        let nested = cat(&[&[0, 0, 8, 0, 192, 0, 0, 0], &ppi]);
        assert_eq!(parse(LinkType::Ppi, &nested), Err(SkipReason::UnsupportedLinkType));
        // A header length beyond the frame.
        assert_eq!(parse(LinkType::Ppi, &[0, 0, 64, 0, 1, 0, 0, 0, 0]), Err(SkipReason::TruncatedLink));
        assert_eq!(parse(LinkType::Ppi, &ppi[..16 + 13]), Err(SkipReason::TruncatedLink));
    }

    #[test]
    fn new_link_types_from_pcap() {
        assert_eq!(LinkType::from_pcap(9), Some(LinkType::Ppp));
        assert_eq!(LinkType::from_pcap(104), Some(LinkType::CiscoHdlc));
        assert_eq!(LinkType::from_pcap(192), Some(LinkType::Ppi));
    }

    #[test]
    fn linux_cooked_captures() {
        let ip = ip4(17, A4, B4, 1, 0, &udp(1, 2, b""));
        let mut sll = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0x81, 0x00];
        sll.extend_from_slice(&tag(42, 0x0800));
        sll.extend_from_slice(&ip);
        let info = parse(LinkType::LinuxSll, &sll).unwrap();
        assert_eq!((info.key.vlan_outer, info.key.port_lo), (42, 1));
        assert_eq!(info.payload_offset, 16 + 4 + 20 + 8);

        let mut sll2 = vec![0x86, 0xdd, 0, 0, 0, 0, 0, 2, 0, 1, 4, 6, 2, 0, 0, 0, 0, 1, 0, 0];
        sll2.extend_from_slice(&ip6(17, a6(), b6(), &udp(1, 2, b"")));
        let info = parse(LinkType::LinuxSll2, &sll2).unwrap();
        assert!(info.key.is_ipv6());
        assert_eq!(info.payload_offset, 20 + 40 + 8);

        // Netlink monitor traffic: protocol is a netlink family.
        let mut netlink = sll.clone();
        netlink[2..4].copy_from_slice(&824u16.to_be_bytes());
        netlink[14..16].copy_from_slice(&0u16.to_be_bytes());
        assert_eq!(parse(LinkType::LinuxSll, &netlink), Err(SkipReason::NonIp));
        assert_eq!(parse(LinkType::LinuxSll, &sll[..15]), Err(SkipReason::TruncatedLink));
        assert_eq!(parse(LinkType::LinuxSll2, &sll2[..19]), Err(SkipReason::TruncatedLink));
    }

    #[test]
    fn bsd_loopback_families_and_byte_orders() {
        let ip4_pkt = ip4(6, A4, B4, 1, 0, &tcp(1, 2, 0, b""));
        let ip6_pkt = ip6(6, a6(), b6(), &tcp(1, 2, 0, b""));
        for (af, pkt, v6) in [(2u32, &ip4_pkt, false), (24, &ip6_pkt, true), (28, &ip6_pkt, true), (30, &ip6_pkt, true)]
        {
            for header in [af.to_le_bytes(), af.to_be_bytes()] {
                let info = parse(LinkType::Null, &cat(&[&header, pkt])).unwrap();
                assert_eq!(info.key.is_ipv6(), v6, "af {af}");
                assert_eq!(info.payload_offset as usize, 4 + pkt.len());
            }
            let info = parse(LinkType::Loop, &cat(&[&af.to_be_bytes(), pkt])).unwrap();
            assert_eq!(info.key.is_ipv6(), v6);
        }
        // AF_INET6 of Linux (10) is not a BSD loopback family.
        assert_eq!(parse(LinkType::Null, &cat(&[&10u32.to_le_bytes(), &ip6_pkt])), Err(SkipReason::NonIp));
        // The family says IPv4 but the packet is IPv6.
        assert_eq!(parse(LinkType::Loop, &cat(&[&2u32.to_be_bytes(), &ip6_pkt])), Err(SkipReason::BadIpVersion));
        assert_eq!(parse(LinkType::Null, &[2, 0, 0]), Err(SkipReason::TruncatedLink));
    }

    #[test]
    fn raw_ip() {
        let info = parse(LinkType::RawIp, &ip4(17, A4, B4, 1, 0, &udp(1, 2, b""))).unwrap();
        assert_eq!((info.key.proto, info.payload_offset), (17, 28));
        let info = parse(LinkType::RawIp, &ip6(17, a6(), b6(), &udp(1, 2, b""))).unwrap();
        assert!(info.key.is_ipv6());
        assert_eq!(parse(LinkType::RawIp, &[]), Err(SkipReason::TruncatedIp));
        assert_eq!(parse(LinkType::RawIp, &[0x50; 40]), Err(SkipReason::BadIpVersion));
    }

    #[test]
    fn non_ip_and_bad_versions() {
        assert_eq!(parse(LinkType::Ethernet, &eth(0x0806, &[0; 28])), Err(SkipReason::NonIp));
        assert_eq!(parse(LinkType::Ethernet, &eth(0x88cc, &[0; 28])), Err(SkipReason::NonIp));
        // 802.3 length field with LLC.
        assert_eq!(parse(LinkType::Ethernet, &eth(0x0026, &[0x42; 38])), Err(SkipReason::NonIp));
        // VLAN-tagged ARP.
        assert_eq!(parse(LinkType::Ethernet, &eth(0x8100, &tag(5, 0x0806))), Err(SkipReason::NonIp));
        let v6_in_v4 = eth(0x0800, &ip6(17, a6(), b6(), &udp(1, 2, b"")));
        assert_eq!(parse(LinkType::Ethernet, &v6_in_v4), Err(SkipReason::BadIpVersion));
        let v4_in_v6 = eth(0x86dd, &ip4(17, A4, B4, 1, 0, &udp(1, 2, b"")));
        assert_eq!(parse(LinkType::Ethernet, &v4_in_v6), Err(SkipReason::BadIpVersion));
    }

    #[test]
    fn bad_headers() {
        let mut short_ihl = eth(0x0800, &ip4(17, A4, B4, 1, 0, &udp(1, 2, b"")));
        short_ihl[14] = 0x44;
        assert_eq!(parse(LinkType::Ethernet, &short_ihl), Err(SkipReason::BadIpHeader));
        let mut bad_offset = eth(0x0800, &ip4(6, A4, B4, 1, 0, &tcp(1, 2, 0, b"")));
        bad_offset[14 + 20 + 12] = 0x40;
        assert_eq!(parse(LinkType::Ethernet, &bad_offset), Err(SkipReason::BadTransportHeader));
        let mut bad_udp_len = eth(0x0800, &ip4(17, A4, B4, 1, 0, &udp(1, 2, b"")));
        bad_udp_len[14 + 20 + 5] = 4;
        assert_eq!(parse(LinkType::Ethernet, &bad_udp_len), Err(SkipReason::BadTransportHeader));
    }

    /// Cutting a frame at every byte gives the reason of the layer the cut
    /// falls in, and the full frame parses.
    #[test]
    fn truncation_at_every_boundary() {
        let cases: [(Vec<u8>, [usize; 3]); 4] = [
            (eth(0x0800, &ip4(6, A4, B4, 1, 0, &tcp(1, 2, 0, b""))), [14, 34, 54]),
            (eth(0x8100, &cat(&[&tag(9, 0x86dd), &ip6(17, a6(), b6(), &udp(1, 2, b""))])), [18, 58, 66]),
            (eth(0x86dd, &ip6(0, a6(), b6(), &cat(&[&[58, 0, 0, 0, 0, 0, 0, 0], &icmp(128, 1)]))), [14, 62, 70]),
            (eth(0x0800, &ip4(132, A4, B4, 1, 0, &[0; 12])), [14, 34, 46]),
        ];
        for (frame, [link_end, ip_end, l4_end]) in cases {
            for cut in 0..l4_end {
                let expected = if cut < link_end {
                    SkipReason::TruncatedLink
                } else if cut < ip_end {
                    SkipReason::TruncatedIp
                } else {
                    SkipReason::TruncatedTransport
                };
                assert_eq!(parse(LinkType::Ethernet, &frame[..cut]), Err(expected), "cut at {cut}");
            }
            assert!(parse(LinkType::Ethernet, &frame[..l4_end]).is_ok());
        }
    }

    #[test]
    fn snap_cut_payload_still_parses_with_wire_length() {
        let frame = eth(0x0800, &ip4(17, A4, B4, 1, 0, &udp(1, 2, &[0; 1400])));
        let info = parse_packet(LinkType::Ethernet, &frame[..64], frame.len() as u32, Ingress::port(0)).unwrap();
        assert_eq!(info.wire_len, frame.len() as u32);
        assert_eq!(info.payload_offset, 42);
    }

    const LINKS: [LinkType; 9] = [
        LinkType::Ethernet,
        LinkType::RawIp,
        LinkType::LinuxSll,
        LinkType::LinuxSll2,
        LinkType::Null,
        LinkType::Loop,
        LinkType::Ppp,
        LinkType::CiscoHdlc,
        LinkType::Ppi,
    ];

    /// Random buffers of every length up to 200 bytes, under every link
    /// type: no panic, and every success satisfies the invariants.
    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(0x5eed_f10e);
        let mut buf = [0u8; 200];
        for round in 0..50_000 {
            let len = rng.gen_range(0..=buf.len());
            rng.fill(&mut buf[..len]);
            // Bias towards reaching the network layer.
            if len > 14 && round % 2 == 0 {
                buf[12..14].copy_from_slice(&[0x08, 0x00]);
                buf[14] = if round % 4 == 0 { 0x45 } else { 0x60 };
                if buf[14] == 0x60 {
                    buf[12..14].copy_from_slice(&[0x86, 0xdd]);
                }
            }
            for link in LINKS {
                if let Ok(info) = parse_packet(link, &buf[..len], len as u32, Ingress { port: 7, zone: 6 }) {
                    check_invariants(&buf[..len], &info, Ingress { port: 7, zone: 6 });
                }
            }
        }
    }

    /// Valid packets with random bytes overwritten and random cuts: no
    /// panic, invariants hold, and all skip reasons show up.
    #[test]
    fn mutated_packets_never_panic() {
        let seeds: Vec<(LinkType, Vec<u8>)> = vec![
            (LinkType::Ethernet, eth(0x0800, &ip4(6, A4, B4, 1, 0, &tcp(1, 2, 0x12, b"abc")))),
            (
                LinkType::Ethernet,
                eth(
                    0x88a8,
                    &cat(&[
                        &tag(1, 0x8100),
                        &tag(2, 0x86dd),
                        &ip6(
                            0,
                            a6(),
                            b6(),
                            &cat(&[&[44, 0, 0, 0, 0, 0, 0, 0], &frag6(17, 0, true, 3), &udp(1, 2, b"x")]),
                        ),
                    ]),
                ),
            ),
            (
                LinkType::Ethernet,
                eth(0x0800, &ip4(51, A4, B4, 1, 0x2000, &cat(&[&[1, 4, 0, 0], &[0; 20], &icmp(8, 5)]))),
            ),
            (LinkType::RawIp, ip4(132, A4, B4, 1, 0, &[0; 20])),
            (
                LinkType::LinuxSll,
                cat(&[&[0, 0, 0, 1, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x00], &ip4(1, A4, B4, 1, 0, &icmp(0, 1))]),
            ),
            (
                LinkType::LinuxSll2,
                cat(&[
                    &[0x86, 0xdd, 0, 0, 0, 0, 0, 2, 0, 1, 4, 6, 0, 0, 0, 0, 0, 0, 0, 0],
                    &ip6(58, a6(), b6(), &icmp(135, 0)),
                ]),
            ),
            (
                LinkType::Null,
                cat(&[
                    &30u32.to_le_bytes(),
                    &ip6(43, a6(), b6(), &cat(&[&[6, 0, 0, 0, 0, 0, 0, 0], &tcp(1, 2, 0, b"")])),
                ]),
            ),
            (LinkType::Loop, cat(&[&2u32.to_be_bytes(), &ip4(136, A4, B4, 1, 0, &[0; 8])])),
            (
                LinkType::Ethernet,
                eth(
                    0x8100,
                    &cat(&[
                        &tag(3, 0x8864),
                        &pppoe(0x0281, &cat(&[&[0, 1, 0x21, 9], &ip4(17, A4, B4, 1, 0, &udp(1, 2, b""))])),
                    ]),
                ),
            ),
            (
                LinkType::Ethernet,
                cat(&[
                    &[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x89, 0x03, 0x40, 0x20],
                    &eth(0x0800, &ip4(6, A4, B4, 1, 0, &tcp(1, 2, 0, b""))),
                ]),
            ),
            (LinkType::Ppp, cat(&[&[0xff, 0x03, 0x00, 0x57], &ip6(17, a6(), b6(), &udp(1, 2, b""))])),
            (
                LinkType::CiscoHdlc,
                cat(&[&[0x0f, 0x00, 0x88, 0x47, 0, 1, 0x21, 9], &ip4(6, A4, B4, 1, 0, &tcp(1, 2, 0, b""))]),
            ),
            (LinkType::Ppi, cat(&[&[0, 0, 8, 0, 1, 0, 0, 0], &eth(0x0800, &ip4(17, A4, B4, 1, 0, &udp(1, 2, b"")))])),
        ];
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(42);
        let mut seen = std::collections::HashSet::new();
        let mut ok = 0;
        for (link, seed) in &seeds {
            assert!(parse(*link, seed).is_ok(), "seed packet rejected: {link:?}");
            for _ in 0..5_000 {
                let mut pkt = seed.clone();
                for _ in 0..rng.gen_range(1..4) {
                    let at = rng.gen_range(0..pkt.len());
                    pkt[at] = rng.gen();
                }
                let cut = rng.gen_range(0..=pkt.len());
                match parse_packet(*link, &pkt[..cut], 1500, Ingress::port(1)) {
                    Ok(info) => {
                        ok += 1;
                        check_invariants(&pkt[..cut], &info, Ingress::port(1));
                    }
                    Err(reason) => {
                        seen.insert(reason);
                    }
                }
            }
        }
        assert!(ok > 1000, "mutations rarely parse ({ok}), the test explores too little");
        for reason in SkipReason::ALL {
            if reason != SkipReason::UnsupportedLinkType {
                assert!(seen.contains(&reason), "{reason:?} never produced");
            }
        }
    }
}
