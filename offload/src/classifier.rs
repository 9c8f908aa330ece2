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
    /// Rules that reloads removed, kept by name so that the flows they
    /// decided still name them: `Flow::class` values after the rules'.
    retired: Vec<RetiredRule>,
}

/// A rule a reload removed while flows it decided lived on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RetiredRule {
    name: String,
    /// The configuration generation that removed it.
    generation: u64,
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
        Ok(Classifier {
            rules,
            default: section.default,
            default_after_packets: section.default_after_packets,
            retired: Vec::new(),
        })
    }

    /// The classifier a reload puts in place of `old`: `section`'s rules,
    /// and, under their own names, `old`'s rules that `section` no longer
    /// has (removed in configuration generation `generation`) along with
    /// those earlier reloads removed. Past the free `Flow::class` values the oldest
    /// removed names give way (their flows then say only that their rule
    /// was removed).
    pub fn succeeding(old: &Classifier, section: &ClassifierSection, generation: u64) -> Result<Classifier, String> {
        let mut new = Classifier::new(section)?;
        let kept = |name: &str| new.rules.iter().any(|r| r.name == name);
        let mut retired: Vec<RetiredRule> = old.retired.iter().filter(|r| !kept(&r.name)).cloned().collect();
        retired.extend(
            old.rules.iter().filter(|r| !kept(&r.name)).map(|r| RetiredRule { name: r.name.clone(), generation }),
        );
        let room = MAX_RULES - new.rules.len();
        if retired.len() > room {
            retired.drain(..retired.len() - room);
        }
        new.retired = retired;
        Ok(new)
    }

    /// The name of the rule behind a `Flow::class` value: a rule a reload
    /// removed keeps its name (see `removed_in_generation`).
    pub fn class_name(&self, class: u8) -> Option<&str> {
        match class {
            0 => None,
            CLASS_DEFAULT => Some("default"),
            CLASS_VERDICT => Some("verdict"),
            CLASS_RETIRED => Some("(rule removed by reload)"),
            c => self.rule_or_retired_name(c),
        }
    }

    /// For a flow decided by a rule that a reload removed since, the
    /// configuration generation that removed it; None for a rule still
    /// configured.
    pub fn removed_in_generation(&self, class: u8) -> Option<u64> {
        match class {
            0 | CLASS_DEFAULT | CLASS_VERDICT | CLASS_RETIRED => None,
            c => self.retired.get((c as usize - 1).checked_sub(self.rules.len())?).map(|r| r.generation),
        }
    }

    fn rule_or_retired_name(&self, class: u8) -> Option<&str> {
        let i = class as usize - 1;
        match self.rules.get(i) {
            Some(r) => Some(&r.name),
            None => self.retired.get(i - self.rules.len()).map(|r| r.name.as_str()),
        }
    }

    /// The `Flow::class` of the first rule whose match fits the flow, or
    /// `CLASS_DEFAULT`: the rule that owns it from then on.
    pub fn owner(&self, flow: &Flow) -> u8 {
        self.rules
            .iter()
            .position(|r| r.matches(&flow.key, flow.initiator(), flow.port(flow.initiator())))
            .map_or(CLASS_DEFAULT, |i| i as u8 + 1)
    }

    /// The class `flow`'s match puts it in, by the rule's name (or
    /// `default`), and the action that class offloads with, if it
    /// offloads: for a flow an earlier run offloaded, whether this
    /// configuration still wants it so.
    pub fn offload_of(&self, flow: &Flow) -> (u8, Option<Action>) {
        let class = self.owner(flow);
        let result = match class {
            CLASS_DEFAULT => self.default,
            c => self.rules[c as usize - 1].result,
        };
        match result {
            ClassResult::Offload(a) => (class, Some(a)),
            ClassResult::Software => (class, None),
        }
    }

    /// The `Flow::class` of the configured rule named `name`.
    pub fn class_of_name(&self, name: &str) -> Option<u8> {
        match name {
            "default" => Some(CLASS_DEFAULT),
            "verdict" => Some(CLASS_VERDICT),
            _ => self.rules.iter().position(|r| r.name == name).map(|i| i as u8 + 1),
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
            flow.class = self.owner(flow);
        }
        match flow.class {
            // A flow owned by a rule a reload removed is undecided only if
            // the reload came between the match and the decision; it is
            // then decided anew (see `Shard::reload`), so this is defensive.
            CLASS_RETIRED => decision(self.default),
            c if c as usize > self.rules.len() && c < CLASS_RETIRED => decision(self.default),
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
            c => {
                let Some(name) = self.rule_or_retired_name(c) else { return CLASS_RETIRED };
                let retired_by = self.removed_in_generation(c);
                if let Some(i) = new.rules.iter().position(|r| r.name == name) {
                    return i as u8 + 1;
                }
                // Removed now (an old rule) or earlier (an old retired name:
                // the entry of that same removal, should the name have been
                // removed, configured again and removed once more since).
                let found = match retired_by {
                    Some(n) => new.retired.iter().position(|r| r.name == name && r.generation == n),
                    None => new.retired.iter().rposition(|r| r.name == name),
                };
                found.map_or(CLASS_RETIRED, |i| (new.rules.len() + i + 1) as u8)
            }
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
    use flowtable_sw::{FlowTable, Lookup, PacketInfo, TableConfig};

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
        let pkt = PacketInfo::whole(key, dir, 0, 100, 0x02);
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

    fn rules(names: &[&str]) -> ClassifierSection {
        let rules: Vec<String> = names
            .iter()
            .map(|n| format!(r#"{{"name": "{n}", "match": {{"proto": "tcp"}}, "result": "software"}}"#))
            .collect();
        serde_json::from_str(&format!(r#"{{"rules": [{}]}}"#, rules.join(","))).unwrap()
    }

    #[test]
    fn a_reload_keeps_the_names_of_removed_rules_with_the_generation_that_removed_them() {
        let g1 = Classifier::new(&rules(&["a", "b"])).unwrap();
        let (a, b) = (1u8, 2u8);
        assert_eq!((g1.class_name(a), g1.removed_in_generation(a)), (Some("a"), None));
        // Generation 2 renames "a" to "z" and keeps "b" (now second).
        let g2 = Classifier::succeeding(&g1, &rules(&["z", "b"]), 2).unwrap();
        let (a2, b2) = (g1.remap_class(a, &g2), g1.remap_class(b, &g2));
        assert_eq!(g2.class_name(b2), Some("b"));
        assert_eq!(g2.removed_in_generation(b2), None);
        assert_eq!((g2.class_name(a2), g2.removed_in_generation(a2)), (Some("a"), Some(2)));
        // Generation 3 removes "b" as well; "a" stays removed since 2.
        let g3 = Classifier::succeeding(&g2, &rules(&["z"]), 3).unwrap();
        let (a3, b3) = (g2.remap_class(a2, &g3), g2.remap_class(b2, &g3));
        assert_eq!((g3.class_name(a3), g3.removed_in_generation(a3)), (Some("a"), Some(2)));
        assert_eq!((g3.class_name(b3), g3.removed_in_generation(b3)), (Some("b"), Some(3)));
        // "a" comes back in 4: a rule is known by its name, so the flows the
        // old "a" decided are the configured "a"'s again (as after a rename
        // back), no longer marked removed.
        let g4 = Classifier::succeeding(&g3, &rules(&["a", "z"]), 4).unwrap();
        assert_eq!(g3.remap_class(a3, &g4), 1, "a name configured again is the configured rule");
        assert_eq!(g4.class_name(1), Some("a"));
        assert_eq!(g4.removed_in_generation(1), None);
        assert_eq!(g4.class_name(g3.remap_class(b3, &g4)), Some("b"));
        // Past the free class values, the oldest removed names give way.
        let many: Vec<String> = (0..MAX_RULES).map(|i| format!("r{i}")).collect();
        let big = Classifier::new(&rules(&many.iter().map(String::as_str).collect::<Vec<_>>())).unwrap();
        let after = Classifier::succeeding(&big, &rules(&["x"]), 2).unwrap();
        assert_eq!(after.retired.len(), MAX_RULES - 1);
        assert_eq!(big.remap_class(1, &after), CLASS_RETIRED, "r0, the oldest, gave way");
        let last = big.remap_class(MAX_RULES as u8, &after);
        assert_eq!(after.class_name(last), Some(many.last().unwrap().as_str()));
    }

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
