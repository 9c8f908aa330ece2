//! `flowtable bench control`: what the control socket costs. A real daemon
//! (the same `run` as `flowtable run`, in this process, sim backend,
//! synthetic traffic replayed fast) is measured twice over:
//!
//! - requests per second a client gets through the socket with a million
//!   live flows: the top 100 by bytes, by rate, `stats`, one flow;
//! - the packet rate of the packet loop with no client, and with a client
//!   polling `stats` and the top 20 every 100 ms (what `watch` does), runs
//!   alternated so drift hits both sides alike.

use super::{Controls, RunSummary};
use crate::client::Client;
use crate::control::{Command, FlowsPage, SortKey, Stats};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct ControlBenchArgs {
    /// Live flows while requests are measured.
    #[arg(long, default_value_t = 1_000_000, value_parser = crate::args::whole::<u64>)]
    pub flows: u64,
    /// Requests of each kind measured.
    #[arg(long, default_value_t = 200, value_parser = crate::args::whole::<usize>)]
    pub requests: usize,
    /// Packets per packet-rate run.
    #[arg(long, default_value_t = 4_000_000, value_parser = crate::args::whole::<u64>)]
    pub packets: u64,
    /// Packet-rate runs of each side; the median is reported.
    #[arg(long, default_value_t = 3, value_parser = crate::args::whole::<usize>)]
    pub runs: usize,
    /// The polling client's period.
    #[arg(long, default_value_t = 100, value_parser = crate::args::whole::<u64>)]
    pub poll_ms: u64,
    /// Clients asking for the top 10,000 flows by rate back to back, in
    /// the runs measuring what heavy queries cost the packet loop (0: no
    /// such runs).
    #[arg(long, default_value_t = 8, value_parser = crate::args::whole::<usize>)]
    pub hammer_clients: usize,
    /// The figures as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RequestRate {
    pub request: String,
    pub per_second: f64,
    pub median_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ControlBench {
    pub live_flows: usize,
    pub fill_s: f64,
    pub requests: Vec<RequestRate>,
    pub packets_per_run: u64,
    /// Packets per second of wall time, each run.
    pub pps_no_client: Vec<f64>,
    pub pps_polled: Vec<f64>,
    /// Packets per second of the engine thread's CPU time, each run: what
    /// the loop does with the CPU it gets, whatever else the machine runs.
    pub cpu_pps_no_client: Vec<f64>,
    pub cpu_pps_polled: Vec<f64>,
    pub polls: Vec<u64>,
    pub median_pps_no_client: f64,
    pub median_pps_polled: f64,
    /// How much slower the loop ran with the client polling, in % of wall rate.
    pub polling_cost_pct: f64,
    pub median_cpu_pps_no_client: f64,
    pub median_cpu_pps_polled: f64,
    /// The same in % of the CPU rate.
    pub polling_cost_cpu_pct: f64,
    /// Share of the engine thread's CPU the answers took in polled runs, %.
    pub engine_cpu_answering_pct: f64,
    /// Engine-thread CPU one poll (stats + top 20) costs, ms (median).
    pub engine_cpu_per_poll_ms: f64,
    /// Live flows when a packet run ended (what each poll scanned, at most).
    pub flows_at_end_of_run: usize,
    /// With `hammer_clients` clients asking for the top 10,000 by rate back
    /// to back: the rates, each run, and what they keep of the undisturbed
    /// ones (medians), in %.
    pub pps_hammered: Vec<f64>,
    pub cpu_pps_hammered: Vec<f64>,
    pub hammer_answers: Vec<u64>,
    pub hammered_kept_pct: f64,
    pub hammered_kept_cpu_pct: f64,
    /// The generator paced at `PACED_PPS` for 5 s: packets a second taken
    /// in, quiet and under the heavy clients, and what the latter keeps, %.
    pub pps_paced_quiet: Vec<f64>,
    pub pps_paced_hammered: Vec<f64>,
    pub paced_kept_pct: f64,
}

/// The paced runs' rate, packets a second.
const PACED_PPS: f64 = 20_000.0;

/// What talks to the daemon during a packet run.
#[derive(Debug, Clone, Copy)]
enum Load {
    Quiet,
    /// `stats` and the top 20 by bytes every period, as `watch` does.
    Poll(Duration),
    /// This many clients asking for the top 10,000 by rate back to back.
    Hammer(usize),
}

struct InProcess {
    controls: Controls,
    thread: Option<JoinHandle<Result<RunSummary, String>>>,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl InProcess {
    fn start(sections: &str, exit_when_done: bool) -> Result<InProcess, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let socket = dir.path().join("bench.sock");
        let text = format!(r#"{{"control": {{"socket": {:?}}}, {sections}}}"#, socket.display().to_string());
        let config = flowtable_config::parse("(bench configuration)", &text).map_err(|e| e.to_string())?;
        let controls = Controls { exit_when_done, ..Controls::default() };
        let c = controls.clone();
        let thread = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || super::run(config, None, &c))
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if thread.is_finished() || Instant::now() > deadline {
                return Err(match thread.join() {
                    Ok(Err(e)) => e,
                    _ => "the daemon did not start".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(InProcess { controls, thread: Some(thread), socket, _dir: dir })
    }

    fn client(&self) -> Result<Client, String> {
        Client::connect(&self.socket)
    }

    /// Waits for every source to end; the final stats.
    fn wait_sources(&self, client: &mut Client) -> Result<Stats, String> {
        loop {
            let s: Stats = client.call_as(&Command::Stats {})?;
            if s.sources.iter().all(|x| x.state != "running") {
                if let Some(e) = s.sources.iter().find_map(|x| x.error.clone()) {
                    return Err(e);
                }
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(mut self) -> Result<RunSummary, String> {
        self.controls.stop.store(true, Ordering::SeqCst);
        self.thread.take().expect("running").join().map_err(|_| "the daemon thread panicked".to_string())?
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.controls.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        0.0
    } else {
        s[s.len() / 2]
    }
}

fn measure(client: &mut Client, name: &str, cmd: &Command, n: usize) -> Result<RequestRate, String> {
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        client.call(cmd)?;
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let total = start.elapsed().as_secs_f64();
    let mut sorted = lat.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(RequestRate {
        request: name.to_string(),
        per_second: n as f64 / total,
        median_ms: median(&lat),
        p99_ms: sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)],
    })
}

const LONG_TIMEOUTS: &str = r#""timeouts": {"tcp_handshake_s": 3600, "tcp_established_s": 3600, "tcp_closing_s": 3600,
    "tcp_closed_s": 3600, "udp_s": 3600, "icmp_s": 3600, "other_s": 3600}"#;

/// Requests per second against `flows` live flows.
fn requests(flows: u64, n: usize) -> Result<(usize, f64, Vec<RequestRate>), String> {
    // DNS-like exchanges only: two to four packets a flow, so a million
    // flows take a few million packets.
    let sections = format!(
        r#"{LONG_TIMEOUTS}, "table": {{"max_flows": {}}},
        "sources": [{{"synthetic": {{"flows": {flows}, "concurrency": 10000, "seed": 7, "pace": "fast",
            "mix": {{"tcp_short": 0, "tcp_elephant": 0, "udp_dns": 1, "udp_stream": 0, "icmp_echo": 0}}}}}}]"#,
        (flows as usize).next_power_of_two().max(1 << 20)
    );
    let t = Instant::now();
    let daemon = InProcess::start(&sections, false)?;
    let mut client = daemon.client()?;
    let stats = daemon.wait_sources(&mut client)?;
    let fill_s = t.elapsed().as_secs_f64();
    let top = |sort| Command::Flows { filter: None, sort, offset: 0, limit: Some(100) };
    let some_flow: FlowsPage = client.call_as(&top(SortKey::Bytes))?;
    let id = some_flow.flows.first().map(|f| f.id).ok_or("no flows")?;
    let rates = vec![
        measure(&mut client, "flows top 100 by bytes", &top(SortKey::Bytes), n)?,
        measure(&mut client, "flows top 100 by rate", &top(SortKey::Rate), n)?,
        measure(
            &mut client,
            "flows top 100, filter proto=udp dport=53",
            &Command::Flows {
                filter: Some("proto=udp dport=53".into()),
                sort: SortKey::Bytes,
                offset: 0,
                limit: Some(100),
            },
            n,
        )?,
        measure(&mut client, "stats", &Command::Stats {}, n)?,
        measure(&mut client, "flow ID", &Command::Flow { flow: id }, n.max(1000))?,
    ];
    drop(client);
    daemon.stop()?;
    Ok((stats.flows.live, fill_s, rates))
}

/// One packet-rate run. The daemon stops by itself when its source
/// ends, so nothing but the poller (if any) talks to it during the run.
struct PacketRun {
    /// Packets per second of wall time.
    pps: f64,
    /// Packets per second of the engine thread's CPU time.
    pps_cpu: f64,
    polls: u64,
    /// Share of the engine thread's CPU time spent answering requests, %.
    answering_pct: f64,
    /// Engine-thread CPU per poll (two requests), ms.
    cpu_per_poll_ms: f64,
    flows_at_end: usize,
}

/// `paced`: the generator at this many packets a second of real time
/// (what a link delivers), not as fast as it goes.
fn packet_run(packets: u64, load: Load, paced: Option<f64>) -> Result<PacketRun, String> {
    let pace = match paced {
        Some(pps) => format!(r#""pace": "timestamps", "rate_pps": {pps}"#),
        None => r#""pace": "fast""#.to_string(),
    };
    let sections = format!(
        r#""classifier": {{"rules": [{{"name": "bypass", "match": {{}}, "trigger": {{"after_packets": 16}},
            "result": {{"offload": {{"type": "pass"}}}}}}]}},
        "offload": {{"poll_interval_ms": 100}},
        "sources": [{{"synthetic": {{"flows": 100000000, "max_packets": {packets}, "seed": 11, {pace}}}}}]"#
    );
    let mut daemon = InProcess::start(&sections, true)?;
    let thread = daemon.thread.take().expect("running");
    let stop = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicU64::new(0));
    let client = |work: Box<dyn Fn(&mut Client) -> bool + Send>| {
        let (stop, polls, socket) = (stop.clone(), polls.clone(), daemon.socket.clone());
        std::thread::spawn(move || {
            let Ok(mut c) = Client::connect(Path::new(&socket)) else { return };
            // The daemon going away at the end of its source ends the run.
            while !stop.load(Ordering::SeqCst) && work(&mut c) {
                polls.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let clients: Vec<JoinHandle<()>> = match load {
        Load::Quiet => vec![],
        Load::Poll(period) => {
            let next = std::sync::Mutex::new(Instant::now());
            vec![client(Box::new(move |c| {
                let ok = c.call(&Command::Stats {}).is_ok()
                    && c.call(&Command::Flows { filter: None, sort: SortKey::Bytes, offset: 0, limit: Some(20) })
                        .is_ok();
                let mut next = next.lock().unwrap_or_else(|e| e.into_inner());
                *next += period;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                ok
            }))]
        }
        Load::Hammer(n) => (0..n)
            .map(|_| {
                client(Box::new(|c| {
                    c.call(&Command::Flows { filter: None, sort: SortKey::Rate, offset: 0, limit: Some(10_000) })
                        .is_ok()
                }))
            })
            .collect(),
    };
    let summary = thread.join().map_err(|_| "the daemon thread panicked".to_string())??;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.join();
    }
    let src = summary.sources.first().ok_or("no source")?;
    if let Some(e) = &src.error {
        return Err(e.clone());
    }
    Ok(PacketRun {
        pps: src.packets as f64 / src.wall_s.max(1e-9),
        pps_cpu: src.packets as f64 / summary.engine_cpu_s.max(1e-9),
        polls: polls.load(Ordering::SeqCst),
        answering_pct: 100.0 * summary.control.cpu_s / summary.engine_cpu_s.max(1e-9),
        cpu_per_poll_ms: summary.control.cpu_s * 1e3 / (summary.control.requests as f64 / 2.0).max(1.0),
        flows_at_end: summary.flows_at_exit,
    })
}

pub fn run(a: &ControlBenchArgs) -> Result<ControlBench, String> {
    let (live_flows, fill_s, rates) = requests(a.flows, a.requests.max(1))?;
    let mut idle = Vec::new();
    let mut polled = Vec::new();
    let mut idle_cpu = Vec::new();
    let mut polled_cpu = Vec::new();
    let mut polls = Vec::new();
    let mut answering = Vec::new();
    let mut per_poll = Vec::new();
    let mut flows_at_end = 0;
    let (mut hammered, mut hammered_cpu, mut answers) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.runs.max(1) {
        let r = packet_run(a.packets, Load::Quiet, None)?;
        idle.push(r.pps);
        idle_cpu.push(r.pps_cpu);
        if a.hammer_clients > 0 {
            let r = packet_run(a.packets, Load::Hammer(a.hammer_clients), None)?;
            hammered.push(r.pps);
            hammered_cpu.push(r.pps_cpu);
            answers.push(r.polls);
        }
        let r = packet_run(a.packets, Load::Poll(Duration::from_millis(a.poll_ms.max(1))), None)?;
        polled.push(r.pps);
        polled_cpu.push(r.pps_cpu);
        polls.push(r.polls);
        answering.push(r.answering_pct);
        per_poll.push(r.cpu_per_poll_ms);
        flows_at_end = r.flows_at_end;
    }
    // A link's pace, as the daemon meets it: 20,000 packets a second for
    // 5 s, quiet and under the heavy clients.
    let (mut paced_quiet, mut paced_hammered) = (Vec::new(), Vec::new());
    if a.hammer_clients > 0 {
        for _ in 0..a.runs.max(1) {
            paced_quiet.push(packet_run(PACED_PPS as u64 * 5, Load::Quiet, Some(PACED_PPS))?.pps);
            paced_hammered.push(packet_run(PACED_PPS as u64 * 5, Load::Hammer(a.hammer_clients), Some(PACED_PPS))?.pps);
        }
    }
    let cost = |a: f64, b: f64| 100.0 * (a - b) / a.max(1e-9);
    let (mi, mp, ci, cp) = (median(&idle), median(&polled), median(&idle_cpu), median(&polled_cpu));
    Ok(ControlBench {
        live_flows,
        fill_s,
        requests: rates,
        packets_per_run: a.packets,
        pps_no_client: idle,
        pps_polled: polled,
        cpu_pps_no_client: idle_cpu,
        cpu_pps_polled: polled_cpu,
        polls,
        median_pps_no_client: mi,
        median_pps_polled: mp,
        polling_cost_pct: cost(mi, mp),
        median_cpu_pps_no_client: ci,
        median_cpu_pps_polled: cp,
        polling_cost_cpu_pct: cost(ci, cp),
        engine_cpu_answering_pct: median(&answering),
        engine_cpu_per_poll_ms: median(&per_poll),
        flows_at_end_of_run: flows_at_end,
        hammered_kept_pct: 100.0 * median(&hammered) / mi.max(1e-9),
        hammered_kept_cpu_pct: 100.0 * median(&hammered_cpu) / ci.max(1e-9),
        pps_hammered: hammered,
        cpu_pps_hammered: hammered_cpu,
        hammer_answers: answers,
        paced_kept_pct: 100.0 * median(&paced_hammered) / median(&paced_quiet).max(1e-9),
        pps_paced_quiet: paced_quiet,
        pps_paced_hammered: paced_hammered,
    })
}

pub fn report(b: &ControlBench, a: &ControlBenchArgs) -> String {
    use crate::report::{count, rate};
    let mut o = format!(
        "control requests with {} live flows (filled in {:.1} s), one client, one connection:\n",
        count(b.live_flows as u64),
        b.fill_s
    );
    let rows: Vec<Vec<String>> = b
        .requests
        .iter()
        .map(|r| {
            vec![
                r.request.clone(),
                format!("{:.0}/s", r.per_second),
                format!("{:.2} ms", r.median_ms),
                format!("{:.2} ms", r.p99_ms),
            ]
        })
        .collect();
    o.push_str(&crate::report::table(&["request", "rate", "median", "p99"], &rows, &[1, 2, 3]));
    o.push_str(&format!(
        "\npacket loop, {} packets a run (synthetic, fast), median of {} runs each:\n",
        count(b.packets_per_run),
        b.pps_no_client.len()
    ));
    let rows = vec![
        vec!["no client".to_string(), rate(b.median_pps_no_client, "pkt"), rate(b.median_cpu_pps_no_client, "pkt")],
        vec![
            format!(
                "client every {} ms ({:.0} polls a run)",
                a.poll_ms,
                b.polls.iter().sum::<u64>() as f64 / b.polls.len().max(1) as f64
            ),
            rate(b.median_pps_polled, "pkt"),
            rate(b.median_cpu_pps_polled, "pkt"),
        ],
        vec![
            "polling cost".to_string(),
            format!("{:.1}%", b.polling_cost_pct),
            format!("{:.1}%", b.polling_cost_cpu_pct),
        ],
    ];
    let mut rows = rows;
    if !b.pps_hammered.is_empty() {
        rows.push(vec![
            format!(
                "{} clients, top 10,000 by rate back to back ({:.0} answers a run)",
                a.hammer_clients,
                b.hammer_answers.iter().sum::<u64>() as f64 / b.hammer_answers.len().max(1) as f64
            ),
            rate(median(&b.pps_hammered), "pkt"),
            rate(median(&b.cpu_pps_hammered), "pkt"),
        ]);
        rows.push(vec![
            "kept under them".to_string(),
            format!("{:.1}%", b.hammered_kept_pct),
            format!("{:.1}%", b.hammered_kept_cpu_pct),
        ]);
    }
    o.push_str(&crate::report::table(&["", "wall-clock rate", "engine-CPU rate"], &rows, &[1, 2]));
    if !b.pps_paced_quiet.is_empty() {
        o.push_str(&format!(
            "paced at {} pkt/s for 5 s: {} taken in quiet, {} under {} clients asking for the top 10,000 by rate: {:.1}% kept\n",
            PACED_PPS,
            rate(median(&b.pps_paced_quiet), "pkt"),
            rate(median(&b.pps_paced_hammered), "pkt"),
            a.hammer_clients,
            b.paced_kept_pct
        ));
    }
    o.push_str(&format!(
        "engine thread CPU spent answering the poller: {:.2}% of its time; {:.2} ms a poll (stats + top 20 of up to {} flows)\n",
        b.engine_cpu_answering_pct,
        b.engine_cpu_per_poll_ms,
        count(b.flows_at_end_of_run as u64)
    ));
    o
}
