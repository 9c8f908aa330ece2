//! Flow records: the one summary every flow ends in, and the events the
//! engine emits along a flow's life.

use flowtable_hw::{Action, Placement};
use flowtable_sw::context::FlowContext;
use flowtable_sw::{Direction, Flow, FlowId, Framing, TcpState};
use serde::Serialize;
use std::net::IpAddr;

/// Why a flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndReason {
    /// No packets (seen or counted) for its idle timeout.
    Idle,
    /// Closed by FIN or RST, then its short timeout passed.
    TcpClose,
    /// Removed on request (control API).
    Evicted,
    /// Pushed out to make room for a new flow.
    TableFull,
    /// Still live when the process stopped.
    Shutdown,
    /// Not an end: an interim record of a flow that lasts past the active
    /// timeout, with what it carried since its previous record.
    Active,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Idle => "idle",
            EndReason::TcpClose => "tcp-close",
            EndReason::Evicted => "evicted",
            EndReason::TableFull => "table-full",
            EndReason::Shutdown => "shutdown",
            EndReason::Active => "active",
        }
    }
}

/// One direction's packets and bytes, split by who counted them. `bytes`
/// are frame bytes (the link header included, as the NIC counts them);
/// `ip_bytes` are IP octets, header and payload, as IPFIX's
/// octetDeltaCount counts them (see `flowtable_sw::Framing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DirRecord {
    /// The port this direction's first packet arrived on.
    pub ingress: u8,
    pub packets: u64,
    pub bytes: u64,
    pub ip_bytes: u64,
    pub sw_packets: u64,
    pub sw_bytes: u64,
    pub sw_ip_bytes: u64,
    pub hw_packets: u64,
    pub hw_bytes: u64,
    pub hw_ip_bytes: u64,
    /// TCP flags of the packets software saw move the flow's TCP state
    /// (its first, SYN, SYN-ACK, FIN, RST); 0 for other protocols.
    #[serde(skip_serializing_if = "is_zero_u8")]
    pub tcp_flags: u8,
    /// ICMP and ICMPv6: the type and code of this direction's first
    /// packet software saw (its echo identifier is the port); absent for
    /// other protocols.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
}

fn is_zero_u8(v: &u8) -> bool {
    *v == 0
}

impl DirRecord {
    /// What this direction carried beyond `before` (an earlier record of
    /// the same flow). TCP flags are the flow's so far, not a delta; so are the ICMP type and code.
    pub fn since(&self, before: &DirRecord) -> DirRecord {
        DirRecord {
            ingress: self.ingress,
            packets: self.packets - before.packets,
            bytes: self.bytes - before.bytes,
            ip_bytes: self.ip_bytes - before.ip_bytes,
            sw_packets: self.sw_packets - before.sw_packets,
            sw_bytes: self.sw_bytes - before.sw_bytes,
            sw_ip_bytes: self.sw_ip_bytes - before.sw_ip_bytes,
            hw_packets: self.hw_packets - before.hw_packets,
            hw_bytes: self.hw_bytes - before.hw_bytes,
            hw_ip_bytes: self.hw_ip_bytes - before.hw_ip_bytes,
            tcp_flags: self.tcp_flags,
            icmp_type: self.icmp_type,
            icmp_code: self.icmp_code,
        }
    }

    pub fn of(flow: &Flow, dir: Direction, framing: &Framing) -> DirRecord {
        let (sw, hw) = (flow.sw[dir.index()], flow.hw()[dir.index()]);
        let (sw_ip, hw_ip) = framing.ip_bytes(dir, sw, hw);
        DirRecord {
            ingress: flow.port(dir),
            packets: sw.packets + hw.packets,
            bytes: sw.bytes + hw.bytes,
            ip_bytes: sw_ip + hw_ip,
            sw_packets: sw.packets,
            sw_bytes: sw.bytes,
            sw_ip_bytes: sw_ip,
            hw_packets: hw.packets,
            hw_bytes: hw.bytes,
            hw_ip_bytes: hw_ip,
            tcp_flags: framing.tcp_flags[dir.index()],
            icmp_type: framing.icmp(dir).map(|t| t[0]),
            icmp_code: framing.icmp(dir).map(|t| t[1]),
        }
    }
}

/// How the close of an offloaded TCP connection is seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Teardown {
    /// The rules leave FIN and RST to software, which removes them when
    /// the connection closes.
    FinRst,
    /// The rules take FIN and RST too (the backend can't match TCP
    /// flags): the close is not seen, and the flow ends by its idle
    /// timeout.
    IdleOnly,
}

/// What offload a flow had.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OffloadRecord {
    pub backend: String,
    pub action: Action,
    /// Where each direction's rule lived: [client-to-server, server-to-client].
    pub placement: [Option<Placement>; 2],
    /// Whether the rules' counters could be read.
    pub hw_counters: bool,
    pub installed_ns: u64,
    /// Set when the rules were removed before the flow ended (unoffload,
    /// the connection's close).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed_ns: Option<u64>,
    /// TCP flows: whether the close could be seen while offloaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teardown: Option<Teardown>,
    /// Set when this run took the flow over, rules and all, from an
    /// earlier run (a restart): when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adopted_ns: Option<u64>,
}

/// Whether a record is a flow's last, or one of the interim records of a
/// flow that outlasted the active timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordKind {
    /// The flow ended; with interim records before it, its counts are
    /// what came after the last of them.
    Final,
    /// The flow goes on; its counts are those since its previous record.
    Interim,
}

/// The record a flow ends in (or, past the active timeout, one of its
/// interim records: `kind` says which). Directions are the flow's own: `orig` is
/// what its first packet's sender sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowRecord {
    pub id: FlowId,
    pub proto: u8,
    /// Written as text ("10.0.0.1", "2001:db8::1"); kept as addresses so
    /// ending a flow formats nothing and exporters need not parse them.
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    #[serde(skip_serializing_if = "is_zero")]
    pub vlan: u16,
    #[serde(skip_serializing_if = "is_zero")]
    pub vlan_inner: u16,
    pub ingress: u8,
    pub start_ns: u64,
    pub end_ns: u64,
    pub orig: DirRecord,
    pub reply: DirRecord,
    pub tcp_state: TcpState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// When the rule named in `class` is no longer configured: the
    /// configuration generation that removed it (as `flowtable stats`
    /// counts them: 1 at the start, one more at each reload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_removed_in_generation: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offload: Option<OffloadRecord>,
    /// The backend's refusal, when offload was tried and refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<FlowContext>,
    pub end_reason: EndReason,
    pub kind: RecordKind,
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}

impl FlowRecord {
    pub fn packets(&self) -> u64 {
        self.orig.packets + self.reply.packets
    }
    pub fn bytes(&self) -> u64 {
        self.orig.bytes + self.reply.bytes
    }
}

/// Builds the address/port part of a record from a flow, oriented by its
/// initiator.
pub(crate) fn endpoints_of(flow: &Flow) -> (IpAddr, IpAddr, u16, u16) {
    let e = flow.key.endpoints(flow.initiator());
    (e.src, e.dst, e.sport, e.dport)
}

/// What happened to a flow, for subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// `key` is canonical; `src`/`dst` are oriented by the initiator (the
    /// sender of the first packet), as records are.
    New {
        id: FlowId,
        key: String,
        proto: u8,
        src: IpAddr,
        dst: IpAddr,
        sport: u16,
        dport: u16,
        /// ICMP and ICMPv6: the first packet's type and code.
        #[serde(skip_serializing_if = "Option::is_none")]
        icmp_type: Option<u8>,
        #[serde(skip_serializing_if = "Option::is_none")]
        icmp_code: Option<u8>,
        ts_ns: u64,
    },
    Classified {
        id: FlowId,
        class: Option<String>,
        decision: String,
        ts_ns: u64,
    },
    Offloaded {
        id: FlowId,
        action: Action,
        placement: [Option<Placement>; 2],
        ts_ns: u64,
    },
    Refused {
        id: FlowId,
        reason: String,
        ts_ns: u64,
    },
    Unoffloaded {
        id: FlowId,
        ts_ns: u64,
    },
    /// `ts_ns` is when the flow ended (the daemon's clock then, as every
    /// event's); the record's `end_ns` is its last packet's time.
    Expired {
        record: Box<FlowRecord>,
        ts_ns: u64,
    },
}
