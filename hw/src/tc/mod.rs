//! The tc-flower backend: flow rules as flower filters on the ingress hook
//! of each configured port (or the egress hook, for a port that is another's
//! egress twin: the frames a host sends out of its own interface),
//! installed, read and removed over rtnetlink in batches. Each filter's
//! first action carries the rule's 16-byte cookie, which is how rules are
//! found again (counters, removal, and cleanup after a killed run) and how
//! filters that aren't ours are told apart and left alone.
//!
//! Placement: `Hardware` installs with `skip_sw`, `Software` with `skip_hw`
//! (the kernel's software flower path), `Auto` tries `skip_sw` first and on
//! refusal installs with `skip_hw`. A port whose `hw-tc-offload` feature is
//! off gets no hardware attempt at all.

pub mod action;
pub mod attr;
pub mod device;
pub mod devlink;
pub mod flower;
pub mod netlink;
pub mod stats;
pub mod tcmsg;

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use neli::consts::nl::NlmF;
use neli::consts::rtnl::Rtm;

use crate::rule::{
    Action, ActionKind, AdoptedRule, BackendError, Capabilities, Cookie, InstallOutcome, MatchSupport, Placement,
    PlacementPolicy, Refusal, RefusalKind, RuleCounters, RuleMatch, RuleSpec,
};
use crate::Backend;
use action::ActionRepr;
use attr::AttrWriter;
use device::DeviceInfo;
use flower::{FilterView, FlowerMatch, FLAG_IN_HW, FLAG_NOT_IN_HW, FLAG_SKIP_HW, FLAG_SKIP_SW};
use netlink::{NlError, OutMsg, TcSocket};
use tcmsg::{Tcmsg, TcmsgRepr, PARENT_EGRESS, PARENT_INGRESS, QDISC_HANDLE_INGRESS, TC_H_CLSACT};

const NAME: &str = "tc";
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;

/// What to do at start with rules a previous run of this owner left behind
/// (it was killed, or ran with `keep_rules`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Leftovers {
    /// Delete them.
    #[default]
    Flush,
    /// Take them over: they count as installed and are read and removed
    /// like the rules this run installs.
    Adopt,
}

/// Where on its device a port's filters sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Hook {
    /// clsact's (or an ingress qdisc's) ingress: what the device receives.
    #[default]
    Ingress,
    /// clsact's egress: what the host sends out of the device. tc runs it
    /// before AF_PACKET's taps see the frame leave (`sch_handle_egress` in
    /// `__dev_queue_xmit`, before `dev_queue_xmit_nit`), where at ingress
    /// the taps come first.
    Egress,
}

impl Hook {
    /// The filter parent (`tcm_parent`) of the hook.
    pub fn parent(self) -> u32 {
        match self {
            Hook::Ingress => PARENT_INGRESS,
            Hook::Egress => PARENT_EGRESS,
        }
    }

    /// As `tc filter show dev X ingress|egress` names it.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }
}

/// How the tc backend is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcConfig {
    /// Interface names; a rule's ingress port and its forward / mirror
    /// targets are indices into this list.
    pub ports: Vec<String>,
    /// Indices of `ports` whose rules go on the device's egress hook: a
    /// port's egress twin, whose device is listed again under its own index.
    pub egress: Vec<u8>,
    /// The owner id written into every cookie.
    pub owner: u32,
    /// Filters go at this priority (IPv4), +1 (IPv6), +2 (802.1Q), +3
    /// (802.1ad): flower keeps one protocol per priority.
    pub prio_base: u16,
    pub chain: u32,
    /// Leave our rules in place at shutdown.
    pub keep_rules: bool,
    pub leftovers: Leftovers,
    /// Ask the kernel to echo each deleted filter so removal returns its
    /// final counters.
    pub final_counters: bool,
    /// Install ICMP rules that match the two hosts and the protocol alone
    /// (flower has no echo identifier key): such a rule takes every ICMP
    /// packet between the hosts, other flows' included. Off: refused.
    pub icmp_by_hosts: bool,
}

impl TcConfig {
    pub fn new(ports: Vec<String>, owner: u32) -> TcConfig {
        TcConfig {
            ports,
            egress: Vec::new(),
            owner,
            prio_base: 0x100,
            chain: 0,
            keep_rules: false,
            leftovers: Leftovers::Flush,
            final_counters: true,
            icmp_by_hosts: false,
        }
    }
}

/// Counts of what the backend did, for logs, tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TcStats {
    /// Filters sent with `skip_sw`.
    pub hw_attempts: u64,
    pub hw_refusals: u64,
    /// `Auto` rules that went to software after a hardware refusal.
    pub fallbacks: u64,
    pub installed_hw: u64,
    pub installed_sw: u64,
    pub removed: u64,
    pub dumps: u64,
    /// Dumped filters we couldn't decode (skipped, not fatal).
    pub decode_errors: u64,
}

/// What start-up found of a previous run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Recovery {
    pub flushed: usize,
    pub adopted: usize,
    /// Filters with our cookie magic but another owner id: left alone.
    pub other_owners: usize,
    /// Filters without our cookie: left alone.
    pub foreign: usize,
}

/// One of our filters as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterInfo {
    pub port: u8,
    pub prio: u16,
    pub protocol: u16,
    pub handle: u32,
    pub cookie: Cookie,
    /// `TCA_FLOWER_FLAGS` as read back (skip_*, in_hw, not_in_hw).
    pub flags: u32,
    pub counters: RuleCounters,
    /// What it matches, where the keys read back make a whole match.
    pub matches: Option<RuleMatch>,
    /// Its action as read back, where it is one we put in.
    pub action: Option<ActionRepr>,
}

impl FilterInfo {
    pub fn placement(&self) -> Placement {
        if self.flags & FLAG_IN_HW != 0 {
            Placement::Hardware
        } else {
            Placement::KernelSoftware
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Placed {
    port: u8,
    prio: u16,
    protocol: u16,
    handle: u32,
    placement: Placement,
}

struct Port {
    info: DeviceInfo,
    hook: Hook,
    next_handle: u32,
}

impl Port {
    fn take_handle(&mut self) -> u32 {
        let h = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1).max(1);
        h
    }
}

/// One filter request of an install batch.
struct Attempt {
    rule: usize,
    flags: u32,
    placed: Placed,
    msg: OutMsg,
}

pub struct TcBackend {
    cfg: TcConfig,
    caps: Capabilities,
    sock: TcSocket,
    ports: Vec<Port>,
    rules: HashMap<Cookie, Placed>,
    stats: TcStats,
    recovery: Recovery,
    /// Rules taken over at start, until the engine takes them.
    adopted: Vec<AdoptedRule>,
    closed: bool,
}

fn io_err(message: impl Into<String>) -> BackendError {
    BackendError::Io { backend: NAME.into(), message: message.into() }
}

impl TcBackend {
    /// Resolves the ports, makes sure each has its hook (a clsact qdisc,
    /// unless a clsact or, for ingress alone, an ingress qdisc is already
    /// there), and deals with our leftovers from an earlier run.
    pub fn open(cfg: TcConfig) -> Result<TcBackend, BackendError> {
        if cfg.ports.is_empty() {
            return Err(io_err("no ports configured"));
        }
        if cfg.ports.len() > u8::MAX as usize + 1 {
            return Err(io_err(format!("{} ports configured, at most 256 supported", cfg.ports.len())));
        }
        if let Some(&e) = cfg.egress.iter().find(|&&e| e as usize >= cfg.ports.len()) {
            return Err(io_err(format!("egress port {e} is not configured ({} ports)", cfg.ports.len())));
        }
        let mut ports = Vec::with_capacity(cfg.ports.len());
        for (i, name) in cfg.ports.iter().enumerate() {
            let info = device::probe(name).map_err(|e| io_err(format!("port {i}: {e}")))?;
            let hook = if cfg.egress.contains(&(i as u8)) { Hook::Egress } else { Hook::Ingress };
            ports.push(Port { info, hook, next_handle: 1 });
        }
        let sock = TcSocket::open().map_err(|e| io_err(format!("opening rtnetlink socket: {e}")))?;
        let caps = Capabilities {
            matches: MatchSupport::ALL,
            actions: ActionKind::ALL.to_vec(),
            max_rules: 0,
            max_insert_rate: 0,
            counters: true,
            // AF_PACKET taps and the software flower path both see packets
            // before (or instead of) any hardware.
            software_sees_offloaded: true,
            // ...but at egress tc runs first (see `Hook::Egress`).
            egress_rules_before_taps: true,
            // Every flower rule of a TCP flow requires FIN and RST clear
            // (flower::TCP_TEARDOWN_FLAGS), in hardware and in the software
            // fallback alike.
            tcp_teardown_to_software: true,
        };
        let mut be = TcBackend {
            cfg,
            caps,
            sock,
            ports,
            rules: HashMap::new(),
            stats: TcStats::default(),
            recovery: Recovery::default(),
            adopted: Vec::new(),
            closed: false,
        };
        be.ensure_qdiscs()?;
        be.recover()?;
        Ok(be)
    }

    pub fn config(&self) -> &TcConfig {
        &self.cfg
    }

    pub fn stats(&self) -> TcStats {
        self.stats
    }

    pub fn recovery(&self) -> Recovery {
        self.recovery
    }

    /// The ports' devices, each once: an egress twin's device is its
    /// port's.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceInfo> {
        self.ports.iter().filter(|p| p.hook == Hook::Ingress).map(|p| &p.info)
    }

    /// The hook port `port`'s filters sit on.
    pub fn hook(&self, port: u8) -> Option<Hook> {
        self.ports.get(port as usize).map(|p| p.hook)
    }

    /// Rules this backend currently holds.
    pub fn installed(&self) -> usize {
        self.rules.len()
    }

    pub fn placement(&self, cookie: &Cookie) -> Option<Placement> {
        self.rules.get(cookie).map(|p| p.placement)
    }

    /// The underlying socket's sendmsg count (batching shows here).
    pub fn sends(&self) -> u64 {
        self.sock.sends
    }

    /// Keeps (or stops keeping) every datagram batches receive.
    pub fn set_capture(&mut self, on: bool) {
        self.sock.capture = on.then(Vec::new);
    }

    /// The datagrams kept since capture was switched on.
    pub fn take_captured(&mut self) -> Vec<Vec<u8>> {
        self.sock.capture.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Caps the requests per sendmsg (mainly for tests of the batching).
    pub fn set_max_batch(&mut self, n: usize) {
        self.sock.max_batch = n.max(1);
    }

    fn ensure_qdiscs(&mut self) -> Result<(), BackendError> {
        let msgs: Vec<OutMsg> = self
            .ports
            .iter()
            .map(|p| {
                let mut payload = Vec::with_capacity(40);
                TcmsgRepr { ifindex: p.info.ifindex, handle: QDISC_HANDLE_INGRESS, parent: TC_H_CLSACT, info: 0 }
                    .emit(&mut payload);
                AttrWriter::new(&mut payload).put_str(flower::TCA_KIND, "clsact");
                OutMsg { kind: Rtm::Newqdisc, flags: NlmF::CREATE | NlmF::EXCL, payload }
            })
            .collect();
        let results = self.sock.batch(&msgs, &mut |_, _, _| {});
        for (p, r) in self.ports.iter().zip(results) {
            match r {
                Ok(()) => tracing::debug!(dev = %p.info.name, "added clsact qdisc"),
                // A clsact or ingress qdisc is already there: either gives
                // us the ingress hook (the egress one is checked below).
                Err(NlError::Kernel { errno: libc::EEXIST, .. }) => {}
                Err(e) => return Err(io_err(format!("{}: adding clsact qdisc: {e}", p.info.name))),
            }
        }
        if self.ports.iter().any(|p| p.hook == Hook::Egress) {
            self.check_egress_hooks()?;
        }
        Ok(())
    }

    /// An ingress qdisc (`tc qdisc add dev X ingress`) has no egress hook,
    /// and the kernel files a filter sent to `ffff:fff3` under it in its
    /// one (ingress) block: so a port whose rules go on egress needs the
    /// qdisc at `ffff:` to be clsact, read back from a qdisc dump.
    fn check_egress_hooks(&mut self) -> Result<(), BackendError> {
        let mut kinds: HashMap<u32, String> = HashMap::new();
        let mut req = Vec::with_capacity(20);
        TcmsgRepr::default().emit(&mut req);
        self.sock
            .dump(Rtm::Getqdisc, &req, &mut |ty, payload| {
                if ty != u16::from(Rtm::Newqdisc) {
                    return;
                }
                let Ok(t) = Tcmsg::new_checked(payload) else { return };
                if t.parent() != TC_H_CLSACT {
                    return;
                }
                if let Ok(Some(kind)) = t.attrs().find(flower::TCA_KIND) {
                    kinds.insert(t.ifindex(), kind.str().unwrap_or("?").to_string());
                }
            })
            .map_err(|e| io_err(format!("dumping qdiscs: {e}")))?;
        for p in self.ports.iter().filter(|p| p.hook == Hook::Egress) {
            match kinds.get(&p.info.ifindex).map(String::as_str) {
                Some("clsact") => {}
                Some(kind) => {
                    return Err(io_err(format!(
                        "{dev}: its `{kind}` qdisc has no egress hook, which the port's egress twin needs: \
                         replace it with clsact (`tc qdisc del dev {dev} {kind}`; flowtable adds clsact)",
                        dev = p.info.name
                    )))
                }
                None => return Err(io_err(format!("{}: no clsact qdisc found after adding one", p.info.name))),
            }
        }
        Ok(())
    }

    /// Dumps every port and hands each filter carrying our cookie magic to
    /// `f`; counts the others into `foreign`.
    fn walk_filters(&mut self, mut f: impl FnMut(FilterInfo), foreign: &mut usize) -> Result<(), BackendError> {
        for (idx, port) in self.ports.iter_mut().enumerate() {
            let mut req = Vec::with_capacity(20);
            TcmsgRepr { ifindex: port.info.ifindex, handle: 0, parent: port.hook.parent(), info: 0 }.emit(&mut req);
            let now = now_ns();
            let mut decode_errors = 0u64;
            let mut max_handle = 0u32;
            let res = self.sock.dump(Rtm::Gettfilter, &req, &mut |ty, payload| {
                if ty != u16::from(Rtm::Newtfilter) {
                    return;
                }
                match filter_info_on(payload, idx as u8, port.hook, now) {
                    Ok(Some(info)) => {
                        max_handle = max_handle.max(info.handle);
                        f(info)
                    }
                    Ok(None) => {
                        if let Ok(v) = FilterView::parse(payload) {
                            max_handle = max_handle.max(v.handle);
                            // Chain and priority heads come without a handle.
                            if v.handle != 0 {
                                *foreign += 1;
                            }
                        }
                    }
                    Err(e) => {
                        decode_errors += 1;
                        tracing::warn!(dev = %port.info.name, error = %e, "skipping undecodable filter in dump");
                    }
                }
            });
            self.stats.dumps += 1;
            self.stats.decode_errors += decode_errors;
            if max_handle >= port.next_handle {
                port.next_handle = max_handle.wrapping_add(1).max(1);
            }
            res.map_err(|e| io_err(format!("{}: dumping {} filters: {e}", port.info.name, port.hook.name())))?;
        }
        Ok(())
    }

    fn recover(&mut self) -> Result<(), BackendError> {
        let owner = self.cfg.owner;
        let mut ours = Vec::new();
        let mut others = 0;
        let mut foreign = 0;
        self.walk_filters(
            |f| {
                if f.cookie.owner == owner {
                    ours.push(f)
                } else {
                    others += 1
                }
            },
            &mut foreign,
        )?;
        self.recovery = Recovery { other_owners: others, foreign, ..Recovery::default() };
        match self.cfg.leftovers {
            Leftovers::Adopt => {
                // A rule that reads back as something this run would not
                // have put in can't become a flow again: it goes.
                let mut unreadable = Vec::new();
                for f in &ours {
                    let placed = Placed {
                        port: f.port,
                        prio: f.prio,
                        protocol: f.protocol,
                        handle: f.handle,
                        placement: f.placement(),
                    };
                    let action = f.action.and_then(|a| self.action_of(&a));
                    match (f.matches, action) {
                        (Some(matches), Some(action)) => {
                            self.rules.insert(f.cookie, placed);
                            self.adopted.push(AdoptedRule {
                                cookie: f.cookie,
                                matches,
                                port: f.port,
                                action,
                                placement: placed.placement,
                                counters: f.counters,
                            });
                        }
                        _ => unreadable.push(*f),
                    }
                }
                self.recovery.adopted = self.adopted.len();
                if !unreadable.is_empty() {
                    tracing::warn!(
                        rules = unreadable.len(),
                        "rules of an earlier run whose match or action this run can't read back: removed"
                    );
                    self.recovery.flushed = self.delete_filters(&unreadable)?;
                }
            }
            Leftovers::Flush => {
                self.recovery.flushed = self.delete_filters(&ours)?;
            }
        }
        if !ours.is_empty() {
            tracing::info!(
                flushed = self.recovery.flushed,
                adopted = self.recovery.adopted,
                "found {} rules of owner {:08x} left by an earlier run",
                ours.len(),
                owner
            );
        }
        Ok(())
    }

    /// Deletes the given filters (without echo); returns how many went.
    fn delete_filters(&mut self, filters: &[FilterInfo]) -> Result<usize, BackendError> {
        let msgs: Vec<OutMsg> = filters
            .iter()
            .map(|f| {
                let p = Placed {
                    port: f.port,
                    prio: f.prio,
                    protocol: f.protocol,
                    handle: f.handle,
                    placement: f.placement(),
                };
                self.delete_msg(&p, false)
            })
            .collect();
        let results = self.sock.batch(&msgs, &mut |_, _, _| {});
        let mut deleted = 0;
        let mut first_err = None;
        for (f, r) in filters.iter().zip(results) {
            match r {
                Ok(()) | Err(NlError::Kernel { errno: libc::ENOENT, .. }) => deleted += 1,
                Err(e) => {
                    first_err.get_or_insert_with(|| {
                        format!("{}: deleting {:?}: {e}", self.ports[f.port as usize].info.name, f.cookie)
                    });
                }
            }
        }
        match first_err {
            Some(e) => Err(io_err(e)),
            None => Ok(deleted),
        }
    }

    fn delete_msg(&self, p: &Placed, echo: bool) -> OutMsg {
        let mut payload = Vec::with_capacity(40);
        let port = &self.ports[p.port as usize];
        let hdr = TcmsgRepr::filter(port.info.ifindex, port.hook.parent(), p.prio, p.protocol, p.handle);
        flower::emit_filter_ref(&mut payload, &hdr, self.cfg.chain);
        OutMsg { kind: Rtm::Deltfilter, flags: if echo { NlmF::ECHO } else { NlmF::empty() }, payload }
    }

    /// Every filter of ours (this owner) that the kernel holds, read back
    /// with flags and counters: one dump per port.
    pub fn list_filters(&mut self) -> Result<Vec<FilterInfo>, BackendError> {
        let owner = self.cfg.owner;
        let mut out = Vec::new();
        let mut foreign = 0;
        self.walk_filters(
            |f| {
                if f.cookie.owner == owner {
                    out.push(f)
                }
            },
            &mut foreign,
        )?;
        Ok(out)
    }

    /// Removes every filter of this owner on our ports, tracked or not (a
    /// batch whose ACKs were lost may have left some we don't know of).
    pub fn flush_owned(&mut self) -> Result<usize, BackendError> {
        let ours = self.list_filters()?;
        let n = self.delete_filters(&ours)?;
        self.rules.clear();
        Ok(n)
    }

    /// Clean shutdown: flushes our rules unless configured to keep them.
    pub fn shutdown(mut self) -> Result<usize, BackendError> {
        self.closed = true;
        if self.cfg.keep_rules {
            return Ok(0);
        }
        self.flush_owned()
    }

    fn prio_for(&self, protocol: u16) -> u16 {
        let off = match protocol {
            flower::ETH_P_IP => 0,
            flower::ETH_P_IPV6 => 1,
            flower::ETH_P_8021Q => 2,
            _ => 3,
        };
        self.cfg.prio_base.saturating_add(off)
    }

    fn port_ifindex(&self, port: u8, what: &str) -> Result<u32, Refusal> {
        self.ports.get(port as usize).map(|p| p.info.ifindex).ok_or_else(|| Refusal {
            kind: if what == "ingress" { RefusalKind::UnsupportedMatch } else { RefusalKind::UnsupportedAction },
            message: format!("{what} port {port} is not configured (the tc backend has {} ports)", self.ports.len()),
        })
    }

    fn action_reprs(&self, a: &Action) -> Result<ActionRepr, Refusal> {
        use action::*;
        Ok(match *a {
            Action::Drop => ActionRepr::Gact { verdict: TC_ACT_SHOT },
            Action::Pass => ActionRepr::Gact { verdict: TC_ACT_OK },
            Action::Forward { port } => ActionRepr::Mirred {
                eaction: TCA_EGRESS_REDIR,
                ifindex: self.port_ifindex(port, "forward")?,
                verdict: TC_ACT_STOLEN,
            },
            // The copy leaves and the original carries on through the
            // remaining filters, as if the rule weren't there.
            Action::Mirror { port } => ActionRepr::Mirred {
                eaction: TCA_EGRESS_MIRROR,
                ifindex: self.port_ifindex(port, "mirror")?,
                verdict: TC_ACT_UNSPEC,
            },
            Action::Mark { mark } => ActionRepr::SkbeditMark { mark, verdict: TC_ACT_PIPE },
        })
    }

    /// The action a repr read back stands for (the inverse of
    /// `action_reprs`), `None` where it is none we put in.
    fn action_of(&self, repr: &ActionRepr) -> Option<Action> {
        use action::*;
        let port_of = |ifindex: u32| self.ports.iter().position(|p| p.info.ifindex == ifindex).map(|i| i as u8);
        match *repr {
            ActionRepr::Gact { verdict: TC_ACT_SHOT } => Some(Action::Drop),
            ActionRepr::Gact { verdict: TC_ACT_OK } => Some(Action::Pass),
            ActionRepr::Mirred { eaction: TCA_EGRESS_REDIR, ifindex, .. } => {
                port_of(ifindex).map(|port| Action::Forward { port })
            }
            ActionRepr::Mirred { eaction: TCA_EGRESS_MIRROR, ifindex, .. } => {
                port_of(ifindex).map(|port| Action::Mirror { port })
            }
            ActionRepr::SkbeditMark { mark, .. } => Some(Action::Mark { mark }),
            _ => None,
        }
    }

    /// Checks a rule and builds its first filter request.
    fn prepare(&mut self, idx: usize, r: &RuleSpec) -> Result<Attempt, Refusal> {
        if self.rules.contains_key(&r.cookie) {
            return Err(Refusal {
                kind: RefusalKind::Exists,
                message: format!("rule {:?} is already installed", r.cookie),
            });
        }
        if r.cookie.owner != self.cfg.owner {
            return Err(Refusal {
                kind: RefusalKind::UnsupportedMatch,
                message: format!(
                    "cookie owner {:08x} is not this backend's owner {:08x}",
                    r.cookie.owner, self.cfg.owner
                ),
            });
        }
        let port = r.matches.port;
        self.port_ifindex(port, "ingress")?;
        if matches!(r.matches.key.proto, IPPROTO_ICMP | IPPROTO_ICMPV6) && !self.cfg.icmp_by_hosts {
            // Another echo between the same hosts would be taken by this
            // rule and counted twice: by its own flow in software and by
            // this flow's rule.
            return Err(Refusal {
                kind: RefusalKind::UnsupportedMatch,
                message: "flower has no key for the ICMP echo identifier: the rule would take all ICMP between \
                          these hosts (backend.icmp_by_hosts allows that)"
                    .into(),
            });
        }
        let m = FlowerMatch::from_fields(&r.matches)?;
        self.action_reprs(&r.action)?;
        let dev = &self.ports[port as usize].info;
        let flags = match r.policy {
            PlacementPolicy::Software => FLAG_SKIP_HW,
            PlacementPolicy::Auto if dev.tc_offload_on() => FLAG_SKIP_SW,
            PlacementPolicy::Auto => FLAG_SKIP_HW,
            PlacementPolicy::Hardware if dev.tc_offload_on() => FLAG_SKIP_SW,
            PlacementPolicy::Hardware => {
                return Err(Refusal {
                    kind: RefusalKind::Driver,
                    message: format!("{}: hw-tc-offload is off, no hardware placement possible", dev.name),
                })
            }
        };
        Ok(self.attempt(idx, r, &m, flags))
    }

    fn attempt(&mut self, idx: usize, r: &RuleSpec, m: &FlowerMatch, flags: u32) -> Attempt {
        let port = r.matches.port;
        let prio = self.prio_for(m.protocol);
        let handle = self.ports[port as usize].take_handle();
        let (ifindex, hook) = (self.ports[port as usize].info.ifindex, self.ports[port as usize].hook);
        // Validated in prepare().
        let act = self.action_reprs(&r.action).unwrap_or(ActionRepr::Gact { verdict: action::TC_ACT_OK });
        let mut payload = Vec::with_capacity(192);
        let hdr = TcmsgRepr::filter(ifindex, hook.parent(), prio, m.protocol, handle);
        flower::emit_filter(&mut payload, &hdr, self.cfg.chain, m, flags, &[act], &r.cookie.to_bytes());
        // Hardware attempts are echoed so the in_hw flag can be read back.
        let echo = if flags & FLAG_SKIP_SW != 0 { NlmF::ECHO } else { NlmF::empty() };
        Attempt {
            rule: idx,
            flags,
            placed: Placed { port, prio, protocol: m.protocol, handle, placement: Placement::KernelSoftware },
            msg: OutMsg { kind: Rtm::Newtfilter, flags: NlmF::CREATE | NlmF::EXCL | echo, payload },
        }
    }

    /// Sends a batch of attempts; returns (attempt index, outcome) pairs,
    /// with the echoed flower flags where there was an echo.
    fn send_attempts(&mut self, attempts: &[Attempt]) -> Vec<(Result<(), NlError>, Option<u32>)> {
        let msgs: Vec<OutMsg> = attempts.iter().map(|a| a.msg.clone()).collect();
        let mut echoed: Vec<Option<u32>> = vec![None; attempts.len()];
        let results = self.sock.batch(&msgs, &mut |i, ty, payload| {
            if ty == u16::from(Rtm::Newtfilter) {
                if let Ok(FilterView { flower: Some(fl), .. }) = FilterView::parse(payload) {
                    echoed[i] = Some(fl.flags);
                }
            }
        });
        results.into_iter().zip(echoed).collect()
    }

    fn refusal(&self, a: &Attempt, e: &NlError) -> Refusal {
        let dev = &self.ports[a.placed.port as usize].info.name;
        let hw = a.flags & FLAG_SKIP_SW != 0;
        let kind = match e.errno() {
            Some(libc::EEXIST) => RefusalKind::Exists,
            Some(libc::ENOSPC | libc::ENOMEM | libc::ENOBUFS | libc::E2BIG) => RefusalKind::Capacity,
            Some(_) => RefusalKind::Driver,
            None => RefusalKind::Io,
        };
        let how = if hw { "skip_sw" } else { "skip_hw" };
        Refusal { kind, message: format!("{dev}: {how} flower filter refused: {e}") }
    }
}

/// Reads one dumped or echoed filter of an ingress hook: `Some` when it
/// carries our cookie magic (any owner), with the counters of the cookie's
/// action.
///
/// Public (hidden) for the fuzz targets in `fuzz/`: it is what every dump
/// entry and echo from the kernel goes through.
#[doc(hidden)]
pub fn filter_info(payload: &[u8], port: u8, now_ns: u64) -> Result<Option<FilterInfo>, attr::WireError> {
    filter_info_on(payload, port, Hook::Ingress, now_ns)
}

/// `filter_info` of a filter on `hook`, which decides what its software
/// byte count leaves out.
#[doc(hidden)]
pub fn filter_info_on(
    payload: &[u8],
    port: u8,
    hook: Hook,
    now_ns: u64,
) -> Result<Option<FilterInfo>, attr::WireError> {
    let v = FilterView::parse(payload)?;
    let Some(fl) = v.flower else { return Ok(None) };
    let Some(act) = fl.cookie_action()? else { return Ok(None) };
    let Some(cookie) = act.cookie.and_then(Cookie::from_bytes) else { return Ok(None) };
    Ok(Some(FilterInfo {
        port,
        prio: v.prio,
        protocol: v.protocol,
        handle: v.handle,
        cookie,
        flags: fl.flags,
        counters: action_counters(&act, now_ns, sw_l2_len(&fl, hook))?,
        matches: rule_match(&fl),
        action: action_repr(&act)?,
    }))
}

/// A flower filter's keys as the match of one flow direction.
fn rule_match(fl: &flower::FlowerView<'_>) -> Option<RuleMatch> {
    Some(RuleMatch {
        src: fl.src?,
        dst: fl.dst?,
        sport: fl.sport.unwrap_or(0),
        dport: fl.dport.unwrap_or(0),
        proto: fl.ip_proto?,
        vlan_outer: fl.vlan.unwrap_or(0),
        vlan_inner: fl.cvlan.unwrap_or(0),
    })
}

/// The action read back, as the repr we would have emitted for it.
fn action_repr(act: &action::ActionView<'_>) -> Result<Option<ActionRepr>, attr::WireError> {
    let Some(verdict) = act.verdict()? else { return Ok(None) };
    Ok(match act.kind {
        "gact" => Some(ActionRepr::Gact { verdict }),
        "mirred" => act.mirred_target()?.map(|(eaction, ifindex)| ActionRepr::Mirred { eaction, ifindex, verdict }),
        "skbedit" => act.skbedit_mark()?.map(|mark| ActionRepr::SkbeditMark { mark, verdict }),
        _ => None,
    })
}

/// Bytes per packet that the kernel's software path leaves out of its byte
/// count: at the ingress hook a frame starts at its network header (or at
/// the inner tag of a QinQ pair) and the outer VLAN tag sits in metadata,
/// so the Ethernet header and that tag go uncounted. At the egress hook
/// the frame starts at its Ethernet header (`qdisc_pkt_len_init` takes
/// `skb->len` once the link header is on); only an outer tag, still in
/// metadata until the device (or `validate_xmit_vlan`, after tc) puts it
/// in, is left out.
fn sw_l2_len(fl: &flower::FlowerView<'_>, hook: Hook) -> u64 {
    let tag = if fl.vlan.is_some() { 4 } else { 0 };
    match hook {
        Hook::Ingress => 14 + tag,
        Hook::Egress => tag,
    }
}

/// A rule's counters with bytes as on the wire (the unit the flow table
/// counts in): the software share gets its frames' link-layer bytes back;
/// hardware counts whole frames already.
fn action_counters(act: &action::ActionView<'_>, now_ns: u64, sw_l2: u64) -> Result<RuleCounters, attr::WireError> {
    let s = act.stats()?.unwrap_or_default();
    let last_used_ns = act
        .tm()?
        .and_then(|t| t.last_hit_age_ticks())
        .map(|age| now_ns.saturating_sub(age.saturating_mul(stats::NS_PER_TICK)));
    let sw_packets = s.packets.saturating_sub(s.hw_packets);
    Ok(RuleCounters {
        packets: s.packets,
        bytes: s.bytes.saturating_add(sw_packets.saturating_mul(sw_l2)),
        hw_packets: s.hw_packets,
        hw_bytes: s.hw_bytes,
        last_used_ns,
    })
}

/// Wall-clock nanoseconds since the Unix epoch, the clock packet sources
/// stamp frames with.
fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl Backend for TcBackend {
    fn name(&self) -> &str {
        NAME
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn take_adopted(&mut self) -> Vec<AdoptedRule> {
        std::mem::take(&mut self.adopted)
    }

    fn install(&mut self, rules: &[RuleSpec]) -> Vec<InstallOutcome> {
        let mut out: Vec<Option<InstallOutcome>> = vec![None; rules.len()];
        let mut attempts = Vec::with_capacity(rules.len());
        let mut seen = std::collections::HashSet::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            if !seen.insert(r.cookie) {
                out[i] = Some(InstallOutcome::Refused(Refusal {
                    kind: RefusalKind::Exists,
                    message: format!("rule {:?} appears twice in one batch", r.cookie),
                }));
                continue;
            }
            match self.prepare(i, r) {
                Ok(a) => attempts.push(a),
                Err(refusal) => out[i] = Some(InstallOutcome::Refused(refusal)),
            }
        }

        let mut round = 0;
        while !attempts.is_empty() {
            round += 1;
            let hw_attempts = attempts.iter().filter(|a| a.flags & FLAG_SKIP_SW != 0).count() as u64;
            self.stats.hw_attempts += hw_attempts;
            let results = self.send_attempts(&attempts);
            let mut retries = Vec::new();
            for (a, (res, echoed)) in attempts.iter().zip(results) {
                let hw = a.flags & FLAG_SKIP_SW != 0;
                match res {
                    Ok(()) => {
                        let flags = echoed.unwrap_or(a.flags | if hw { FLAG_IN_HW } else { FLAG_NOT_IN_HW });
                        let placement =
                            if flags & FLAG_IN_HW != 0 { Placement::Hardware } else { Placement::KernelSoftware };
                        match placement {
                            Placement::Hardware => self.stats.installed_hw += 1,
                            Placement::KernelSoftware => self.stats.installed_sw += 1,
                        }
                        self.rules.insert(rules[a.rule].cookie, Placed { placement, ..a.placed });
                        out[a.rule] = Some(InstallOutcome::Installed { placement, counters: true });
                    }
                    Err(e) => {
                        if hw {
                            self.stats.hw_refusals += 1;
                        }
                        let r = &rules[a.rule];
                        if hw && r.policy == PlacementPolicy::Auto && round == 1 {
                            tracing::debug!(cookie = ?r.cookie, error = %e, "hardware refused, falling back to software flower");
                            self.stats.fallbacks += 1;
                            // The match was built once already; rebuilding
                            // cannot fail.
                            if let Ok(m) = FlowerMatch::from_fields(&r.matches) {
                                retries.push(self.attempt(a.rule, r, &m, FLAG_SKIP_HW));
                                continue;
                            }
                        }
                        out[a.rule] = Some(InstallOutcome::Refused(self.refusal(a, &e)));
                    }
                }
            }
            attempts = retries;
        }
        out.into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    InstallOutcome::Refused(Refusal { kind: RefusalKind::Io, message: "no outcome recorded".into() })
                })
            })
            .collect()
    }

    fn remove(&mut self, cookies: &[Cookie]) -> Vec<Result<Option<RuleCounters>, BackendError>> {
        let mut out: Vec<Option<Result<Option<RuleCounters>, BackendError>>> = Vec::with_capacity(cookies.len());
        let mut msgs = Vec::new();
        let mut which = Vec::new();
        let echo = self.cfg.final_counters;
        for (i, c) in cookies.iter().enumerate() {
            match self.rules.get(c) {
                Some(p) => {
                    msgs.push(self.delete_msg(p, echo));
                    which.push(i);
                    out.push(None);
                }
                None => out.push(Some(Err(BackendError::UnknownRule { backend: NAME.into(), cookie: *c }))),
            }
        }
        let now = now_ns();
        let mut finals: Vec<Option<RuleCounters>> = vec![None; msgs.len()];
        let hooks: Vec<Hook> = which
            .iter()
            .map(|&i| self.rules.get(&cookies[i]).map_or(Hook::Ingress, |p| self.ports[p.port as usize].hook))
            .collect();
        let results = self.sock.batch(&msgs, &mut |i, ty, payload| {
            if ty == u16::from(Rtm::Deltfilter) {
                match filter_info_on(payload, 0, hooks[i], now) {
                    Ok(Some(f)) => finals[i] = Some(f.counters),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "undecodable delete echo"),
                }
            }
        });
        for ((i, r), fin) in which.into_iter().zip(results).zip(finals) {
            let cookie = cookies[i];
            let dev =
                self.rules.get(&cookie).map(|p| self.ports[p.port as usize].info.name.clone()).unwrap_or_default();
            out[i] = Some(match r {
                Ok(()) => {
                    self.rules.remove(&cookie);
                    self.stats.removed += 1;
                    Ok(fin)
                }
                Err(NlError::Kernel { errno: libc::ENOENT, .. }) => {
                    self.rules.remove(&cookie);
                    Err(BackendError::Refused {
                        backend: NAME.into(),
                        message: format!("{dev}: rule {cookie:?} was already gone from the kernel"),
                    })
                }
                Err(e) => Err(BackendError::Refused {
                    backend: NAME.into(),
                    message: format!("{dev}: deleting {cookie:?}: {e}"),
                }),
            });
        }
        out.into_iter().map(|o| o.unwrap_or_else(|| Err(io_err("no outcome recorded")))).collect()
    }

    fn read_counters(&mut self, out: &mut Vec<(Cookie, RuleCounters)>) -> Result<(), BackendError> {
        let owner = self.cfg.owner;
        let mut foreign = 0;
        self.walk_filters(
            |f| {
                if f.cookie.owner == owner {
                    out.push((f.cookie, f.counters))
                }
            },
            &mut foreign,
        )
    }
}

impl Drop for TcBackend {
    fn drop(&mut self) {
        if self.closed || self.cfg.keep_rules {
            return;
        }
        if let Err(e) = self.flush_owned() {
            tracing::error!(error = %e, "flushing our tc rules at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_rule_maps_to_its_cookie_and_counters() {
        let now = 2_000_000_000_000_000_000;
        let f = filter_info(include_bytes!("testdata/dump-drop-udp.bin"), 3, now).unwrap().unwrap();
        assert_eq!(f.cookie, Cookie::new(0x1600, 1, flowtable_sw::Direction::LoToHi));
        assert_eq!((f.port, f.prio, f.handle), (3, 0x100, 2));
        assert_eq!(f.placement(), Placement::KernelSoftware);
        // 20 frames of 142 bytes: tc's 128 from the IP header plus Ethernet.
        assert_eq!((f.counters.packets, f.counters.bytes), (20, 20 * 142));
        let last = f.counters.last_used_ns.unwrap();
        assert!(last < now && now - last < 60 * 1_000_000_000, "hit within the recording's minute");
        // The same filter read from an egress hook: tc counted frames from
        // their Ethernet header there, so nothing is added back.
        let egress = filter_info_on(include_bytes!("testdata/dump-drop-udp.bin"), 3, Hook::Egress, now).unwrap();
        let egress = egress.unwrap();
        assert_eq!((egress.counters.packets, egress.counters.bytes), (20, 20 * 128));
        assert_eq!((Hook::Ingress.parent(), Hook::Egress.parent()), (PARENT_INGRESS, PARENT_EGRESS));
        assert!(filter_info(include_bytes!("testdata/dump-foreign-redirect.bin"), 0, now).unwrap().is_none());
        assert!(filter_info(include_bytes!("testdata/dump-prio-head.bin"), 0, now).unwrap().is_none());
    }

    /// What a restart reads back to take a rule over: its match and action.
    #[test]
    fn recorded_rules_read_back_as_the_match_and_action_they_were_given() {
        let f = filter_info(include_bytes!("testdata/dump-drop-udp.bin"), 3, 0).unwrap().unwrap();
        let m = f.matches.expect("a whole match");
        assert_eq!(m.proto, 17);
        assert_eq!((m.vlan_outer, m.vlan_inner), (0, 0));
        assert!(m.src.is_ipv4() && m.dst.is_ipv4() && m.sport != 0 && m.dport != 0, "{m:?}");
        assert_eq!(f.action, Some(ActionRepr::Gact { verdict: action::TC_ACT_SHOT }));
        let f = filter_info(include_bytes!("testdata/dump-mirror-udp.bin"), 0, 0).unwrap().unwrap();
        assert!(
            matches!(
                f.action,
                Some(ActionRepr::Mirred { eaction: action::TCA_EGRESS_MIRROR, verdict: action::TC_ACT_UNSPEC, .. })
            ),
            "{:?}",
            f.action
        );
        // The key of the flow the rule was made for matches it, one way only.
        let m = f.matches.unwrap();
        let to_bytes = |a: core::net::IpAddr| match a {
            core::net::IpAddr::V4(v4) => v4,
            _ => unreachable!("ipv4 rule"),
        };
        let (key, dir) = flowtable_sw::FlowKey::from_v4(to_bytes(m.src), to_bytes(m.dst), m.sport, m.dport, m.proto);
        assert!(m.is_for(&key, dir));
        assert!(!m.is_for(&key, dir.reverse()));
    }
}
