//! One shard and the offload coordinator driven on the caller's thread:
//! the engine as a library user (tests, benchmarks, tools) sees it, with
//! every call synchronous. The threaded runtime runs the same `Shard` and
//! `Coordinator` on threads of their own, joined by the same links.

use crate::classifier::Classifier;
use crate::coordinator::{Coordinator, CoordinatorConfig};
use crate::link::{link, QUEUE_DEPTH};
use crate::shard::{BackendInfo, EngineConfig, EngineError, EngineStats, FlowView, OffloadState, Shard};
use crate::takeover::Takeover;
use crate::{Event, FlowRecord};
use flowtable_config::Config;
use flowtable_hw::{Action, Backend, InlineNic};
use flowtable_sw::context::FlowContext;
use flowtable_sw::{Flow, FlowId, FlowTable, PacketInfo, PortMap, Stage, TableConfig};
use std::sync::Arc;

pub struct Engine {
    shard: Shard,
    coordinator: Coordinator,
    nic: Option<Box<dyn InlineNic>>,
}

impl Engine {
    pub fn new(table: TableConfig, classifier: Classifier, backend: Box<dyn Backend>, cfg: EngineConfig) -> Engine {
        let (shard_end, offload_end) = link(QUEUE_DEPTH);
        let info = BackendInfo { name: backend.name().to_string(), capabilities: backend.capabilities().clone() };
        let nic = backend.inline_nic();
        let coordinator = Coordinator::new(backend, coordinator_config(&cfg), vec![offload_end]);
        let shard = Shard::new(TableConfig { shard: 0, ..table }, Arc::new(classifier), info, shard_end, cfg);
        Engine { shard, coordinator, nic }
    }

    /// An engine that first takes over what an earlier run left in
    /// `backend` (see `takeover`), with the offload journal at `journal`.
    pub fn restarted(
        table: TableConfig,
        classifier: Classifier,
        mut backend: Box<dyn Backend>,
        cfg: EngineConfig,
        journal: &std::path::Path,
        now_ns: u64,
    ) -> Result<Engine, String> {
        let mut takeover = Takeover::prepare(backend.as_mut(), Some(journal), 1)?;
        let (shard_end, offload_end) = link(QUEUE_DEPTH);
        let info = BackendInfo { name: backend.name().to_string(), capabilities: backend.capabilities().clone() };
        let nic = backend.inline_nic();
        let mut shard = Shard::new(TableConfig { shard: 0, ..table }, Arc::new(classifier), info, shard_end, cfg);
        takeover.adopt_into(&mut shard, 0, now_ns, backend.as_mut());
        takeover.end_left(&mut shard, now_ns);
        shard.release_left();
        let mut coordinator = Coordinator::new(backend, coordinator_config(&cfg), vec![offload_end]);
        takeover.finish(&mut coordinator)?;
        Ok(Engine { shard, coordinator, nic })
    }

    /// Writes the offload journal at `path` from now on (the first run of
    /// a pair `restarted` takes over from).
    pub fn set_journal(&mut self, path: &std::path::Path) -> Result<(), String> {
        let (j, _, _) = crate::journal::Journal::open(path).map_err(|e| e.to_string())?;
        self.coordinator.set_journal(j);
        Ok(())
    }

    /// The clock the offload thread stamps its counter reads with (their
    /// start and end), as the threaded runtime's live clock; without one,
    /// a read takes no time.
    pub fn set_read_clock(&mut self, clock: Box<dyn Fn() -> u64 + Send>) {
        self.coordinator.set_read_clock(clock);
    }

    /// Builds an engine from a checked configuration.
    pub fn from_config(config: &Config, backend: Box<dyn Backend>) -> Result<Engine, String> {
        let classifier = Classifier::new(&config.classifier)?;
        Ok(Engine::new(config.table_config(), classifier, backend, EngineConfig::from_config(config)))
    }

    pub fn shard(&self) -> &Shard {
        &self.shard
    }
    /// Starts sampling current rates (see `Shard::enable_rates`).
    pub fn enable_rates(&mut self) {
        self.shard.enable_rates()
    }
    pub fn table(&self) -> &FlowTable {
        self.shard.table()
    }
    pub fn backend(&self) -> &dyn Backend {
        self.coordinator.backend()
    }
    pub fn backend_mut(&mut self) -> &mut dyn Backend {
        self.coordinator.backend_mut()
    }
    /// The shard's and the offload thread's counters together.
    pub fn stats(&self) -> EngineStats {
        let mut s = EngineStats::from_coordinator(self.coordinator.stats());
        s.add(self.shard.stats());
        s
    }
    pub fn config(&self) -> &EngineConfig {
        self.shard.config()
    }
    pub fn ports(&self) -> &PortMap {
        self.shard.ports()
    }
    pub fn now_ns(&self) -> u64 {
        self.shard.now_ns()
    }
    pub fn coordinator(&self) -> &Coordinator {
        &self.coordinator
    }
    pub fn rules_live(&self) -> usize {
        self.coordinator.rules_live()
    }
    pub fn queued(&self) -> usize {
        self.coordinator.queued() + self.shard.queued()
    }
    pub fn classifier(&self) -> &Classifier {
        self.shard.classifier()
    }

    pub fn reload(&mut self, classifier: Classifier, timeouts: flowtable_sw::Timeouts) {
        self.shard.reload(Arc::new(classifier), timeouts);
    }
    pub fn enable_events(&mut self) {
        self.shard.enable_events();
    }
    pub fn drain_events(&mut self) -> Vec<Event> {
        self.shard.drain_events()
    }
    pub fn drain_records(&mut self) -> Vec<FlowRecord> {
        self.shard.drain_records()
    }

    /// Offers a packet to an in-process NIC (the sim) at `now_ns`; true
    /// when it took the packet, which software must then not see.
    #[inline]
    pub fn offer_to_nic(&mut self, pkt: &PacketInfo, now_ns: u64) -> bool {
        self.nic.as_mut().is_some_and(|n| n.offer(pkt, now_ns))
    }

    #[inline]
    pub fn process(&mut self, pkt: &PacketInfo, now_ns: u64) {
        self.shard.process(pkt, now_ns);
    }
    pub fn process_batch(&mut self, pkts: &[PacketInfo], ts_ns: &[u64]) {
        self.shard.process_batch(pkts, ts_ns);
    }
    /// See `Shard::pin_lookup_schedule`.
    pub fn pin_lookup_schedule(&mut self, schedule: (usize, usize)) -> bool {
        self.shard.pin_lookup_schedule(schedule)
    }
    #[inline]
    pub fn process_marked(&mut self, pkt: &PacketInfo, mark: u32, now_ns: u64) {
        self.shard.process_marked(pkt, mark, now_ns);
    }

    /// Lets the offload coordinator do what is asked and due at `now`,
    /// and the shard take its answers.
    fn settle_offload(&mut self, now: u64) {
        self.shard.take_responses();
        self.coordinator.take_requests();
        self.coordinator.step(now);
        self.shard.take_responses();
    }

    /// What was asked for flow `id`, done and answered before this returns
    /// (the synchronous calls): its removal's answer, if held for packets
    /// still to come, is handed on at once.
    fn settle_flow_now(&mut self, id: FlowId) {
        let now = self.shard.now_ns();
        self.settle_offload(now);
        self.shard.release_held(id);
        self.settle_offload(now);
    }

    /// The offload coordinator alone: takes what the shard asked and does
    /// what is due at `now` (a counter read among it), leaving its answers
    /// for the shard's next `poll`, as the offload thread runs beside a
    /// worker that goes on handling packets meanwhile.
    pub fn offload_step(&mut self, now_ns: u64) {
        self.shard.flush_outbox();
        self.coordinator.take_requests();
        self.coordinator.step(now_ns);
    }

    /// The slow path: installs what is queued, reads counters each poll
    /// interval, ages flows, removes their rules; all done when it returns.
    pub fn poll(&mut self, now_ns: u64) {
        self.shard.advance(now_ns);
        let now = self.shard.now_ns();
        self.settle_offload(now);
        self.shard.poll(now);
        self.settle_offload(now);
    }

    /// Ends every flow: removes all rules (unless `keep_rules`), folds their
    /// final counters in and writes every record with reason `shutdown`.
    pub fn shutdown(&mut self, keep_rules: bool) {
        let now = self.shard.now_ns();
        self.settle_offload(now);
        self.shard.begin_shutdown(keep_rules);
        // Each round answers what the one before asked; a removal that
        // fails is not asked again at shutdown, so this ends.
        for _ in 0..64 {
            self.settle_offload(now);
            if !self.shard.shutdown_waiting() {
                break;
            }
        }
        self.shard.finish_shutdown(keep_rules);
        // The journal lines of the flows left in place.
        let parting = self.shard.take_parting();
        self.coordinator.write_journal(&parting);
        self.settle_offload(now);
    }

    pub fn flow(&self, id: FlowId) -> Option<FlowView> {
        self.shard.flow(id)
    }
    pub fn view_of(&self, id: FlowId) -> Option<FlowView> {
        self.shard.flow(id)
    }
    pub fn flows(&self) -> impl Iterator<Item = (FlowId, &Flow)> + '_ {
        self.shard.flows()
    }
    pub fn set_context(&mut self, id: FlowId, update: FlowContext) -> Result<FlowContext, EngineError> {
        self.shard.set_context(id, update)
    }
    pub fn context(&self, id: FlowId) -> Option<&FlowContext> {
        self.shard.context(id)
    }
    pub fn offload_state(&self, id: FlowId) -> Option<&OffloadState> {
        self.shard.offload_state(id)
    }
    pub fn rebuild_largest_flows(&mut self, want: usize) {
        self.shard.rebuild_largest_flows(want);
    }
    pub fn offload_states(&self) -> impl Iterator<Item = (FlowId, &OffloadState)> + '_ {
        self.shard.offload_states()
    }
    pub fn request_offload(&mut self, id: FlowId, action: Action) -> Result<(), EngineError> {
        self.shard.request_offload(id, action)
    }

    /// Takes a flow back to software, its rules removed before this returns.
    pub fn request_unoffload(&mut self, id: FlowId) -> Result<(), EngineError> {
        self.shard.request_unoffload(id)?;
        self.settle_flow_now(id);
        match self.shard.table().get(id).map(|f| f.stage()) {
            Some(Stage::Offloaded) => Err(EngineError::Backend(flowtable_hw::BackendError::Io {
                backend: self.coordinator.backend().name().into(),
                message: "rule removal failed; the flow stays offloaded".into(),
            })),
            _ => Ok(()),
        }
    }

    /// Ends a flow now, with reason `evicted`, its rules removed first.
    pub fn evict(&mut self, id: FlowId) -> Result<FlowRecord, EngineError> {
        if let Some(r) = self.shard.evict(id)? {
            return Ok(r);
        }
        self.settle_flow_now(id);
        self.shard.records().iter().rev().find(|r| r.id == id).cloned().ok_or_else(|| {
            EngineError::Backend(flowtable_hw::BackendError::Io {
                backend: self.coordinator.backend().name().into(),
                message: "rule removal failed; the flow is kept".into(),
            })
        })
    }
}

/// The coordinator's part of an engine's configuration.
pub fn coordinator_config(cfg: &EngineConfig) -> CoordinatorConfig {
    CoordinatorConfig {
        instance_id: cfg.instance_id,
        poll_interval_ns: cfg.poll_interval_ns,
        batch_size: cfg.batch_size,
    }
}

pub use crate::shard::BATCH;
