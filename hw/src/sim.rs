//! The simulated NIC, the embedded default backend: an exact-match rule
//! table with per-rule counters, a capacity, an insertion rate and a set of
//! matches and actions taken from a profile. In a replay it sits in front
//! of software, so packets of offloaded flows never reach the flow table
//! and are seen only through the counters, as with real hardware.

use crate::rule::*;
use crate::Backend;
use flowtable_sw::{Direction, FlowKey, PacketInfo};
use hashbrown::HashMap;

/// What the simulated NIC can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimProfile {
    pub name: String,
    pub capabilities: Capabilities,
    /// Message given for every refusal, when the profile refuses all.
    pub refuse_all: Option<String>,
}

impl SimProfile {
    /// Takes everything: 64k rules, 100k inserts/s, counters.
    pub fn full() -> SimProfile {
        SimProfile {
            name: "full".into(),
            capabilities: Capabilities {
                matches: MatchSupport::ALL,
                actions: ActionKind::ALL.to_vec(),
                max_rules: 65536,
                max_insert_rate: 100_000,
                counters: true,
                software_sees_offloaded: false,
            },
            refuse_all: None,
        }
    }

    /// Refuses every rule, as a NIC without flower offload does.
    pub fn refuse_all() -> SimProfile {
        SimProfile {
            name: "refuse-all".into(),
            refuse_all: Some("sim NIC (refuse-all profile) offloads no flow rules".into()),
            ..SimProfile::full()
        }
    }

    /// A small NIC: 1024 rules, 1000 inserts/s, IPv4 only, no mirroring.
    pub fn small() -> SimProfile {
        let mut p = SimProfile::full();
        p.name = "small".into();
        p.capabilities.max_rules = 1024;
        p.capabilities.max_insert_rate = 1000;
        p.capabilities.matches.ipv6 = false;
        p.capabilities.matches.qinq = false;
        p.capabilities.actions.retain(|a| *a != ActionKind::Mirror);
        p
    }
}

#[derive(Debug, Clone, Copy)]
struct SimRule {
    cookie: Cookie,
    /// The port the rule sits on: a packet arriving on another port of the
    /// same flow direction passes it by, as on a real NIC.
    port: u8,
    action: Action,
    counters: RuleCounters,
}

/// The simulated NIC.
pub struct SimNic {
    profile: SimProfile,
    /// Exact-match table: flow key and direction to rule.
    rules: HashMap<(FlowKey, Direction), SimRule, foldhash::fast::RandomState>,
    by_cookie: HashMap<Cookie, (FlowKey, Direction), foldhash::fast::RandomState>,
    now_ns: u64,
    /// Token bucket for the insertion rate: tokens and when last filled.
    tokens: f64,
    filled_at: u64,
    /// Packets per action the NIC applied, for tests and the demo.
    pub applied: HashMap<ActionKind, u64, foldhash::fast::RandomState>,
}

impl SimNic {
    pub fn new(profile: SimProfile) -> SimNic {
        let burst = profile.capabilities.max_insert_rate as f64;
        SimNic {
            profile,
            rules: HashMap::default(),
            by_cookie: HashMap::default(),
            now_ns: 0,
            tokens: burst,
            filled_at: 0,
            applied: HashMap::default(),
        }
    }

    pub fn profile(&self) -> &SimProfile {
        &self.profile
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    fn refill(&mut self) {
        let rate = self.profile.capabilities.max_insert_rate as f64;
        if rate == 0.0 {
            return;
        }
        let dt = self.now_ns.saturating_sub(self.filled_at) as f64 / 1e9;
        self.tokens = (self.tokens + dt * rate).min(rate);
        self.filled_at = self.now_ns;
    }

    fn check(&self, rule: &RuleSpec) -> Result<(), Refusal> {
        if let Some(msg) = &self.profile.refuse_all {
            return Err(Refusal { kind: RefusalKind::Driver, message: msg.clone() });
        }
        if rule.policy == PlacementPolicy::Software {
            return Err(Refusal {
                kind: RefusalKind::UnsupportedAction,
                message: "sim NIC has no software rule path (placement software)".into(),
            });
        }
        let caps = &self.profile.capabilities;
        caps.matches.check(&rule.matches.key).map_err(|m| Refusal {
            kind: RefusalKind::UnsupportedMatch,
            message: format!("sim NIC ({}): {m}", self.profile.name),
        })?;
        if !caps.supports_action(&rule.action) {
            return Err(Refusal {
                kind: RefusalKind::UnsupportedAction,
                message: format!("sim NIC ({}): action {:?} not supported", self.profile.name, rule.action.kind()),
            });
        }
        if self.by_cookie.contains_key(&rule.cookie) || self.rules.contains_key(&(rule.matches.key, rule.matches.dir)) {
            return Err(Refusal {
                kind: RefusalKind::Exists,
                message: "sim NIC: a rule for this flow direction exists".into(),
            });
        }
        if caps.max_rules != 0 && self.rules.len() >= caps.max_rules {
            return Err(Refusal {
                kind: RefusalKind::Capacity,
                message: format!("sim NIC: table full ({} rules)", caps.max_rules),
            });
        }
        Ok(())
    }
}

impl Backend for SimNic {
    fn name(&self) -> &str {
        "sim"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.profile.capabilities
    }

    fn install(&mut self, rules: &[RuleSpec]) -> Vec<InstallOutcome> {
        self.refill();
        let limited = self.profile.capabilities.max_insert_rate != 0;
        rules
            .iter()
            .map(|rule| {
                if let Err(r) = self.check(rule) {
                    return InstallOutcome::Refused(r);
                }
                if limited {
                    if self.tokens < 1.0 {
                        return InstallOutcome::Refused(Refusal {
                            kind: RefusalKind::Rate,
                            message: format!("sim NIC: over {} inserts/s", self.profile.capabilities.max_insert_rate),
                        });
                    }
                    self.tokens -= 1.0;
                }
                let at = (rule.matches.key, rule.matches.dir);
                self.rules.insert(
                    at,
                    SimRule {
                        cookie: rule.cookie,
                        port: rule.matches.port,
                        action: rule.action,
                        counters: RuleCounters::default(),
                    },
                );
                self.by_cookie.insert(rule.cookie, at);
                InstallOutcome::Installed {
                    placement: Placement::Hardware,
                    counters: self.profile.capabilities.counters,
                }
            })
            .collect()
    }

    fn remove(&mut self, cookies: &[Cookie]) -> Vec<Result<Option<RuleCounters>, BackendError>> {
        cookies
            .iter()
            .map(|c| {
                let at = self
                    .by_cookie
                    .remove(c)
                    .ok_or_else(|| BackendError::UnknownRule { backend: "sim".into(), cookie: *c })?;
                Ok(self.rules.remove(&at).map(|r| r.counters))
            })
            .collect()
    }

    fn read_counters(&mut self, out: &mut Vec<(Cookie, RuleCounters)>) -> Result<(), BackendError> {
        out.extend(self.rules.values().map(|r| (r.cookie, r.counters)));
        Ok(())
    }

    fn set_clock(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
    }

    #[inline]
    fn offer(&mut self, pkt: &PacketInfo) -> bool {
        if self.rules.is_empty() {
            return false;
        }
        let Some(rule) = self.rules.get_mut(&(pkt.key, pkt.dir)).filter(|r| r.port == pkt.port) else {
            return false;
        };
        let c = &mut rule.counters;
        c.packets += 1;
        c.bytes += pkt.wire_len as u64;
        c.hw_packets += 1;
        c.hw_bytes += pkt.wire_len as u64;
        c.last_used_ns = Some(self.now_ns);
        *self.applied.entry(rule.action.kind()).or_insert(0) += 1;
        // Mark and mirror deliver the packet to software too, but the flow's
        // counting is the rule's: software must not count it again, so the
        // packet is reported as taken either way.
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::Ipv4Addr;
    use flowtable_sw::Fragment;

    fn spec(sport: u16, dir: Direction, action: Action) -> (RuleSpec, PacketInfo) {
        let (key, d) = FlowKey::from_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), sport, 80, 6);
        let pdir = if dir == Direction::LoToHi { d } else { d.reverse() };
        let rule = RuleSpec {
            cookie: Cookie::new(1, sport as u64, pdir),
            matches: MatchFields { key, dir: pdir, port: 0 },
            action,
            policy: PlacementPolicy::Auto,
        };
        let pkt = PacketInfo {
            key,
            dir: pdir,
            port: 0,
            wire_len: 100,
            tcp_flags: 0,
            fragment: Fragment::Whole,
            payload_offset: 0,
        };
        (rule, pkt)
    }

    #[test]
    fn installed_rule_takes_its_direction_and_counts() {
        let mut nic = SimNic::new(SimProfile::full());
        let (rule, pkt) = spec(1000, Direction::LoToHi, Action::Drop);
        assert!(matches!(nic.install(&[rule])[0], InstallOutcome::Installed { .. }));
        assert!(nic.offer(&pkt));
        let mut rev = pkt;
        rev.dir = rev.dir.reverse();
        assert!(!nic.offer(&rev), "the other direction has no rule");
        let mut elsewhere = pkt;
        elsewhere.port = 1;
        assert!(!nic.offer(&elsewhere), "the rule sits on port 0 only");
        let mut out = vec![];
        nic.read_counters(&mut out).unwrap();
        assert_eq!(
            out,
            vec![(
                rule.cookie,
                RuleCounters { packets: 1, bytes: 100, hw_packets: 1, hw_bytes: 100, last_used_ns: Some(0) }
            )]
        );
        let removed = nic.remove(&[rule.cookie]);
        assert_eq!(removed[0].as_ref().unwrap().unwrap().packets, 1);
        assert!(!nic.offer(&pkt));
        assert!(nic.remove(&[rule.cookie])[0].is_err());
    }

    #[test]
    fn capacity_and_rate_refuse_with_their_kind() {
        let mut p = SimProfile::full();
        p.capabilities.max_rules = 2;
        p.capabilities.max_insert_rate = 0;
        let mut nic = SimNic::new(p);
        let rules: Vec<_> = (0..3).map(|i| spec(1000 + i, Direction::LoToHi, Action::Pass).0).collect();
        let out = nic.install(&rules);
        assert!(matches!(out[0], InstallOutcome::Installed { .. }));
        assert!(matches!(out[1], InstallOutcome::Installed { .. }));
        assert!(matches!(&out[2], InstallOutcome::Refused(r) if r.kind == RefusalKind::Capacity));

        let mut p = SimProfile::full();
        p.capabilities.max_insert_rate = 2;
        let mut nic = SimNic::new(p);
        let rules: Vec<_> = (0..3).map(|i| spec(2000 + i, Direction::LoToHi, Action::Pass).0).collect();
        let out = nic.install(&rules);
        assert!(matches!(&out[2], InstallOutcome::Refused(r) if r.kind == RefusalKind::Rate));
        nic.set_clock(1_000_000_000);
        assert!(matches!(nic.install(&rules[2..])[0], InstallOutcome::Installed { .. }));
    }

    #[test]
    fn refuse_all_and_unsupported_action() {
        let mut nic = SimNic::new(SimProfile::refuse_all());
        let (rule, _) = spec(1, Direction::LoToHi, Action::Drop);
        assert!(matches!(&nic.install(&[rule])[0], InstallOutcome::Refused(r) if r.kind == RefusalKind::Driver));
        let mut nic = SimNic::new(SimProfile::small());
        let (rule, _) = spec(1, Direction::LoToHi, Action::Mirror { port: 1 });
        assert!(
            matches!(&nic.install(&[rule])[0], InstallOutcome::Refused(r) if r.kind == RefusalKind::UnsupportedAction)
        );
    }
}
