//! The flower classifier's options (`TCA_FLOWER_*`): a match built from one
//! direction of a flow, the whole filter message around it, and a view
//! that reads a dumped or echoed flower filter back (flags, keys, actions).

use core::net::IpAddr;

use super::action::{self, ActionRepr, ActionView};
use super::attr::{AttrIter, AttrWriter, WireError};
use super::tcmsg::{Tcmsg, TcmsgRepr};
use crate::rule::{MatchFields, Refusal, RefusalKind};

pub const TCA_KIND: u16 = 1;
pub const TCA_OPTIONS: u16 = 2;
pub const TCA_CHAIN: u16 = 11;

pub const TCA_FLOWER_ACT: u16 = 3;
pub const TCA_FLOWER_KEY_ETH_TYPE: u16 = 8;
pub const TCA_FLOWER_KEY_IP_PROTO: u16 = 9;
pub const TCA_FLOWER_KEY_IPV4_SRC: u16 = 10;
pub const TCA_FLOWER_KEY_IPV4_DST: u16 = 12;
pub const TCA_FLOWER_KEY_IPV6_SRC: u16 = 14;
pub const TCA_FLOWER_KEY_IPV6_DST: u16 = 16;
pub const TCA_FLOWER_KEY_TCP_SRC: u16 = 18;
pub const TCA_FLOWER_KEY_TCP_DST: u16 = 19;
pub const TCA_FLOWER_KEY_UDP_SRC: u16 = 20;
pub const TCA_FLOWER_KEY_UDP_DST: u16 = 21;
pub const TCA_FLOWER_FLAGS: u16 = 22;
pub const TCA_FLOWER_KEY_VLAN_ID: u16 = 23;
pub const TCA_FLOWER_KEY_VLAN_ETH_TYPE: u16 = 25;
pub const TCA_FLOWER_KEY_SCTP_SRC: u16 = 41;
pub const TCA_FLOWER_KEY_SCTP_DST: u16 = 42;
pub const TCA_FLOWER_KEY_TCP_FLAGS: u16 = 71;
pub const TCA_FLOWER_KEY_TCP_FLAGS_MASK: u16 = 72;
pub const TCA_FLOWER_KEY_CVLAN_ID: u16 = 77;
pub const TCA_FLOWER_KEY_CVLAN_ETH_TYPE: u16 = 79;
pub const TCA_FLOWER_IN_HW_COUNT: u16 = 86;

/// `TCA_CLS_FLAGS_*`.
pub const FLAG_SKIP_HW: u32 = 1 << 0;
pub const FLAG_SKIP_SW: u32 = 1 << 1;
pub const FLAG_IN_HW: u32 = 1 << 2;
pub const FLAG_NOT_IN_HW: u32 = 1 << 3;

/// The TCP flags every rule of a TCP flow requires clear: FIN and RST
/// (`TCP_FIN | TCP_RST`). Packets with either set miss the rule and reach
/// software, which can then tear the offload down, as the kernel's own
/// flowtable offload does (nf_flow_rule_match).
pub const TCP_TEARDOWN_FLAGS: u16 = 0x0005;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

/// What a flower filter matches for one direction of a flow. Every key is
/// exact: without a mask attribute flower takes the key as fully masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowerMatch {
    /// The filter's protocol (tcm_info and `KEY_ETH_TYPE`): the outermost
    /// ethertype as the stack sees it.
    pub protocol: u16,
    pub vlan: Option<u16>,
    /// Inner tag of a QinQ pair (outer tag 802.1ad).
    pub cvlan: Option<u16>,
    /// The IP ethertype under the tags.
    pub ip_ethertype: u16,
    pub ip_proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// (source, destination) for TCP, UDP and SCTP.
    pub ports: Option<(u16, u16)>,
}

impl FlowerMatch {
    /// Builds the match for packets travelling in `fields.dir`.
    ///
    /// ICMP echo flows match on addresses and protocol only: flower has no
    /// key for the echo identifier that the flow key stores as its ports.
    pub fn from_fields(fields: &MatchFields) -> Result<FlowerMatch, Refusal> {
        let key = &fields.key;
        if let Some(name) = flowtable_sw::key::encap::first_name(key.encap) {
            return Err(Refusal {
                kind: RefusalKind::UnsupportedMatch,
                message: format!("flower can't match through {name} encapsulation"),
            });
        }
        let ends = key.endpoints(fields.dir);
        let ip_ethertype = if key.is_ipv6() { ETH_P_IPV6 } else { ETH_P_IP };
        let (protocol, vlan, cvlan) = match (key.vlan_outer, key.vlan_inner) {
            (0, 0) => (ip_ethertype, None, None),
            (0, inner) => {
                return Err(Refusal {
                    kind: RefusalKind::UnsupportedMatch,
                    message: format!("inner vlan {inner} without an outer vlan"),
                })
            }
            (outer, 0) => (ETH_P_8021Q, Some(outer), None),
            (outer, inner) => (ETH_P_8021AD, Some(outer), Some(inner)),
        };
        for v in [vlan, cvlan].into_iter().flatten() {
            if v >= 4095 {
                return Err(Refusal {
                    kind: RefusalKind::UnsupportedMatch,
                    message: format!("vlan id {v} out of range"),
                });
            }
        }
        let ports = match key.proto {
            6 | 17 | 132 => Some((ends.sport, ends.dport)),
            136 => {
                return Err(Refusal {
                    kind: RefusalKind::UnsupportedMatch,
                    message: "flower can't match udplite ports".into(),
                })
            }
            _ => None,
        };
        Ok(FlowerMatch {
            protocol,
            vlan,
            cvlan,
            ip_ethertype,
            ip_proto: key.proto,
            src: ends.src,
            dst: ends.dst,
            ports,
        })
    }

    /// Writes the key attributes (inside `TCA_OPTIONS`).
    pub fn emit_keys(&self, w: &mut AttrWriter<'_>) {
        w.put_u16_be(TCA_FLOWER_KEY_ETH_TYPE, self.protocol);
        if let Some(v) = self.vlan {
            w.put_u16_ne(TCA_FLOWER_KEY_VLAN_ID, v);
            let next = if self.cvlan.is_some() { ETH_P_8021Q } else { self.ip_ethertype };
            w.put_u16_be(TCA_FLOWER_KEY_VLAN_ETH_TYPE, next);
        }
        if let Some(c) = self.cvlan {
            w.put_u16_ne(TCA_FLOWER_KEY_CVLAN_ID, c);
            w.put_u16_be(TCA_FLOWER_KEY_CVLAN_ETH_TYPE, self.ip_ethertype);
        }
        w.put_u8(TCA_FLOWER_KEY_IP_PROTO, self.ip_proto);
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                w.put(TCA_FLOWER_KEY_IPV4_SRC, &s.octets());
                w.put(TCA_FLOWER_KEY_IPV4_DST, &d.octets());
            }
            (s, d) => {
                w.put(TCA_FLOWER_KEY_IPV6_SRC, &v6_octets(s));
                w.put(TCA_FLOWER_KEY_IPV6_DST, &v6_octets(d));
            }
        }
        if let Some((sp, dp)) = self.ports {
            let (ks, kd) = match self.ip_proto {
                6 => (TCA_FLOWER_KEY_TCP_SRC, TCA_FLOWER_KEY_TCP_DST),
                17 => (TCA_FLOWER_KEY_UDP_SRC, TCA_FLOWER_KEY_UDP_DST),
                _ => (TCA_FLOWER_KEY_SCTP_SRC, TCA_FLOWER_KEY_SCTP_DST),
            };
            w.put_u16_be(ks, sp);
            w.put_u16_be(kd, dp);
        }
        if self.ip_proto == 6 {
            // Key 0 under the FIN|RST mask: the rule takes only packets
            // with both clear; the others go on to software.
            w.put_u16_be(TCA_FLOWER_KEY_TCP_FLAGS, 0);
            w.put_u16_be(TCA_FLOWER_KEY_TCP_FLAGS_MASK, TCP_TEARDOWN_FLAGS);
        }
    }
}

fn v6_octets(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V6(v6) => v6.octets(),
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
    }
}

/// Writes a whole new-filter payload: tcmsg, kind, chain, and the flower
/// options with keys, flags and actions. The cookie goes on the first action.
pub fn emit_filter(
    out: &mut Vec<u8>,
    hdr: &TcmsgRepr,
    chain: u32,
    m: &FlowerMatch,
    flags: u32,
    actions: &[ActionRepr],
    cookie: &[u8],
) {
    hdr.emit(out);
    let mut w = AttrWriter::new(out);
    w.put_str(TCA_KIND, "flower");
    if chain != 0 {
        w.put_u32_ne(TCA_CHAIN, chain);
    }
    let opts = w.begin_nest(TCA_OPTIONS);
    m.emit_keys(&mut w);
    w.put_u32_ne(TCA_FLOWER_FLAGS, flags);
    let acts = w.begin_nest(TCA_FLOWER_ACT);
    for (i, a) in actions.iter().enumerate() {
        a.emit(&mut w, i as u16 + 1, (i == 0).then_some(cookie));
    }
    w.end_nest(acts);
    w.end_nest(opts);
}

/// Writes a filter payload that names one filter (delete, get): tcmsg,
/// kind and chain.
pub fn emit_filter_ref(out: &mut Vec<u8>, hdr: &TcmsgRepr, chain: u32) {
    hdr.emit(out);
    let mut w = AttrWriter::new(out);
    w.put_str(TCA_KIND, "flower");
    if chain != 0 {
        w.put_u32_ne(TCA_CHAIN, chain);
    }
}

/// A filter message (`RTM_NEWTFILTER` dump entry or echo) read in place.
#[derive(Debug, Clone, Copy)]
pub struct FilterView<'a> {
    pub ifindex: u32,
    pub parent: u32,
    pub prio: u16,
    pub protocol: u16,
    pub handle: u32,
    pub chain: u32,
    pub kind: &'a str,
    /// The flower options, when `kind` is "flower" and the message has them.
    pub flower: Option<FlowerView<'a>>,
}

impl<'a> FilterView<'a> {
    pub fn parse(payload: &'a [u8]) -> Result<FilterView<'a>, WireError> {
        let t = Tcmsg::new_checked(payload)?;
        let mut v = FilterView {
            ifindex: t.ifindex(),
            parent: t.parent(),
            prio: t.prio(),
            protocol: t.protocol(),
            handle: t.handle(),
            chain: 0,
            kind: "",
            flower: None,
        };
        let mut options = None;
        for a in t.attrs() {
            let a = a?;
            match a.kind() {
                TCA_KIND => v.kind = a.str()?,
                TCA_CHAIN => v.chain = a.u32_ne()?,
                TCA_OPTIONS => options = Some(a.payload()),
                _ => {}
            }
        }
        if v.kind == "flower" {
            v.flower = options.map(FlowerView::parse).transpose()?;
        }
        Ok(v)
    }
}

/// Flower options read back: flags, hardware count, the keys we set, and
/// the raw action list.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlowerView<'a> {
    pub flags: u32,
    pub in_hw_count: Option<u32>,
    pub eth_type: Option<u16>,
    pub ip_proto: Option<u8>,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub vlan: Option<u16>,
    pub cvlan: Option<u16>,
    /// `TCA_FLOWER_KEY_TCP_FLAGS` and its mask.
    pub tcp_flags: Option<u16>,
    pub tcp_flags_mask: Option<u16>,
    actions: &'a [u8],
}

impl<'a> FlowerView<'a> {
    pub fn parse(options: &'a [u8]) -> Result<FlowerView<'a>, WireError> {
        let mut v = FlowerView::default();
        for a in AttrIter::new(options) {
            let a = a?;
            let p = a.payload();
            match a.kind() {
                TCA_FLOWER_FLAGS => v.flags = a.u32_ne()?,
                TCA_FLOWER_IN_HW_COUNT => v.in_hw_count = Some(a.u32_ne()?),
                TCA_FLOWER_ACT => v.actions = p,
                TCA_FLOWER_KEY_ETH_TYPE => v.eth_type = Some(a.u16_be()?),
                TCA_FLOWER_KEY_IP_PROTO => v.ip_proto = Some(a.u8()?),
                TCA_FLOWER_KEY_IPV4_SRC | TCA_FLOWER_KEY_IPV4_DST => {
                    let b: [u8; 4] =
                        p.try_into().map_err(|_| WireError::BadLength { what: "ipv4 key", len: p.len() })?;
                    let addr = Some(IpAddr::from(b));
                    if a.kind() == TCA_FLOWER_KEY_IPV4_SRC {
                        v.src = addr
                    } else {
                        v.dst = addr
                    }
                }
                TCA_FLOWER_KEY_IPV6_SRC | TCA_FLOWER_KEY_IPV6_DST => {
                    let b: [u8; 16] =
                        p.try_into().map_err(|_| WireError::BadLength { what: "ipv6 key", len: p.len() })?;
                    let addr = Some(IpAddr::from(b));
                    if a.kind() == TCA_FLOWER_KEY_IPV6_SRC {
                        v.src = addr
                    } else {
                        v.dst = addr
                    }
                }
                TCA_FLOWER_KEY_TCP_SRC | TCA_FLOWER_KEY_UDP_SRC | TCA_FLOWER_KEY_SCTP_SRC => {
                    v.sport = Some(a.u16_be()?)
                }
                TCA_FLOWER_KEY_TCP_DST | TCA_FLOWER_KEY_UDP_DST | TCA_FLOWER_KEY_SCTP_DST => {
                    v.dport = Some(a.u16_be()?)
                }
                TCA_FLOWER_KEY_VLAN_ID => v.vlan = Some(a.u16_ne()?),
                TCA_FLOWER_KEY_CVLAN_ID => v.cvlan = Some(a.u16_ne()?),
                TCA_FLOWER_KEY_TCP_FLAGS => v.tcp_flags = Some(a.u16_be()?),
                TCA_FLOWER_KEY_TCP_FLAGS_MASK => v.tcp_flags_mask = Some(a.u16_be()?),
                _ => {}
            }
        }
        Ok(v)
    }

    pub fn in_hw(&self) -> bool {
        self.flags & FLAG_IN_HW != 0
    }

    pub fn not_in_hw(&self) -> bool {
        self.flags & FLAG_NOT_IN_HW != 0
    }

    pub fn actions(&self) -> impl Iterator<Item = Result<ActionView<'a>, WireError>> {
        action::actions(self.actions)
    }

    /// The first action carrying a cookie, and that cookie.
    pub fn cookie_action(&self) -> Result<Option<ActionView<'a>>, WireError> {
        for a in self.actions() {
            let a = a?;
            if a.cookie.is_some() {
                return Ok(Some(a));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::Cookie;
    use crate::tc::action::{TCA_EGRESS_MIRROR, TC_ACT_UNSPEC};
    use crate::tc::tcmsg::PARENT_INGRESS;
    use core::net::{Ipv4Addr, Ipv6Addr};
    use flowtable_sw::{Direction, FlowKey};

    fn udp_fields(dir: Direction) -> MatchFields {
        let (key, _) = FlowKey::from_v4(Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(10, 9, 0, 2), 5000, 6000, 17);
        MatchFields { key, dir, port: key.zone }
    }

    #[test]
    fn match_follows_the_direction() {
        let m = FlowerMatch::from_fields(&udp_fields(Direction::HiToLo)).unwrap();
        assert_eq!(m.src, IpAddr::V4(Ipv4Addr::new(10, 9, 0, 2)));
        assert_eq!(m.ports, Some((6000, 5000)));
        assert_eq!(m.protocol, ETH_P_IP);
    }

    #[test]
    fn filter_round_trips_through_the_view() {
        let cookie = Cookie::new(7, 99, Direction::LoToHi).to_bytes();
        let m = FlowerMatch::from_fields(&udp_fields(Direction::LoToHi)).unwrap();
        let mut out = Vec::new();
        let hdr = TcmsgRepr::filter(3, PARENT_INGRESS, 0x100, m.protocol, 5);
        let acts = [ActionRepr::Mirred { eaction: TCA_EGRESS_MIRROR, ifindex: 4, verdict: TC_ACT_UNSPEC }];
        emit_filter(&mut out, &hdr, 0, &m, FLAG_SKIP_HW, &acts, &cookie);
        let f = FilterView::parse(&out).unwrap();
        assert_eq!((f.ifindex, f.prio, f.protocol, f.handle, f.kind), (3, 0x100, ETH_P_IP, 5, "flower"));
        let fl = f.flower.unwrap();
        assert_eq!(fl.flags, FLAG_SKIP_HW);
        assert_eq!(fl.eth_type, Some(ETH_P_IP));
        assert_eq!(fl.ip_proto, Some(17));
        assert_eq!(fl.src, Some(IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1))));
        assert_eq!((fl.sport, fl.dport), (Some(5000), Some(6000)));
        let a = fl.cookie_action().unwrap().unwrap();
        assert_eq!(Cookie::from_bytes(a.cookie.unwrap()), Some(Cookie::new(7, 99, Direction::LoToHi)));
        assert_eq!(a.mirred_target().unwrap(), Some((TCA_EGRESS_MIRROR, 4)));
    }

    #[test]
    fn qinq_and_v6_keys() {
        let a: Ipv6Addr = "fd00::1".parse().unwrap();
        let b: Ipv6Addr = "fd00::2".parse().unwrap();
        let (key, dir) = FlowKey::canonical(a.octets(), b.octets(), 1, 2, 6, true, 100, 200, 0);
        let m = FlowerMatch::from_fields(&MatchFields { key, dir, port: key.zone }).unwrap();
        assert_eq!((m.protocol, m.vlan, m.cvlan), (ETH_P_8021AD, Some(100), Some(200)));
        let mut buf = Vec::new();
        m.emit_keys(&mut AttrWriter::new(&mut buf));
        let v = FlowerView::parse(&buf).unwrap();
        assert_eq!((v.vlan, v.cvlan), (Some(100), Some(200)));
        assert_eq!(v.src, Some(IpAddr::V6(a)));
        let vlan_next = AttrIter::new(&buf).find(TCA_FLOWER_KEY_VLAN_ETH_TYPE).unwrap().unwrap();
        assert_eq!(vlan_next.u16_be().unwrap(), ETH_P_8021Q);
    }

    #[test]
    fn tcp_rules_require_fin_and_rst_clear() {
        let (key, dir) = FlowKey::from_v4(Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(10, 9, 0, 2), 40000, 443, 6);
        let m = FlowerMatch::from_fields(&MatchFields { key, dir, port: key.zone }).unwrap();
        let mut buf = Vec::new();
        m.emit_keys(&mut AttrWriter::new(&mut buf));
        // Each attribute: length 6 (header 4 + be16), type, value in network
        // order, padded to 8.
        let raw = |kind: u16| {
            let mut at = 0;
            while at < buf.len() {
                let len = u16::from_ne_bytes([buf[at], buf[at + 1]]) as usize;
                if u16::from_ne_bytes([buf[at + 2], buf[at + 3]]) == kind {
                    return buf[at..at + len].to_vec();
                }
                at += (len + 3) & !3;
            }
            panic!("attribute {kind} missing from {buf:?}");
        };
        let mut flags = 6u16.to_ne_bytes().to_vec();
        flags.extend_from_slice(&71u16.to_ne_bytes());
        flags.extend_from_slice(&[0x00, 0x00]);
        assert_eq!(raw(TCA_FLOWER_KEY_TCP_FLAGS), flags);
        let mut mask = 6u16.to_ne_bytes().to_vec();
        mask.extend_from_slice(&72u16.to_ne_bytes());
        mask.extend_from_slice(&[0x00, 0x05]);
        assert_eq!(raw(TCA_FLOWER_KEY_TCP_FLAGS_MASK), mask);
        assert_eq!(buf.len() % 4, 0);
        // The ports are still matched, and the view reads the flags back.
        let v = FlowerView::parse(&buf).unwrap();
        assert_eq!((v.sport, v.dport), (Some(40000), Some(443)));
        assert_eq!((v.tcp_flags, v.tcp_flags_mask), (Some(0), Some(0x0005)));

        // UDP, ICMP and port-less protocols carry no flags match.
        for proto in [17, 1, 47] {
            let (key, dir) = FlowKey::from_v4(Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(10, 9, 0, 2), 7, 7, proto);
            let m = FlowerMatch::from_fields(&MatchFields { key, dir, port: key.zone }).unwrap();
            let mut buf = Vec::new();
            m.emit_keys(&mut AttrWriter::new(&mut buf));
            assert!(AttrIter::new(&buf).find(TCA_FLOWER_KEY_TCP_FLAGS).unwrap().is_none(), "proto {proto}");
            assert!(AttrIter::new(&buf).find(TCA_FLOWER_KEY_TCP_FLAGS_MASK).unwrap().is_none(), "proto {proto}");
        }
    }

    #[test]
    fn refuses_what_flower_cannot_match() {
        let (key, dir) = FlowKey::from_v4(Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(2, 2, 2, 2), 1, 2, 136);
        let r = FlowerMatch::from_fields(&MatchFields { key, dir, port: key.zone }).unwrap_err();
        assert_eq!(r.kind, RefusalKind::UnsupportedMatch);
        assert!(r.message.contains("udplite"), "{r}");
        let (key, dir) = FlowKey::canonical([1; 16], [2; 16], 0, 0, 6, false, 0, 5, 0);
        assert!(FlowerMatch::from_fields(&MatchFields { key, dir, port: key.zone }).is_err());
        let (mut key, dir) = FlowKey::from_v4(Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(2, 2, 2, 2), 1, 2, 6);
        key.encap = flowtable_sw::key::encap::PPPOE;
        let r = FlowerMatch::from_fields(&MatchFields { key, dir, port: key.zone }).unwrap_err();
        assert_eq!(r.kind, RefusalKind::UnsupportedMatch);
        assert!(r.message.contains("pppoe"), "{r}");
    }

    #[test]
    fn reads_a_recorded_dump_of_our_drop_rule() {
        let bytes = include_bytes!("testdata/dump-drop-udp.bin");
        let f = FilterView::parse(bytes).unwrap();
        assert_eq!(
            (f.prio, f.protocol, f.handle, f.parent, f.kind),
            (0x100, ETH_P_IP, 2, crate::tc::tcmsg::PARENT_INGRESS, "flower")
        );
        let fl = f.flower.unwrap();
        assert_eq!(fl.flags, FLAG_SKIP_HW | FLAG_NOT_IN_HW);
        assert!(fl.not_in_hw() && !fl.in_hw());
        assert_eq!(fl.in_hw_count, Some(0));
        assert_eq!(fl.ip_proto, Some(17));
        assert_eq!(fl.src, Some(IpAddr::V4(Ipv4Addr::new(10, 34, 0, 1))));
        assert_eq!(fl.dst, Some(IpAddr::V4(Ipv4Addr::new(10, 34, 0, 2))));
        assert_eq!((fl.sport, fl.dport), (Some(5001), Some(6001)));
        let a = fl.cookie_action().unwrap().unwrap();
        assert_eq!(a.kind, "gact");
        assert_eq!(a.verdict().unwrap(), Some(crate::tc::action::TC_ACT_SHOT));
        assert_eq!(Cookie::from_bytes(a.cookie.unwrap()), Some(Cookie::new(0x1600, 1, Direction::LoToHi)));
        let st = a.stats().unwrap().unwrap();
        assert_eq!((st.packets, st.bytes, st.hw_packets), (20, 20 * 128, 0));
        let tm = a.tm().unwrap().unwrap();
        assert!(tm.last_hit_age_ticks().is_some());
    }

    #[test]
    fn reads_recorded_mirror_and_foreign_filters() {
        let f = FilterView::parse(include_bytes!("testdata/dump-mirror-udp.bin")).unwrap();
        let a = f.flower.unwrap().cookie_action().unwrap().unwrap();
        assert_eq!(a.mirred_target().unwrap().map(|t| t.0), Some(TCA_EGRESS_MIRROR));
        assert_eq!(a.verdict().unwrap(), Some(TC_ACT_UNSPEC));
        assert_eq!(a.stats().unwrap().unwrap().packets, 15);

        // Added with `tc`: no cookie, so not ours.
        let f = FilterView::parse(include_bytes!("testdata/dump-foreign-redirect.bin")).unwrap();
        assert_eq!(f.prio, 61000);
        let fl = f.flower.unwrap();
        assert!(fl.cookie_action().unwrap().is_none());
        let a = fl.actions().next().unwrap().unwrap();
        assert_eq!(a.mirred_target().unwrap().map(|t| t.0), Some(crate::tc::action::TCA_EGRESS_REDIR));

        // A priority head: kind and chain, no handle, no options.
        let f = FilterView::parse(include_bytes!("testdata/dump-prio-head.bin")).unwrap();
        assert_eq!((f.handle, f.prio, f.kind), (0, 0x100, "flower"));
        assert!(f.flower.is_none());
    }

    #[test]
    fn truncated_recording_is_an_error_not_a_panic() {
        let bytes = include_bytes!("testdata/dump-drop-udp.bin");
        for cut in [10, 30, 50, 100, 200, bytes.len() - 3] {
            let _ = FilterView::parse(&bytes[..cut]).and_then(|f| {
                if let Some(fl) = f.flower {
                    for a in fl.actions() {
                        let a = a?;
                        a.stats()?;
                        a.tm()?;
                    }
                }
                Ok(())
            });
        }
        assert!(FilterView::parse(&bytes[..10]).is_err());
    }
}
