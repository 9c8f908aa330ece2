//! Where a packet's time goes on one core (`flowtable bench stages`): the
//! same capture, in memory, through more and more of the packet path on
//! one thread, each stage's own cost the difference from the one before;
//! and the threaded replay (reader, worker, offload thread) over the same
//! bytes in the same rounds, for the figure the rest is compared with.

use crate::source::pcap::PcapFileSource;
use crate::source::PacketSource;
use flowtable_offload::Engine;
use flowtable_sw::parse::parse_packet;
use flowtable_sw::PacketInfo;
use serde::Serialize;
use std::hint::black_box;
use std::time::Instant;

/// Packets handed to the engine at a time, as a worker gets them.
const BATCH: usize = crate::runtime::DISPATCH_BATCH;

#[derive(Debug, Clone, Serialize)]
pub struct StagesBench {
    pub file: String,
    pub packets: u64,
    pub flows: u64,
    pub rounds: usize,
    pub stages: Vec<StageRun>,
    /// The whole path on one thread, packets a second.
    pub one_core_pps: f64,
    /// `flowtable replay`'s threads over the same bytes, packets a second,
    /// and the CPU time a packet of its reader and its worker, in ns.
    pub threaded_pps: f64,
    pub threaded_reader_ns: f64,
    pub threaded_worker_ns: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StageRun {
    pub name: &'static str,
    /// What the pass does on top of the one before.
    pub adds: &'static str,
    /// ns a packet of the whole pass (median of the rounds).
    pub ns_per_packet: f64,
    /// ns a packet of this stage alone: the difference from the pass before.
    pub own_ns: f64,
}

const STAGES: [(&str, &str); 4] = [
    ("read", "pcap records out of the capture in memory"),
    ("parse", "link layer, IP, transport: the flow key and what is counted"),
    ("batch", "packets gathered 256 at a time, as a worker gets them"),
    ("engine", "the flow table, counters, TCP tracking, classification, timers, records"),
];

/// One pass over `bytes` through the first `depth` stages; its seconds.
pub(crate) fn pass(bytes: &[u8], depth: usize, config: &flowtable_config::Config) -> Result<f64, String> {
    let ports = config.port_map().unwrap_or_default();
    let mut src = PcapFileSource::from_bytes(bytes.to_vec(), 0).map_err(|e| e.to_string())?;
    let mut engine = if depth >= 4 { Some(Engine::from_config(config, crate::backend::build(config)?)?) } else { None };
    let mut batch: Vec<PacketInfo> = Vec::with_capacity(BATCH);
    let mut times: Vec<u64> = Vec::with_capacity(BATCH);
    let mut next_poll = 0u64;
    let mut now = 0u64;
    let started = Instant::now();
    let mut sum = 0u64;
    loop {
        let pkt = match src.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => return Err(e.to_string()),
        };
        if depth == 1 {
            sum = sum.wrapping_add(pkt.data.len() as u64);
            continue;
        }
        now = now.max(pkt.ts_ns);
        let Some(link) = pkt.link else { continue };
        let Ok(info) = parse_packet(link, pkt.data, pkt.wire_len, ports.ingress(pkt.ingress)) else { continue };
        if depth == 2 {
            black_box(&info);
            continue;
        }
        batch.push(info);
        times.push(now);
        // Polled on the capture's clock, as a replay's workers are.
        let poll_due = now >= next_poll;
        if batch.len() == BATCH || poll_due {
            match engine.as_mut() {
                Some(e) => {
                    e.process_batch(&batch, &times);
                    if poll_due {
                        e.poll(now);
                        black_box(e.drain_records());
                    }
                }
                None => {
                    black_box(&batch);
                }
            }
            if poll_due {
                next_poll = now + crate::runtime::POLL_TICK_NS;
            }
            batch.clear();
            times.clear();
        }
    }
    if let Some(e) = engine.as_mut() {
        e.process_batch(&batch, &times);
        e.poll(now);
        black_box(e.drain_records());
    }
    let secs = started.elapsed().as_secs_f64();
    black_box(sum);
    Ok(secs)
}

/// The capture's bytes and name: `file`, or the synthetic mix `bench
/// replay` uses, written to a temporary pcap and read back.
pub(crate) fn capture_bytes(file: Option<&std::path::Path>, packets: u64) -> Result<(Vec<u8>, String), String> {
    if let Some(f) = file {
        let bytes = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
        return Ok((bytes, f.display().to_string()));
    }
    let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let path = dir.path().join("synthetic.pcap");
    crate::bench::write_synthetic_mix(&path, packets)?;
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((bytes, "(synthetic)".into()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The stages over `file`, or over synthetic traffic of `packets` packets
/// written to a temporary pcap first; `rounds` rounds, stages alternating.
pub fn stages(file: Option<&std::path::Path>, packets: u64, rounds: usize) -> Result<StagesBench, String> {
    let (bytes, name) = capture_bytes(file, packets)?;
    let config = flowtable_config::parse("bench", r#"{"table": {"max_flows": 4194304}}"#).map_err(|e| e.to_string())?;
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); STAGES.len()];
    let (mut threaded, mut reader_ns, mut worker_ns) = (Vec::new(), Vec::new(), Vec::new());
    let (mut count, mut flows) = (0u64, 0u64);
    for _ in 0..rounds.max(1) {
        for (i, s) in secs.iter_mut().enumerate() {
            s.push(pass(&bytes, i + 1, &config)?);
        }
        let mut src = PcapFileSource::from_bytes(bytes.clone(), 0).map_err(|e| e.to_string())?;
        let r = crate::replay::replay(&mut src, &config, 1, crate::backend::build(&config)?, |r| {
            black_box(r);
        })?;
        count = r.summary.packets;
        flows = r.stats.flows_created;
        let per = |ns: u64| ns as f64 / count.max(1) as f64;
        threaded.push(r.summary.packets_per_second());
        reader_ns.push(per(r.summary.reader_cpu_ns));
        worker_ns.push(per(r.workers.iter().map(|w| w.cpu_ns).sum()));
    }
    let mut stages = Vec::new();
    let mut before = 0.0;
    for (i, (name, adds)) in STAGES.iter().enumerate() {
        let ns = median(secs[i].clone()) * 1e9 / count.max(1) as f64;
        stages.push(StageRun { name, adds, ns_per_packet: ns, own_ns: ns - before });
        before = ns;
    }
    Ok(StagesBench {
        file: name,
        packets: count,
        flows,
        rounds: rounds.max(1),
        one_core_pps: 1e9 / before.max(1e-9),
        threaded_pps: median(threaded),
        threaded_reader_ns: median(reader_ns),
        threaded_worker_ns: median(worker_ns),
        stages,
    })
}

pub fn stages_report(b: &StagesBench) -> String {
    let mut o = format!(
        "{} ({} packets, {} flows), in memory, one thread, median of {} rounds (stages alternating)\n",
        b.file, b.packets, b.flows, b.rounds
    );
    for s in &b.stages {
        o.push_str(&format!(
            "  {:<7} {:>7.1} ns a packet   own {:>6.1} ns   {}\n",
            s.name, s.ns_per_packet, s.own_ns, s.adds
        ));
    }
    o.push_str(&format!(
        "  one core, the whole path: {:.0} packets/s; flowtable replay's threads, same bytes, same rounds: {:.0} packets/s ({:.2}x one core; CPU a packet: reader {:.0} ns, worker {:.0} ns)\n",
        b.one_core_pps,
        b.threaded_pps,
        b.threaded_pps / b.one_core_pps,
        b.threaded_reader_ns,
        b.threaded_worker_ns
    ));
    o
}
