//! Taking over, at start, the flows whose rules an earlier run left in
//! place: each comes back under its own id (its rules' cookies carry it),
//! with what the journal kept of it and what its rules counted, so its
//! one record, written by whichever run ends it, counts every packet
//! once. A flow this configuration would no longer offload as it is has
//! its rules taken out and goes on in software.

use super::*;
use crate::journal::{JournalEntry, JournalLine};
use flowtable_hw::{AdoptedRule, RuleCounters};
use flowtable_sw::AdoptedFlow;

/// Why a flow of an earlier run could not be taken over.
#[derive(Debug, thiserror::Error)]
pub enum AdoptRefusal {
    #[error("the rule for {0} does not match what the journal has of the flow")]
    Mismatch(&'static str),
    #[error("{0}")]
    Table(#[from] flowtable_sw::AdoptError),
}

/// What the rules counted, from the journal's `hw` at `rules_at` on: a
/// rule whose counters went back was replaced, and counts from zero.
fn hw_from(entry: &JournalEntry, d: usize, now: &RuleCounters) -> DirCounters {
    let (hw, at) = (entry.hw[d], entry.rules_at[d]);
    if now.packets >= at.packets {
        DirCounters {
            packets: hw.packets + (now.packets - at.packets),
            bytes: hw.bytes + now.bytes.saturating_sub(at.bytes),
        }
    } else {
        DirCounters { packets: hw.packets + now.packets, bytes: hw.bytes + now.bytes }
    }
}

fn adopted_flow(entry: &JournalEntry, last_ns: u64) -> AdoptedFlow {
    AdoptedFlow {
        id: FlowId(entry.flow),
        key: entry.key,
        initiator: entry.initiator(),
        ports: entry.ports,
        tcp: entry.tcp,
        first_ns: entry.first_ns,
        last_ns,
        l2_len: entry.l2_len,
        tcp_flags: entry.tcp_flags,
    }
}

impl Shard {
    /// Puts back the flow `entry` describes, its two rules (by direction)
    /// in place since the earlier run. Returns whether its rules stay:
    /// false when this configuration would not put them in as they are
    /// (another action, another port), and their removal is asked for.
    pub fn adopt(&mut self, entry: &JournalEntry, rules: [AdoptedRule; 2], now_ns: u64) -> Result<bool, AdoptRefusal> {
        let id = FlowId(entry.flow);
        let key = entry.key;
        for dir in DIRS {
            if !rules[dir.index()].matches.is_for(&key, dir) {
                return Err(AdoptRefusal::Mismatch(if dir == entry.initiator() { "orig" } else { "reply" }));
            }
        }
        self.now_ns = self.now_ns.max(now_ns);
        // Last seen when the rules last counted (a close while no run was
        // there to see it leaves the flow idle since), else now.
        let last_used = rules.iter().filter_map(|r| r.counters.last_used_ns).max();
        let last_ns = last_used.map_or(now_ns, |t| t.min(now_ns)).max(entry.first_ns);
        self.table.adopt(adopted_flow(entry, last_ns))?;
        // The flow's action as it was decided (`pass`); its rules carry
        // what the backend made of it on each port (`forward` across an
        // inline pair).
        let mut state = OffloadState::queued(entry.action);
        state.placement = [Some(rules[0].placement), Some(rules[1].placement)];
        state.installed_placement = state.placement;
        state.hw_counters = true;
        state.installed_ns = entry.installed_ns;
        state.adopted_ns = Some(now_ns);
        state.requested = entry.requested;
        state.baseline = [rules[0].counters, rules[1].counters];
        let flow = self.table.counted_by_rules_mut(id).expect("just adopted");
        flow.sw = entry.sw;
        for dir in DIRS {
            flow.hw_mut()[dir.index()] = hw_from(entry, dir.index(), &rules[dir.index()].counters);
        }
        let (class, wanted) = self.classifier.offload_of(flow);
        let by_verdict = entry.class.as_deref() == Some("verdict");
        flow.class = if by_verdict { crate::classifier::CLASS_VERDICT } else { class };
        self.table.note_counted(id);
        self.table.set_stage(id, Stage::Offloaded);
        self.offloads.insert(id, state);
        if let Some(reported) = entry.reported {
            self.active.resume(id, reported, now_ns);
        } else {
            self.active.start(id, now_ns);
        }
        self.stats.flows_adopted += 1;
        // What this run would put in for the flow, rule by rule: the same
        // action on the same port, or the rules go.
        let as_now = DIRS.iter().all(|&dir| {
            let r = &rules[dir.index()];
            r.port == entry.ports[dir.index()] && r.action == self.rule_action(entry.action, id, r.port)
        });
        let keep = as_now && (by_verdict || entry.requested || wanted == Some(entry.action));
        if !keep {
            self.request_removal(id, Then::Software);
        }
        self.journal(id);
        Ok(keep)
    }

    /// The one record of a flow an earlier run left that this run can't
    /// take over (no room under its id, another number of workers, rules
    /// that don't read back as the journal has them, or rules gone): from
    /// the journal, and from the rules' final counters where they were
    /// still there (`finals`, by direction).
    fn record_of_left(&self, entry: &JournalEntry, finals: [Option<RuleCounters>; 2], now_ns: u64) -> FlowRecord {
        let id = FlowId(entry.flow);
        let last = finals.iter().flatten().filter_map(|c| c.last_used_ns).max().unwrap_or(now_ns).min(now_ns);
        let (mut flow, framing) = FlowTable::detached(&adopted_flow(entry, last.max(entry.first_ns)));
        flow.sw = entry.sw;
        for dir in DIRS {
            let d = dir.index();
            flow.hw_mut()[d] = finals[d].map_or(entry.hw[d], |c| hw_from(entry, d, &c));
        }
        flow.class = self.classifier.class_of_name(entry.class.as_deref().unwrap_or("")).unwrap_or(0);
        let mut state = OffloadState::queued(entry.action);
        state.installed_placement = [finals[0].map(|_| Placement::Hardware), finals[1].map(|_| Placement::Hardware)];
        state.hw_counters = true;
        state.installed_ns = entry.installed_ns;
        state.removed_ns = Some(now_ns);
        state.adopted_ns = Some(now_ns);
        let mut record = self.record_of(id, &flow, &framing, Some(&state), None, EndReason::Shutdown);
        if let Some(r) = entry.reported {
            record.orig = record.orig.since(&r[0]);
            record.reply = record.reply.since(&r[1]);
        }
        record
    }

    /// Ends a flow an earlier run left that this run can't take over: its
    /// record (see `record_of_left`) goes out with this shard's.
    /// Its gone line waits for `release_left` (the run has started): a
    /// start that fails drops the record, and the next run makes it.
    pub fn end_left(&mut self, entry: &JournalEntry, finals: [Option<RuleCounters>; 2], now_ns: u64) {
        let record = self.record_of_left(entry, finals, now_ns);
        self.stats.flows_ended += 1;
        *self.stats.ended_by.entry(EndReason::Shutdown.as_str().to_string()).or_insert(0) += 1;
        self.records.push(record);
        if self.cfg.journal {
            self.left_gone.push(entry.flow);
        }
    }

    /// Sends the gone lines of the flows `end_left` ended, once the run
    /// that writes their records has started.
    pub fn release_left(&mut self) {
        for flow in std::mem::take(&mut self.left_gone) {
            self.send(Request::Journal(Box::new(JournalLine::Gone { flow, gone: true })));
        }
    }

    /// Sends the journal a flow's entry as it stands (its rules are in).
    pub(super) fn journal(&mut self, id: FlowId) {
        if !self.cfg.journal {
            return;
        }
        let Some(entry) = self.journal_entry(id) else { return };
        self.send(Request::Journal(Box::new(JournalLine::Flow(Box::new(entry)))));
    }

    /// Tells the journal a flow's rules are gone.
    pub(super) fn journal_gone(&mut self, id: FlowId) {
        if self.cfg.journal {
            self.send(Request::Journal(Box::new(JournalLine::Gone { flow: id.0, gone: true })));
        }
    }

    pub(super) fn journal_entry(&self, id: FlowId) -> Option<JournalEntry> {
        let flow = self.table.get(id)?;
        let state = self.offloads.get(&id)?;
        let framing = self.table.framing(id);
        Some(JournalEntry {
            flow: id.0,
            key: flow.key,
            initiator: flow.initiator() as u8,
            ports: [flow.port(Direction::LoToHi), flow.port(Direction::HiToLo)],
            tcp: flow.tcp,
            class: self.classifier.class_name(flow.class).map(str::to_string),
            action: state.action,
            first_ns: framing.first_ns,
            installed_ns: state.installed_ns,
            sw: {
                // What slipped past the rules going in is software's, once
                // settled; a killed run never settles it, so it goes in now.
                let mut sw = flow.sw;
                for (part, slip) in sw.iter_mut().zip(state.slip) {
                    part.add(slip.unwrap_or_default());
                }
                sw
            },
            l2_len: [framing.l2_len(Direction::LoToHi), framing.l2_len(Direction::HiToLo)],
            tcp_flags: framing.tcp_flags,
            reported: self.active.reported(id),
            requested: state.requested,
            hw: flow.hw(),
            rules_at: state.baseline.map(|c| DirCounters { packets: c.packets, bytes: c.bytes }),
            workers: self.cfg.workers,
        })
    }
}
