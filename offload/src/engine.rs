//! The offload engine: takes parsed packets into the flow table, runs the
//! classifier, turns decisions into batched per-direction rules on a
//! backend within its capacity and insertion rate, reads counters back
//! into flows, ages flows out (software ones by their packets, offloaded
//! ones by their counters) and emits one record per flow.
//!
//! Counting rule: a packet is counted once, by whoever handled it. Before
//! the rule is in place software counts it; after, the rule's counters do,
//! and software skips packets it sees only as a tap of offloaded traffic.

use crate::classifier::{Classifier, Decision};
use crate::record::{endpoints_of, DirRecord, EndReason, Event, FlowRecord, OffloadRecord};
use flowtable_config::Config;
use flowtable_hw::{
    Action, Backend, BackendError, Capabilities, Cookie, InstallOutcome, MatchFields, Placement, PlacementPolicy,
    Refusal, RefusalKind, RuleCounters, RuleSpec,
};
use flowtable_sw::context::{ContextError, ContextStore, FlowContext};
use flowtable_sw::pipeline::Schedule;
use flowtable_sw::{DirCounters, Direction, Flow, FlowId, FlowTable, Lookup, PacketInfo, PortMap, Stage, TableConfig};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

const DIRS: [Direction; 2] = [Direction::LoToHi, Direction::HiToLo];

/// Most packets `process_batch` takes at once.
pub const BATCH: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineConfig {
    pub instance_id: u32,
    pub poll_interval_ns: u64,
    pub batch_size: usize,
    pub placement: PlacementPolicy,
    pub hard_timeout_ns: u64,
    pub max_queued: usize,
    /// Inline pairs: where a direction not seen yet will arrive.
    pub ports: PortMap,
}

impl EngineConfig {
    pub fn from_config(c: &Config) -> EngineConfig {
        EngineConfig {
            instance_id: c.instance_id,
            poll_interval_ns: c.offload.poll_interval_ms * 1_000_000,
            batch_size: c.offload.batch_size,
            placement: c.offload.placement,
            hard_timeout_ns: (c.offload.hard_timeout_s * 1e9) as u64,
            max_queued: c.offload.max_queued,
            ports: c.port_map().unwrap_or_default(),
        }
    }
}

/// The offload side of a flow that was ever queued, offloaded or refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OffloadState {
    pub action: Action,
    /// Where each direction's rule lives (index: `Direction::index`).
    pub placement: [Option<Placement>; 2],
    /// Where each direction's rule was installed, kept after removal for
    /// the flow's record.
    #[serde(skip)]
    pub installed_placement: [Option<Placement>; 2],
    pub hw_counters: bool,
    pub installed_ns: u64,
    pub removed_ns: Option<u64>,
    /// Last cumulative counters read per rule, to turn reads into deltas.
    pub baseline: [RuleCounters; 2],
    /// Per direction, packets software saw while the rule was in and left
    /// to its counters, and what those counters added in that time: the
    /// difference, settled when the rule goes, is what slipped past while
    /// the rule was going in (see `settle`).
    #[serde(skip)]
    pub tapped: [DirCounters; 2],
    #[serde(skip)]
    pub rule_counted: [DirCounters; 2],
    pub refusal: Option<Refusal>,
    /// Taken back to software on request: the classifier won't offload it again.
    pub pinned_software: bool,
}

impl OffloadState {
    fn queued(action: Action) -> OffloadState {
        OffloadState {
            action,
            placement: [None, None],
            installed_placement: [None, None],
            hw_counters: false,
            installed_ns: 0,
            removed_ns: None,
            baseline: [RuleCounters::default(); 2],
            tapped: [DirCounters::default(); 2],
            rule_counted: [DirCounters::default(); 2],
            refusal: None,
            pinned_software: false,
        }
    }
}

/// Engine-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EngineStats {
    /// Packets that reached software.
    pub sw_packets: u64,
    /// Packets software saw of offloaded flows and left to the rule's counters.
    pub tap_packets_skipped: u64,
    /// Of the packets software left to a rule, those that went past it
    /// while it was going in, counted by software once the rule was gone.
    pub slipped_packets: u64,
    /// Packets of new flows not tracked because the table was full.
    pub untracked_table_full: u64,
    /// Later fragments whose first fragment was never seen.
    pub orphan_fragments: u64,
    pub flows_created: u64,
    pub flows_ended: u64,
    pub rules_installed: u64,
    pub rules_removed: u64,
    pub flows_offloaded: u64,
    pub flows_refused: u64,
    /// Refusals by kind ("capacity", "driver", ...).
    pub refusals: BTreeMap<String, u64>,
    pub remove_errors: u64,
    pub counter_reads: u64,
    pub counter_errors: u64,
    /// Counter entries whose cookie names no live offloaded flow.
    pub unknown_rules: u64,
    /// Marked packets whose mark led straight to their flow, and those
    /// whose mark didn't (looked up by hash instead).
    pub mark_hits: u64,
    pub mark_misses: u64,
    pub ended_by: BTreeMap<String, u64>,
}

/// A snapshot of one flow for queries.
#[derive(Debug, Clone, Serialize)]
pub struct FlowView {
    pub id: FlowId,
    pub key: String,
    pub proto: u8,
    pub src: String,
    pub dst: String,
    pub sport: u16,
    pub dport: u16,
    pub vlan: u16,
    pub ingress: u8,
    pub stage: Stage,
    pub tcp_state: flowtable_sw::TcpState,
    pub class: Option<String>,
    pub start_ns: u64,
    pub last_ns: u64,
    pub orig: DirRecord,
    pub reply: DirRecord,
    pub packets: u64,
    pub bytes: u64,
    pub offload: Option<OffloadState>,
    /// Cookies of the flow's rules, one per direction that has one.
    pub rules: Vec<String>,
    pub context: Option<FlowContext>,
    pub idle_deadline_ns: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no flow with id {0}")]
    NoSuchFlow(FlowId),
    #[error("flow {id} is {stage}: {what}")]
    WrongStage { id: FlowId, stage: &'static str, what: &'static str },
    #[error("backend {backend} does not support action {action:?}")]
    Unsupported { backend: String, action: Action },
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

pub struct Engine {
    table: FlowTable,
    contexts: ContextStore,
    classifier: Classifier,
    backend: Box<dyn Backend>,
    caps: Capabilities,
    offloads: HashMap<FlowId, OffloadState>,
    queue: Vec<FlowId>,
    rules_live: usize,
    cfg: EngineConfig,
    tokens: f64,
    tokens_at: u64,
    last_poll_ns: Option<u64>,
    now_ns: u64,
    stats: EngineStats,
    records: Vec<FlowRecord>,
    events: Option<Vec<Event>>,
    counters_buf: Vec<(Cookie, RuleCounters)>,
    due_buf: Vec<FlowId>,
}

impl Engine {
    pub fn new(table: TableConfig, classifier: Classifier, backend: Box<dyn Backend>, cfg: EngineConfig) -> Engine {
        let caps = backend.capabilities().clone();
        Engine {
            table: FlowTable::new(table),
            contexts: ContextStore::default(),
            classifier,
            tokens: caps.max_insert_rate as f64,
            caps,
            backend,
            offloads: HashMap::new(),
            queue: Vec::new(),
            rules_live: 0,
            cfg,
            tokens_at: 0,
            last_poll_ns: None,
            now_ns: 0,
            stats: EngineStats::default(),
            records: Vec::new(),
            events: None,
            counters_buf: Vec::new(),
            due_buf: Vec::new(),
        }
    }

    /// Builds an engine from a checked configuration.
    pub fn from_config(config: &Config, backend: Box<dyn Backend>) -> Result<Engine, String> {
        let classifier = Classifier::new(&config.classifier)?;
        Ok(Engine::new(config.table_config(), classifier, backend, EngineConfig::from_config(config)))
    }

    pub fn table(&self) -> &FlowTable {
        &self.table
    }
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }
    pub fn backend_mut(&mut self) -> &mut dyn Backend {
        self.backend.as_mut()
    }
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }
    /// The ports' zones, for parsing: `parse_packet(.., ports().ingress(port))`.
    pub fn ports(&self) -> &PortMap {
        &self.cfg.ports
    }
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }
    pub fn rules_live(&self) -> usize {
        self.rules_live
    }
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Replaces the classifier and timeouts (configuration reload). Flows
    /// already decided keep their decision; undecided ones are matched anew.
    pub fn reload(&mut self, classifier: Classifier, timeouts: flowtable_sw::Timeouts) {
        self.table.set_timeouts(timeouts);
        for id in self.table.ids() {
            if let Some(f) = self.table.get_mut(id) {
                f.class =
                    if f.stage() == Stage::Tracking { 0 } else { self.classifier.remap_class(f.class, &classifier) };
            }
        }
        self.classifier = classifier;
    }

    /// Starts keeping events for `drain_events`.
    pub fn enable_events(&mut self) {
        self.events.get_or_insert_with(Vec::new);
    }

    pub fn drain_events(&mut self) -> Vec<Event> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Records of flows that ended since the last call.
    pub fn drain_records(&mut self) -> Vec<FlowRecord> {
        std::mem::take(&mut self.records)
    }

    fn emit(&mut self, event: impl FnOnce() -> Event) {
        if let Some(ev) = self.events.as_mut() {
            ev.push(event());
        }
    }

    /// Offers a packet to an in-process NIC (the sim); true when it took
    /// the packet, which software must then not see.
    #[inline]
    pub fn offer_to_nic(&mut self, pkt: &PacketInfo) -> bool {
        self.backend.offer(pkt)
    }

    /// The packet path: finds or creates the flow, counts the packet once,
    /// and classifies flows that are still undecided.
    #[inline]
    pub fn process(&mut self, pkt: &PacketInfo, now_ns: u64) {
        let hash = self.table.hash(&pkt.key);
        self.process_hashed(pkt, hash, now_ns);
    }

    /// `process` for a batch of packets, with `ts_ns[i]` the time of
    /// `pkts[i]`. The memory each lookup needs is requested a few packets
    /// ahead (`flowtable_sw::pipeline`), so the loads overlap; the packets
    /// are handled in order, exactly as one `process` call each. Batches
    /// longer than `BATCH` are taken `BATCH` at a time.
    pub fn process_batch(&mut self, pkts: &[PacketInfo], ts_ns: &[u64]) {
        debug_assert_eq!(pkts.len(), ts_ns.len(), "one timestamp per packet");
        for (pkts, ts_ns) in pkts.chunks(BATCH).zip(ts_ns.chunks(BATCH)) {
            let n = pkts.len().min(ts_ns.len());
            let mut hashes = [0u64; BATCH];
            for step in Schedule::new(n) {
                if let Some(i) = step.hash {
                    hashes[i] = self.table.prefetch_index(&pkts[i].key);
                }
                if let Some(i) = step.prefetch {
                    self.table.prefetch_flow(hashes[i]);
                }
                if let Some(i) = step.lookup {
                    self.process_hashed(&pkts[i], hashes[i], ts_ns[i]);
                }
            }
        }
    }

    /// `process` for a packet a NIC rule marked with `mark`: a rule
    /// installed with `mark: 0` marks its flow's packets with the flow's
    /// slot plus one, so the flow is found without hashing. Any other mark
    /// (an operator's own, or a stale one) falls back to the hash lookup.
    #[inline]
    pub fn process_marked(&mut self, pkt: &PacketInfo, mark: u32, now_ns: u64) {
        match mark.checked_sub(1).and_then(|slot| self.table.find_in_slot(slot, &pkt.key)) {
            Some(id) => {
                self.stats.mark_hits += 1;
                if now_ns > self.now_ns {
                    self.now_ns = now_ns;
                }
                self.account(id, pkt, now_ns);
            }
            None => {
                self.stats.mark_misses += 1;
                self.process(pkt, now_ns);
            }
        }
    }

    /// What the rule on `port` for one direction of flow `id` does: `pass`
    /// on a port of an inline pair goes on to the partner port in hardware,
    /// as the pair would have carried it; `mark: 0` marks packets with the
    /// flow's slot plus one, so software finds the flow without hashing.
    fn rule_action(&self, action: Action, id: FlowId, port: u8) -> Action {
        match action {
            Action::Mark { mark: 0 } => Action::Mark { mark: id.index().wrapping_add(1) },
            Action::Pass => self.cfg.ports.partner(port).map_or(Action::Pass, |to| Action::Forward { port: to }),
            a => a,
        }
    }

    /// The port a rule for `dir` goes on: where that direction's packets
    /// arrive. One not seen yet is expected on the inline partner of the
    /// port the other direction uses, or, unpaired, on that same port.
    fn rule_port(&self, flow: &Flow, dir: Direction) -> u8 {
        if flow.port_known(dir) {
            return flow.port(dir);
        }
        let other = flow.port(dir.reverse());
        self.cfg.ports.partner(other).unwrap_or(other)
    }

    #[inline]
    fn process_hashed(&mut self, pkt: &PacketInfo, hash: u64, now_ns: u64) {
        if now_ns > self.now_ns {
            self.now_ns = now_ns;
        }
        let id = match self.table.lookup_or_insert_hashed(pkt, hash, now_ns) {
            Lookup::Found(id) => id,
            Lookup::Inserted { id, evicted } => {
                self.stats.flows_created += 1;
                if let Some((old, flow)) = evicted {
                    self.end_removed(old, &flow, EndReason::TableFull);
                }
                if self.events.is_some() {
                    let key = pkt.key.to_string();
                    self.emit(|| Event::New { id, key, ts_ns: now_ns });
                }
                id
            }
            Lookup::Full => {
                self.stats.untracked_table_full += 1;
                return;
            }
            Lookup::OrphanFragment => {
                self.stats.orphan_fragments += 1;
                return;
            }
        };
        self.account(id, pkt, now_ns);
    }

    /// Counts a packet of a known flow once and classifies undecided flows.
    #[inline]
    fn account(&mut self, id: FlowId, pkt: &PacketInfo, now_ns: u64) {
        let stage = self.table.get(id).map_or(Stage::Free, |f| f.stage());
        // Software skips a packet its flow's rule already counted: one that
        // reached software although a rule with counters took it, because
        // software taps everything (AF_PACKET before tc) or because the
        // action delivers to software (mark, mirror). A packet captured
        // before the rule went in, or of a rule without counters, is
        // software's to count.
        let d = pkt.dir.index();
        let tapped = if stage == Stage::Offloaded {
            let sees_offloaded = self.caps.software_sees_offloaded;
            self.offloads.get_mut(&id).filter(|s| {
                s.placement[d].is_some()
                    && s.hw_counters
                    && now_ns >= s.installed_ns
                    && (sees_offloaded || matches!(s.action, Action::Mark { .. } | Action::Mirror { .. }))
            })
        } else {
            None
        };
        let count = match tapped {
            Some(state) => {
                state.tapped[d].add(DirCounters { packets: 1, bytes: pkt.wire_len as u64 });
                self.stats.tap_packets_skipped += 1;
                false
            }
            None => {
                self.stats.sw_packets += 1;
                true
            }
        };
        self.table.observe(id, pkt, now_ns, count);
        if stage == Stage::Tracking {
            self.classify(id);
        }
    }

    fn classify(&mut self, id: FlowId) {
        let verdict_action;
        let decision = {
            let Some(flow) = self.table.get(id) else { return };
            verdict_action = self.classifier.action_for(flow);
            let ctx = if flow.has_context() { self.contexts.get(id) } else { None };
            let flow = self.table.get_mut(id).expect("flow exists");
            self.classifier.decide(flow, ctx, verdict_action)
        };
        match decision {
            Decision::Wait => {}
            Decision::Software => {
                self.table.set_stage(id, Stage::Software);
                self.emit_classified(id, "software".into());
            }
            Decision::Offload(action) => {
                if self.queue.len() >= self.cfg.max_queued {
                    // Stays undecided and asks again on its next packet.
                    return;
                }
                self.emit_classified(id, format!("offload {:?}", action.kind()).to_lowercase());
                self.enqueue(id, action);
            }
        }
    }

    fn emit_classified(&mut self, id: FlowId, decision: String) {
        if self.events.is_some() {
            let class = self.table.get(id).and_then(|f| self.classifier.class_name(f.class)).map(str::to_string);
            let ts_ns = self.now_ns;
            self.emit(|| Event::Classified { id, class, decision, ts_ns });
        }
    }

    fn enqueue(&mut self, id: FlowId, action: Action) {
        let Some(flow) = self.table.get(id) else { return };
        // What the backend says it can't do is refused here, without a call.
        let rule_actions = DIRS.map(|dir| self.rule_action(action, id, self.rule_port(flow, dir)));
        let unsupported = if let Some(a) = rule_actions.iter().find(|a| !self.caps.supports_action(a)) {
            Some(Refusal {
                kind: RefusalKind::UnsupportedAction,
                message: format!("{} does not support action {:?}", self.backend.name(), a.kind()),
            })
        } else {
            self.caps.matches.check(&flow.key).err().map(|m| Refusal {
                kind: RefusalKind::UnsupportedMatch,
                message: format!("{}: {m}", self.backend.name()),
            })
        };
        let mut state = OffloadState::queued(action);
        if let Some(refusal) = unsupported {
            self.refuse(id, &mut state, refusal);
            self.offloads.insert(id, state);
            return;
        }
        self.offloads.insert(id, state);
        self.table.set_stage(id, Stage::Queued);
        self.queue.push(id);
    }

    fn refuse(&mut self, id: FlowId, state: &mut OffloadState, refusal: Refusal) {
        *self.stats.refusals.entry(refusal.kind.as_str().to_string()).or_insert(0) += 1;
        self.stats.flows_refused += 1;
        self.table.set_stage(id, Stage::Refused);
        let reason = refusal.to_string();
        state.refusal = Some(refusal);
        let ts_ns = self.now_ns;
        self.emit(|| Event::Refused { id, reason, ts_ns });
    }

    /// The slow path, called often (every few ms of packet or wall time):
    /// installs queued flows, reads counters each poll interval, ages flows.
    pub fn poll(&mut self, now_ns: u64) {
        if now_ns > self.now_ns {
            self.now_ns = now_ns;
        }
        let now = self.now_ns;
        self.backend.set_clock(now);
        self.install_queued(now);
        let due = match self.last_poll_ns {
            None => true,
            Some(t) => now >= t + self.cfg.poll_interval_ns,
        };
        if due && self.rules_live > 0 {
            self.read_counters(now);
        }
        if due {
            self.last_poll_ns = Some(now);
        }
        self.expire(now);
    }

    fn refill_tokens(&mut self, now: u64) {
        let rate = self.caps.max_insert_rate as f64;
        if rate == 0.0 {
            return;
        }
        let dt = now.saturating_sub(self.tokens_at) as f64 / 1e9;
        self.tokens = (self.tokens + dt * rate).min(rate.max(2.0));
        self.tokens_at = now;
    }

    /// How many flows (two rules each) may be installed now.
    fn install_budget(&self) -> usize {
        let by_rate = if self.caps.max_insert_rate == 0 { usize::MAX } else { (self.tokens / 2.0) as usize };
        let by_capacity =
            if self.caps.max_rules == 0 { usize::MAX } else { self.caps.max_rules.saturating_sub(self.rules_live) / 2 };
        by_rate.min(by_capacity).min(self.cfg.batch_size.div_ceil(2))
    }

    fn install_queued(&mut self, now: u64) {
        if self.queue.is_empty() {
            return;
        }
        self.refill_tokens(now);
        let table = &self.table;
        self.queue.retain(|id| table.get(*id).is_some_and(|f| f.stage() == Stage::Queued));
        let budget = self.install_budget();
        if budget == 0 || self.queue.is_empty() {
            return;
        }
        if self.queue.len() > budget {
            // Over capacity or rate: the largest flows go first.
            let table = &self.table;
            let bytes = |id: &FlowId| table.get(*id).map_or(0, |f| f.bytes());
            self.queue.select_nth_unstable_by(budget - 1, |a, b| bytes(b).cmp(&bytes(a)));
        }
        let take = budget.min(self.queue.len());
        let batch: Vec<FlowId> = self.queue.drain(..take).collect();
        let mut specs = Vec::with_capacity(batch.len() * 2);
        for id in &batch {
            for dir in DIRS {
                let port = self.table.get(*id).map(|f| self.rule_port(f, dir));
                if let Some(port) = port {
                    self.table.expect_port(*id, dir, port);
                }
            }
            let flow = self.table.get(*id).expect("validated above");
            for dir in DIRS {
                let port = flow.port(dir);
                specs.push(RuleSpec {
                    cookie: Cookie::new(self.cfg.instance_id, id.0, dir),
                    matches: MatchFields { key: flow.key, dir, port },
                    action: self.rule_action(self.offloads[id].action, *id, port),
                    policy: self.cfg.placement,
                });
            }
        }
        let outcomes = self.backend.install(&specs);
        self.tokens = (self.tokens - specs.len() as f64).max(0.0);
        let mut rollback = Vec::new();
        let mut retry = Vec::new();
        for (i, id) in batch.iter().enumerate() {
            let pair = [outcomes.get(2 * i), outcomes.get(2 * i + 1)];
            let mut state = self.offloads.remove(id).expect("queued flows have state");
            let mut refusal = None;
            for (d, outcome) in pair.iter().enumerate() {
                match outcome {
                    Some(InstallOutcome::Installed { placement, counters }) => {
                        state.placement[d] = Some(*placement);
                        state.installed_placement[d] = Some(*placement);
                        state.hw_counters = *counters && (d == 0 || state.hw_counters);
                        self.rules_live += 1;
                        self.stats.rules_installed += 1;
                    }
                    Some(InstallOutcome::Refused(r)) => refusal = refusal.or(Some(r.clone())),
                    None => {
                        refusal = refusal.or(Some(Refusal {
                            kind: RefusalKind::Io,
                            message: format!("{} returned no outcome for this rule", self.backend.name()),
                        }))
                    }
                }
            }
            match refusal {
                None => {
                    state.installed_ns = now;
                    self.stats.flows_offloaded += 1;
                    self.table.set_stage(*id, Stage::Offloaded);
                    let (action, placement) = (state.action, state.placement);
                    self.emit(|| Event::Offloaded { id: *id, action, placement, ts_ns: now });
                }
                Some(r) => {
                    // Half a flow in hardware would split its counting: undo.
                    for dir in DIRS {
                        if state.placement[dir.index()].take().is_some() {
                            rollback.push(Cookie::new(self.cfg.instance_id, id.0, dir));
                        }
                    }
                    if matches!(r.kind, RefusalKind::Rate | RefusalKind::Capacity) {
                        *self.stats.refusals.entry(r.kind.as_str().to_string()).or_insert(0) += 1;
                        retry.push(*id);
                    } else {
                        self.refuse(*id, &mut state, r);
                    }
                }
            }
            self.offloads.insert(*id, state);
        }
        if !rollback.is_empty() {
            for result in self.backend.remove(&rollback) {
                self.rules_live = self.rules_live.saturating_sub(1);
                if result.is_err() {
                    self.stats.remove_errors += 1;
                }
            }
        }
        self.queue.extend(retry);
    }

    fn read_counters(&mut self, now: u64) {
        let mut buf = std::mem::take(&mut self.counters_buf);
        buf.clear();
        self.stats.counter_reads += 1;
        if let Err(e) = self.backend.read_counters(&mut buf) {
            self.stats.counter_errors += 1;
            tracing::warn!(error = %e, "reading rule counters failed; flows keep their last counts");
        }
        for (cookie, counters) in &buf {
            if cookie.owner != self.cfg.instance_id
                || !self.apply_counters(FlowId(cookie.flow), cookie.direction(), counters, now)
            {
                self.stats.unknown_rules += 1;
            }
        }
        self.counters_buf = buf;
    }

    /// Merges a rule's cumulative counters into its flow as a delta.
    fn apply_counters(&mut self, id: FlowId, dir: Direction, c: &RuleCounters, now: u64) -> bool {
        let Some(state) = self.offloads.get_mut(&id) else { return false };
        let Some(flow) = self.table.get_mut(id) else { return false };
        let base = &mut state.baseline[dir.index()];
        // Counters that went backwards mean the rule was replaced: what it
        // shows now is all new.
        let (dp, db) = if c.packets >= base.packets {
            (c.packets - base.packets, c.bytes.saturating_sub(base.bytes))
        } else {
            (c.packets, c.bytes)
        };
        *base = *c;
        if dp > 0 {
            state.rule_counted[dir.index()].add(DirCounters { packets: dp, bytes: db });
            let hw = &mut flow.hw[dir.index()];
            hw.packets += dp;
            hw.bytes += db;
            flow.touch(c.last_used_ns.map_or(now, |t| t.min(now)));
            self.table.note_counted(id);
        }
        true
    }

    fn expire(&mut self, now: u64) {
        let mut due = std::mem::take(&mut self.due_buf);
        due.clear();
        self.table.expire(now, &mut due);
        let mut removing = Vec::new();
        for &id in &due {
            let Some(flow) = self.table.get(id) else { continue };
            if flow.stage() != Stage::Offloaded {
                self.end(id, reason_for(flow));
                continue;
            }
            let state = &self.offloads[&id];
            // Without counters a rule that hides packets from software would
            // look idle at once: it lives its hard timeout instead.
            if !state.hw_counters && matches!(state.action, Action::Drop | Action::Forward { .. }) {
                let hard = state.installed_ns + self.cfg.hard_timeout_ns;
                if now < hard {
                    self.table.reschedule(id, hard);
                    continue;
                }
            }
            removing.push(id);
        }
        self.due_buf = due;
        if removing.is_empty() {
            return;
        }
        let failed = self.remove_rules(&removing, now);
        for id in removing {
            if failed.contains(&id) {
                // Keep the flow and its record; try again next poll.
                self.table.reschedule(id, now + self.cfg.poll_interval_ns);
                continue;
            }
            let Some(flow) = self.table.get(id) else { continue };
            let reason = reason_for(flow);
            self.end(id, reason);
        }
    }

    /// Removes the rules of `ids` in one batch, folding final counters in.
    /// Returns the flows whose removal failed (their rules are kept).
    fn remove_rules(&mut self, ids: &[FlowId], now: u64) -> Vec<FlowId> {
        let mut cookies = Vec::new();
        for id in ids {
            if let Some(state) = self.offloads.get(id) {
                for dir in DIRS {
                    if state.placement[dir.index()].is_some() {
                        cookies.push(Cookie::new(self.cfg.instance_id, id.0, dir));
                    }
                }
            }
        }
        let results = self.backend.remove(&cookies);
        let mut failed = Vec::new();
        for (cookie, result) in cookies.iter().zip(results) {
            let id = FlowId(cookie.flow);
            let dir = cookie.direction();
            match result {
                Ok(final_counters) => {
                    if let Some(c) = final_counters {
                        self.apply_counters(id, dir, &c, now);
                    }
                    self.drop_rule(id, dir, now);
                }
                Err(BackendError::UnknownRule { .. }) => {
                    // Already gone (removed behind our back): nothing to keep.
                    self.stats.remove_errors += 1;
                    self.drop_rule(id, dir, now);
                }
                Err(e) => {
                    self.stats.remove_errors += 1;
                    tracing::warn!(flow = %id, error = %e, "removing a rule failed; will retry");
                    if !failed.contains(&id) {
                        failed.push(id);
                    }
                }
            }
        }
        failed
    }

    fn drop_rule(&mut self, id: FlowId, dir: Direction, now: u64) {
        self.settle(id, dir);
        if let Some(state) = self.offloads.get_mut(&id) {
            if state.placement[dir.index()].take().is_some() {
                self.rules_live = self.rules_live.saturating_sub(1);
                self.stats.rules_removed += 1;
            }
            if state.placement.iter().all(Option::is_none) {
                state.removed_ns = Some(now);
            }
        }
    }

    /// Software left the packets it saw of an offloaded direction to the
    /// rule's counters, from the moment the install began. But the rule
    /// takes effect some time after that (a netlink round trip, a PMD
    /// call), and the packets in between went past it uncounted. Every
    /// packet the rule counted was seen too (software taps in front of the
    /// rule), so what was seen beyond what the rule counted slipped past:
    /// software's to count, settled once the rule's final counters are in.
    /// Bytes are settled the same way; where the rule counts a frame's
    /// length differently (a VLAN tag the NIC stripped), they are off by
    /// that difference.
    fn settle(&mut self, id: FlowId, dir: Direction) {
        let d = dir.index();
        let Some(state) = self.offloads.get_mut(&id) else { return };
        if state.placement[d].is_none() {
            return;
        }
        let (seen, counted) = (state.tapped[d], state.rule_counted[d]);
        state.tapped[d] = DirCounters::default();
        state.rule_counted[d] = DirCounters::default();
        let packets = seen.packets.saturating_sub(counted.packets);
        if packets == 0 {
            return;
        }
        let slipped = DirCounters { packets, bytes: seen.bytes.saturating_sub(counted.bytes) };
        if let Some(flow) = self.table.get_mut(id) {
            flow.sw[d].add(slipped);
            self.stats.sw_packets += packets;
            self.stats.tap_packets_skipped -= packets;
            self.stats.slipped_packets += packets;
        }
    }

    fn end(&mut self, id: FlowId, reason: EndReason) {
        if let Some(flow) = self.table.remove(id) {
            self.end_removed(id, &flow, reason);
        }
    }

    fn end_removed(&mut self, id: FlowId, flow: &Flow, reason: EndReason) {
        let state = self.offloads.remove(&id);
        let context = self.contexts.remove(id);
        let record = self.build_record(id, flow, state.as_ref(), context, reason);
        self.stats.flows_ended += 1;
        *self.stats.ended_by.entry(reason.as_str().to_string()).or_insert(0) += 1;
        if self.events.is_some() {
            let boxed = Box::new(record.clone());
            self.emit(|| Event::Expired { record: boxed });
        }
        self.records.push(record);
    }

    fn build_record(
        &self,
        id: FlowId,
        flow: &Flow,
        state: Option<&OffloadState>,
        context: Option<FlowContext>,
        end_reason: EndReason,
    ) -> FlowRecord {
        let (src, dst, sport, dport) = endpoints_of(flow);
        let init = flow.initiator();
        let offload = state.filter(|s| s.installed_ns != 0).map(|s| OffloadRecord {
            backend: self.backend.name().to_string(),
            action: s.action,
            placement: [s.placement_or_last(init), s.placement_or_last(init.reverse())],
            hw_counters: s.hw_counters,
            installed_ns: s.installed_ns,
            removed_ns: s.removed_ns.filter(|_| end_reason != EndReason::Shutdown || s.removed_ns.is_some()),
        });
        FlowRecord {
            id,
            proto: flow.key.proto,
            src,
            dst,
            sport,
            dport,
            vlan: flow.key.vlan_outer,
            vlan_inner: flow.key.vlan_inner,
            ingress: flow.port(init),
            start_ns: flow.first_ns,
            end_ns: flow.last_ns(),
            orig: DirRecord::of(flow, init),
            reply: DirRecord::of(flow, init.reverse()),
            tcp_state: flow.tcp,
            class: self.classifier.class_name(flow.class).map(str::to_string),
            offload,
            refused: state.and_then(|s| s.refusal.as_ref()).map(|r| r.to_string()),
            context,
            end_reason,
        }
    }

    /// Ends every flow: removes all rules (unless `keep_rules`), folds their
    /// final counters in and writes every record with reason `shutdown`.
    pub fn shutdown(&mut self, keep_rules: bool) {
        let now = self.now_ns;
        let ids = self.table.ids();
        if !keep_rules {
            let offloaded: Vec<FlowId> = ids
                .iter()
                .copied()
                .filter(|id| self.offloads.get(id).is_some_and(|s| s.placement.iter().any(Option::is_some)))
                .collect();
            if self.rules_live > 0 {
                self.read_counters(now);
            }
            for chunk in offloaded.chunks(self.cfg.batch_size.max(2)) {
                self.remove_rules(chunk, now);
            }
        } else if self.rules_live > 0 {
            self.read_counters(now);
            // The rules stay, but their flows' records are written now.
            for &id in &ids {
                for dir in DIRS {
                    self.settle(id, dir);
                }
            }
        }
        for id in ids {
            self.end(id, EndReason::Shutdown);
        }
        self.queue.clear();
    }

    // ---- the control API: what an external application asks ----

    pub fn flow(&self, id: FlowId) -> Option<FlowView> {
        let flow = self.table.get(id)?;
        Some(self.view(id, flow))
    }

    fn view(&self, id: FlowId, flow: &Flow) -> FlowView {
        let (src, dst, sport, dport) = endpoints_of(flow);
        let init = flow.initiator();
        let offload = self.offloads.get(&id).cloned();
        let rules = offload
            .as_ref()
            .map(|s| {
                DIRS.iter()
                    .filter(|d| s.placement[d.index()].is_some())
                    .map(|d| hex(&Cookie::new(self.cfg.instance_id, id.0, *d).to_bytes()))
                    .collect()
            })
            .unwrap_or_default();
        FlowView {
            id,
            key: flow.key.to_string(),
            proto: flow.key.proto,
            src,
            dst,
            sport,
            dport,
            vlan: flow.key.vlan_outer,
            ingress: flow.port(init),
            stage: flow.stage(),
            tcp_state: flow.tcp,
            class: self.classifier.class_name(flow.class).map(str::to_string),
            start_ns: flow.first_ns,
            last_ns: flow.last_ns(),
            orig: DirRecord::of(flow, init),
            reply: DirRecord::of(flow, init.reverse()),
            packets: flow.packets(),
            bytes: flow.bytes(),
            offload,
            rules,
            context: self.contexts.get(id).cloned(),
            idle_deadline_ns: self.table.deadline(flow),
        }
    }

    /// Every live flow as (id, flow), for listing and sorting.
    pub fn flows(&self) -> impl Iterator<Item = (FlowId, &Flow)> + '_ {
        self.table.iter()
    }

    pub fn view_of(&self, id: FlowId) -> Option<FlowView> {
        self.flow(id)
    }

    /// Merges an application's context into a flow; a verdict on a flow
    /// still undecided takes effect at once.
    pub fn set_context(&mut self, id: FlowId, update: FlowContext) -> Result<FlowContext, EngineError> {
        if self.table.get(id).is_none() {
            return Err(EngineError::NoSuchFlow(id));
        }
        let ctx = self.contexts.update(id, update)?.clone();
        let flow = self.table.get_mut(id).expect("checked above");
        flow.set_has_context(true);
        if flow.stage() == Stage::Tracking && ctx.verdict.is_some() {
            self.classify(id);
        }
        Ok(ctx)
    }

    pub fn context(&self, id: FlowId) -> Option<&FlowContext> {
        self.contexts.get(id)
    }

    /// The offload side of a flow, without building a whole `FlowView`
    /// (for scans over every flow: counting placements, filtering).
    pub fn offload_state(&self, id: FlowId) -> Option<&OffloadState> {
        self.offloads.get(&id)
    }

    /// See `FlowTable::rebuild_largest`.
    pub fn rebuild_largest_flows(&mut self, want: usize) {
        self.table.rebuild_largest(want);
    }

    /// The offload side of every live flow that has one (queued, offloaded,
    /// refused or taken back): far fewer than all flows, so statistics over
    /// placements read these instead of scanning the table.
    pub fn offload_states(&self) -> impl Iterator<Item = (FlowId, &OffloadState)> + '_ {
        self.offloads.iter().map(|(id, s)| (*id, s))
    }

    /// Asks for a flow to be offloaded with `action` (installed at the next
    /// poll, with the usual limits).
    pub fn request_offload(&mut self, id: FlowId, action: Action) -> Result<(), EngineError> {
        let flow = self.table.get(id).ok_or(EngineError::NoSuchFlow(id))?;
        match flow.stage() {
            Stage::Offloaded | Stage::Queued => {
                return Err(EngineError::WrongStage {
                    id,
                    stage: flow.stage().as_str(),
                    what: "already offloaded or queued",
                })
            }
            _ => {}
        }
        if !self.caps.supports_action(&action) {
            return Err(EngineError::Unsupported { backend: self.backend.name().into(), action });
        }
        let baseline = self.offloads.remove(&id);
        self.enqueue(id, action);
        // Counters already folded in stay; a new rule starts from zero.
        if let (Some(old), Some(new)) = (baseline, self.offloads.get_mut(&id)) {
            new.baseline = [RuleCounters::default(); 2];
            new.pinned_software = false;
            let _ = old;
        }
        Ok(())
    }

    /// Takes a flow back to software: its rules are removed now (final
    /// counters folded in) and the classifier won't offload it again.
    pub fn request_unoffload(&mut self, id: FlowId) -> Result<(), EngineError> {
        let flow = self.table.get(id).ok_or(EngineError::NoSuchFlow(id))?;
        match flow.stage() {
            Stage::Offloaded => {
                let now = self.now_ns;
                if !self.remove_rules(&[id], now).is_empty() {
                    return Err(EngineError::Backend(BackendError::Io {
                        backend: self.backend.name().into(),
                        message: "rule removal failed; the flow stays offloaded".into(),
                    }));
                }
                let ts_ns = now;
                self.emit(|| Event::Unoffloaded { id, ts_ns });
            }
            Stage::Queued => self.queue.retain(|q| *q != id),
            s => return Err(EngineError::WrongStage { id, stage: s.as_str(), what: "not offloaded" }),
        }
        if let Some(state) = self.offloads.get_mut(&id) {
            state.pinned_software = true;
        }
        self.table.set_stage(id, Stage::Software);
        Ok(())
    }

    /// Ends a flow now (its rules removed first), with reason `evicted`.
    pub fn evict(&mut self, id: FlowId) -> Result<FlowRecord, EngineError> {
        let flow = self.table.get(id).ok_or(EngineError::NoSuchFlow(id))?;
        if flow.stage() == Stage::Offloaded && !self.remove_rules(&[id], self.now_ns).is_empty() {
            return Err(EngineError::Backend(BackendError::Io {
                backend: self.backend.name().into(),
                message: "rule removal failed; the flow is kept".into(),
            }));
        }
        self.end(id, EndReason::Evicted);
        Ok(self.records.last().cloned().expect("just ended"))
    }
}

impl OffloadState {
    /// Where a direction's rule is, or was before it was removed.
    fn placement_or_last(&self, dir: Direction) -> Option<Placement> {
        self.placement[dir.index()].or(self.installed_placement[dir.index()])
    }
}

fn reason_for(flow: &Flow) -> EndReason {
    if flow.tcp.is_closed() {
        EndReason::TcpClose
    } else {
        EndReason::Idle
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
