//! A shard: what one worker owns. It takes parsed packets into its own
//! flow table, runs the (shared, read-only) classifier, asks the offload
//! thread to install and remove the per-direction rules of its flows,
//! folds the counters and outcomes that come back into them, ages flows
//! out (software ones by their packets, offloaded ones by their counters)
//! and emits one record per flow. It never calls the NIC itself.
//!
//! A flow whose rules are on their way in is `installing`, on their way
//! out `removing`; it stays in the table until the offload thread answers,
//! so whatever its rules counted meanwhile reaches its record.
//!
//! Counting rule: a packet is counted once, by whoever handled it. Before
//! the rule is in place software counts it; after, the rule's counters do,
//! and software skips packets it sees only as a tap of offloaded traffic,
//! from the moment it asks for the rule; what it skipped beyond what the
//! rule counted is software's again once the rule is gone (`settle`).

use crate::classifier::{Classifier, Decision, CLASS_VERDICT};
use crate::journal::JournalLine;
use crate::link::{Request, Response, ShardLink};
use crate::record::{endpoints_of, DirRecord, EndReason, Event, FlowRecord, OffloadRecord, RecordKind, Teardown};
use crossbeam_channel::{RecvTimeoutError, TryRecvError, TrySendError};
use flowtable_config::Config;
use flowtable_hw::{
    Action, BackendError, Capabilities, Cookie, MatchFields, Placement, PlacementPolicy, Refusal, RefusalKind,
    RuleCounters, RuleSpec,
};
use flowtable_sw::context::{ContextError, ContextStore, FlowContext, Verdict};
use flowtable_sw::packet::{TCP_FIN, TCP_RST};
use flowtable_sw::pipeline::{Tuner, RING};
use flowtable_sw::table::{FlowMap, NO_SLOT};
use flowtable_sw::{
    DirCounters, Direction, Flow, FlowId, FlowTable, Lookup, PacketInfo, PortMap, Stage, TableConfig, TcpState,
};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

mod active;
mod adopt;
mod aging;
mod lifecycle;
mod rate;
mod view;

pub use adopt::AdoptRefusal;
pub use rate::{Rate, SAMPLE_NS};
pub use view::{hex, FlowView};

const DIRS: [Direction; 2] = [Direction::LoToHi, Direction::HiToLo];

/// Most held-back requests one call hands to the offload thread.
const OUTBOX_PER_CALL: usize = 256;

/// How long a free-running poll spends on the offload thread's answers at
/// most (one answer past it: each holds at most `COUNTERS_PER_ANSWER`
/// rules' counters); the rest wait for the next poll.
const ANSWERS_TIME_PER_POLL: Duration = Duration::from_millis(1);

/// Packets a caller that gathers its own batches hands `process_batch` at
/// once (the runtime's dispatcher hands up to `DISPATCH_BATCH`): the
/// pipeline's fill and drain (`2 × lag` steps without a lookup) are paid
/// once a call.
pub const BATCH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineConfig {
    pub instance_id: u32,
    pub poll_interval_ns: u64,
    pub batch_size: usize,
    pub placement: PlacementPolicy,
    pub hard_timeout_ns: u64,
    pub max_queued: usize,
    /// Most bytes this shard's flow contexts may hold together.
    pub max_context_bytes: usize,
    /// Inline pairs: where a direction not seen yet will arrive.
    pub ports: PortMap,
    /// A flow lasting longer than this gives an interim record every
    /// period (0: never; one record per flow, at its end).
    pub active_timeout_ns: u64,
    /// Send the offload journal (see `journal`) each offloaded flow's
    /// entry, so a restart can take the flow over with its rules.
    pub journal: bool,
    /// How many workers (shards) the run has, for the journal.
    pub workers: u8,
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
            max_context_bytes: c.table.max_context_bytes,
            ports: c.port_map().unwrap_or_default(),
            active_timeout_ns: (c.export.active_timeout_s * 1e9) as u64,
            journal: c.backend.journal().is_some(),
            workers: 1,
        }
    }
}

/// For the read begun at `.0`: what software had seen before it and the
/// time of the first packet from after its start (see
/// `OffloadState::seen_before_read`).
pub type SeenBeforeRead = Option<(u64, Option<(DirCounters, u64)>)>;

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
    /// When this run took the flow and its rules over from an earlier one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adopted_ns: Option<u64>,
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
    /// For the journal, per direction: what slipped past the rule going
    /// in, estimated at each counter read as what software had seen of
    /// the packets from before the read less what the rule had counted
    /// (`slip_seen`, the last estimate), settled once two in a row agree
    /// (`slip`). One read can be off by a packet that crossed the rule
    /// while it was made; two that agree are taken as the figure, which
    /// the journal adds to software's part, since a killed run never
    /// settles.
    #[serde(skip)]
    pub slip_seen: [Option<DirCounters>; 2],
    #[serde(skip)]
    pub slip: [Option<DirCounters>; 2],
    /// A read whose estimate waits for software to handle what came
    /// before it: when it began and ended, and what the rule had counted.
    #[serde(skip)]
    pub slip_read: [Option<(u64, u64, DirCounters)>; 2],
    /// While `slip` is not settled, per direction: the time of the last
    /// packet software took.
    #[serde(skip)]
    pub last_tap_ns: [u64; 2],
    /// While `slip` is not settled, per direction, for the read begun last
    /// (by its start): what software had seen before it and the time of
    /// the first packet from after its start; none where that can't be
    /// known because such a packet came before word that the read had
    /// begun.
    #[serde(skip)]
    pub seen_before_read: [SeenBeforeRead; 2],
    pub refusal: Option<Refusal>,
    /// Taken back to software on request: the classifier won't offload it again.
    pub pinned_software: bool,
    /// Offloaded on request (the control API), not by the classifier: a
    /// restart keeps it so whatever the configuration says.
    #[serde(skip)]
    pub requested: bool,
    /// What becomes of the flow once its rules are gone (or its install
    /// withdrawn): set while it is `removing`, or when it must go while
    /// `installing`.
    #[serde(skip)]
    pub then: Option<Then>,
    /// A withdrawal of its install was asked for and not answered yet.
    #[serde(skip)]
    pub cancel_sent: bool,
    /// Per direction, when its rule's counters were last read, what that
    /// read added and the time since the read before: the NIC-counted
    /// part of the flow's current rate (`rate`).
    #[serde(skip)]
    pub read_ns: [u64; 2],
    #[serde(skip)]
    pub last_read: [DirCounters; 2],
    #[serde(skip)]
    pub read_interval_ns: [u64; 2],
}

/// What becomes of a flow once its rules are gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Found idle: it ends, unless the final counters show it went on.
    Idle,
    /// Taken back to software on request.
    Software,
    /// Offloaded again with this action (a verdict that asked for another
    /// than the rules in place had): as `Software`, then installed anew.
    Offload(Action),
    /// Ends with this reason.
    End(EndReason),
    /// The connection closed (RST, or FIN from both sides) while its rules
    /// were in: it goes on in software, never offloaded again, and ends
    /// `tcp-close` once its closing timeout passes.
    Close,
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
            adopted_ns: None,
            baseline: [RuleCounters::default(); 2],
            tapped: [DirCounters::default(); 2],
            rule_counted: [DirCounters::default(); 2],
            slip_seen: [None; 2],
            slip: [None; 2],
            slip_read: [None; 2],
            last_tap_ns: [0; 2],
            seen_before_read: [None; 2],
            refusal: None,
            pinned_software: false,
            requested: false,
            then: None,
            cancel_sent: false,
            read_ns: [0; 2],
            last_read: [DirCounters::default(); 2],
            read_interval_ns: [0; 2],
        }
    }
}

/// A shard's counters (with the offload thread's, the engine's).
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
    /// Interim records of flows past the active timeout.
    pub interim_records: u64,
    /// Flows taken over, rules and all, from an earlier run.
    pub flows_adopted: u64,
    /// Flows whose rules a stop with `keep_rules` left for the next run,
    /// which writes their records (no record from this run).
    pub flows_left_in_place: u64,
}

impl EngineStats {
    /// Adds another shard's (or the offload thread's) counters to these.
    pub fn add(&mut self, o: &EngineStats) {
        self.sw_packets += o.sw_packets;
        self.tap_packets_skipped += o.tap_packets_skipped;
        self.slipped_packets += o.slipped_packets;
        self.untracked_table_full += o.untracked_table_full;
        self.orphan_fragments += o.orphan_fragments;
        self.flows_created += o.flows_created;
        self.interim_records += o.interim_records;
        self.flows_adopted += o.flows_adopted;
        self.flows_left_in_place += o.flows_left_in_place;
        self.flows_ended += o.flows_ended;
        self.rules_installed += o.rules_installed;
        self.rules_removed += o.rules_removed;
        self.flows_offloaded += o.flows_offloaded;
        self.flows_refused += o.flows_refused;
        for (k, v) in &o.refusals {
            *self.refusals.entry(k.clone()).or_insert(0) += v;
        }
        self.remove_errors += o.remove_errors;
        self.counter_reads += o.counter_reads;
        self.counter_errors += o.counter_errors;
        self.unknown_rules += o.unknown_rules;
        self.mark_hits += o.mark_hits;
        self.mark_misses += o.mark_misses;
        for (k, v) in &o.ended_by {
            *self.ended_by.entry(k.clone()).or_insert(0) += v;
        }
    }

    /// The offload thread's part of the counters.
    pub fn from_coordinator(c: &crate::coordinator::CoordinatorStats) -> EngineStats {
        EngineStats {
            rules_installed: c.rules_installed,
            rules_removed: c.rules_removed,
            remove_errors: c.remove_errors,
            counter_reads: c.counter_reads,
            counter_errors: c.counter_errors,
            unknown_rules: c.unknown_rules,
            refusals: c.retried.clone(),
            ..EngineStats::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no flow with id {0}")]
    NoSuchFlow(FlowId),
    #[error("flow {id} is {stage}: {what}")]
    WrongStage { id: FlowId, stage: &'static str, what: &'static str },
    #[error("backend {backend} does not support action {action}")]
    Unsupported { backend: String, action: Action },
    #[error(transparent)]
    Context(#[from] ContextError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// What a verdict given to a flow does to it (`Shard::set_context`).
enum VerdictPlan {
    Nothing,
    /// Undecided: the classifier decides now, the verdict first.
    Classify,
    /// Back to software.
    Unoffload,
    /// In software: offloaded with this action.
    Offload(Action),
    /// Offloaded (or on its way) with another action: its rules replaced.
    Replace(Action),
}

/// What the backend is, as a shard needs to know it without holding it.
#[derive(Debug, Clone)]
pub struct BackendInfo {
    pub name: String,
    pub capabilities: Capabilities,
}

pub struct Shard {
    table: FlowTable,
    contexts: ContextStore,
    classifier: Arc<Classifier>,
    backend: BackendInfo,
    link: ShardLink,
    /// Requests the full queue did not take yet, in order.
    outbox: VecDeque<Request>,
    /// Answers still owed by the offload thread (installs, removals,
    /// withdrawals and asked-for reads).
    outstanding: usize,
    /// The offload thread is gone: nothing more will be answered.
    orphaned: bool,
    /// Replay's lockstep: answers are taken only at the end of an epoch.
    lockstep: bool,
    offloads: FlowMap<OffloadState>,
    /// Flows waiting in `stage` queued (the outbox holds their install).
    queued: usize,
    /// Flows whose rule removal failed, asked again at the next poll.
    retry_removal: Vec<FlowId>,
    cfg: EngineConfig,
    now_ns: u64,
    epoch_done: Option<u64>,
    stats: EngineStats,
    records: Vec<FlowRecord>,
    events: Option<Vec<Event>>,
    due_buf: Vec<FlowId>,
    active: active::ActiveTimeout,
    rates: rate::RateSampler,
    /// Journal lines of a stop that keeps its rules (`take_parting`).
    parting: Vec<JournalLine>,
    /// Flows of an earlier run ended at start, their gone lines held
    /// (`release_left`).
    left_gone: Vec<u64>,
    /// Removal answers held while software may still take packets the
    /// rules counted (see `HeldRemoval`).
    held: FlowMap<HeldRemoval>,
    /// Shutdown has begun: answers are no longer held.
    stopping: bool,
    /// Which lookup schedule `process_batch` runs (`flowtable_sw::pipeline`).
    tuner: Tuner,
    /// `process_batch`'s rings of hashes and slots, here rather than on
    /// its stack so that a call of one packet (marked packets split a
    /// batch) does not first fill 1.5 kB; every entry is written before it
    /// is read.
    ring_hashes: [u64; RING],
    ring_slots: [u32; RING],
}

/// How long a removal's answer is held at most, past the removal, for the
/// packets its rules counted to reach software (see `HeldRemoval`).
pub const REMOVAL_GRACE_NS: u64 = 50_000_000;

/// A removal's answer, held. Where software taps in front of the rules
/// (AF_PACKET before tc), every packet a rule counted reaches software
/// too, but some milliseconds late: a capture ring hands packets over in
/// blocks. Settled at once, the rules' final counters would include
/// packets software had not taken yet, which would hide as many that
/// slipped past the rules going in, and then be counted by software too,
/// the flow being back in software when they come. So the flow stays
/// `removing` (software sets its packets aside as the rules' own) until it
/// has taken a packet from after the removal in each direction, or for
/// `REMOVAL_GRACE_NS`, and only then are the final counters settled.
#[derive(Debug)]
pub struct HeldRemoval {
    results: Vec<(Direction, Result<Option<RuleCounters>, BackendError>)>,
    /// The offload thread's clock when the removal returned.
    ended_ns: u64,
    /// Per direction: software took a packet from after it.
    passed: [bool; 2],
    deadline_ns: u64,
}

impl Shard {
    pub fn new(
        table: TableConfig,
        classifier: Arc<Classifier>,
        backend: BackendInfo,
        link: ShardLink,
        cfg: EngineConfig,
    ) -> Shard {
        Shard {
            table: FlowTable::new(table),
            contexts: ContextStore::with_limit(cfg.max_context_bytes),
            classifier,
            backend,
            link,
            outbox: VecDeque::new(),
            outstanding: 0,
            orphaned: false,
            lockstep: false,
            offloads: FlowMap::default(),
            queued: 0,
            retry_removal: Vec::new(),
            cfg,
            now_ns: 0,
            epoch_done: None,
            stats: EngineStats::default(),
            records: Vec::new(),
            events: None,
            due_buf: Vec::new(),
            active: active::ActiveTimeout::new(cfg.active_timeout_ns),
            rates: rate::RateSampler::default(),
            parting: Vec::new(),
            left_gone: Vec::new(),
            held: FlowMap::default(),
            stopping: false,
            tuner: Tuner::new(),
            ring_hashes: [0; RING],
            ring_slots: [NO_SLOT; RING],
        }
    }

    pub fn index(&self) -> u8 {
        self.table.config().shard
    }
    pub fn table(&self) -> &FlowTable {
        &self.table
    }
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }
    pub fn backend(&self) -> &BackendInfo {
        &self.backend
    }
    /// The ports' zones, for parsing: `parse_packet(.., ports().ingress(port))`.
    pub fn ports(&self) -> &PortMap {
        &self.cfg.ports
    }
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }
    /// Flows whose install waits in this shard for room in the queue.
    pub fn queued(&self) -> usize {
        self.queued
    }
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }

    /// Replaces the classifier and timeouts (configuration reload). Flows
    /// already decided keep their decision and the name of the rule that
    /// made it; undecided ones are matched anew at once, so that a flow
    /// that sees no further packet still names its rule.
    pub fn reload(&mut self, classifier: Arc<Classifier>, timeouts: flowtable_sw::Timeouts) {
        self.table.set_timeouts(timeouts);
        for id in self.table.ids() {
            if let Some(f) = self.table.get_mut(id) {
                f.class = if f.stage() == Stage::Tracking && f.class != CLASS_VERDICT {
                    classifier.owner(f)
                } else {
                    self.classifier.remap_class(f.class, &classifier)
                };
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

    /// Records of flows that ended since the last `drain_records`.
    pub fn records(&self) -> &[FlowRecord] {
        &self.records
    }

    fn emit(&mut self, event: impl FnOnce() -> Event) {
        if let Some(ev) = self.events.as_mut() {
            ev.push(event());
        }
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
    /// are handled in order, exactly as one `process` call each. One
    /// pipeline runs over the whole batch, however long: its fill and
    /// drain (`2 × lag` steps of the schedule without a lookup) are paid
    /// once a call, and each packet's hash and slot live in a ring of
    /// `RING` entries from its hash to its lookup. The shard's `Tuner`
    /// picks the schedule, timing the candidates now and then on this
    /// machine and this table.
    pub fn process_batch(&mut self, pkts: &[PacketInfo], ts_ns: &[u64]) {
        debug_assert_eq!(pkts.len(), ts_ns.len(), "one timestamp per packet");
        let n = pkts.len().min(ts_ns.len());
        if n == 0 {
            return;
        }
        let pick = self.tuner.pick();
        for step in pick.schedule(n) {
            for i in step.hash {
                self.ring_hashes[i % RING] = self.table.prefetch_index(&pkts[i].key);
            }
            for i in step.prefetch {
                self.ring_slots[i % RING] = self.table.prefetch_flow(self.ring_hashes[i % RING]);
            }
            for i in step.lookup {
                let (hash, slot) = (self.ring_hashes[i % RING], self.ring_slots[i % RING]);
                self.process_probed(&pkts[i], hash, slot, ts_ns[i]);
            }
        }
        self.tuner.ran(pick, n);
    }

    /// Makes `process_batch` always run `schedule`, one of
    /// `flowtable_sw::pipeline::CANDIDATES`, never timing the others
    /// (false, and nothing changed, if it is not one).
    pub fn pin_lookup_schedule(&mut self, schedule: (usize, usize)) -> bool {
        match Tuner::pinned(schedule) {
            Some(t) => {
                self.tuner = t;
                true
            }
            None => false,
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
    /// as the pair would have carried it (on a port and its egress twin it
    /// stays a pass: the host's own stack is the path); `mark: 0` marks
    /// packets with the flow's slot plus one, so software finds the flow
    /// without hashing.
    pub(super) fn rule_action(&self, action: Action, id: FlowId, port: u8) -> Action {
        match action {
            Action::Mark { mark: 0 } => Action::Mark { mark: id.index().wrapping_add(1) },
            Action::Pass => self.cfg.ports.inline_partner(port).map_or(Action::Pass, |to| Action::Forward { port: to }),
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
        self.process_probed(pkt, hash, NO_SLOT, now_ns);
    }

    /// `process_hashed` with the slot `FlowTable::prefetch_flow` gave.
    #[inline]
    fn process_probed(&mut self, pkt: &PacketInfo, hash: u64, slot: u32, now_ns: u64) {
        if now_ns > self.now_ns {
            self.now_ns = now_ns;
        }
        let id = match self.table.lookup_or_insert_probed(pkt, hash, slot, now_ns) {
            Lookup::Found(id) => id,
            other => match self.not_found(pkt, other, now_ns) {
                Some(id) => id,
                None => return,
            },
        };
        self.account(id, pkt, now_ns);
    }

    /// A lookup that found no flow: a new one is started (the flow it
    /// evicted ended, the event sent) or the packet is left untracked.
    /// Out of line, so the path of a known flow's packet stays short.
    #[inline(never)]
    fn not_found(&mut self, pkt: &PacketInfo, lookup: Lookup, now_ns: u64) -> Option<FlowId> {
        match lookup {
            Lookup::Found(id) => Some(id),
            Lookup::Inserted { id, evicted } => {
                self.stats.flows_created += 1;
                self.active.start(id, now_ns);
                if let Some((old, flow)) = evicted {
                    self.end_removed(old, &flow, EndReason::TableFull);
                }
                if self.events.is_some() {
                    let key = pkt.key.to_string();
                    let (src, dst, sport, dport) = self.table.get(id).map(endpoints_of).unwrap_or_else(|| {
                        let e = pkt.key.endpoints(pkt.dir);
                        (e.src, e.dst, e.sport, e.dport)
                    });
                    let proto = pkt.key.proto;
                    // The shard's clock, never behind an event already sent
                    // (a packet may carry an older time than a sweep's).
                    let ts_ns = self.now_ns;
                    let (icmp_type, icmp_code) = match proto {
                        1 | 58 => (Some(pkt.icmp[0]), Some(pkt.icmp[1])),
                        _ => (None, None),
                    };
                    self.emit(|| Event::New { id, key, proto, src, dst, sport, dport, icmp_type, icmp_code, ts_ns });
                }
                Some(id)
            }
            Lookup::Full => {
                self.stats.untracked_table_full += 1;
                None
            }
            Lookup::OrphanFragment => {
                self.stats.orphan_fragments += 1;
                None
            }
        }
    }

    /// Counts a packet of a known flow once and classifies undecided flows.
    #[inline]
    fn account(&mut self, id: FlowId, pkt: &PacketInfo, now_ns: u64) {
        let mut stage = self.table.get(id).map_or(Stage::Free, |f| f.stage());
        if stage == Stage::Removing && !self.held.is_empty() {
            if self.pass_held(id, pkt, now_ns) {
                return;
            }
            stage = self.table.get(id).map_or(Stage::Free, |f| f.stage());
        }
        // Software skips a packet its flow's rule counts: one that reached
        // software although a rule with counters took it, because software
        // taps everything (AF_PACKET before tc) or because the action
        // delivers to software (mark, mirror). From the moment the rule is
        // asked for, as it may take effect before its answer comes back;
        // what it then did not count is settled to software (`settle`). A
        // packet of a rule without counters is software's to count.
        let d = pkt.dir.index();
        let closing = pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0 && pkt.key.proto == 6;
        // Rules that leave FIN and RST to software never count them.
        let rule_skips = closing && self.backend.capabilities.tcp_teardown_to_software;
        let tapped = if !rule_skips && matches!(stage, Stage::Installing | Stage::Offloaded | Stage::Removing) {
            let caps = &self.backend.capabilities;
            let counters = caps.counters;
            // On an egress twin the rule may run before the taps (tc's
            // egress hook runs before AF_PACKET's): software then sees only
            // what the rule let go on, after counting it.
            let before_taps = caps.egress_rules_before_taps && self.cfg.ports.is_egress(pkt.port);
            let sees_offloaded = caps.software_sees_offloaded;
            self.offloads.get_mut(&id).filter(|s| {
                let rule_counts = match stage {
                    Stage::Installing => counters,
                    _ => s.placement[d].is_some() && s.hw_counters,
                };
                let sees = if before_taps { s.action == Action::Pass } else { sees_offloaded };
                rule_counts && (sees || matches!(s.action, Action::Mark { .. } | Action::Mirror { .. }))
            })
        } else {
            None
        };
        let count = match tapped {
            Some(state) => {
                let tap = DirCounters { packets: 1, bytes: pkt.wire_len as u64 };
                if state.slip[d].is_some() || !self.cfg.journal {
                    state.tapped[d].add(tap);
                } else if let Some((seen, counted)) =
                    // Until what slipped past the rule going in is known
                    // (a few polls after the install).
                    Shard::tap_unsettled(state, self.link.read_begun.get(), d, now_ns, tap)
                {
                    self.exact_read(id, pkt.dir, seen, counted);
                }
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
        } else if closing && stage != Stage::Software {
            self.tear_down_if_closed(id);
        }
    }

    /// A connection that closed (RST, or FIN from both sides) while it had
    /// or was getting rules: the rules go, their final counters are folded
    /// in, and the flow ends `tcp-close` after its closing timeout, as the
    /// kernel flowtable tears a flow down when FIN or RST reaches software.
    #[cold]
    fn tear_down_if_closed(&mut self, id: FlowId) {
        let Some(flow) = self.table.get(id) else { return };
        if !flow.tcp.is_closed() {
            // One side closed: the packet and the state are software's,
            // and the journal's, for a restart before the other side does.
            if flow.stage() == Stage::Offloaded {
                self.journal(id);
            }
            return;
        }
        let stage = flow.stage();
        let Some(state) = self.offloads.get_mut(&id) else { return };
        match (stage, state.then) {
            (Stage::Offloaded, None | Some(Then::Idle)) => self.request_removal(id, Then::Close),
            (Stage::Queued | Stage::Installing, None | Some(Then::Idle)) => self.request_cancel(id, Then::Close),
            // Already going for being idle: what follows is the close's.
            (Stage::Removing, Some(Then::Idle)) => state.then = Some(Then::Close),
            // A new offload asked for a connection now closed: not made.
            (Stage::Removing | Stage::Queued | Stage::Installing, Some(Then::Offload(_))) => {
                state.then = Some(Then::Close)
            }
            _ => {}
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
                self.emit_classified(id, || "software".into());
            }
            Decision::Offload(action) => {
                if self.in_flight() >= self.cfg.max_queued {
                    // Stays undecided and asks again on its next packet.
                    return;
                }
                self.emit_classified(id, || format!("offload {}", action.kind()));
                self.enqueue(id, action);
            }
        }
    }

    /// Flows whose install is asked for and not answered.
    fn in_flight(&self) -> usize {
        self.table
            .count_by_stage()
            .filter(|(s, _)| matches!(s, Stage::Queued | Stage::Installing))
            .map(|(_, n)| n)
            .sum()
    }

    /// `decision` is made only when someone listens for events.
    fn emit_classified(&mut self, id: FlowId, decision: impl FnOnce() -> String) {
        if self.events.is_some() {
            let class = self.table.get(id).and_then(|f| self.classifier.class_name(f.class)).map(str::to_string);
            let ts_ns = self.now_ns;
            self.emit(|| Event::Classified { id, class, decision: decision(), ts_ns });
        }
    }

    /// Asks the offload thread for the flow's rules, or refuses at once
    /// what the backend says it can't do.
    fn enqueue(&mut self, id: FlowId, action: Action) {
        let Some(flow) = self.table.get(id) else { return };
        let name = &self.backend.name;
        let caps = &self.backend.capabilities;
        let rule_actions = DIRS.map(|dir| self.rule_action(action, id, self.rule_port(flow, dir)));
        let unsupported = if let Some(a) = rule_actions.iter().find(|a| !caps.supports_action(a)) {
            Some(Refusal {
                kind: RefusalKind::UnsupportedAction,
                message: format!("{name} does not support the {} action", a.kind()),
            })
        } else {
            caps.matches
                .check(&flow.key)
                .err()
                .map(|m| Refusal { kind: RefusalKind::UnsupportedMatch, message: format!("{name}: {m}") })
        };
        let mut state = OffloadState::queued(action);
        if let Some(refusal) = unsupported {
            self.refuse(id, &mut state, refusal);
            self.offloads.insert(id, state);
            return;
        }
        for dir in DIRS {
            let port = self.table.get(id).map(|f| self.rule_port(f, dir));
            if let Some(port) = port {
                self.table.expect_port(id, dir, port);
            }
        }
        let flow = self.table.get(id).expect("checked above");
        let spec = |dir: Direction| {
            let port = flow.port(dir);
            RuleSpec {
                cookie: Cookie::new(self.cfg.instance_id, id.0, dir),
                matches: MatchFields { key: flow.key, dir, port },
                action: self.rule_action(action, id, port),
                policy: self.cfg.placement,
            }
        };
        let rules = Box::new(DIRS.map(spec));
        let bytes = flow.bytes();
        self.offloads.insert(id, state);
        self.table.set_stage(id, Stage::Queued);
        self.queued += 1;
        self.outstanding += 1;
        self.send(Request::Install { id, rules, bytes });
    }

    /// Hands a request to the offload thread, or keeps it in order for
    /// when its queue has room.
    fn send(&mut self, req: Request) {
        self.outbox.push_back(req);
        self.flush_outbox();
    }

    pub fn flush_outbox(&mut self) {
        // A bounded number a call: a long backlog (thousands of installs
        // held back by a full queue) goes out over a few calls, never
        // holding the packet path for all of it.
        for _ in 0..OUTBOX_PER_CALL {
            let Some(req) = self.outbox.pop_front() else { return };
            let install = match &req {
                Request::Install { id, .. } => Some(*id),
                _ => None,
            };
            match self.link.to_offload.try_send(req) {
                Ok(()) => {
                    if let Some(id) = install {
                        if self.table.get(id).is_some_and(|f| f.stage() == Stage::Queued) {
                            self.queued -= 1;
                            self.table.set_stage(id, Stage::Installing);
                        }
                    }
                }
                Err(TrySendError::Full(req)) => {
                    self.outbox.push_front(req);
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.orphan();
                    return;
                }
            }
        }
    }

    /// The offload thread is gone (it ended or failed): nothing we asked
    /// will be answered. Flows keep what they counted; those on their way
    /// in go on in software.
    fn orphan(&mut self) {
        if self.orphaned {
            return;
        }
        self.orphaned = true;
        self.outbox.clear();
        self.outstanding = 0;
        tracing::error!(shard = self.index(), "the offload thread is gone; flows stay in software");
        for id in self.table.ids() {
            let stage = self.table.get(id).map(|f| f.stage());
            if matches!(stage, Some(Stage::Queued | Stage::Installing)) {
                self.settle_all(id);
                self.table.set_stage(id, Stage::Software);
            }
        }
        self.queued = 0;
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

    /// Moves the shard's clock to `now_ns` (never back).
    pub fn advance(&mut self, now_ns: u64) {
        if now_ns > self.now_ns {
            self.now_ns = now_ns;
        }
    }

    /// The slow path, called often (every few ms of packet or wall time):
    /// takes the offload thread's answers, ages flows, sends what it asks.
    /// In lockstep the answers are taken only by `wait_epoch`, at the end
    /// of an epoch, so when they land never depends on thread timing.
    pub fn poll(&mut self, now_ns: u64) {
        self.advance(now_ns);
        if !self.lockstep {
            // A bounded share a poll: answers left over wait, in order, for
            // the next one, and packets never wait for a whole backlog.
            self.take_some_responses(Some(std::time::Instant::now() + ANSWERS_TIME_PER_POLL));
        }
        self.release_held_removals(self.now_ns, false);
        self.expire(self.now_ns);
        self.flush_outbox();
        self.sample_rates(self.now_ns);
    }

    /// Replay's lockstep on or off (see `Coordinator`).
    pub fn set_lockstep(&mut self, on: bool) {
        self.lockstep = on;
    }

    /// Takes every answer waiting from the offload thread, without blocking.
    pub fn take_responses(&mut self) -> usize {
        self.take_some_responses(None)
    }

    /// Takes the answers waiting, without blocking, until `until` if given.
    fn take_some_responses(&mut self, until: Option<std::time::Instant>) -> usize {
        let mut n = 0;
        while until.is_none_or(|t| n == 0 || std::time::Instant::now() < t) {
            match self.link.from_offload.try_recv() {
                Ok(resp) => {
                    n += 1;
                    self.apply(resp);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.orphan();
                    break;
                }
            }
        }
        self.flush_outbox();
        n
    }

    /// Waits at most `timeout` for one answer and takes it with any others
    /// waiting. False when none came.
    pub fn wait_response(&mut self, timeout: Duration) -> bool {
        self.flush_outbox();
        match self.link.from_offload.recv_timeout(timeout) {
            Ok(resp) => {
                self.apply(resp);
                self.take_responses();
                true
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => {
                self.orphan();
                false
            }
        }
    }

    /// Replay's lockstep (see `Coordinator`): takes the offload thread's
    /// answers up to its end of `epoch`, and not one past it.
    pub fn wait_epoch(&mut self, epoch: u64) {
        while !self.orphaned && self.epoch_done.is_none_or(|e| e < epoch) {
            match self.link.from_offload.recv_timeout(Duration::from_millis(100)) {
                Ok(resp) => self.apply(resp),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => self.orphan(),
            }
        }
    }

    /// Replay's lockstep: tells the offload thread this shard has asked
    /// all it will ask up to `epoch`. Waits while the queue is full: the
    /// offload thread is then reading it (or will once the shards before
    /// this one are done).
    pub fn end_epoch(&mut self, epoch: u64) {
        while !self.outbox.is_empty() && !self.orphaned {
            let before = self.outbox.len();
            self.flush_outbox();
            if self.outbox.len() == before {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        if self.link.to_offload.send(Request::EpochDone { epoch, now_ns: self.now_ns }).is_err() {
            self.orphan();
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
        let mut record = self.build_record(id, flow, state.as_ref(), context, reason);
        self.active.finish(id, &mut record);
        self.stats.flows_ended += 1;
        match self.stats.ended_by.get_mut(reason.as_str()) {
            Some(n) => *n += 1,
            None => {
                self.stats.ended_by.insert(reason.as_str().to_string(), 1);
            }
        }
        if self.events.is_some() {
            let boxed = Box::new(record.clone());
            // Stamped when it ends, as the other events are: a flush or a
            // sweep ends a flow well after its last packet.
            let ts_ns = self.now_ns.max(record.end_ns);
            self.emit(|| Event::Expired { record: boxed, ts_ns });
        }
        self.records.push(record);
    }

    /// Starts ending every flow: withdraws installs not yet made, asks for
    /// every rule to go (unless `keep_rules`: then for a last read of their
    /// counters). Then `take_responses`/`wait_response` until
    /// `shutdown_waiting` is false, and `finish_shutdown`.
    pub fn begin_shutdown(&mut self, keep_rules: bool) {
        // No packet is taken from here on.
        self.stopping = true;
        self.release_held_removals(self.now_ns, true);
        let ids: Vec<FlowId> = self.offloads.keys().copied().collect();
        for id in ids {
            let Some(stage) = self.table.get(id).map(|f| f.stage()) else { continue };
            match stage {
                Stage::Queued | Stage::Installing => self.request_cancel(id, Then::End(EndReason::Shutdown)),
                Stage::Offloaded if !keep_rules => self.request_removal(id, Then::End(EndReason::Shutdown)),
                Stage::Removing => {
                    if let Some(s) = self.offloads.get_mut(&id) {
                        s.then = Some(Then::End(EndReason::Shutdown));
                    }
                }
                _ => {}
            }
        }
        if keep_rules && !self.orphaned && self.offloads.values().any(|s| s.placement.iter().any(Option::is_some)) {
            self.outstanding += 1;
            self.send(Request::ReadCounters);
        }
        self.retry_removal.clear();
    }

    /// Answers still owed for the shutdown under way.
    pub fn shutdown_waiting(&self) -> bool {
        !self.orphaned && self.outstanding > 0
    }

    /// Ends every flow with reason `shutdown`, its record written.
    pub fn finish_shutdown(&mut self, keep_rules: bool) {
        if keep_rules {
            for id in self.offloads.keys().copied().collect::<Vec<_>>() {
                // What slipped past the rules going in: the journal's
                // settled figure where there is one (reads made while
                // packets still arrive make a poorer one now), else now.
                if self.offloads.get(&id).is_none_or(|s| s.slip.iter().any(Option::is_none)) {
                    self.settle_all(id);
                }
                let in_place = self.table.get(id).is_some_and(|f| f.stage() == Stage::Offloaded)
                    && self.offloads.get(&id).is_some_and(|s| s.placement.iter().all(Option::is_some));
                if in_place && self.cfg.journal && !self.orphaned {
                    if let Some(entry) = self.journal_entry(id) {
                        // The next run takes the flow over from the journal
                        // and writes its one record; this run writes none.
                        self.parting.push(JournalLine::Flow(Box::new(entry)));
                        self.table.remove(id);
                        self.offloads.remove(&id);
                        self.contexts.remove(id);
                        self.stats.flows_left_in_place += 1;
                        continue;
                    }
                }
                // The rules stay, but the flow's record is written now: its
                // earlier journal lines must not bring it back.
                self.settle_all(id);
                if self.cfg.journal {
                    self.parting.push(JournalLine::Gone { flow: id.0, gone: true });
                }
            }
        }
        for id in self.table.ids() {
            // A stop that removes its rules but failed to for this flow:
            // its record is written now, so the next run must not take it
            // over from an earlier line (it removes the rules instead).
            if !keep_rules
                && self.cfg.journal
                && self.offloads.get(&id).is_some_and(|s| s.placement.iter().any(Option::is_some))
            {
                self.parting.push(JournalLine::Gone { flow: id.0, gone: true });
            }
            self.end(id, EndReason::Shutdown);
        }
        // Journal lines still waiting for room in the queue go with the
        // parting ones, which the caller sends past it.
        for req in std::mem::take(&mut self.outbox) {
            if let Request::Journal(line) = req {
                self.parting.push(*line);
            }
        }
        self.queued = 0;
    }

    /// The sending end of the queue to the offload thread.
    pub fn link_to_offload(&self) -> &crossbeam_channel::Sender<Request> {
        &self.link.to_offload
    }

    /// The journal lines of a stop that keeps its rules (`finish_shutdown`),
    /// for the caller to hand to the offload thread past the queue the stop
    /// empties: the flows they leave in place have no record of this run.
    pub fn take_parting(&mut self) -> Vec<JournalLine> {
        std::mem::take(&mut self.parting)
    }

    // ---- the control API: what an external application asks ----

    /// Every live flow as (id, flow), for listing and sorting.
    pub fn flows(&self) -> impl Iterator<Item = (FlowId, &Flow)> + '_ {
        self.table.iter()
    }

    /// Merges an application's context into a flow, and applies the
    /// verdict it gives, whatever the flow's stage: on a flow still
    /// undecided it decides at once; `software` takes a flow with rules
    /// (or getting them) back to software; `drop` and `offload` offload a
    /// flow in software (or refused before), and `drop` replaces the rules
    /// of a flow offloaded with another action. A verdict that can't be
    /// applied (the backend can't drop, the flow's rules are on their way
    /// out) is refused with the reason, and nothing is stored.
    pub fn set_context(&mut self, id: FlowId, update: FlowContext) -> Result<FlowContext, EngineError> {
        let Some(flow) = self.table.get(id) else { return Err(EngineError::NoSuchFlow(id)) };
        let plan = match update.verdict.clone() {
            Some(verdict) => self.verdict_plan(id, flow, verdict)?,
            None => VerdictPlan::Nothing,
        };
        let ctx = self.contexts.update(id, update)?.clone();
        let flow = self.table.get_mut(id).expect("checked above");
        flow.set_has_context(true);
        match plan {
            VerdictPlan::Nothing => {}
            VerdictPlan::Classify => self.classify(id),
            // The application wants it in software: take it back, as
            // `unoffload` does, rather than leave it in hardware.
            VerdictPlan::Unoffload => {
                self.request_unoffload(id)?;
            }
            VerdictPlan::Offload(action) => self.request_offload(id, action)?,
            VerdictPlan::Replace(action) => match self.table.get(id).map(|f| f.stage()) {
                Some(Stage::Offloaded) => self.request_removal(id, Then::Offload(action)),
                Some(Stage::Queued | Stage::Installing) => self.request_cancel(id, Then::Offload(action)),
                _ => {}
            },
        }
        self.flush_outbox();
        Ok(ctx)
    }

    /// What a verdict given now asks of the flow in its stage, or why it
    /// can't be done.
    fn verdict_plan(&self, id: FlowId, flow: &Flow, verdict: Verdict) -> Result<VerdictPlan, EngineError> {
        let stage = flow.stage();
        let wanted = match verdict {
            Verdict::Software => None,
            Verdict::Drop => Some(Action::Drop),
            Verdict::Offload => Some(self.classifier.action_for(flow)),
        };
        let now = self.offloads.get(&id).map(|s| s.action);
        let supported = |a: Action| {
            if self.backend.capabilities.supports_action(&a) {
                Ok(())
            } else {
                Err(EngineError::Unsupported { backend: self.backend.name.clone(), action: a })
            }
        };
        Ok(match (stage, wanted) {
            (Stage::Tracking, _) => VerdictPlan::Classify,
            (Stage::Offloaded | Stage::Queued | Stage::Installing, None) => VerdictPlan::Unoffload,
            // Offloaded as asked: `offload` takes whatever action the flow has.
            (Stage::Offloaded | Stage::Queued | Stage::Installing, Some(a))
                if verdict == Verdict::Offload || now == Some(a) =>
            {
                VerdictPlan::Nothing
            }
            (Stage::Offloaded | Stage::Queued | Stage::Installing, Some(a)) => {
                supported(a)?;
                VerdictPlan::Replace(a)
            }
            (Stage::Removing, Some(_)) => {
                return Err(EngineError::WrongStage {
                    id,
                    stage: stage.as_str(),
                    what: "its rules are on their way out; give the verdict again once it is in software",
                })
            }
            (Stage::Software | Stage::Refused, Some(a)) => {
                supported(a)?;
                VerdictPlan::Offload(a)
            }
            _ => VerdictPlan::Nothing,
        })
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

    /// Asks for a flow to be offloaded with `action` (installed by the
    /// offload thread, with the usual limits).
    pub fn request_offload(&mut self, id: FlowId, action: Action) -> Result<(), EngineError> {
        let flow = self.table.get(id).ok_or(EngineError::NoSuchFlow(id))?;
        match flow.stage() {
            Stage::Offloaded | Stage::Queued | Stage::Installing | Stage::Removing => {
                return Err(EngineError::WrongStage {
                    id,
                    stage: flow.stage().as_str(),
                    what: "already offloaded, or its rules are on their way in or out",
                })
            }
            _ => {}
        }
        if !self.backend.capabilities.supports_action(&action) {
            return Err(EngineError::Unsupported { backend: self.backend.name.clone(), action });
        }
        // Counters already folded in stay; a new rule starts from zero.
        self.offloads.remove(&id);
        self.enqueue(id, action);
        if let Some(state) = self.offloads.get_mut(&id) {
            state.requested = true;
        }
        Ok(())
    }

    /// Takes a flow back to software: its rules are asked to go (final
    /// counters folded in when they are) and the classifier won't offload
    /// it again. Returns the flow's stage after the call: `removing` while
    /// the offload thread takes the rules out, else `software`.
    pub fn request_unoffload(&mut self, id: FlowId) -> Result<Stage, EngineError> {
        let flow = self.table.get(id).ok_or(EngineError::NoSuchFlow(id))?;
        match flow.stage() {
            Stage::Offloaded => self.request_removal(id, Then::Software),
            Stage::Queued | Stage::Installing => self.request_cancel(id, Then::Software),
            s => return Err(EngineError::WrongStage { id, stage: s.as_str(), what: "not offloaded" }),
        }
        Ok(self.table.get(id).map_or(Stage::Software, |f| f.stage()))
    }

    /// Ends a flow now, with reason `evicted`; one with rules ends once
    /// they are gone. Returns its record when it ended at once.
    pub fn evict(&mut self, id: FlowId) -> Result<Option<FlowRecord>, EngineError> {
        let flow = self.table.get(id).ok_or(EngineError::NoSuchFlow(id))?;
        match flow.stage() {
            Stage::Offloaded => {
                self.request_removal(id, Then::End(EndReason::Evicted));
                Ok(None)
            }
            // Its rules are already going: it ends when they are out,
            // without a second removal asked for the same rules.
            Stage::Removing => {
                if let Some(state) = self.offloads.get_mut(&id) {
                    state.then = Some(Then::End(EndReason::Evicted));
                }
                Ok(None)
            }
            Stage::Queued | Stage::Installing => {
                self.request_cancel(id, Then::End(EndReason::Evicted));
                Ok(self.records.last().filter(|r| r.id == id).cloned())
            }
            _ => {
                self.end(id, EndReason::Evicted);
                Ok(self.records.last().cloned())
            }
        }
    }
}
