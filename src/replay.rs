//! The replay driver: packets from a source through the (simulated) NIC,
//! the parser and the workers, polled on the source's clock, so a capture
//! replays as it happened, only faster.

use crate::runtime::{Clock, Runtime, RuntimeConfig, WorkerTimes, POLL_TICK_NS};
use crate::source::{PacketSource, SourceError};
use flowtable_config::Config;
use flowtable_hw::Backend;
use flowtable_offload::{Classifier, EngineStats, FlowRecord};
use flowtable_sw::parse::parse_packet;
use flowtable_sw::{SkipCounters, SkipReason};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplaySummary {
    pub packets: u64,
    pub bytes: u64,
    /// Packets a NIC rule took before software saw them.
    pub nic_packets: u64,
    /// Packets that reached the flow table.
    pub sw_packets: u64,
    #[serde(serialize_with = "skips_as_map")]
    pub skipped: SkipCounters,
    /// Records whose length on the wire the capture could not back up,
    /// counted at the length captured (see `source::pcap::wire_len`).
    pub clamped_wire_lengths: u64,
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
    pub wall_ns: u64,
    /// CPU time of the thread that read the source and handed packets out,
    /// for benchmarks (like `wall_ns`, a measurement, but not part of a
    /// replay's report).
    #[serde(skip)]
    pub reader_cpu_ns: u64,
}

fn skips_as_map<S: serde::Serializer>(s: &SkipCounters, ser: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = ser.serialize_map(None)?;
    for (reason, n) in s.iter().filter(|(_, n)| *n > 0) {
        m.serialize_entry(reason.as_str(), &n)?;
    }
    m.end()
}

impl ReplaySummary {
    pub fn packets_per_second(&self) -> f64 {
        self.packets as f64 / (self.wall_ns.max(1) as f64 / 1e9)
    }
}

/// What a replay did: the packets read, every shard's and the offload
/// thread's counters, and how the workers' packet paths went.
pub struct Replayed {
    pub summary: ReplaySummary,
    pub stats: EngineStats,
    pub workers: Vec<WorkerTimes>,
    /// The source broke off here; what it delivered before is in the
    /// records and the summary.
    pub source_error: Option<SourceError>,
    /// Rules the NIC still held at the end (none, unless removals failed).
    pub rules_left: usize,
}

/// Replays `source` with `workers` workers and `backend` as the
/// configuration says, until the source ends, then ends every flow (reason
/// `shutdown`). Every record goes to `on_record` as it is made. The
/// replay's clock is the capture's: its workers run in lockstep epochs
/// (see `crate::runtime`), so the flows are the same for any number of
/// workers.
pub fn replay(
    source: &mut dyn PacketSource,
    config: &Config,
    workers: usize,
    backend: Box<dyn Backend>,
    mut on_record: impl FnMut(&FlowRecord),
) -> Result<Replayed, String> {
    replay_batches(source, config, workers, backend, |records| records.iter().for_each(&mut on_record))
}

/// As `replay`, the records handed over in the batches the workers made
/// them in, owned (so an exporter takes them without a copy).
pub fn replay_batches(
    source: &mut dyn PacketSource,
    config: &Config,
    workers: usize,
    backend: Box<dyn Backend>,
    mut on_records: impl FnMut(Vec<FlowRecord>),
) -> Result<Replayed, String> {
    let classifier = Classifier::new(&config.classifier)?;
    let ports = config.port_map().unwrap_or_default();
    let rt_config = RuntimeConfig::from_config(config, workers, true);
    let mut rt = Runtime::start(rt_config, classifier, backend, Clock::frozen())?;
    let mut dispatch = rt.dispatcher();
    let started = Instant::now();
    let reader_cpu = crate::runtime::thread_cpu_ns();
    let mut sum = ReplaySummary::default();
    let mut next_poll = 0u64;
    let mut now = 0u64;
    let result = loop {
        let pkt = match source.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        sum.packets += 1;
        sum.bytes += pkt.wire_len as u64;
        if sum.first_ts_ns == 0 {
            sum.first_ts_ns = pkt.ts_ns;
            next_poll = pkt.ts_ns;
        }
        // Captures are not always in time order; time never runs backwards.
        if pkt.ts_ns > now {
            now = pkt.ts_ns;
        }
        if now >= next_poll {
            dispatch.tick(now);
            next_poll = now + POLL_TICK_NS;
            Runtime::take_output_batches(&rt.output, &mut on_records, |_| {});
        }
        let Some(link) = pkt.link else {
            sum.skipped.add(SkipReason::UnsupportedLinkType);
            continue;
        };
        let info = match parse_packet(link, pkt.data, pkt.wire_len, ports.ingress(pkt.ingress)) {
            Ok(info) => info,
            Err(reason) => {
                sum.skipped.add(reason);
                continue;
            }
        };
        if dispatch.offer(&info, now) {
            sum.nic_packets += 1;
        } else {
            sum.sw_packets += 1;
            dispatch.push(info, now, None);
        }
    };
    // What was read is kept even when the source broke off: flows end and
    // their records are written before the error is reported.
    dispatch.go_free(now);
    sum.reader_cpu_ns = crate::runtime::thread_cpu_ns().saturating_sub(reader_cpu);
    drop(dispatch);
    let output = rt.output.clone();
    let finished = rt.shutdown(false);
    Runtime::take_output_batches(&output, &mut on_records, |_| {});
    let finished = finished?;
    sum.last_ts_ns = now;
    sum.clamped_wire_lengths = source.clamped_wire_lengths();
    sum.wall_ns = started.elapsed().as_nanos() as u64;
    Ok(Replayed {
        summary: sum,
        stats: finished.stats,
        workers: finished.times,
        source_error: result.err(),
        rules_left: finished.coordinator.rules_live(),
    })
}

/// A flow as two replays of the same capture must agree on it, whatever
/// their number of workers: who, when, how it ended, and per direction
/// how many packets and bytes, whoever counted them.
pub type RecordFacts =
    (std::net::IpAddr, u16, std::net::IpAddr, u16, u8, u16, u16, u8, u64, u64, [u64; 4], &'static str);

pub fn record_facts(r: &FlowRecord) -> RecordFacts {
    (
        r.src,
        r.sport,
        r.dst,
        r.dport,
        r.proto,
        r.vlan,
        r.vlan_inner,
        r.ingress,
        r.start_ns,
        r.end_ns,
        [r.orig.packets, r.orig.bytes, r.reply.packets, r.reply.bytes],
        r.end_reason.as_str(),
    )
}
