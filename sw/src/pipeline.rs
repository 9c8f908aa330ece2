//! The order in which a batch of lookups hashes, prefetches and finds its
//! flows, so that their memory loads overlap.
//!
//! A lookup at a million flows waits on two cache misses in a row: the
//! index bucket, then the flow it points at. Doing each step for the whole
//! batch before the next ("group prefetching") leaves the CPU stalled at
//! the head of every step, since the first load of a step was issued only
//! a few instructions earlier. A software pipeline of single packets (each
//! step `d` packets behind the one before) fixes that, but runs a step
//! that reads memory (the flow prefetch reads the bucket) between two long
//! lookups: when that read has not arrived, the core's window fills with
//! the next lookup's work before the following read can start, and the
//! reads no longer overlap. At ten million flows, where each load also
//! misses the TLB, that cost a tenth of the rate on one machine measured
//! (docs/PERFORMANCE.md, "The rows measured apart"); at one million the
//! two are within noise, and on another machine whole-batch groups were
//! faster still: no schedule is best everywhere.
//!
//! So the pipeline moves in groups of `GROUP` packets: while group `k` is
//! hashed and its buckets requested, group `k - 1` has its flows requested
//! (its bucket reads back to back, overlapping) and group `k - 2` is
//! looked up. `flowtable bench table` measures it beside the two other
//! schedules (the packet pipeline 8 apart and the whole-batch groups).

use core::ops::Range;

/// Packets a step takes at once. On the EPYC guest (`flowtable bench
/// table`, docs/PERFORMANCE.md, "The rows measured apart") four beat two,
/// three and eight at one million flows and the packet pipeline (one) at
/// ten million by a tenth; at one million the pipeline is within noise.
pub const GROUP: usize = 4;

/// Entries of the rings in which a caller keeps each packet's hash and
/// slot, indexed by the packet's position modulo `RING`: a packet's entry
/// lives from its hash to its lookup, three groups, so one pipeline can
/// run over a batch of any length (the shard's whole dispatch batch, not
/// 32 at a time) without its entries colliding.
pub const RING: usize = 32;
const _: () = assert!(3 * GROUP <= RING && RING.is_power_of_two());

/// One step of the pipeline: each field is the packets (indexes into the
/// batch) that take that step now, perhaps none. Callers do them in field
/// order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Hash the key and prefetch its index bucket (`FlowTable::prefetch_index`).
    pub hash: Range<usize>,
    /// Prefetch the flow the bucket points at (`FlowTable::prefetch_flow`).
    pub prefetch: Range<usize>,
    /// Look the packet up (`FlowTable::lookup_or_insert_probed`).
    pub lookup: Range<usize>,
}

/// The steps of a pipelined batch of `len` packets.
#[derive(Debug, Clone)]
pub struct Schedule {
    len: usize,
    group: usize,
    lag: usize,
    tick: usize,
}

impl Schedule {
    /// The table's schedule: groups of `GROUP`, each step one group behind
    /// the one before.
    pub fn new(len: usize) -> Schedule {
        Schedule::with_groups(len, GROUP, 1)
    }

    /// Groups of `group` packets (at least one), each step `lag` groups
    /// behind the one before. Groups of 1 with a lag of `d` are the packet
    /// pipeline `d` apart; one group of the whole batch with a lag of 1 is
    /// group prefetching; a lag of 0 does every step of a group at once.
    /// A packet's hash lives `(2 × lag + 1) × group` packets.
    pub fn with_groups(len: usize, group: usize, lag: usize) -> Schedule {
        Schedule { len, group: group.max(1), lag, tick: 0 }
    }

    fn groups(&self) -> usize {
        self.len.div_ceil(self.group)
    }
}

impl Iterator for Schedule {
    type Item = Step;

    #[inline]
    fn next(&mut self) -> Option<Step> {
        let t = self.tick;
        if t >= self.groups() + 2 * self.lag {
            return None;
        }
        self.tick += 1;
        let at = |lag: usize| match t.checked_sub(lag) {
            Some(k) if k < self.groups() => k * self.group..((k + 1) * self.group).min(self.len),
            _ => 0..0,
        };
        Some(Step { hash: at(0), prefetch: at(self.lag), lookup: at(2 * self.lag) })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.groups() + 2 * self.lag).saturating_sub(self.tick);
        (left, Some(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every packet takes each step exactly once, in order hash, prefetch,
    /// lookup, and packets are looked up in arrival order.
    fn check(len: usize, group: usize, lag: usize) {
        let mut hashed = vec![None; len];
        let mut prefetched = vec![None; len];
        let mut looked_up = Vec::new();
        let mut newest_hashed = 0;
        for (tick, s) in Schedule::with_groups(len, group, lag).enumerate() {
            for i in s.hash {
                assert!(hashed[i].replace(tick).is_none(), "packet {i} hashed twice");
                newest_hashed = newest_hashed.max(i);
            }
            for i in s.prefetch {
                assert!(hashed[i].is_some_and(|h| h <= tick), "packet {i} prefetched before hashing");
                assert!(prefetched[i].replace(tick).is_none(), "packet {i} prefetched twice");
            }
            for i in s.lookup {
                assert!(prefetched[i].is_some_and(|p| p <= tick), "packet {i} looked up before its prefetch");
                // The packets hashed since i, i included, fit the span a
                // ring must hold.
                let span = (2 * lag + 1) * group.max(1);
                assert!(newest_hashed - i < span, "packet {i} looked up after {newest_hashed} was hashed");
                looked_up.push(i);
            }
        }
        assert!(hashed.iter().all(Option::is_some));
        assert_eq!(looked_up, (0..len).collect::<Vec<_>>());
    }

    #[test]
    fn every_packet_takes_every_step_once_in_order() {
        for len in [0, 1, 2, 7, 8, 9, 16, 17, 32, 100, 256] {
            for (group, lag) in [(1, 0), (1, 1), (1, 3), (1, 8), (1, 40), (4, 1), (4, 2), (3, 1), (32, 1), (0, 1)] {
                check(len, group, lag);
            }
        }
    }

    #[test]
    fn steps_run_a_group_apart() {
        let steps: Vec<Step> = Schedule::new(30).collect();
        // Eight groups (the last of two packets), two more ticks to drain.
        assert_eq!(steps.len(), 10);
        assert_eq!(steps[0], Step { hash: 0..4, prefetch: 0..0, lookup: 0..0 });
        assert_eq!(steps[5], Step { hash: 20..24, prefetch: 16..20, lookup: 12..16 });
        assert_eq!(steps[8], Step { hash: 0..0, prefetch: 28..30, lookup: 24..28 });
        assert_eq!(steps[9], Step { hash: 0..0, prefetch: 0..0, lookup: 28..30 });
        assert_eq!(Schedule::new(32).size_hint(), (10, Some(10)));
    }

    #[test]
    fn packet_pipeline_runs_distance_apart() {
        let steps: Vec<Step> = Schedule::with_groups(32, 1, 8).collect();
        assert_eq!(steps.len(), 48);
        assert_eq!(steps[20], Step { hash: 20..21, prefetch: 12..13, lookup: 4..5 });
        assert_eq!(steps[47], Step { hash: 0..0, prefetch: 0..0, lookup: 31..32 });
    }
}
