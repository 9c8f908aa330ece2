//! Live packets from DPDK ports (feature `dpdk`): rx bursts on the
//! configured queues, polled round-robin. A frame whose rule carried MARK
//! comes with the mark, so software can go straight to its flow.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use flowtable_hw::dpdk::rx::RxQueue;
use flowtable_hw::dpdk::DpdkRuntime;
use flowtable_sw::LinkType;

use super::{CaptureLosses, PacketSource, RawPacket, SourceError};

/// LINKTYPE_ETHERNET: ethdev ports deliver Ethernet frames.
const LINKTYPE_ETHERNET: u32 = 1;

pub struct DpdkSource {
    rt: Arc<DpdkRuntime>,
    queues: Vec<RxQueue>,
    /// A failed stats read is said once, not every poll.
    stats_failed: bool,
    next: usize,
    stop: Arc<AtomicBool>,
}

impl DpdkSource {
    /// Polls `queues` (flowtable port index, rx queue) of a started runtime
    /// until `stop` is set.
    pub fn new(rt: &Arc<DpdkRuntime>, queues: &[(u8, u16)], stop: Arc<AtomicBool>) -> Result<DpdkSource, SourceError> {
        if queues.is_empty() {
            return Err(SourceError::Open { path: "dpdk".into(), message: "no rx queues to poll".into() });
        }
        let queues = queues
            .iter()
            .map(|&(port, q)| RxQueue::new(rt.clone(), port, q))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|message| SourceError::Open { path: "dpdk".into(), message })?;
        Ok(DpdkSource { rt: rt.clone(), queues, stats_failed: false, next: 0, stop })
    }

    /// Every rx queue of every port of the runtime.
    pub fn all_queues(rt: &Arc<DpdkRuntime>, stop: Arc<AtomicBool>) -> Result<DpdkSource, SourceError> {
        let qs: Vec<(u8, u16)> = rt.ports.iter().flat_map(|p| (0..p.rx_queues).map(move |q| (p.index, q))).collect();
        DpdkSource::new(rt, &qs, stop)
    }

    /// One pass over the queues: the index of one holding a frame.
    fn poll_once(&mut self) -> Option<usize> {
        let n = self.queues.len();
        let qi = (0..n).map(|i| (self.next + i) % n).find(|&qi| self.queues[qi].advance())?;
        self.next = qi;
        Some(qi)
    }

    fn frame(&self, qi: usize) -> Option<(RawPacket<'_>, Option<u32>)> {
        let ts_ns = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        let f = self.queues[qi].current_frame()?;
        let pkt = RawPacket {
            ts_ns,
            data: f.data,
            wire_len: f.wire_len,
            link: Some(LinkType::Ethernet),
            linktype: LINKTYPE_ETHERNET,
            ingress: f.port,
            mark: f.mark,
        };
        Some((pkt, f.mark))
    }

    /// The next frame and its MARK id, or `None` when every queue is empty
    /// right now (never waits).
    pub fn try_next(&mut self) -> Option<(RawPacket<'_>, Option<u32>)> {
        let qi = self.poll_once()?;
        self.frame(qi)
    }

    /// Like `next_packet`, with the frame's MARK id: busy-polls until a
    /// frame arrives, `None` once the stop flag is set.
    pub fn next_marked(&mut self) -> Option<(RawPacket<'_>, Option<u32>)> {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(qi) = self.poll_once() {
                return self.frame(qi);
            }
            std::hint::spin_loop();
        }
    }
}

impl PacketSource for DpdkSource {
    /// Busy-polls until a frame arrives; `None` once the stop flag is set.
    fn next_packet(&mut self) -> Result<Option<RawPacket<'_>>, SourceError> {
        Ok(self.next_marked().map(|(p, _)| p))
    }

    fn is_live(&self) -> bool {
        true
    }

    /// The ports' rx drops; frames are stamped as they are read, so they
    /// are in order by construction.
    fn capture_losses(&mut self) -> Option<CaptureLosses> {
        match self.rt.rx_dropped() {
            Ok(dropped) => Some(CaptureLosses { dropped, unordered: 0 }),
            Err(e) => {
                if !std::mem::replace(&mut self.stats_failed, true) {
                    tracing::warn!(error = %e, "reading the DPDK ports' rx drops failed");
                }
                None
            }
        }
    }

    /// One pass over the queues: a frame if one is there, `None` if every
    /// queue is empty right now or the stop flag is set.
    fn poll_packet(&mut self) -> Result<Option<RawPacket<'_>>, SourceError> {
        if self.stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        Ok(self.try_next().map(|(p, _)| p))
    }
}
