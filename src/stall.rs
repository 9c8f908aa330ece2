//! `flowtable bench stall`: how long packets wait on the slow path when the
//! NIC is slow. A sim NIC whose calls take as long as a real one's under
//! load (by default 200 ms a counter dump, 1 ms a rule) is driven with
//! steady traffic whose flows all go to hardware, twice in the same run:
//! once with one thread doing everything (the engine stepped on the packet
//! thread, as before workers and an offload thread existed), once with the
//! workers and the offload thread. Reported: the longest stretch a worker
//! (or the one thread) spent away from packets.

use crate::runtime::{Clock, Runtime, RuntimeConfig, WorkerTimes};
use flowtable_config::Config;
use flowtable_offload::{Classifier, Engine, BATCH};
use flowtable_sw::{FlowKey, PacketInfo};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct StallArgs {
    /// Flows in the traffic; each is offloaded after its second packet.
    #[arg(long, default_value_t = 4000, value_parser = crate::args::whole::<u32>)]
    pub flows: u32,
    /// Packets per second offered.
    #[arg(long, default_value_t = 200_000, value_parser = crate::args::whole::<u64>)]
    pub rate: u64,
    /// Seconds of traffic for each side.
    #[arg(long, default_value_t = 4.0, value_parser = crate::args::number)]
    pub seconds: f64,
    /// Milliseconds one counter read (a dump of every rule) takes.
    #[arg(long, default_value_t = 200, value_parser = crate::args::whole::<u64>)]
    pub read_ms: u64,
    /// Microseconds each rule installed or removed takes.
    #[arg(long, default_value_t = 1000, value_parser = crate::args::whole::<u64>)]
    pub rule_us: u64,
    /// Workers for the threaded side.
    #[arg(long, default_value_t = 1, value_parser = crate::args::whole::<usize>)]
    pub workers: usize,
    /// Use this configuration (its backend, e.g. tc in the VM) instead of
    /// the slow sim NIC.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// The figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct StallBench {
    pub backend: String,
    pub flows: u32,
    pub rate_pps: u64,
    /// One thread doing everything: the longest poll, in ms.
    pub one_thread_longest_ms: f64,
    /// The CPU time of its longest poll (the rest was waiting on the NIC).
    pub one_thread_longest_cpu_ms: f64,
    pub one_thread_packets: u64,
    /// Workers and an offload thread: the longest pause of any worker, ms.
    pub workers_longest_ms: f64,
    pub workers_packets: u64,
    pub workers: Vec<WorkerTimes>,
    pub rules_installed_one_thread: u64,
    pub rules_installed_workers: u64,
}

const CLASSIFIER: &str = r#"{"rules": [{"name": "all", "match": {}, "trigger": {"after_packets": 2},
    "result": {"offload": {"type": "drop"}}}]}"#;

fn config(a: &StallArgs) -> Result<Config, String> {
    if let Some(p) = &a.config {
        return flowtable_config::load(p).map_err(|e| e.to_string());
    }
    let text = format!(
        r#"{{"classifier": {CLASSIFIER},
            "backend": {{"kind": "sim", "max_rules": 1000000, "insert_rate": 1000000,
                        "latency": {{"per_rule_us": {}, "per_read_ms": {}}}}},
            "offload": {{"poll_interval_ms": 1000, "batch_size": 256, "max_queued": 1000000}},
            "timeouts": {{"udp_s": 600}}}}"#,
        a.rule_us, a.read_ms
    );
    flowtable_config::parse("(stall bench)", &text).map_err(|e| e.to_string())
}

/// The traffic: every flow in turn, one packet each, UDP.
struct Traffic {
    flows: u32,
    next: u32,
}

impl Traffic {
    fn packet(&mut self) -> PacketInfo {
        let i = self.next;
        self.next = (self.next + 1) % self.flows.max(1);
        let client = Ipv4Addr::from(0x0a00_0000 | i);
        let (key, dir) = FlowKey::from_v4(client, Ipv4Addr::new(192, 0, 2, 1), 10_000 + (i % 50_000) as u16, 53, 17);
        PacketInfo::whole(key, dir, 0, 100, 0)
    }
}

/// Waits until `sent` packets are due at `rate` since `start`.
fn pace(start: Instant, sent: u64, rate: u64) {
    let due = Duration::from_secs_f64(sent as f64 / rate.max(1) as f64);
    if let Some(wait) = due.checked_sub(start.elapsed()) {
        std::thread::sleep(wait);
    }
}

pub fn run(a: &StallArgs) -> Result<StallBench, String> {
    let cfg = config(a)?;
    let duration = Duration::from_secs_f64(a.seconds.max(0.5));
    let clock = Clock::new();

    // One thread: the engine polled on the packet thread every 10 ms, its
    // backend calls made there.
    let mut engine = Engine::from_config(&cfg, crate::backend::build(&cfg)?)?;
    let backend = engine.backend().name().to_string();
    let mut traffic = Traffic { flows: a.flows, next: 0 };
    let (mut sent, mut longest, mut longest_cpu) = (0u64, Duration::ZERO, 0u64);
    let start = Instant::now();
    let mut next_poll = clock.now();
    let mut pkts = Vec::with_capacity(BATCH);
    let mut ts = Vec::with_capacity(BATCH);
    while start.elapsed() < duration {
        pkts.clear();
        ts.clear();
        let now = clock.now();
        for _ in 0..BATCH {
            let p = traffic.packet();
            if !engine.offer_to_nic(&p, now) {
                pkts.push(p);
                ts.push(now);
            }
        }
        engine.process_batch(&pkts, &ts);
        sent += BATCH as u64;
        if now >= next_poll {
            let (t, cpu) = (Instant::now(), crate::runtime::thread_cpu_ns());
            engine.poll(now);
            longest = longest.max(t.elapsed());
            longest_cpu = longest_cpu.max(crate::runtime::thread_cpu_ns().saturating_sub(cpu));
            next_poll = now + crate::runtime::POLL_TICK_NS;
        }
        pace(start, sent, a.rate);
    }
    let installed_one = engine.stats().rules_installed;
    engine.shutdown(false);
    let one_thread = (longest, sent);

    // Workers and the offload thread: the same traffic, the same backend.
    let classifier = Classifier::new(&cfg.classifier)?;
    let rt_config = RuntimeConfig::from_config(&cfg, a.workers, false);
    let mut rt = Runtime::start(rt_config, classifier, crate::backend::build(&cfg)?, clock.clone())?;
    let mut dispatch = rt.dispatcher();
    let mut traffic = Traffic { flows: a.flows, next: 0 };
    let mut sent = 0u64;
    let start = Instant::now();
    let mut next_tick = clock.now();
    while start.elapsed() < duration {
        let now = clock.now();
        for _ in 0..BATCH {
            let p = traffic.packet();
            if !dispatch.offer(&p, now) {
                dispatch.push(p, now, None);
            }
        }
        sent += BATCH as u64;
        if now >= next_tick {
            dispatch.tick(now);
            next_tick = now + crate::runtime::POLL_TICK_NS;
        }
        pace(start, sent, a.rate);
    }
    drop(dispatch);
    let installed_workers = rt.offload_status().stats.rules_installed;
    let output = rt.output.clone();
    let finished = rt.shutdown(false)?;
    drop(output);
    let workers_longest = finished.times.iter().map(|t| t.longest_pause_ns.max(t.longest_gap_ns)).max().unwrap_or(0);
    Ok(StallBench {
        backend,
        flows: a.flows,
        rate_pps: a.rate,
        one_thread_longest_ms: one_thread.0.as_secs_f64() * 1e3,
        one_thread_longest_cpu_ms: longest_cpu as f64 / 1e6,
        one_thread_packets: one_thread.1,
        workers_longest_ms: workers_longest as f64 / 1e6,
        workers_packets: sent,
        workers: finished.times,
        rules_installed_one_thread: installed_one,
        rules_installed_workers: installed_workers,
    })
}

pub fn report(b: &StallBench) -> String {
    let mut o = format!(
        "packet path against a slow backend ({}), {} flows at {} packets/s, all offloaded\n\
         \x20 one thread doing everything:     longest stretch away from packets {:>9.2} ms, {:.2} ms of it on the CPU ({} rules installed)\n\
         \x20 workers and an offload thread:   longest stretch away from packets {:>9.2} ms ({} rules installed)\n",
        b.backend,
        b.flows,
        b.rate_pps,
        b.one_thread_longest_ms,
        b.one_thread_longest_cpu_ms,
        b.rules_installed_one_thread,
        b.workers_longest_ms,
        b.rules_installed_workers,
    );
    for (i, w) in b.workers.iter().enumerate() {
        o.push_str(&format!(
            "    worker {i}: {} batches, longest pause {:.2} ms, longest gap with packets waiting {:.2} ms, \
             longest poll on the CPU {:.2} ms\n",
            w.batches,
            w.longest_pause_ns as f64 / 1e6,
            w.longest_gap_ns as f64 / 1e6,
            w.longest_poll_cpu_ns as f64 / 1e6
        ));
    }
    o
}
