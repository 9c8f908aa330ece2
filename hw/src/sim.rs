//! The simulated NIC, the embedded default backend: an exact-match rule
//! table with per-rule counters, a capacity, an insertion rate and a set of
//! matches and actions taken from a profile. In a replay it sits in front
//! of software, so packets of offloaded flows never reach the flow table
//! and are seen only through the counters, as with real hardware.

use crate::rule::*;
use crate::{Backend, InlineNic};
use flowtable_sw::packet::{TCP_FIN, TCP_RST};
use flowtable_sw::{Direction, FlowKey, PacketInfo};
use hashbrown::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// What the simulated NIC can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimProfile {
    pub name: String,
    pub capabilities: Capabilities,
    /// Message given for every refusal, when the profile refuses all.
    pub refuse_all: Option<String>,
    /// How long its control calls take (none by default).
    pub latency: SimLatency,
}

/// How long the simulated NIC's control calls take, to stand in for a
/// slow NIC or kernel: each call sleeps on the thread that makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SimLatency {
    /// Per rule installed or removed.
    pub per_rule_ns: u64,
    /// Per counter read (a dump of every rule).
    pub per_read_ns: u64,
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
                egress_rules_before_taps: false,
                tcp_teardown_to_software: true,
            },
            refuse_all: None,
            latency: SimLatency::default(),
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

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The rule table, shared by the backend (installs, removals and counter
/// reads on the offload thread) and its packet path (`SimPath`, on the
/// thread that hands packets to software), as a NIC's table is shared by
/// its firmware and its pipeline.
#[derive(Default)]
struct SimTable {
    /// Exact match: flow key and direction to rule.
    rules: FastMap<(FlowKey, Direction), SimRule>,
    by_cookie: FastMap<Cookie, (FlowKey, Direction)>,
    /// Packets per action the NIC applied, for tests and the demo.
    applied: FastMap<ActionKind, u64>,
}

struct Shared {
    // A mutex, not a lock-free table: the packet side takes it once per
    // packet offered, uncontended but for the moments the offload thread
    // changes rules, and only while rules exist (`rules` is read first).
    table: Mutex<SimTable>,
    rules: AtomicUsize,
    /// The profile's `tcp_teardown_to_software`: rules of TCP flows pass
    /// packets with FIN or RST set by, to software.
    tcp_teardown: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SimTable> {
        // A panic elsewhere while holding the table leaves it consistent
        // (every change is one insert or remove): go on with it.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The simulated NIC.
pub struct SimNic {
    profile: SimProfile,
    shared: Arc<Shared>,
    /// A successor's rules to hand over once (see `successor`).
    inherits: bool,
    now_ns: u64,
    /// Token bucket for the insertion rate: tokens and when last filled.
    tokens: f64,
    filled_at: u64,
}

impl SimNic {
    pub fn new(profile: SimProfile) -> SimNic {
        let burst = profile.capabilities.max_insert_rate as f64;
        let shared = Arc::new(Shared {
            table: Mutex::default(),
            rules: AtomicUsize::new(0),
            tcp_teardown: profile.capabilities.tcp_teardown_to_software,
        });
        SimNic { profile, shared, inherits: false, now_ns: 0, tokens: burst, filled_at: 0 }
    }

    /// The same NIC as the next run of the process sees it: its rules
    /// outlive this backend (as a real NIC's outlive a killed process),
    /// and the successor takes them over (`Backend::take_adopted`).
    pub fn successor(&self) -> SimNic {
        let burst = self.profile.capabilities.max_insert_rate as f64;
        SimNic {
            profile: self.profile.clone(),
            shared: self.shared.clone(),
            inherits: true,
            now_ns: 0,
            tokens: burst,
            filled_at: 0,
        }
    }

    pub fn profile(&self) -> &SimProfile {
        &self.profile
    }

    pub fn rule_count(&self) -> usize {
        self.shared.rules.load(Ordering::Relaxed)
    }

    /// Packets the NIC applied an action of `kind` to.
    pub fn applied(&self, kind: ActionKind) -> u64 {
        self.shared.lock().applied.get(&kind).copied().unwrap_or(0)
    }

    /// The packet side of this NIC (see `InlineNic`).
    pub fn path(&self) -> SimPath {
        SimPath { shared: self.shared.clone() }
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

    fn check(&self, table: &SimTable, rule: &RuleSpec) -> Result<(), Refusal> {
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
                message: format!("sim NIC ({}): the {} action is not supported", self.profile.name, rule.action.kind()),
            });
        }
        if table.by_cookie.contains_key(&rule.cookie) || table.rules.contains_key(&(rule.matches.key, rule.matches.dir))
        {
            return Err(Refusal {
                kind: RefusalKind::Exists,
                message: "sim NIC: a rule for this flow direction exists".into(),
            });
        }
        if caps.max_rules != 0 && table.rules.len() >= caps.max_rules {
            return Err(Refusal {
                kind: RefusalKind::Capacity,
                message: format!("sim NIC: table full ({} rules)", caps.max_rules),
            });
        }
        Ok(())
    }

    fn delay(ns: u64) {
        if ns > 0 {
            std::thread::sleep(std::time::Duration::from_nanos(ns));
        }
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
        Self::delay(self.profile.latency.per_rule_ns.saturating_mul(rules.len() as u64));
        self.refill();
        let limited = self.profile.capabilities.max_insert_rate != 0;
        let shared = self.shared.clone();
        let mut table = shared.lock();
        let out = rules
            .iter()
            .map(|rule| {
                if let Err(r) = self.check(&table, rule) {
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
                table.rules.insert(
                    at,
                    SimRule {
                        cookie: rule.cookie,
                        port: rule.matches.port,
                        action: rule.action,
                        counters: RuleCounters::default(),
                    },
                );
                table.by_cookie.insert(rule.cookie, at);
                InstallOutcome::Installed {
                    placement: Placement::Hardware,
                    counters: self.profile.capabilities.counters,
                }
            })
            .collect();
        shared.rules.store(table.rules.len(), Ordering::Relaxed);
        out
    }

    fn remove(&mut self, cookies: &[Cookie]) -> Vec<Result<Option<RuleCounters>, BackendError>> {
        Self::delay(self.profile.latency.per_rule_ns.saturating_mul(cookies.len() as u64));
        let mut table = self.shared.lock();
        let out = cookies
            .iter()
            .map(|c| {
                let at = table
                    .by_cookie
                    .remove(c)
                    .ok_or_else(|| BackendError::UnknownRule { backend: "sim".into(), cookie: *c })?;
                Ok(table.rules.remove(&at).map(|r| r.counters))
            })
            .collect();
        self.shared.rules.store(table.rules.len(), Ordering::Relaxed);
        out
    }

    fn read_counters(&mut self, out: &mut Vec<(Cookie, RuleCounters)>) -> Result<(), BackendError> {
        Self::delay(self.profile.latency.per_read_ns);
        out.extend(self.shared.lock().rules.values().map(|r| (r.cookie, r.counters)));
        Ok(())
    }

    fn set_clock(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
    }

    fn inline_nic(&self) -> Option<Box<dyn InlineNic>> {
        Some(Box::new(self.path()))
    }

    fn take_adopted(&mut self) -> Vec<AdoptedRule> {
        if !std::mem::take(&mut self.inherits) {
            return Vec::new();
        }
        let table = self.shared.lock();
        table
            .rules
            .iter()
            .map(|((key, dir), r)| {
                let e = key.endpoints(*dir);
                AdoptedRule {
                    cookie: r.cookie,
                    matches: RuleMatch {
                        src: e.src,
                        dst: e.dst,
                        sport: e.sport,
                        dport: e.dport,
                        proto: key.proto,
                        vlan_outer: key.vlan_outer,
                        vlan_inner: key.vlan_inner,
                    },
                    port: r.port,
                    action: r.action,
                    placement: Placement::Hardware,
                    counters: r.counters,
                }
            })
            .collect()
    }
}

/// The packet side of the simulated NIC: its rules take the packets they
/// match before software sees them, stamping the rule's last use with the
/// packet's time, as a NIC stamps its own clock.
#[derive(Clone)]
pub struct SimPath {
    shared: Arc<Shared>,
}

impl InlineNic for SimPath {
    #[inline]
    fn offer(&mut self, pkt: &PacketInfo, now_ns: u64) -> bool {
        if self.shared.rules.load(Ordering::Relaxed) == 0 {
            return false;
        }
        // Rules of TCP flows match FIN and RST clear, as tc and rte_flow
        // rules do (the kernel flowtable's match): a close or reset misses
        // the rule and goes to software.
        if self.shared.tcp_teardown && pkt.key.proto == 6 && pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            return false;
        }
        let mut guard = self.shared.lock();
        let table = &mut *guard;
        let Some(rule) = table.rules.get_mut(&(pkt.key, pkt.dir)).filter(|r| r.port == pkt.port) else {
            return false;
        };
        let c = &mut rule.counters;
        c.packets += 1;
        c.bytes += pkt.wire_len as u64;
        c.hw_packets += 1;
        c.hw_bytes += pkt.wire_len as u64;
        c.last_used_ns = Some(c.last_used_ns.map_or(now_ns, |t| t.max(now_ns)));
        *table.applied.entry(rule.action.kind()).or_insert(0) += 1;
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

    fn spec(sport: u16, dir: Direction, action: Action) -> (RuleSpec, PacketInfo) {
        let (key, d) = FlowKey::from_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), sport, 80, 6);
        let pdir = if dir == Direction::LoToHi { d } else { d.reverse() };
        let rule = RuleSpec {
            cookie: Cookie::new(1, sport as u64, pdir),
            matches: MatchFields { key, dir: pdir, port: 0 },
            action,
            policy: PlacementPolicy::Auto,
        };
        let pkt = PacketInfo::whole(key, pdir, 0, 100, 0);
        (rule, pkt)
    }

    #[test]
    fn installed_rule_takes_its_direction_and_counts() {
        let mut nic = SimNic::new(SimProfile::full());
        let mut path = nic.path();
        let (rule, pkt) = spec(1000, Direction::LoToHi, Action::Drop);
        assert!(matches!(nic.install(&[rule])[0], InstallOutcome::Installed { .. }));
        assert!(path.offer(&pkt, 0));
        let mut rev = pkt;
        rev.dir = rev.dir.reverse();
        assert!(!path.offer(&rev, 0), "the other direction has no rule");
        let mut elsewhere = pkt;
        elsewhere.port = 1;
        assert!(!path.offer(&elsewhere, 0), "the rule sits on port 0 only");
        assert_eq!(nic.applied(ActionKind::Drop), 1);
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
        assert!(!path.offer(&pkt, 0));
        assert!(nic.remove(&[rule.cookie])[0].is_err());
    }

    #[test]
    fn fin_and_rst_of_a_tcp_flow_go_to_software() {
        let mut nic = SimNic::new(SimProfile::full());
        assert!(nic.capabilities().tcp_teardown_to_software);
        let mut path = nic.path();
        let (rule, pkt) = spec(1000, Direction::LoToHi, Action::Drop);
        assert!(matches!(nic.install(&[rule])[0], InstallOutcome::Installed { .. }));
        let with = |flags: u8| PacketInfo { tcp_flags: flags, ..pkt };
        // ACK, PSH|ACK, SYN: taken by the rule.
        for flags in [0x10, 0x18, 0x02] {
            assert!(path.offer(&with(flags), 0), "flags {flags:#04x}");
        }
        // FIN, FIN|ACK, RST, RST|ACK: missed, software gets them.
        for flags in [0x01, 0x11, 0x04, 0x14] {
            assert!(!path.offer(&with(flags), 0), "flags {flags:#04x}");
        }
        let mut out = vec![];
        nic.read_counters(&mut out).unwrap();
        assert_eq!(out[0].1.packets, 3, "only the packets the rule took are counted");
        assert_eq!(nic.applied(ActionKind::Drop), 3);

        // A UDP rule knows nothing of TCP flags (a UDP packet's are 0 anyway).
        let (key, dir) = FlowKey::from_v4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 5000, 53, 17);
        let udp = RuleSpec {
            cookie: Cookie::new(1, 5000, dir),
            matches: MatchFields { key, dir, port: 0 },
            action: Action::Drop,
            policy: PlacementPolicy::Auto,
        };
        assert!(matches!(nic.install(&[udp])[0], InstallOutcome::Installed { .. }));
        assert!(path.offer(&PacketInfo { key, dir, tcp_flags: 0, ..pkt }, 0));

        // A profile whose rules don't match the flags takes them all.
        let mut p = SimProfile::full();
        p.capabilities.tcp_teardown_to_software = false;
        let mut nic = SimNic::new(p);
        let mut path = nic.path();
        assert!(matches!(nic.install(&[rule])[0], InstallOutcome::Installed { .. }));
        assert!(path.offer(&with(0x11), 0));
        assert!(path.offer(&with(0x04), 0));
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
