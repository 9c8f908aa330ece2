//! `flowtable bench`: the speed and memory figures of docs/PERFORMANCE.md,
//! each measured beside a peer in the same run, since the machines these
//! run on are shared and noisy and only ratios travel.

use flowtable_sw::pipeline::{Schedule, Tuner, CANDIDATES, GROUP, RING};
use flowtable_sw::table::NO_SLOT;
use flowtable_sw::{Direction, FlowKey, FlowTable, FullPolicy, Lookup, PacketInfo, TableConfig};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

/// Packets a batched lookup takes at once: 32, as `rte_hash_lookup_bulk`
/// is given them in the peer's rounds, so the two compare batch for batch
/// (a worker's `Shard::process_batch` runs one pipeline over each dispatch
/// batch, however long: the streamed rounds).
const BATCH: usize = 32;

/// The packet pipeline's distance the table's schedule is measured
/// against: each step 8 packets behind the one before.
const DISTANCE: usize = flowtable_sw::pipeline::CANDIDATES[2].1;
const _: () = assert!(flowtable_sw::pipeline::CANDIDATES[2].0 == 1, "the third candidate is the packet pipeline");

/// Packets one pipeline runs over in the streamed rounds: the runtime's
/// dispatch batch, what a worker's `Shard::process_batch` is handed.
const STREAMED: usize = crate::runtime::DISPATCH_BATCH;

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
            out.push(PacketInfo::whole(key, dir, 0, 64 + (rng.gen::<u32>() % 1400), 0x10));
        }
    }
    out
}

#[derive(Debug, Serialize)]
pub struct TableBench {
    pub flows: usize,
    /// Lookup rounds; the lookup figures are their medians.
    pub rounds: usize,
    pub insert_per_s: f64,
    /// New flows created in pipelined batches of `BATCH`.
    pub batched_insert_per_s: f64,
    /// The same into a table whose slots were all used and freed before.
    pub warm_insert_per_s: f64,
    pub peer_warm_insert_per_s: f64,
    pub lookup_per_s: f64,
    /// The same lookups one at a time with nothing accounted
    /// (`FlowTable::find`): the index and the key compare alone.
    pub find_per_s: f64,
    /// Lookups in batches of `BATCH`, their memory loads pipelined in the
    /// schedule a `Tuner` picks (`flowtable_sw::pipeline`), as a shard
    /// makes them.
    pub batched_lookup_per_s: f64,
    /// What the batched rounds' tuner chose.
    pub batched_schedule: String,
    /// The same batches in groups of `GROUP` always, the schedule before
    /// the tuner, for comparison.
    pub fours_lookup_per_s: f64,
    /// The same batches as a pipeline of single packets `DISTANCE` apart,
    /// for comparison.
    pub pipelined_lookup_per_s: f64,
    /// The same batches with each step done for the whole batch before the
    /// next (group prefetching), for comparison.
    pub grouped_lookup_per_s: f64,
    /// Lookups with one pipeline in the tuner's schedule running over
    /// `STREAMED` packets at a time, as a worker runs it over each
    /// dispatch batch.
    pub streamed_lookup_per_s: f64,
    /// What the streamed rounds' tuner chose.
    pub streamed_schedule: String,
    pub peer_insert_per_s: f64,
    pub peer_lookup_per_s: f64,
    /// The same map with foldhash, the table's own hash function.
    pub peer_fast_lookup_per_s: f64,
    pub flow_struct_bytes: usize,
    pub table_bytes_per_flow: f64,
    pub peer_bytes_per_flow: f64,
    /// DPDK's rte_hash doing the same work (feature `dpdk`), in the same
    /// rounds; `None` with the reason in `rte_hash_skipped`.
    pub rte_hash: Option<RteHashFigures>,
    pub rte_hash_skipped: Option<String>,
}

/// rte_hash's figures beside the flow table's (see `bench_rte_hash`).
#[derive(Debug, Serialize)]
pub struct RteHashFigures {
    /// The EAL's arguments.
    pub eal: Vec<String>,
    /// `rte_hash_add_key` and the flow record set up and counted.
    pub insert_per_s: f64,
    /// `rte_hash_lookup`, one at a time, and the record updated.
    pub lookup_per_s: f64,
    /// `rte_hash_lookup_bulk` of 32, and the records updated.
    pub bulk_lookup_per_s: f64,
    /// `rte_hash_lookup` alone, no record touched.
    pub index_lookup_per_s: f64,
    /// rte_hash's share of DPDK's heap and the 128-byte records.
    pub bytes_per_flow: f64,
}

/// The peer's value: the same counters as a flow.
#[derive(Default, Clone, Copy)]
struct PeerValue {
    _first: u64,
    last: u64,
    counters: [(u64, u64); 4],
}

/// Seconds to look up (and count) every packet of `stream`, `chunk` at a
/// time, each chunk in the schedule `tuner` picks, as a shard's
/// `process_batch` runs its batches.
fn tuned_lookups(t: &mut FlowTable, stream: &[PacketInfo], chunk: usize, tuner: &mut Tuner, now: u64) -> f64 {
    let start = Instant::now();
    for chunk in stream.chunks(chunk) {
        tuned(t, chunk, tuner, now);
    }
    start.elapsed().as_secs_f64()
}

/// `scheduled` for one batch, in the schedule `tuner` picks and timed by it.
#[inline]
fn tuned(t: &mut FlowTable, chunk: &[PacketInfo], tuner: &mut Tuner, now: u64) {
    let pick = tuner.pick();
    scheduled::<RING>(t, chunk, pick.schedule(chunk.len()), now);
    tuner.ran(pick, chunk.len());
}

/// The trials each candidate of `tuner` won, most first, and its last
/// choice, for the report.
fn tuner_choice(tuner: &Tuner) -> String {
    let name = |(group, lag): (usize, usize)| match (group, lag) {
        (1, d) => format!("the packet pipeline {d} apart"),
        (g, 1) => format!("groups of {g}"),
        (g, l) => format!("groups of {g} {l} apart"),
    };
    let mut won: Vec<((usize, usize), u32)> = CANDIDATES.iter().copied().zip(tuner.wins()).collect();
    won.sort_by(|a, b| b.1.cmp(&a.1));
    let won: Vec<String> = won.iter().map(|(c, w)| format!("{} {w}", name(*c))).collect();
    format!("trials won: {}; the last chose {}", won.join(", "), name(tuner.chosen()))
}

/// Seconds to look up (and count) every packet of `stream`, `chunk` at a
/// time, each chunk run by `scheduled`.
fn scheduled_lookups<const R: usize>(
    t: &mut FlowTable,
    stream: &[PacketInfo],
    chunk: usize,
    schedule: impl Fn(usize) -> Schedule,
    now: u64,
) -> f64 {
    let start = Instant::now();
    for chunk in stream.chunks(chunk) {
        scheduled::<R>(t, chunk, schedule(chunk.len()), now);
    }
    start.elapsed().as_secs_f64()
}

/// Looks up (creating it if new) and counts every packet of `chunk`, the
/// steps in the order `schedule` gives, hashes and slots kept in rings of
/// `R` (which must hold a packet's entry from its hash to its lookup).
#[inline]
fn scheduled<const R: usize>(t: &mut FlowTable, chunk: &[PacketInfo], schedule: Schedule, now: u64) {
    let mut hashes = [0u64; R];
    let mut slots = [NO_SLOT; R];
    for step in schedule {
        for i in step.hash {
            hashes[i % R] = t.prefetch_index(&chunk[i].key);
        }
        for i in step.prefetch {
            slots[i % R] = t.prefetch_flow(hashes[i % R]);
        }
        for i in step.lookup {
            let p = &chunk[i];
            if let Lookup::Found(id) | Lookup::Inserted { id, .. } =
                t.lookup_or_insert_probed(p, hashes[i % R], slots[i % R], now)
            {
                t.observe(id, p, now, true);
            }
        }
    }
}

/// The ways of looking up in `table`'s rounds, each taking its own part
/// of the order at a time.
const WAYS: usize = 12;

/// The part of the order that `way` looks up at step `part` of a round of
/// `parts` steps: for each way a permutation of the parts, and at each
/// step a different part for each way, `parts / WAYS` apart, when there
/// are at least as many parts as ways.
fn way_part(part: usize, way: usize, parts: usize) -> usize {
    let stride = (parts / WAYS).max(1);
    (part + way * stride) % parts
}

/// Looks up and counts every packet of `stream` in a peer map; returns the seconds taken.
fn peer_lookups<S: std::hash::BuildHasher>(
    m: &mut HashMap<FlowKey, PeerValue, S>,
    stream: &[PacketInfo],
    now: u64,
) -> f64 {
    let start = Instant::now();
    for p in stream {
        if let Some(v) = m.get_mut(&p.key) {
            let d = if p.dir == Direction::LoToHi { 0 } else { 1 };
            v.counters[d].0 += 1;
            v.counters[d].1 += p.wire_len as u64;
            v.last = now;
        }
    }
    start.elapsed().as_secs_f64()
}

/// New flows/s and lookups/s of existing flows in a table of `n` flows,
/// against `std::collections::HashMap<FlowKey, (counters)>` doing the
/// same work with its default (SipHash) hasher.
pub fn table(n: usize, lookups: usize, rounds: usize) -> TableBench {
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

    // rte_hash: filled right after the table, the same flows in the same order.
    #[cfg(feature = "dpdk")]
    let (mut rte, mut rte_skipped, mut rte_insert) = (None, None, 0.0);
    #[cfg(not(feature = "dpdk"))]
    let rte_skipped: Option<String> = Some("built without the dpdk feature (cargo build --features dpdk)".into());
    #[cfg(feature = "dpdk")]
    match crate::bench_rte_hash::RteHashTable::new(n) {
        Ok((mut r, eal)) => match r.insert_all(&pkts) {
            Ok(s) if r.count() == n => {
                rte_insert = s;
                rte = Some((r, eal));
            }
            Ok(_) => rte_skipped = Some(format!("rte_hash holds {} of the {n} flows", r.count())),
            Err(e) => rte_skipped = Some(e),
        },
        Err(e) => rte_skipped = Some(e),
    }

    // New flows in pipelined batches, as the engine creates them: first
    // into a fresh table (each page of flows faulted in as it fills), then,
    // with every flow ended, another `n` into the same table, as a running
    // daemon sees it once its table has filled once (slots and pages
    // reused). The peer does the same: a fill, `clear()`, a second fill.
    let (batched_insert, warm_insert) = {
        let mut b =
            FlowTable::new(TableConfig { max_flows: n, full_policy: FullPolicy::RejectNew, ..Default::default() });
        let mut tuner = Tuner::new();
        let mut fill = |b: &mut FlowTable, pkts: &[PacketInfo]| {
            let start = Instant::now();
            for (c, chunk) in pkts.chunks(BATCH).enumerate() {
                tuned(b, chunk, &mut tuner, (c * BATCH) as u64);
            }
            assert_eq!(b.len(), pkts.len());
            start.elapsed().as_secs_f64()
        };
        let cold = fill(&mut b, &pkts);
        for id in b.ids() {
            b.remove(id);
        }
        (cold, fill(&mut b, &packets(n, 3)))
    };
    let peer_warm_insert = {
        let mut m: HashMap<FlowKey, PeerValue> = HashMap::with_capacity(n);
        for p in &pkts {
            m.entry(p.key).or_default();
        }
        m.clear();
        let second = packets(n, 3);
        let start = Instant::now();
        for (i, p) in second.iter().enumerate() {
            let v = m.entry(p.key).or_insert(PeerValue { _first: i as u64, ..Default::default() });
            v.counters[p.dir.index()].0 += 1;
            v.counters[p.dir.index()].1 += p.wire_len as u64;
            v.last = i as u64;
        }
        start.elapsed().as_secs_f64()
    };

    let mut m: HashMap<FlowKey, PeerValue> = HashMap::with_capacity(n);
    let start = Instant::now();
    for (i, p) in pkts.iter().enumerate() {
        let v = m.entry(p.key).or_insert(PeerValue { _first: i as u64, ..Default::default() });
        v.counters[p.dir.index()].0 += 1;
        v.counters[p.dir.index()].1 += p.wire_len as u64;
        v.last = i as u64;
    }
    let peer_insert = start.elapsed().as_secs_f64();
    // The same map with the table's own hash function, so the comparison
    // is of structure and memory layout, not of SipHash against foldhash.
    let mut fast: HashMap<FlowKey, PeerValue, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(n, Default::default());
    for (i, p) in pkts.iter().enumerate() {
        fast.entry(p.key).or_insert(PeerValue { _first: i as u64, ..Default::default() });
    }

    // The packets of a lookup round arrive in order, as a parsed burst sits
    // in memory: the stream is laid out in `STREAM` packets at a time
    // (untimed) and read front to back, so the figure is the cost of
    // finding flows, not of gathering the packets themselves from random
    // places of a 70 MB array (which would add a cache miss per lookup
    // that no receive path has). Rounds alternate the ways of
    // looking up, so a burst of noise on this shared machine hits all of
    // them alike; medians are reported.
    //
    // Each way looks up its own part of the order at a time, a stride of
    // parts away from the last way's: a part's 65,536 flows are some 12
    // MB of buckets and flows, which a way looking up the same part right
    // after would find partly in the shared cache (measured: a second
    // pass over the part ran 1.3x to 1.6x the first), and the rows after
    // the first would not be of a table in memory. Over a round every
    // way looks up every part once: the same lookups, in another order.
    const STREAM: usize = 1 << 16;
    let parts: Vec<&[u32]> = order.chunks(STREAM).collect();
    let fill = |stream: &mut Vec<PacketInfo>, part: usize, way: usize| {
        stream.clear();
        stream.extend(parts[way_part(part, way, parts.len())].iter().map(|&i| pkts[i as usize]));
    };
    let now = n as u64;
    let (mut single, mut batched, mut fours, mut pipelined, mut grouped, mut streamed) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut batched_tuner, mut streamed_tuner) = (Tuner::new(), Tuner::new());
    let mut find = Vec::new();
    let (mut peer, mut peer_fast) = (Vec::new(), Vec::new());
    #[cfg(feature = "dpdk")]
    let (mut rte_single, mut rte_bulk, mut rte_index) = (Vec::new(), Vec::new(), Vec::new());
    let mut stream: Vec<PacketInfo> = Vec::with_capacity(STREAM);
    for _ in 0..rounds.max(1) {
        let (mut single_s, mut batched_s, mut fours_s, mut pipelined_s, mut grouped_s, mut streamed_s) =
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
        let (mut peer_s, mut fast_s) = (0.0, 0.0);
        #[cfg(feature = "dpdk")]
        let (mut rte_single_s, mut rte_bulk_s, mut rte_index_s) = (0.0, 0.0, 0.0);
        let mut find_s = 0.0;
        for part in 0..parts.len() {
            fill(&mut stream, part, 0);
            let start = Instant::now();
            for p in &stream {
                if let Lookup::Found(id) = t.lookup_or_insert(p, now) {
                    t.observe(id, p, now, true);
                }
            }
            single_s += start.elapsed().as_secs_f64();

            // The same lookups with nothing accounted: what the index and
            // the key compare cost before the packet's accounting.
            fill(&mut stream, part, 1);
            let start = Instant::now();
            let found = stream.iter().filter(|p| t.find(&p.key).is_some()).count();
            find_s += start.elapsed().as_secs_f64();
            assert_eq!(found, stream.len(), "the table lost flows during the lookup rounds");

            // The same lookups in batches of 32, in the schedule a tuner
            // picks (`flowtable_sw::pipeline`), then in fixed schedules:
            // groups of four (the table's before the tuner), a pipeline
            // of single packets 8 apart, and each step for the whole
            // batch before the next. Last, the tuner's schedule over each
            // dispatch batch, as a worker runs it.
            fill(&mut stream, part, 2);
            batched_s += tuned_lookups(&mut t, &stream, BATCH, &mut batched_tuner, now);
            fill(&mut stream, part, 3);
            fours_s += scheduled_lookups::<RING>(&mut t, &stream, BATCH, Schedule::new, now);
            fill(&mut stream, part, 4);
            pipelined_s +=
                scheduled_lookups::<RING>(&mut t, &stream, BATCH, |n| Schedule::with_groups(n, 1, DISTANCE), now);
            fill(&mut stream, part, 5);
            grouped_s += scheduled_lookups::<RING>(&mut t, &stream, BATCH, |n| Schedule::with_groups(n, n, 1), now);
            fill(&mut stream, part, 6);
            streamed_s += tuned_lookups(&mut t, &stream, STREAMED, &mut streamed_tuner, now);

            fill(&mut stream, part, 7);
            peer_s += peer_lookups(&mut m, &stream, now);
            fill(&mut stream, part, 8);
            fast_s += peer_lookups(&mut fast, &stream, now);
            #[cfg(feature = "dpdk")]
            if let Some((r, _)) = rte.as_mut() {
                fill(&mut stream, part, 9);
                rte_single_s += r.lookups(&stream, now);
                fill(&mut stream, part, 10);
                rte_bulk_s += r.bulk_lookups(&stream, now);
                fill(&mut stream, part, 11);
                let (s, found) = r.index_lookups(&stream);
                rte_index_s += s;
                assert_eq!(found, stream.len(), "rte_hash lost flows during the lookup rounds");
            }
        }
        #[cfg(feature = "dpdk")]
        if rte.is_some() {
            rte_single.push(lookups as f64 / rte_single_s);
            rte_bulk.push(lookups as f64 / rte_bulk_s);
            rte_index.push(lookups as f64 / rte_index_s);
        }
        single.push(lookups as f64 / single_s);
        find.push(lookups as f64 / find_s);
        batched.push(lookups as f64 / batched_s);
        fours.push(lookups as f64 / fours_s);
        pipelined.push(lookups as f64 / pipelined_s);
        grouped.push(lookups as f64 / grouped_s);
        streamed.push(lookups as f64 / streamed_s);
        peer.push(lookups as f64 / peer_s);
        peer_fast.push(lookups as f64 / fast_s);
    }
    // Every way that counts (one at a time and the five batched ones)
    // counted each of its lookups once, on top of each flow's first packet.
    let counted: u64 = t.ids().iter().filter_map(|&id| t.get(id)).map(|f| f.packets()).sum();
    assert_eq!(counted, (n + 6 * lookups * rounds.max(1)) as u64, "the table's lookups counted packets not looked up");
    black_box(&t);
    black_box(&m);
    black_box(&fast);
    let table_bytes = t.heap_bytes() as f64 / n as f64;
    let peer_bytes = (m.capacity() as f64 * (std::mem::size_of::<(FlowKey, PeerValue)>() + 1) as f64) / n as f64;
    // Every packet of every round counted once on its flow, or the peer's
    // figures are of work not done.
    #[cfg(feature = "dpdk")]
    if let Some((r, _)) = &rte {
        let expected = (n + 2 * lookups * rounds.max(1)) as u64;
        if r.packets_counted() != expected {
            rte_skipped = Some(format!("rte_hash counted {} packets of {expected}", r.packets_counted()));
            rte = None;
        }
    }
    #[cfg(feature = "dpdk")]
    let rte_hash = rte.map(|(r, eal)| RteHashFigures {
        eal,
        insert_per_s: n as f64 / rte_insert,
        lookup_per_s: median(rte_single),
        bulk_lookup_per_s: median(rte_bulk),
        index_lookup_per_s: median(rte_index),
        bytes_per_flow: r.bytes_per_flow(),
    });
    #[cfg(not(feature = "dpdk"))]
    let rte_hash = None;

    TableBench {
        flows: n,
        rounds: rounds.max(1),
        insert_per_s: n as f64 / insert,
        batched_insert_per_s: n as f64 / batched_insert,
        warm_insert_per_s: n as f64 / warm_insert,
        peer_warm_insert_per_s: n as f64 / peer_warm_insert,
        lookup_per_s: median(single),
        find_per_s: median(find),
        batched_lookup_per_s: median(batched),
        batched_schedule: tuner_choice(&batched_tuner),
        fours_lookup_per_s: median(fours),
        pipelined_lookup_per_s: median(pipelined),
        grouped_lookup_per_s: median(grouped),
        streamed_lookup_per_s: median(streamed),
        streamed_schedule: tuner_choice(&streamed_tuner),
        peer_insert_per_s: n as f64 / peer_insert,
        peer_lookup_per_s: median(peer),
        peer_fast_lookup_per_s: median(peer_fast),
        flow_struct_bytes: std::mem::size_of::<flowtable_sw::Flow>(),
        table_bytes_per_flow: table_bytes,
        peer_bytes_per_flow: peer_bytes,
        rte_hash,
        rte_hash_skipped: rte_skipped,
    }
}

pub fn table_report(b: &TableBench) -> String {
    let mut o = table_report_std(b);
    match (&b.rte_hash, &b.rte_hash_skipped) {
        (Some(r), _) => o.push_str(&format!(
            "against DPDK rte_hash (same keys, same work on a 128-byte record, same rounds; EAL {})\n\
             \x20 new flows:  {:>12.0} /s   rte_hash_add_key      {:>12.0} /s   ratio {:.2}x (batched {:.2}x, batched into a table filled once before {:.2}x: rte_hash's memory is faulted in before it is timed)\n\
             \x20 lookups:    {:>12.0} /s   rte_hash_lookup       {:>12.0} /s   ratio {:.2}x\n\
             \x20   nothing accounted: {:>12.0} /s   rte_hash_lookup alone {:>12.0} /s   ratio {:.2}x (the index and key compare; the rest of a lookup is its accounting)\n\
             \x20 batched:    {:>12.0} /s   rte_hash_lookup_bulk  {:>12.0} /s   ratio {:.2}x ({} at a time; fours {:.2}x, pipelined {:.2}x, grouped {:.2}x, streamed {:.2}x)\n\
             \x20 memory:     {:>12.1} B/flow   rte_hash {:.1} B/flow\n",
            r.eal.join(" "),
            b.insert_per_s,
            r.insert_per_s,
            b.insert_per_s / r.insert_per_s,
            b.batched_insert_per_s / r.insert_per_s,
            b.warm_insert_per_s / r.insert_per_s,
            b.lookup_per_s,
            r.lookup_per_s,
            b.lookup_per_s / r.lookup_per_s,
            b.find_per_s,
            r.index_lookup_per_s,
            b.find_per_s / r.index_lookup_per_s,
            b.batched_lookup_per_s,
            r.bulk_lookup_per_s,
            b.batched_lookup_per_s / r.bulk_lookup_per_s,
            BATCH,
            b.fours_lookup_per_s / r.bulk_lookup_per_s,
            b.pipelined_lookup_per_s / r.bulk_lookup_per_s,
            b.grouped_lookup_per_s / r.bulk_lookup_per_s,
            b.streamed_lookup_per_s / r.bulk_lookup_per_s,
            b.table_bytes_per_flow,
            r.bytes_per_flow,
        )),
        (None, Some(why)) => o.push_str(&format!("rte_hash: skipped: {why}\n")),
        (None, None) => {}
    }
    o
}

fn table_report_std(b: &TableBench) -> String {
    format!(
        "flow table, {} flows, median of {} rounds (peer: std HashMap<FlowKey, counters>, SipHash, same work)\n\
         \x20 new flows:  {:>12.0} /s   peer {:>12.0} /s   ratio {:.2}x\n\
         \x20   batched:  {:>12.0} /s   peer {:>12.0} /s   ratio {:.2}x\n\
         \x20   batched, table filled once before: {:>12.0} /s   peer {:>12.0} /s   ratio {:.2}x\n\
         \x20 lookups:    {:>12.0} /s   peer {:>12.0} /s   ratio {:.2}x\n\
         \x20 batched:    {:>12.0} /s   peer {:>12.0} /s   ratio {:.2}x (lookups {} at a time in the tuner's schedule; {})\n\
         \x20 fours:      {:>12.0} /s   peer {:>12.0} /s   ratio {:.2}x (the same batches, always in groups of {})\n\
         \x20 pipelined:  {:>12.0} /s   peer {:>12.0} /s   ratio {:.2}x (the same batches, single packets pipelined {} apart)\n\
         \x20 grouped:    {:>12.0} /s   peer {:>12.0} /s   ratio {:.2}x (the same batches, each step for all before the next)\n\
         \x20 streamed:   {:>12.0} /s   peer {:>12.0} /s   ratio {:.2}x (one pipeline over {} at a time, as a worker's dispatch batch, the tuner's schedule; {})\n\
         \x20 peer with foldhash (the table's hash): {:>12.0} lookups/s; batched is {:.2}x that\n\
         \x20 memory:     {:>12.1} B/flow (flow struct {} B)   peer {:.1} B/flow\n",
        b.flows,
        b.rounds,
        b.insert_per_s,
        b.peer_insert_per_s,
        b.insert_per_s / b.peer_insert_per_s,
        b.batched_insert_per_s,
        b.peer_insert_per_s,
        b.batched_insert_per_s / b.peer_insert_per_s,
        b.warm_insert_per_s,
        b.peer_warm_insert_per_s,
        b.warm_insert_per_s / b.peer_warm_insert_per_s,
        b.lookup_per_s,
        b.peer_lookup_per_s,
        b.lookup_per_s / b.peer_lookup_per_s,
        b.batched_lookup_per_s,
        b.peer_lookup_per_s,
        b.batched_lookup_per_s / b.peer_lookup_per_s,
        BATCH,
        b.batched_schedule,
        b.fours_lookup_per_s,
        b.peer_lookup_per_s,
        b.fours_lookup_per_s / b.peer_lookup_per_s,
        GROUP,
        b.pipelined_lookup_per_s,
        b.peer_lookup_per_s,
        b.pipelined_lookup_per_s / b.peer_lookup_per_s,
        DISTANCE,
        b.grouped_lookup_per_s,
        b.peer_lookup_per_s,
        b.grouped_lookup_per_s / b.peer_lookup_per_s,
        b.streamed_lookup_per_s,
        b.peer_lookup_per_s,
        b.streamed_lookup_per_s / b.peer_lookup_per_s,
        STREAMED,
        b.streamed_schedule,
        b.peer_fast_lookup_per_s,
        b.batched_lookup_per_s / b.peer_fast_lookup_per_s,
        b.table_bytes_per_flow,
        b.flow_struct_bytes,
        b.peer_bytes_per_flow,
    )
}

#[derive(Debug, Serialize)]
pub struct ReplayBench {
    pub file: String,
    pub packets: u64,
    pub bytes: u64,
    pub flows: u64,
    pub runs: usize,
    /// In-process replay of the file held in memory, all flows in software.
    pub memory_pps: f64,
    /// The same with the demo classifier offloading to the sim NIC.
    pub memory_offload_pps: f64,
    /// Whole process: `flowtable replay FILE`, as it runs by default (the
    /// file mapped).
    pub process_s: f64,
    /// Whole process: `softflowd -r FILE`.
    pub softflowd_s: f64,
    pub softflowd_pps: f64,
    /// memory_pps / softflowd_pps.
    pub ratio_memory: f64,
    /// softflowd_s / process_s.
    pub ratio_process: f64,
    /// In memory, all in software, with each number of workers asked for.
    pub scaling: Vec<WorkersRun>,
    /// In memory, all in software, every record exported as IPFIX over UDP
    /// to a local socket (as `replay --ipfix`), in the same rounds as
    /// `memory_pps`.
    pub memory_ipfix_pps: f64,
    /// memory_ipfix_pps / memory_pps, median of the rounds' own ratios.
    pub ratio_ipfix: f64,
    /// CPU time of the whole process (every thread: reader, worker, offload
    /// thread, exporter) with export on over off, median of the rounds' own
    /// ratios: what the export costs whatever else the machine runs.
    pub cpu_ratio_ipfix: f64,
    /// Records and messages the last exporting run sent.
    pub ipfix_records: u64,
    pub ipfix_messages: u64,
    /// softflowd -r exporting IPFIX (`-v 10 -n`) to a local socket.
    pub softflowd_ipfix_s: f64,
    /// softflowd_s / softflowd_ipfix_s: its own cost of exporting.
    pub ratio_softflowd_ipfix: f64,
    /// Whole process, flowtable (reading and mapping the file) and each
    /// peer (softflowd, nfpcapd, argus), rounds alternating.
    pub processes: Vec<ProcessRun>,
}

/// A UDP socket standing in for a collector on another host: the kernel
/// takes each datagram into its queue, as it would hand it to a NIC, and
/// nothing on this machine spends time reading them (past its queue's
/// size they are dropped, which the exporter can't see, as on a network).
struct Sink {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    fn start() -> Result<Sink, String> {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("a local UDP socket: {e}"))?;
        s.set_read_timeout(Some(std::time::Duration::from_millis(20))).map_err(|e| e.to_string())?;
        let addr = s.local_addr().map_err(|e| e.to_string())?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            drop(s);
        });
        Ok(Sink { addr, stop, thread: Some(thread) })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkersRun {
    pub workers: usize,
    pub pps: f64,
    /// pps over the first worker count's.
    pub ratio: f64,
    /// The same flows, packets and bytes as with the first worker count.
    pub records_identical: bool,
    /// CPU time per packet of the reader thread, and of all workers
    /// together, in ns (medians): where the cores went.
    pub reader_ns_per_packet: f64,
    pub workers_ns_per_packet: f64,
    /// The least a reader can spend a packet: the capture's records read
    /// out of memory and nothing else, in ns (median of the rounds, the
    /// same for every row).
    pub read_floor_ns: f64,
    /// The cores this process may run on.
    pub cores: usize,
    /// The fastest this worker count could go here, packets a second: the
    /// reader at its floor and the workers at their measured CPU, on
    /// `cores` cores (the slowest of: both shared over the cores, the
    /// reader alone, one worker's share).
    pub ceiling_pps: f64,
}

/// CPU time (user and system, every thread) of this process so far, in s.
fn process_cpu_s() -> f64 {
    // SAFETY: all-zero is a valid rusage.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes the rusage it is given; RUSAGE_SELF needs no
    // other argument.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(u.ru_utime) + s(u.ru_stime)
}

/// Packets a second, and the reader's and all workers' CPU a packet in ns.
type WorkersRate = (f64, f64, f64);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A finished command's wall time and the CPU time (user and system, all
/// its threads) the kernel charged it.
#[derive(Debug, Clone, Copy)]
struct Timed {
    wall_s: f64,
    cpu_s: f64,
}

/// Runs a command to its end and returns its times; one that runs past
/// `limit` is killed and reported, so a peer that hangs can't hang the bench.
/// The CPU time comes from `wait4`'s resource usage: on a machine shared
/// with other work, wall time includes waiting for a core, CPU time doesn't.
fn time_command(cmd: &mut std::process::Command, limit: std::time::Duration) -> Result<Timed, String> {
    use std::process::Stdio;
    let name = format!("{:?}", cmd.get_program());
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{name}: {e}"))?;
    let pid = child.id() as libc::pid_t;
    // Waited for without waking: a poll every few milliseconds took a core
    // from the program measured, on a machine of two. A watchdog kills a
    // program past `limit`; the child is reaped only after the watchdog
    // is done, so the pid it may kill is still the child's.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: `pid` is our child, not reaped before this thread
            // ends (the `wait4` below comes after the join).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return true;
        }
        false
    });
    let exited = loop {
        // SAFETY: an all-zero siginfo is a valid value for the kernel to overwrite.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our own child; WNOWAIT leaves it to be reaped
        // below; `info` is valid for writes for the call's duration.
        let rc = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOWAIT) };
        let error = std::io::Error::last_os_error();
        if rc == 0 || error.kind() != std::io::ErrorKind::Interrupted {
            break if rc == 0 { Ok(()) } else { Err(error) };
        }
    };
    let wall_s = start.elapsed().as_secs_f64();
    let _ = done_tx.send(());
    let killed = watchdog.join().unwrap_or(false);
    exited.map_err(|e| format!("{name}: waiting for it: {e}"))?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for the kernel to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own child, exited and not yet reaped; `status`
    // and `usage` are valid for writes for the call's duration.
    if unsafe { libc::wait4(pid, &mut status, 0, &mut usage) } != pid {
        return Err(format!("{name}: reaping it: {}", std::io::Error::last_os_error()));
    }
    if killed {
        return Err(format!("{name} still running after {limit:?}; killed"));
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        return Ok(Timed { wall_s, cpu_s: tv(usage.ru_utime) + tv(usage.ru_stime) });
    }
    Err(format!("{name} failed: wait status {status:#x}"))
}

/// One program of the whole-process comparison: `flowtable replay` (read
/// or mapped), the floor under it (`flowtable bench walk`, whose ratio is
/// below 1 by nature), or a peer reading the same file. Rows are told
/// apart by `name`, not by their place in the list.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessRun {
    pub name: String,
    /// The command line, as run.
    pub command: String,
    /// Medians over the runs; 0 when skipped.
    pub wall_s: f64,
    pub cpu_s: f64,
    /// This program's time over flowtable's (mapped, its default), wall and CPU: above 1,
    /// flowtable is that many times faster.
    pub ratio_wall: f64,
    pub ratio_cpu: f64,
    /// Why it was not run (not installed, or it failed).
    pub skipped: Option<String>,
}

/// Walks every frame of the capture at `path` as `flowtable replay` does
/// (opened the same way, mapped unless the environment says otherwise),
/// touching nothing but the frames' lengths: the least a replay of it can
/// cost. Returns the frames and their captured bytes.
pub fn walk(path: &std::path::Path) -> Result<(u64, u64), String> {
    use crate::source::PacketSource;
    let mut source = crate::source::pcap::PcapFileSource::open(path, 0).map_err(|e| e.to_string())?;
    let (mut frames, mut bytes) = (0u64, 0u64);
    while let Some(frame) = source.next_packet().map_err(|e| e.to_string())? {
        frames += 1;
        bytes += frame.data.len() as u64;
    }
    Ok((frames, bytes))
}

/// Whether `program` can be found in `PATH` (or is a path that exists).
fn installed(program: &str) -> bool {
    let p = std::path::Path::new(program);
    if p.components().count() > 1 {
        return p.exists();
    }
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// The name of softflowd's row among [`replay_processes`]' programs.
const SOFTFLOWD_RUN: &str = "softflowd -r";

/// Times `flowtable replay FILE` (mapping the file, and reading it), the
/// floor under it (`flowtable bench walk FILE`), and each peer installed
/// here, `runs` rounds, the programs alternating within a
/// round so a burst of noise on a shared machine hits all alike, in an
/// order rotated from round to round; medians.
pub fn replay_processes(path: &std::path::Path, runs: usize) -> Result<Vec<ProcessRun>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let limit = std::time::Duration::from_secs(600);
    let scratch = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    // (name, package, program, arguments before the file, after it, environment)
    type Spec = (&'static str, &'static str, String, Vec<String>, Vec<String>, Option<(&'static str, &'static str)>);
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let pid = scratch.path().join("softflowd.pid").display().to_string();
    let nfdir = scratch.path().join("nfpcapd");
    // The first is the reference every ratio is taken against.
    let specs: Vec<Spec> = vec![
        ("flowtable replay (mapped)", "", exe.display().to_string(), s(&["replay", "--top", "0"]), vec![], None),
        (
            "flowtable replay (read)",
            "",
            exe.display().to_string(),
            s(&["replay", "--top", "0"]),
            vec![],
            Some((crate::source::pcap::MMAP_ENV, "0")),
        ),
        // The floor under both, timed in the same rounds so that how far
        // the replay is from what the file itself costs is a ratio of one
        // run, not a figure from another.
        ("floor: frames walked (mapped)", "", exe.display().to_string(), s(&["bench", "walk"]), vec![], None),
        // No control socket: with some socket paths softflowd 1.1.0 waits
        // on it forever after the file ends.
        (
            SOFTFLOWD_RUN,
            "softflowd",
            "softflowd".into(),
            s(&["-d", "-6", "-m", "4194304", "-c", "none", "-r"]),
            vec!["-p".into(), pid.clone()],
            None,
        ),
        ("nfpcapd -r", "nfdump", "nfpcapd".into(), s(&["-r"]), vec!["-w".into(), nfdir.display().to_string()], None),
        ("argus -r", "argus-server", "argus".into(), s(&["-r"]), s(&["-w", "/dev/null"]), None),
    ];
    let mut times: Vec<(Vec<Timed>, Option<String>)> = specs
        .iter()
        .map(|(_, package, program, ..)| {
            let why = (!installed(program)).then(|| format!("{program} not found (apt-get install {package})"));
            (Vec::new(), why)
        })
        .collect();
    for round in 0..runs.max(1) {
        // Each round starts one program later, so none always runs right
        // after the same one: after argus (2 s, much memory touched) the
        // next program's page faults measured up to 1.7x slower.
        let first = round % specs.len();
        for i in (first..specs.len()).chain(0..first) {
            let (spec, (timed, skipped)) = (&specs[i], &mut times[i]);
            if skipped.is_some() {
                continue;
            }
            let (_, _, program, before, after, env) = spec;
            // Fresh state each run: softflowd's pid file, nfpcapd's output.
            let _ = std::fs::remove_file(&pid);
            let _ = std::fs::remove_dir_all(&nfdir);
            std::fs::create_dir_all(&nfdir).map_err(|e| format!("{}: {e}", nfdir.display()))?;
            let mut cmd = std::process::Command::new(program);
            cmd.args(before).arg(path).args(after).env_remove(crate::source::pcap::MMAP_ENV);
            if let Some((k, v)) = env {
                cmd.env(k, v);
            }
            match time_command(&mut cmd, limit) {
                Ok(t) => timed.push(t),
                Err(e) if program == &exe.display().to_string() => return Err(e),
                Err(e) => *skipped = Some(e),
            }
        }
    }
    let med = |t: &[Timed], f: fn(&Timed) -> f64| median(t.iter().map(f).collect());
    let base = &times[0].0;
    let (base_wall, base_cpu) = (med(base, |t| t.wall_s), med(base, |t| t.cpu_s));
    Ok(specs
        .iter()
        .zip(times)
        .map(|((name, _, program, before, after, env), (timed, skipped))| {
            let command = format!(
                "{}{} {} {} {}",
                env.map_or(String::new(), |(k, v)| format!("{k}={v} ")),
                if program == &exe.display().to_string() { "flowtable" } else { program },
                before.join(" "),
                path.display(),
                after.join(" ")
            );
            let command = command.trim_end().to_string();
            match (skipped, timed.is_empty()) {
                (None, false) => {
                    let (wall_s, cpu_s) = (med(&timed, |t| t.wall_s), med(&timed, |t| t.cpu_s));
                    ProcessRun {
                        name: name.to_string(),
                        command,
                        wall_s,
                        cpu_s,
                        ratio_wall: wall_s / base_wall,
                        ratio_cpu: cpu_s / base_cpu,
                        skipped: None,
                    }
                }
                (why, _) => ProcessRun {
                    name: name.to_string(),
                    command,
                    wall_s: 0.0,
                    cpu_s: 0.0,
                    ratio_wall: 0.0,
                    ratio_cpu: 0.0,
                    skipped: why.or(Some("not run".into())),
                },
            }
        })
        .collect())
}

/// The whole-process comparison as a table.
pub fn processes_report(file: &str, runs: usize, procs: &[ProcessRun]) -> String {
    let mut o = format!(
        "whole process on {file}, median of {runs} runs, programs alternating within each run\n\
         \x20 (ratio: the program's time over flowtable replay's, which maps the file; CPU is user+system of all threads)\n"
    );
    for p in procs {
        match &p.skipped {
            None => o.push_str(&format!(
                "  {:<30} wall {:>7.3} s ({:>5.2}x)   CPU {:>7.3} s ({:>5.2}x)   {}\n",
                p.name, p.wall_s, p.ratio_wall, p.cpu_s, p.ratio_cpu, p.command
            )),
            Some(why) => o.push_str(&format!("  {:<30} skipped: {why}\n", p.name)),
        }
    }
    o
}

/// Writes the benches' synthetic mix of `packets` packets to `path`: a flow
/// for every 8 packets, 20,000 open at once.
pub fn write_synthetic_mix(path: &std::path::Path, packets: u64) -> Result<(), String> {
    let cfg = crate::source::synth::SynthConfig {
        flows: (packets / 8).max(1),
        max_packets: packets,
        concurrency: 20_000,
        ..Default::default()
    };
    let mut g = crate::source::synth::SyntheticSource::new(cfg).map_err(|e| e.to_string())?;
    g.write_pcap(path).map(|_| ()).map_err(|e| e.to_string())
}

/// Replays `file` (or synthetic traffic written to a temporary pcap) in
/// memory through the flow table, and times softflowd on the same file.
pub fn replay(
    file: Option<&std::path::Path>,
    packets: u64,
    runs: usize,
    workers: &[usize],
) -> Result<ReplayBench, String> {
    use crate::source::pcap::PcapFileSource;
    let tmp;
    let path = match file {
        Some(p) => p.to_path_buf(),
        None => {
            tmp = std::env::temp_dir().join(format!("flowtable-bench-{}.pcap", std::process::id()));
            write_synthetic_mix(&tmp, packets)?;
            tmp.clone()
        }
    };
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let config = |text: &str| flowtable_config::parse("bench", text).map_err(|e| e.to_string());
    let software = config(r#"{"table": {"max_flows": 4194304}}"#)?;
    let mut offload = config(crate::demo::DEMO_CONFIG)?;
    offload.table.max_flows = 4_194_304;

    let one = |c: &flowtable_config::Config| -> Result<(crate::replay::ReplaySummary, u64, f64), String> {
        let mut src = PcapFileSource::from_bytes(bytes.clone(), 0).map_err(|e| e.to_string())?;
        let cpu = process_cpu_s();
        let r = crate::replay::replay(&mut src, c, c.workers, crate::backend::build(c)?, |r| {
            black_box(r);
        })?;
        let cpu = process_cpu_s() - cpu;
        if let Some(e) = r.source_error {
            return Err(e.to_string());
        }
        Ok((r.summary, r.stats.flows_created, cpu))
    };
    // The same, every record exported as `replay --ipfix` does (each batch
    // of records as the workers made it to the exporter's thread, which
    // waits rather than drops).
    let collector = Sink::start()?;
    let exporting = |c: &flowtable_config::Config| -> Result<(f64, flowtable_export::SinkStatus, f64), String> {
        let mut src = PcapFileSource::from_bytes(bytes.clone(), 0).map_err(|e| e.to_string())?;
        let cpu = process_cpu_s();
        let ipfix = crate::export::ipfix_config(&c.export, collector.addr, flowtable_config::ExportTransport::Udp);
        let sinks = crate::export::start(&[ipfix], flowtable_export::QueueMode::Wait)?;
        let r = crate::replay::replay_batches(&mut src, c, c.workers, crate::backend::build(c)?, |batch| {
            sinks.send(&std::sync::Arc::new(batch));
        })?;
        // Timed as the replay without export is (from its threads started
        // to their last record), and on until the last message is out: the
        // export is part of the run.
        let closing = Instant::now();
        let status = sinks.close().remove(0);
        let wall = r.summary.wall_ns as f64 / 1e9 + closing.elapsed().as_secs_f64();
        Ok((r.summary.packets as f64 / wall, status, process_cpu_s() - cpu))
    };
    let scaling = if workers.is_empty() { Vec::new() } else { workers_scaling(&bytes, runs, workers)? };
    let (first, flows, first_cpu) = one(&software)?;
    let mut mem = vec![first.packets_per_second()];
    let mut off_cpu = first_cpu;
    let mut mem_ipfix = Vec::new();
    let mut ipfix_ratios = Vec::new();
    let mut ipfix_cpu_ratios = Vec::new();
    let mut last_export = None;
    let mut sf_ipfix_s = Vec::new();
    let mut mem_off = Vec::new();
    let limit = std::time::Duration::from_secs(600);
    for run in 0..runs {
        // softflowd keeps a pid file: a fresh one each run.
        let pid = std::env::temp_dir().join(format!("flowtable-bench-{}-{run}.pid", std::process::id()));
        if run > 0 {
            let (summary, _, cpu) = one(&software)?;
            mem.push(summary.packets_per_second());
            off_cpu = cpu;
        }
        // Export on, right after export off: the same moment of a noisy machine.
        let (pps, status, cpu) = exporting(&software)?;
        ipfix_cpu_ratios.push(cpu / off_cpu.max(1e-9));
        if status.dropped > 0 || status.exported != flows {
            return Err(format!("the IPFIX export lost records: {status:?}"));
        }
        ipfix_ratios.push(pps / mem[mem.len() - 1]);
        mem_ipfix.push(pps);
        last_export = Some(status);
        mem_off.push(one(&offload)?.0.packets_per_second());
        sf_ipfix_s.push(
            time_command(
                std::process::Command::new("softflowd")
                    .args(["-d", "-6", "-m", "4194304", "-c", "none", "-v", "10", "-n"])
                    .arg(collector.addr.to_string())
                    .arg("-r")
                    .arg(&path)
                    .arg("-p")
                    .arg(&pid),
                limit,
            )
            .map_err(|e| format!("{e} (the peer: apt-get install softflowd)"))?
            .wall_s,
        );
        let _ = std::fs::remove_file(&pid);
    }
    let processes = replay_processes(&path, runs)?;
    if file.is_none() {
        let _ = std::fs::remove_file(&path);
    }
    let flowtable_run = &processes[0];
    let Some(softflowd_run) = processes.iter().find(|p| p.name == SOFTFLOWD_RUN) else {
        return Err("the peer softflowd was not among the programs timed".into());
    };
    if let Some(why) = &softflowd_run.skipped {
        return Err(format!("the peer softflowd: {why}"));
    }
    let (memory_pps, softflowd_s, process_s) = (median(mem), softflowd_run.wall_s, flowtable_run.wall_s);
    let softflowd_pps = first.packets as f64 / softflowd_s;
    Ok(ReplayBench {
        file: file.map_or("(synthetic)".to_string(), |p| p.display().to_string()),
        packets: first.packets,
        bytes: first.bytes,
        flows,
        runs,
        memory_pps,
        memory_offload_pps: median(mem_off),
        process_s,
        softflowd_s,
        softflowd_pps,
        ratio_memory: memory_pps / softflowd_pps,
        ratio_process: softflowd_s / process_s,
        scaling,
        memory_ipfix_pps: median(mem_ipfix),
        ratio_ipfix: median(ipfix_ratios),
        cpu_ratio_ipfix: median(ipfix_cpu_ratios),
        ipfix_records: last_export.as_ref().map_or(0, |s| s.exported),
        ipfix_messages: last_export.as_ref().map_or(0, |s| s.messages),
        softflowd_ipfix_s: median(sf_ipfix_s.clone()),
        ratio_softflowd_ipfix: softflowd_s / median(sf_ipfix_s),
        processes,
    })
}

/// `bench replay --workers-only`: the scaling figure alone, over `file` or
/// the synthetic mix of `packets` packets.
pub fn workers_only(
    file: Option<&std::path::Path>,
    packets: u64,
    runs: usize,
    workers: &[usize],
) -> Result<Vec<WorkersRun>, String> {
    let (bytes, _) = crate::bench_stages::capture_bytes(file, packets)?;
    workers_scaling(&bytes, runs, workers)
}

/// The same replay in memory, all in software, with each number of workers
/// in `workers`, rounds alternating, and each worker count's records
/// compared with the first's.
pub fn workers_scaling(bytes: &[u8], runs: usize, workers: &[usize]) -> Result<Vec<WorkersRun>, String> {
    use crate::source::pcap::PcapFileSource;
    let software =
        flowtable_config::parse("bench", r#"{"table": {"max_flows": 4194304}}"#).map_err(|e| e.to_string())?;
    let with_workers = |c: &flowtable_config::Config,
                        n: usize|
     -> Result<(WorkersRate, u64, Vec<crate::replay::RecordFacts>), String> {
        let mut src = PcapFileSource::from_bytes(bytes.to_vec(), 0).map_err(|e| e.to_string())?;
        let mut facts = Vec::new();
        let r = crate::replay::replay(&mut src, c, n, crate::backend::build(c)?, |r| {
            facts.push(crate::replay::record_facts(r))
        })?;
        facts.sort_unstable();
        let per_packet = |ns: u64| ns as f64 / r.summary.packets.max(1) as f64;
        let workers_cpu = r.workers.iter().map(|w| w.cpu_ns).sum::<u64>();
        let rate = (r.summary.packets_per_second(), per_packet(r.summary.reader_cpu_ns), per_packet(workers_cpu));
        Ok((rate, r.summary.packets, facts))
    };
    let mut scaling: Vec<WorkersRun> = Vec::new();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); workers.len()];
    let mut reader_ns: Vec<Vec<f64>> = vec![Vec::new(); workers.len()];
    let mut workers_ns: Vec<Vec<f64>> = vec![Vec::new(); workers.len()];
    let mut first_facts: Option<Vec<crate::replay::RecordFacts>> = None;
    let mut same = vec![true; workers.len()];
    // The reader's floor: `bench stages`' first pass, the records read and
    // nothing else.
    let (mut floor_s, mut packets) = (Vec::new(), 0);
    for _ in 0..runs {
        floor_s.push(crate::bench_stages::pass(bytes, 1, &software)?);
        for (i, &n) in workers.iter().enumerate() {
            let ((pps, reader, workers), replayed, facts) = with_workers(&software, n)?;
            packets = replayed;
            rates[i].push(pps);
            reader_ns[i].push(reader);
            workers_ns[i].push(workers);
            match &first_facts {
                None => first_facts = Some(facts),
                Some(f) => same[i] &= *f == facts,
            }
        }
    }
    let base = median(rates[0].clone());
    let floor = median(floor_s) * 1e9 / packets.max(1) as f64;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (i, &n) in workers.iter().enumerate() {
        let pps = median(rates[i].clone());
        let workers_ns = median(workers_ns[i].clone());
        // The cores' time shared by all threads, the reader's own, and each
        // worker's share: the longest of the three sets the pace.
        let ceiling_ns = ((floor + workers_ns) / cores as f64).max(floor).max(workers_ns / n.max(1) as f64);
        scaling.push(WorkersRun {
            workers: n,
            pps,
            ratio: pps / base,
            records_identical: same[i],
            reader_ns_per_packet: median(reader_ns[i].clone()),
            workers_ns_per_packet: workers_ns,
            read_floor_ns: floor,
            cores,
            ceiling_pps: 1e9 / ceiling_ns.max(1e-3),
        });
    }
    Ok(scaling)
}

pub fn replay_report(b: &ReplayBench) -> String {
    let mut o = format!(
        "replay of {} ({} packets, {} flows), median of {} runs (peer: softflowd -r on the same file)\n\
         \x20 flowtable, file in memory, all in software: {:>12.0} packets/s   ratio {:.2}x softflowd\n\
         \x20 flowtable, file in memory, offload to sim:  {:>12.0} packets/s\n\
         \x20 whole process, the file mapped: flowtable {:.3} s, softflowd {:.3} s ({:.0} packets/s)   ratio {:.2}x\n\
         \x20 flowtable, file in memory, IPFIX export on: {:>12.0} packets/s   {:.3}x export off, CPU time {:.3}x export off's ({} records, {} messages)\n\
         \x20 softflowd -r with IPFIX export (-v 10 -n): {:.3} s   {:.3}x export off\n",
        b.file,
        b.packets,
        b.flows,
        b.runs,
        b.memory_pps,
        b.ratio_memory,
        b.memory_offload_pps,
        b.process_s,
        b.softflowd_s,
        b.softflowd_pps,
        b.ratio_process,
        b.memory_ipfix_pps,
        b.ratio_ipfix,
        b.cpu_ratio_ipfix,
        b.ipfix_records,
        b.ipfix_messages,
        b.softflowd_ipfix_s,
        b.ratio_softflowd_ipfix,
    );
    o.push_str(&processes_report(&b.file, b.runs, &b.processes));
    o.push_str(&scaling_report(&b.scaling));
    o
}

/// One line a worker count.
pub fn scaling_report(scaling: &[WorkersRun]) -> String {
    let mut o = String::new();
    let Some(first) = scaling.first() else { return o };
    o.push_str(&format!(
        "  reader's floor (the records read out of memory, nothing else): {:.0} ns a packet; {} cores\n",
        first.read_floor_ns, first.cores
    ));
    for w in scaling {
        o.push_str(&format!(
            "  {} worker{}: {:>12.0} packets/s in memory   {:.2}x the first   records {}   CPU a packet: reader {:.0} ns, workers {:.0} ns\n",
            w.workers,
            if w.workers == 1 { " " } else { "s" },
            w.pps,
            w.ratio,
            if w.records_identical { "identical" } else { "DIFFER" },
            w.reader_ns_per_packet,
            w.workers_ns_per_packet
        ));
        o.push_str(&format!(
            "             ceiling here, the reader at its floor: {:>12.0} packets/s   {:.2}x the first's ceiling\n",
            w.ceiling_pps,
            w.ceiling_pps / first.ceiling_pps
        ));
    }
    o
}

/// The memory-latency limit: loads that each depend on the one before
/// (a pointer chase), and `k` such chases interleaved, as a batch of
/// lookups overlaps its misses.
#[derive(Debug, Serialize)]
pub struct ChaseBench {
    /// Bytes chased over: the flow table's own allocation for `flows`.
    pub bytes: usize,
    pub flows: usize,
    /// Each result: chains interleaved, ns per load, loads per second.
    pub runs: Vec<ChaseRun>,
    /// The same over memory advised for huge pages, as the flow table
    /// advises its arrays (`flowtable_sw::memory`), and how much of it the
    /// kernel did back with them.
    pub huge_runs: Vec<ChaseRun>,
    pub huge_backed_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct ChaseRun {
    pub chains: usize,
    pub ns_per_load: f64,
    pub loads_per_s: f64,
}

/// One 64-byte line of the chase: the index of the next.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line {
    next: u32,
}

/// `loads` loads over `lines`, `K` chains at once, starting `K` places
/// spread around the one cycle; the seconds taken.
fn chase_k<const K: usize>(lines: &[Line], loads: usize) -> f64 {
    let mut at = [0u32; K];
    for (c, a) in at.iter_mut().enumerate() {
        // Walk to spread the starts (untimed, short for small K).
        *a = (c * lines.len() / K) as u32;
    }
    let start = Instant::now();
    for _ in 0..loads / K {
        for a in at.iter_mut() {
            *a = lines[*a as usize].next;
        }
    }
    black_box(at);
    start.elapsed().as_secs_f64()
}

/// The chase over as much memory as a flow table of `flows` allocates
/// (`FlowTable::heap_bytes`), in one random cycle through its 64-byte
/// lines (Sattolo's shuffle), so no prefetcher can guess the next line;
/// the pages are the ordinary 4 kB ones the table has, so each load may
/// miss the TLB too, as a lookup's may. `rounds` alternate the chain counts.
pub fn chase(flows: usize, loads: usize, rounds: usize) -> ChaseBench {
    let bytes = FlowTable::new(TableConfig { max_flows: flows, ..Default::default() }).heap_bytes();
    let n = (bytes / 64).max(2);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let mut order: Vec<u32> = (0..n as u32).collect();
    for i in (1..n).rev() {
        let j = rng.gen_range(0..i);
        order.swap(i, j);
    }
    let build = |huge: bool| {
        let mut lines: Vec<Line> = Vec::with_capacity(n);
        if huge {
            flowtable_sw::memory::advise_huge_pages(lines.as_mut_ptr().cast(), n * 64);
        }
        lines.resize(n, Line { next: 0 });
        for w in 0..n {
            lines[order[w] as usize].next = order[(w + 1) % n];
        }
        lines
    };
    let (small, huge) = (build(false), build(true));
    let huge_backed_bytes = anon_huge_bytes();
    drop(order);
    let counts = [1usize, 2, 4, 8, 16, 32];
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); counts.len() * 2];
    for _ in 0..rounds.max(1) {
        for (i, &k) in counts.iter().enumerate() {
            for (j, lines) in [&small, &huge].into_iter().enumerate() {
                let s = match k {
                    1 => chase_k::<1>(lines, loads),
                    2 => chase_k::<2>(lines, loads),
                    4 => chase_k::<4>(lines, loads),
                    8 => chase_k::<8>(lines, loads),
                    16 => chase_k::<16>(lines, loads),
                    _ => chase_k::<32>(lines, loads),
                };
                secs[i + j * counts.len()].push(s);
            }
        }
    }
    let mut runs: Vec<ChaseRun> = counts
        .iter()
        .cycle()
        .zip(secs)
        .map(|(&chains, s)| {
            let s = median(s);
            let done = (loads / chains * chains) as f64;
            ChaseRun { chains, ns_per_load: s * 1e9 / done, loads_per_s: done / s }
        })
        .collect();
    let huge_runs = runs.split_off(counts.len());
    ChaseBench { bytes: n * 64, flows, runs, huge_runs, huge_backed_bytes }
}

/// This process's anonymous memory backed by huge pages (smaps_rollup).
pub fn anon_huge_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("AnonHugePages:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

pub fn chase_report(b: &ChaseBench) -> String {
    let mut o = format!(
        "pointer chase over {:.1} MB (a flow table of {} flows), 64-byte lines in one random cycle, 4 kB pages\n",
        b.bytes as f64 / 1e6,
        b.flows
    );
    o.push_str(&format!(
        "  (right: the same memory advised for huge pages as the table's arrays are; {:.1} MB of the process backed by them)\n",
        b.huge_backed_bytes as f64 / 1e6
    ));
    for (r, h) in b.runs.iter().zip(&b.huge_runs) {
        o.push_str(&format!(
            "  {:>2} chain{} at once: {:>7.1} ns per load {:>12.0} loads/s   huge pages: {:>7.1} ns {:>12.0} loads/s\n",
            r.chains,
            if r.chains == 1 { " " } else { "s" },
            r.ns_per_load,
            r.loads_per_s,
            h.ns_per_load,
            h.loads_per_s
        ));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each way looks up every part once a round, and at each step the
    /// ways look up different parts (so none finds the flows another just
    /// brought into the cache) whenever there are parts enough.
    #[test]
    fn each_way_looks_up_every_part_once_and_apart_from_the_others() {
        for parts in 1..50 {
            for way in 0..WAYS {
                let mut seen: Vec<usize> = (0..parts).map(|p| way_part(p, way, parts)).collect();
                seen.sort_unstable();
                assert_eq!(seen, (0..parts).collect::<Vec<_>>(), "way {way} over {parts} parts");
            }
            if parts >= WAYS {
                for part in 0..parts {
                    let mut at: Vec<usize> = (0..WAYS).map(|w| way_part(part, w, parts)).collect();
                    at.sort_unstable();
                    at.dedup();
                    assert_eq!(at.len(), WAYS, "two ways share a part at step {part} of {parts}");
                }
            }
        }
    }

    /// A small run of the whole bench: its own check that each counting
    /// way counted every lookup once holds, and every figure is a rate.
    #[test]
    fn table_bench_counts_every_lookup_once() {
        let b = table(5_000, 3 * (1 << 16) + 1_000, 2);
        for rate in
            [b.lookup_per_s, b.find_per_s, b.batched_lookup_per_s, b.streamed_lookup_per_s, b.grouped_lookup_per_s]
        {
            assert!(rate.is_finite() && rate > 0.0, "{rate}");
        }
    }
}
