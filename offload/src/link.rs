//! The queues between a worker's shard and the offload thread, and what
//! goes over them. Workers never call the NIC: they ask the offload
//! thread, which owns the backend, and hear back here.
//!
//! Both directions are bounded. A shard whose request queue is full keeps
//! its requests in order and sends them later (an install waits with its
//! flow in stage `queued`); the offload thread does the same with answers
//! to a shard whose answer queue is full. Nothing is dropped.
//!
//! Answers to one shard come in the order the offload thread made them:
//! an install's outcome always comes before the answer to a cancel of the
//! same flow, and counters read before a removal before its answer.

use crossbeam_channel::{Receiver, Sender};
use flowtable_hw::{BackendError, Cookie, Placement, Refusal, RuleCounters, RuleSpec};
use flowtable_sw::{Direction, FlowId};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Room in each queue, in messages, unless said otherwise.
pub const QUEUE_DEPTH: usize = 4096;

/// What a shard asks of the offload thread.
#[derive(Debug)]
pub enum Request {
    /// Install a flow's two rules (one per direction); `bytes` so far, so
    /// that the largest flows go first when capacity or rate is short.
    Install { id: FlowId, rules: Box<[RuleSpec; 2]>, bytes: u64 },
    /// Remove a flow's rules, with their final counters where the backend
    /// can read them.
    Remove { id: FlowId, cookies: Vec<Cookie> },
    /// Withdraw an install not yet made.
    Cancel { id: FlowId },
    /// Read every rule's counters now (shutdown that keeps its rules).
    ReadCounters,
    /// A line for the offload journal (`journal`): a flow's rules are in,
    /// or out, or stay for the next run.
    Journal(Box<crate::journal::JournalLine>),
    /// Replay's virtual time: the shard has sent all it asks for up to its
    /// poll of `epoch`, at `now_ns` (see `Coordinator`).
    EpochDone { epoch: u64, now_ns: u64 },
}

/// What the offload thread tells a shard.
#[derive(Debug)]
pub enum Response {
    Installed {
        id: FlowId,
        placement: [Placement; 2],
        hw_counters: bool,
        installed_ns: u64,
    },
    /// The backend refused the flow for good.
    Refused {
        id: FlowId,
        refusal: Refusal,
    },
    /// A rule of the flow went in, but its partner was refused, so it was
    /// taken out again (the install may be retried later): what it counted
    /// meanwhile, per direction.
    Leftover {
        id: FlowId,
        counters: [Option<RuleCounters>; 2],
    },
    /// One result per cookie asked, in order; `ended_ns`, the offload
    /// thread's clock when the removal call returned: the rules counted
    /// no packet from after it.
    Removed {
        id: FlowId,
        results: Vec<(Direction, Result<Option<RuleCounters>, BackendError>)>,
        ended_ns: u64,
    },
    /// `cancelled`: the install was withdrawn before it was made; else its
    /// outcome came before this.
    Cancelled {
        id: FlowId,
        cancelled: bool,
    },
    /// Cumulative counters of the shard's rules; `asked` when it answers a
    /// `ReadCounters`.
    Counters {
        counters: Vec<(Cookie, RuleCounters)>,
        asked: bool,
        /// The offload thread's clock when the read began, and when it
        /// ended: each rule's counters were taken at some moment between.
        read_ns: u64,
        read_end_ns: u64,
    },
    /// Every answer to the shard's requests up to `epoch` came before this.
    EpochDone(u64),
}

/// A shard's end of its link.
pub struct ShardLink {
    pub to_offload: Sender<Request>,
    pub from_offload: Receiver<Response>,
    pub read_begun: Arc<ReadBegun>,
}

/// The offload thread's end of one shard's link.
pub struct OffloadLink {
    pub from_shard: Receiver<Request>,
    pub to_shard: Sender<Response>,
    pub read_begun: Arc<ReadBegun>,
}

/// When the offload thread's last counter read began, on its clock (0:
/// none yet), set before the read. Not a message: one would reach the
/// worker only at its next look at its answers, after packets it took
/// from after the read, and the shard must know which packets those are
/// (see `Shard::tap_unsettled`).
#[derive(Debug, Default)]
pub struct ReadBegun(AtomicU64);

impl ReadBegun {
    pub fn set(&self, read_ns: u64) {
        self.0.store(read_ns, Ordering::Release);
    }
    #[inline]
    pub fn get(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Acquire)).filter(|&t| t != 0)
    }
}

/// A link with `depth` messages of room each way.
pub fn link(depth: usize) -> (ShardLink, OffloadLink) {
    let (req_tx, req_rx) = crossbeam_channel::bounded(depth.max(1));
    let (resp_tx, resp_rx) = crossbeam_channel::bounded(depth.max(1));
    let read_begun = Arc::new(ReadBegun::default());
    (
        ShardLink { to_offload: req_tx, from_offload: resp_rx, read_begun: read_begun.clone() },
        OffloadLink { from_shard: req_rx, to_shard: resp_tx, read_begun },
    )
}
