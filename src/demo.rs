//! `flowtable demo`: synthetic traffic through the simulated NIC, with the
//! classifier of a typical stateful service, checked at the end against
//! the generator's own ground truth.

use crate::replay::{replay, ReplaySummary};
use crate::source::synth::{SynthConfig, SyntheticSource};
use crate::source::{PacketSource, RawPacket, SourceError};
use flowtable_config::Config;
use flowtable_offload::{EngineStats, FlowRecord};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::net::IpAddr;

/// The demo's configuration: elephants and long UDP streams bypass
/// software once they prove long, telnet is dropped in hardware, DNS and
/// ICMP stay in software for inspection. Timeouts are short because the
/// demo's traffic spans about a minute of packet time.
pub const DEMO_CONFIG: &str = r#"{
  "classifier": {
    "rules": [
      { "name": "drop-telnet", "match": { "proto": "tcp", "server_ports": [23] },
        "result": { "offload": { "type": "drop" } } },
      { "name": "inspect-dns", "match": { "proto": "udp", "server_ports": [53] }, "result": "software" },
      { "name": "inspect-icmp", "match": { "proto": "icmp" }, "result": "software" },
      { "name": "bypass-long-tcp", "match": { "proto": "tcp" },
        "trigger": { "after_packets": 32 }, "result": { "offload": { "type": "pass" } } },
      { "name": "bypass-udp-streams", "match": { "proto": "udp" },
        "trigger": { "after_packets": 16 }, "result": { "offload": { "type": "pass" } } }
    ]
  },
  "timeouts": { "tcp_handshake_s": 5, "tcp_established_s": 15, "tcp_closing_s": 5, "tcp_closed_s": 2,
                "udp_s": 5, "icmp_s": 5, "other_s": 10 },
  "offload": { "poll_interval_ms": 100, "batch_size": 512 },
  "backend": { "kind": "sim", "profile": "full" }
}"#;

/// Counts packets through to a progress bar, updating it rarely so the
/// bar costs nothing per packet.
pub struct Progress<S> {
    inner: S,
    bar: ProgressBar,
    packets: u64,
}

impl<S: PacketSource> Progress<S> {
    pub fn new(inner: S, show: bool) -> Progress<S> {
        let bar = if show { ProgressBar::new_spinner() } else { ProgressBar::hidden() };
        bar.set_draw_target(if show { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed} {human_pos} packets ({per_sec})")
                .expect("valid template"),
        );
        Progress { inner, bar, packets: 0 }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: PacketSource> PacketSource for Progress<S> {
    fn next_packet(&mut self) -> Result<Option<RawPacket<'_>>, SourceError> {
        self.packets += 1;
        if self.packets & 0xffff == 0 {
            self.bar.set_position(self.packets);
        }
        self.inner.next_packet()
    }
}

pub struct DemoOutcome {
    pub summary: ReplaySummary,
    pub stats: EngineStats,
    pub records: Vec<FlowRecord>,
    /// Flows whose counts differ from the generator's.
    pub mismatches: Vec<String>,
    pub flows_checked: usize,
}

/// A flow's endpoints in a fixed order, whichever side spoke first: a flow
/// that ended and started again by its other side is the same conversation.
type Tuple = ((IpAddr, u16), (IpAddr, u16), u8, u16);

fn tuple(a: (IpAddr, u16), b: (IpAddr, u16), proto: u8, vlan: u16) -> Tuple {
    if a <= b {
        (a, b, proto, vlan)
    } else {
        (b, a, proto, vlan)
    }
}

/// Packet rate of the demo's traffic, in packets per second of packet time.
pub const DEMO_RATE_PPS: f64 = 20_000.0;

/// Runs the generator through `engine`, then compares every record with the
/// generator's ground truth, summed per conversation (address/port pair,
/// protocol, VLAN), since a flow may end by timeout and start again.
pub fn run(config: &Config, workers: usize, synth: SynthConfig, progress: bool) -> Result<DemoOutcome, String> {
    let source = SyntheticSource::new(synth).map_err(|e| e.to_string())?;
    let mut source = Progress::new(source, progress);
    let mut records = Vec::new();
    let backend = crate::backend::build(config)?;
    let replayed = replay(&mut source, config, workers, backend, |r| records.push(r.clone()))?;
    if let Some(e) = replayed.source_error {
        return Err(e.to_string());
    }
    let (summary, stats) = (replayed.summary, replayed.stats);
    source.finish();

    let mut ours: HashMap<Tuple, (u64, u64)> = HashMap::new();
    for r in &records {
        let e = ours.entry(tuple((r.src, r.sport), (r.dst, r.dport), r.proto, r.vlan)).or_default();
        e.0 += r.packets();
        e.1 += r.bytes();
    }
    let mut truth: HashMap<Tuple, (u64, u64)> = HashMap::new();
    for f in source.inner().flows() {
        let ends = f.key.endpoints(f.client_dir);
        let e = truth
            .entry(tuple((ends.src, ends.sport), (ends.dst, ends.dport), f.key.proto, f.key.vlan_outer))
            .or_default();
        e.0 += f.total_packets();
        e.1 += f.total_bytes();
    }
    let mut mismatches = Vec::new();
    for (k, t) in &truth {
        match ours.get(k) {
            Some(o) if o == t => {}
            o => mismatches.push(format!("{k:?}: generated {t:?}, recorded {o:?}")),
        }
    }
    mismatches
        .extend(ours.keys().filter(|k| !truth.contains_key(*k)).map(|k| format!("{k:?}: recorded, never generated")));
    Ok(DemoOutcome { summary, stats, records, mismatches, flows_checked: truth.len() })
}
