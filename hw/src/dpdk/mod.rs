//! The DPDK rte_flow backend (feature `dpdk`): flow rules on ethdev ports
//! through rte_flow, with what each PMD takes probed once and cached, the
//! template (async) API where the PMD offers it, counters read back with
//! rte_flow_query, and our rules removed on shutdown.
//!
//! What `install` returns: `Installed { placement: Hardware, counters }`
//! where `counters` says whether the rule carries COUNT. A PMD that refuses
//! COUNT (tap) still gets the rule without it (`counters: false`); the
//! engine then ages the flow itself. Where the PMD takes AGE (and
//! `age_timeout_s` is set), `read_counters` reports the rule's last hit as
//! `last_used_ns` even without COUNT. Refusals carry the PMD's
//! rte_flow_error message.
//!
//! Rules of TCP flows require FIN and RST clear (`pattern::TCP_TEARDOWN_FLAGS`)
//! on the ports whose PMD takes that match, probed with rte_flow_validate
//! like the other shapes; `Capabilities::tcp_teardown_to_software` is true
//! when every port does. Where a PMD refuses it, that port's TCP rules match
//! the ports only and take the close and reset packets too.

pub mod actions;
pub use crate::dpdk_config as config;
pub mod eal;
pub mod error;
pub mod pattern;
pub mod rx;
pub mod template;

use core::ptr::{self, NonNull};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dpdk_sys as sys;
pub use dpdk_sys;
use sys::rte_flow_error_type as et;

use crate::rule::{
    Action, ActionKind, BackendError, Capabilities, Cookie, InstallOutcome, MatchSupport, Placement, Refusal,
    RefusalKind, RuleCounters, RuleSpec,
};
use crate::Backend;

pub use actions::{ActionPlan, ActionShape, Fate, FateKind, FlowActions, PortAction};
pub use config::{DpdkConfig, DpdkPortConfig, FlowApi, TemplateConfig};
pub use eal::{DpdkRuntime, PortInfo, TemplateState};
pub use error::FlowError;
pub use pattern::{FlowPattern, PatternShape, L3, L4};
pub use template::TemplateFlows;

/// An rte_flow rule handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawFlow(pub NonNull<sys::rte_flow>);

// A handle is an opaque token the PMD hands back; it is only passed to
// rte_flow calls made through &mut DpdkBackend.
// SAFETY: the handle is never dereferenced in Rust, and rte_flow calls on it may come from any
// thread; the backend makes them through &mut DpdkBackend, one at a time.
unsafe impl Send for RawFlow {}

/// Remembers a rule the PMD created (sync or template) and reports it.
fn keep_installed(
    rules: &mut HashMap<Cookie, Installed>,
    cookie: Cookie,
    port: u8,
    flow: RawFlow,
    plan: &ActionPlan,
    template: bool,
) -> InstallOutcome {
    rules.insert(cookie, Installed { port, flow, counters: plan.count, age: plan.age_s.is_some(), template });
    InstallOutcome::Installed { placement: Placement::Hardware, counters: plan.count }
}

struct Installed {
    port: u8,
    flow: RawFlow,
    counters: bool,
    age: bool,
    template: bool,
}

/// The PMD's answer for one (port, pattern shape, action shape).
type ShapeKey = (u8, PatternShape, ActionShape);

/// How the backend classifies a probe's outcome.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub port: u8,
    pub pattern: String,
    pub actions: String,
    pub result: Result<(), FlowError>,
}

pub struct DpdkBackend {
    rt: Arc<DpdkRuntime>,
    cfg: DpdkConfig,
    caps: Capabilities,
    cache: HashMap<ShapeKey, Result<(), FlowError>>,
    rules: HashMap<Cookie, Installed>,
    /// Per port: the template API state when it is in use.
    templates: Vec<Option<TemplateFlows>>,
    /// Per port: whether its TCP rules carry the FIN/RST flags match.
    tcp_flags: Vec<bool>,
    /// The engine's clock, for AGE-derived last-use times.
    clock_ns: Option<u64>,
}

fn no_error() -> sys::rte_flow_error {
    sys::rte_flow_error { type_: et::RTE_FLOW_ERROR_TYPE_NONE, cause: ptr::null(), message: ptr::null() }
}

fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl DpdkBackend {
    /// Starts the EAL and ports from `cfg` and builds the backend on them.
    pub fn start(cfg: DpdkConfig) -> Result<DpdkBackend, String> {
        let rt = DpdkRuntime::start(&cfg)?;
        Ok(DpdkBackend::new(rt, cfg))
    }

    /// Builds the backend on started ports: sets up the template API where
    /// the port took it, and probes what each PMD accepts.
    pub fn new(rt: Arc<DpdkRuntime>, cfg: DpdkConfig) -> DpdkBackend {
        let mut templates = Vec::with_capacity(rt.ports.len());
        for p in &rt.ports {
            templates.push(match &p.template {
                TemplateState::Ready { .. } => match TemplateFlows::new(p.id, &cfg.template, cfg.batch) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        tracing::warn!(port = %p.device, error = %e, "template tables refused; using the sync API");
                        None
                    }
                },
                _ => None,
            });
        }
        let nports = rt.ports.len();
        let mut b = DpdkBackend {
            rt,
            cfg,
            caps: Capabilities {
                matches: MatchSupport {
                    ipv4: false,
                    ipv6: false,
                    tcp: false,
                    udp: false,
                    sctp: false,
                    icmp: false,
                    other_ip: false,
                    vlan: false,
                    qinq: false,
                    encap: 0,
                },
                actions: Vec::new(),
                max_rules: 0,
                max_insert_rate: 0,
                counters: false,
                software_sees_offloaded: false,
                egress_rules_before_taps: false,
                tcp_teardown_to_software: false,
            },
            cache: HashMap::new(),
            rules: HashMap::new(),
            tcp_flags: vec![false; nports],
            templates,
            clock_ns: None,
        };
        b.probe();
        b
    }

    pub fn runtime(&self) -> &Arc<DpdkRuntime> {
        &self.rt
    }

    /// Whether rules on `port` go through the template API.
    pub fn uses_templates(&self, port: u8) -> bool {
        self.templates.get(port as usize).is_some_and(|t| t.is_some())
    }

    /// Every probe outcome so far, for reports ("what this PMD takes").
    pub fn probe_report(&self) -> Vec<ProbeResult> {
        let mut v: Vec<_> = self
            .cache
            .iter()
            .map(|((port, p, a), r)| ProbeResult {
                port: *port,
                pattern: p.name(),
                actions: a.name(),
                result: r.clone(),
            })
            .collect();
        v.sort_by(|a, b| (a.port, &a.pattern, &a.actions).cmp(&(b.port, &b.pattern, &b.actions)));
        v
    }

    /// The fate an engine action takes on `port`.
    fn fate(&self, port: &PortInfo, action: &Action) -> Result<Fate, Refusal> {
        let other = |i: u8| -> Result<u16, Refusal> {
            self.rt.port(i).map(|p| p.id).ok_or_else(|| Refusal {
                kind: RefusalKind::UnsupportedAction,
                message: format!("port {i} is not one of the {} configured dpdk ports", self.rt.ports.len()),
            })
        };
        let how = self.cfg.port_action;
        Ok(match *action {
            Action::Drop => Fate::Drop,
            Action::Pass => match port.peer {
                Some(peer) => Fate::Port { port: other(peer)?, how },
                None => Fate::Drop,
            },
            Action::Forward { port: to } => Fate::Port { port: other(to)?, how },
            Action::Mirror { port: to } => Fate::Mirror { port: other(to)?, how, queue: self.cfg.mark_queue },
            Action::Mark { mark } => Fate::Mark { id: mark, queue: self.cfg.mark_queue },
        })
    }

    fn attr(&self) -> sys::rte_flow_attr {
        let mut a = sys::rte_flow_attr { group: self.cfg.group, priority: self.cfg.priority, ..Default::default() };
        a.set_ingress(1);
        a
    }

    fn validate(&self, port: u16, p: &FlowPattern, a: &FlowActions) -> Result<(), FlowError> {
        let attr = self.attr();
        let mut err = no_error();
        // SAFETY: `attr`, `err` and the END-terminated arrays of `p` and `a` (whose spec, mask and conf
        // pointers point into their boxed storage) live across the call; an invalid port gets -ENODEV.
        let rc = unsafe { sys::rte_flow_validate(port, &attr, p.as_ptr(), a.as_ptr(), &mut err) };
        if rc < 0 {
            Err(FlowError::from_raw(rc, &err))
        } else {
            Ok(())
        }
    }

    /// Whether an error says something about the shape (so it holds for
    /// every rule of that shape) rather than about this rule's values.
    fn is_shape_error(e: &FlowError) -> bool {
        e.errno == error::libc_errno::ENOTSUP
            || e.errno == error::libc_errno::ENOSYS
            || (e.errno == error::libc_errno::EINVAL && (e.is_match() || e.is_action()))
    }

    /// The PMD's verdict on a shape, asked once per port and cached. In
    /// template mode the verdict comes from creating the shape's table.
    fn shape_ok(&mut self, port: &PortInfo, p: &FlowPattern, a: &FlowActions) -> Result<(), FlowError> {
        let key = (port.index, p.shape(), a.plan().shape());
        if let Some(r) = self.cache.get(&key) {
            return r.clone();
        }
        let r = match self.templates.get_mut(port.index as usize) {
            Some(Some(t)) => t.ensure_table(p, a),
            _ => self.validate(port.id, p, a),
        };
        match &r {
            Err(e) if !Self::is_shape_error(e) => {}
            _ => {
                self.cache.insert(key, r.clone());
            }
        }
        r
    }

    fn probe_shape(&mut self, port: &PortInfo, shape: PatternShape, plan: ActionPlan) -> bool {
        let p = FlowPattern::sample(shape);
        let a = FlowActions::build(plan);
        self.shape_ok(port, &p, &a).is_ok()
    }

    /// Whether a pattern shape is taken with a plain fate (DROP, else QUEUE).
    fn probe_match(&mut self, port: &PortInfo, shape: PatternShape) -> bool {
        let q = self.cfg.mark_queue;
        self.probe_shape(port, shape, ActionPlan { fate: Fate::Drop, count: false, age_s: None })
            || self.probe_shape(port, shape, ActionPlan { fate: Fate::Queue { queue: q }, count: false, age_s: None })
    }

    /// Probes the shapes the capabilities are made of, on every port.
    fn probe(&mut self) {
        let ports = self.rt.ports.clone();
        let mut m = self.caps.matches;
        let mut kinds: Vec<ActionKind> = Vec::new();
        let mut counters = false;
        let shape = |l3, l4, vlans| PatternShape { l3, l4, vlans, tcp_flags: false };
        let v4tcp = shape(L3::V4, L4::Tcp, 0);
        let add = |kinds: &mut Vec<ActionKind>, k: ActionKind, ok: bool| {
            if ok && !kinds.contains(&k) {
                kinds.push(k);
            }
        };
        for port in &ports {
            if self.uses_templates(port.index) {
                // Template ports are judged per shape when its table is
                // created; the NICs offering the API take the whole set.
                m = MatchSupport::ALL;
                for k in ActionKind::ALL {
                    add(&mut kinds, k, true);
                }
                counters = true;
                // Taken to include the TCP flags match, with the rest of the
                // set: not probed here, since a template table is only built
                // for a shape when its first rule comes. A NIC refusing that
                // table refuses the flow's rules (no fallback to a
                // ports-only TCP template).
                if let Some(f) = self.tcp_flags.get_mut(port.index as usize) {
                    *f = true;
                }
                continue;
            }
            let tcp = self.probe_match(port, v4tcp);
            // The FIN/RST match on the TCP item: rte_flow_validate judges
            // the whole item, so a PMD whose TCP item masks only the ports
            // (tap) refuses it, and this port's TCP rules go without it.
            let flags = tcp && self.probe_match(port, PatternShape { tcp_flags: true, ..v4tcp });
            if let Some(f) = self.tcp_flags.get_mut(port.index as usize) {
                *f = flags;
            }
            let udp = self.probe_match(port, shape(L3::V4, L4::Udp, 0));
            m.tcp |= tcp;
            m.udp |= udp;
            m.ipv4 |= tcp || udp;
            m.sctp |= self.probe_match(port, shape(L3::V4, L4::Sctp, 0));
            m.icmp |= self.probe_match(port, shape(L3::V4, L4::Icmp, 0));
            m.other_ip |= self.probe_match(port, shape(L3::V4, L4::Other, 0));
            m.ipv6 |=
                self.probe_match(port, shape(L3::V6, L4::Tcp, 0)) || self.probe_match(port, shape(L3::V6, L4::Udp, 0));
            m.vlan |= self.probe_match(port, shape(L3::V4, L4::Tcp, 1));
            m.qinq |= self.probe_match(port, shape(L3::V4, L4::Tcp, 2));

            let q = self.cfg.mark_queue;
            let how = self.cfg.port_action;
            let peer_id = port.peer.and_then(|i| self.rt.port(i)).map(|p| p.id).unwrap_or(port.id);
            let bare = |fate| ActionPlan { fate, count: false, age_s: None };
            let drop_ok = self.probe_shape(port, v4tcp, bare(Fate::Drop));
            add(&mut kinds, ActionKind::Drop, drop_ok);
            let mark_ok = self.probe_shape(port, v4tcp, bare(Fate::Mark { id: 1, queue: q }));
            add(&mut kinds, ActionKind::Mark, mark_ok);
            let fwd_ok = self.probe_shape(port, v4tcp, bare(Fate::Port { port: peer_id, how }));
            add(&mut kinds, ActionKind::Forward, fwd_ok);
            let mirror_ok = self.probe_shape(port, v4tcp, bare(Fate::Mirror { port: peer_id, how, queue: q }));
            add(&mut kinds, ActionKind::Mirror, mirror_ok);
            add(&mut kinds, ActionKind::Pass, if port.peer.is_some() { fwd_ok } else { drop_ok });
            counters |= self.probe_shape(port, v4tcp, ActionPlan { fate: Fate::Drop, count: true, age_s: None });
            if self.cfg.age_timeout_s > 0 {
                self.probe_shape(
                    port,
                    v4tcp,
                    ActionPlan { fate: Fate::Drop, count: false, age_s: Some(self.cfg.age_timeout_s) },
                );
            }
        }
        self.caps.matches = m;
        self.caps.tcp_teardown_to_software = !ports.is_empty() && self.tcp_flags.iter().all(|&f| f);
        self.caps.actions = kinds;
        self.caps.counters = counters;
        self.caps.max_rules = self.cfg.max_rules;
        for r in self.probe_report() {
            match &r.result {
                Ok(()) => {
                    tracing::debug!(port = r.port, pattern = %r.pattern, actions = %r.actions, "rte_flow probe: accepted")
                }
                Err(e) => {
                    tracing::debug!(port = r.port, pattern = %r.pattern, actions = %r.actions, error = %e, "rte_flow probe: refused")
                }
            }
        }
    }

    /// The plans to try for a fate, best first: with COUNT and AGE as
    /// configured, then without AGE, without COUNT, bare.
    fn candidates(&self, fate: Fate) -> Vec<ActionPlan> {
        let age = (self.cfg.age_timeout_s > 0).then_some(self.cfg.age_timeout_s);
        let mut v: Vec<ActionPlan> = Vec::with_capacity(4);
        for (count, age_s) in [(self.cfg.counters, age), (self.cfg.counters, None), (false, age), (false, None)] {
            let p = ActionPlan { fate, count, age_s };
            if !v.contains(&p) {
                v.push(p);
            }
        }
        v
    }

    /// Picks the best plan the PMD takes for one rule and validates it.
    fn prepare(&mut self, spec: &RuleSpec) -> Result<(PortInfo, FlowPattern, FlowActions), Refusal> {
        let port = self.rt.port(spec.matches.port).cloned().ok_or_else(|| Refusal {
            kind: RefusalKind::Driver,
            message: format!(
                "ingress port {} is not one of the {} configured dpdk ports",
                spec.matches.port,
                self.rt.ports.len()
            ),
        })?;
        let flags = self.tcp_flags.get(port.index as usize).copied().unwrap_or(false);
        let pattern = FlowPattern::build(&spec.matches, flags)
            .map_err(|e| Refusal { kind: RefusalKind::UnsupportedMatch, message: e.0 })?;
        let fate = self.fate(&port, &spec.action)?;
        let mut first_err: Option<(String, FlowError)> = None;
        for plan in self.candidates(fate) {
            let actions = FlowActions::build(plan);
            let what = format!("{} -> {} on {}", pattern.shape().name(), plan.shape().name(), port.device);
            let r = self.shape_ok(&port, &pattern, &actions).and_then(|()| {
                if self.uses_templates(port.index) {
                    Ok(())
                } else {
                    self.validate(port.id, &pattern, &actions)
                }
            });
            match r {
                Ok(()) => return Ok((port, pattern, actions)),
                Err(e) => {
                    // Only dropping COUNT/AGE can help, and only when the
                    // PMD objected to an action (or gave no detail).
                    let retry = (plan.count || plan.age_s.is_some())
                        && (e.is_action()
                            || e.cause == et::RTE_FLOW_ERROR_TYPE_UNSPECIFIED
                            || e.cause == et::RTE_FLOW_ERROR_TYPE_NONE);
                    if first_err.is_none() || !retry {
                        first_err = Some((what, e.clone()));
                    }
                    if !retry {
                        break;
                    }
                }
            }
        }
        let (what, e) = first_err.expect("at least one candidate plan");
        Err(e.refusal(&what))
    }

    fn create_sync(&self, port: u16, p: &FlowPattern, a: &FlowActions) -> Result<RawFlow, FlowError> {
        let attr = self.attr();
        let mut err = no_error();
        // SAFETY: `attr`, `err` and the END-terminated arrays of `p` and `a`, with the storage their
        // pointers point into, live across the call; the PMD keeps its own form of the rule, not pointers.
        let f = unsafe { sys::rte_flow_create(port, &attr, p.as_ptr(), a.as_ptr(), &mut err) };
        NonNull::new(f).map(RawFlow).ok_or_else(|| FlowError::from_raw(0, &err))
    }

    /// Destroys rules: template rules in one batch per port (enqueued,
    /// pushed once, completions pulled), sync rules one call each. One
    /// result per rule, in order.
    fn destroy_many(&mut self, rules: &[&Installed]) -> Vec<Result<(), FlowError>> {
        let mut out: Vec<Option<Result<(), FlowError>>> = vec![None; rules.len()];
        for (port_index, t) in self.templates.iter_mut().enumerate() {
            let Some(t) = t.as_mut() else { continue };
            let idx: Vec<usize> =
                (0..rules.len()).filter(|&i| rules[i].template && rules[i].port as usize == port_index).collect();
            if idx.is_empty() {
                continue;
            }
            let flows: Vec<RawFlow> = idx.iter().map(|&i| rules[i].flow).collect();
            for (i, r) in idx.into_iter().zip(t.destroy(&flows)) {
                out[i] = Some(r);
            }
        }
        for (i, r) in rules.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            let port = self.rt.port(r.port).map(|p| p.id).unwrap_or(u16::MAX);
            let mut err = no_error();
            // SAFETY: `r.flow` came from rte_flow_create on this port and is destroyed once (the rule left
            // `rules`); `err` is a live local; an unknown port (u16::MAX) only gets -ENODEV.
            let rc = unsafe { sys::rte_flow_destroy(port, r.flow.0.as_ptr(), &mut err) };
            out[i] = Some(if rc < 0 { Err(FlowError::from_raw(rc, &err)) } else { Ok(()) });
        }
        out.into_iter().map(|o| o.expect("every rule has a result")).collect()
    }

    fn query(&self, r: &Installed) -> Result<RuleCounters, FlowError> {
        let port = self.rt.port(r.port).map(|p| p.id).unwrap_or(u16::MAX);
        let mut c = RuleCounters::default();
        if r.counters {
            let mut q = sys::rte_flow_query_count::default();
            let action = FlowActions::count_query_action();
            let mut err = no_error();
            // SAFETY: `r.flow` is a live rule of this port (still in `rules`); `action` is the COUNT action, so
            // the PMD writes an rte_flow_query_count, which `q` is, living across the call like `err`.
            let rc = unsafe {
                sys::rte_flow_query(
                    port,
                    r.flow.0.as_ptr(),
                    &action,
                    &mut q as *mut _ as *mut core::ffi::c_void,
                    &mut err,
                )
            };
            if rc < 0 {
                return Err(FlowError::from_raw(rc, &err));
            }
            if q.hits_set() != 0 {
                c.packets = q.hits;
                c.hw_packets = q.hits;
            }
            if q.bytes_set() != 0 {
                c.bytes = q.bytes;
                c.hw_bytes = q.bytes;
            }
        }
        if r.age {
            let mut q = sys::rte_flow_query_age::default();
            let action = FlowActions::age_query_action();
            let mut err = no_error();
            // SAFETY: `r.flow` is a live rule of this port (still in `rules`); `action` is the AGE action, so
            // the PMD writes an rte_flow_query_age, which `q` is, living across the call like `err`.
            let rc = unsafe {
                sys::rte_flow_query(
                    port,
                    r.flow.0.as_ptr(),
                    &action,
                    &mut q as *mut _ as *mut core::ffi::c_void,
                    &mut err,
                )
            };
            if rc >= 0 && q.sec_since_last_hit_valid() != 0 {
                let now = self.clock_ns.unwrap_or_else(wall_ns);
                c.last_used_ns = Some(now.saturating_sub(q.sec_since_last_hit() as u64 * 1_000_000_000));
            }
        }
        Ok(c)
    }

    /// Removes every rule this backend installed; returns the failures.
    pub fn flush(&mut self) -> Vec<(Cookie, FlowError)> {
        let all: Vec<(Cookie, Installed)> = self.rules.drain().collect();
        let refs: Vec<&Installed> = all.iter().map(|(_, r)| r).collect();
        let results = self.destroy_many(&refs);
        let mut failed = Vec::new();
        for ((c, r), res) in all.into_iter().zip(results) {
            if let Err(e) = res {
                // Still in the NIC: kept, so a later flush can try again.
                self.rules.insert(c, r);
                failed.push((c, e));
            }
        }
        failed
    }

    /// How many rules this backend holds.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

impl Backend for DpdkBackend {
    fn name(&self) -> &str {
        "dpdk"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn install(&mut self, rules: &[RuleSpec]) -> Vec<InstallOutcome> {
        let mut out: Vec<Option<InstallOutcome>> = vec![None; rules.len()];
        // Rules bound for template ports, per port, created in batches.
        let mut queued: Vec<Vec<(usize, FlowPattern, FlowActions)>> =
            (0..self.rt.ports.len()).map(|_| Vec::new()).collect();
        for (i, spec) in rules.iter().enumerate() {
            if self.rules.contains_key(&spec.cookie)
                || queued.iter().flatten().any(|(j, _, _)| rules[*j].cookie == spec.cookie)
            {
                out[i] = Some(InstallOutcome::Refused(Refusal {
                    kind: RefusalKind::Exists,
                    message: format!("a rule with cookie {:?} is already installed", spec.cookie),
                }));
                continue;
            }
            let (port, pattern, actions) = match self.prepare(spec) {
                Ok(x) => x,
                Err(r) => {
                    out[i] = Some(InstallOutcome::Refused(r));
                    continue;
                }
            };
            if self.uses_templates(port.index) {
                queued[port.index as usize].push((i, pattern, actions));
                continue;
            }
            let plan = actions.plan();
            out[i] = Some(match self.create_sync(port.id, &pattern, &actions) {
                Ok(flow) => keep_installed(&mut self.rules, spec.cookie, port.index, flow, &plan, false),
                Err(e) => InstallOutcome::Refused(e.refusal(&format!(
                    "{} -> {} on {}",
                    pattern.shape().name(),
                    plan.shape().name(),
                    port.device
                ))),
            });
        }
        for (port_index, batch) in queued.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let device = self.rt.ports[port_index].device.clone();
            let t = self.templates[port_index].as_mut().expect("queued only for template ports");
            let pairs: Vec<(&FlowPattern, &FlowActions)> = batch.iter().map(|(_, p, a)| (p, a)).collect();
            let results = t.create(&pairs);
            for ((i, p, a), r) in batch.iter().zip(results) {
                let plan = a.plan();
                out[*i] = Some(match r {
                    Ok(flow) => keep_installed(&mut self.rules, rules[*i].cookie, port_index as u8, flow, &plan, true),
                    Err(e) => InstallOutcome::Refused(e.refusal(&format!(
                        "{} -> {} on {} (template)",
                        p.shape().name(),
                        plan.shape().name(),
                        device
                    ))),
                });
            }
        }
        out.into_iter().map(|o| o.expect("every rule has an outcome")).collect()
    }

    fn remove(&mut self, cookies: &[Cookie]) -> Vec<Result<Option<RuleCounters>, BackendError>> {
        let mut out: Vec<Option<Result<Option<RuleCounters>, BackendError>>> = Vec::with_capacity(cookies.len());
        // The rules found, with their last counters read before they go.
        let mut taken: Vec<(usize, Cookie, Installed, Option<RuleCounters>)> = Vec::new();
        for (i, c) in cookies.iter().enumerate() {
            match self.rules.remove(c) {
                Some(r) => {
                    let last = if r.counters || r.age { self.query(&r).ok() } else { None };
                    taken.push((i, *c, r, last));
                    out.push(None);
                }
                None => out.push(Some(Err(BackendError::UnknownRule { backend: "dpdk".into(), cookie: *c }))),
            }
        }
        let refs: Vec<&Installed> = taken.iter().map(|t| &t.2).collect();
        let results = self.destroy_many(&refs);
        for ((i, c, r, last), res) in taken.into_iter().zip(results) {
            out[i] = Some(match res {
                Ok(()) => Ok(last),
                Err(e) => {
                    // Still in the NIC: kept, so a later remove or the
                    // shutdown flush can try again.
                    self.rules.insert(c, r);
                    Err(BackendError::Refused {
                        backend: "dpdk".into(),
                        message: format!("rte_flow_destroy {c:?}: {e}"),
                    })
                }
            });
        }
        out.into_iter().map(|o| o.expect("every cookie has a result")).collect()
    }

    fn read_counters(&mut self, out: &mut Vec<(Cookie, RuleCounters)>) -> Result<(), BackendError> {
        for (cookie, r) in &self.rules {
            if !(r.counters || r.age) {
                continue;
            }
            match self.query(r) {
                Ok(c) => out.push((*cookie, c)),
                Err(e) => {
                    tracing::warn!(cookie = ?cookie, error = %e, "rte_flow_query failed; the flow keeps its last counts")
                }
            }
        }
        Ok(())
    }

    fn set_clock(&mut self, now_ns: u64) {
        self.clock_ns = Some(now_ns);
    }
}

impl Drop for DpdkBackend {
    fn drop(&mut self) {
        if self.cfg.keep_rules {
            return;
        }
        for (c, e) in self.flush() {
            tracing::warn!(cookie = ?c, error = %e, "could not remove rule at shutdown");
        }
    }
}
