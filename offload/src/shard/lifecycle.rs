//! A flow's offload lifecycle in its shard: the offload thread's answers
//! (installed, refused, removed, withdrawn, counters) folded in, what
//! becomes of a flow once its rules are gone, and the settling that keeps
//! every packet counted once across a rule going in or out.

use super::aging::reason_for;
use super::*;

impl Shard {
    pub(super) fn apply(&mut self, resp: Response) {
        let now = self.now_ns;
        match resp {
            Response::Installed { id, placement, hw_counters, installed_ns } => {
                self.outstanding = self.outstanding.saturating_sub(1);
                let Some(state) = self.offloads.get_mut(&id) else { return };
                state.placement = placement.map(Some);
                state.installed_placement = placement.map(Some);
                state.hw_counters = hw_counters;
                state.installed_ns = installed_ns;
                state.cancel_sent = false;
                let (action, then) = (state.action, state.then);
                self.stats.flows_offloaded += 1;
                self.table.set_stage(id, Stage::Offloaded);
                let placement = placement.map(Some);
                self.emit(|| Event::Offloaded { id, action, placement, ts_ns: now });
                if !hw_counters {
                    // The rule counts nothing: what software set aside is its own.
                    self.settle_all(id);
                }
                if let Some(then) = then.filter(|t| *t != Then::Idle) {
                    self.request_removal(id, then);
                } else {
                    self.journal(id);
                }
            }
            Response::Refused { id, refusal } => {
                self.outstanding = self.outstanding.saturating_sub(1);
                self.settle_all(id);
                let Some(mut state) = self.offloads.remove(&id) else { return };
                let then = state.then.take();
                self.refuse(id, &mut state, refusal);
                self.offloads.insert(id, state);
                self.after_rules_gone(id, then);
            }
            Response::Leftover { id, counters } => {
                for dir in DIRS {
                    if let Some(c) = counters[dir.index()] {
                        self.fold_rule_counts(id, dir, c.packets, c.bytes, c.last_used_ns, now);
                    }
                }
            }
            Response::Removed { id, results, ended_ns } => {
                // Held whatever the results: a direction whose removal
                // failed keeps its rule, one removed must wait as well.
                if self.backend.capabilities.software_sees_offloaded && !self.stopping {
                    // Held: see `HeldRemoval`.
                    let deadline_ns = ended_ns.max(now).saturating_add(REMOVAL_GRACE_NS);
                    self.held.insert(id, HeldRemoval { results, ended_ns, passed: [false; 2], deadline_ns });
                    return;
                }
                self.removed(id, results);
            }
            Response::Cancelled { id, cancelled } => {
                self.outstanding = self.outstanding.saturating_sub(if cancelled { 2 } else { 1 });
                let Some(state) = self.offloads.get_mut(&id) else { return };
                state.cancel_sent = false;
                if !cancelled {
                    // Its outcome came first and was handled.
                    return;
                }
                let then = state.then.take();
                self.settle_all(id);
                if self.table.get(id).is_some_and(|f| f.stage() == Stage::Installing) {
                    self.table.set_stage(id, Stage::Tracking);
                }
                self.after_rules_gone(id, then.or(Some(Then::Idle)));
            }
            Response::Counters { counters, asked, read_ns, read_end_ns } => {
                if asked {
                    self.outstanding = self.outstanding.saturating_sub(1);
                }
                for (cookie, c) in &counters {
                    if !self.apply_counters(FlowId(cookie.flow), cookie.direction(), c, now) {
                        self.stats.unknown_rules += 1;
                    }
                }
                if self.cfg.journal {
                    for (cookie, _) in &counters {
                        self.note_read(FlowId(cookie.flow), cookie.direction(), (read_ns, read_end_ns));
                    }
                }
            }
            Response::EpochDone(e) => self.epoch_done = Some(e),
        }
    }

    /// A flow's rules are out (`results`, by direction): their final
    /// counters folded in, what slipped past them settled, and the flow on
    /// as its `then` says; or, where a removal failed, kept offloaded.
    pub(super) fn removed(
        &mut self,
        id: FlowId,
        results: Vec<(Direction, Result<Option<RuleCounters>, BackendError>)>,
    ) {
        let now = self.now_ns;
        self.outstanding = self.outstanding.saturating_sub(1);
        let mut failed = false;
        for (dir, result) in results {
            match result {
                Ok(final_counters) => {
                    if let Some(c) = final_counters {
                        self.apply_counters(id, dir, &c, now);
                    }
                    self.drop_rule(id, dir, now);
                }
                // Already gone (removed behind our back): nothing to keep.
                Err(BackendError::UnknownRule { .. }) => self.drop_rule(id, dir, now),
                Err(e) => {
                    tracing::warn!(flow = %id, error = %e, "removing a rule failed; will retry");
                    failed = true;
                }
            }
        }
        let Some(state) = self.offloads.get_mut(&id) else { return };
        let then = state.then;
        if failed {
            // The flow keeps its rule and its record; asked again
            // next poll, unless the shard is stopping.
            self.table.set_stage(id, Stage::Offloaded);
            if then != Some(Then::End(EndReason::Shutdown)) {
                self.retry_removal.push(id);
            }
            return;
        }
        state.then = None;
        self.after_rules_gone(id, then);
    }

    /// A packet of a flow whose removal answer is held, at `ts_ns`: one
    /// from after the removal tells that software has taken every packet
    /// of its direction the rules may have counted. True when it was
    /// handled here: the answer, handed on, ended the flow, and the
    /// packet, from after its rules, started it again.
    #[cold]
    #[inline(never)]
    pub(super) fn pass_held(&mut self, id: FlowId, pkt: &PacketInfo, ts_ns: u64) -> bool {
        let Some(held) = self.held.get_mut(&id) else { return false };
        if ts_ns < held.ended_ns {
            return false;
        }
        held.passed[pkt.dir.index()] = true;
        if held.passed.iter().all(|&p| p) {
            self.release_held(id);
            if self.table.get(id).is_none() {
                self.process(pkt, ts_ns);
                return true;
            }
        }
        false
    }

    /// Hands a held removal answer on (see `HeldRemoval`).
    pub fn release_held(&mut self, id: FlowId) {
        if let Some(held) = self.held.remove(&id) {
            self.removed(id, held.results);
        }
    }

    /// Hands on every held removal answer whose wait is over at `now`, or
    /// all of them (`all`: the shard stops, or a caller waits for them).
    pub fn release_held_removals(&mut self, now: u64, all: bool) {
        if self.held.is_empty() {
            return;
        }
        let mut due: Vec<(u64, FlowId)> =
            self.held.iter().filter(|(_, h)| all || h.deadline_ns <= now).map(|(id, h)| (h.ended_ns, *id)).collect();
        // In the order they came, whatever the map's.
        due.sort_unstable();
        for (_, id) in due {
            self.release_held(id);
        }
    }

    /// A flow's rules are gone (or never went in): end it, or let it go
    /// on in software, as `then` says.
    pub(super) fn after_rules_gone(&mut self, id: FlowId, then: Option<Then>) {
        let Some(flow) = self.table.get(id) else { return };
        let now = self.now_ns;
        match then {
            None => {
                if flow.stage() == Stage::Removing {
                    self.table.set_stage(id, Stage::Software);
                }
            }
            Some(Then::Close) => self.close_in_software(id),
            // A closed connection found idle: never revived, it ends by
            // its closing timeout.
            Some(Then::Idle) if flow.tcp.is_closed() => self.close_in_software(id),
            Some(Then::Idle) => {
                if self.table.deadline(flow) > now {
                    // The final counters show it went on after it was found
                    // idle: it goes on, in software, and may be offloaded again.
                    if matches!(flow.stage(), Stage::Removing | Stage::Offloaded) {
                        self.offloads.remove(&id);
                        self.table.set_stage(id, Stage::Tracking);
                    }
                    let deadline = self.table.deadline(self.table.get(id).expect("live"));
                    self.table.reschedule(id, deadline);
                } else {
                    let reason = reason_for(flow);
                    self.end(id, reason);
                }
            }
            Some(Then::Software) => {
                if let Some(state) = self.offloads.get_mut(&id) {
                    state.pinned_software = true;
                }
                self.table.set_stage(id, Stage::Software);
                self.emit(|| Event::Unoffloaded { id, ts_ns: now });
            }
            // Out of hardware, and in again with the action asked for (as
            // `unoffload` then `offload` would do).
            Some(Then::Offload(action)) => {
                self.table.set_stage(id, Stage::Software);
                self.emit(|| Event::Unoffloaded { id, ts_ns: now });
                if let Err(e) = self.request_offload(id, action) {
                    tracing::warn!(flow = %id, error = %e, "offloading again with the verdict's action failed");
                }
            }
            // Shutdown ends every flow at once when the answers are in.
            Some(Then::End(EndReason::Shutdown)) => {
                if flow.stage() == Stage::Removing {
                    self.table.set_stage(id, Stage::Software);
                }
            }
            Some(Then::End(reason)) => self.end(id, reason),
        }
    }

    /// A closed connection without rules: it stays in software (what is
    /// left of it, a last ACK, is software's) until its closing timeout,
    /// then ends `tcp-close`.
    fn close_in_software(&mut self, id: FlowId) {
        let Some(flow) = self.table.get(id) else { return };
        let deadline = self.table.deadline(flow);
        if deadline <= self.now_ns {
            let reason = reason_for(flow);
            self.end(id, reason);
            return;
        }
        self.table.set_stage(id, Stage::Software);
        self.table.reschedule(id, deadline);
    }

    /// Asks for a flow's rules to go; `then` says what becomes of it.
    pub(super) fn request_removal(&mut self, id: FlowId, then: Then) {
        let Some(state) = self.offloads.get_mut(&id) else { return };
        let cookies: Vec<Cookie> = DIRS
            .iter()
            .filter(|d| state.placement[d.index()].is_some())
            .map(|d| Cookie::new(self.cfg.instance_id, id.0, *d))
            .collect();
        state.then = Some(then);
        if cookies.is_empty() {
            state.then = None;
            self.after_rules_gone(id, Some(then));
            return;
        }
        self.table.set_stage(id, Stage::Removing);
        self.outstanding += 1;
        self.send(Request::Remove { id, cookies });
    }

    /// Asks for an install not yet made to be withdrawn; `then` says what
    /// becomes of the flow if it was (if not, its outcome says).
    pub(super) fn request_cancel(&mut self, id: FlowId, then: Then) {
        let stage = self.table.get(id).map(|f| f.stage());
        let Some(state) = self.offloads.get_mut(&id) else { return };
        state.then = Some(then);
        if stage == Some(Stage::Queued) {
            // Still here: never sent, nothing to ask.
            let before = self.outbox.len();
            self.outbox.retain(|r| !matches!(r, Request::Install { id: i, .. } if *i == id));
            if self.outbox.len() < before {
                self.queued -= 1;
                self.outstanding = self.outstanding.saturating_sub(1);
                state.then = None;
                self.settle_all(id);
                self.table.set_stage(id, Stage::Tracking);
                self.after_rules_gone(id, Some(then));
                return;
            }
        }
        if state.cancel_sent {
            return;
        }
        state.cancel_sent = true;
        self.outstanding += 1;
        self.send(Request::Cancel { id });
    }

    /// Merges a rule's cumulative counters into its flow as a delta.
    pub(super) fn apply_counters(&mut self, id: FlowId, dir: Direction, c: &RuleCounters, now: u64) -> bool {
        let Some(state) = self.offloads.get_mut(&id) else { return false };
        if state.placement[dir.index()].is_none() || self.table.get(id).is_none() {
            return false;
        }
        let base = &mut state.baseline[dir.index()];
        // Counters that went backwards mean the rule was replaced: what it
        // shows now is all new.
        let (dp, db) = if c.packets >= base.packets {
            (c.packets - base.packets, c.bytes.saturating_sub(base.bytes))
        } else {
            (c.packets, c.bytes)
        };
        *base = *c;
        let d = dir.index();
        // The first read after install covers however little of a poll
        // interval the rule was in: too short a span to make a rate of.
        let since = if state.read_ns[d] != 0 { state.read_ns[d] } else { state.installed_ns };
        let interval = now.saturating_sub(since);
        state.read_interval_ns[d] = if interval >= self.cfg.poll_interval_ns / 2 { interval } else { 0 };
        state.read_ns[d] = now;
        state.last_read[d] = DirCounters { packets: dp, bytes: db };
        self.fold_rule_counts(id, dir, dp, db, c.last_used_ns, now);
        true
    }

    pub(super) fn fold_rule_counts(
        &mut self,
        id: FlowId,
        dir: Direction,
        dp: u64,
        db: u64,
        last_used: Option<u64>,
        now: u64,
    ) {
        if dp == 0 {
            return;
        }
        let Some(state) = self.offloads.get_mut(&id) else { return };
        let Some(flow) = self.table.counted_by_rules_mut(id) else { return };
        state.rule_counted[dir.index()].add(DirCounters { packets: dp, bytes: db });
        let hw = &mut flow.hw_mut()[dir.index()];
        hw.packets += dp;
        hw.bytes += db;
        // Offloaded before its handshake completed, software can't see it
        // complete: rules counting both directions mean the connection
        // carries traffic, so it is aged as established, not as a
        // handshake (and is not cut, then found again mid-stream).
        if matches!(flow.tcp, TcpState::SynSent | TcpState::SynReceived) && flow.hw().iter().all(|c| c.packets > 0) {
            flow.tcp = TcpState::Established;
        }
        flow.touch(last_used.map_or(now, |t| t.min(now)));
        self.table.note_counted(id);
    }

    /// A read of `dir`'s rule, made from `read.0` to `read.1`, towards the
    /// journal's figure of what slipped past the rule going in (see
    /// `OffloadState::slip`): what software had seen of the direction
    /// before the read less what the rule had counted by it. The rule's
    /// counters were taken at some moment within the read, so the figure
    /// is exact only when no packet of the direction came during it.
    /// Software takes packets some milliseconds late (a capture ring) and
    /// goes on while the offload thread reads, so what it had seen before
    /// the read is known only at the first packet it takes from after the
    /// read began (`tap_unsettled`), which may come before this answer or
    /// after it. A direction that has seen nothing and counted nothing
    /// has nothing in flight either.
    fn note_read(&mut self, id: FlowId, dir: Direction, read: (u64, u64)) {
        let d = dir.index();
        let Some(state) = self.offloads.get_mut(&id) else { return };
        if state.slip[d].is_some() || state.placement[d].is_none() {
            return;
        }
        let counted = state.rule_counted[d];
        if state.adopted_ns.is_none() && counted.packets == 0 && state.tapped[d].packets == 0 {
            self.slip_estimate(id, dir, DirCounters::default());
            return;
        }
        state.slip_read[d] = None;
        match state.seen_before_read[d] {
            Some((began, seen)) if began == read.0 => {
                // The first packet from after the read began came after it
                // ended too: none came during it.
                if let Some((seen, _)) = seen.filter(|&(_, first_ts)| first_ts >= read.1) {
                    self.exact_read(id, dir, seen, counted);
                }
            }
            _ if state.last_tap_ns[d] < read.0 => state.slip_read[d] = Some((read.0, read.1, counted)),
            // A packet from after the read's start came before word that
            // it had begun: what was seen before it is not known.
            _ => {}
        }
    }

    /// A packet software takes, at `ts_ns`, of direction `d` of a flow
    /// (`state`) whose `slip` is not settled: the first from after the start
    /// of the read `begun` last tells what software had seen before that
    /// read, if every packet it took until then came before the read. Then
    /// it is counted as tapped. What software had seen and the rule had
    /// counted, when that read's answer came first and the figure is exact
    /// (for `exact_read`).
    pub(super) fn tap_unsettled(
        state: &mut OffloadState,
        begun: Option<u64>,
        d: usize,
        ts_ns: u64,
        tap: DirCounters,
    ) -> Option<(DirCounters, DirCounters)> {
        let mut answered = None;
        // A packet of the read's own instant is taken as after it: the
        // read began at that time, the packet reached software later.
        if let Some(r) = begun.filter(|&r| ts_ns >= r) {
            if state.seen_before_read[d].is_none_or(|(at, _)| at != r) {
                let seen = (state.last_tap_ns[d] < r).then_some((state.tapped[d], ts_ns));
                state.seen_before_read[d] = Some((r, seen));
                if let Some((_, ended, counted)) = state.slip_read[d].filter(|&(began, ..)| began == r) {
                    state.slip_read[d] = None;
                    // None came during the read.
                    if let Some((seen, _)) = seen.filter(|_| ts_ns >= ended) {
                        answered = Some((seen, counted));
                    }
                }
            }
        }
        state.last_tap_ns[d] = state.last_tap_ns[d].max(ts_ns);
        state.tapped[d].add(tap);
        answered
    }

    /// A read with an exact figure: what software had seen of `dir` before
    /// it (`seen`), and what the rule had counted by it (`counted`).
    pub(super) fn exact_read(&mut self, id: FlowId, dir: Direction, seen: DirCounters, counted: DirCounters) {
        let d = dir.index();
        let Some(state) = self.offloads.get_mut(&id) else { return };
        if state.adopted_ns.is_some() {
            // Taken over, the rules in all along: nothing slipped past
            // them. But software began to take packets some time after
            // the takeover read the rules' counters, so the rules counted
            // packets software never saw; from this read on both count
            // the same ones, and `settle` compares only those.
            state.tapped[d] = state.tapped[d].less(seen);
            state.rule_counted[d] = state.rule_counted[d].less(counted);
            state.slip[d] = Some(DirCounters::default());
            return;
        }
        self.slip_estimate(id, dir, seen.less(counted));
    }

    /// Two estimates in a row that agree settle it; once both directions
    /// are, the flow's entry goes to the journal again.
    fn slip_estimate(&mut self, id: FlowId, dir: Direction, estimate: DirCounters) {
        let d = dir.index();
        let Some(state) = self.offloads.get_mut(&id) else { return };
        if state.slip_seen[d] == Some(estimate) {
            state.slip[d] = Some(estimate);
            if state.slip.iter().all(Option::is_some) {
                self.journal(id);
            }
        } else {
            state.slip_seen[d] = Some(estimate);
        }
    }

    pub(super) fn drop_rule(&mut self, id: FlowId, dir: Direction, now: u64) {
        self.settle(id, dir);
        let Some(state) = self.offloads.get_mut(&id) else { return };
        state.placement[dir.index()] = None;
        if state.placement.iter().all(Option::is_none) {
            state.removed_ns = Some(now);
            self.journal_gone(id);
        }
    }

    /// Software left the packets it saw of an offloaded direction to the
    /// rule's counters, from the moment the rule was asked for. But the
    /// rule takes effect some time after that (the offload thread's queue,
    /// a netlink round trip, a PMD call), and the packets in between went
    /// past it uncounted. Every packet the rule counted was seen too
    /// (software taps in front of the rule), so what was seen beyond what
    /// the rule counted slipped past: software's to count, settled once the
    /// rule's final counters are in, or once it is clear the rule never
    /// went in or counts nothing. Bytes are settled the same way; where the
    /// rule counts a frame's length differently (a VLAN tag the NIC
    /// stripped), they are off by that difference.
    pub(super) fn settle(&mut self, id: FlowId, dir: Direction) {
        let d = dir.index();
        let Some(state) = self.offloads.get_mut(&id) else { return };
        let (seen, counted) = (state.tapped[d], state.rule_counted[d]);
        state.tapped[d] = DirCounters::default();
        state.rule_counted[d] = DirCounters::default();
        // Settled for good: the journal's estimate has no more to add.
        state.slip[d] = Some(DirCounters::default());
        state.slip_seen[d] = None;
        let slipped = seen.less(counted);
        let packets = slipped.packets;
        if packets == 0 {
            return;
        }
        if let Some(flow) = self.table.get_mut(id) {
            flow.sw[d].add(slipped);
            self.stats.sw_packets += packets;
            self.stats.tap_packets_skipped -= packets;
            self.stats.slipped_packets += packets;
        }
    }

    pub(super) fn settle_all(&mut self, id: FlowId) {
        for dir in DIRS {
            self.settle(id, dir);
        }
    }
}
