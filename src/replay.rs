//! The replay driver: packets from a source through the (simulated) NIC,
//! the parser and the engine, with the engine polled on the source's
//! clock, so a capture replays as it happened, only faster.

use crate::source::{PacketSource, SourceError};
use flowtable_offload::{Engine, FlowRecord, BATCH};
use flowtable_sw::parse::parse_packet;
use flowtable_sw::{PacketInfo, SkipCounters, SkipReason};
use serde::Serialize;
use std::time::Instant;

/// How often, in packet time, the engine's slow path runs during a replay.
pub const POLL_TICK_NS: u64 = 10_000_000;

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
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
    pub wall_ns: u64,
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

/// A source that broke off mid-way; what was read before still counts, and
/// its flows' records were written.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct ReplayError {
    pub summary: ReplaySummary,
    pub source: SourceError,
}

/// Replays `source` through `engine` until the source ends, then shuts
/// the engine down (remaining flows end with reason `shutdown`). Every
/// record goes to `on_record` as it is made.
// The error carries the summary of what was read before the source broke
// off; it is made once per replay, so its size costs nothing.
#[allow(clippy::result_large_err)]
pub fn replay(
    source: &mut dyn PacketSource,
    engine: &mut Engine,
    mut on_record: impl FnMut(&FlowRecord),
) -> Result<ReplaySummary, ReplayError> {
    let started = Instant::now();
    let mut sum = ReplaySummary::default();
    // Packets for software wait here so their lookups go in one batch.
    let mut batch: Vec<PacketInfo> = Vec::with_capacity(BATCH);
    let mut batch_ts: Vec<u64> = Vec::with_capacity(BATCH);
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
            // The NIC stamps rule hits with its own clock, as hardware does.
            engine.backend_mut().set_clock(now);
        }
        if now >= next_poll {
            engine.process_batch(&batch, &batch_ts);
            batch.clear();
            batch_ts.clear();
            engine.poll(now);
            next_poll = now + POLL_TICK_NS;
            for r in engine.drain_records() {
                on_record(&r);
            }
        }
        let Some(link) = pkt.link else {
            sum.skipped.add(SkipReason::UnsupportedLinkType);
            continue;
        };
        let info = match parse_packet(link, pkt.data, pkt.wire_len, engine.ports().ingress(pkt.ingress)) {
            Ok(info) => info,
            Err(reason) => {
                sum.skipped.add(reason);
                continue;
            }
        };
        if engine.offer_to_nic(&info) {
            sum.nic_packets += 1;
        } else {
            sum.sw_packets += 1;
            batch.push(info);
            batch_ts.push(now);
            if batch.len() == BATCH {
                engine.process_batch(&batch, &batch_ts);
                batch.clear();
                batch_ts.clear();
            }
        }
    };
    engine.process_batch(&batch, &batch_ts);
    // What was read is kept even when the source broke off: flows end and
    // their records are written before the error is reported.
    engine.poll(now);
    engine.shutdown(false);
    for r in engine.drain_records() {
        on_record(&r);
    }
    sum.last_ts_ns = now;
    sum.wall_ns = started.elapsed().as_nanos() as u64;
    match result {
        Ok(()) => Ok(sum),
        Err(source) => Err(ReplayError { summary: sum, source }),
    }
}
