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
//! So the pipeline moves in groups: while group `k` is hashed and its
//! buckets requested, group `k - 1` has its flows requested (its bucket
//! reads back to back, overlapping) and group `k - 2` is looked up. Groups
//! of `GROUP` are one candidate schedule, groups of 32 and the packet
//! pipeline 8 apart the others (`CANDIDATES`).
//!
//! Since no schedule is best everywhere, a batch's caller does not pick
//! one: its `Tuner` times the candidates against each other every few
//! thousand batches, on the machine and the table as they are then, and
//! runs the fastest until the next trial. Every schedule looks packets up
//! in arrival order, so which one runs changes the speed, never a count
//! or a record.

use core::ops::Range;

/// Packets a step takes at once. On the EPYC guest (`flowtable bench
/// table`, docs/PERFORMANCE.md, "The rows measured apart") four beat two,
/// three and eight at one million flows and the packet pipeline (one) at
/// ten million by a tenth; at one million the pipeline is within noise.
pub const GROUP: usize = 4;

/// The schedules a `Tuner` times against each other, as `(group, lag)`
/// for `Schedule::with_groups`: the table's groups of `GROUP`; groups of
/// 32 a group apart (group prefetching, pipelined from one group to the
/// next: as whole batches of 32 it ran 1.3x to 1.9x the groups of four on
/// an Intel guest, and 0.6x of them on the EPYC guest); the packet
/// pipeline 8 apart (docs/PERFORMANCE.md, "A schedule chosen by timing").
pub const CANDIDATES: [(usize, usize); 3] = [(GROUP, 1), (32, 1), (1, 8)];

/// Entries of the rings in which a caller keeps each packet's hash and
/// slot, indexed by the packet's position modulo `RING`: a packet's entry
/// lives from its hash to its lookup, `(2 × lag + 1) × group` packets, so
/// one pipeline of any candidate can run over a batch of any length (the
/// shard's whole dispatch batch, not 32 at a time) without its entries
/// colliding.
pub const RING: usize = 128;
const _: () = {
    assert!(RING.is_power_of_two());
    let mut i = 0;
    while i < CANDIDATES.len() {
        let (group, lag) = CANDIDATES[i];
        assert!((2 * lag + 1) * group <= RING && group > 0);
        i += 1;
    }
};

/// Batches run with the chosen schedule between two trials: about a
/// million packets at a worker's dispatch batch of 256, so a trial's
/// slower candidates cost well under a percent.
const BETWEEN_TRIALS: u32 = 4096;

/// Batches each candidate runs in a trial, in turn with the others so
/// that a change in the traffic or the machine during the trial falls on
/// all of them alike.
const TRIAL_ROUNDS: usize = 8;

/// Chooses the batch schedule by timing: after every `BETWEEN_TRIALS`
/// batches a trial runs each of `CANDIDATES` on `TRIAL_ROUNDS` batches,
/// in turn, and the one whose median batch took the fewest clock ticks a
/// packet runs until the next trial. The median, not the total: one
/// batch descheduled, or heavy with new flows, must not decide a trial.
/// One per caller of batches (a shard, a bench's rounds); the first
/// trial starts with the first batch.
#[derive(Debug, Clone)]
pub struct Tuner {
    chosen: usize,
    state: State,
    /// Trials each candidate won.
    wins: [u32; CANDIDATES.len()],
}

#[derive(Debug, Clone)]
enum State {
    /// Always `chosen`, never timed.
    Pinned,
    /// Batches left before the next trial.
    Waiting(u32),
    Trial(Trial),
}

#[derive(Debug, Clone, Default)]
struct Trial {
    /// Batches of the trial run so far; the next is candidate
    /// `run % CANDIDATES.len()`'s.
    run: usize,
    /// Each candidate's timed batches, in ticks a packet.
    per_packet: [[f64; TRIAL_ROUNDS]; CANDIDATES.len()],
    timed: [usize; CANDIDATES.len()],
}

/// One batch's schedule as `Tuner::pick` chose it, and the clock at its
/// start when the batch is timed. Hand it back to `Tuner::ran`.
#[derive(Debug, Clone, Copy)]
pub struct Pick {
    candidate: usize,
    started: Option<u64>,
}

impl Pick {
    /// The steps of the batch of `len` packets.
    #[inline]
    pub fn schedule(&self, len: usize) -> Schedule {
        let (group, lag) = CANDIDATES[self.candidate];
        Schedule::with_groups(len, group, lag)
    }
}

impl Default for Tuner {
    fn default() -> Tuner {
        Tuner::new()
    }
}

impl Tuner {
    pub fn new() -> Tuner {
        Tuner { chosen: 0, state: State::Trial(Trial::default()), wins: [0; CANDIDATES.len()] }
    }

    /// A tuner that always runs `schedule`, one of `CANDIDATES` (`None`
    /// if it is not one): to prove each candidate on its own.
    pub fn pinned(schedule: (usize, usize)) -> Option<Tuner> {
        let chosen = CANDIDATES.iter().position(|&c| c == schedule)?;
        Some(Tuner { chosen, state: State::Pinned, wins: [0; CANDIDATES.len()] })
    }

    /// The schedule of the next batch; the batch is timed from here when
    /// a trial is on.
    #[inline]
    pub fn pick(&mut self) -> Pick {
        match &mut self.state {
            State::Pinned => {}
            State::Waiting(1) => self.state = State::Trial(Trial::default()),
            State::Waiting(left) => *left = left.saturating_sub(1),
            State::Trial(t) => {
                return Pick { candidate: t.run % CANDIDATES.len(), started: Some(ticks()) };
            }
        }
        Pick { candidate: self.chosen, started: None }
    }

    /// The batch of `len` packets that `pick` was for has run.
    #[inline]
    pub fn ran(&mut self, pick: Pick, len: usize) {
        if let Some(started) = pick.started {
            self.record(pick.candidate, len, ticks().checked_sub(started));
        }
    }

    /// A timed batch of `len` packets took `took` ticks (`None`: the clock
    /// went back, as it may when a thread moves between cores whose
    /// counters differ; the batch counts as run, not timed).
    #[cold]
    fn record(&mut self, candidate: usize, len: usize, took: Option<u64>) {
        let State::Trial(t) = &mut self.state else { return };
        if let Some(took) = took.filter(|_| len > 0) {
            if let Some(slot) = t.per_packet[candidate].get_mut(t.timed[candidate]) {
                *slot = took as f64 / len as f64;
                t.timed[candidate] += 1;
            }
        }
        t.run += 1;
        if t.run < TRIAL_ROUNDS * CANDIDATES.len() {
            return;
        }
        // A candidate never timed is not chosen; a trial that timed none
        // keeps the choice.
        let mut median = |c: usize| {
            let times = &mut t.per_packet[c][..t.timed[c]];
            times.sort_by(f64::total_cmp);
            times.get(times.len().saturating_sub(1) / 2).copied()
        };
        let best = (0..CANDIDATES.len())
            .filter_map(|c| median(c).map(|m| (c, m)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(c, _)| c);
        if let Some(best) = best {
            self.chosen = best;
            self.wins[best] = self.wins[best].saturating_add(1);
        }
        self.state = State::Waiting(BETWEEN_TRIALS);
    }

    /// The schedule the batches outside trials run, as `(group, lag)`.
    pub fn chosen(&self) -> (usize, usize) {
        CANDIDATES[self.chosen]
    }

    /// How many trials each of `CANDIDATES` won, in their order.
    pub fn wins(&self) -> [u32; CANDIDATES.len()] {
        self.wins
    }
}

/// A clock that costs no system call: the time-stamp counter where there
/// is one (invariant on the CPUs this runs on; only differences within a
/// batch are used), else the monotonic clock in nanoseconds.
#[inline]
fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC exists on every x86_64 CPU and only reads a counter.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_rdtsc()
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        BASE.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
    }
}

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
    /// Groups of `GROUP`, each step one group behind
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
        // What a caller's ring of `RING` entries holds: each packet's entry
        // must still be its own at its prefetch and its lookup.
        let mut ring = [usize::MAX; RING];
        for (tick, s) in Schedule::with_groups(len, group, lag).enumerate() {
            for i in s.hash {
                assert!(hashed[i].replace(tick).is_none(), "packet {i} hashed twice");
                newest_hashed = newest_hashed.max(i);
                ring[i % RING] = i;
            }
            for i in s.prefetch {
                assert_eq!(ring[i % RING], i, "packet {i}'s ring entry overwritten before its prefetch");
                assert!(hashed[i].is_some_and(|h| h <= tick), "packet {i} prefetched before hashing");
                assert!(prefetched[i].replace(tick).is_none(), "packet {i} prefetched twice");
            }
            for i in s.lookup {
                assert_eq!(ring[i % RING], i, "packet {i}'s ring entry overwritten before its lookup");
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
    fn every_candidate_fits_the_ring_at_any_length() {
        for (group, lag) in CANDIDATES {
            for len in [1, 31, 32, 33, 64, 255, 256, 1000] {
                check(len, group, lag);
            }
        }
    }

    /// Runs a trial whose batches of 100 packets cost `cost(candidate)`
    /// ticks a packet, through the tuner's own bookkeeping.
    fn trial(t: &mut Tuner, cost: impl Fn(usize) -> u64) {
        for _ in 0..TRIAL_ROUNDS * CANDIDATES.len() {
            let pick = t.pick();
            assert!(pick.started.is_some(), "a trial's batches are timed");
            t.record(pick.candidate, 100, Some(100 * cost(pick.candidate)));
        }
    }

    #[test]
    fn the_tuner_runs_the_fastest_candidate_until_the_next_trial() {
        let mut t = Tuner::new();
        trial(&mut t, |c| if c == 1 { 2 } else { 5 });
        assert_eq!(t.chosen(), CANDIDATES[1]);
        for _ in 0..BETWEEN_TRIALS {
            let pick = t.pick();
            assert_eq!((pick.candidate, pick.started), (1, None), "between trials: the choice, untimed");
            t.ran(pick, 100);
        }
        // The machine or the table changed: the next trial finds it.
        trial(&mut t, |c| if c == 2 { 1 } else { 4 });
        assert_eq!(t.chosen(), CANDIDATES[2]);
        assert_eq!(t.wins(), [0, 1, 1]);
    }

    #[test]
    fn one_slow_batch_does_not_decide_a_trial() {
        let mut t = Tuner::new();
        let mut first_of_1 = true;
        for _ in 0..TRIAL_ROUNDS * CANDIDATES.len() {
            let pick = t.pick();
            // Candidate 1 is faster but for one batch descheduled for long:
            // by the total it would lose, by the median it wins.
            let per_packet = match pick.candidate {
                1 if std::mem::take(&mut first_of_1) => 1000,
                1 => 2,
                _ => 3,
            };
            t.record(pick.candidate, 100, Some(100 * per_packet));
        }
        assert_eq!(t.chosen(), CANDIDATES[1]);
    }

    #[test]
    fn a_pinned_tuner_never_tries_another() {
        assert!(Tuner::pinned((5, 5)).is_none());
        let mut t = Tuner::pinned(CANDIDATES[2]).unwrap();
        for _ in 0..3 * BETWEEN_TRIALS {
            let pick = t.pick();
            assert_eq!((pick.candidate, pick.started), (2, None));
            t.ran(pick, 32);
        }
    }

    #[test]
    fn a_candidate_never_timed_is_not_chosen() {
        let mut t = Tuner::new();
        for _ in 0..TRIAL_ROUNDS * CANDIDATES.len() {
            let pick = t.pick();
            // Candidate 0's clock always went back; the others are slow.
            let took = (pick.candidate != 0).then_some(1000 * (pick.candidate as u64 + 1));
            t.record(pick.candidate, 10, took);
        }
        assert_eq!(t.chosen(), CANDIDATES[1]);
    }

    /// On the real clock: batches of the other candidates doing much more
    /// work lose the trial.
    #[test]
    fn the_tuner_times_batches_on_the_real_clock() {
        let mut t = Tuner::new();
        let mut sink = 0u64;
        for _ in 0..TRIAL_ROUNDS * CANDIDATES.len() {
            let pick = t.pick();
            let work = if pick.candidate == 2 { 10 } else { 20_000 };
            for step in pick.schedule(64) {
                for i in step.lookup {
                    for k in 0..work {
                        sink = std::hint::black_box(sink.wrapping_add(k ^ i as u64));
                    }
                }
            }
            t.ran(pick, 64);
        }
        assert_eq!(t.chosen(), CANDIDATES[2], "sink {sink}");
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
