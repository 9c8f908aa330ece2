//! The classifier: configured rules, compiled for matching on a flow's key,
//! decide when a flow leaves the unclassified state and what it becomes.

use flowtable_config::{ClassResult, ClassifierSection, ProtoName};
use flowtable_hw::Action;
use flowtable_sw::context::{FlowContext, Verdict};
use flowtable_sw::{Direction, Flow, FlowKey, TcpState};
use ipnet::IpNet;
use std::net::IpAddr;

/// What the classifier says about a flow now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not yet: the matching rule's trigger hasn't fired.
    Wait,
    /// Keep in software.
    Software,
    /// Offload with this action.
    Offload(Action),
}

/// The `Flow::class` value of flows no rule matched.
pub const CLASS_DEFAULT: u8 = u8::MAX;
/// The `Flow::class` value of flows decided by an application's verdict.
pub const CLASS_VERDICT: u8 = u8::MAX - 1;
/// The `Flow::class` value of flows decided by a rule that a reload removed.
pub const CLASS_RETIRED: u8 = u8::MAX - 2;
/// Most rules: `Flow::class` is a byte, with three values reserved.
pub const MAX_RULES: usize = u8::MAX as usize - 3;

struct CompiledRule {
    name: String,
    proto: Option<ProtoName>,
    ports: Vec<(u16, u16)>,
    server_ports: Vec<(u16, u16)>,
    client_ports: Vec<(u16, u16)>,
    prefixes: Vec<IpNet>,
    server_prefixes: Vec<IpNet>,
    client_prefixes: Vec<IpNet>,
    vlan: Option<u16>,
    ingress: Option<u8>,
    after_packets: Option<u64>,
    after_bytes: Option<u64>,
    tcp_established: bool,
    result: ClassResult,
}

fn in_ranges(ranges: &[(u16, u16)], port: u16) -> bool {
    ranges.is_empty() || ranges.iter().any(|&(a, b)| a <= port && port <= b)
}

fn in_prefixes(prefixes: &[IpNet], addr: IpAddr) -> bool {
    prefixes.is_empty() || prefixes.iter().any(|p| p.contains(&addr))
}

impl CompiledRule {
    /// Whether a flow matches; `ingress` is the port its first packet came in on.
    fn matches(&self, key: &FlowKey, initiator: Direction, ingress: u8) -> bool {
        if let Some(p) = self.proto {
            if !p.matches(key.proto) {
                return false;
            }
        }
        if self.vlan.is_some_and(|v| v != key.vlan_outer) || self.ingress.is_some_and(|i| i != ingress) {
            return false;
        }
        let ends = key.endpoints(initiator);
        let either_port = |r: &[(u16, u16)]| r.is_empty() || in_ranges(r, ends.sport) || in_ranges(r, ends.dport);
        let either_addr = |p: &[IpNet]| p.is_empty() || in_prefixes(p, ends.src) || in_prefixes(p, ends.dst);
        either_port(&self.ports)
            && in_ranges(&self.server_ports, ends.dport)
            && in_ranges(&self.client_ports, ends.sport)
            && either_addr(&self.prefixes)
            && in_prefixes(&self.server_prefixes, ends.dst)
            && in_prefixes(&self.client_prefixes, ends.src)
    }

    /// Whether the trigger has fired: every condition it has holds (with
    /// no condition, at once). `{"tcp_established": true, "after_packets":
    /// 8}` waits for both the handshake and the 8th packet.
    fn triggered(&self, flow: &Flow) -> bool {
        self.after_packets.is_none_or(|n| flow.packets() >= n)
            && self.after_bytes.is_none_or(|n| flow.bytes() >= n)
            && (!self.tcp_established || flow.tcp == TcpState::Established)
    }
}

fn decision(result: ClassResult) -> Decision {
    match result {
        ClassResult::Software => Decision::Software,
        ClassResult::Offload(a) => Decision::Offload(a),
    }
}

pub struct Classifier {
    rules: Vec<CompiledRule>,
    default: ClassResult,
    default_after_packets: u64,
}

impl Classifier {
    /// Compiles validated configuration (see `Config::validate`).
    pub fn new(section: &ClassifierSection) -> Result<Classifier, String> {
        if section.rules.len() > MAX_RULES {
            return Err(format!("classifier.rules: {} rules; at most {MAX_RULES}", section.rules.len()));
        }
        let ranges = |specs: &[flowtable_config::PortSpec]| -> Result<Vec<(u16, u16)>, String> {
            specs.iter().map(|s| s.range()).collect()
        };
        let rules = section
            .rules
            .iter()
            .map(|r| {
                Ok(CompiledRule {
                    name: r.name.clone(),
                    proto: r.matches.proto,
                    ports: ranges(&r.matches.ports)?,
                    server_ports: ranges(&r.matches.server_ports)?,
                    client_ports: ranges(&r.matches.client_ports)?,
                    prefixes: r.matches.prefixes.clone(),
                    server_prefixes: r.matches.server_prefixes.clone(),
                    client_prefixes: r.matches.client_prefixes.clone(),
                    vlan: r.matches.vlan,
                    ingress: r.matches.ingress,
                    after_packets: r.trigger.after_packets,
                    after_bytes: r.trigger.after_bytes,
                    tcp_established: r.trigger.tcp_established,
                    result: r.result,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Classifier { rules, default: section.default, default_after_packets: section.default_after_packets })
    }

    /// The name of the rule behind a `Flow::class` value.
    pub fn class_name(&self, class: u8) -> Option<&str> {
        match class {
            0 => None,
            CLASS_DEFAULT => Some("default"),
            CLASS_VERDICT => Some("verdict"),
            CLASS_RETIRED => Some("(rule removed by reload)"),
            c => self.rules.get(c as usize - 1).map(|r| r.name.as_str()),
        }
    }

    /// Decides for a flow that is still being tracked. The first rule whose
    /// match fits owns the flow (remembered in `flow.class`); it decides
    /// when its trigger fires. An application's verdict overrides all.
    pub fn decide(&self, flow: &mut Flow, context: Option<&FlowContext>, verdict_action: Action) -> Decision {
        if let Some(v) = context.and_then(|c| c.verdict.as_ref()) {
            flow.class = CLASS_VERDICT;
            return match v {
                Verdict::Software => Decision::Software,
                Verdict::Drop => Decision::Offload(Action::Drop),
                Verdict::Offload => Decision::Offload(verdict_action),
            };
        }
        if flow.class == 0 {
            flow.class = self
                .rules
                .iter()
                .position(|r| r.matches(&flow.key, flow.initiator(), flow.port(flow.initiator())))
                .map_or(CLASS_DEFAULT, |i| i as u8 + 1);
        }
        match flow.class {
            CLASS_DEFAULT | CLASS_VERDICT => {
                if flow.packets() >= self.default_after_packets {
                    decision(self.default)
                } else {
                    Decision::Wait
                }
            }
            c => {
                let rule = &self.rules[c as usize - 1];
                if rule.triggered(flow) {
                    decision(rule.result)
                } else {
                    Decision::Wait
                }
            }
        }
    }

    /// Where the rule a flow was decided by stands in `new` (matched by
    /// name), for a reload: a flow keeps naming the rule that decided it.
    pub fn remap_class(&self, class: u8, new: &Classifier) -> u8 {
        match class {
            0 | CLASS_DEFAULT | CLASS_VERDICT | CLASS_RETIRED => class,
            c => self
                .rules
                .get(c as usize - 1)
                .and_then(|old| new.rules.iter().position(|r| r.name == old.name))
                .map_or(CLASS_RETIRED, |i| i as u8 + 1),
        }
    }

    /// The action an `offload` verdict uses: that of the rule the flow
    /// matched, if it offloads, else `pass`.
    pub fn action_for(&self, flow: &Flow) -> Action {
        match flow.class {
            0 | CLASS_VERDICT | CLASS_RETIRED => None,
            CLASS_DEFAULT => Some(self.default),
            c => self.rules.get(c as usize - 1).map(|r| r.result),
        }
        .and_then(|r| match r {
            ClassResult::Offload(a) => Some(a),
            ClassResult::Software => None,
        })
        .unwrap_or(Action::Pass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;
    use flowtable_sw::{FlowTable, Fragment, Lookup, PacketInfo, TableConfig};

    fn classifier(trigger: &str) -> Classifier {
        let section: ClassifierSection = serde_json::from_str(&format!(
            r#"{{"rules": [{{"name": "r", "match": {{"proto": "tcp"}}, "trigger": {trigger},
                "result": {{"offload": {{"type": "pass"}}}}}}]}}"#
        ))
        .unwrap();
        Classifier::new(&section).unwrap()
    }

    /// A TCP flow in `tcp` state having seen `packets` packets of 100 bytes.
    fn flow(tcp: TcpState, packets: u64) -> Flow {
        let (key, dir) = FlowKey::from_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 40000, 443, 6);
        let pkt = PacketInfo {
            key,
            dir,
            port: 0,
            wire_len: 100,
            tcp_flags: 0x02,
            fragment: Fragment::Whole,
            payload_offset: 0,
            l2_len: 0,
            trailer: 0,
        };
        let mut table = FlowTable::new(TableConfig::default());
        let Lookup::Inserted { id, .. } = table.lookup_or_insert(&pkt, 0) else { panic!("a new flow") };
        let mut f = *table.get(id).unwrap();
        f.tcp = tcp;
        f.sw[dir.index()].packets = packets;
        f.sw[dir.index()].bytes = packets * 100;
        f
    }

    fn decide(c: &Classifier, mut f: Flow) -> Decision {
        c.decide(&mut f, None, Action::Pass)
    }

    const OFFLOAD: Decision = Decision::Offload(Action::Pass);

    #[test]
    fn a_trigger_fires_when_all_its_conditions_hold() {
        let c = classifier(r#"{"tcp_established": true, "after_packets": 8}"#);
        // The 8th packet of a connection that never completed its handshake.
        assert_eq!(decide(&c, flow(TcpState::SynSent, 8)), Decision::Wait);
        assert_eq!(decide(&c, flow(TcpState::Midstream, 20)), Decision::Wait);
        // Established, but only 3 packets in.
        assert_eq!(decide(&c, flow(TcpState::Established, 3)), Decision::Wait);
        // Both.
        assert_eq!(decide(&c, flow(TcpState::Established, 8)), OFFLOAD);

        let c = classifier(r#"{"tcp_established": true, "after_packets": 8, "after_bytes": 1500}"#);
        assert_eq!(decide(&c, flow(TcpState::Established, 8)), Decision::Wait, "800 bytes of 1500");
        assert_eq!(decide(&c, flow(TcpState::SynReceived, 15)), Decision::Wait);
        assert_eq!(decide(&c, flow(TcpState::Established, 15)), OFFLOAD);
    }

    #[test]
    fn single_conditions_and_none_decide_as_before() {
        let c = classifier("{}");
        assert_eq!(decide(&c, flow(TcpState::SynSent, 1)), OFFLOAD, "no condition: the first packet");
        let c = classifier(r#"{"after_packets": 8}"#);
        assert_eq!(decide(&c, flow(TcpState::SynSent, 7)), Decision::Wait);
        assert_eq!(decide(&c, flow(TcpState::SynSent, 8)), OFFLOAD);
        let c = classifier(r#"{"after_bytes": 1000}"#);
        assert_eq!(decide(&c, flow(TcpState::Established, 9)), Decision::Wait);
        assert_eq!(decide(&c, flow(TcpState::SynSent, 10)), OFFLOAD);
        let c = classifier(r#"{"tcp_established": true}"#);
        assert_eq!(decide(&c, flow(TcpState::SynReceived, 50)), Decision::Wait);
        assert_eq!(decide(&c, flow(TcpState::Established, 3)), OFFLOAD);
    }
}
