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

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Bucket {
    tags: [u32; WAYS],
    slots: [u32; WAYS],
}

const EMPTY_BUCKET: Bucket = Bucket { tags: [EMPTY; WAYS], slots: [0; WAYS] };

pub struct FlowIndex {
    buckets: Vec<Bucket>,
    mask: usize,
    len: usize,
}

#[inline]
fn tag_of(hash: u64) -> u32 {
    (hash >> 32) as u32 | 1
}

impl FlowIndex {
    /// An index for up to `capacity` entries, its buckets at most half full.
    pub fn with_capacity(capacity: usize) -> FlowIndex {
        let buckets = (capacity.div_ceil(WAYS) * 2).next_power_of_two().max(2);
        let mut v = Vec::with_capacity(buckets);
        crate::memory::advise_huge_pages(v.as_mut_ptr() as *mut u8, buckets * core::mem::size_of::<Bucket>());
        v.resize(buckets, EMPTY_BUCKET);
        FlowIndex { buckets: v, mask: buckets - 1, len: 0 }
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

    #[inline]
    fn primary(&self, hash: u64) -> usize {
        hash as usize & self.mask
    }

    /// The other bucket of an entry with `tag` in `bucket` (an involution).
    #[inline]
    fn alternate(&self, bucket: usize, tag: u32) -> usize {
        (bucket ^ (tag.wrapping_mul(0x9E37_79B1) >> 7) as usize) & self.mask
    }

    /// Starts loading the bucket `hash` most likely lives in. Inserts fill
    /// the primary bucket first, and at half load a primary overflows
    /// rarely (under 1% of entries live in their alternate at 1M), so loading the
    /// alternate too would double the memory traffic of every lookup to
    /// save a miss on a few.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        prefetch(&self.buckets[self.primary(hash)]);
    }

    /// The first slot whose tag matches (for prefetching the flow), without
    /// checking the key.
    #[inline]
    pub fn probable(&self, hash: u64) -> Option<u32> {
        let tag = tag_of(hash);
        let b1 = self.primary(hash);
        for b in [b1, self.alternate(b1, tag)] {
            let bucket = &self.buckets[b];
            for i in 0..WAYS {
                if bucket.tags[i] == tag {
                    return Some(bucket.slots[i]);
                }
            }
        }
        None
    }

    /// The slot of the entry with `hash` for which `is_it` holds.
    #[inline]
    pub fn find(&self, hash: u64, mut is_it: impl FnMut(u32) -> bool) -> Option<u32> {
        let tag = tag_of(hash);
        let b1 = self.primary(hash);
        for b in [b1, self.alternate(b1, tag)] {
            let bucket = &self.buckets[b];
            for i in 0..WAYS {
                if bucket.tags[i] == tag && is_it(bucket.slots[i]) {
                    return Some(bucket.slots[i]);
                }
            }
        }
        None
    }

    #[inline]
    fn free_way(&self, b: usize) -> Option<usize> {
        self.buckets[b].tags.iter().position(|&t| t == EMPTY)
    }

    /// Adds an entry. Fails only when both buckets and every alternate of
    /// their entries are full, which at half load doesn't happen in
    /// practice; the caller then treats the table as full.
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
        // Both full: move one resident to its other bucket.
        for b in [b1, b2] {
            for i in 0..WAYS {
                let (t, s) = (self.buckets[b].tags[i], self.buckets[b].slots[i]);
                let alt = self.alternate(b, t);
                if alt == b {
                    continue;
                }
                if let Some(j) = self.free_way(alt) {
                    self.buckets[alt].tags[j] = t;
                    self.buckets[alt].slots[j] = s;
                    self.buckets[b].tags[i] = tag;
                    self.buckets[b].slots[i] = slot;
                    self.len += 1;
                    return true;
                }
            }
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
        let in_alternate = (0..n as u64)
            .filter(|&i| {
                let bucket = &idx.buckets[idx.primary(mix(i))];
                !(0..WAYS).any(|w| bucket.tags[w] == tag_of(mix(i)) && bucket.slots[w] == i as u32)
            })
            .count();
        let share = in_alternate as f64 / n as f64;
        assert!(share < 0.05, "{:.1}% of entries outside their primary bucket", share * 100.0);
        assert!(in_alternate > 0, "no overflow at all: the test no longer exercises alternates");
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
