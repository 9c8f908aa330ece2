//! DPDK's `rte_hash` as the flow table's peer in `flowtable bench table`
//! (feature `dpdk`): what a DPDK application would build its flow table
//! on. Cuckoo hashing over 8-entry buckets, CRC32 (its default hash
//! function on x86), `rte_hash_lookup_bulk` with its own prefetching.
//!
//! It does the flow table's work: the 44-byte `FlowKey` as the key, and
//! for each packet found, on a 128-byte flow record kept in an array
//! indexed by the position rte_hash returns, the direction's packet and
//! byte counters, the last-seen time and the TCP state machine (the same
//! `TcpState::next`). A new flow is `rte_hash_add_key` and its record
//! initialised and counted.
//!
//! Sizing: `entries` is the number of flows, with
//! `RTE_HASH_EXTRA_FLAGS_EXT_TABLE`, the extendable buckets the DPDK
//! programmer's guide gives for a table that must take every key up to
//! its size (without it, a cuckoo table may refuse keys short of full).
//! rte_hash rounds its buckets up to a power of two itself.

use dpdk_sys as sys;
use flowtable_hw::dpdk::dpdk_sys;
use flowtable_sw::{DirCounters, Direction, FlowKey, PacketInfo, TcpState};
use std::ffi::CString;
use std::ptr::NonNull;
use std::time::Instant;

/// Keys per `rte_hash_lookup_bulk` call, as the flow table's batches.
pub const BULK: usize = 32;

/// The flow record the peer updates: what a DPDK flow table keeps per
/// flow, 128 bytes as the flow table's `Flow`.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct PeerFlow {
    first_ns: u64,
    last_ns: u64,
    sw: [DirCounters; 2],
    hw: [DirCounters; 2],
    tcp: TcpState,
    fins: u8,
    initiator: Direction,
}

const _: () = assert!(std::mem::size_of::<PeerFlow>() == 128);

impl PeerFlow {
    fn new(p: &PacketInfo, now: u64) -> PeerFlow {
        PeerFlow {
            first_ns: now,
            last_ns: now,
            sw: [DirCounters::default(); 2],
            hw: [DirCounters::default(); 2],
            tcp: TcpState::NotTcp,
            fins: 0,
            initiator: p.dir,
        }
    }

    #[inline(always)]
    fn observe(&mut self, p: &PacketInfo, now: u64) {
        let c = &mut self.sw[p.dir.index()];
        c.packets += 1;
        c.bytes += u64::from(p.wire_len);
        self.last_ns = now;
        if p.key.proto == 6 {
            self.tcp = self.tcp.next(p.tcp_flags, p.dir == self.initiator, &mut self.fins);
        }
    }
}

/// An rte_hash of `FlowKey`s and the flow records its positions index.
pub struct RteHashTable {
    hash: NonNull<sys::rte_hash>,
    flows: Vec<PeerFlow>,
    /// Bytes the table took from DPDK's heap (keys, buckets, free list).
    heap_bytes: usize,
}

fn heap_allocated() -> usize {
    let mut stats = sys::rte_malloc_socket_stats::default();
    // SAFETY: `stats` is a valid, writable rte_malloc_socket_stats; socket 0 exists once the EAL runs (a failed
    // call leaves the zeroes).
    unsafe { sys::rte_malloc_get_socket_stats(0, &mut stats) };
    stats.heap_allocsz_bytes
}

/// The EAL's heap for a table of `flows`: keys of 64 bytes with their
/// data pointer, two bucket arrays (main and extendable) of 64-byte
/// buckets of 8, free-slot rings, with room to spare.
pub fn heap_mb(flows: usize) -> usize {
    let buckets = flows.next_power_of_two() / 8;
    (flows * (64 + 16) + buckets * 64 * 2) / (1 << 20) + 256
}

impl RteHashTable {
    /// Starts the EAL if need be (see `eal_init_memory_only`) and creates
    /// an empty table for `flows` flows.
    pub fn new(flows: usize) -> Result<(RteHashTable, Vec<String>), String> {
        let eal = flowtable_hw::dpdk::eal::eal_init_memory_only(heap_mb(flows))?;
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = CString::new(format!("ft_bench_{}", SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))
            .expect("no NUL");
        let params = sys::rte_hash_parameters {
            name: name.as_ptr(),
            entries: u32::try_from(flows).map_err(|_| format!("{flows} flows: more than rte_hash holds"))?,
            key_len: std::mem::size_of::<FlowKey>() as u32,
            // None: rte_hash's default, CRC32 where the CPU has it.
            hash_func: None,
            hash_func_init_val: 0,
            socket_id: 0,
            extra_flag: sys::RTE_HASH_EXTRA_FLAGS_EXT_TABLE as u8,
            ..Default::default()
        };
        let before = heap_allocated();
        // SAFETY: `params` is a valid rte_hash_parameters whose name outlives the call (rte_hash copies it); the
        // EAL has been started above, as rte_hash_create needs.
        let raw = unsafe { sys::rte_hash_create(&params) };
        let Some(hash) = NonNull::new(raw) else {
            // SAFETY: reads this thread's rte_errno, just set by the failed rte_hash_create.
            let errno = unsafe { sys::ft_rte_errno() };
            return Err(format!(
                "rte_hash_create for {flows} flows failed (errno {errno}; EAL heap {} MB)",
                heap_mb(flows)
            ));
        };
        let heap_bytes = heap_allocated().saturating_sub(before);
        let vacant = PeerFlow::new(&crate::bench::packets(1, 0)[0], 0);
        Ok((RteHashTable { hash, flows: vec![vacant; flows], heap_bytes }, eal))
    }

    /// Bytes per flow: the rte_hash's heap and the flow records.
    pub fn bytes_per_flow(&self) -> f64 {
        (self.heap_bytes + self.flows.len() * std::mem::size_of::<PeerFlow>()) as f64 / self.flows.len() as f64
    }

    /// Adds every packet's flow (new to the table) and counts the packet;
    /// returns the seconds taken.
    pub fn insert_all(&mut self, pkts: &[PacketInfo]) -> Result<f64, String> {
        let start = Instant::now();
        for (i, p) in pkts.iter().enumerate() {
            // SAFETY: the table is live (owned by self); the key is a 44-byte repr(C) FlowKey without padding,
            // the key length the table was created with.
            let pos = unsafe { sys::rte_hash_add_key(self.hash.as_ptr(), (&p.key as *const FlowKey).cast()) };
            let Some(f) = usize::try_from(pos).ok().and_then(|pos| self.flows.get_mut(pos)) else {
                return Err(format!("rte_hash_add_key refused flow {i} of {} ({pos})", pkts.len()));
            };
            *f = PeerFlow::new(p, i as u64);
            f.observe(p, i as u64);
        }
        Ok(start.elapsed().as_secs_f64())
    }

    /// Looks up each packet with `rte_hash_lookup` and updates its flow;
    /// returns the seconds taken.
    pub fn lookups(&mut self, stream: &[PacketInfo], now: u64) -> f64 {
        let start = Instant::now();
        for p in stream {
            // SAFETY: as in insert_all.
            let pos = unsafe { sys::rte_hash_lookup(self.hash.as_ptr(), (&p.key as *const FlowKey).cast()) };
            if let Some(f) = usize::try_from(pos).ok().and_then(|pos| self.flows.get_mut(pos)) {
                f.observe(p, now);
            }
        }
        start.elapsed().as_secs_f64()
    }

    /// `rte_hash_lookup` alone, one at a time, no record touched: the
    /// index's share of [`lookups`](Self::lookups). Returns the seconds
    /// taken and the keys found.
    pub fn index_lookups(&self, stream: &[PacketInfo]) -> (f64, usize) {
        let start = Instant::now();
        let mut found = 0;
        for p in stream {
            // SAFETY: as in insert_all.
            let pos = unsafe { sys::rte_hash_lookup(self.hash.as_ptr(), (&p.key as *const FlowKey).cast()) };
            found += usize::from(pos >= 0);
        }
        (start.elapsed().as_secs_f64(), found)
    }

    /// The same with `rte_hash_lookup_bulk`, [`BULK`] keys a call.
    pub fn bulk_lookups(&mut self, stream: &[PacketInfo], now: u64) -> f64 {
        let start = Instant::now();
        let mut keys = [std::ptr::null::<core::ffi::c_void>(); BULK];
        let mut positions = [0i32; BULK];
        for chunk in stream.chunks(BULK) {
            for (k, p) in keys.iter_mut().zip(chunk) {
                *k = (&p.key as *const FlowKey).cast();
            }
            // SAFETY: the table is live; `keys` holds chunk.len() (<= BULK <= RTE_HASH_LOOKUP_BULK_MAX) pointers
            // to 44-byte keys borrowed from `stream` for the call; `positions` has room for as many results.
            unsafe {
                sys::rte_hash_lookup_bulk(
                    self.hash.as_ptr(),
                    keys.as_mut_ptr(),
                    chunk.len() as u32,
                    positions.as_mut_ptr(),
                )
            };
            for (p, &pos) in chunk.iter().zip(&positions) {
                if let Some(f) = usize::try_from(pos).ok().and_then(|pos| self.flows.get_mut(pos)) {
                    f.observe(p, now);
                }
            }
        }
        start.elapsed().as_secs_f64()
    }

    /// Packets counted on all flows: what a run did, so a peer that found
    /// nothing (and so did no work) can't pass for a fast one.
    pub fn packets_counted(&self) -> u64 {
        self.flows.iter().map(|f| f.sw[0].packets + f.sw[1].packets).sum()
    }

    /// Flows in the table, as rte_hash counts them.
    pub fn count(&self) -> usize {
        // SAFETY: the table is live.
        let n = unsafe { sys::rte_hash_count(self.hash.as_ptr()) };
        usize::try_from(n).unwrap_or(0)
    }
}

impl Drop for RteHashTable {
    fn drop(&mut self) {
        // SAFETY: the table was created by rte_hash_create, is freed once, here, and nothing uses it after.
        unsafe { sys::rte_hash_free(self.hash.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lookup_finds_its_flow_and_counts_one_packet() {
        let pkts = crate::bench::packets(5000, 9);
        let (mut t, eal) = RteHashTable::new(pkts.len()).unwrap();
        assert!(eal.iter().any(|a| a == "--no-pci"));
        t.insert_all(&pkts).unwrap();
        assert_eq!((t.count(), t.packets_counted()), (5000, 5000));
        // An odd-sized stream, so the last bulk call is a partial one.
        let stream = &pkts[..4099];
        t.lookups(stream, 10);
        t.bulk_lookups(stream, 11);
        assert_eq!(t.packets_counted(), 5000 + 2 * 4099);
        // A flow it never saw is not found, and counts nothing.
        let other = crate::bench::packets(1, 12345);
        assert!(!pkts.iter().any(|p| p.key == other[0].key));
        t.bulk_lookups(&other, 12);
        t.lookups(&other, 12);
        assert_eq!(t.packets_counted(), 5000 + 2 * 4099);
        assert!(t.bytes_per_flow() > 128.0);
    }
}
