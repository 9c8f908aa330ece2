//! `flowtable run`: the daemon. A reader thread reads the sources, paces
//! them and hands each packet to its flow's worker (`crate::runtime`); the
//! workers own the shards of the flow table and the offload thread owns
//! the backend. This thread answers the control requests the socket
//! threads hand it, scattering them to the workers between their packet
//! batches and gathering the answers, writes the records of ended flows to
//! a rotated JSON-lines file and sends events to subscribers. SIGTERM and
//! SIGINT end every live flow (its record written, its rules removed);
//! SIGHUP reloads the classifier and timeouts on every worker, keeping
//! every flow.

pub mod bench;
pub use flowtable_control::filter;
pub mod metrics;
pub mod query;
pub mod records;
pub mod sources;

use crate::control::server::{self, Answer, Job, Server, Subscriber};
use crate::control::{
    BulkAnswer, Command, ConfigStatus, ControlError, ControlStats, ErrorCode, FlowStats, PacketStats, RecordsStatus,
    RuleCounted, RuleStats, SourceStatus, Stats, DEFAULT_PAGE, MAX_BULK_IDS, MAX_PAGE,
};
use crate::runtime::{Clock, Dispatcher, FromWorker, Runtime, RuntimeConfig, ToWorker, WorkerTimes, POLL_TICK_NS};
use crate::source::afpacket::AfPacketConfig;
use crossbeam_channel::{Receiver, RecvTimeoutError, TrySendError};
use filter::{Filter, Subject};
use flowtable_config::{Config, LogFormat, LogSection, Pace};
use flowtable_hw::{Action, Refusal};
use flowtable_offload::{Classifier, EngineError, EngineStats, Event, FlowRecord};
use flowtable_sw::context::{ContextError, FlowContext, Verdict};
use flowtable_sw::{FlowId, PortMap, SkipCounters, Stage};
use records::RecordsFile;
use serde_json::{json, Value};
use sources::{Pending, Slot, SlotState};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
/// How long the loop rests when a live source has nothing (the capture
/// ring hands frames over in blocks every 10 ms at most anyway).
const LIVE_IDLE_NS: u64 = 1_000_000;
/// Packets read from a source between looks at the control queue.
pub const READ_BURST: usize = 256;
/// The stages a live flow can be in.
const STAGES: [Stage; 7] = Stage::LIVE;
/// Rates are measured over this many one-second samples.
const RATE_SAMPLES: usize = 5;
/// How often the statistics are gathered for the metrics server: each
/// time costs every worker a control job, as a `flowtable stats` does.
const METRICS_EVERY: Duration = Duration::from_secs(1);

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
    /// CPU time the workers used from start to stop, all together.
    pub engine_cpu_s: f64,
    /// How each worker's packet path went.
    pub workers: Vec<WorkerTimes>,
    /// What each flow export sink did.
    pub export: Vec<flowtable_export::SinkStatus>,
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

/// What the reader thread has read, for statistics; published each tick.
#[derive(Default, Clone)]
struct ReaderStatus {
    sources: Vec<SourceStatus>,
    received: u64,
    received_bytes: u64,
    nic_packets: u64,
    nic_bytes: u64,
    sw_packets: u64,
    sw_bytes: u64,
    skipped: SkipCounters,
    /// Every source has ended (none is live).
    all_done: bool,
    /// Ports whose flows' records carry their capture file's own times,
    /// with the offset that moves them there (see `capture_port_offset`).
    capture_offsets: Vec<(u8, i64)>,
}

/// The reader thread: reads and paces the sources, parses, offers each
/// packet to an in-process NIC and hands the rest to their workers.
struct Reader {
    slots: Vec<Slot>,
    dispatch: Dispatcher,
    ports: PortMap,
    clock: Arc<Clock>,
    /// Replay's lockstep while fast sources run (see `crate::runtime`).
    lockstep: bool,
    next_poll: u64,
    status: ReaderStatus,
    shared: Arc<Mutex<ReaderStatus>>,
    last_losses: Instant,
    /// Every configured source is a capture file (the workers' own live
    /// sources are not among `slots`): see `capture_port_offset`.
    all_files: bool,
}

impl Reader {
    fn run(mut self, stop: &AtomicBool) {
        self.next_poll = self.clock.now();
        loop {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let replaying_fast = self.slots.iter().any(|s| s.running() && s.pace == Pace::Fast);
            if self.lockstep && !replaying_fast {
                // Fast replay is over: from here the workers and the offload
                // thread run free on wall time.
                let now = self.clock.now();
                self.dispatch.go_free(now);
                self.lockstep = false;
            }
            self.clock.set_frozen(replaying_fast);
            let mut now = self.clock.now();
            let (worked, wake_at) = self.pump(&mut now);
            if now >= self.next_poll {
                self.tick(now);
            }
            if !worked {
                let until = wake_at.map_or(self.next_poll, |w| w.min(self.next_poll));
                let wait = until.saturating_sub(self.clock.now()).min(POLL_TICK_NS);
                std::thread::sleep(Duration::from_nanos(wait));
            }
        }
        let now = self.clock.now();
        self.dispatch.go_free(now);
        self.publish();
    }

    /// Up to `READ_BURST` packets from each running source. Returns whether
    /// any source made progress, and when the earliest held packet is due.
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
        // Nothing waits in a half-filled batch while the sources are quiet.
        self.dispatch.flush();
        // A source replayed fast moves the clock with its packets.
        self.clock.advance_to(*now);
        (worked, wake)
    }

    /// One packet of source `i`: read (or taken from the held one), paced,
    /// offered to the NIC, else handed to its worker.
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
                        parsed: raw.parse(&self.ports),
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
                Pace::Fast => *now = pending.due_ns,
            }
        }
        slot.packets += 1;
        slot.bytes += pending.wire_len as u64;
        self.status.received += 1;
        self.status.received_bytes += pending.wire_len as u64;
        if *now >= self.next_poll {
            self.tick(*now);
        }
        match pending.parsed {
            Err(reason) => self.status.skipped.add(reason),
            Ok(info) => {
                // A frame counts at its own time (a live one's capture
                // time, a paced file's moved onto the daemon's clock), not
                // when it got its turn: that places it before or after its
                // flow's rule went in, and gives a file's records its times.
                // Not so for a paced file whose reading fell far behind (the
                // workers age flows on the wall clock, and the lag is not the
                // flow's idling), nor for a fast one, whose packets set the
                // clock: one read behind it is a file read in turn with
                // another, whose packets moved the clock on.
                let own = pending.due_ns.min(*now);
                let at = match (live, self.slots[i].pace) {
                    (true, _) => own,
                    (false, Pace::Timestamps) if *now - own <= PACED_LAG_NS => own,
                    (false, _) => *now,
                };
                if self.dispatch.offer(&info, at) {
                    self.status.nic_packets += 1;
                    self.status.nic_bytes += pending.wire_len as u64;
                } else {
                    self.status.sw_packets += 1;
                    self.status.sw_bytes += pending.wire_len as u64;
                    self.dispatch.push(info, at, pending.mark);
                }
            }
        }
        Step::Handled
    }

    /// A poll tick: the workers poll (in lockstep told so, else on the
    /// clock), and the status is published.
    fn tick(&mut self, now: u64) {
        self.dispatch.tick(now);
        self.next_poll = now + POLL_TICK_NS;
        // Once a second: reading them is a syscall per ring (AF_PACKET) or
        // a PMD stats call per port (DPDK).
        if self.last_losses.elapsed() >= Duration::from_secs(1) {
            self.last_losses = Instant::now();
            for slot in self.slots.iter_mut().filter(|s| s.live) {
                slot.losses = slot.source.capture_losses();
            }
        }
        self.publish();
    }

    fn publish(&mut self) {
        self.status.sources = source_status(&self.slots, self.all_files);
        self.status.capture_offsets = capture_offsets(&self.slots, self.all_files);
        self.status.all_done = self.slots.iter().all(|s| !s.running());
        if let Ok(mut s) = self.shared.lock() {
            s.clone_from(&self.status);
        }
    }
}

fn source_status(slots: &[Slot], all_files: bool) -> Vec<SourceStatus> {
    slots
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
            capture_offset_ns: s.capture_offset_ns(),
            capture_times: s.file_port.map(|p| capture_port_offset(slots, all_files, p).is_some()),
        })
        .collect()
}

/// The offset by which records of flows on `port` are moved back onto its
/// capture file's own clock: only when every source is a capture file and
/// those on `port` agree (files of one port started together), since a
/// live or generated source's flows on the same port run on the daemon's
/// clock and a record can't be told apart.
fn capture_port_offset(slots: &[Slot], all_files: bool, port: u8) -> Option<i64> {
    if !all_files || slots.iter().any(|s| s.file_port.is_none()) {
        return None;
    }
    let mut offsets = slots.iter().filter(|s| s.file_port == Some(port)).map(Slot::capture_offset_ns);
    let first = offsets.next()??;
    offsets.all(|o| o == Some(first)).then_some(first)
}

/// Per port, the offset of `capture_port_offset` (None: daemon times).
pub(crate) fn capture_offsets(slots: &[Slot], all_files: bool) -> Vec<(u8, i64)> {
    let mut ports: Vec<u8> = slots.iter().filter_map(|s| s.file_port).collect();
    ports.sort_unstable();
    ports.dedup();
    ports.into_iter().filter_map(|p| Some((p, capture_port_offset(slots, all_files, p)?))).collect()
}

/// One shard's part of the statistics.
struct ShardFigures {
    stats: EngineStats,
    stages: Vec<(Stage, usize)>,
    placements: [u64; filter::PLACEMENTS.len()],
    live: usize,
    capacity: usize,
    queued: usize,
}

fn shard_figures(s: &mut flowtable_offload::Shard) -> ShardFigures {
    // Neither count scans the table: stages are counted as flows move,
    // and only flows with an offload state can have rules.
    let mut placements = [0u64; filter::PLACEMENTS.len()];
    let mut with_state = 0u64;
    for (_, state) in s.offload_states() {
        with_state += 1;
        let p = query::placement_of(Some(state));
        if let Some(i) = filter::PLACEMENTS.iter().position(|x| *x == p) {
            placements[i] += 1;
        }
    }
    if let Some(i) = filter::PLACEMENTS.iter().position(|x| *x == "none") {
        placements[i] += (s.table().len() as u64).saturating_sub(with_state);
    }
    ShardFigures {
        stats: s.stats().clone(),
        stages: s.table().count_by_stage().collect(),
        placements,
        live: s.table().len(),
        capacity: s.table().capacity(),
        queued: s.queued(),
    }
}

struct Daemon {
    /// The workers and offload thread; taken at shutdown.
    rt: Option<Runtime>,
    config: Config,
    config_path: Option<PathBuf>,
    /// The classifier the workers run (a reload builds its successor from
    /// it, so flows keep the names of rules the reload removes).
    classifier: Arc<Classifier>,
    /// The backend's name and capabilities, to refuse a reload whose
    /// actions it can't do.
    capabilities: (String, flowtable_hw::Capabilities),
    generation: u64,
    reloads_refused: u64,
    reader: Option<JoinHandle<()>>,
    reader_stop: Arc<AtomicBool>,
    reader_status: Arc<Mutex<ReaderStatus>>,
    /// The workers read the interfaces themselves.
    live: bool,
    started: Instant,
    /// The records file, on its own thread.
    records: Option<RecordsFile>,
    /// Flow export (IPFIX collectors), each sink on its own thread.
    sinks: flowtable_export::Sinks,
    subscribers: Vec<Subscriber>,
    events_enabled: bool,
    requests: u64,
    /// The workers' CPU on control jobs, kept once the runtime is gone.
    workers_job_cpu_ns: u64,
    samples: VecDeque<Sample>,
    next_tick: Instant,
    /// When the shards' lists of largest flows were last rebuilt for a query.
    last_largest_rebuild: Instant,
    /// Where the metrics server finds the statistics; `None` when off.
    metrics: Option<metrics::Slot>,
    last_metrics: Option<Instant>,
}

/// Longest an `unoffload` answer waits for the offload thread to take the
/// rules out; past it, the answer says `removing`.
const UNOFFLOAD_WAIT: Duration = Duration::from_secs(5);

/// Flows a bulk command (`unoffload` by filter, `flush`) handles in one
/// control job on a shard: a flush of a million flows goes as many jobs,
/// so no one job holds a worker's packets up for long.
const BULK_CHUNK: usize = 4096;

type BulkJob = crate::runtime::EachJob<BulkPart>;

/// What a bulk command does to each flow it selected.
#[derive(Debug, Clone, Copy)]
enum Bulk {
    /// Back to software, as `unoffload ID`.
    Unoffload,
    /// Ended now with its record (reason `evicted`), its rules removed first.
    Flush,
}

/// One shard's part of a bulk command, one job's worth.
#[derive(Default)]
struct BulkPart {
    done: Vec<FlowId>,
    skipped: usize,
    failed: usize,
    /// Waiting for the offload thread (rules going out, an install withdrawn).
    waiting: Vec<FlowId>,
}

impl Bulk {
    fn apply(self, s: &mut flowtable_offload::Shard, ids: Vec<FlowId>) -> BulkPart {
        let mut part = BulkPart::default();
        for id in ids {
            match self {
                Bulk::Unoffload => match s.request_unoffload(id) {
                    Ok(Stage::Removing | Stage::Installing) => part.waiting.push(id),
                    Ok(_) => part.done.push(id),
                    // Not offloaded (or ended since the scan): nothing to take back.
                    Err(_) => part.skipped += 1,
                },
                Bulk::Flush => match s.evict(id) {
                    Ok(_) if s.table().get(id).is_none() => part.done.push(id),
                    Ok(_) => part.waiting.push(id),
                    // Ended since the scan, with its own record.
                    Err(_) => part.skipped += 1,
                },
            }
        }
        part
    }

    /// Where the flows `apply` left waiting are now.
    fn outcome(self, s: &mut flowtable_offload::Shard, ids: Vec<FlowId>) -> BulkPart {
        let mut part = BulkPart::default();
        for id in ids {
            let stage = s.table().get(id).map(|f| f.stage());
            match (self, stage) {
                (_, Some(Stage::Removing | Stage::Installing)) => part.waiting.push(id),
                // Removing its rules failed: it stays offloaded (retried).
                (Bulk::Unoffload, Some(Stage::Offloaded)) => part.failed += 1,
                (Bulk::Unoffload, _) => part.done.push(id),
                (Bulk::Flush, None) => part.done.push(id),
                // Its rules failed to go: it ends once a retry takes them.
                (Bulk::Flush, Some(_)) => part.waiting.push(id),
            }
        }
        part
    }
}

/// Most often a `flows` query may rebuild the table's list of largest flows.
const LARGEST_REBUILD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the daemon until `controls.stop` is set, then ends every flow and
/// returns. The socket is removed on the way out, error or not.
pub fn run(config: Config, config_path: Option<PathBuf>, controls: &Controls) -> Result<RunSummary, String> {
    // The backend first: a dpdk source reads the ports the DPDK backend starts.
    let backend = crate::backend::build(&config)?;
    crate::backend::check_actions(&config, backend.name(), backend.capabilities())
        .map_err(|(field, message)| format!("at `{field}`: {message}"))?;
    for (field, message) in config.warnings() {
        tracing::warn!(field = %field, "{message}");
    }
    let capabilities = (backend.name().to_string(), backend.capabilities().clone());
    let classifier = Classifier::new(&config.classifier)?;
    let records = match &config.records.path {
        Some(p) => Some(RecordsFile::open(Path::new(p), config.records.rotate_bytes, config.records.keep)?),
        None => None,
    };
    let collectors = crate::export::ipfix_configs(&config.export)?;
    let sinks = crate::export::start(&collectors, flowtable_export::QueueMode::Drop)?;
    // Replay's lockstep while every source is a file or the generator read
    // as fast as possible: their flows then age exactly as in `flowtable
    // replay`, whatever the number of workers.
    let lockstep = !config.sources.is_empty() && config.sources.iter().all(source_is_fast);
    let clock = Clock::new();
    let backend_name = backend.name().to_string();
    let mut rt_config = RuntimeConfig::from_config(&config, config.workers, lockstep);
    let interfaces = sources::has_interfaces(&config.sources);
    // With several workers, each reads its own share of the DPDK rx queues
    // (unless it reads interfaces: one live source a worker).
    let dpdk_share = !interfaces && config.workers > 1 && sources::has_dpdk(&config.sources);
    let live = interfaces || dpdk_share;
    if interfaces {
        // Each worker reads the interfaces itself, sharing each port's
        // frames with the others by the kernel's symmetric flow hash.
        let sources = config.sources.clone();
        let twins = config.egress_twins();
        let fanout = (config.workers > 1).then(|| (std::process::id() as u16).rotate_left(5));
        rt_config.live = Some(Arc::new(move |_worker| {
            let cfg = AfPacketConfig { fanout_base: fanout, ..AfPacketConfig::default() };
            sources::open_interfaces(&sources, &twins, cfg).map(|slot| (slot.name, slot.source))
        }));
    } else if dpdk_share {
        let (workers, stop) = (config.workers, controls.stop.clone());
        rt_config.live = Some(Arc::new(move |worker| {
            sources::open_dpdk_share(worker, workers, &stop).map(|slot| (slot.name, slot.source))
        }));
    }
    let mut rt = Runtime::start(rt_config, classifier, backend, clock.clone())?;
    let dispatch = rt.dispatcher();
    let reader_stop = Arc::new(AtomicBool::new(false));
    let reader_status = Arc::new(Mutex::new(ReaderStatus::default()));
    let (opened_tx, opened_rx) = crossbeam_channel::bounded::<Result<Vec<(String, Pace)>, String>>(1);
    let reader = {
        let all_files = config.sources.iter().all(|s| matches!(s, flowtable_config::SourceConfig::Pcap { .. }));
        let sources = config.sources.clone();
        let stop = reader_stop.clone();
        let outer_stop = controls.stop.clone();
        let shared = reader_status.clone();
        let ports = config.port_map().unwrap_or_default();
        let twins = config.egress_twins();
        let clock = clock.clone();
        std::thread::Builder::new()
            .name("reader".into())
            .spawn(move || {
                // Sources are opened on the thread that reads them: a
                // capture ring's mapping never crosses threads.
                let slots = match sources::open_sources(&sources, &twins, &outer_stop, !interfaces, !dpdk_share) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = opened_tx.send(Err(e));
                        return;
                    }
                };
                let _ = opened_tx.send(Ok(slots.iter().map(|s| (s.name.clone(), s.pace)).collect()));
                let reader = Reader {
                    status: ReaderStatus { sources: source_status(&slots, all_files), ..ReaderStatus::default() },
                    slots,
                    dispatch,
                    ports,
                    clock,
                    lockstep,
                    next_poll: 0,
                    shared,
                    last_losses: Instant::now(),
                    all_files,
                };
                reader.run(&stop);
            })
            .map_err(|e| format!("starting the reader thread: {e}"))?
    };
    let opened = opened_rx.recv().map_err(|_| "the reader thread failed".to_string()).and_then(|r| r);
    let opened = match opened {
        Ok(o) => o,
        Err(e) => {
            let _ = reader.join();
            let _ = rt.shutdown(false);
            return Err(e);
        }
    };
    let (jobs_tx, jobs_rx) = server::job_queue();
    make_socket_dir(Path::new(&config.control.socket));
    let server = match Server::start(Path::new(&config.control.socket), jobs_tx) {
        Ok(s) => s,
        Err(e) => {
            reader_stop.store(true, Ordering::SeqCst);
            let _ = reader.join();
            let _ = rt.shutdown(false);
            return Err(e);
        }
    };
    let metrics_slot = metrics::Slot::default();
    // Checked by the configuration's validation; a bind error (the port in
    // use) stops the start as a taken control socket does.
    let metrics_server =
        match config.metrics.address().map(|a| a.map(|a| metrics::MetricsServer::start(a, metrics_slot.clone()))) {
            Ok(None) => None,
            Ok(Some(Ok(m))) => Some(m),
            Err(e) | Ok(Some(Err(e))) => {
                reader_stop.store(true, Ordering::SeqCst);
                let _ = reader.join();
                let _ = rt.shutdown(false);
                return Err(e);
            }
        };
    // Current rates are sampled by each worker's poll (`flowtable_offload::Shard::enable_rates`).
    rt.ask_all(|s| s.enable_rates());
    if let Some(m) = &metrics_server {
        tracing::info!(url = %format!("http://{}/metrics", m.addr()), "serving Prometheus metrics");
    }
    tracing::info!(
        socket = %server.path().display(),
        backend = backend_name,
        workers = rt.workers(),
        sources = opened.len(),
        rules = config.classifier.rules.len(),
        records = config.records.path.as_deref().unwrap_or("-"),
        export = %collectors.iter().map(|c| c.name()).collect::<Vec<_>>().join(", "),
        "flowtable daemon started"
    );
    for (name, pace) in &opened {
        tracing::info!(source = %name, pace = pace.as_str(), "reading packets");
    }
    let mut daemon = Daemon {
        rt: Some(rt),
        classifier: Arc::new(Classifier::new(&config.classifier)?),
        capabilities,
        config,
        config_path,
        generation: 1,
        reloads_refused: 0,
        reader: Some(reader),
        reader_stop,
        reader_status,
        live,
        started: Instant::now(),
        records,
        sinks,
        subscribers: Vec::new(),
        events_enabled: false,
        requests: 0,
        workers_job_cpu_ns: 0,
        samples: VecDeque::new(),
        next_tick: Instant::now(),
        last_largest_rebuild: Instant::now() - LARGEST_REBUILD_EVERY,
        metrics: metrics_server.is_some().then_some(metrics_slot),
        last_metrics: None,
    };
    // Ready only now: the socket listens and the loop below answers what
    // queued on it meanwhile, so a client that systemd starts after this
    // unit (After=) finds the daemon answering.
    notify_systemd(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!("serving on {}", Path::new(&daemon.config.control.socket).display())),
    ]);
    daemon.run_loop(&jobs_rx, controls);
    notify_systemd(&[sd_notify::NotifyState::Stopping, sd_notify::NotifyState::Status("stopping: ending every flow")]);
    let summary = daemon.shutdown();
    // Scrapes are answered (with the last figures) until the very end.
    drop(metrics_server);
    // Requests still queued are answered "shutting down" as their reply
    // channels close; then the socket goes.
    drop(jobs_rx);
    drop(server);
    summary
}

/// Tells the service manager (systemd, `Type=notify`) what the daemon is
/// doing; nothing when it was not started with NOTIFY_SOCKET.
fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "could not notify the service manager");
    }
}

/// The default socket is in /run/flowtable/, which systemd makes for the
/// unit (RuntimeDirectory=); a daemon started by hand makes it itself. Only
/// the last directory is made: a path whose parents are missing is more
/// likely a mistake, and the bind then says so.
fn make_socket_dir(socket: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        if let Err(e) = std::fs::DirBuilder::new().mode(0o755).create(dir) {
            tracing::debug!(dir = %dir.display(), error = %e, "could not make the control socket's directory");
        }
    }
}

fn source_is_fast(s: &flowtable_config::SourceConfig) -> bool {
    use flowtable_config::SourceConfig;
    match s {
        SourceConfig::Pcap { pace, .. } => *pace == Pace::Fast,
        SourceConfig::Synthetic(map) => map.get("pace").and_then(|v| v.as_str()) == Some("fast"),
        _ => false,
    }
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

/// A flow's stage and, if its offload was refused, the refusal.
fn outcome_of(s: &flowtable_offload::Shard, flow: FlowId) -> (Stage, Option<Refusal>) {
    let stage = s.table().get(flow).map_or(Stage::Free, |f| f.stage());
    (stage, s.offload_state(flow).and_then(|o| o.refusal.clone()))
}

fn no_such_flow(id: FlowId) -> ControlError {
    ControlError::new(ErrorCode::NoSuchFlow, format!("no flow with id {id}"))
}

fn workers_gone() -> ControlError {
    ControlError::new(ErrorCode::Backend, "the workers are not answering (shutting down?)".to_string())
}

impl Daemon {
    fn rt(&self) -> &Runtime {
        self.rt.as_ref().expect("the runtime lives until shutdown")
    }

    fn now(&self) -> u64 {
        self.rt().clock.now()
    }

    fn run_loop(&mut self, jobs: &Receiver<Job>, controls: &Controls) {
        loop {
            if controls.stop.load(Ordering::Relaxed) {
                tracing::info!("stop requested");
                return;
            }
            if controls.exit_when_done && !self.live && self.reader_status.lock().is_ok_and(|s| s.all_done) {
                tracing::info!("every source has ended: stopping");
                return;
            }
            if controls.reload.swap(false, Ordering::Relaxed) {
                // `systemctl reload` shows the unit reloading until READY=1
                // again; systemd 253 and later want the monotonic time with it.
                let mut reloading = vec![sd_notify::NotifyState::Reloading];
                reloading.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
                notify_systemd(&reloading);
                self.reload();
                notify_systemd(&[sd_notify::NotifyState::Ready]);
            }
            self.take_output();
            if Instant::now() >= self.next_tick {
                self.tick();
            }
            let wait = self.next_tick.saturating_duration_since(Instant::now()).min(Duration::from_millis(10));
            match jobs.recv_timeout(wait) {
                Ok(job) => {
                    // A few more waiting ones, not all: clients asking back
                    // to back must not keep records, ticks and a stop
                    // waiting behind them.
                    self.answer(job);
                    let until = Instant::now() + Duration::from_millis(10);
                    while Instant::now() < until {
                        let Ok(job) = jobs.try_recv() else { break };
                        self.answer(job);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(wait),
            }
        }
    }

    /// Records and events the workers handed back: to the file and to
    /// subscribers.
    fn take_output(&mut self) {
        let output = self.rt().output.clone();
        self.take_from(&output);
    }

    fn take_from(&mut self, output: &Receiver<FromWorker>) {
        for out in output.try_iter() {
            match out {
                FromWorker::Records(records) => self.write_records(records),
                FromWorker::Events(events, flows) => self.publish(&events, &flows),
            }
        }
    }

    /// Every 10 ms: records flushed; once a second, rates sampled.
    fn tick(&mut self) {
        self.next_tick = Instant::now() + Duration::from_nanos(POLL_TICK_NS);
        if self.samples.back().is_none_or(|s| s.at.elapsed() >= Duration::from_secs(1)) {
            let st = self.rt().offload_status().stats;
            let received = self.read_status().received;
            self.samples.push_back(Sample {
                at: Instant::now(),
                installed: st.rules_installed,
                removed: st.rules_removed,
                packets: received,
            });
            if self.samples.len() > RATE_SAMPLES {
                self.samples.pop_front();
            }
        }
        if self.metrics.is_some() && self.last_metrics.is_none_or(|t| t.elapsed() >= METRICS_EVERY) {
            self.last_metrics = Some(Instant::now());
            // Gathered here, on the main thread's own schedule: a scrape
            // only reads what was put in the slot.
            match self.stats(self.now()) {
                Ok(st) => {
                    if let Some(slot) = &self.metrics {
                        slot.publish(st);
                    }
                }
                Err(e) => tracing::debug!(error = %e.message, "statistics for the metrics not gathered"),
            }
        }
    }

    /// Ended flows' records to every sink: the file and the IPFIX
    /// collectors, each on its own thread and queue; none blocks here.
    fn write_records(&mut self, records: Vec<FlowRecord>) {
        if records.is_empty() || (self.records.is_none() && self.sinks.is_empty()) {
            return;
        }
        let mut records = records;
        let offsets = self.reader_status.lock().map(|s| s.capture_offsets.clone()).unwrap_or_default();
        if !offsets.is_empty() {
            for r in &mut records {
                if let Some(&(_, off)) = offsets.iter().find(|(p, _)| *p == r.ingress) {
                    to_capture_clock(r, off);
                }
            }
        }
        let batch = Arc::new(records);
        if let Some(f) = &self.records {
            f.send(&batch);
        }
        self.sinks.send(&batch);
    }

    /// Sends new events to subscribers; one that can't keep up is cut off
    /// rather than slowing anything down. A subscriber's filter judges
    /// each event's flow as the worker handed it over (`flows`), an
    /// expiry by its record, and a flow gone by then by its expiry's
    /// record in the same batch.
    fn publish(&mut self, events: &[Event], flows: &[Option<filter::Snapshot>]) {
        if self.subscribers.is_empty() {
            return;
        }
        let filtered = self.subscribers.iter().any(|s| s.filter.is_some());
        let ended: std::collections::HashMap<FlowId, &FlowRecord> = if filtered {
            events
                .iter()
                .filter_map(|e| match e {
                    Event::Expired { record, .. } => Some((record.id, &**record)),
                    _ => None,
                })
                .collect()
        } else {
            Default::default()
        };
        for (i, ev) in events.iter().enumerate() {
            let Ok(line) = serde_json::to_string(ev) else { continue };
            let line: Arc<str> = line.into();
            let subject: Option<&dyn Subject> = match ev {
                Event::Expired { record, .. } => Some(&**record),
                _ => match flows.get(i).and_then(Option::as_ref) {
                    Some(snapshot) => Some(snapshot),
                    None => ended.get(&query::event_flow(ev)).map(|r| *r as &dyn Subject),
                },
            };
            self.subscribers.retain(|s| {
                if let Some(f) = &s.filter {
                    if !subject.is_some_and(|x| f.matches_subject(x)) {
                        return true;
                    }
                }
                match s.events.try_send(line.clone()) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_)) => {
                        s.lagged.store(true, Ordering::SeqCst);
                        tracing::warn!("an event subscriber fell behind and was cut off");
                        false
                    }
                    Err(TrySendError::Disconnected(_)) => false,
                }
            });
        }
    }

    /// A request's filter, port names from the configuration; parsed here
    /// once, then shared by the workers.
    fn parse_filter(&self, text: Option<&str>) -> Result<Filter, ControlError> {
        let names = filter::Names { ports: self.config.ports.iter().map(|p| p.name.clone()).collect() };
        Filter::parse_with(text.unwrap_or(""), &names)
            .map_err(|e| ControlError::new(ErrorCode::BadFilter, e.to_string()))
    }

    /// `unoffload` by filter and `flush`: one scan of every shard picks the
    /// flows the filter selects now; then they are handled `BULK_CHUNK` at
    /// a time, each chunk a control job on its shard (the shards in
    /// parallel, each job within the worker's control budget, so packets
    /// go on between them); then the answer waits, as `unoffload` of one
    /// flow does, for the offload thread to take their rules out.
    fn bulk(&self, what: Bulk, filter: Filter, now: u64) -> Result<BulkAnswer, ControlError> {
        let filter = Arc::new(filter);
        let mut queues: Vec<Vec<FlowId>> = self.rt().ask_all(move |s| {
            let facts = query::EngineFacts(s);
            s.flows().filter(|(id, f)| filter.matches(*id, f, &facts, now)).map(|(id, _)| id).collect()
        });
        if queues.len() < self.rt().workers() {
            return Err(workers_gone());
        }
        let mut answer = BulkAnswer { matched: queues.iter().map(Vec::len).sum(), ..BulkAnswer::default() };
        let mut waiting: Vec<Vec<FlowId>> = vec![Vec::new(); queues.len()];
        let add = |answer: &mut BulkAnswer, part: BulkPart| {
            answer.done += part.done.len();
            answer.skipped += part.skipped;
            answer.failed += part.failed;
            let room = MAX_BULK_IDS.saturating_sub(answer.flows.len());
            answer.flows.extend(part.done.into_iter().take(room));
        };
        while queues.iter().any(|q| !q.is_empty()) {
            let jobs = queues
                .iter_mut()
                .map(|q| {
                    if q.is_empty() {
                        return None;
                    }
                    let rest = q.split_off(q.len().min(BULK_CHUNK));
                    let chunk = std::mem::replace(q, rest);
                    Some(Box::new(move |s: &mut flowtable_offload::Shard| what.apply(s, chunk)) as BulkJob)
                })
                .collect();
            for (i, part) in self.rt().ask_each(jobs).into_iter().enumerate() {
                if let Some(mut part) = part {
                    waiting[i].append(&mut part.waiting);
                    add(&mut answer, part);
                }
            }
        }
        let deadline = Instant::now() + UNOFFLOAD_WAIT;
        while waiting.iter().any(|w| !w.is_empty()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
            let jobs = waiting
                .iter_mut()
                .map(|w| {
                    if w.is_empty() {
                        return None;
                    }
                    let ids = std::mem::take(w);
                    Some(Box::new(move |s: &mut flowtable_offload::Shard| what.outcome(s, ids)) as BulkJob)
                })
                .collect();
            for (i, part) in self.rt().ask_each(jobs).into_iter().enumerate() {
                if let Some(mut part) = part {
                    waiting[i].append(&mut part.waiting);
                    add(&mut answer, part);
                }
            }
        }
        answer.pending = waiting.iter().map(Vec::len).sum();
        Ok(answer)
    }

    fn answer(&mut self, job: Job) {
        let result = self.handle(job.cmd);
        self.requests += 1;
        // A client that gave up waiting is simply gone.
        let _ = job.reply.send(result);
    }

    /// Asks the flow's shard for its stage and refusal every 2 ms while
    /// `waiting` says the offload thread has yet to answer, for at most
    /// `UNOFFLOAD_WAIT`, from `first` (what the request itself found). The
    /// wait is here, on the main thread: the worker's packets go on.
    fn await_outcome(
        &self,
        shard: usize,
        flow: FlowId,
        first: (Stage, Option<Refusal>),
        waiting: impl Fn(Stage, bool) -> bool,
    ) -> Result<(Stage, Option<Refusal>), ControlError> {
        let deadline = Instant::now() + UNOFFLOAD_WAIT;
        let mut now = first;
        while waiting(now.0, now.1.is_some()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
            now = self.rt().ask_one(shard, move |s| outcome_of(s, flow)).ok_or_else(workers_gone)?;
        }
        Ok(now)
    }

    fn shard_of(&self, id: FlowId) -> Result<usize, ControlError> {
        let shard = id.shard() as usize;
        if shard >= self.rt().workers() {
            return Err(no_such_flow(id));
        }
        Ok(shard)
    }

    fn handle(&mut self, cmd: Command) -> Result<Answer, ControlError> {
        let now = self.now();
        let value = match cmd {
            Command::Ping {} => json!({"pong": true}),
            Command::Flows { filter, sort, offset, limit } => {
                let filter = self.parse_filter(filter.as_deref())?;
                let limit = limit.unwrap_or(DEFAULT_PAGE);
                if limit > MAX_PAGE {
                    return Err(ControlError::new(
                        ErrorCode::BadRequest,
                        format!("limit {limit}: at most {MAX_PAGE} flows a page"),
                    ));
                }
                let keep = offset.saturating_add(limit);
                let may_rebuild = self.last_largest_rebuild.elapsed() >= LARGEST_REBUILD_EVERY;
                if may_rebuild {
                    self.last_largest_rebuild = Instant::now();
                }
                let filter = Arc::new(filter);
                let pages = self.rt().ask_all(move |shard| {
                    if sort == crate::control::SortKey::Bytes
                        && filter.is_empty()
                        && keep > 0
                        && may_rebuild
                        && shard.table().largest_by_bytes().1.count() < keep
                    {
                        // Too few listed to answer: one rebuild (two scans) sets
                        // the bar so the next such queries need no scan. At most
                        // once a second, so flows that all tie can't make every
                        // query pay.
                        shard.rebuild_largest_flows(keep.max(1024));
                    }
                    query::list(shard, &filter, sort, 0, keep, now)
                });
                if pages.len() < self.rt().workers() {
                    return Err(workers_gone());
                }
                to_value(&query::merge(pages, sort, offset, limit, now))?
            }
            Command::Flow { flow } => {
                let shard = self.shard_of(flow)?;
                self.rt()
                    .ask_one(shard, move |s| query::detail(s, flow, now))
                    .ok_or_else(workers_gone)?
                    .ok_or_else(|| no_such_flow(flow))?
            }
            Command::Stats {} => to_value(&self.stats(now)?)?,
            Command::SetContext { flow, label, verdict, metadata } => {
                let shard = self.shard_of(flow)?;
                let offloading = matches!(verdict, Some(Verdict::Drop | Verdict::Offload));
                let asked = verdict.as_ref().map(Verdict::as_str);
                let (ctx, first) = self
                    .rt()
                    .ask_one(shard, move |s| {
                        let ctx = s.set_context(flow, FlowContext { label, verdict, metadata })?;
                        Ok::<_, EngineError>((ctx, outcome_of(s, flow)))
                    })
                    .ok_or_else(workers_gone)?
                    .map_err(engine_error)?;
                tracing::info!(flow = %flow, verdict = asked, "context set");
                // A verdict that offloads is answered, as `offload` is, once
                // the rules are in (or refused); rules it replaces go first.
                let (stage, refusal) = if offloading {
                    self.await_outcome(shard, flow, first, |stage, refused| {
                        !refused && matches!(stage, Stage::Queued | Stage::Installing | Stage::Removing)
                    })?
                } else {
                    first
                };
                if let (true, Some(r)) = (offloading && stage == Stage::Refused, refusal) {
                    return Err(ControlError::new(
                        ErrorCode::Backend,
                        format!("flow {flow}: the verdict is kept, but its offload was refused: {r}"),
                    ));
                }
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
                let shard = self.shard_of(flow)?;
                let first = self
                    .rt()
                    .ask_one(shard, move |s| {
                        s.request_offload(flow, action)?;
                        Ok::<_, EngineError>(outcome_of(s, flow))
                    })
                    .ok_or_else(workers_gone)?
                    .map_err(engine_error)?;
                tracing::info!(flow = %flow, action = %action, stage = first.0.as_str(), "offload requested");
                // The answer says how it went: the offload thread's outcome.
                let (stage, refusal) = self.await_outcome(shard, flow, first, |stage, refused| {
                    !refused && matches!(stage, Stage::Queued | Stage::Installing)
                })?;
                if let Some(r) = refusal {
                    return Err(ControlError::new(
                        ErrorCode::Backend,
                        format!("flow {flow}: the offload was refused: {r}"),
                    ));
                }
                json!({"flow": flow, "action": action, "stage": stage})
            }
            Command::Unoffload { flow: None, filter: Some(filter) } => {
                let filter = self.parse_filter(Some(&filter))?;
                let answer = self.bulk(Bulk::Unoffload, filter, now)?;
                tracing::info!(
                    matched = answer.matched,
                    unoffloaded = answer.done,
                    pending = answer.pending,
                    failed = answer.failed,
                    "flows taken back to software by filter"
                );
                to_value(&answer)?
            }
            Command::Unoffload { flow: Some(_), filter: Some(_) } | Command::Unoffload { flow: None, filter: None } => {
                return Err(ControlError::new(
                    ErrorCode::BadRequest,
                    "unoffload takes one of `flow` (a flow id) or `filter` (an expression)",
                ))
            }
            Command::Flush { filter } => {
                let filter = self.parse_filter(filter.as_deref())?;
                let answer = self.bulk(Bulk::Flush, filter, now)?;
                tracing::info!(
                    matched = answer.matched,
                    flushed = answer.done,
                    pending = answer.pending,
                    "flows flushed: ended with their records"
                );
                to_value(&answer)?
            }
            Command::Unoffload { flow: Some(flow), filter: None } => {
                let shard = self.shard_of(flow)?;
                let first = self
                    .rt()
                    .ask_one(shard, move |s| s.request_unoffload(flow).map(|stage| (stage, None)))
                    .ok_or_else(workers_gone)?
                    .map_err(engine_error)?;
                // The offload thread takes the rules out; the answer waits for it.
                let (stage, _) = self.await_outcome(shard, flow, first, |stage, _| {
                    matches!(stage, Stage::Removing | Stage::Installing)
                })?;
                if stage == Stage::Offloaded {
                    return Err(ControlError::new(
                        ErrorCode::Backend,
                        format!("flow {flow}: removing its rules failed; it stays offloaded (retried)"),
                    ));
                }
                tracing::info!(flow = %flow, stage = stage.as_str(), "taken back to software");
                json!({"flow": flow, "stage": stage})
            }
            Command::Subscribe { filter } => {
                let filter = match filter {
                    Some(text) => Some(self.parse_filter(Some(&text))?),
                    None => None,
                };
                if !self.events_enabled {
                    self.events_enabled = true;
                    self.rt().tell_all(|| ToWorker::EnableEvents);
                }
                let (mut subscriber, subscription) = server::subscription();
                subscriber.filter = filter.filter(|f| !f.is_empty());
                self.subscribers.push(subscriber);
                return Ok(Answer::Events(subscription));
            }
        };
        Ok(Answer::Value(value))
    }

    fn rates(&self, installed: u64, removed: u64, received: u64) -> (f64, f64, f64) {
        let Some(first) = self.samples.front() else { return (0.0, 0.0, 0.0) };
        let dt = first.at.elapsed().as_secs_f64();
        if dt < 0.05 {
            return (0.0, 0.0, 0.0);
        }
        (
            installed.saturating_sub(first.installed) as f64 / dt,
            removed.saturating_sub(first.removed) as f64 / dt,
            received.saturating_sub(first.packets) as f64 / dt,
        )
    }

    fn stats(&self, now: u64) -> Result<Stats, ControlError> {
        let figures = self.rt().ask_all(shard_figures);
        if figures.len() < self.rt().workers() {
            return Err(workers_gone());
        }
        let offload = self.rt().offload_status();
        let reader = self.read_status();
        let mut st = EngineStats::from_coordinator(&offload.stats);
        let mut stages = [0u64; STAGES.len()];
        let mut placements = [0u64; filter::PLACEMENTS.len()];
        let (mut live, mut capacity, mut queued) = (0usize, 0usize, offload.queued);
        let file = self.records.as_ref().map(|f| f.counts()).unwrap_or_default();
        for f in &figures {
            st.add(&f.stats);
            for (stage, n) in &f.stages {
                if let Some(i) = STAGES.iter().position(|s| s == stage) {
                    stages[i] += *n as u64;
                }
            }
            for (total, n) in placements.iter_mut().zip(f.placements) {
                *total += n;
            }
            live += f.live;
            capacity += f.capacity;
            queued += f.queued;
        }
        let named = |names: &mut dyn Iterator<Item = &'static str>, counts: &[u64]| -> BTreeMap<String, u64> {
            names.zip(counts).filter(|(_, n)| **n > 0).map(|(k, n)| (k.to_string(), *n)).collect()
        };
        let by_stage = named(&mut STAGES.iter().map(|s| s.as_str()), &stages);
        // Flows with no rule in place are handled by software.
        let by_placement =
            named(&mut filter::PLACEMENTS.iter().map(|p| if *p == "none" { "software" } else { p }), &placements);
        let (installs_per_s, removals_per_s, packets_per_s) =
            self.rates(st.rules_installed, st.rules_removed, reader.received);
        let mut untracked = BTreeMap::new();
        untracked.insert("table-full".to_string(), st.untracked_table_full);
        untracked.insert("orphan-fragment".to_string(), st.orphan_fragments);
        Ok(Stats {
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
                adopted_total: st.flows_adopted,
            },
            rules: RuleStats {
                backend: offload.backend.clone(),
                tcp_teardown: if offload.tcp_teardown_to_software { "fin-rst" } else { "idle-only" }.to_string(),
                live: offload.rules_live,
                capacity: offload.capacity,
                queued,
                installed: st.rules_installed,
                removed: st.rules_removed,
                installs_per_s,
                removals_per_s,
                remove_errors: st.remove_errors,
                counter_reads: st.counter_reads,
                counter_errors: st.counter_errors,
                by_device: offload.rules_by_port.iter().map(|(port, n)| (self.port_name(*port), *n)).collect(),
                counted: RuleCounted {
                    packets: offload.stats.rule_counted.packets,
                    bytes: offload.stats.rule_counted.bytes,
                    hw_packets: offload.stats.rule_counted.hw_packets,
                    hw_bytes: offload.stats.rule_counted.hw_bytes,
                },
            },
            refusals: st.refusals.clone(),
            packets: PacketStats {
                received: reader.received,
                bytes: reader.received_bytes,
                nic: reader.nic_packets,
                nic_bytes: reader.nic_bytes,
                software: reader.sw_packets,
                software_bytes: reader.sw_bytes,
                tap_skipped: st.tap_packets_skipped,
                slipped: st.slipped_packets,
                packets_per_s,
                skipped: reader
                    .skipped
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(r, n)| (r.as_str().to_string(), n))
                    .collect(),
                untracked,
            },
            ended: st.ended_by.clone(),
            sources: reader.sources.clone(),
            records: RecordsStatus {
                path: self.records.as_ref().map(|w| w.path().display().to_string()),
                written: file.written,
                rotations: file.rotations,
                errors: file.failures,
                lost: file.lost,
                queue_full: file.queue_full,
                pending: file.pending,
            },
            export: self.sinks.status().into_iter().map(Into::into).collect(),
            subscribers: self.subscribers.len(),
            control: self.control_stats(),
        })
    }

    /// A port's name from the configuration (an egress twin's: its port's
    /// and `egress`), or its index where it has none.
    fn port_name(&self, port: u8) -> String {
        self.config.port_label(port)
    }

    /// What the reader and the workers' own live sources have read.
    fn read_status(&self) -> ReaderStatus {
        let mut st = self.reader_status.lock().map(|s| s.clone()).unwrap_or_default();
        if !self.live {
            return st;
        }
        let live = self.rt().live_status();
        let mut merged = SourceStatus {
            name: live.first().map(|l| l.name.clone()).unwrap_or_default(),
            state: "running".into(),
            packets: 0,
            bytes: 0,
            wall_s: self.started.elapsed().as_secs_f64(),
            error: None,
            dropped: Some(0),
            unordered: Some(0),
            capture_offset_ns: None,
            capture_times: None,
        };
        for l in &live {
            st.received += l.packets;
            st.received_bytes += l.bytes;
            st.sw_packets += l.sw_packets;
            st.sw_bytes += l.sw_bytes;
            for (total, n) in st.skipped.counts.iter_mut().zip(l.skipped.counts) {
                *total += n;
            }
            merged.packets += l.packets;
            merged.bytes += l.bytes;
            if let Some(losses) = l.losses {
                *merged.dropped.get_or_insert(0) += losses.dropped;
                *merged.unordered.get_or_insert(0) += losses.unordered;
            }
            if let Some(e) = &l.failed {
                merged.state = "failed".into();
                merged.error.get_or_insert_with(|| e.clone());
            }
        }
        st.sources.push(merged);
        st
    }

    fn control_stats(&self) -> ControlStats {
        let workers = self.rt.as_ref().map_or(self.workers_job_cpu_ns, |rt| rt.job_cpu_ns());
        ControlStats { requests: self.requests, cpu_s: workers as f64 / 1e9 }
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
        if let Err((field, message)) = crate::backend::check_actions(&new, &self.capabilities.0, &self.capabilities.1) {
            self.reloads_refused += 1;
            tracing::error!(field = %field, error = %message, "reload refused; the running configuration stays");
            return;
        }
        for (field, message) in new.warnings() {
            tracing::warn!(field = %field, "{message}");
        }
        let classifier = match Classifier::succeeding(&self.classifier, &new.classifier, self.generation + 1) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                self.reloads_refused += 1;
                tracing::error!(field = "classifier", error = %e, "reload refused; the running configuration stays");
                return;
            }
        };
        let timeouts = new.timeouts.to_timeouts();
        self.rt().tell_all(|| ToWorker::Reload(classifier.clone(), timeouts));
        let at_restart: Vec<&str> = [
            ("instance_id", json!(self.config.instance_id), json!(new.instance_id)),
            ("workers", json!(self.config.workers), json!(new.workers)),
            ("ports", json!(self.config.ports), json!(new.ports)),
            ("table", json!(self.config.table), json!(new.table)),
            ("offload", json!(self.config.offload), json!(new.offload)),
            ("backend", json!(self.config.backend), json!(new.backend)),
            ("records", json!(self.config.records), json!(new.records)),
            ("export", json!(self.config.export), json!(new.export)),
            ("control", json!(self.config.control), json!(new.control)),
            ("log", json!(self.config.log), json!(new.log)),
            ("metrics", json!(self.config.metrics), json!(new.metrics)),
            ("sources", json!(self.config.sources), json!(new.sources)),
        ]
        .into_iter()
        .filter(|(_, old, new)| old != new)
        .map(|(name, _, _)| name)
        .collect();
        if !at_restart.is_empty() {
            tracing::warn!(sections = %at_restart.join(", "), "these changes take effect at the next start, not on reload");
        }
        self.classifier = classifier;
        self.config.classifier = new.classifier;
        self.config.timeouts = new.timeouts;
        self.generation += 1;
        let flows: usize = self.rt().ask_all(|s| s.table().len()).into_iter().sum();
        tracing::info!(
            generation = self.generation,
            rules = self.config.classifier.rules.len(),
            flows,
            "configuration reloaded: classifier and timeouts"
        );
    }

    /// Ends every live flow: rules removed (unless the backend is told to
    /// keep them), final counters folded in, records written.
    fn shutdown(mut self) -> Result<RunSummary, String> {
        self.reader_stop.store(true, Ordering::SeqCst);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let flows_at_exit: usize = self.rt().ask_all(|s| s.table().len()).into_iter().sum();
        let rules_before = self.rt().offload_status().rules_live;
        let keep = self.config.backend.keep_rules();
        let output = self.rt().output.clone();
        let sources = self.read_status().sources;
        let rt = self.rt.take().expect("running until here");
        self.workers_job_cpu_ns = rt.job_cpu_ns();
        let finished = rt.shutdown(keep);
        self.take_from(&output);
        let finished = finished?;
        let file = self.records.take().map(|f| f.close()).unwrap_or_default();
        // What the sinks hold goes out before they stop.
        let sinks = std::mem::replace(&mut self.sinks, flowtable_export::Sinks::none());
        let export = sinks.close();
        for s in &export {
            if s.dropped == 0 {
                tracing::info!(sink = %s.name, exported = s.exported, messages = s.messages, "flow export stopped");
            } else {
                tracing::warn!(
                    sink = %s.name,
                    exported = s.exported,
                    dropped = s.dropped,
                    queue_full = s.dropped_queue_full,
                    unsent = s.dropped_unsent,
                    last_error = s.last_error.as_deref().unwrap_or("-"),
                    "flow export stopped; {} records were dropped", s.dropped
                );
            }
        }
        let rules_left = finished.coordinator.rules_live();
        let records_written = file.written;
        let (records_lost, record_failures) = (file.lost, file.failures);
        if rules_left > 0 && !keep {
            tracing::error!(rules_left, "rules could not be removed at shutdown");
        }
        let rules_removed = rules_before.saturating_sub(rules_left);
        let left_in_place = finished.stats.flows_left_in_place;
        let journal_errors = finished.coordinator.stats().journal_write_errors;
        if journal_errors > 0 {
            tracing::error!(
                lines = journal_errors,
                "offload journal lines could not be written: the next run can't take over the flows they were about, and those of them left in place end with no record"
            );
        }
        if left_in_place > 0 {
            tracing::info!(
                flows = left_in_place,
                journal = %self.config.backend.journal().map(|p| p.display().to_string()).unwrap_or_default(),
                "offloaded flows left in place with their rules for the next run, which takes them over and writes their records"
            );
        }
        if records_lost == 0 {
            tracing::info!(
                flows = flows_at_exit,
                rules_removed,
                rules_left,
                records_written,
                "{}",
                if left_in_place > 0 {
                    "stopped: every other live flow ended with its record"
                } else {
                    "stopped: every live flow ended with its record"
                }
            );
        } else {
            tracing::error!(
                flows = flows_at_exit,
                rules_removed,
                rules_left,
                records_written,
                records_lost,
                record_failures,
                "stopped: {records_lost} flow records could not be written"
            );
        }
        Ok(RunSummary {
            flows_at_exit,
            rules_removed_at_exit: rules_before.saturating_sub(rules_left),
            rules_left,
            records_written,
            sources,
            control: self.control_stats(),
            engine_cpu_s: finished.times.iter().map(|t| t.cpu_ns).sum::<u64>() as f64 / 1e9,
            workers: finished.times,
            export,
        })
    }
}
/// Moves a record's times from the daemon's clock back onto its capture
/// file's, `offset_ns` earlier.
fn to_capture_clock(r: &mut FlowRecord, offset_ns: i64) {
    let back = |t: u64| (t as i64).saturating_sub(offset_ns).max(0) as u64;
    r.start_ns = back(r.start_ns);
    r.end_ns = back(r.end_ns);
    if let Some(o) = &mut r.offload {
        o.installed_ns = back(o.installed_ns);
        o.removed_ns = o.removed_ns.map(back);
    }
}

/// How far behind its own time a paced file's packet may be read and still
/// count at that time (see `Reader::step`).
const PACED_LAG_NS: u64 = 1_000_000_000;

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

pub use crate::runtime::thread_cpu_ns;

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, ControlError> {
    serde_json::to_value(v).map_err(|e| ControlError::new(ErrorCode::Backend, format!("encoding the answer: {e}")))
}
