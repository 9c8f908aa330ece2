//! Receiving from a DPDK port: rx bursts on one queue, handed out one
//! frame at a time with the MARK id the NIC attached, if any.

use std::sync::Arc;

use dpdk_sys as sys;

use super::eal::DpdkRuntime;

/// Frames per rx burst.
pub const BURST: usize = 32;

/// One received frame, borrowed until the next call on its queue.
#[derive(Debug, Clone, Copy)]
pub struct RxFrame<'a> {
    /// The first segment's bytes.
    pub data: &'a [u8],
    /// The whole packet's length.
    pub wire_len: u32,
    /// The id of the MARK action whose rule matched the packet: software
    /// can go straight to the flow without a hash lookup.
    pub mark: Option<u32>,
    /// flowtable's index of the port the frame came in on.
    pub port: u8,
}

/// One rx queue of one started port.
pub struct RxQueue {
    _rt: Arc<DpdkRuntime>,
    port_id: u16,
    port: u8,
    queue: u16,
    mbufs: [*mut sys::rte_mbuf; BURST],
    len: usize,
    next: usize,
    /// The mbuf handed out last, freed on the next call.
    current: *mut sys::rte_mbuf,
}

// The mbufs are owned by this queue until freed; one thread polls a queue.
// SAFETY: the mbufs come from this queue's bursts and are freed only by it, and mbufs go back to their
// (multi-thread) pool from any thread; RxQueue isn't Sync, so one thread at a time polls the queue.
unsafe impl Send for RxQueue {}

impl RxQueue {
    /// Queue `queue` of flowtable port `port`.
    pub fn new(rt: Arc<DpdkRuntime>, port: u8, queue: u16) -> Result<RxQueue, String> {
        let p = rt.port(port).ok_or_else(|| format!("dpdk rx: port {port} is not configured"))?;
        if queue >= p.rx_queues {
            return Err(format!("dpdk rx: {} has {} rx queues, no queue {queue}", p.device, p.rx_queues));
        }
        let port_id = p.id;
        Ok(RxQueue {
            _rt: rt,
            port_id,
            port,
            queue,
            mbufs: [core::ptr::null_mut(); BURST],
            len: 0,
            next: 0,
            current: core::ptr::null_mut(),
        })
    }

    fn release_current(&mut self) {
        if !self.current.is_null() {
            // SAFETY: `current` is non-null, an mbuf of the last burst handed out by `advance` and freed only here
            // (then nulled); its pool stays alive, never freed and held by `_rt`.
            unsafe { sys::ft_pktmbuf_free(self.current) };
            self.current = core::ptr::null_mut();
        }
    }

    /// Moves to the next frame, polling the NIC once when the last burst
    /// is used up; false when the queue is empty right now. The previous
    /// frame's mbuf goes back to its pool.
    #[inline]
    pub fn advance(&mut self) -> bool {
        self.release_current();
        if self.next == self.len {
            // SAFETY: port and queue were checked in `new` (a started port's rx queue) and only this RxQueue (via
            // &mut self) polls it; `mbufs` has room for BURST pointers, and the last burst's were all handed out.
            self.len =
                unsafe { sys::ft_rx_burst(self.port_id, self.queue, self.mbufs.as_mut_ptr(), BURST as u16) } as usize;
            self.next = 0;
            if self.len == 0 {
                return false;
            }
        }
        self.current = self.mbufs[self.next];
        self.next += 1;
        true
    }

    /// The frame `advance` moved to.
    #[inline]
    pub fn current_frame(&self) -> Option<RxFrame<'_>> {
        let m = self.current;
        if m.is_null() {
            return None;
        }
        // SAFETY: `m` is a non-null mbuf of the last burst, owned until the next `advance` (&mut self), so the
        // slice of its first segment's `data_len` bytes at mtod can borrow &self; `mark` is a live local.
        unsafe {
            let data = core::slice::from_raw_parts(sys::ft_mbuf_data(m), sys::ft_mbuf_data_len(m) as usize);
            let mut mark = 0u32;
            let marked = sys::ft_mbuf_mark(m, &mut mark) != 0;
            Some(RxFrame { data, wire_len: sys::ft_mbuf_pkt_len(m), mark: marked.then_some(mark), port: self.port })
        }
    }

    /// `advance` then `current_frame`.
    #[inline]
    pub fn next_frame(&mut self) -> Option<RxFrame<'_>> {
        if self.advance() {
            self.current_frame()
        } else {
            None
        }
    }
}

impl Drop for RxQueue {
    fn drop(&mut self) {
        self.release_current();
        for m in &self.mbufs[self.next..self.len] {
            // SAFETY: mbufs[next..len] are the burst's mbufs not yet handed out: owned here, each freed once.
            unsafe { sys::ft_pktmbuf_free(*m) };
        }
    }
}
