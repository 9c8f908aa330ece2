//! A lazy hashed timer wheel for flow expiry.
//!
//! Flows are not moved when their packets arrive: an entry fires at the
//! deadline it was filed under, the owner checks the flow's real deadline
//! and files it again if it moved. Each flow is thus touched once per
//! timeout period at most, O(1) amortized, and the packet path never
//! touches the wheel. Deadlines beyond one turn of the wheel are found
//! again on a later turn by the same check.
//!
//! Written by hand because the timer crates we looked at key timers by
//! handle and cancel eagerly, which would put work on the packet path.

/// An entry: a flow slot index and the generation it had when filed.
/// Packed to 6 bytes, not padded to 8: a wheel holds one or more a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, packed(2))]
pub struct TimerEntry {
    pub index: u32,
    pub generation: u16,
}

const _: () = assert!(core::mem::size_of::<TimerEntry>() == 6);

pub struct TimerWheel {
    slots: Vec<Vec<TimerEntry>>,
    tick_ns: u64,
    /// The next tick to be processed.
    cursor: u64,
    started: bool,
    len: usize,
    scratch: Vec<TimerEntry>,
}

impl TimerWheel {
    /// `slots` is rounded up to a power of two.
    pub fn new(tick_ns: u64, slots: usize) -> TimerWheel {
        let n = slots.max(2).next_power_of_two();
        TimerWheel {
            slots: (0..n).map(|_| Vec::new()).collect(),
            tick_ns: tick_ns.max(1),
            cursor: 0,
            started: false,
            len: 0,
            scratch: Vec::new(),
        }
    }

    pub fn tick_ns(&self) -> u64 {
        self.tick_ns
    }

    /// Entries filed, live or stale.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn tick_of(&self, t_ns: u64) -> u64 {
        t_ns / self.tick_ns
    }

    /// Files an entry to fire at or after `deadline_ns` (never before the
    /// cursor, so an overdue entry fires on the next advance).
    pub fn schedule(&mut self, entry: TimerEntry, deadline_ns: u64) {
        let tick = self.tick_of(deadline_ns).max(self.cursor);
        let mask = self.slots.len() as u64 - 1;
        self.slots[(tick & mask) as usize].push(entry);
        self.len += 1;
    }

    /// Moves time forward to `now_ns`, handing every entry whose slot has
    /// come round to `fire`. `fire` returns `Some(deadline)` to file the
    /// entry again, `None` to drop it.
    pub fn advance(&mut self, now_ns: u64, mut fire: impl FnMut(TimerEntry) -> Option<u64>) {
        let now_tick = self.tick_of(now_ns);
        if !self.started {
            self.started = true;
            self.cursor = self.cursor.min(now_tick);
        }
        if now_tick < self.cursor {
            return;
        }
        let n = self.slots.len() as u64;
        // After a long gap every slot is visited once: each entry is checked
        // against its real deadline, so visiting a slot more often adds nothing.
        let first = if now_tick - self.cursor >= n { now_tick + 1 - n } else { self.cursor };
        let mut scratch = core::mem::take(&mut self.scratch);
        for tick in first..=now_tick {
            let slot = (tick & (n - 1)) as usize;
            if self.slots[slot].is_empty() {
                continue;
            }
            core::mem::swap(&mut scratch, &mut self.slots[slot]);
            self.len -= scratch.len();
            // Refiled entries land at a tick after `now_tick`.
            self.cursor = now_tick + 1;
            for e in scratch.drain(..) {
                if let Some(deadline) = fire(e) {
                    self.schedule(e, deadline);
                }
            }
        }
        self.cursor = now_tick + 1;
        self.scratch = scratch;
    }

    /// Visits entries in deadline order from the cursor on, without
    /// removing them, until `visit` returns true (used to pick an eviction
    /// victim: the flow nearest to expiry). Bounded by `limit` entries.
    pub fn find_next(&self, limit: usize, mut visit: impl FnMut(TimerEntry) -> bool) -> Option<TimerEntry> {
        let n = self.slots.len() as u64;
        let mut seen = 0;
        for tick in self.cursor..self.cursor + n {
            for e in &self.slots[(tick & (n - 1)) as usize] {
                if visit(*e) {
                    return Some(*e);
                }
                seen += 1;
                if seen >= limit {
                    return None;
                }
            }
        }
        None
    }

    /// Heap bytes held by the wheel.
    pub fn heap_bytes(&self) -> usize {
        self.slots.iter().map(|s| s.capacity()).sum::<usize>() * core::mem::size_of::<TimerEntry>()
            + self.slots.capacity() * core::mem::size_of::<Vec<TimerEntry>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn entry(i: u32) -> TimerEntry {
        TimerEntry { index: i, generation: 0 }
    }

    #[test]
    fn fires_at_deadline_not_before() {
        let mut w = TimerWheel::new(MS, 64);
        w.advance(0, |_| None);
        w.schedule(entry(1), 10 * MS);
        let mut fired = vec![];
        w.advance(9 * MS, |e| {
            fired.push(e.index);
            None
        });
        assert!(fired.is_empty());
        w.advance(10 * MS, |e| {
            fired.push(e.index);
            None
        });
        assert_eq!(fired, vec![1]);
        assert!(w.is_empty());
    }

    #[test]
    fn deadline_beyond_one_turn_is_refiled_until_due() {
        let mut w = TimerWheel::new(MS, 8);
        w.advance(0, |_| None);
        let deadline = 100 * MS;
        w.schedule(entry(7), deadline);
        let mut visits = 0;
        let mut fired_at = None;
        for t in 1..=120 {
            let now = t * MS;
            w.advance(now, |_| {
                visits += 1;
                if now >= deadline {
                    fired_at = Some(now);
                    None
                } else {
                    Some(deadline)
                }
            });
        }
        assert_eq!(fired_at, Some(deadline));
        // One visit per turn of 8 ticks, not one per tick.
        assert!(visits <= 100 / 8 + 2, "visited {visits} times");
    }

    #[test]
    fn long_gap_visits_each_entry_once() {
        let mut w = TimerWheel::new(MS, 16);
        w.advance(0, |_| None);
        for i in 0..100 {
            w.schedule(entry(i), (i as u64 % 16) * MS);
        }
        let mut fired = 0;
        w.advance(1_000_000 * MS, |_| {
            fired += 1;
            None
        });
        assert_eq!(fired, 100);
    }

    #[test]
    fn overdue_schedule_fires_on_next_advance() {
        let mut w = TimerWheel::new(MS, 16);
        w.advance(50 * MS, |_| None);
        w.schedule(entry(3), 10 * MS);
        let mut fired = vec![];
        w.advance(51 * MS, |e| {
            fired.push(e.index);
            None
        });
        assert_eq!(fired, vec![3]);
    }
}
