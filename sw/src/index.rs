//! The flow index: from a key's hash to its slot in the flow vector.
//!
//! Cache-line buckets of eight (tag, slot) pairs; each key may live in one
//! of two buckets (the second derived from the first and the tag, so an
//! entry can be moved between its two without its key). A lookup reads at
//! most two lines, and the lines are known from the hash alone, so a batch
//! of lookups can prefetch them all before reading any: the memory
//! latencies overlap instead of adding up. That is the reason this is
//! written here rather than taken from `hashbrown`, which has no prefetch
//! and keeps its tags and entries in separate lines.

/// Entries per bucket: 8 × (4-byte tag + 4-byte slot) = one 64-byte line.
const WAYS: usize = 8;
/// Tag of an empty entry; real tags have their low bit set.
const EMPTY: u32 = 0;
/// The share of its ways the index fills at its configured capacity.
/// Two-choice buckets of eight take keys to well past 90% with short
/// displacement paths, but each step of load puts more entries outside
/// their primary bucket (the lookup's one prefetched line): about 2% at
/// 60%, 6% at 75%, where batched lookups measured 14% slower. At 60% the
/// index costs 13.3 bytes a flow, against the 16 to 32 of the half-full
/// power-of-two table it replaced, at the same lookup rate.
const LOAD_NUMERATOR: usize = 3;
const LOAD_DENOMINATOR: usize = 5;
/// Most buckets an insert searches for a free way when both of its own
/// are full: a breadth-first search over displacement paths (cuckoo
/// hashing's), ended at the first free way found.
const SEARCH_NODES: usize = 256;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Bucket {
    tags: [u32; WAYS],
    slots: [u32; WAYS],
}

impl Bucket {
    /// The ways holding `tag`, one bit each: compared all at once (two
    /// vector compares, two packs and a mask), so which way
    /// matches is data, not a branch. A loop stopping at the matching way
    /// would branch on a random way per lookup, mispredicted most times
    /// and only resolved when the bucket arrives from memory; until then
    /// the processor can't start the next packet's loads, and lookups one
    /// at a time stop overlapping.
    #[inline]
    fn matching(&self, tag: u32) -> u32 {
        #[cfg(target_arch = "x86_64")]
        {
            // Written with SSE2 (every x86-64 has it) because the compiler
            // makes the portable loop below into some 30 instructions;
            // these are 9: two compares, two packs, one mask.
            use core::arch::x86_64::{
                __m128i, _mm_cmpeq_epi32, _mm_load_si128, _mm_movemask_epi8, _mm_packs_epi16, _mm_packs_epi32,
                _mm_set1_epi32,
            };
            let tags = self.tags.as_ptr() as *const __m128i;
            // SAFETY: SSE2 is part of the x86-64 baseline, so these instructions exist on every machine this
            // code is built for; a Bucket is 64-byte aligned and `tags` its first 32 bytes, so both 16-byte loads
            // are aligned and within `self.tags`.
            unsafe {
                let wanted = _mm_set1_epi32(tag as i32);
                let (low, high) = (_mm_load_si128(tags), _mm_load_si128(tags.add(1)));
                let words = _mm_packs_epi32(_mm_cmpeq_epi32(low, wanted), _mm_cmpeq_epi32(high, wanted));
                (_mm_movemask_epi8(_mm_packs_epi16(words, words)) & 0xff) as u32
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let mut hits = 0;
            for (i, &t) in self.tags.iter().enumerate() {
                hits |= u32::from(t == tag) << i;
            }
            hits
        }
    }
}

const EMPTY_BUCKET: Bucket = Bucket { tags: [EMPTY; WAYS], slots: [0; WAYS] };

pub struct FlowIndex {
    buckets: Vec<Bucket>,
    /// `buckets.len()`: any count, not only powers of two, so the index is
    /// sized to its capacity rather than rounded up to twice it.
    count: u64,
    len: usize,
}

#[inline]
fn tag_of(hash: u64) -> u32 {
    (hash >> 32) as u32 | 1
}

/// `x` taken to `0..n` by multiplying rather than dividing (Lemire's
/// fast range reduction): a multiply where `%` would be a 20-to-40-cycle
/// division on every lookup.
#[inline]
fn reduce(x: u32, n: u64) -> usize {
    ((x as u64 * n) >> 32) as usize
}

impl FlowIndex {
    /// An index for up to `capacity` entries, 60% of its ways full at
    /// capacity.
    pub fn with_capacity(capacity: usize) -> FlowIndex {
        let buckets = (capacity * LOAD_DENOMINATOR).div_ceil(WAYS * LOAD_NUMERATOR).max(2);
        assert!(buckets as u64 <= u32::MAX as u64, "flow index of {buckets} buckets: more than 2^32");
        let mut v = Vec::with_capacity(buckets);
        crate::memory::advise_huge_pages(v.as_mut_ptr() as *mut u8, buckets * core::mem::size_of::<Bucket>());
        v.resize(buckets, EMPTY_BUCKET);
        FlowIndex { buckets: v, count: buckets as u64, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * core::mem::size_of::<Bucket>()
    }

    /// The low half of the hash picks the primary bucket, the high half
    /// is the tag, so the two are independent.
    #[inline]
    fn primary(&self, hash: u64) -> usize {
        reduce(hash as u32, self.count)
    }

    /// The other bucket of an entry with `tag` in `bucket`: `(h - bucket)
    /// mod count` for an `h` drawn from the tag, so taking it twice comes
    /// back (an involution) and an entry moves between its two buckets
    /// without its key, at any bucket count. Both operands are below
    /// `count`, so the modulo is one conditional add.
    #[inline]
    fn alternate(&self, bucket: usize, tag: u32) -> usize {
        let h = reduce(tag.wrapping_mul(0x9E37_79B1), self.count);
        if h >= bucket {
            h - bucket
        } else {
            h + self.count as usize - bucket
        }
    }

    /// Starts loading the bucket `hash` most likely lives in. Inserts fill
    /// the primary bucket first, and at 60% load a primary
    /// overflows seldom (about 2% of entries live in their alternate at
    /// capacity: `at_capacity_few_entries_live_in_their_alternate_bucket`),
    /// so loading the alternate too would double the memory traffic of
    /// every lookup to save a miss on a few.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        prefetch(&self.buckets[self.primary(hash)]);
    }

    /// The first slot of the primary bucket (the one `prefetch` loaded)
    /// whose tag matches, for prefetching the flow, without checking the
    /// key. When none does, the entry is in the alternate bucket or
    /// nowhere (a new flow): that bucket's load is started, not waited
    /// for, so the lookup that follows finds it on its way.
    #[inline]
    pub fn probable(&self, hash: u64) -> Option<u32> {
        let tag = tag_of(hash);
        let b1 = self.primary(hash);
        let bucket = &self.buckets[b1];
        let hits = bucket.matching(tag);
        if hits != 0 {
            return Some(bucket.slots[hits.trailing_zeros() as usize]);
        }
        prefetch(&self.buckets[self.alternate(b1, tag)]);
        None
    }

    /// The slot of the entry with `hash` for which `is_it` holds.
    #[inline]
    pub fn find(&self, hash: u64, mut is_it: impl FnMut(u32) -> bool) -> Option<u32> {
        let tag = tag_of(hash);
        let b1 = self.primary(hash);
        for b in [b1, self.alternate(b1, tag)] {
            let bucket = &self.buckets[b];
            let mut hits = bucket.matching(tag);
            while hits != 0 {
                let slot = bucket.slots[hits.trailing_zeros() as usize];
                if is_it(slot) {
                    return Some(slot);
                }
                hits &= hits - 1;
            }
        }
        None
    }

    #[inline]
    fn free_way(&self, b: usize) -> Option<usize> {
        self.buckets[b].tags.iter().position(|&t| t == EMPTY)
    }

    /// Adds an entry. Fails only when no displacement path within
    /// `SEARCH_NODES` buckets ends at a free way, which below full load
    /// doesn't happen in practice; the caller then treats the table as
    /// full.
    #[inline]
    pub fn insert(&mut self, hash: u64, slot: u32) -> bool {
        let tag = tag_of(hash);
        let b1 = self.primary(hash);
        let b2 = self.alternate(b1, tag);
        for b in [b1, b2] {
            if let Some(i) = self.free_way(b) {
                self.put(b, i, tag, slot);
                return true;
            }
        }
        self.insert_displacing(b1, b2, tag, slot)
    }

    /// Both buckets full: finds the shortest chain of entries, each moved
    /// to its other bucket, that frees a way in one of them (breadth
    /// first, so every bucket is searched before any is moved and a failed
    /// search moves nothing), then moves them from the end of the chain.
    /// Off the packet path's common case: a fixed array on the stack, no
    /// allocation.
    #[cold]
    fn insert_displacing(&mut self, b1: usize, b2: usize, tag: u32, slot: u32) -> bool {
        // A node: a bucket, and how it was reached (the parent node and the
        // way in the parent whose entry would move into this bucket).
        #[derive(Clone, Copy)]
        struct Node {
            bucket: u32,
            parent: u16,
            way: u8,
        }
        const ROOT: u16 = u16::MAX;
        let mut nodes = [Node { bucket: 0, parent: ROOT, way: 0 }; SEARCH_NODES];
        nodes[0] = Node { bucket: b1 as u32, parent: ROOT, way: 0 };
        nodes[1] = Node { bucket: b2 as u32, parent: ROOT, way: 0 };
        let (mut head, mut tail) = (0usize, 2usize);
        while head < tail {
            let from = nodes[head];
            let b = from.bucket as usize;
            for way in 0..WAYS {
                let alt = self.alternate(b, self.buckets[b].tags[way]);
                if alt == b {
                    continue;
                }
                if let Some(free) = self.free_way(alt) {
                    // Move along the chain: this way's entry into `alt`,
                    // then each parent's entry into the way just emptied.
                    let (mut dst_bucket, mut dst_way) = (alt, free);
                    let (mut at, mut at_way) = (head, way);
                    loop {
                        let src = nodes[at].bucket as usize;
                        self.buckets[dst_bucket].tags[dst_way] = self.buckets[src].tags[at_way];
                        self.buckets[dst_bucket].slots[dst_way] = self.buckets[src].slots[at_way];
                        (dst_bucket, dst_way) = (src, at_way);
                        if nodes[at].parent == ROOT {
                            break;
                        }
                        (at, at_way) = (nodes[at].parent as usize, nodes[at].way as usize);
                    }
                    self.put(dst_bucket, dst_way, tag, slot);
                    return true;
                }
                // A chain through one bucket twice would move an entry that
                // an earlier move of the same chain put there.
                let mut on_chain = false;
                let mut at = head as u16;
                while at != ROOT {
                    on_chain |= nodes[at as usize].bucket as usize == alt;
                    at = nodes[at as usize].parent;
                }
                if !on_chain && tail < SEARCH_NODES {
                    nodes[tail] = Node { bucket: alt as u32, parent: head as u16, way: way as u8 };
                    tail += 1;
                }
            }
            head += 1;
        }
        false
    }

    #[inline]
    fn put(&mut self, b: usize, i: usize, tag: u32, slot: u32) {
        self.buckets[b].tags[i] = tag;
        self.buckets[b].slots[i] = slot;
        self.len += 1;
    }

    /// Removes the entry for `slot` filed under `hash`.
    pub fn remove(&mut self, hash: u64, slot: u32) -> bool {
        let tag = tag_of(hash);
        let b1 = self.primary(hash);
        for b in [b1, self.alternate(b1, tag)] {
            let bucket = &mut self.buckets[b];
            for i in 0..WAYS {
                if bucket.tags[i] == tag && bucket.slots[i] == slot {
                    bucket.tags[i] = EMPTY;
                    self.len -= 1;
                    return true;
                }
            }
        }
        false
    }
}

/// Asks the CPU to start loading the line holding `r`.
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint; it never faults, even on a bad address.
    unsafe {
        core::arch::x86_64::_mm_prefetch(r as *const T as *const i8, core::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(i: u64) -> u64 {
        // splitmix64: well-spread test hashes
        let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Whether the entry (`hash`, `slot`) lives outside its primary bucket.
    fn outside_primary(idx: &FlowIndex, hash: u64, slot: u32) -> bool {
        let bucket = &idx.buckets[idx.primary(hash)];
        !(0..WAYS).any(|w| bucket.tags[w] == tag_of(hash) && bucket.slots[w] == slot)
    }

    #[test]
    fn matching_marks_every_way_with_the_tag_and_no_other() {
        // Every subset of the eight ways holding the tag, the others
        // holding tags that differ from it in one bit, in the high word,
        // or not at all set (empty).
        for subset in 0u32..256 {
            for other in [0x8000_0003u32, 0x0000_0007, EMPTY] {
                let tag = 0x8000_0001;
                let mut b = EMPTY_BUCKET;
                for (way, t) in b.tags.iter_mut().enumerate() {
                    *t = if subset >> way & 1 == 1 { tag } else { other };
                }
                assert_eq!(b.matching(tag), subset, "subset {subset:08b}, other tag {other:#x}");
            }
        }
    }

    #[test]
    fn fills_to_capacity_finds_all_and_removes() {
        let n = 100_000;
        let mut idx = FlowIndex::with_capacity(n);
        for i in 0..n as u64 {
            assert!(idx.insert(mix(i), i as u32), "insert {i} failed");
        }
        assert_eq!(idx.len(), n);
        for i in 0..n as u64 {
            assert_eq!(idx.find(mix(i), |s| s == i as u32), Some(i as u32));
        }
        assert_eq!(idx.find(mix(n as u64 + 1), |_| true), None);
        for i in (0..n as u64).step_by(2) {
            assert!(idx.remove(mix(i), i as u32));
        }
        for i in 0..n as u64 {
            let found = idx.find(mix(i), |s| s == i as u32);
            assert_eq!(found.is_some(), i % 2 == 1, "{i}");
        }
        assert_eq!(idx.len(), n / 2);
    }

    /// `prefetch` loads only the primary bucket on the strength of this:
    /// at full configured capacity (half the ways) few entries overflow.
    #[test]
    fn at_capacity_few_entries_live_in_their_alternate_bucket() {
        let n = 1 << 20;
        let mut idx = FlowIndex::with_capacity(n);
        for i in 0..n as u64 {
            assert!(idx.insert(mix(i), i as u32));
        }
        let in_alternate = (0..n as u64).filter(|&i| outside_primary(&idx, mix(i), i as u32)).count();
        let share = in_alternate as f64 / n as f64;
        eprintln!("{:.2}% of entries outside their primary bucket", share * 100.0);
        assert!(share < 0.05, "{:.1}% of entries outside their primary bucket", share * 100.0);
        assert!(in_alternate > 0, "no overflow at all: the test no longer exercises alternates");
    }

    /// The same at capacity with the keys a network gives (a few servers,
    /// clients numbered in order, ports counting up, IPv4 and IPv6) hashed
    /// as the table hashes them: `FlowKey`'s own `Hash` must spread them
    /// like random hashes, or lookups pay the alternate bucket's miss.
    #[test]
    fn at_capacity_real_keys_live_in_their_primary_bucket_as_random_ones_do() {
        use crate::key::FlowKey;
        use core::hash::BuildHasher;
        use std::net::Ipv4Addr;
        let hasher = foldhash::fast::RandomState::default();
        let n = 1 << 18;
        let key = |i: u32| -> FlowKey {
            let (client_port, server_port) = (1024 + (i % 60_000) as u16, [443, 80, 53][(i % 3) as usize]);
            let proto = if server_port == 53 { 17 } else { 6 };
            if i % 4 == 3 {
                let client = (0x2001_0db8_0000_0000_0000_0000_0000_0000u128 | (i / 60_000) as u128).to_be_bytes();
                let server = 0x2001_0db8_0000_0000_0000_0000_0000_0001u128.to_be_bytes();
                FlowKey::canonical(client, server, client_port, server_port, proto, true, 0, 0, 0).0
            } else {
                let client = Ipv4Addr::from(0x0a00_0000 | (i / 60_000));
                FlowKey::from_v4(client, Ipv4Addr::new(192, 168, 1, (i % 5) as u8), client_port, server_port, proto).0
            }
        };
        let hashes: Vec<u64> = (0..n).map(|i| hasher.hash_one(key(i))).collect();
        let mut idx = FlowIndex::with_capacity(n as usize);
        for (i, &h) in hashes.iter().enumerate() {
            assert!(idx.insert(h, i as u32), "insert {i} failed");
        }
        let in_alternate = hashes.iter().enumerate().filter(|&(i, &h)| outside_primary(&idx, h, i as u32)).count();
        let share = in_alternate as f64 / n as f64;
        assert!(share < 0.05, "{:.1}% of real keys outside their primary bucket", share * 100.0);
    }

    /// Far past the configured load, inserts go on succeeding through
    /// chains of displacements, and every entry moved is still found.
    #[test]
    fn displacement_chains_fill_past_ninety_percent_of_the_ways() {
        let n = 100_000;
        let mut idx = FlowIndex::with_capacity(n);
        let ways = idx.buckets.len() * WAYS;
        let target = ways * 95 / 100;
        for i in 0..target as u64 {
            assert!(idx.insert(mix(i), i as u32), "insert {i} of {target} failed ({ways} ways)");
        }
        for i in 0..target as u64 {
            assert_eq!(idx.find(mix(i), |s| s == i as u32), Some(i as u32), "entry {i} lost by a move");
        }
        let moved = (0..target as u64).filter(|&i| outside_primary(&idx, mix(i), i as u32)).count();
        assert!(moved > target / 20, "only {moved} of {target} outside their primary: no chains exercised");
    }

    /// A table at capacity whose flows come and go: every insert finds
    /// room, at any bucket count (not a power of two here).
    #[test]
    fn churn_at_capacity_never_fails() {
        let n = 30_000;
        let mut idx = FlowIndex::with_capacity(n);
        assert!(!idx.buckets.len().is_power_of_two());
        for i in 0..n as u64 {
            assert!(idx.insert(mix(i), i as u32));
        }
        // Replace the oldest entry with a new one, ten times over.
        for i in n as u64..11 * n as u64 {
            let old = i - n as u64;
            let slot = (old % n as u64) as u32;
            assert!(idx.remove(mix(old), slot), "entry {old} not found to remove");
            assert!(idx.insert(mix(i), slot), "insert {i} failed at capacity");
        }
        assert_eq!(idx.len(), n);
        for i in 10 * n as u64..11 * n as u64 {
            assert_eq!(idx.find(mix(i), |s| s == (i % n as u64) as u32), Some((i % n as u64) as u32));
        }
    }

    #[test]
    fn alternate_is_an_involution_at_any_bucket_count() {
        for n in [2usize, 3, 7, 1000, 1 << 16, 1_234_567] {
            let idx = FlowIndex { buckets: Vec::new(), count: n as u64, len: 0 };
            for i in 0..2000u64 {
                let tag = tag_of(mix(i));
                let b = (mix(i + 1) % n as u64) as usize;
                let alt = idx.alternate(b, tag);
                assert!(alt < n, "alternate {alt} of {n} buckets");
                assert_eq!(idx.alternate(alt, tag), b, "n={n} b={b}");
            }
        }
    }

    #[test]
    fn colliding_tags_are_told_apart_by_the_caller() {
        let mut idx = FlowIndex::with_capacity(64);
        let h = mix(7);
        assert!(idx.insert(h, 1));
        assert!(idx.insert(h, 2));
        assert_eq!(idx.find(h, |s| s == 2), Some(2));
        assert_eq!(idx.find(h, |s| s == 1), Some(1));
        assert!(idx.remove(h, 1));
        assert_eq!(idx.find(h, |s| s == 1), None);
        assert_eq!(idx.find(h, |s| s == 2), Some(2));
    }

    #[test]
    fn displacement_makes_room_when_both_buckets_are_full() {
        // Tiny index: 2 buckets, so pressure forces moves between them.
        let mut idx = FlowIndex::with_capacity(8);
        let mut n = 0u32;
        for i in 0..10_000u64 {
            if !idx.insert(mix(i), n) {
                break;
            }
            n += 1;
        }
        assert!(n as usize >= WAYS * 2 - 1, "only {n} of {} ways used", idx.buckets.len() * WAYS);
        for s in 0..n {
            assert_eq!(idx.find(mix(s as u64), |x| x == s), Some(s));
        }
    }
}
