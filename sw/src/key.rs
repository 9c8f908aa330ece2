//! Bidirectional flow keys: both directions of a conversation map to one
//! canonical key, and a direction bit says which way a packet went.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which way a packet travels relative to its flow's canonical key.
///
/// `LoToHi` means the packet's source is the key's `lo` endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Direction {
    LoToHi = 0,
    HiToLo = 1,
}

impl Direction {
    pub const fn index(self) -> usize {
        self as usize
    }
    pub fn reverse(self) -> Direction {
        match self {
            Direction::LoToHi => Direction::HiToLo,
            Direction::HiToLo => Direction::LoToHi,
        }
    }
    pub fn from_index(i: usize) -> Direction {
        if i & 1 == 0 {
            Direction::LoToHi
        } else {
            Direction::HiToLo
        }
    }
}

pub const FLAG_IPV6: u8 = 1;

/// Encapsulations between the link header and IP that a flow's packets
/// came through, as bits of [`FlowKey::encap`]. A NIC matching the flow
/// must match through them, which most can't; the backends say which they
/// take in `MatchSupport`.
pub mod encap {
    /// PPPoE session (and the PPP inside it).
    pub const PPPOE: u8 = 1;
    /// An MPLS label stack.
    pub const MPLS: u8 = 2;
    /// Cisco FabricPath around the Ethernet frame.
    pub const FABRICPATH: u8 = 4;
    /// PPP link framing (LINKTYPE_PPP).
    pub const PPP: u8 = 8;
    /// Cisco HDLC link framing.
    pub const CISCO_HDLC: u8 = 16;

    /// Every bit with its name, in the order names are given.
    pub const NAMES: [(u8, &str); 5] =
        [(PPPOE, "pppoe"), (MPLS, "mpls"), (FABRICPATH, "fabricpath"), (PPP, "ppp"), (CISCO_HDLC, "cisco-hdlc")];

    /// The name of the first encapsulation set in `bits`, if any.
    pub fn first_name(bits: u8) -> Option<&'static str> {
        NAMES.iter().find(|(bit, _)| bits & bit != 0).map(|(_, name)| *name)
    }
}

/// The canonical key of a flow: 5-tuple, VLANs and ingress zone.
///
/// Addresses are 16 bytes; IPv4 addresses sit in the first four bytes with
/// the rest zero and `FLAG_IPV6` clear. The `lo` endpoint is the smaller
/// (address, port) pair, so both directions of a conversation build the
/// same key. For ICMP echo the identifier stands in both port fields.
#[derive(Clone, Copy, Eq, Default, serde::Serialize, serde::Deserialize)]
#[repr(C)]
pub struct FlowKey {
    pub addr_lo: [u8; 16],
    pub addr_hi: [u8; 16],
    pub port_lo: u16,
    pub port_hi: u16,
    /// Outer 802.1Q VLAN id, 0 when untagged.
    pub vlan_outer: u16,
    /// Inner VLAN id of QinQ, 0 when single-tagged or untagged.
    pub vlan_inner: u16,
    pub proto: u8,
    /// The port the flow arrived on (index in the configured port list),
    /// or for ports joined in an inline pair the pair's lower port, so
    /// both directions of a bump-in-the-wire are one flow (`ports.rs`).
    pub zone: u8,
    pub flags: u8,
    /// Bits of [`encap`]: what the packets were carried in (0: plain
    /// Ethernet, VLAN tags, cooked or raw IP). Packets of one 5-tuple with
    /// and without an encapsulation are different flows, as they are
    /// different matches on a NIC.
    pub encap: u8,
}

/// Field by field, as derived, but without a branch per field: every
/// lookup compares a key, and the derived `&&` chain of ten compares
/// is several times the instructions of three wide ones.
impl PartialEq for FlowKey {
    #[inline]
    fn eq(&self, other: &FlowKey) -> bool {
        let addrs = (u128::from_ne_bytes(self.addr_lo) ^ u128::from_ne_bytes(other.addr_lo))
            | (u128::from_ne_bytes(self.addr_hi) ^ u128::from_ne_bytes(other.addr_hi));
        let rest = self.rest() ^ other.rest();
        addrs | rest == 0
    }
}

/// The three words `eq` compares, so equal keys hash alike: every packet
/// hashes its key, and the derived `Hash` writes each of the ten
/// fields (and the two arrays' lengths) as its own step of the hasher,
/// where these are three.
impl core::hash::Hash for FlowKey {
    #[inline]
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_ne_bytes(self.addr_lo));
        state.write_u128(u128::from_ne_bytes(self.addr_hi));
        state.write_u128(self.rest());
    }
}

impl FlowKey {
    /// The fields after the addresses, packed into one word for `eq` and
    /// `hash`.
    #[inline]
    fn rest(&self) -> u128 {
        (self.port_lo as u128)
            | (self.port_hi as u128) << 16
            | (self.vlan_outer as u128) << 32
            | (self.vlan_inner as u128) << 48
            | (self.proto as u128) << 64
            | (self.zone as u128) << 72
            | (self.flags as u128) << 80
            | (self.encap as u128) << 88
    }
}

/// One direction of a flow as the packet carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoints {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

impl FlowKey {
    /// Builds the canonical key from a packet's addresses and ports and
    /// returns it with the packet's direction.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn canonical(
        src: [u8; 16],
        dst: [u8; 16],
        sport: u16,
        dport: u16,
        proto: u8,
        ipv6: bool,
        vlan_outer: u16,
        vlan_inner: u16,
        zone: u8,
    ) -> (FlowKey, Direction) {
        // Byte arrays compare as their big-endian numbers do: one compare,
        // not a byte loop.
        let fwd = (u128::from_be_bytes(src), sport) <= (u128::from_be_bytes(dst), dport);
        let (addr_lo, port_lo, addr_hi, port_hi, dir) =
            if fwd { (src, sport, dst, dport, Direction::LoToHi) } else { (dst, dport, src, sport, Direction::HiToLo) };
        (
            FlowKey {
                addr_lo,
                addr_hi,
                port_lo,
                port_hi,
                vlan_outer,
                vlan_inner,
                proto,
                zone,
                flags: if ipv6 { FLAG_IPV6 } else { 0 },
                encap: 0,
            },
            dir,
        )
    }

    pub fn from_v4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> (FlowKey, Direction) {
        FlowKey::canonical(v4_bytes(src), v4_bytes(dst), sport, dport, proto, false, 0, 0, 0)
    }

    pub fn is_ipv6(&self) -> bool {
        self.flags & FLAG_IPV6 != 0
    }

    pub fn addr(&self, bytes: &[u8; 16]) -> IpAddr {
        if self.is_ipv6() {
            IpAddr::V6(Ipv6Addr::from(*bytes))
        } else {
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
        }
    }

    pub fn lo(&self) -> IpAddr {
        self.addr(&self.addr_lo)
    }

    pub fn hi(&self) -> IpAddr {
        self.addr(&self.addr_hi)
    }

    /// The addresses and ports as a packet travelling in `dir` carries them.
    pub fn endpoints(&self, dir: Direction) -> Endpoints {
        match dir {
            Direction::LoToHi => Endpoints { src: self.lo(), dst: self.hi(), sport: self.port_lo, dport: self.port_hi },
            Direction::HiToLo => Endpoints { src: self.hi(), dst: self.lo(), sport: self.port_hi, dport: self.port_lo },
        }
    }

    /// Whether the protocol carries ports (TCP, UDP, SCTP, UDP-Lite).
    pub fn has_ports(&self) -> bool {
        has_ports(self.proto)
    }

    pub fn proto_name(&self) -> &'static str {
        proto_name(self.proto)
    }
}

pub fn v4_bytes(a: Ipv4Addr) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&a.octets());
    b
}

pub fn ip_bytes(a: IpAddr) -> ([u8; 16], bool) {
    match a {
        IpAddr::V4(v4) => (v4_bytes(v4), false),
        IpAddr::V6(v6) => (v6.octets(), true),
    }
}

/// Whether IP protocol `proto` carries ports (TCP, UDP, SCTP, UDP-Lite):
/// for the others a key's ports are 0, or ICMP's echo identifier.
pub fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17 | 132 | 136)
}

/// Whether `proto` is ICMP or ICMPv6.
pub fn is_icmp(proto: u8) -> bool {
    matches!(proto, 1 | 58)
}

pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        58 => "icmpv6",
        132 => "sctp",
        47 => "gre",
        50 => "esp",
        2 => "igmp",
        4 => "ipip",
        41 => "ipv6",
        51 => "ah",
        89 => "ospf",
        112 => "vrrp",
        136 => "udplite",
        _ => "ip",
    }
}

fn fmt_endpoint(f: &mut fmt::Formatter<'_>, addr: IpAddr, port: u16) -> fmt::Result {
    match addr {
        IpAddr::V4(a) => write!(f, "{a}:{port}"),
        IpAddr::V6(a) => write!(f, "[{a}]:{port}"),
    }
}

impl fmt::Display for FlowKey {
    /// Ports only for protocols that have them; ICMP's echo identifier
    /// as `id N`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.proto_name())?;
        if self.has_ports() {
            fmt_endpoint(f, self.lo(), self.port_lo)?;
            write!(f, " <-> ")?;
            fmt_endpoint(f, self.hi(), self.port_hi)?;
        } else {
            write!(f, "{} <-> {}", self.lo(), self.hi())?;
            if is_icmp(self.proto) && self.port_lo != 0 {
                write!(f, " id {}", self.port_lo)?;
            }
        }
        if self.vlan_outer != 0 {
            write!(f, " vlan {}", self.vlan_outer)?;
            if self.vlan_inner != 0 {
                write!(f, ".{}", self.vlan_inner)?;
            }
        }
        for (bit, name) in encap::NAMES {
            if self.encap & bit != 0 {
                write!(f, " {name}")?;
            }
        }
        if self.zone != 0 {
            write!(f, " port {}", self.zone)?;
        }
        Ok(())
    }
}

impl fmt::Debug for FlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys that differ in any one byte of any field are unequal, and a
    /// key equals its copy: `eq` packs the fields, so a field left out or
    /// two overlapping in the packing would show here.
    #[test]
    fn keys_differing_in_any_field_are_unequal() {
        use core::hash::BuildHasher;
        let (base, _) = FlowKey::from_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 40000, 80, 6);
        let base = FlowKey { vlan_outer: 7, vlan_inner: 9, zone: 2, flags: 1, encap: 4, ..base };
        let copy = base;
        assert_eq!(base, copy);
        let changes: [fn(&mut FlowKey); 14] = [
            |k| k.addr_lo[0] ^= 1,
            |k| k.addr_lo[15] ^= 0x80,
            |k| k.addr_hi[7] ^= 1,
            |k| k.addr_hi[15] ^= 0x80,
            |k| k.port_lo ^= 1,
            |k| k.port_hi ^= 0x8000,
            |k| k.vlan_outer ^= 1,
            |k| k.vlan_outer ^= 0x8000,
            |k| k.vlan_inner ^= 0x8000,
            |k| k.proto ^= 0x80,
            |k| k.zone ^= 1,
            |k| k.flags ^= 0x80,
            |k| k.encap ^= 1,
            |k| k.encap ^= 0x80,
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut other = base;
            change(&mut other);
            assert_ne!(base, other, "change {i} went unseen");
            assert_ne!(other, base, "change {i} went unseen the other way round");
            // `hash` writes the same packed words: a field left out there
            // would hash both keys alike.
            for seed in [1, 0x6d5a_6d5a_6d5a_6d5a] {
                let h = |k: &FlowKey| foldhash::fast::FixedState::with_seed(seed).hash_one(k);
                assert_ne!(h(&base), h(&other), "change {i} went unseen by the hash (seed {seed:#x})");
            }
        }
        let h = |k: &FlowKey| foldhash::fast::FixedState::with_seed(1).hash_one(k);
        assert_eq!(h(&base), h(&copy), "equal keys hash alike");
    }

    #[test]
    fn both_directions_share_one_key() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        let (k1, d1) = FlowKey::from_v4(a, b, 40000, 80, 6);
        let (k2, d2) = FlowKey::from_v4(b, a, 80, 40000, 6);
        assert_eq!(k1, k2);
        assert_eq!(d1, Direction::LoToHi);
        assert_eq!(d2, Direction::HiToLo);
        let e = k1.endpoints(d2);
        assert_eq!(e.src, IpAddr::V4(b));
        assert_eq!(e.sport, 80);
    }

    #[test]
    fn same_address_orders_by_port() {
        let a = Ipv4Addr::new(127, 0, 0, 1);
        let (k1, d1) = FlowKey::from_v4(a, a, 5000, 22, 6);
        let (k2, d2) = FlowKey::from_v4(a, a, 22, 5000, 6);
        assert_eq!(k1, k2);
        assert_ne!(d1, d2);
        assert_eq!(k1.port_lo, 22);
    }

    #[test]
    fn encapsulation_names_in_display() {
        let (mut k, _) = FlowKey::from_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 1, 2, 17);
        assert_eq!(k.to_string(), "udp 10.0.0.1:1 <-> 10.0.0.2:2");
        let (icmp, _) = FlowKey::from_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 7, 7, 1);
        assert_eq!(icmp.to_string(), "icmp 10.0.0.1 <-> 10.0.0.2 id 7");
        let (ipip, _) = FlowKey::from_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 0, 0, 4);
        assert_eq!(ipip.to_string(), "ipip 10.0.0.1 <-> 10.0.0.2");
        k.encap = encap::PPPOE | encap::MPLS;
        assert_eq!(k.to_string(), "udp 10.0.0.1:1 <-> 10.0.0.2:2 pppoe mpls");
        assert_eq!(encap::first_name(k.encap), Some("pppoe"));
        assert_eq!(encap::first_name(encap::CISCO_HDLC), Some("cisco-hdlc"));
        assert_eq!(encap::first_name(0), None);
    }

    #[test]
    fn key_is_compact() {
        assert_eq!(core::mem::size_of::<FlowKey>(), 44);
    }
}
