//! `flowtable bench`: the speed and memory figures of docs/PERFORMANCE.md,
//! each measured beside a peer in the same run, since the machines these
//! run on are shared and noisy and only ratios travel.

use flowtable_sw::{Direction, FlowKey, Fragment, FlowTable, FullPolicy, Lookup, PacketInfo, TableConfig};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

/// Distinct IPv4 TCP flows, both directions represented.
pub fn packets(n: usize, seed: u64) -> Vec<PacketInfo> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let src = rng.gen::<u32>();
        let dst = rng.gen::<u32>();
        let sport: u16 = rng.gen_range(1024..65535);
        let dport: u16 = [80, 443, 53, 22, 8080][rng.gen_range(0..5)];
        let (key, dir) = FlowKey::from_v4(src.into(), dst.into(), sport, dport, 6);
        if seen.insert(key) {
            let dir = if rng.gen_bool(0.5) { dir } else { dir.reverse() };
            out.push(PacketInfo { key, dir, wire_len: 64 + (rng.gen::<u32>() % 1400), tcp_flags: 0x10, fragment: Fragment::Whole, payload_offset: 0 });
        }
    }
    out
}

#[derive(Debug, Serialize)]
pub struct TableBench {
    pub flows: usize,
    pub insert_per_s: f64,
    pub lookup_per_s: f64,
    pub peer_insert_per_s: f64,
    pub peer_lookup_per_s: f64,
    pub flow_struct_bytes: usize,
    pub table_bytes_per_flow: f64,
    pub peer_bytes_per_flow: f64,
}

/// New flows/s and lookups/s of existing flows in a table of `n` flows,
/// against `std::collections::HashMap<FlowKey, (counters)>` doing the
/// same work with its default (SipHash) hasher.
pub fn table(n: usize, lookups: usize) -> TableBench {
    let pkts = packets(n, 1);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
    let order: Vec<u32> = (0..lookups).map(|_| rng.gen_range(0..n as u32)).collect();

    let mut t = FlowTable::new(TableConfig { max_flows: n, full_policy: FullPolicy::RejectNew, ..Default::default() });
    let start = Instant::now();
    for (i, p) in pkts.iter().enumerate() {
        let now = i as u64;
        if let Lookup::Inserted { id, .. } = t.lookup_or_insert(p, now) {
            t.observe(id, p, now, true);
        }
    }
    let insert = start.elapsed().as_secs_f64();
    assert_eq!(t.len(), n);

    let start = Instant::now();
    let now = n as u64;
    for &i in &order {
        let p = &pkts[i as usize];
        if let Lookup::Found(id) = t.lookup_or_insert(p, now) {
            t.observe(id, p, now, true);
        }
    }
    let lookup = start.elapsed().as_secs_f64();
    black_box(&t);
    let table_bytes = t.heap_bytes() as f64 / n as f64;
    drop(t);

    // The peer: the standard map with a value of the same counters.
    #[derive(Default, Clone, Copy)]
    struct PeerValue {
        _first: u64,
        last: u64,
        counters: [(u64, u64); 4],
    }
    let mut m: HashMap<FlowKey, PeerValue> = HashMap::with_capacity(n);
    let start = Instant::now();
    for (i, p) in pkts.iter().enumerate() {
        let v = m.entry(p.key).or_insert(PeerValue { _first: i as u64, ..Default::default() });
        v.counters[p.dir.index()].0 += 1;
        v.counters[p.dir.index()].1 += p.wire_len as u64;
        v.last = i as u64;
    }
    let peer_insert = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for &i in &order {
        let p = &pkts[i as usize];
        if let Some(v) = m.get_mut(&p.key) {
            let d = if p.dir == Direction::LoToHi { 0 } else { 1 };
            v.counters[d].0 += 1;
            v.counters[d].1 += p.wire_len as u64;
            v.last = now;
        }
    }
    let peer_lookup = start.elapsed().as_secs_f64();
    black_box(&m);
    let peer_bytes = (m.capacity() as f64 * (std::mem::size_of::<(FlowKey, PeerValue)>() + 1) as f64) / n as f64;

    TableBench {
        flows: n,
        insert_per_s: n as f64 / insert,
        lookup_per_s: lookups as f64 / lookup,
        peer_insert_per_s: n as f64 / peer_insert,
        peer_lookup_per_s: lookups as f64 / peer_lookup,
        flow_struct_bytes: std::mem::size_of::<flowtable_sw::Flow>(),
        table_bytes_per_flow: table_bytes,
        peer_bytes_per_flow: peer_bytes,
    }
}
