//! The threads a replay or the daemon runs on: N workers, each owning a
//! shard (its own flow table, contexts, timers, statistics and records),
//! one offload thread owning the backend, and a dispatcher that hands each
//! packet to the worker its flow belongs to.
//!
//! ```text
//!  sources ─► dispatcher ──(bounded, batches)──► worker 0 ─┐ requests (bounded)
//!   parse,     inline NIC (sim) takes its           ...     ├──────────────► offload thread
//!   hash the   packets first                      worker N ─┘ ◄──────────────  owns the backend
//!   canonical key                                    │        outcomes, counters
//!                                                    └──► records, events ──► replay / daemon
//! ```
//!
//! Both directions of a flow hash to the same worker: the dispatcher hashes
//! the canonical key (both directions share it) with a fixed seed.
//!
//! Replay's time is the capture's, so a replay runs in lockstep epochs
//! (`EPOCH_NS` of packet time, see `flowtable_offload::Coordinator`): the
//! workers poll every tick as the packets' time passes, and a rule asked
//! for in one epoch meets exactly the packets from two epochs on, whatever
//! the number of workers or how fast each runs, so every worker count
//! gives the same flows. A live run is free: workers poll on the clock and
//! the offload thread works as requests come.

use crate::source::{CaptureLosses, PacketSource};
use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TryRecvError};
use flowtable_config::Config;
use flowtable_hw::{Backend, InlineNic};
use flowtable_offload::{
    coordinator_config, link, BackendInfo, Classifier, Coordinator, EngineConfig, EngineStats, Event, FlowRecord,
    OffloadStatus, Shard, QUEUE_DEPTH,
};
use flowtable_sw::table::{FragKey, FragTracker};
use flowtable_sw::{FlowKey, Fragment, PacketInfo, SkipCounters, TableConfig, Timeouts};
use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often, on the clock, a worker's slow path runs.
pub const POLL_TICK_NS: u64 = 10_000_000;
/// How long a lockstep epoch lasts, in packet time: the workers poll every
/// tick, but meet the offload thread once an epoch. Longer epochs cost
/// less meeting; a rule then goes in up to two epochs after its flow was
/// classified (a NIC's own insertion latency is of that order).
pub const EPOCH_NS: u64 = 50_000_000;
/// Batches of packets waiting for one worker, at most.
const INBOX_DEPTH: usize = 64;
/// Packets handed to a worker at once (one lookup pipeline runs over them):
/// larger than that, so a worker wakes less often per packet.
pub const DISPATCH_BATCH: usize = 256;
/// Packets a lockstep dispatcher holds before it hands them over (see
/// `Dispatcher::hand`); at most `INBOX_DEPTH` batches.
const HANDOFF_PACKETS: usize = 4 * DISPATCH_BATCH;
/// How long a lockstep reader waits for room in a worker's queue before
/// it looks at the coordinator's (see `Dispatcher::send`).
const LOCKSTEP_SEND_WAIT: Duration = Duration::from_micros(200);
/// Most workers (the shard number is 8 bits of a flow id).
pub const MAX_WORKERS: usize = 64;

/// The worker a flow belongs to: a hash of its canonical key with a fixed
/// seed, so both directions, every run and every source agree.
#[inline]
pub fn worker_of(key: &FlowKey, workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    let h = foldhash::fast::FixedState::with_seed(0x6d5a_6d5a_6d5a_6d5a).hash_one(key);
    // Multiply-shift: the high bits are the well-mixed ones.
    ((h as u128 * workers as u128) >> 64) as usize
}

/// The run's clock, in ns since the Unix epoch, shared by every thread.
/// It runs with wall time, except while packets replay as fast as
/// possible: then it is their time (frozen between packets), so flows age
/// as they did in the capture. Set by one thread (the dispatcher), read by
/// all.
pub struct Clock {
    start: Instant,
    start_ns: u64,
    /// Added to wall time: how far fast replay moved the clock ahead.
    skew_ns: AtomicU64,
    frozen: AtomicBool,
    frozen_ns: AtomicU64,
}

impl Clock {
    pub fn new() -> Arc<Clock> {
        let start_ns = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Arc::new(Clock {
            start: Instant::now(),
            start_ns,
            skew_ns: AtomicU64::new(0),
            frozen: AtomicBool::new(false),
            frozen_ns: AtomicU64::new(0),
        })
    }

    /// A clock frozen at 0, moved only by `advance_to` (replay).
    pub fn frozen() -> Arc<Clock> {
        let c = Clock::new();
        c.frozen.store(true, Ordering::SeqCst);
        c
    }

    fn wall(&self) -> u64 {
        self.start_ns + self.start.elapsed().as_nanos() as u64 + self.skew_ns.load(Ordering::Relaxed)
    }

    pub fn now(&self) -> u64 {
        if self.frozen.load(Ordering::Acquire) {
            self.frozen_ns.load(Ordering::Acquire)
        } else {
            self.wall()
        }
    }

    /// Moves the clock forward to `t` (never back).
    pub fn advance_to(&self, t: u64) {
        let now = self.now();
        if t <= now {
            return;
        }
        if self.frozen.load(Ordering::Acquire) {
            self.frozen_ns.store(t, Ordering::Release);
        } else {
            self.skew_ns.fetch_add(t - now, Ordering::Relaxed);
        }
    }

    pub fn set_frozen(&self, frozen: bool) {
        if frozen == self.frozen.load(Ordering::Acquire) {
            return;
        }
        if frozen {
            self.frozen_ns.store(self.wall(), Ordering::Release);
            self.frozen.store(true, Ordering::Release);
        } else {
            // Wall time resumes from where packet time left it.
            let at = self.frozen_ns.load(Ordering::Acquire);
            let wall = self.wall();
            if at > wall {
                self.skew_ns.fetch_add(at - wall, Ordering::Relaxed);
            }
            self.frozen.store(false, Ordering::Release);
        }
    }
}

/// Packets for one worker, with their times and marks; recycled, so the
/// packet path allocates nothing once every worker has its few.
pub struct Batch {
    pub pkts: Vec<PacketInfo>,
    pub ts_ns: Vec<u64>,
    /// A NIC rule's mark per packet (DPDK), in step with `pkts`.
    pub marks: Vec<Option<u32>>,
}

impl Batch {
    fn new() -> Box<Batch> {
        Box::new(Batch {
            pkts: Vec::with_capacity(DISPATCH_BATCH),
            ts_ns: Vec::with_capacity(DISPATCH_BATCH),
            marks: Vec::with_capacity(DISPATCH_BATCH),
        })
    }
    fn clear(&mut self) {
        self.pkts.clear();
        self.ts_ns.clear();
        self.marks.clear();
    }
}

/// Work a worker runs on its shard between packet batches.
pub type ShardJob = Box<dyn FnOnce(&mut Shard) + Send>;
/// One shard's own job for `Runtime::ask_each`, and its answer.
pub type EachJob<T> = Box<dyn FnOnce(&mut Shard) -> T + Send>;

/// What a worker is told.
pub enum ToWorker {
    Packets(Box<Batch>),
    /// Replay's lockstep: poll at `now_ns`; at the end of an epoch, as
    /// that epoch.
    Tick {
        epoch: Option<u64>,
        now_ns: u64,
    },
    /// Lockstep ends after `last_epoch`: poll on the clock from now on.
    Free {
        last_epoch: u64,
    },
    Job(ShardJob),
    Reload(Arc<Classifier>, Timeouts),
    EnableEvents,
    /// End every flow (its record written, its rules removed unless
    /// `keep_rules`) and stop.
    Shutdown {
        keep_rules: bool,
    },
}

/// What workers hand back, on one channel for all.
pub enum FromWorker {
    Records(Vec<FlowRecord>),
    /// Events, each with its flow as it was when the event was handed
    /// over (`None` for an expiry, whose record says it all, or a flow
    /// already gone), for subscribers' filters.
    Events(Vec<Event>, Vec<Option<crate::daemon::filter::Snapshot>>),
}

/// How a worker's packet path went, for the no-stall benchmark.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct WorkerTimes {
    pub batches: u64,
    /// Longest wall time between the end of one packet batch and the start
    /// of the next while packets were waiting, in ns.
    pub longest_gap_ns: u64,
    /// Longest single stretch of anything but packets (a poll, the
    /// offload thread's answers, a control job), in ns: how long packets
    /// can wait on the slow path.
    pub longest_pause_ns: u64,
    /// The CPU time of the worker's longest poll, in ns: a pause much
    /// longer than this was the thread waiting for a core, not for work.
    pub longest_poll_cpu_ns: u64,
    /// CPU time the worker used, in ns.
    pub cpu_ns: u64,
}

/// CPU time of the calling thread, in ns: what a piece of work cost the
/// thread, whatever else the machine runs.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct WorkerHandle {
    inbox: Sender<ToWorker>,
    thread: JoinHandle<(EngineStats, WorkerTimes)>,
}

/// A run's threads: workers and the offload thread.
pub struct Runtime {
    workers: Vec<WorkerHandle>,
    /// Gives the coordinator back when it stops; `None` if a lockstep
    /// never handed it over.
    offload: JoinHandle<Option<Coordinator>>,
    status: Arc<Mutex<OffloadStatus>>,
    pub output: Receiver<FromWorker>,
    nic: Option<Box<dyn InlineNic>>,
    lockstep: Option<Lockstep>,
    free: Vec<Receiver<Box<Batch>>>,
    pub clock: Arc<Clock>,
    /// The table's fragment memory (entries, timeout), for the dispatcher.
    frag_config: (usize, u64),
    live_status: Vec<Arc<Mutex<LiveStatus>>>,
    jobs_cpu: Vec<Arc<AtomicU64>>,
}

/// Replay's lockstep while it lasts: the coordinator, whose epochs the
/// packet reader runs (see `flowtable_offload::Coordinator`), and the way
/// to the offload thread, which runs it free from the lockstep's end.
struct Lockstep {
    coordinator: Coordinator,
    hand_over: Sender<Coordinator>,
}

impl Lockstep {
    fn hand_over(self) {
        // The thread is gone only if it failed, which `shutdown` reports.
        let _ = self.hand_over.send(self.coordinator);
    }
}

/// How to start a runtime.
pub struct RuntimeConfig {
    pub workers: usize,
    pub table: TableConfig,
    pub engine: EngineConfig,
    /// Start in replay's lockstep (see the module's comment).
    pub lockstep: bool,
    /// Room in each shard's queues to and from the offload thread.
    pub queue_depth: usize,
    /// Each worker reads its own live source (its share of the interfaces,
    /// by the kernel's fanout), opened by this on its own thread.
    pub live: Option<LiveOpener>,
    /// The offload journal, when restarts take over an earlier run's rules.
    pub journal: Option<std::path::PathBuf>,
}

/// Opens worker `i`'s own live source: a name for statistics and the source.
pub type LiveOpener = Arc<dyn Fn(usize) -> Result<(String, Box<dyn PacketSource>), String> + Send + Sync>;

/// What a worker's own live source has read, for statistics.
#[derive(Debug, Clone, Default)]
pub struct LiveStatus {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
    /// Parsed and handed to the shard.
    pub sw_packets: u64,
    pub sw_bytes: u64,
    pub skipped: SkipCounters,
    pub losses: Option<CaptureLosses>,
    /// The source failed with this; what it delivered before is kept.
    pub failed: Option<String>,
}

/// Packets a worker reads from its live source between looks at its inbox.
const LIVE_BURST: usize = 256;
/// How long a worker with a live source waits when nothing came.
const LIVE_IDLE: Duration = Duration::from_millis(1);

impl RuntimeConfig {
    pub fn from_config(config: &Config, workers: usize, lockstep: bool) -> RuntimeConfig {
        RuntimeConfig {
            workers: workers.clamp(1, MAX_WORKERS),
            table: config.table_config(),
            engine: EngineConfig::from_config(config),
            lockstep,
            queue_depth: QUEUE_DEPTH,
            live: None,
            journal: config.backend.journal().map(std::path::Path::to_path_buf),
        }
    }
}

/// The final state of a run's threads.
pub struct Finished {
    /// Every shard's counters and the offload thread's, added up.
    pub stats: EngineStats,
    pub times: Vec<WorkerTimes>,
    /// The offload thread, its backend still held (for a last look).
    pub coordinator: Coordinator,
}

impl Runtime {
    /// Starts the workers and the offload thread.
    pub fn start(
        cfg: RuntimeConfig,
        classifier: Classifier,
        backend: Box<dyn Backend>,
        clock: Arc<Clock>,
    ) -> Result<Runtime, String> {
        let n = cfg.workers.clamp(1, MAX_WORKERS);
        let mut backend = backend;
        let mut takeover = flowtable_offload::takeover::Takeover::prepare(backend.as_mut(), cfg.journal.as_deref(), n)?;
        let info = BackendInfo { name: backend.name().to_string(), capabilities: backend.capabilities().clone() };
        let nic = backend.inline_nic();
        let classifier = Arc::new(classifier);
        let (out_tx, out_rx) = crossbeam_channel::unbounded();
        let mut offload_ends = Vec::with_capacity(n);
        let mut workers = Vec::with_capacity(n);
        let mut free = Vec::with_capacity(n);
        let mut live_status = Vec::with_capacity(n);
        let mut jobs_cpu = Vec::with_capacity(n);
        // Workers open their live sources one after the other, in order
        // (see `AfPacketConfig::fanout_base`), each telling how it went.
        let turn = Arc::new((Mutex::new(0usize), std::sync::Condvar::new()));
        let (opened_tx, opened_rx) = crossbeam_channel::unbounded::<Result<(), String>>();
        // Each shard holds its part of the table: the configured maximum
        // is for the whole run.
        let per_shard = cfg.table.max_flows.div_ceil(n).max(1);
        // Every shard takes its flows back before any worker reads a packet;
        // the first then ends those that can't go back.
        let mut shards = Vec::with_capacity(n);
        for i in 0..n {
            let (shard_end, offload_end) = link(cfg.queue_depth);
            offload_ends.push(offload_end);
            let table = TableConfig { max_flows: per_shard, shard: i as u8, ..cfg.table };
            // Contexts are shared out the same way.
            let engine = EngineConfig {
                max_context_bytes: cfg.engine.max_context_bytes.div_ceil(n),
                workers: n as u8,
                ..cfg.engine
            };
            let mut shard = Shard::new(table, classifier.clone(), info.clone(), shard_end, engine);
            takeover.adopt_into(&mut shard, i, clock.now(), backend.as_mut());
            shards.push(shard);
        }
        takeover.end_left(&mut shards[0], clock.now());
        for (i, shard) in shards.into_iter().enumerate() {
            let (inbox_tx, inbox_rx) = crossbeam_channel::bounded(INBOX_DEPTH);
            let (ftx, frx) = crossbeam_channel::bounded(INBOX_DEPTH + 2);
            let status = Arc::new(Mutex::new(LiveStatus::default()));
            live_status.push(status.clone());
            let job_cpu = Arc::new(AtomicU64::new(0));
            jobs_cpu.push(job_cpu.clone());
            let worker = Worker {
                shard,
                inbox: inbox_rx,
                free: ftx,
                out: out_tx.clone(),
                clock: clock.clone(),
                lockstep: cfg.lockstep,
                times: WorkerTimes::default(),
                live_status: status,
                live_batch: Batch::new(),
                live_published: Instant::now(),
                job_cpu: job_cpu.clone(),
                control: ControlBudget::new(),
                deferred: VecDeque::new(),
            };
            let opener = cfg.live.clone().map(|open| (open, turn.clone(), n, opened_tx.clone()));
            let thread = std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || worker.run(i, opener))
                .map_err(|e| format!("starting worker thread {i}: {e}"))?;
            workers.push(WorkerHandle { inbox: inbox_tx, thread });
            free.push(frx);
        }
        let mut coordinator = Coordinator::new(backend, coordinator_config(&cfg.engine), offload_ends);
        let journal_kept = takeover.finish(&mut coordinator)?;
        // Counter reads and removals stamped on the run's clock, when they
        // begin and end. Replay's lockstep keeps to the epochs' time, but
        // for a journal's figures (a replay has none unless asked), which
        // then depend on how the threads ran.
        if journal_kept || !cfg.lockstep {
            let read_clock = clock.clone();
            coordinator.set_read_clock(Box::new(move || read_clock.now()));
        }
        let status = coordinator.status();
        let (to_offload, from_reader) = crossbeam_channel::bounded::<Coordinator>(1);
        let (lockstep, coordinator) = if cfg.lockstep {
            (Some(Lockstep { coordinator, hand_over: to_offload }), None)
        } else {
            (None, Some(coordinator))
        };
        let oclock = clock.clone();
        let offload = std::thread::Builder::new()
            .name("offload".into())
            .spawn(move || {
                let now = || oclock.now();
                let coordinator = coordinator.or_else(|| from_reader.recv().ok())?;
                Some(coordinator.run(&now))
            })
            .map_err(|e| format!("starting the offload thread: {e}"))?;
        let frag_config = (cfg.table.max_fragments, cfg.table.fragment_timeout_ns);
        let rt = Runtime {
            workers,
            offload,
            status,
            output: out_rx,
            nic,
            lockstep,
            free,
            clock,
            frag_config,
            live_status,
            jobs_cpu,
        };
        if cfg.live.is_some() {
            drop(opened_tx);
            let mut failure = None;
            for _ in 0..n {
                match opened_rx.recv() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failure = failure.or(Some(e)),
                    Err(_) => failure = failure.or(Some("a worker failed while opening its source".into())),
                }
            }
            if let Some(e) = failure {
                // Nothing read yet: the flows taken over stay, rules and
                // journal lines, for the next start.
                let _ = rt.shutdown(journal_kept);
                return Err(e);
            }
        }
        Ok(rt)
    }

    /// CPU time the workers spent on control jobs, in ns, all together.
    pub fn job_cpu_ns(&self) -> u64 {
        self.jobs_cpu.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// What each worker's own live source has read.
    pub fn live_status(&self) -> Vec<LiveStatus> {
        self.live_status.iter().map(|s| s.lock().map(|s| s.clone()).unwrap_or_default()).collect()
    }
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The offload thread's latest snapshot.
    pub fn offload_status(&self) -> OffloadStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// A dispatcher feeding these workers; one per run.
    pub fn dispatcher(&mut self) -> Dispatcher {
        Dispatcher {
            inboxes: self.workers.iter().map(|w| w.inbox.clone()).collect(),
            free: self.free.clone(),
            filling: (0..self.workers.len()).map(|_| None).collect(),
            nic: self.nic.take(),
            lockstep: self.lockstep.take(),
            epoch: 0,
            epoch_ends_ns: 0,
            clock: self.clock.clone(),
            frags: FragTracker::new(self.frag_config.0, self.frag_config.1),
            held: (0..self.workers.len()).map(|_| Vec::new()).collect(),
            held_packets: 0,
        }
    }

    /// Hands every record the workers made so far to `on_record` (events
    /// to `on_event`), in the order they came.
    pub fn take_output(
        output: &Receiver<FromWorker>,
        mut on_record: impl FnMut(&FlowRecord),
        mut on_event: impl FnMut(&[Event]),
    ) {
        for out in output.try_iter() {
            match out {
                FromWorker::Records(records) => records.iter().for_each(&mut on_record),
                FromWorker::Events(events, _) => on_event(&events),
            }
        }
    }

    /// As `take_output`, each batch of records handed over whole.
    pub fn take_output_batches(
        output: &Receiver<FromWorker>,
        mut on_records: impl FnMut(Vec<FlowRecord>),
        mut on_event: impl FnMut(&[Event]),
    ) {
        for out in output.try_iter() {
            match out {
                FromWorker::Records(records) => on_records(records),
                FromWorker::Events(events, _) => on_event(&events),
            }
        }
    }

    /// Sends every worker a message made by `make`; false if one is gone.
    pub fn tell_all(&self, make: impl Fn() -> ToWorker) -> bool {
        self.workers.iter().all(|w| w.inbox.send(make()).is_ok())
    }

    /// Runs `job` on every shard and gathers the answers, in shard order.
    /// The workers run it between packet batches.
    pub fn ask_all<T: Send + 'static>(&self, job: impl Fn(&mut Shard) -> T + Send + Sync + 'static) -> Vec<T> {
        let job = Arc::new(job);
        let mut replies = Vec::with_capacity(self.workers.len());
        for w in &self.workers {
            let (tx, rx) = crossbeam_channel::bounded(1);
            let job = job.clone();
            let sent = w.inbox.send(ToWorker::Job(Box::new(move |s: &mut Shard| {
                let _ = tx.send(job(s));
            })));
            if sent.is_ok() {
                replies.push(rx);
            }
        }
        replies.into_iter().filter_map(|rx| rx.recv().ok()).collect()
    }

    /// Runs each shard's own job (`None`: none for it) and gathers the
    /// answers, in shard order; the workers run them between packet
    /// batches, as any control job, in parallel.
    pub fn ask_each<T: Send + 'static>(&self, jobs: Vec<Option<EachJob<T>>>) -> Vec<Option<T>> {
        let mut replies = Vec::with_capacity(self.workers.len());
        for (w, job) in self.workers.iter().zip(jobs) {
            let Some(job) = job else {
                replies.push(None);
                continue;
            };
            let (tx, rx) = crossbeam_channel::bounded(1);
            let sent = w.inbox.send(ToWorker::Job(Box::new(move |s: &mut Shard| {
                let _ = tx.send(job(s));
            })));
            replies.push(sent.is_ok().then_some(rx));
        }
        replies.into_iter().map(|rx| rx.and_then(|rx| rx.recv().ok())).collect()
    }

    /// Runs `job` on the shard `shard` and returns its answer.
    pub fn ask_one<T: Send + 'static>(
        &self,
        shard: usize,
        job: impl FnOnce(&mut Shard) -> T + Send + 'static,
    ) -> Option<T> {
        let w = self.workers.get(shard)?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        w.inbox
            .send(ToWorker::Job(Box::new(move |s: &mut Shard| {
                let _ = tx.send(job(s));
            })))
            .ok()?;
        rx.recv().ok()
    }

    /// Ends every flow on every worker and stops the threads; records and
    /// events still come out of `output` until it is drained.
    pub fn shutdown(mut self, keep_rules: bool) -> Result<Finished, String> {
        // No dispatcher ran the lockstep: its coordinator runs free.
        if let Some(lockstep) = self.lockstep.take() {
            lockstep.hand_over();
        }
        for w in &self.workers {
            let _ = w.inbox.send(ToWorker::Shutdown { keep_rules });
        }
        let mut stats = EngineStats::default();
        let mut times = Vec::new();
        for (i, w) in self.workers.into_iter().enumerate() {
            drop(w.inbox);
            let (s, t) = w.thread.join().map_err(|_| format!("worker {i} failed"))?;
            stats.add(&s);
            times.push(t);
        }
        let coordinator = self.offload.join().ok().flatten().ok_or_else(|| "the offload thread failed".to_string())?;
        stats.add(&EngineStats::from_coordinator(coordinator.stats()));
        Ok(Finished { stats, times, coordinator })
    }
}

struct Worker {
    shard: Shard,
    inbox: Receiver<ToWorker>,
    free: Sender<Box<Batch>>,
    out: Sender<FromWorker>,
    clock: Arc<Clock>,
    lockstep: bool,
    times: WorkerTimes,
    live_status: Arc<Mutex<LiveStatus>>,
    live_batch: Box<Batch>,
    live_published: Instant,
    /// CPU time spent on control jobs, in ns.
    job_cpu: Arc<AtomicU64>,
    control: ControlBudget,
    /// Control jobs held back while the budget is spent, in order.
    deferred: VecDeque<ShardJob>,
}

/// Share of a worker's CPU time control jobs may take while packets wait:
/// clients asking for large, sorted pages back to back (each a scan of the
/// shard) get slower answers, and the packet path keeps the CPU it gets.
/// Measured in the worker's own CPU time, not wall time: a worker starved
/// of CPU by the rest of the machine (the clients themselves) must not
/// give what it gets to them. An idle worker answers at once.
const CONTROL_SHARE: f64 = 0.05;
/// CPU a worker may spend on control in one go before the share applies
/// (one scan of a full shard fits, so a lone query is never held back).
const CONTROL_BURST_NS: f64 = 50_000_000.0;
/// A wait this long with nothing arriving makes a worker idle: it then
/// answers held-back control jobs whatever the budget.
const IDLE_NS: u64 = 1_000_000;

/// A token bucket of CPU time for control jobs, filled at `CONTROL_SHARE`
/// of the worker's CPU time up to `CONTROL_BURST_NS`. Used on the worker's
/// own thread (its CPU clock is the thread's).
struct ControlBudget {
    tokens_ns: f64,
    cpu_ns: u64,
}

impl ControlBudget {
    fn new() -> ControlBudget {
        ControlBudget { tokens_ns: CONTROL_BURST_NS, cpu_ns: 0 }
    }

    fn allows(&mut self) -> bool {
        let now = thread_cpu_ns();
        let earned = now.saturating_sub(self.cpu_ns) as f64 * CONTROL_SHARE;
        self.tokens_ns = (self.tokens_ns + earned).min(CONTROL_BURST_NS);
        self.cpu_ns = now;
        self.tokens_ns > 0.0
    }

    fn spend(&mut self, cpu_ns: u64) {
        self.tokens_ns -= cpu_ns as f64;
    }
}

/// A worker's live opener, the turn every worker opens in (and how many
/// there are), and where to say how it went.
type Opener = (LiveOpener, Arc<(Mutex<usize>, std::sync::Condvar)>, usize, Sender<Result<(), String>>);

impl Worker {
    /// Opens this worker's live source on its own thread, when its turn
    /// comes (the workers join each port's fanout group in order), and
    /// starts it once every worker's has opened: a group takes its flows'
    /// frames only when it has all its members.
    fn open_live(&mut self, index: usize, opener: Opener) -> Option<Box<dyn PacketSource>> {
        let (open, turn, workers, opened) = opener;
        let (lock, cv) = &*turn;
        let mut next = lock.lock().unwrap_or_else(|e| e.into_inner());
        while *next != index {
            next = cv.wait(next).unwrap_or_else(|e| e.into_inner());
        }
        // A panic while opening must still pass the turn on, or every
        // other worker, and the start waiting for them, would wait forever.
        let opened_or_panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| open(index)))
            .unwrap_or_else(|_| Err(format!("worker {index}: opening its live source panicked")));
        let (result, live) = match opened_or_panicked {
            Ok((name, src)) => {
                if let Ok(mut st) = self.live_status.lock() {
                    st.name = name;
                }
                (Ok(()), Some(src))
            }
            Err(e) => (Err(e), None),
        };
        *next += 1;
        cv.notify_all();
        while *next < workers {
            next = cv.wait(next).unwrap_or_else(|e| e.into_inner());
        }
        drop(next);
        let (result, live) = match (result, live) {
            (Ok(()), Some(mut src)) => match src.start() {
                Ok(()) => (Ok(()), Some(src)),
                Err(e) => (Err(e.to_string()), None),
            },
            other => other,
        };
        let _ = opened.send(result);
        live
    }

    /// The one packet loop, for replay and the daemon alike.
    fn run(mut self, index: usize, opener: Option<Opener>) -> (EngineStats, WorkerTimes) {
        // This worker's own live source, if it reads one; opened here, so
        // a capture ring's mapping never crosses threads.
        let reads_live = opener.is_some();
        let mut live = opener.and_then(|o| self.open_live(index, o));
        if live.is_some() || !reads_live {
            // Started: the flows of an earlier run ended at start may leave
            // the journal (a failed start leaves them to the next run).
            self.shard.release_left();
        }
        self.shard.set_lockstep(self.lockstep);
        let mut next_poll = self.clock.now();
        let mut last_epoch: Option<u64> = None;
        let mut batch_done: Option<Instant> = None;
        loop {
            // Whether the wait below was a real one (no packets to read).
            let mut waited = false;
            let msg = if self.lockstep {
                self.inbox.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else if live.is_some() {
                // Messages first, without waiting; then this worker's own
                // packets; a short wait only when neither came.
                match self.inbox.try_recv() {
                    Ok(m) => Ok(m),
                    Err(TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
                    Err(TryRecvError::Empty) => {
                        if self.read_live(&mut live) == 0 {
                            waited = true;
                            self.inbox.recv_timeout(LIVE_IDLE)
                        } else {
                            Err(RecvTimeoutError::Timeout)
                        }
                    }
                }
            } else {
                let wait = next_poll.saturating_sub(self.clock.now()).min(POLL_TICK_NS);
                // A gap of a millisecond or more with nothing to do, not the
                // reader's moment between two batches.
                waited = wait >= IDLE_NS;
                self.inbox.recv_timeout(Duration::from_nanos(wait))
            };
            let pause_started = Instant::now();
            let slow = matches!(msg, Ok(ref m) if !matches!(m, ToWorker::Packets(_)));
            match msg {
                Ok(ToWorker::Packets(mut b)) => {
                    let started = Instant::now();
                    if let Some(done) = batch_done {
                        // Only a gap with packets waiting is a stall.
                        let gap = started.duration_since(done).as_nanos() as u64;
                        self.times.longest_gap_ns = self.times.longest_gap_ns.max(gap);
                    }
                    process_into(&mut self.shard, &b);
                    self.times.batches += 1;
                    b.clear();
                    let _ = self.free.try_send(b);
                    batch_done = if self.inbox.is_empty() { None } else { Some(Instant::now()) };
                }
                Ok(ToWorker::Tick { epoch, now_ns }) => {
                    // The tick's time, not this shard's last packet's: what
                    // the answers below stamp must not depend on which
                    // packets this shard happened to get.
                    self.shard.advance(now_ns);
                    if let Some(e) = epoch.and_then(|e| e.checked_sub(1)) {
                        self.shard.wait_epoch(e);
                    }
                    self.shard.poll(now_ns);
                    if let Some(e) = epoch {
                        self.shard.end_epoch(e);
                        last_epoch = Some(e);
                    }
                    self.forward();
                }
                Ok(ToWorker::Free { last_epoch: last }) => {
                    self.shard.wait_epoch(last);
                    self.lockstep = false;
                    self.shard.set_lockstep(false);
                    last_epoch = None;
                    next_poll = self.clock.now();
                }
                Ok(ToWorker::Job(job)) => {
                    // Lockstep (replay) runs every job at once: its results
                    // must not depend on timing.
                    if self.lockstep || (self.deferred.is_empty() && self.control.allows()) {
                        self.run_job(job);
                    } else {
                        self.deferred.push_back(job);
                    }
                }
                Ok(ToWorker::Reload(classifier, timeouts)) => self.shard.reload(classifier, timeouts),
                Ok(ToWorker::EnableEvents) => self.shard.enable_events(),
                Ok(ToWorker::Shutdown { keep_rules }) => {
                    while let Some(job) = self.deferred.pop_front() {
                        self.run_job(job);
                    }
                    if let Some(e) = last_epoch {
                        self.shard.wait_epoch(e);
                    }
                    self.stop(keep_rules);
                    break;
                }
                Err(RecvTimeoutError::Timeout) => {
                    batch_done = None;
                    // Nothing came while waiting: no packet is held up by
                    // answering now.
                    if waited {
                        while let Some(job) = self.deferred.pop_front() {
                            self.run_job(job);
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.stop(false);
                    break;
                }
            }
            while !self.deferred.is_empty() && self.control.allows() {
                let job = self.deferred.pop_front().expect("not empty");
                self.run_job(job);
            }
            if slow {
                let pause = pause_started.elapsed().as_nanos() as u64;
                self.times.longest_pause_ns = self.times.longest_pause_ns.max(pause);
            }
            if !self.lockstep {
                let now = self.clock.now();
                if now >= next_poll {
                    let (t, cpu) = (Instant::now(), thread_cpu_ns());
                    self.shard.poll(now);
                    next_poll = now + POLL_TICK_NS;
                    self.forward();
                    self.times.longest_pause_ns = self.times.longest_pause_ns.max(t.elapsed().as_nanos() as u64);
                    let cpu = thread_cpu_ns().saturating_sub(cpu);
                    self.times.longest_poll_cpu_ns = self.times.longest_poll_cpu_ns.max(cpu);
                }
            }
        }
        self.times.cpu_ns = thread_cpu_ns();
        (self.shard.stats().clone(), self.times)
    }

    fn run_job(&mut self, job: ShardJob) {
        let cpu = thread_cpu_ns();
        job(&mut self.shard);
        let spent = thread_cpu_ns().saturating_sub(cpu);
        self.job_cpu.fetch_add(spent, Ordering::Relaxed);
        self.control.spend(spent);
        self.forward();
    }

    /// Up to `LIVE_BURST` frames of this worker's own live source into its
    /// shard. Returns how many were read.
    fn read_live(&mut self, live: &mut Option<Box<dyn PacketSource>>) -> usize {
        let Some(src) = live.as_mut() else { return 0 };
        let ports = *self.shard.ports();
        let now = self.clock.now();
        let mut status = self.live_status.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        let mut failed = None;
        while n < LIVE_BURST {
            match src.poll_packet() {
                Ok(Some(raw)) => {
                    n += 1;
                    status.packets += 1;
                    status.bytes += raw.wire_len as u64;
                    match raw.parse(&ports) {
                        Ok(info) => {
                            status.sw_packets += 1;
                            status.sw_bytes += raw.wire_len as u64;
                            // A live frame counts at its capture time, which
                            // places it before or after its flow's rule went in.
                            self.live_batch.pkts.push(info);
                            self.live_batch.ts_ns.push(raw.ts_ns.min(now));
                            self.live_batch.marks.push(raw.mark);
                        }
                        Err(reason) => status.skipped.add(reason),
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        if self.live_published.elapsed() >= Duration::from_secs(1) {
            // Once a second: a syscall per ring.
            self.live_published = Instant::now();
            status.losses = src.capture_losses();
        }
        if let Some(e) = failed {
            tracing::error!(source = %status.name, error = %e, "live source failed; what it delivered is kept");
            status.failed = Some(e);
            *live = None;
        }
        drop(status);
        if !self.live_batch.pkts.is_empty() {
            process_into(&mut self.shard, &self.live_batch);
            self.times.batches += 1;
            self.live_batch.clear();
        }
        n
    }

    fn stop(&mut self, keep_rules: bool) {
        self.shard.set_lockstep(false);
        let now = self.clock.now();
        self.shard.poll(now);
        self.shard.begin_shutdown(keep_rules);
        while self.shard.shutdown_waiting() {
            self.shard.wait_response(Duration::from_millis(100));
        }
        self.shard.finish_shutdown(keep_rules);
        // Waits for room: the offload thread runs until every shard hangs
        // up; a wedged one is given up on.
        for line in self.shard.take_parting() {
            let req = flowtable_offload::Request::Journal(Box::new(line));
            if self.shard.link_to_offload().send_timeout(req, Duration::from_secs(2)).is_err() {
                tracing::error!("the offload thread is gone or stuck: a journal line of this stop is not written (a flow left in place ends with no record, or one recorded now is taken over again)");
            }
        }
        self.forward();
    }

    /// Hands ended flows' records and new events to the run.
    fn forward(&mut self) {
        let records = self.shard.drain_records();
        if !records.is_empty() {
            let _ = self.out.send(FromWorker::Records(records));
        }
        let events = self.shard.drain_events();
        if !events.is_empty() {
            let flows = crate::daemon::query::event_flows(&self.shard, &events, self.clock.now());
            let _ = self.out.send(FromWorker::Events(events, flows));
        }
    }
}

/// A batch into a shard, marked packets (DPDK MARK) in order with the rest.
#[inline]
fn process_into(shard: &mut Shard, b: &Batch) {
    if b.marks.iter().all(Option::is_none) {
        shard.process_batch(&b.pkts, &b.ts_ns);
        return;
    }
    let mut from = 0;
    for (i, mark) in b.marks.iter().enumerate() {
        if let Some(mark) = mark {
            shard.process_batch(&b.pkts[from..i], &b.ts_ns[from..i]);
            shard.process_marked(&b.pkts[i], *mark, b.ts_ns[i]);
            from = i + 1;
        }
    }
    shard.process_batch(&b.pkts[from..], &b.ts_ns[from..]);
}

/// Hands packets to their workers in batches; in replay, keeps the
/// lockstep epochs. The in-process NIC (sim) sits here, in front of the
/// workers, as a NIC sits in front of the host.
pub struct Dispatcher {
    inboxes: Vec<Sender<ToWorker>>,
    free: Vec<Receiver<Box<Batch>>>,
    filling: Vec<Option<Box<Batch>>>,
    nic: Option<Box<dyn InlineNic>>,
    lockstep: Option<Lockstep>,
    /// The epoch the next tick at or past `epoch_ends_ns` ends.
    epoch: u64,
    /// Packet time at which the current lockstep epoch ends.
    epoch_ends_ns: u64,
    clock: Arc<Clock>,
    /// Later fragments carry no ports: they go where their first went.
    frags: FragTracker<u8>,
    /// In lockstep, each worker's messages not yet sent, and how many
    /// packets they hold (see `hand`).
    held: Vec<Vec<ToWorker>>,
    held_packets: usize,
}

impl Dispatcher {
    /// Offers a packet to the in-process NIC; true when a rule took it.
    #[inline]
    pub fn offer(&mut self, pkt: &PacketInfo, now_ns: u64) -> bool {
        match self.nic.as_mut() {
            Some(nic) => nic.offer(pkt, now_ns),
            None => false,
        }
    }

    /// Queues a packet for its flow's worker.
    #[inline]
    pub fn push(&mut self, pkt: PacketInfo, ts_ns: u64, mark: Option<u32>) {
        let n = self.inboxes.len();
        let w = match pkt.fragment {
            Fragment::Whole => worker_of(&pkt.key, n),
            Fragment::First { id } => {
                let w = worker_of(&pkt.key, n);
                if n > 1 {
                    self.frags.remember(FragKey::of(&pkt, id), w as u8, ts_ns);
                }
                w
            }
            // One whose first was never seen is an orphan on any worker.
            Fragment::Later { id } => self.frags.find(&FragKey::of(&pkt, id), ts_ns).map_or(0, usize::from),
        };
        let b = self.filling[w].get_or_insert_with(|| self.free[w].try_recv().unwrap_or_else(|_| Batch::new()));
        b.pkts.push(pkt);
        b.ts_ns.push(ts_ns);
        b.marks.push(mark);
        if b.pkts.len() == DISPATCH_BATCH {
            self.send_batch(w);
        }
    }

    fn send_batch(&mut self, w: usize) {
        if let Some(b) = self.filling[w].take() {
            self.held_packets += b.pkts.len();
            self.hand(w, ToWorker::Packets(b));
        }
    }

    /// Hands `msg` to worker `w`. In lockstep, messages wait here until
    /// `HANDOFF_PACKETS` packets or the epoch's end: when it does not hold
    /// one up, a worker woken for a tick's 200 packets costs more in
    /// wake-ups than its work, and what a lockstep worker does can't depend
    /// on when its messages came.
    fn hand(&mut self, w: usize, msg: ToWorker) {
        if self.lockstep.is_none() {
            if !self.send(w, msg) {
                tracing::error!(worker = w, "a worker is gone; its packets are lost");
            }
            return;
        }
        self.held[w].push(msg);
        if self.held_packets >= HANDOFF_PACKETS {
            self.release();
        }
    }

    /// Sends every message `hand` holds.
    fn release(&mut self) {
        self.held_packets = 0;
        for w in 0..self.held.len() {
            let held = std::mem::take(&mut self.held[w]);
            for msg in held {
                if !self.send(w, msg) {
                    tracing::error!(worker = w, "a worker is gone; its packets are lost");
                }
            }
        }
    }

    /// Sends `msg` to worker `w`; false if it is gone. In lockstep, while
    /// the worker's queue is full, takes the requests the coordinator can
    /// take: the worker may be waiting for room in its queue to it.
    fn send(&mut self, w: usize, msg: ToWorker) -> bool {
        let Some(lockstep) = self.lockstep.as_mut() else { return self.inboxes[w].send(msg).is_ok() };
        let mut msg = msg;
        loop {
            match self.inboxes[w].send_timeout(msg, LOCKSTEP_SEND_WAIT) {
                Ok(()) => return true,
                Err(SendTimeoutError::Timeout(back)) => {
                    lockstep.coordinator.take_epoch_requests(self.epoch.saturating_sub(1));
                    msg = back;
                }
                Err(SendTimeoutError::Disconnected(_)) => return false,
            }
        }
    }

    /// Hands over every batch being filled, now.
    pub fn flush(&mut self) {
        self.flush_filling();
        self.release();
    }

    fn flush_filling(&mut self) {
        for w in 0..self.filling.len() {
            if self.filling[w].as_ref().is_some_and(|b| !b.pkts.is_empty()) {
                self.send_batch(w);
            }
        }
    }

    /// A poll tick at `now_ns`. In lockstep: every worker polls as this
    /// epoch, and the packets after it wait until the offload thread has
    /// done the epoch before (see the module's comment). Free: only hands
    /// over what is waiting (the workers poll on the clock).
    pub fn tick(&mut self, now_ns: u64) {
        self.tick_as(now_ns, false);
    }

    fn tick_as(&mut self, now_ns: u64, end_epoch: bool) {
        self.clock.advance_to(now_ns);
        if self.lockstep.is_none() {
            self.flush();
            return;
        }
        self.flush_filling();
        if !end_epoch && now_ns < self.epoch_ends_ns {
            // Within an epoch: the workers poll (their flows age on the
            // tick), and what they ask waits for the epoch's end.
            for w in 0..self.inboxes.len() {
                self.hand(w, ToWorker::Tick { epoch: None, now_ns });
            }
            return;
        }
        let epoch = self.epoch;
        for w in 0..self.inboxes.len() {
            self.hand(w, ToWorker::Tick { epoch: Some(epoch), now_ns });
        }
        self.release();
        // Every packet up to this tick was offered: the epoch before this
        // one goes in now, to meet the packets from the next on.
        if let (Some(lockstep), Some(before)) = (self.lockstep.as_mut(), epoch.checked_sub(1)) {
            lockstep.coordinator.run_epoch(before);
        }
        self.epoch += 1;
        self.epoch_ends_ns = now_ns.saturating_add(EPOCH_NS);
    }

    /// Ends the lockstep (after a last tick at `now_ns`): the workers and
    /// the offload thread run free on the clock from here. Nothing for a
    /// free run but handing over what is waiting.
    pub fn go_free(&mut self, now_ns: u64) {
        if self.lockstep.is_none() {
            self.flush();
            return;
        }
        self.tick_as(now_ns, true);
        let last = self.epoch - 1;
        let mut lockstep = self.lockstep.take().expect("checked above");
        lockstep.coordinator.run_epoch(last);
        lockstep.hand_over();
        for inbox in &self.inboxes {
            let _ = inbox.send(ToWorker::Free { last_epoch: last });
        }
    }
}

impl Drop for Dispatcher {
    /// A dispatcher given up in lockstep ends it: the workers wait on the
    /// epochs its coordinator runs, and the offload thread for it.
    fn drop(&mut self) {
        if self.lockstep.is_some() {
            self.go_free(self.clock.now());
        }
    }
}
