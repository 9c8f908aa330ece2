//! rte_flow match patterns built from one direction of a flow key: the
//! item chain ETH / VLAN* / IPV4|IPV6 / TCP|UDP|SCTP|ICMP with specs in
//! network byte order and masks covering exactly the fields the key pins.
//!
//! A TCP item can also require FIN and RST clear (`hdr.tcp_flags` 0 under
//! the mask FIN|RST), as the kernel's flowtable offload does on its rules:
//! a connection's close and reset then miss the rule and reach software.

use core::ffi::c_void;
use core::mem::size_of;
use core::ptr;

use dpdk_sys as sys;
use flowtable_sw::{Direction, FlowKey};
use sys::rte_flow_item_type as item;

use crate::rule::MatchFields;

/// The L3 protocol of a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L3 {
    V4,
    V6,
}

/// The L4 item of a pattern (`Other`: no L4 item, the IP protocol is matched).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4 {
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Other,
}

/// What a pattern matches on, without the values: the unit of the PMD
/// capability cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PatternShape {
    pub l3: L3,
    pub l4: L4,
    /// 0, 1 (802.1Q) or 2 (QinQ) VLAN items.
    pub vlans: u8,
    /// The TCP item requires FIN and RST clear ([`TCP_TEARDOWN_FLAGS`]).
    /// Only with `l4` TCP.
    pub tcp_flags: bool,
}

/// The TCP flags a TCP item with the flags match requires clear: FIN|RST
/// (`RTE_TCP_FIN_FLAG | RTE_TCP_RST_FLAG`).
pub const TCP_TEARDOWN_FLAGS: u8 = 0x01 | 0x04;

impl PatternShape {
    pub fn name(&self) -> String {
        let mut s = String::from("eth");
        for _ in 0..self.vlans {
            s.push_str("/vlan");
        }
        s.push_str(match self.l3 {
            L3::V4 => "/ipv4",
            L3::V6 => "/ipv6",
        });
        s.push_str(match self.l4 {
            L4::Tcp => "/tcp",
            L4::Udp => "/udp",
            L4::Sctp => "/sctp",
            L4::Icmp => "/icmp",
            L4::Other => "",
        });
        if self.tcp_flags && self.l4 == L4::Tcp {
            s.push_str("/flags");
        }
        s
    }
}

/// Why a key can't be expressed as an rte_flow pattern at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError(pub String);

/// Spec/mask storage the items point into. Boxed by [`FlowPattern`] so the
/// pointers stay valid when the pattern moves.
#[derive(Default)]
struct Specs {
    vlan: [sys::rte_flow_item_vlan; 2],
    vlan_mask: sys::rte_flow_item_vlan,
    ipv4: sys::rte_flow_item_ipv4,
    ipv4_mask: sys::rte_flow_item_ipv4,
    ipv6: sys::rte_flow_item_ipv6,
    ipv6_mask: sys::rte_flow_item_ipv6,
    tcp: sys::rte_flow_item_tcp,
    tcp_mask: sys::rte_flow_item_tcp,
    udp: sys::rte_flow_item_udp,
    udp_mask: sys::rte_flow_item_udp,
    sctp: sys::rte_flow_item_sctp,
    sctp_mask: sys::rte_flow_item_sctp,
    icmp: sys::rte_flow_item_icmp,
    icmp_mask: sys::rte_flow_item_icmp,
}

/// An rte_flow item array (END-terminated) with the specs and masks it
/// points to.
pub struct FlowPattern {
    // Read by the PMD through the pointers in `items`.
    #[allow(dead_code)]
    specs: Box<Specs>,
    items: Vec<sys::rte_flow_item>,
    shape: PatternShape,
}

// The raw pointers in `items` point into `specs`, which this value owns.
// SAFETY: `specs` is heap memory moving with the value and read only through `items`; nothing else
// points into it, so the value can go to another thread whole.
unsafe impl Send for FlowPattern {}

fn be16(v: u16) -> sys::rte_be16_t {
    v.to_be()
}

/// A big-endian u32 field from address octets (the bytes land in memory in
/// the order given).
fn be32_bytes(b: &[u8]) -> sys::rte_be32_t {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

fn item_of<T>(ty: item::Type, spec: Option<&T>, mask: Option<&T>) -> sys::rte_flow_item {
    sys::rte_flow_item {
        type_: ty,
        spec: spec.map_or(ptr::null(), |s| s as *const T as *const c_void),
        last: ptr::null(),
        mask: mask.map_or(ptr::null(), |m| m as *const T as *const c_void),
    }
}

impl FlowPattern {
    /// The pattern matching packets of `m.key` travelling in `m.dir`; with
    /// `tcp_flags`, a TCP flow's item requires FIN and RST clear.
    pub fn build(m: &MatchFields, tcp_flags: bool) -> Result<FlowPattern, PatternError> {
        Self::build_key_with(&m.key, m.dir, tcp_flags)
    }

    /// The pattern of one direction of `key`, a TCP item requiring FIN and
    /// RST clear.
    pub fn build_key(key: &FlowKey, dir: Direction) -> Result<FlowPattern, PatternError> {
        Self::build_key_with(key, dir, true)
    }

    pub fn build_key_with(key: &FlowKey, dir: Direction, tcp_flags: bool) -> Result<FlowPattern, PatternError> {
        let l3 = if key.is_ipv6() { L3::V6 } else { L3::V4 };
        let l4 = match key.proto {
            6 => L4::Tcp,
            17 => L4::Udp,
            132 => L4::Sctp,
            // An ICMP rule that isn't pinned to one echo identifier takes
            // every ICMP packet between the two hosts, other flows' echoes
            // included, and counts them to the wrong flow.
            1 if l3 == L3::V4 => {
                if key.port_lo == 0 {
                    return Err(PatternError(
                        "icmp other than echo has no identifier to match: the rule would take all icmp between \
                         these hosts"
                            .into(),
                    ));
                }
                L4::Icmp
            }
            58 if l3 == L3::V6 => {
                return Err(PatternError(
                    "icmpv6 echo identifier can't be matched by rte_flow's icmp6 item: the rule would take all \
                     icmpv6 between these hosts"
                        .into(),
                ));
            }
            _ => L4::Other,
        };
        let vlans = if key.vlan_inner != 0 {
            2
        } else if key.vlan_outer != 0 {
            1
        } else {
            0
        };
        let shape = PatternShape { l3, l4, vlans, tcp_flags: tcp_flags && l4 == L4::Tcp };
        let ep = key.endpoints(dir);
        let (src, _) = flowtable_sw::key::ip_bytes(ep.src);
        let (dst, _) = flowtable_sw::key::ip_bytes(ep.dst);
        let mut s = Box::<Specs>::default();

        let tags = [key.vlan_outer, key.vlan_inner];
        for (i, vid) in tags.iter().take(vlans as usize).enumerate() {
            s.vlan[i].__bindgen_anon_1.hdr.vlan_tci = be16(vid & 0x0fff);
        }
        s.vlan_mask.__bindgen_anon_1.hdr.vlan_tci = be16(0x0fff);

        match l3 {
            L3::V4 => {
                s.ipv4.hdr.src_addr = be32_bytes(&src);
                s.ipv4.hdr.dst_addr = be32_bytes(&dst);
                s.ipv4_mask.hdr.src_addr = u32::MAX;
                s.ipv4_mask.hdr.dst_addr = u32::MAX;
                if l4 == L4::Other {
                    s.ipv4.hdr.next_proto_id = key.proto;
                    s.ipv4_mask.hdr.next_proto_id = 0xff;
                }
            }
            L3::V6 => {
                s.ipv6.hdr.src_addr = src;
                s.ipv6.hdr.dst_addr = dst;
                s.ipv6_mask.hdr.src_addr = [0xff; 16];
                s.ipv6_mask.hdr.dst_addr = [0xff; 16];
                if l4 == L4::Other {
                    s.ipv6.hdr.proto = key.proto;
                    s.ipv6_mask.hdr.proto = 0xff;
                }
            }
        }
        match l4 {
            L4::Tcp => {
                s.tcp.hdr.src_port = be16(ep.sport);
                s.tcp.hdr.dst_port = be16(ep.dport);
                s.tcp_mask.hdr.src_port = u16::MAX;
                s.tcp_mask.hdr.dst_port = u16::MAX;
                if shape.tcp_flags {
                    s.tcp.hdr.tcp_flags = 0;
                    s.tcp_mask.hdr.tcp_flags = TCP_TEARDOWN_FLAGS;
                }
            }
            L4::Udp => {
                s.udp.hdr.src_port = be16(ep.sport);
                s.udp.hdr.dst_port = be16(ep.dport);
                s.udp_mask.hdr.src_port = u16::MAX;
                s.udp_mask.hdr.dst_port = u16::MAX;
            }
            L4::Sctp => {
                s.sctp.hdr.src_port = be16(ep.sport);
                s.sctp.hdr.dst_port = be16(ep.dport);
                s.sctp_mask.hdr.src_port = u16::MAX;
                s.sctp_mask.hdr.dst_port = u16::MAX;
            }
            L4::Icmp => {
                // Echo flows carry their identifier in both port fields.
                s.icmp.hdr.icmp_ident = be16(key.port_lo);
                s.icmp_mask.hdr.icmp_ident = u16::MAX;
            }
            L4::Other => {}
        }

        let mut items = Vec::with_capacity(6);
        items.push(item_of::<sys::rte_flow_item_eth>(item::RTE_FLOW_ITEM_TYPE_ETH, None, None));
        for i in 0..vlans as usize {
            items.push(item_of(item::RTE_FLOW_ITEM_TYPE_VLAN, Some(&s.vlan[i]), Some(&s.vlan_mask)));
        }
        match l3 {
            L3::V4 => items.push(item_of(item::RTE_FLOW_ITEM_TYPE_IPV4, Some(&s.ipv4), Some(&s.ipv4_mask))),
            L3::V6 => items.push(item_of(item::RTE_FLOW_ITEM_TYPE_IPV6, Some(&s.ipv6), Some(&s.ipv6_mask))),
        }
        match l4 {
            L4::Tcp => items.push(item_of(item::RTE_FLOW_ITEM_TYPE_TCP, Some(&s.tcp), Some(&s.tcp_mask))),
            L4::Udp => items.push(item_of(item::RTE_FLOW_ITEM_TYPE_UDP, Some(&s.udp), Some(&s.udp_mask))),
            L4::Sctp => items.push(item_of(item::RTE_FLOW_ITEM_TYPE_SCTP, Some(&s.sctp), Some(&s.sctp_mask))),
            L4::Icmp => items.push(item_of(item::RTE_FLOW_ITEM_TYPE_ICMP, Some(&s.icmp), Some(&s.icmp_mask))),
            L4::Other => {}
        }
        items.push(item_of::<u8>(item::RTE_FLOW_ITEM_TYPE_END, None, None));
        Ok(FlowPattern { specs: s, items, shape })
    }

    /// A representative pattern of `shape` (documentation addresses), for
    /// probing what a PMD accepts.
    pub fn sample(shape: PatternShape) -> FlowPattern {
        let (src, dst): ([u8; 16], [u8; 16]) = match shape.l3 {
            L3::V4 => {
                (flowtable_sw::key::v4_bytes([192, 0, 2, 1].into()), flowtable_sw::key::v4_bytes([192, 0, 2, 2].into()))
            }
            L3::V6 => {
                let mut a = [0u8; 16];
                a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
                let mut b = a;
                a[15] = 1;
                b[15] = 2;
                (a, b)
            }
        };
        let proto = match (shape.l4, shape.l3) {
            (L4::Tcp, _) => 6,
            (L4::Udp, _) => 17,
            (L4::Sctp, _) => 132,
            (L4::Icmp, _) => 1,
            (L4::Other, _) => 47,
        };
        let ports = if matches!(shape.l4, L4::Tcp | L4::Udp | L4::Sctp) {
            (40000, 80)
        } else if shape.l4 == L4::Icmp {
            (7, 7)
        } else {
            (0, 0)
        };
        let (vo, vi) = match shape.vlans {
            0 => (0, 0),
            1 => (100, 0),
            _ => (100, 200),
        };
        let (key, dir) = FlowKey::canonical(src, dst, ports.0, ports.1, proto, shape.l3 == L3::V6, vo, vi, 0);
        FlowPattern::build_key_with(&key, dir, shape.tcp_flags).expect("sample shapes are all expressible")
    }

    pub fn shape(&self) -> PatternShape {
        self.shape
    }

    /// The END-terminated item array to hand to rte_flow.
    pub fn items(&self) -> &[sys::rte_flow_item] {
        &self.items
    }

    pub fn as_ptr(&self) -> *const sys::rte_flow_item {
        self.items.as_ptr()
    }

    /// This pattern as a template pattern: same items and masks, no specs
    /// (the async API takes the values per rule).
    pub fn template_items(&self) -> Vec<sys::rte_flow_item> {
        self.items.iter().map(|it| sys::rte_flow_item { spec: it.mask, ..*it }).collect()
    }

    #[cfg(test)]
    fn keep_alive(&self) -> &Specs {
        &self.specs
    }
}

/// The raw bytes of an item's spec or mask, `len` long.
///
/// # Safety
/// `p` must be null or point to at least `len` readable bytes.
pub unsafe fn raw_bytes<'a>(p: *const c_void, len: usize) -> Option<&'a [u8]> {
    if p.is_null() {
        None
    } else {
        Some(core::slice::from_raw_parts(p as *const u8, len))
    }
}

/// The size of the spec struct an item type points to.
pub fn spec_size(ty: item::Type) -> usize {
    match ty {
        item::RTE_FLOW_ITEM_TYPE_ETH => size_of::<sys::rte_flow_item_eth>(),
        item::RTE_FLOW_ITEM_TYPE_VLAN => size_of::<sys::rte_flow_item_vlan>(),
        item::RTE_FLOW_ITEM_TYPE_IPV4 => size_of::<sys::rte_flow_item_ipv4>(),
        item::RTE_FLOW_ITEM_TYPE_IPV6 => size_of::<sys::rte_flow_item_ipv6>(),
        item::RTE_FLOW_ITEM_TYPE_TCP => size_of::<sys::rte_flow_item_tcp>(),
        item::RTE_FLOW_ITEM_TYPE_UDP => size_of::<sys::rte_flow_item_udp>(),
        item::RTE_FLOW_ITEM_TYPE_SCTP => size_of::<sys::rte_flow_item_sctp>(),
        item::RTE_FLOW_ITEM_TYPE_ICMP => size_of::<sys::rte_flow_item_icmp>(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;
    use core::net::{Ipv4Addr, Ipv6Addr};

    fn bytes(it: &sys::rte_flow_item) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let n = spec_size(it.type_);
        // SAFETY: `it` is an item of a live FlowPattern: spec and mask are null or point to the boxed struct
        // of its type, which is `spec_size(it.type_)` bytes (0 for types without one).
        unsafe { (raw_bytes(it.spec, n).map(|b| b.to_vec()), raw_bytes(it.mask, n).map(|b| b.to_vec())) }
    }

    fn types(p: &FlowPattern) -> Vec<item::Type> {
        p.items().iter().map(|i| i.type_).collect()
    }

    #[test]
    fn generated_layouts_match_the_wire_headers() {
        // The item structs embed the protocol headers at offset 0 with the
        // RFC layouts; specs are written as raw header bytes.
        assert_eq!(size_of::<sys::rte_ipv4_hdr>(), 20);
        assert_eq!(offset_of!(sys::rte_ipv4_hdr, next_proto_id), 9);
        assert_eq!(offset_of!(sys::rte_ipv4_hdr, src_addr), 12);
        assert_eq!(offset_of!(sys::rte_ipv4_hdr, dst_addr), 16);
        assert_eq!(size_of::<sys::rte_ipv6_hdr>(), 40);
        assert_eq!(offset_of!(sys::rte_ipv6_hdr, proto), 6);
        assert_eq!(offset_of!(sys::rte_ipv6_hdr, src_addr), 8);
        assert_eq!(offset_of!(sys::rte_ipv6_hdr, dst_addr), 24);
        assert_eq!(size_of::<sys::rte_tcp_hdr>(), 20);
        assert_eq!(size_of::<sys::rte_udp_hdr>(), 8);
        assert_eq!(size_of::<sys::rte_vlan_hdr>(), 4);
        assert_eq!(size_of::<sys::rte_flow_item>(), 32);
        assert_eq!(size_of::<sys::rte_flow_action>(), 16);
        assert_eq!(size_of::<sys::rte_flow_item_eth>(), 20);
    }

    #[test]
    fn ipv4_tcp_items_specs_and_masks_in_network_order() {
        let (key, _) = FlowKey::from_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 40000, 443, 6);
        let p = FlowPattern::build_key(&key, Direction::LoToHi).unwrap();
        assert_eq!(
            types(&p),
            vec![
                item::RTE_FLOW_ITEM_TYPE_ETH,
                item::RTE_FLOW_ITEM_TYPE_IPV4,
                item::RTE_FLOW_ITEM_TYPE_TCP,
                item::RTE_FLOW_ITEM_TYPE_END
            ]
        );
        assert!(p.items()[0].spec.is_null() && p.items()[0].mask.is_null(), "eth matches any frame");
        let (spec, mask) = bytes(&p.items()[1]);
        let (spec, mask) = (spec.unwrap(), mask.unwrap());
        assert_eq!(&spec[12..16], &[10, 0, 0, 1]);
        assert_eq!(&spec[16..20], &[10, 0, 0, 2]);
        assert_eq!(&mask[12..20], &[0xff; 8]);
        assert_eq!(mask[9], 0, "protocol implied by the tcp item, not masked");
        assert!(mask[..12].iter().all(|&b| b == 0), "no other ipv4 field masked: {mask:?}");
        let (spec, mask) = bytes(&p.items()[2]);
        let (spec, mask) = (spec.unwrap(), mask.unwrap());
        assert_eq!(&spec[0..4], &[0x9c, 0x40, 0x01, 0xbb], "40000 -> 443 big-endian");
        assert_eq!(&mask[0..4], &[0xff; 4]);
        let flags = offset_of!(sys::rte_tcp_hdr, tcp_flags);
        assert!(mask[4..].iter().enumerate().all(|(i, &b)| b == 0 || i + 4 == flags), "{mask:?}");
    }

    #[test]
    fn tcp_item_requires_fin_and_rst_clear() {
        let flags = offset_of!(sys::rte_tcp_hdr, tcp_flags);
        assert_eq!(flags, 13, "the flags byte of the TCP header");
        let (key, _) = FlowKey::from_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 40000, 443, 6);
        for dir in [Direction::LoToHi, Direction::HiToLo] {
            let p = FlowPattern::build_key(&key, dir).unwrap();
            assert_eq!(p.shape(), PatternShape { l3: L3::V4, l4: L4::Tcp, vlans: 0, tcp_flags: true });
            assert_eq!(p.shape().name(), "eth/ipv4/tcp/flags");
            let it = &p.items()[2];
            assert_eq!(it.type_, item::RTE_FLOW_ITEM_TYPE_TCP);
            let (spec, mask) = bytes(it);
            let (spec, mask) = (spec.unwrap(), mask.unwrap());
            assert_eq!(spec[flags], 0, "FIN and RST clear");
            assert_eq!(mask[flags], 0x05, "FIN|RST");
            // The ports are matched as without the flags, nothing else is.
            let ports: [u8; 4] =
                if dir == Direction::LoToHi { [0x9c, 0x40, 0x01, 0xbb] } else { [0x01, 0xbb, 0x9c, 0x40] };
            assert_eq!(&spec[0..4], &ports);
            assert_eq!(&mask[0..4], &[0xff; 4]);
            assert!(mask[4..flags].iter().chain(&mask[flags + 1..]).all(|&b| b == 0), "{mask:?}");
            // Templates carry the flags mask too.
            let t = p.template_items();
            assert_eq!(unsafe { raw_bytes(t[2].spec, spec_size(t[2].type_)) }.unwrap()[flags], 0x05);
        }
        // Without the flags match: ports only, as for PMDs that refuse it.
        let p = FlowPattern::build_key_with(&key, Direction::LoToHi, false).unwrap();
        assert_eq!(p.shape().name(), "eth/ipv4/tcp");
        let (spec, mask) = bytes(&p.items()[2]);
        assert_eq!(spec.unwrap()[flags], 0);
        let mask = mask.unwrap();
        assert_eq!(&mask[0..4], &[0xff; 4]);
        assert!(mask[4..].iter().all(|&b| b == 0));
        // Other protocols have no flags match, asked for or not.
        let (udp, _) = FlowKey::from_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 40000, 53, 17);
        let p = FlowPattern::build_key_with(&udp, Direction::LoToHi, true).unwrap();
        assert!(!p.shape().tcp_flags);
        assert_eq!(p.shape().name(), "eth/ipv4/udp");
    }

    #[test]
    fn reverse_direction_swaps_endpoints() {
        let (key, _) = FlowKey::from_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 40000, 53, 17);
        let p = FlowPattern::build_key(&key, Direction::HiToLo).unwrap();
        assert_eq!(p.shape(), PatternShape { l3: L3::V4, l4: L4::Udp, vlans: 0, tcp_flags: false });
        let (spec, _) = bytes(&p.items()[1]);
        let spec = spec.unwrap();
        assert_eq!(&spec[12..16], &[10, 0, 0, 2]);
        assert_eq!(&spec[16..20], &[10, 0, 0, 1]);
        let (spec, _) = bytes(&p.items()[2]);
        assert_eq!(&spec.unwrap()[0..4], &[0, 53, 0x9c, 0x40]);
    }

    #[test]
    fn ipv6_qinq_and_other_protocol() {
        let a: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let (key, dir) = FlowKey::canonical(a.octets(), b.octets(), 0, 0, 47, true, 100, 4095, 0);
        let p = FlowPattern::build_key(&key, dir).unwrap();
        assert_eq!(p.shape().name(), "eth/vlan/vlan/ipv6");
        assert_eq!(
            types(&p),
            vec![
                item::RTE_FLOW_ITEM_TYPE_ETH,
                item::RTE_FLOW_ITEM_TYPE_VLAN,
                item::RTE_FLOW_ITEM_TYPE_VLAN,
                item::RTE_FLOW_ITEM_TYPE_IPV6,
                item::RTE_FLOW_ITEM_TYPE_END
            ]
        );
        let (s1, m1) = bytes(&p.items()[1]);
        let (s2, _) = bytes(&p.items()[2]);
        assert_eq!(&s1.unwrap()[0..2], &[0x00, 100]);
        assert_eq!(&m1.unwrap()[0..4], &[0x0f, 0xff, 0, 0], "vid only: no PCP/DEI, no inner type");
        assert_eq!(&s2.unwrap()[0..2], &[0x0f, 0xff]);
        let (spec, mask) = bytes(&p.items()[3]);
        let (spec, mask) = (spec.unwrap(), mask.unwrap());
        assert_eq!(spec[6], 47);
        assert_eq!(mask[6], 0xff);
        assert_eq!(&spec[8..24], &a.octets());
        assert_eq!(&spec[24..40], &b.octets());
        assert_eq!(&mask[8..40], &[0xff; 32]);
        assert!(mask[..6].iter().all(|&b| b == 0), "no flow label / length match");
    }

    #[test]
    fn icmp_echo_matches_identifier_other_icmp_refused() {
        let (key, dir) = FlowKey::canonical(
            flowtable_sw::key::v4_bytes(Ipv4Addr::new(10, 0, 0, 1)),
            flowtable_sw::key::v4_bytes(Ipv4Addr::new(10, 0, 0, 2)),
            0x1234,
            0x1234,
            1,
            false,
            0,
            0,
            0,
        );
        let p = FlowPattern::build_key(&key, dir).unwrap();
        let (spec, mask) = bytes(&p.items()[2]);
        let off = offset_of!(sys::rte_icmp_hdr, icmp_ident);
        assert_eq!(&spec.unwrap()[off..off + 2], &[0x12, 0x34]);
        assert_eq!(&mask.unwrap()[off..off + 2], &[0xff, 0xff]);

        let a: Ipv6Addr = "2001:db8::1".parse().unwrap();
        for id in [9, 0] {
            let (key6, dir6) = FlowKey::canonical(a.octets(), a.octets(), id, id, 58, true, 0, 0, 0);
            let err = FlowPattern::build_key(&key6, dir6).err().unwrap();
            assert!(err.0.contains("icmpv6"), "{err:?}");
        }
        // ICMP errors have no identifier: a rule would take the echoes too.
        let (key, dir) = FlowKey::from_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 0, 0, 1);
        let err = FlowPattern::build_key(&key, dir).err().unwrap();
        assert!(err.0.contains("all icmp"), "{err:?}");
    }

    #[test]
    fn template_items_carry_masks_as_specs_and_pointers_survive_moves() {
        let (key, dir) = FlowKey::from_v4(Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(5, 6, 7, 8), 1, 2, 132);
        let p = FlowPattern::build_key(&key, dir).unwrap();
        let before = p.items()[1].spec;
        let moved = Box::new(p);
        let p = &*moved;
        assert_eq!(p.items()[1].spec, before);
        assert_eq!(p.items()[1].spec, &p.keep_alive().ipv4 as *const _ as *const c_void);
        let t = p.template_items();
        assert_eq!(t[2].type_, item::RTE_FLOW_ITEM_TYPE_SCTP);
        assert_eq!(t[2].spec, t[2].mask);
    }

    #[test]
    fn sample_patterns_for_every_shape() {
        for l3 in [L3::V4, L3::V6] {
            for l4 in [L4::Tcp, L4::Udp, L4::Sctp, L4::Icmp, L4::Other] {
                if l3 == L3::V6 && l4 == L4::Icmp {
                    continue;
                }
                for vlans in 0..3 {
                    for tcp_flags in [false, true] {
                        if tcp_flags && l4 != L4::Tcp {
                            continue;
                        }
                        let shape = PatternShape { l3, l4, vlans, tcp_flags };
                        assert_eq!(FlowPattern::sample(shape).shape(), shape);
                    }
                }
            }
        }
    }
}
