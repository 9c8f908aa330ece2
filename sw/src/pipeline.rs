//! The order in which a batch of lookups hashes, prefetches and finds its
//! flows, so that their memory loads overlap.
//!
//! A lookup at a million flows waits on two cache misses in a row: the
//! index bucket, then the flow it points at. Doing each step for the whole
//! batch before the next ("group prefetching") leaves the CPU stalled at
//! the head of every step, since the first load of a step was issued only
//! a few instructions earlier. A software pipeline instead keeps each
//! packet `DISTANCE` steps behind the one before it: while packet `i` is
//! hashed and its bucket requested, packet `i - DISTANCE` has its flow
//! requested and packet `i - 2·DISTANCE` is looked up, by which time both
//! of its loads have had `DISTANCE` packets' worth of work to arrive.
//! `flowtable bench table` measures the two schedules side by side.

/// How many packets apart the three steps run. Eight keeps about sixteen
/// loads in flight, within what one core can track, and the pipeline's
/// fill and drain short against a batch of 32.
pub const DISTANCE: usize = 8;

/// Entries of the rings in which a caller keeps each packet's hash and
/// slot, indexed by the packet's position modulo `RING`: a packet's entry
/// lives from its hash to its lookup, `2 × DISTANCE` steps, so one
/// pipeline can run over a batch of any length (the shard's whole
/// dispatch batch, not 32 at a time) without its entries colliding.
pub const RING: usize = 32;
const _: () = assert!(2 * DISTANCE < RING && RING.is_power_of_two());

/// One step of the pipeline: each field, when set, is the packet (index
/// into the batch) that takes that step now. Callers do them in field
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Hash the key and prefetch its index bucket (`FlowTable::prefetch_index`).
    pub hash: Option<usize>,
    /// Prefetch the flow the bucket points at (`FlowTable::prefetch_flow`).
    pub prefetch: Option<usize>,
    /// Look the packet up (`FlowTable::lookup_or_insert_hashed`).
    pub lookup: Option<usize>,
}

/// The steps of a pipelined batch of `len` packets, `distance` apart.
#[derive(Debug, Clone)]
pub struct Schedule {
    len: usize,
    distance: usize,
    tick: usize,
}

impl Schedule {
    pub fn new(len: usize) -> Schedule {
        Schedule::with_distance(len, DISTANCE)
    }

    /// A schedule with another distance; 0 does every step of a packet at
    /// once (no overlap).
    pub fn with_distance(len: usize, distance: usize) -> Schedule {
        Schedule { len, distance, tick: 0 }
    }
}

impl Iterator for Schedule {
    type Item = Step;

    #[inline]
    fn next(&mut self) -> Option<Step> {
        let t = self.tick;
        if t >= self.len + 2 * self.distance {
            return None;
        }
        self.tick += 1;
        let at = |lag: usize| t.checked_sub(lag).filter(|&i| i < self.len);
        Some(Step { hash: at(0), prefetch: at(self.distance), lookup: at(2 * self.distance) })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.len + 2 * self.distance).saturating_sub(self.tick);
        (left, Some(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every packet takes each step exactly once, in order hash, prefetch,
    /// lookup, and packets are looked up in arrival order.
    fn check(len: usize, distance: usize) {
        let mut hashed = vec![None; len];
        let mut prefetched = vec![None; len];
        let mut looked_up = Vec::new();
        for (tick, s) in Schedule::with_distance(len, distance).enumerate() {
            if let Some(i) = s.hash {
                assert!(hashed[i].replace(tick).is_none(), "packet {i} hashed twice");
            }
            if let Some(i) = s.prefetch {
                assert!(hashed[i].is_some_and(|h| h <= tick), "packet {i} prefetched before hashing");
                assert!(prefetched[i].replace(tick).is_none(), "packet {i} prefetched twice");
            }
            if let Some(i) = s.lookup {
                assert!(prefetched[i].is_some_and(|p| p <= tick), "packet {i} looked up before its prefetch");
                looked_up.push(i);
            }
        }
        assert!(hashed.iter().all(Option::is_some));
        assert_eq!(looked_up, (0..len).collect::<Vec<_>>());
    }

    #[test]
    fn every_packet_takes_every_step_once_in_order() {
        for len in [0, 1, 2, 7, 8, 9, 16, 17, 32, 100] {
            for distance in [0, 1, 3, 8, 40] {
                check(len, distance);
            }
        }
    }

    #[test]
    fn steps_run_distance_apart() {
        let steps: Vec<Step> = Schedule::with_distance(32, 8).collect();
        assert_eq!(steps.len(), 48);
        assert_eq!(steps[20], Step { hash: Some(20), prefetch: Some(12), lookup: Some(4) });
        assert_eq!(steps[0], Step { hash: Some(0), prefetch: None, lookup: None });
        assert_eq!(steps[47], Step { hash: None, prefetch: None, lookup: Some(31) });
        assert_eq!(Schedule::new(32).size_hint(), (48, Some(48)));
    }
}
