//! Current rates: what a flow carries now, beside its mean since it began.
//!
//! Nothing here runs on the packet path. The part software counts is
//! sampled by the poll: each poll walks the slice of the table's slots
//! that falls due, so every flow is sampled once per `SAMPLE_NS`, and the
//! rate of its last whole window (between its two latest samples) is kept
//! in a side array by slot, as `Framing` is. The part the NIC or the
//! kernel's rule counted comes in reads, one per counter poll
//! (`offload.poll_interval_ms`): its rate is the last read's delta over
//! the time since the read before. A flow younger than its first window
//! has its rate since it began.
//!
//! Off until `enable_rates` (the daemon turns it on; replay and the
//! benchmarks, which never show a current rate, don't pay for the walk).

use super::*;

/// The window over which software-counted packets make a current rate.
pub const SAMPLE_NS: u64 = 1_000_000_000;

/// A flow's latest sample and the rate of the window that ended there.
#[derive(Debug, Clone, Copy, Default)]
struct Sampled {
    /// The sampled flow's generation; a slot reused is a new flow.
    generation: u16,
    at_ns: u64,
    sw: DirCounters,
    /// Rate over the window that ended at `at_ns` (packets, bytes per
    /// second); `None` until a first window of at least half a sample
    /// has ended.
    rate: Option<(f32, f32)>,
}

#[derive(Default)]
pub(super) struct RateSampler {
    on: bool,
    /// The next slot to sample.
    cursor: u32,
    last_poll_ns: u64,
    credit: u128,
    slots: Vec<Sampled>,
}

/// A current rate: packets and bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rate {
    pub packets_per_s: f64,
    pub bytes_per_s: f64,
}

impl Shard {
    /// Starts sampling flows for their current rates.
    pub fn enable_rates(&mut self) {
        if !self.rates.on {
            self.rates.on = true;
            // Reserved, not touched: pages are committed as slots fill.
            self.rates.slots.reserve_exact(self.table.capacity());
        }
    }

    /// The poll's share of the walk: the slots due since the last poll.
    pub(super) fn sample_rates(&mut self, now: u64) {
        let r = &mut self.rates;
        let slots = self.table.slots();
        if !r.on || slots == 0 {
            return;
        }
        if r.slots.len() < slots {
            r.slots.resize(slots, Sampled::default());
        }
        let elapsed = now.saturating_sub(r.last_poll_ns);
        r.last_poll_ns = now;
        // Slots times nanoseconds: a slot falls due per SAMPLE_NS of it,
        // the remainder carried, so a small table is not sampled at
        // every poll (which would make its window one poll long).
        r.credit = (r.credit + slots as u128 * elapsed as u128).min(slots as u128 * SAMPLE_NS as u128);
        let due = (r.credit / SAMPLE_NS as u128) as usize;
        r.credit %= SAMPLE_NS as u128;
        for _ in 0..due {
            let index = r.cursor;
            r.cursor = if index as usize + 1 >= slots { 0 } else { index + 1 };
            let Some((id, flow)) = self.table.at_slot(index) else { continue };
            let s = &mut r.slots[index as usize];
            let sw = DirCounters {
                packets: flow.sw[0].packets + flow.sw[1].packets,
                bytes: flow.sw[0].bytes + flow.sw[1].bytes,
            };
            let (since, before) = if s.generation == id.generation() && s.at_ns != 0 {
                (s.at_ns, s.sw)
            } else {
                (self.table.first_ns(id), DirCounters::default())
            };
            let window = now.saturating_sub(since);
            let dt = window.max(1) as f64 / 1e9;
            // A first window much shorter than a sample (a flow that began
            // just before its slot's turn) would make one packet a burst:
            // its rate stays the one since it began until a whole window ends.
            let rate = (window >= SAMPLE_NS / 2).then(|| {
                (
                    (sw.packets.saturating_sub(before.packets) as f64 / dt) as f32,
                    (sw.bytes.saturating_sub(before.bytes) as f64 / dt) as f32,
                )
            });
            *s = Sampled { generation: id.generation(), at_ns: now, sw, rate };
        }
    }

    /// A flow's current rate: the software part's last window (since the
    /// flow began, if none ended yet) plus the rule counters' last read.
    /// `None` while rates are not sampled.
    pub fn current_rate(&self, id: FlowId) -> Option<Rate> {
        if !self.rates.on {
            return None;
        }
        let flow = self.table.get(id)?;
        let sampled = self.rates.slots.get(id.index() as usize).filter(|s| s.generation == id.generation());
        let mut rate = match sampled.and_then(|s| s.rate) {
            Some((p, b)) => Rate { packets_per_s: f64::from(p), bytes_per_s: f64::from(b) },
            None => {
                let dt = self.now_ns.saturating_sub(self.table.first_ns(id)).max(1_000_000) as f64 / 1e9;
                let sw = DirCounters {
                    packets: flow.sw[0].packets + flow.sw[1].packets,
                    bytes: flow.sw[0].bytes + flow.sw[1].bytes,
                };
                Rate { packets_per_s: sw.packets as f64 / dt, bytes_per_s: sw.bytes as f64 / dt }
            }
        };
        if let Some(state) = self.offloads.get(&id) {
            for d in 0..2 {
                // A rule gone counts nothing now.
                let interval = state.read_interval_ns[d];
                if state.placement[d].is_some() && interval > 0 {
                    let secs = interval as f64 / 1e9;
                    rate.packets_per_s += state.last_read[d].packets as f64 / secs;
                    rate.bytes_per_s += state.last_read[d].bytes as f64 / secs;
                }
            }
        }
        Some(rate)
    }
}
