//! The offload coordinator: the one owner of the backend, on a thread of
//! its own, so no worker ever waits on the NIC. It takes the shards'
//! install and removal requests, installs the largest waiting flows first
//! within the backend's capacity and insertion rate across all shards,
//! makes the batched backend calls, reads the counters on its own schedule
//! and sends outcomes and counters back to the shard that owns each flow
//! (the shard is in the flow id, so in every rule's cookie).
//!
//! It runs in one of two ways. Free (`run`): it wakes when asked or when
//! counters are due, on the caller's clock. Lockstep (`run_epoch`), for
//! replay, where time is the capture's: the shards end every poll with an
//! `EpochDone`, and the coordinator does epoch `k`'s work only once every
//! shard has finished epoch `k` and the packet reader has offered every
//! packet up to epoch `k + 1` to an in-process NIC, before the reader goes
//! on. A rule decided in epoch `k` thus meets exactly the packets from
//! epoch `k + 2` on, however fast each thread runs, and a replay gives the
//! same flows whatever the number of workers. In lockstep the packet
//! reader itself runs each epoch's work, at the end of the next epoch: a
//! thread of its own would only make the reader wait at every epoch for
//! that thread to be woken and scheduled, since the reader may not go on
//! before the epoch's rules are in.

use crate::journal::Journal;
use crate::link::{OffloadLink, Request, Response};
use crossbeam_channel::{RecvTimeoutError, Select, TryRecvError, TrySendError};
use flowtable_hw::{
    AdoptedRule, Backend, BackendError, Capabilities, Cookie, InstallOutcome, Refusal, RefusalKind, RuleCounters,
};
use flowtable_sw::FlowId;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most rules' counters in one answer to a shard.
pub const COUNTERS_PER_ANSWER: usize = 256;

/// Longest the free-running coordinator sleeps between looks at its clock.
const IDLE_WAIT: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoordinatorConfig {
    pub instance_id: u32,
    pub poll_interval_ns: u64,
    /// Most rules in one install call.
    pub batch_size: usize,
}

/// What the coordinator did, for statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CoordinatorStats {
    pub rules_installed: u64,
    pub rules_removed: u64,
    pub remove_errors: u64,
    pub counter_reads: u64,
    pub counter_errors: u64,
    /// Counter entries whose cookie names no shard of this instance.
    pub unknown_rules: u64,
    /// Installs put back to wait by a capacity or rate refusal, by kind.
    pub retried: BTreeMap<String, u64>,
    pub install_calls: u64,
    pub remove_calls: u64,
    /// Offload journal lines that could not be written (see `journal`):
    /// a restart can't take over the flows they were about.
    pub journal_write_errors: u64,
    /// What our rules counted, all rules ever installed together (each
    /// rule's cumulative counters as last read, or as it was removed).
    pub rule_counted: RuleCounters,
}

/// A snapshot for other threads (statistics, the control socket).
#[derive(Debug, Clone, Default)]
pub struct OffloadStatus {
    pub backend: String,
    pub capacity: usize,
    pub rules_live: usize,
    /// Installs waiting for their batch.
    pub queued: usize,
    /// Rules in place, by the port (device) each is on.
    pub rules_by_port: BTreeMap<u8, usize>,
    /// The backend's rules leave FIN and RST to software
    /// (`Capabilities::tcp_teardown_to_software`).
    pub tcp_teardown_to_software: bool,
    pub stats: CoordinatorStats,
}

/// Adds what a rule counted since `seen` to `total`, and remembers `now`.
/// A counter that went back (a rule replaced under us) is taken from zero.
fn add_counted(total: &mut RuleCounters, seen: &mut RuleCounters, now: &RuleCounters) {
    let delta = |now: u64, seen: u64| if now >= seen { now - seen } else { now };
    total.packets += delta(now.packets, seen.packets);
    total.bytes += delta(now.bytes, seen.bytes);
    total.hw_packets += delta(now.hw_packets, seen.hw_packets);
    total.hw_bytes += delta(now.hw_bytes, seen.hw_bytes);
    *seen = *now;
}

struct PendingInstall {
    shard: usize,
    id: FlowId,
    rules: Box<[flowtable_hw::RuleSpec; 2]>,
    bytes: u64,
    /// Arrival order, which breaks ties between equally large flows.
    seq: u64,
}

pub struct Coordinator {
    backend: Box<dyn Backend>,
    caps: Capabilities,
    cfg: CoordinatorConfig,
    links: Vec<OffloadLink>,
    connected: Vec<bool>,
    /// Answers a full queue did not take yet, per shard, in order.
    backlog: Vec<VecDeque<Response>>,
    pending: Vec<PendingInstall>,
    removals: Vec<(usize, FlowId, Vec<Cookie>)>,
    read_asked: Vec<bool>,
    /// The epoch (and its time) each shard finished last, in lockstep.
    epoch_done: Vec<Option<(u64, u64)>>,
    rules_live: usize,
    tokens: f64,
    tokens_at: u64,
    last_read_ns: Option<u64>,
    now_ns: u64,
    seq: u64,
    stats: CoordinatorStats,
    counters_buf: Vec<(Cookie, RuleCounters)>,
    /// Each rule in place: its port and its counters as last read, so
    /// what it counted since adds to `stats.rule_counted` once.
    rules: HashMap<Cookie, (u8, RuleCounters)>,
    rules_by_port: BTreeMap<u8, usize>,
    status: Arc<Mutex<OffloadStatus>>,
    journal: Option<Journal>,
    /// The run's clock, read as a counter read or a removal begins and
    /// ends.
    read_clock: Option<Box<dyn Fn() -> u64 + Send>>,
    /// Rules of an earlier run whose removal at start failed, no flow of
    /// this run theirs: asked again each poll interval until they go.
    leftover_rules: Vec<Cookie>,
}

impl Coordinator {
    pub fn new(backend: Box<dyn Backend>, cfg: CoordinatorConfig, links: Vec<OffloadLink>) -> Coordinator {
        let caps = backend.capabilities().clone();
        let n = links.len();
        let status = OffloadStatus {
            backend: backend.name().to_string(),
            capacity: caps.max_rules,
            tcp_teardown_to_software: caps.tcp_teardown_to_software,
            ..OffloadStatus::default()
        };
        Coordinator {
            tokens: caps.max_insert_rate as f64,
            caps,
            backend,
            cfg,
            links,
            connected: vec![true; n],
            backlog: (0..n).map(|_| VecDeque::new()).collect(),
            pending: Vec::new(),
            removals: Vec::new(),
            read_asked: vec![false; n],
            epoch_done: vec![None; n],
            rules_live: 0,
            tokens_at: 0,
            last_read_ns: None,
            now_ns: 0,
            seq: 0,
            stats: CoordinatorStats::default(),
            counters_buf: Vec::new(),
            rules: HashMap::new(),
            rules_by_port: BTreeMap::new(),
            status: Arc::new(Mutex::new(status)),
            journal: None,
            read_clock: None,
            leftover_rules: Vec::new(),
        }
    }

    /// Rules of an earlier run that could not be removed at start (see
    /// `leftover_rules`).
    pub fn remove_leftover(&mut self, cookies: Vec<Cookie>) {
        self.leftover_rules.extend(cookies);
    }

    /// Rules of an earlier run still to be removed.
    pub fn leftover_rules(&self) -> usize {
        self.leftover_rules.len()
    }

    fn retry_leftover(&mut self) {
        let cookies = std::mem::take(&mut self.leftover_rules);
        let results = self.backend.remove(&cookies);
        for (cookie, result) in cookies.into_iter().zip(results) {
            if result.is_err_and(|e| !e.is_unknown_rule()) {
                self.stats.remove_errors += 1;
                self.leftover_rules.push(cookie);
            }
        }
        if self.leftover_rules.is_empty() {
            tracing::info!("the rules of an earlier run that could not be removed at start are removed now");
        }
    }

    /// The read clock's time, never before `at_least`; `at_least` itself
    /// without one.
    fn clock_ns(&self, at_least: u64) -> u64 {
        self.read_clock.as_ref().map_or(at_least, |c| c().max(at_least))
    }

    /// Reads `clock` as each counter read or removal begins and ends
    /// (free-running; in lockstep the step's time is the read's).
    pub fn set_read_clock(&mut self, clock: Box<dyn Fn() -> u64 + Send>) {
        self.read_clock = Some(clock);
    }

    /// Writes what shards send for the journal into `journal`.
    pub fn set_journal(&mut self, journal: Journal) {
        self.journal = Some(journal);
    }

    /// Writes journal lines handed over directly (a synchronous engine's stop).
    pub fn write_journal(&mut self, lines: &[crate::journal::JournalLine]) {
        if let Some(j) = self.journal.as_mut() {
            for l in lines {
                j.write(l);
            }
            j.flush();
        }
    }

    /// Counts rules an earlier run left and this one took over as in
    /// place, their counters so far as already seen.
    pub fn adopt(&mut self, rules: &[AdoptedRule]) {
        for r in rules {
            self.rules_live += 1;
            self.rule_in(r.cookie, r.port);
            if let Some((_, seen)) = self.rules.get_mut(&r.cookie) {
                *seen = r.counters;
            }
        }
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }
    pub fn backend_mut(&mut self) -> &mut dyn Backend {
        self.backend.as_mut()
    }
    pub fn rules_live(&self) -> usize {
        self.rules_live
    }
    /// Installs waiting for their batch.
    pub fn queued(&self) -> usize {
        self.pending.len()
    }
    pub fn stats(&self) -> &CoordinatorStats {
        &self.stats
    }
    /// Rules in place, by the port each is on.
    pub fn rules_by_port(&self) -> &BTreeMap<u8, usize> {
        &self.rules_by_port
    }
    /// A snapshot kept up to date after every step, for other threads.
    pub fn status(&self) -> Arc<Mutex<OffloadStatus>> {
        self.status.clone()
    }

    /// Takes every request waiting from every shard, without blocking.
    /// Returns how many were taken.
    pub fn take_requests(&mut self) -> usize {
        let mut n = 0;
        for shard in 0..self.links.len() {
            loop {
                match self.links[shard].from_shard.try_recv() {
                    Ok(req) => {
                        n += 1;
                        self.handle(shard, req);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.connected[shard] = false;
                        break;
                    }
                }
            }
        }
        n
    }

    fn handle(&mut self, shard: usize, req: Request) {
        match req {
            Request::Install { id, rules, bytes } => {
                self.seq += 1;
                self.pending.push(PendingInstall { shard, id, rules, bytes, seq: self.seq });
            }
            Request::Remove { id, cookies } => self.removals.push((shard, id, cookies)),
            Request::Cancel { id } => {
                let at = self.pending.iter().position(|p| p.shard == shard && p.id == id);
                if let Some(i) = at {
                    self.pending.swap_remove(i);
                }
                self.send(shard, Response::Cancelled { id, cancelled: at.is_some() });
            }
            Request::ReadCounters => self.read_asked[shard] = true,
            Request::EpochDone { epoch, now_ns } => self.epoch_done[shard] = Some((epoch, now_ns)),
            Request::Journal(line) => {
                if let Some(j) = self.journal.as_mut() {
                    j.write(&line);
                }
            }
        }
    }

    /// Does what is due at `now`: removals, then installs within budget,
    /// then the counter read if due or asked for. Answers go out in that
    /// order, so a shard hears of a rule before its counters.
    pub fn step(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        let now = self.now_ns;
        self.backend.set_clock(now);
        self.remove_requested();
        self.install_pending(now);
        let due = self.last_read_ns.is_none_or(|t| now >= t + self.cfg.poll_interval_ns);
        if due && !self.leftover_rules.is_empty() {
            self.retry_leftover();
        }
        let asked = self.read_asked.iter().any(|a| *a);
        if (due && self.rules_live > 0) || asked {
            self.read_counters();
        }
        if due {
            self.last_read_ns = Some(now);
        }
        self.flush();
        if let Some(j) = self.journal.as_mut() {
            j.flush();
            j.compact_if_due(self.rules_live / 2);
            self.stats.journal_write_errors = j.write_errors;
        }
        self.publish();
    }

    fn publish(&self) {
        if let Ok(mut s) = self.status.lock() {
            s.rules_live = self.rules_live;
            s.queued = self.pending.len();
            s.rules_by_port.clone_from(&self.rules_by_port);
            s.stats.clone_from(&self.stats);
        }
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
        by_rate.min(by_capacity).min(self.cfg.batch_size.div_ceil(2).max(1))
    }

    fn install_pending(&mut self, now: u64) {
        if self.pending.is_empty() {
            return;
        }
        self.refill_tokens(now);
        let budget = self.install_budget();
        if budget == 0 {
            return;
        }
        // Over capacity or rate: the largest flows go first, ties in the
        // order asked.
        let order = |a: &PendingInstall, b: &PendingInstall| b.bytes.cmp(&a.bytes).then(a.seq.cmp(&b.seq));
        if self.pending.len() > budget {
            self.pending.select_nth_unstable_by(budget - 1, order);
        }
        let take = budget.min(self.pending.len());
        let mut batch: Vec<PendingInstall> = self.pending.drain(..take).collect();
        batch.sort_by(order);
        let specs: Vec<_> = batch.iter().flat_map(|p| p.rules.iter().copied()).collect();
        self.stats.install_calls += 1;
        let outcomes = self.backend.install(&specs);
        self.tokens = (self.tokens - specs.len() as f64).max(0.0);
        let mut rollback: Vec<(usize, usize, Cookie)> = Vec::new();
        let mut refused: Vec<(usize, Refusal)> = Vec::new();
        for (i, p) in batch.iter().enumerate() {
            let mut placement = [None, None];
            let mut hw_counters = true;
            let mut refusal = None;
            for (d, placed) in placement.iter_mut().enumerate() {
                match outcomes.get(2 * i + d) {
                    Some(InstallOutcome::Installed { placement: at, counters }) => {
                        *placed = Some(*at);
                        hw_counters &= *counters;
                        self.rules_live += 1;
                        self.stats.rules_installed += 1;
                        let rule = &p.rules[d];
                        self.rule_in(rule.cookie, rule.matches.port);
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
            match (refusal, placement) {
                (None, [Some(a), Some(b)]) => {
                    let resp = Response::Installed { id: p.id, placement: [a, b], hw_counters, installed_ns: now };
                    self.send(p.shard, resp);
                }
                (r, placement) => {
                    // Half a flow in hardware would split its counting: undo.
                    for (d, placed) in placement.iter().enumerate() {
                        if placed.is_some() {
                            rollback.push((i, d, p.rules[d].cookie));
                        }
                    }
                    refused.push((
                        i,
                        r.unwrap_or_else(|| Refusal { kind: RefusalKind::Io, message: "no outcome".into() }),
                    ));
                }
            }
        }
        let mut leftover: Vec<[Option<RuleCounters>; 2]> = vec![[None, None]; batch.len()];
        if !rollback.is_empty() {
            let cookies: Vec<Cookie> = rollback.iter().map(|(_, _, c)| *c).collect();
            self.stats.remove_calls += 1;
            for ((i, d, cookie), result) in rollback.iter().zip(self.backend.remove(&cookies)) {
                self.rules_live = self.rules_live.saturating_sub(1);
                self.rule_out(cookie, result.as_ref().ok().copied().flatten());
                match result {
                    Ok(c) => leftover[*i][*d] = c,
                    Err(e) => {
                        self.stats.remove_errors += 1;
                        tracing::warn!(error = %e, "taking back half a flow's rules failed");
                    }
                }
            }
        }
        let mut retry = Vec::new();
        let mut batch: Vec<Option<PendingInstall>> = batch.into_iter().map(Some).collect();
        for (i, refusal) in refused {
            let p = batch[i].take().expect("each flow once");
            if leftover[i].iter().any(Option::is_some) {
                self.send(p.shard, Response::Leftover { id: p.id, counters: leftover[i] });
            }
            if matches!(refusal.kind, RefusalKind::Rate | RefusalKind::Capacity) {
                *self.stats.retried.entry(refusal.kind.as_str().to_string()).or_insert(0) += 1;
                retry.push(p);
            } else {
                self.send(p.shard, Response::Refused { id: p.id, refusal });
            }
        }
        self.pending.extend(retry);
    }

    fn remove_requested(&mut self) {
        if self.removals.is_empty() {
            return;
        }
        let removals = std::mem::take(&mut self.removals);
        let cookies: Vec<Cookie> = removals.iter().flat_map(|(_, _, c)| c.iter().copied()).collect();
        self.stats.remove_calls += 1;
        let mut results = self.backend.remove(&cookies).into_iter();
        let ended_ns = self.clock_ns(self.now_ns);
        for (shard, id, cookies) in removals {
            let mut out = Vec::with_capacity(cookies.len());
            for cookie in cookies {
                let result = results.next().unwrap_or_else(|| {
                    Err(BackendError::Io {
                        backend: self.backend.name().into(),
                        message: "returned no result for this rule".into(),
                    })
                });
                match &result {
                    Ok(last) => {
                        self.rules_live = self.rules_live.saturating_sub(1);
                        self.stats.rules_removed += 1;
                        self.rule_out(&cookie, *last);
                    }
                    Err(BackendError::UnknownRule { .. }) => {
                        // Already gone (removed behind our back).
                        self.rules_live = self.rules_live.saturating_sub(1);
                        self.stats.remove_errors += 1;
                        self.rule_out(&cookie, None);
                    }
                    Err(_) => self.stats.remove_errors += 1,
                }
                out.push((cookie.direction(), result));
            }
            self.send(shard, Response::Removed { id, results: out, ended_ns });
        }
    }

    fn read_counters(&mut self) {
        let mut buf = std::mem::take(&mut self.counters_buf);
        buf.clear();
        self.stats.counter_reads += 1;
        // The time the read begins, after this step's removals and
        // installs: a packet before it is in the read.
        let read_ns = self.clock_ns(self.now_ns);
        for link in &self.links {
            link.read_begun.set(read_ns);
        }
        if let Err(e) = self.backend.read_counters(&mut buf) {
            self.stats.counter_errors += 1;
            tracing::warn!(error = %e, "reading rule counters failed; flows keep their last counts");
        }
        let read_end_ns = self.clock_ns(read_ns);
        let n = self.links.len();
        let mut per_shard: Vec<Vec<(Cookie, RuleCounters)>> = vec![Vec::new(); n];
        for (cookie, counters) in &buf {
            let shard = FlowId(cookie.flow).shard() as usize;
            if cookie.owner != self.cfg.instance_id || shard >= n {
                self.stats.unknown_rules += 1;
                continue;
            }
            if let Some((_, last)) = self.rules.get_mut(cookie) {
                add_counted(&mut self.stats.rule_counted, last, counters);
            }
            per_shard[shard].push((*cookie, *counters));
        }
        for (shard, counters) in per_shard.into_iter().enumerate() {
            let asked = std::mem::take(&mut self.read_asked[shard]);
            // In pieces, so a shard folds a dump of many rules in over a
            // few polls, never holding its packets for all of it at once.
            let mut pieces = counters.chunks(COUNTERS_PER_ANSWER).peekable();
            if pieces.peek().is_none() && asked {
                self.send(shard, Response::Counters { counters: Vec::new(), asked, read_ns, read_end_ns });
            }
            while let Some(piece) = pieces.next() {
                let last = pieces.peek().is_none();
                self.send(
                    shard,
                    Response::Counters { counters: piece.to_vec(), asked: asked && last, read_ns, read_end_ns },
                );
            }
        }
        self.counters_buf = buf;
    }

    fn rule_in(&mut self, cookie: Cookie, port: u8) {
        if self.rules.insert(cookie, (port, RuleCounters::default())).is_none() {
            *self.rules_by_port.entry(port).or_insert(0) += 1;
        }
    }

    /// A rule is gone; `last`, its final counters where the backend gave them.
    fn rule_out(&mut self, cookie: &Cookie, last: Option<RuleCounters>) {
        let Some((port, mut seen)) = self.rules.remove(cookie) else { return };
        if let Some(last) = last {
            add_counted(&mut self.stats.rule_counted, &mut seen, &last);
        }
        if let Some(n) = self.rules_by_port.get_mut(&port) {
            *n -= 1;
            if *n == 0 {
                self.rules_by_port.remove(&port);
            }
        }
    }

    fn send(&mut self, shard: usize, resp: Response) {
        self.backlog[shard].push_back(resp);
        self.flush_shard(shard);
    }

    fn flush(&mut self) {
        for shard in 0..self.links.len() {
            self.flush_shard(shard);
        }
    }

    fn flush_shard(&mut self, shard: usize) {
        while let Some(resp) = self.backlog[shard].pop_front() {
            match self.links[shard].to_shard.try_send(resp) {
                Ok(()) => {}
                Err(TrySendError::Full(resp)) => {
                    self.backlog[shard].push_front(resp);
                    return;
                }
                // The shard is gone: nobody is left to tell.
                Err(TrySendError::Disconnected(_)) => {
                    self.backlog[shard].clear();
                    return;
                }
            }
        }
    }

    /// Answers not yet taken by their shard's full queue.
    pub fn backlogged(&self) -> usize {
        self.backlog.iter().map(VecDeque::len).sum()
    }

    /// Runs free on `clock` until every shard has hung up and every answer
    /// is out; returns the coordinator, its backend still held, for the
    /// caller's last look.
    pub fn run(mut self, clock: &dyn Fn() -> u64) -> Coordinator {
        loop {
            self.take_requests();
            self.step(clock());
            if self.connected.iter().all(|c| !c) {
                return self;
            }
            let wait = if self.backlogged() > 0 { Duration::from_micros(200) } else { self.next_wait(clock()) };
            self.wait_for_request(wait);
        }
    }

    /// How long to sleep: until counters are due, at most `IDLE_WAIT`, and
    /// briefly while installs wait for rate tokens.
    fn next_wait(&self, now: u64) -> Duration {
        let mut wait = IDLE_WAIT;
        if let Some(t) = self.last_read_ns {
            let until = (t + self.cfg.poll_interval_ns).saturating_sub(now);
            wait = wait.min(Duration::from_nanos(until));
        }
        if !self.pending.is_empty() {
            wait = wait.min(Duration::from_millis(1));
        }
        wait
    }

    fn wait_for_request(&self, wait: Duration) {
        let mut sel = Select::new();
        let mut any = false;
        for (i, l) in self.links.iter().enumerate() {
            if self.connected[i] {
                sel.recv(&l.from_shard);
                any = true;
            }
        }
        if !any {
            return;
        }
        // Readiness only: the requests are taken by `take_requests`.
        let _ = sel.ready_timeout(wait);
    }

    /// Lockstep: takes, without waiting, the requests of `epoch` that can
    /// be taken now in shard order (every request of shard `s` for the
    /// epoch before any of shard `s + 1`'s, none of a later epoch), so the
    /// same requests meet the same state however the threads ran. True
    /// once every connected shard has finished `epoch`.
    ///
    /// The packet reader calls this while it waits for room in a
    /// worker's queue, since that worker may itself be waiting for room
    /// in its queue to this coordinator.
    pub fn take_epoch_requests(&mut self, epoch: u64) -> bool {
        self.collect_epoch(epoch, false)
    }

    /// Lockstep (see the module's comment): epoch `epoch`'s work, once
    /// every shard has finished it, waiting for the shards as long as it
    /// takes; then every shard is told the epoch is done. The caller, the
    /// packet reader, calls it once it has offered every packet up to the
    /// end of epoch `epoch + 1` to an in-process NIC, or at the end of the
    /// replay. False when every shard has hung up.
    pub fn run_epoch(&mut self, epoch: u64) -> bool {
        self.collect_epoch(epoch, true);
        if self.connected.iter().all(|c| !c) {
            return false;
        }
        let now = self.epoch_done.iter().flatten().map(|&(_, t)| t).max().unwrap_or(0);
        self.step(now);
        for shard in 0..self.links.len() {
            self.send(shard, Response::EpochDone(epoch));
        }
        true
    }

    fn collect_epoch(&mut self, epoch: u64, wait: bool) -> bool {
        for shard in 0..self.links.len() {
            while self.connected[shard] && self.epoch_done[shard].is_none_or(|(e, _)| e < epoch) {
                let next = if wait {
                    // A shard may be waiting on answers its full queue
                    // holds back: keep handing them over meanwhile.
                    let wait =
                        if self.backlogged() > 0 { Duration::from_micros(200) } else { Duration::from_millis(50) };
                    self.links[shard].from_shard.recv_timeout(wait)
                } else {
                    self.links[shard].from_shard.try_recv().map_err(|e| match e {
                        TryRecvError::Empty => RecvTimeoutError::Timeout,
                        TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                    })
                };
                match next {
                    Ok(req) => self.handle(shard, req),
                    Err(RecvTimeoutError::Timeout) => {
                        self.flush();
                        if !wait {
                            return false;
                        }
                    }
                    Err(RecvTimeoutError::Disconnected) => self.connected[shard] = false,
                }
            }
        }
        true
    }
}
