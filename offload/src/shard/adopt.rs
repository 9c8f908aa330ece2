//! Taking over, at start, the flows whose rules an earlier run left in
//! place: each comes back under its own id (its rules' cookies carry it),
//! with what the journal kept of it and what its rules counted, so its
//! one record, written by whichever run ends it, counts every packet
//! once. A flow this configuration would no longer offload as it is has
//! its rules taken out and goes on in software.

use super::*;
use crate::journal::{JournalEntry, JournalLine};
use flowtable_hw::AdoptedRule;
use flowtable_sw::AdoptedFlow;

/// Why a flow of an earlier run could not be taken over.
#[derive(Debug, thiserror::Error)]
pub enum AdoptRefusal {
    #[error("the rule for {0} does not match what the journal has of the flow")]
    Mismatch(&'static str),
    #[error("{0}")]
    Table(#[from] flowtable_sw::AdoptError),
}

impl Shard {
    /// Puts back the flow `entry` describes, its two rules (by direction)
    /// in place since the earlier run. Returns whether its rules stay:
    /// false when this configuration no longer offloads it so, and their
    /// removal is asked for.
    pub fn adopt(&mut self, entry: &JournalEntry, rules: [AdoptedRule; 2], now_ns: u64) -> Result<bool, AdoptRefusal> {
        let id = FlowId(entry.flow);
        let key = entry.key;
        for dir in DIRS {
            if !rules[dir.index()].matches.is_for(&key, dir) {
                return Err(AdoptRefusal::Mismatch(if dir == entry.initiator() { "orig" } else { "reply" }));
            }
        }
        self.now_ns = self.now_ns.max(now_ns);
        self.table.adopt(AdoptedFlow {
            id,
            key,
            initiator: entry.initiator(),
            ports: entry.ports,
            tcp: entry.tcp,
            first_ns: entry.first_ns,
            last_ns: now_ns,
            l2_len: entry.l2_len,
            tcp_flags: entry.tcp_flags,
        })?;
        // The flow's action as it was decided (`pass`); its rules carry
        // what the backend made of it on each port (`forward` across an
        // inline pair).
        let mut state = OffloadState::queued(entry.action);
        state.placement = [Some(rules[0].placement), Some(rules[1].placement)];
        state.installed_placement = state.placement;
        state.hw_counters = true;
        state.installed_ns = entry.installed_ns;
        state.adopted_ns = Some(now_ns);
        // Cumulative since the earlier run put them in: the earlier run
        // wrote no record of this flow, so all of it is this flow's.
        state.baseline = [rules[0].counters, rules[1].counters];
        let flow = self.table.get_mut(id).expect("just adopted");
        flow.sw = entry.sw;
        for dir in DIRS {
            let c = &rules[dir.index()].counters;
            flow.hw[dir.index()] = DirCounters { packets: c.packets, bytes: c.bytes };
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
        let keep = by_verdict || wanted == Some(entry.action);
        if !keep {
            self.request_removal(id, Then::Software);
        }
        self.journal(id);
        Ok(keep)
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
        })
    }
}
