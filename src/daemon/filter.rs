//! Flow filter expressions for `flows`: terms `field=value` or
//! `field!=value`, separated by spaces or commas, all of which must hold.
//!
//! Fields: `id`, `proto` (tcp, udp, sctp, icmp, gre, esp or a number),
//! `port` (either side), `sport`/`dport` (initiator's/responder's), each a
//! port or a range `a-b`; `addr` (either side), `src`/`dst`, each an
//! address or a prefix; `vlan`, `ingress` (a port either direction arrives
//! on), `stage` (tracking, software,
//! queued, offloaded, refused), `placement` (hardware, kernel-software,
//! mixed, none), `class` (the classifier rule's name), `label`.

use flowtable_config::ProtoName;
use flowtable_sw::{Direction, Flow, FlowId, Stage};
use ipnet::IpNet;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Id(u64),
    Proto(u8),
    ProtoName(ProtoName),
    Port(u16, u16),
    Sport(u16, u16),
    Dport(u16, u16),
    Addr(IpNet),
    Src(IpNet),
    Dst(IpNet),
    Vlan(u16),
    Ingress(u8),
    Stage(Stage),
    Placement(String),
    Class(String),
    Label(String),
}

#[derive(Debug, Clone, PartialEq)]
struct Term {
    test: Test,
    negate: bool,
}

/// What a filter may need beyond the flow itself, fetched only when a
/// term asks for it.
pub trait FlowFacts {
    fn placement(&self, id: FlowId, flow: &Flow) -> &'static str;
    fn class(&self, flow: &Flow) -> Option<&str>;
    fn label(&self, id: FlowId) -> Option<&str>;
}

/// A parsed filter; the empty filter matches every flow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    terms: Vec<Term>,
}

pub const PLACEMENTS: [&str; 4] = ["hardware", "kernel-software", "mixed", "none"];
const STAGES: [Stage; 5] = [Stage::Tracking, Stage::Software, Stage::Queued, Stage::Offloaded, Stage::Refused];

fn port_range(v: &str) -> Result<(u16, u16), String> {
    flowtable_config::PortSpec::Text(v.to_string()).range()
}

fn prefix(v: &str) -> Result<IpNet, String> {
    if let Ok(net) = v.parse::<IpNet>() {
        return Ok(net);
    }
    v.parse::<IpAddr>().map(IpNet::from).map_err(|_| format!("{v:?} is not an address or a prefix"))
}

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, String> {
        let mut terms = Vec::new();
        for word in text.split(|c: char| c.is_whitespace() || c == ',').filter(|w| !w.is_empty()) {
            let (field, value, negate) = match word.split_once("!=") {
                Some((f, v)) => (f, v, true),
                None => match word.split_once('=') {
                    Some((f, v)) => (f, v, false),
                    None => return Err(format!("term {word:?}: write field=value or field!=value")),
                },
            };
            let bad = |e: String| format!("term {word:?}: {e}");
            let test = match field {
                "id" => Test::Id(value.parse().map_err(|_| bad(format!("{value:?} is not a flow id")))?),
                "proto" => match value.parse::<u8>() {
                    Ok(n) => Test::Proto(n),
                    Err(_) => Test::ProtoName(
                        serde_json::from_value(serde_json::Value::String(value.to_string()))
                            .map_err(|_| bad("give tcp, udp, sctp, icmp, gre, esp or a protocol number".into()))?,
                    ),
                },
                "port" => {
                    let (a, b) = port_range(value).map_err(bad)?;
                    Test::Port(a, b)
                }
                "sport" => {
                    let (a, b) = port_range(value).map_err(bad)?;
                    Test::Sport(a, b)
                }
                "dport" => {
                    let (a, b) = port_range(value).map_err(bad)?;
                    Test::Dport(a, b)
                }
                "addr" | "host" => Test::Addr(prefix(value).map_err(bad)?),
                "src" => Test::Src(prefix(value).map_err(bad)?),
                "dst" => Test::Dst(prefix(value).map_err(bad)?),
                "vlan" => Test::Vlan(value.parse().ok().filter(|v| *v <= 4095).ok_or_else(|| bad("give a VLAN id, 0-4095".into()))?),
                "ingress" => Test::Ingress(value.parse().map_err(|_| bad("give a port index, 0-255".into()))?),
                "stage" | "state" => Test::Stage(
                    STAGES.into_iter().find(|s| s.as_str() == value).ok_or_else(|| {
                        bad("give tracking, software, queued, offloaded or refused".into())
                    })?,
                ),
                "placement" => {
                    if !PLACEMENTS.contains(&value) {
                        return Err(bad(format!("give one of {}", PLACEMENTS.join(", "))));
                    }
                    Test::Placement(value.to_string())
                }
                "class" | "rule" => Test::Class(value.to_string()),
                "label" => Test::Label(value.to_string()),
                other => {
                    return Err(format!(
                        "term {word:?}: unknown field {other:?}; fields: id, proto, port, sport, dport, addr, src, dst, vlan, ingress, stage, placement, class, label"
                    ))
                }
            };
            terms.push(Term { test, negate });
        }
        Ok(Filter { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn matches(&self, id: FlowId, flow: &Flow, facts: &dyn FlowFacts) -> bool {
        if self.terms.is_empty() {
            return true;
        }
        // Addresses and ports are worked out only if a term asks.
        let ends_cell = std::cell::OnceCell::new();
        let ends = || ends_cell.get_or_init(|| flow.key.endpoints(flow.initiator()));
        let within = |(a, b): (u16, u16), p: u16| a <= p && p <= b;
        self.terms.iter().all(|t| {
            let hit = match &t.test {
                Test::Id(v) => id.0 == *v,
                Test::Proto(p) => flow.key.proto == *p,
                Test::ProtoName(p) => p.matches(flow.key.proto),
                Test::Port(a, b) => within((*a, *b), ends().sport) || within((*a, *b), ends().dport),
                Test::Sport(a, b) => within((*a, *b), ends().sport),
                Test::Dport(a, b) => within((*a, *b), ends().dport),
                Test::Addr(n) => n.contains(&ends().src) || n.contains(&ends().dst),
                Test::Src(n) => n.contains(&ends().src),
                Test::Dst(n) => n.contains(&ends().dst),
                Test::Vlan(v) => flow.key.vlan_outer == *v,
                Test::Ingress(i) => [Direction::LoToHi, Direction::HiToLo].iter().any(|d| flow.port(*d) == *i),
                Test::Stage(s) => flow.stage() == *s,
                Test::Placement(p) => facts.placement(id, flow) == p,
                Test::Class(c) => facts.class(flow) == Some(c.as_str()),
                Test::Label(l) => facts.label(id) == Some(l.as_str()),
            };
            hit != t.negate
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowtable_sw::{FlowKey, FlowTable, Fragment, Lookup, PacketInfo, TableConfig};
    use std::net::Ipv4Addr;

    struct Facts;
    impl FlowFacts for Facts {
        fn placement(&self, _: FlowId, _: &Flow) -> &'static str {
            "hardware"
        }
        fn class(&self, _: &Flow) -> Option<&str> {
            Some("web")
        }
        fn label(&self, _: FlowId) -> Option<&str> {
            None
        }
    }

    #[test]
    fn terms_match_by_initiator_and_negate() {
        let mut t = FlowTable::new(TableConfig::default());
        let (key, dir) = FlowKey::from_v4(Ipv4Addr::new(10, 1, 2, 3), Ipv4Addr::new(192, 168, 0, 9), 40000, 443, 6);
        let p = PacketInfo {
            key,
            dir,
            port: 0,
            wire_len: 60,
            tcp_flags: 0x02,
            icmp: [0; 2],
            fragment: Fragment::Whole,
            payload_offset: 0,
            l2_len: 0,
            trailer: 0,
        };
        let Lookup::Inserted { id, .. } = t.lookup_or_insert(&p, 1) else { panic!() };
        t.observe(id, &p, 1, true);
        let f = t.get(id).unwrap();
        let m = |s: &str| Filter::parse(s).unwrap().matches(id, f, &Facts);
        assert!(m(""));
        assert!(m("proto=tcp dport=443 src=10.0.0.0/8"));
        assert!(m("port=400-500,addr=192.168.0.9"));
        assert!(!m("sport=443"));
        assert!(!m("dst=10.0.0.0/8"));
        assert!(m("proto!=udp placement=hardware class=web"));
        assert!(!m("label=x"));
        assert!(m("label!=x stage=tracking proto=6"));
        assert!(!m("stage=offloaded"));
        for bad in ["proto=tpc", "port=9-1", "src=10.0.0.300", "stage=gone", "colour=red", "justaword", "vlan=5000"] {
            let e = Filter::parse(bad).unwrap_err();
            assert!(e.contains(bad.split(',').next().unwrap()), "{bad}: {e}");
        }
    }
}
