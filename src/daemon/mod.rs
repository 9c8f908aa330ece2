//! `flowtable run`: the daemon. One thread owns the engine and runs the
//! packet loop — sources, the NIC, the flow table, the slow path on a
//! tick — and between packet batches answers the control requests that
//! the socket threads hand it over a channel. Records of ended flows go to
//! a rotated JSON-lines file and to event subscribers. SIGTERM/SIGINT end
//! every live flow (its record written, its rules removed); SIGHUP reloads
//! the classifier and timeouts, keeping every flow.

pub mod bench;
pub mod filter;
pub mod query;
pub mod records;
pub mod sources;

use crate::control::server::{self, Answer, Job, Server, Subscriber};
use crate::control::{
    Command, ConfigStatus, ControlError, ControlStats, ErrorCode, FlowStats, PacketStats, RecordsStatus, RuleStats,
    SourceStatus, Stats, DEFAULT_PAGE, MAX_PAGE,
};
use crossbeam_channel::{Receiver, RecvTimeoutError, TrySendError};
use filter::Filter;
use flowtable_config::{Config, LogFormat, LogSection, Pace};
use flowtable_hw::Action;
use flowtable_offload::{Classifier, Engine, EngineError, BATCH};
use flowtable_sw::context::{ContextError, FlowContext};
use flowtable_sw::{FlowId, PacketInfo, SkipCounters, Stage};
use records::RecordsWriter;
use serde_json::{json, Value};
use sources::{Pending, Slot, SlotState};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often, on the daemon's clock, the engine's slow path runs.
pub const POLL_TICK_NS: u64 = 10_000_000;
/// How long the loop rests when a live source has nothing (the capture
/// ring hands frames over in blocks every 10 ms at most anyway).
const LIVE_IDLE_NS: u64 = 1_000_000;
/// Packets read from a source between looks at the control queue.
pub const READ_BURST: usize = 256;
/// The stages a live flow can be in.
const STAGES: [Stage; 5] = [Stage::Tracking, Stage::Software, Stage::Queued, Stage::Offloaded, Stage::Refused];
/// Rates are measured over this many one-second samples.
const RATE_SAMPLES: usize = 5;

/// `flowtable run` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The configuration file (reloaded on SIGHUP).
    #[arg(long)]
    pub config: PathBuf,
    /// Listen here instead of the configuration's `control.socket`.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Stop (as on SIGTERM) once every source has ended, instead of serving on.
    #[arg(long)]
    pub exit_when_done: bool,
}

/// Flags the loop watches: set from signal handlers, or by a caller that
/// runs the daemon in-process (benchmarks, tests).
#[derive(Clone, Default)]
pub struct Controls {
    pub stop: Arc<AtomicBool>,
    pub reload: Arc<AtomicBool>,
    /// Stop once every source has ended.
    pub exit_when_done: bool,
}

impl Controls {
    /// Flags set by SIGTERM and SIGINT (stop) and SIGHUP (reload).
    pub fn from_signals() -> Result<Controls, String> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let c = Controls::default();
        for (sig, flag) in [(SIGTERM, &c.stop), (SIGINT, &c.stop), (SIGHUP, &c.reload)] {
            signal_hook::flag::register(sig, flag.clone())
                .map_err(|e| format!("installing the handler of signal {sig}: {e}"))?;
        }
        Ok(c)
    }
}

/// Sets up logging as the configuration says: human lines or JSON, on stderr.
pub fn init_logging(log: &LogSection) -> Result<(), String> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(&log.level).map_err(|e| format!("log.level {:?}: {e}", log.level))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match log.format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| format!("setting up logging: {e}"))
}

/// `flowtable run`: loads the configuration, logs, handles signals, runs.
pub fn main(args: RunArgs) -> Result<(), String> {
    let mut config = flowtable_config::load(&args.config).map_err(|e| e.to_string())?;
    if let Some(s) = &args.socket {
        config.control.socket = s.display().to_string();
    }
    init_logging(&config.log)?;
    let mut controls = Controls::from_signals()?;
    controls.exit_when_done = args.exit_when_done;
    run(config, Some(args.config), &controls).map(|_| ())
}

/// What the daemon did at exit.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    /// Flows still live at the stop, each ended with reason `shutdown`.
    pub flows_at_exit: usize,
    pub rules_removed_at_exit: usize,
    /// Rules still installed after the stop (kept on purpose, or failed).
    pub rules_left: usize,
    pub records_written: u64,
    pub sources: Vec<SourceStatus>,
    pub control: ControlStats,
    /// CPU time the engine thread used from start to stop (before shutdown).
    pub engine_cpu_s: f64,
}

/// The daemon's clock, in ns since the Unix epoch. It runs with wall time,
/// except while a source replays as fast as possible: then it is that
/// source's packet time (frozen between packets), so the capture's flows
/// age exactly as `flowtable replay` ages them. After, wall time resumes
/// from there.
struct Clock {
    base_ns: u64,
    base_at: Instant,
    frozen: bool,
}

impl Clock {
    fn new() -> Clock {
        let base_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Clock { base_ns, base_at: Instant::now(), frozen: false }
    }
    fn now(&self) -> u64 {
        if self.frozen {
            self.base_ns
        } else {
            self.base_ns + self.base_at.elapsed().as_nanos() as u64
        }
    }
    /// Moves the clock forward to `t` (never back).
    fn advance_to(&mut self, t: u64) {
        if t > self.now() {
            self.base_ns = t;
            self.base_at = Instant::now();
        }
    }
    fn set_frozen(&mut self, frozen: bool) {
        if frozen != self.frozen {
            self.base_ns = self.now();
            self.base_at = Instant::now();
            self.frozen = frozen;
        }
    }
}

struct Sample {
    at: Instant,
    installed: u64,
    removed: u64,
    packets: u64,
}

enum Step {
    Handled,
    Wait(u64),
    Ended,
}

struct Daemon {
    engine: Engine,
    config: Config,
    config_path: Option<PathBuf>,
    generation: u64,
    reloads_refused: u64,
    slots: Vec<Slot>,
    clock: Clock,
    started: Instant,
    next_poll: u64,
    records: Option<RecordsWriter>,
    record_errors: u64,
    subscribers: Vec<Subscriber>,
    requests: u64,
    request_cpu_ns: u64,
    skipped: SkipCounters,
    received: u64,
    received_bytes: u64,
    nic_packets: u64,
    sw_packets: u64,
    /// Packets for software wait here so their lookups go in one pipelined
    /// batch (`Engine::process_batch`); emptied before anything reads or
    /// polls the table, so no query or poll sees a packet half-handled.
    batch: Vec<PacketInfo>,
    batch_ts: Vec<u64>,
    samples: VecDeque<Sample>,
    /// When the list of largest flows was last rebuilt for a query.
    last_largest_rebuild: Instant,
}

/// Most often a `flows` query may rebuild the table's list of largest flows.
const LARGEST_REBUILD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the daemon until `controls.stop` is set, then ends every flow and
/// returns. The socket is removed on the way out, error or not.
pub fn run(config: Config, config_path: Option<PathBuf>, controls: &Controls) -> Result<RunSummary, String> {
    // The backend first: a dpdk source reads the ports the DPDK backend starts.
    let backend = crate::backend::build(&config)?;
    let slots = sources::open_all(&config.sources, &controls.stop)?;
    let engine = Engine::from_config(&config, backend)?;
    let records = match &config.records.path {
        Some(p) => Some(RecordsWriter::open(Path::new(p), config.records.rotate_bytes, config.records.keep)?),
        None => None,
    };
    let (jobs_tx, jobs_rx) = server::job_queue();
    let server = Server::start(Path::new(&config.control.socket), jobs_tx)?;
    tracing::info!(
        socket = %server.path().display(),
        backend = engine.backend().name(),
        sources = slots.len(),
        rules = config.classifier.rules.len(),
        records = config.records.path.as_deref().unwrap_or("-"),
        "flowtable daemon started"
    );
    for s in &slots {
        tracing::info!(source = %s.name, pace = ?s.pace, "reading packets");
    }
    let clock = Clock::new();
    let mut daemon = Daemon {
        engine,
        next_poll: clock.now(),
        clock,
        config,
        config_path,
        generation: 1,
        reloads_refused: 0,
        slots,
        started: Instant::now(),
        records,
        record_errors: 0,
        subscribers: Vec::new(),
        requests: 0,
        request_cpu_ns: 0,
        skipped: SkipCounters::default(),
        received: 0,
        received_bytes: 0,
        nic_packets: 0,
        sw_packets: 0,
        batch: Vec::with_capacity(BATCH),
        batch_ts: Vec::with_capacity(BATCH),
        samples: VecDeque::new(),
        last_largest_rebuild: Instant::now() - LARGEST_REBUILD_EVERY,
    };
    let cpu_at_start = thread_cpu_ns();
    daemon.run_loop(&jobs_rx, controls);
    let engine_cpu_s = thread_cpu_ns().saturating_sub(cpu_at_start) as f64 / 1e9;
    let mut summary = daemon.shutdown();
    summary.engine_cpu_s = engine_cpu_s;
    // Requests still queued are answered "shutting down" as their reply
    // channels close; then the socket goes.
    drop(jobs_rx);
    drop(server);
    Ok(summary)
}

fn engine_error(e: EngineError) -> ControlError {
    match e {
        EngineError::NoSuchFlow(id) => ControlError::new(ErrorCode::NoSuchFlow, format!("no flow with id {id}")),
        EngineError::WrongStage { .. } => ControlError::new(ErrorCode::WrongStage, e.to_string()),
        EngineError::Unsupported { .. } => ControlError::new(ErrorCode::Unsupported, e.to_string()),
        EngineError::Context(ContextError::NoSuchFlow(id)) => {
            ControlError::new(ErrorCode::NoSuchFlow, format!("no flow with id {id}"))
        }
        EngineError::Context(c) => ControlError::new(ErrorCode::InvalidContext, c.to_string()),
        EngineError::Backend(b) => ControlError::new(ErrorCode::Backend, b.to_string()),
    }
}

fn no_such_flow(id: FlowId) -> ControlError {
    ControlError::new(ErrorCode::NoSuchFlow, format!("no flow with id {id}"))
}

impl Daemon {
    fn now(&self) -> u64 {
        self.clock.now().max(self.engine.now_ns())
    }

    fn run_loop(&mut self, jobs: &Receiver<Job>, controls: &Controls) {
        loop {
            if controls.stop.load(Ordering::Relaxed) {
                tracing::info!("stop requested");
                return;
            }
            if controls.exit_when_done && self.slots.iter().all(|s| !s.running()) {
                tracing::info!("every source has ended: stopping");
                return;
            }
            if controls.reload.swap(false, Ordering::Relaxed) {
                self.reload();
            }
            let replaying_fast = self.slots.iter().any(|s| s.running() && s.pace == Pace::Fast);
            self.clock.set_frozen(replaying_fast);
            let mut now = self.clock.now();
            let (worked, wake_at) = self.pump(&mut now);
            if now >= self.next_poll {
                self.tick(now);
            }
            self.publish();
            // Requests are answered between batches, never inside one.
            while let Ok(job) = jobs.try_recv() {
                self.answer(job);
            }
            if !worked {
                let until = wake_at.map_or(self.next_poll, |w| w.min(self.next_poll));
                let wait = Duration::from_nanos(until.saturating_sub(self.clock.now()).min(POLL_TICK_NS));
                match jobs.recv_timeout(wait) {
                    Ok(job) => self.answer(job),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
                }
            }
        }
    }

    /// Up to `READ_BURST` packets from each running source. Returns whether any
    /// source made progress, and when the earliest held packet is due.
    fn pump(&mut self, now: &mut u64) -> (bool, Option<u64>) {
        let mut worked = false;
        let mut wake: Option<u64> = None;
        for i in 0..self.slots.len() {
            if !self.slots[i].running() {
                continue;
            }
            for _ in 0..READ_BURST {
                match self.step(i, now) {
                    Step::Handled => worked = true,
                    Step::Wait(due) => {
                        wake = Some(wake.map_or(due, |w| w.min(due)));
                        break;
                    }
                    Step::Ended => {
                        worked = true;
                        break;
                    }
                }
            }
        }
        self.flush_batch();
        // A source replayed fast moves the clock with its packets.
        self.clock.advance_to(*now);
        (worked, wake)
    }

    /// One packet of source `i`: read (or taken from the held one), paced,
    /// offered to the NIC, else to the flow table.
    #[inline]
    fn step(&mut self, i: usize, now: &mut u64) -> Step {
        let slot = &mut self.slots[i];
        let live = slot.live;
        let pending = match slot.pending.take() {
            Some(p) => p,
            None => match if slot.live { slot.source.poll_packet() } else { slot.source.next_packet() } {
                Ok(Some(raw)) => {
                    if slot.started.is_none() {
                        slot.started = Some(Instant::now());
                    }
                    let pace = slot.pace;
                    // A live frame's timestamp is already on the daemon's
                    // (wall) clock: it is due when it was captured.
                    let start = if slot.live { raw.ts_ns } else { start_for(pace, *now, raw.ts_ns) };
                    let (first_ts, at) = *slot.base.get_or_insert((raw.ts_ns, start));
                    Pending {
                        due_ns: at + raw.ts_ns.saturating_sub(first_ts),
                        wire_len: raw.wire_len,
                        parsed: raw.parse(self.engine.ports()),
                        mark: raw.mark,
                    }
                }
                // Nothing captured yet: look again shortly.
                Ok(None) if slot.live => return Step::Wait(*now + LIVE_IDLE_NS),
                Ok(None) => {
                    slot.state = SlotState::Done;
                    slot.finished = Some(Instant::now());
                    tracing::info!(source = %slot.name, packets = slot.packets, bytes = slot.bytes, "source finished; serving on");
                    return Step::Ended;
                }
                Err(e) => {
                    slot.state = SlotState::Failed(e.to_string());
                    slot.finished = Some(Instant::now());
                    tracing::error!(source = %slot.name, error = %e, packets = slot.packets, "source failed; what it delivered is kept");
                    return Step::Ended;
                }
            },
        };
        if pending.due_ns > *now {
            match slot.pace {
                Pace::Timestamps => {
                    let due = pending.due_ns;
                    slot.pending = Some(pending);
                    return Step::Wait(due);
                }
                Pace::Fast => {
                    *now = pending.due_ns;
                    self.engine.backend_mut().set_clock(*now);
                }
            }
        }
        slot.packets += 1;
        slot.bytes += pending.wire_len as u64;
        self.received += 1;
        self.received_bytes += pending.wire_len as u64;
        if *now >= self.next_poll {
            self.flush_batch();
            self.tick(*now);
        }
        match pending.parsed {
            Err(reason) => self.skipped.add(reason),
            Ok(info) => {
                if self.engine.offer_to_nic(&info) {
                    self.nic_packets += 1;
                } else {
                    self.sw_packets += 1;
                    // A live frame counts at its capture time, which places
                    // it before or after its flow's rule went in.
                    let at = if live { pending.due_ns.min(*now) } else { *now };
                    match pending.mark {
                        Some(mark) => {
                            // In order with the packets before it.
                            self.flush_batch();
                            self.engine.process_marked(&info, mark, at);
                        }
                        None => {
                            self.batch.push(info);
                            self.batch_ts.push(at);
                            if self.batch.len() == BATCH {
                                self.flush_batch();
                            }
                        }
                    }
                }
            }
        }
        Step::Handled
    }

    #[inline]
    fn flush_batch(&mut self) {
        if !self.batch.is_empty() {
            self.engine.process_batch(&self.batch, &self.batch_ts);
            self.batch.clear();
            self.batch_ts.clear();
        }
    }

    /// The slow path: installs, counters, aging; records out; rates sampled.
    fn tick(&mut self, now: u64) {
        self.engine.poll(now);
        self.next_poll = now + POLL_TICK_NS;
        self.write_records();
        if let Some(w) = self.records.as_mut() {
            if let Err(e) = w.flush() {
                self.record_errors += 1;
                tracing::error!(file = %w.path().display(), error = %e, "writing flow records failed");
            }
        }
        if self.samples.back().is_none_or(|s| s.at.elapsed() >= Duration::from_secs(1)) {
            let st = self.engine.stats();
            self.samples.push_back(Sample {
                at: Instant::now(),
                installed: st.rules_installed,
                removed: st.rules_removed,
                packets: self.received,
            });
            if self.samples.len() > RATE_SAMPLES {
                self.samples.pop_front();
            }
            // Once a second, like the rates: reading them is a syscall per
            // ring (AF_PACKET) or a PMD stats call per port (DPDK).
            for slot in self.slots.iter_mut().filter(|s| s.live) {
                slot.losses = slot.source.capture_losses();
            }
        }
    }

    fn write_records(&mut self) {
        let records = self.engine.drain_records();
        let Some(w) = self.records.as_mut() else { return };
        for r in &records {
            if let Err(e) = w.write(r) {
                self.record_errors += 1;
                if self.record_errors == 1 || self.record_errors.is_power_of_two() {
                    tracing::error!(file = %w.path().display(), error = %e, failures = self.record_errors, "writing a flow record failed");
                }
            }
        }
    }

    /// Sends new events to subscribers; one that can't keep up is cut off
    /// rather than slowing the packet loop.
    fn publish(&mut self) {
        let events = self.engine.drain_events();
        if events.is_empty() || self.subscribers.is_empty() {
            return;
        }
        for ev in &events {
            let Ok(line) = serde_json::to_string(ev) else { continue };
            let line: Arc<str> = line.into();
            self.subscribers.retain(|s| match s.events.try_send(line.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    s.lagged.store(true, Ordering::SeqCst);
                    tracing::warn!("an event subscriber fell behind and was cut off");
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            });
        }
    }

    fn answer(&mut self, job: Job) {
        let started = thread_cpu_ns();
        let result = self.handle(job.cmd);
        self.requests += 1;
        self.request_cpu_ns += thread_cpu_ns().saturating_sub(started);
        // A client that gave up waiting is simply gone.
        let _ = job.reply.send(result);
    }

    fn handle(&mut self, cmd: Command) -> Result<Answer, ControlError> {
        let now = self.now();
        let value = match cmd {
            Command::Ping {} => json!({"pong": true}),
            Command::Flows { filter, sort, offset, limit } => {
                let filter = Filter::parse(filter.as_deref().unwrap_or(""))
                    .map_err(|e| ControlError::new(ErrorCode::BadFilter, e))?;
                let limit = limit.unwrap_or(DEFAULT_PAGE);
                if limit > MAX_PAGE {
                    return Err(ControlError::new(
                        ErrorCode::BadRequest,
                        format!("limit {limit}: at most {MAX_PAGE} flows a page"),
                    ));
                }
                let keep = offset.saturating_add(limit);
                if sort == crate::control::SortKey::Bytes
                    && filter.is_empty()
                    && keep > 0
                    && self.last_largest_rebuild.elapsed() >= LARGEST_REBUILD_EVERY
                    && self.engine.table().largest_by_bytes().1.count() < keep
                {
                    // Too few listed to answer: one rebuild (two scans) sets the
                    // bar so the next such queries need no scan. At most once
                    // a second, so flows that all tie can't make every query pay.
                    self.engine.rebuild_largest_flows(keep.max(1024));
                    self.last_largest_rebuild = std::time::Instant::now();
                }
                to_value(&query::list(&self.engine, &filter, sort, offset, limit, now))?
            }
            Command::Flow { flow } => query::detail(&self.engine, flow, now).ok_or_else(|| no_such_flow(flow))?,
            Command::Stats {} => to_value(&self.stats(now))?,
            Command::SetContext { flow, label, verdict, metadata } => {
                let ctx =
                    self.engine.set_context(flow, FlowContext { label, verdict, metadata }).map_err(engine_error)?;
                let stage = self.engine.table().get(flow).map_or(Stage::Free, |f| f.stage());
                tracing::info!(flow = %flow, "context set");
                json!({"flow": flow, "context": ctx, "stage": stage})
            }
            Command::Offload { flow, action } => {
                if let Action::Forward { port } | Action::Mirror { port } = action {
                    if port as usize >= self.config.ports.len() {
                        return Err(ControlError::new(
                            ErrorCode::BadRequest,
                            format!("port {port} does not exist: {} port(s) are configured", self.config.ports.len()),
                        ));
                    }
                }
                self.engine.request_offload(flow, action).map_err(engine_error)?;
                let stage = self.engine.table().get(flow).map_or(Stage::Free, |f| f.stage());
                tracing::info!(flow = %flow, ?action, stage = stage.as_str(), "offload requested");
                json!({"flow": flow, "action": action, "stage": stage})
            }
            Command::Unoffload { flow } => {
                self.engine.request_unoffload(flow).map_err(engine_error)?;
                tracing::info!(flow = %flow, "taken back to software");
                json!({"flow": flow, "stage": Stage::Software})
            }
            Command::Subscribe {} => {
                self.engine.enable_events();
                let (subscriber, subscription) = server::subscription();
                self.subscribers.push(subscriber);
                return Ok(Answer::Events(subscription));
            }
        };
        Ok(Answer::Value(value))
    }

    fn rates(&self) -> (f64, f64, f64) {
        let Some(first) = self.samples.front() else { return (0.0, 0.0, 0.0) };
        let dt = first.at.elapsed().as_secs_f64();
        if dt < 0.05 {
            return (0.0, 0.0, 0.0);
        }
        let st = self.engine.stats();
        (
            (st.rules_installed - first.installed) as f64 / dt,
            (st.rules_removed - first.removed) as f64 / dt,
            (self.received - first.packets) as f64 / dt,
        )
    }

    fn stats(&self, now: u64) -> Stats {
        let e = &self.engine;
        let st = e.stats();
        // Neither count scans the table: stages are counted as flows move,
        // and only flows with an offload state can have rules.
        let mut stages = [0u64; STAGES.len()];
        for (stage, n) in e.table().count_by_stage() {
            if let Some(i) = STAGES.iter().position(|s| *s == stage) {
                stages[i] += n as u64;
            }
        }
        let mut placements = [0u64; filter::PLACEMENTS.len()];
        let mut with_state = 0u64;
        for (_, state) in e.offload_states() {
            with_state += 1;
            let p = query::placement_of(Some(state));
            if let Some(i) = filter::PLACEMENTS.iter().position(|x| *x == p) {
                placements[i] += 1;
            }
        }
        if let Some(i) = filter::PLACEMENTS.iter().position(|x| *x == "none") {
            placements[i] += (e.table().len() as u64).saturating_sub(with_state);
        }
        let named = |names: &mut dyn Iterator<Item = &'static str>, counts: &[u64]| -> BTreeMap<String, u64> {
            names.zip(counts).filter(|(_, n)| **n > 0).map(|(k, n)| (k.to_string(), *n)).collect()
        };
        let by_stage = named(&mut STAGES.iter().map(|s| s.as_str()), &stages);
        // Flows with no rule in place are handled by software.
        let by_placement =
            named(&mut filter::PLACEMENTS.iter().map(|p| if *p == "none" { "software" } else { p }), &placements);
        let (install_rate, remove_rate, rate_pps) = self.rates();
        let live = e.table().len();
        let capacity = e.table().capacity();
        let mut untracked = BTreeMap::new();
        untracked.insert("table-full".to_string(), st.untracked_table_full);
        untracked.insert("orphan-fragment".to_string(), st.orphan_fragments);
        Stats {
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            now_ns: now,
            config: ConfigStatus {
                path: self.config_path.as_ref().map(|p| p.display().to_string()),
                generation: self.generation,
                reloads_refused: self.reloads_refused,
                rules: self.config.classifier.rules.iter().map(|r| r.name.clone()).collect(),
                timeouts: self.config.timeouts.clone(),
            },
            flows: FlowStats {
                live,
                capacity,
                fill: live as f64 / capacity.max(1) as f64,
                created: st.flows_created,
                ended: st.flows_ended,
                by_stage,
                by_placement,
                offloaded_total: st.flows_offloaded,
                refused_total: st.flows_refused,
            },
            rules: RuleStats {
                backend: e.backend().name().to_string(),
                live: e.rules_live(),
                capacity: e.backend().capabilities().max_rules,
                queued: e.queued(),
                installed: st.rules_installed,
                removed: st.rules_removed,
                install_rate,
                remove_rate,
                remove_errors: st.remove_errors,
                counter_reads: st.counter_reads,
                counter_errors: st.counter_errors,
            },
            refusals: st.refusals.clone(),
            packets: PacketStats {
                received: self.received,
                bytes: self.received_bytes,
                nic: self.nic_packets,
                software: self.sw_packets,
                tap_skipped: st.tap_packets_skipped,
                slipped: st.slipped_packets,
                rate_pps,
                skipped: self
                    .skipped
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(r, n)| (r.as_str().to_string(), n))
                    .collect(),
                untracked,
            },
            ended: st.ended_by.clone(),
            sources: self.source_status(),
            records: RecordsStatus {
                path: self.records.as_ref().map(|w| w.path().display().to_string()),
                written: self.records.as_ref().map_or(0, |w| w.written),
                rotations: self.records.as_ref().map_or(0, |w| w.rotations),
                errors: self.record_errors,
            },
            subscribers: self.subscribers.len(),
            control: self.control_stats(),
        }
    }

    fn control_stats(&self) -> ControlStats {
        ControlStats { requests: self.requests, cpu_s: self.request_cpu_ns as f64 / 1e9 }
    }

    fn source_status(&self) -> Vec<SourceStatus> {
        self.slots
            .iter()
            .map(|s| SourceStatus {
                name: s.name.clone(),
                state: match &s.state {
                    SlotState::Running => "running",
                    SlotState::Done => "done",
                    SlotState::Failed(_) => "failed",
                }
                .to_string(),
                packets: s.packets,
                bytes: s.bytes,
                wall_s: s.wall_s(),
                error: match &s.state {
                    SlotState::Failed(m) => Some(m.clone()),
                    _ => None,
                },
                dropped: s.losses.map(|l| l.dropped),
                unordered: s.losses.map(|l| l.unordered),
            })
            .collect()
    }

    /// SIGHUP: the classifier and timeouts from the file, or, if the file is
    /// wrong, an error naming the field and the running configuration kept.
    fn reload(&mut self) {
        let Some(path) = self.config_path.clone() else {
            tracing::warn!("reload requested, but the daemon was not started from a file");
            return;
        };
        let new = match flowtable_config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                self.reloads_refused += 1;
                tracing::error!(field = e.field().unwrap_or("-"), error = %e, "reload refused; the running configuration stays");
                return;
            }
        };
        let classifier = match Classifier::new(&new.classifier) {
            Ok(c) => c,
            Err(e) => {
                self.reloads_refused += 1;
                tracing::error!(field = "classifier", error = %e, "reload refused; the running configuration stays");
                return;
            }
        };
        self.engine.reload(classifier, new.timeouts.to_timeouts());
        let at_restart: Vec<&str> = [
            ("instance_id", json!(self.config.instance_id), json!(new.instance_id)),
            ("ports", json!(self.config.ports), json!(new.ports)),
            ("table", json!(self.config.table), json!(new.table)),
            ("offload", json!(self.config.offload), json!(new.offload)),
            ("backend", json!(self.config.backend), json!(new.backend)),
            ("records", json!(self.config.records), json!(new.records)),
            ("control", json!(self.config.control), json!(new.control)),
            ("log", json!(self.config.log), json!(new.log)),
            ("sources", json!(self.config.sources), json!(new.sources)),
        ]
        .into_iter()
        .filter(|(_, old, new)| old != new)
        .map(|(name, _, _)| name)
        .collect();
        if !at_restart.is_empty() {
            tracing::warn!(sections = %at_restart.join(", "), "these changes take effect at the next start, not on reload");
        }
        self.config.classifier = new.classifier;
        self.config.timeouts = new.timeouts;
        self.generation += 1;
        tracing::info!(
            generation = self.generation,
            rules = self.config.classifier.rules.len(),
            flows = self.engine.table().len(),
            "configuration reloaded: classifier and timeouts"
        );
    }

    /// Ends every live flow: rules removed (unless the backend is told to
    /// keep them), final counters folded in, records written.
    fn shutdown(mut self) -> RunSummary {
        let now = self.now();
        self.engine.poll(now);
        let flows_at_exit = self.engine.table().len();
        let rules_before = self.engine.rules_live();
        let keep = self.config.backend.keep_rules();
        self.engine.shutdown(keep);
        self.write_records();
        self.publish();
        if let Some(w) = self.records.as_mut() {
            if let Err(e) = w.flush() {
                self.record_errors += 1;
                tracing::error!(file = %w.path().display(), error = %e, "writing flow records failed");
            }
        }
        let rules_left = self.engine.rules_live();
        let records_written = self.records.as_ref().map_or(0, |w| w.written);
        if rules_left > 0 && !keep {
            tracing::error!(rules_left, "rules could not be removed at shutdown");
        }
        tracing::info!(
            flows = flows_at_exit,
            rules_removed = rules_before - rules_left,
            rules_left,
            records_written,
            record_errors = self.record_errors,
            "stopped: every live flow ended with its record"
        );
        RunSummary {
            flows_at_exit,
            rules_removed_at_exit: rules_before - rules_left,
            rules_left,
            records_written,
            sources: self.source_status(),
            control: self.control_stats(),
            engine_cpu_s: 0.0,
        }
    }
}

/// Where on the daemon's clock a source's first packet lands. A source
/// replayed fast keeps its timestamps' phase within the second, so timers
/// (whose slots are aligned to absolute time) fire for its flows exactly as
/// they do in `flowtable replay`, whatever the wall time at the start.
fn start_for(pace: Pace, now: u64, first_ts: u64) -> u64 {
    const S: u64 = 1_000_000_000;
    match pace {
        Pace::Timestamps => now,
        Pace::Fast => now + (first_ts % S + S - now % S) % S,
    }
}

/// CPU time of the calling thread, in ns: what a piece of work cost the
/// engine thread, whatever else the machine runs.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, ControlError> {
    serde_json::to_value(v).map_err(|e| ControlError::new(ErrorCode::Backend, format!("encoding the answer: {e}")))
}
