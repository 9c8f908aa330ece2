//! The NIC backend trait that the offload engine programs, and its
//! backends: `sim` (an in-process NIC, the embedded default), `tc`
//! (Linux tc-flower over netlink) and `dpdk` (rte_flow, feature `dpdk`).

#[cfg(feature = "dpdk")]
pub mod dpdk;
pub mod dpdk_config;
pub mod rule;
pub mod sim;
pub mod tc;

use flowtable_sw::PacketInfo;

pub use rule::{
    Action, ActionKind, AdoptedRule, BackendError, Capabilities, Cookie, InstallOutcome, MatchFields, MatchSupport,
    Placement, PlacementPolicy, Refusal, RefusalKind, RuleCounters, RuleMatch, RuleSpec,
};
pub use sim::{SimLatency, SimNic, SimPath, SimProfile};

/// A NIC (or kernel path) that takes per-direction flow rules.
///
/// All calls are batched: the engine collects work and hands it over in
/// one call, so a backend can use one syscall or one PMD burst per batch.
/// Results come back in the order of the input, one per rule, so one
/// refused rule never fails its neighbours.
pub trait Backend: Send {
    /// A short name for logs and records ("sim", "tc", "dpdk").
    fn name(&self) -> &str;

    /// What this backend can match, do and hold.
    fn capabilities(&self) -> &Capabilities;

    /// Installs rules; one outcome per rule, in input order.
    fn install(&mut self, rules: &[RuleSpec]) -> Vec<InstallOutcome>;

    /// Removes rules by cookie; one result per cookie, in input order.
    /// Where the backend can read a rule's counters as it removes it, the
    /// final counters come back so no packet is lost between the last poll
    /// and the removal.
    fn remove(&mut self, cookies: &[Cookie]) -> Vec<Result<Option<RuleCounters>, BackendError>>;

    /// Reads the cumulative counters of every rule this backend holds for
    /// us, appending `(cookie, counters)` to `out`.
    fn read_counters(&mut self, out: &mut Vec<(Cookie, RuleCounters)>) -> Result<(), BackendError>;

    /// Tells the backend the offload thread's clock (replay time or wall
    /// time), for backends that keep time themselves (the sim's insertion
    /// rate).
    fn set_clock(&mut self, _now_ns: u64) {}

    /// For a NIC that sits in this process's packet path (the sim): a
    /// handle on its rule table for whoever hands packets to software, so
    /// the packets its rules take never reach a worker, as with hardware.
    /// The backend itself stays with the offload thread. `None` for
    /// backends outside the process.
    fn inline_nic(&self) -> Option<Box<dyn InlineNic>> {
        None
    }

    /// The rules of ours an earlier run left in place that this backend
    /// took over at start (they count as installed: read and removed like
    /// any other), handed out once. Empty for backends whose rules die
    /// with the process or can't be listed.
    fn take_adopted(&mut self) -> Vec<AdoptedRule> {
        Vec::new()
    }
}

/// The packet side of a NIC in this process's packet path (the sim): the
/// one call made per packet, apart from the backend's control calls.
pub trait InlineNic: Send {
    /// Offers a packet, received at `now_ns`, to the rule table before
    /// software sees it. Returns true when a rule took the packet, which
    /// software then never sees.
    fn offer(&mut self, pkt: &PacketInfo, now_ns: u64) -> bool;
}
