//! The active timeout: a flow that lasts longer than it gives an interim
//! record every period, carrying what it did since its previous record
//! (end reason `active`, kind `interim`), as NetFlow and IPFIX exporters
//! do, so a collector sees long flows while they last. The final record
//! carries the rest: over all of a flow's records, packets and bytes add
//! up to the flow's, exactly.
//!
//! Flows are filed in a timer wheel of their own when they are created
//! (off, nothing is filed); the wheel is lazy like the idle one, so the
//! packet path only pushes an entry per new flow.

use super::*;
use flowtable_sw::timer::{TimerEntry, TimerWheel};

/// Ticks of the active timeout's wheel; its period is rounded to them.
const TICK_NS: u64 = 100_000_000;
const SLOTS: usize = 1024;

/// What a flow's interim records have carried so far.
#[derive(Debug, Clone, Copy)]
struct Reported {
    orig: DirRecord,
    reply: DirRecord,
}

pub(super) struct ActiveTimeout {
    period_ns: u64,
    wheel: Option<TimerWheel>,
    reported: flowtable_sw::table::FlowMap<Reported>,
}

impl ActiveTimeout {
    pub(super) fn new(period_ns: u64) -> ActiveTimeout {
        ActiveTimeout {
            period_ns,
            wheel: (period_ns > 0).then(|| TimerWheel::new(TICK_NS, SLOTS)),
            reported: Default::default(),
        }
    }

    /// A new flow: its first interim record is due a period from now.
    #[inline]
    pub(super) fn start(&mut self, id: FlowId, now_ns: u64) {
        if let Some(w) = &mut self.wheel {
            w.schedule(TimerEntry { index: id.index(), generation: id.generation() }, now_ns + self.period_ns);
        }
    }

    /// A flow taken over from an earlier run, whose interim records
    /// carried `reported` (orig, reply) so far.
    pub(super) fn resume(&mut self, id: FlowId, reported: [DirRecord; 2], now_ns: u64) {
        // Kept even with the active timeout off in this run: the final
        // record must still leave out what the earlier run's carried.
        self.reported.insert(id, Reported { orig: reported[0], reply: reported[1] });
        self.start(id, now_ns);
    }

    /// What a flow's interim records carried so far (orig, reply).
    pub(super) fn reported(&self, id: FlowId) -> Option<[DirRecord; 2]> {
        self.reported.get(&id).map(|r| [r.orig, r.reply])
    }

    /// A flow's final record: what its interim records carried is taken
    /// out, so it carries the rest.
    pub(super) fn finish(&mut self, id: FlowId, record: &mut FlowRecord) {
        if self.reported.is_empty() {
            return;
        }
        if let Some(r) = self.reported.remove(&id) {
            record.orig = record.orig.since(&r.orig);
            record.reply = record.reply.since(&r.reply);
        }
    }
}

impl Shard {
    /// Interim records of the flows whose period came round.
    pub(super) fn report_active(&mut self, now: u64) {
        let Some(mut wheel) = self.active.wheel.take() else { return };
        let shard = self.index();
        let period = self.active.period_ns;
        let mut due = Vec::new();
        let table = &self.table;
        wheel.advance(now, |e| {
            let id = FlowId::new(e.index, e.generation).with_shard(shard);
            // A flow gone (its slot free or reused) lapses: its final
            // record took what it had reported.
            table.get(id)?;
            due.push(id);
            Some(now + period)
        });
        self.active.wheel = Some(wheel);
        for id in due {
            let Some(flow) = self.table.get(id) else { continue };
            let mut record = self.build_record(id, flow, self.offloads.get(&id), None, EndReason::Active);
            record.kind = RecordKind::Interim;
            let total = Reported { orig: record.orig, reply: record.reply };
            if let Some(before) = self.active.reported.get(&id) {
                record.orig = record.orig.since(&before.orig);
                record.reply = record.reply.since(&before.reply);
            }
            if record.packets() == 0 {
                continue;
            }
            self.active.reported.insert(id, total);
            self.stats.interim_records += 1;
            self.records.push(record);
            // A restart that takes the flow over must not count again
            // what this record carried.
            if self.table.get(id).is_some_and(|f| f.stage() == Stage::Offloaded) {
                self.journal(id);
            }
        }
    }
}
