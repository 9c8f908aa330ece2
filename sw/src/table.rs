//! The flow table: one slot per bidirectional flow, found by hashing its
//! canonical key, with software counters per direction, TCP state, and
//! expiry through the timer wheel.
//!
//! Slots live in one vector reserved up to the configured maximum, so the
//! packet path never reallocates; the index (`index.rs`) maps a key's hash,
//! seeded per process (no hash flooding), to its slot. Lookups can be
//! batched: `prefetch_index` and `prefetch_flow` start the memory loads of
//! a packet a few packets before it is handled (`pipeline.rs` says when).

use crate::index::{prefetch, FlowIndex};
use crate::key::{Direction, FlowKey};
use crate::packet::{Fragment, PacketInfo};
use crate::tcp::TcpState;
use crate::timer::{TimerEntry, TimerWheel};
use core::hash::BuildHasher;
use serde::{Deserialize, Serialize};

/// A flow's identity: the shard (worker) whose table holds it, the slot
/// index and the slot's generation, so an id held by an application never
/// names a later flow that reused the slot, and names the worker to ask.
/// Bits 0-31 index, 32-47 generation, 48-55 shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FlowId(pub u64);

/// A map from flows to what some of them have (offload state, context):
/// hashed with foldhash, not std's SipHash, as it is read on the packet
/// path and written as each flow ends. Flow ids are the table's own
/// numbers, not chosen by senders, so no keyed hash is needed against
/// collisions sought on purpose.
pub type FlowMap<V> = std::collections::HashMap<FlowId, V, foldhash::fast::FixedState>;

impl FlowId {
    pub fn new(index: u32, generation: u16) -> FlowId {
        FlowId((generation as u64) << 32 | index as u64)
    }
    pub fn index(self) -> u32 {
        self.0 as u32
    }
    pub fn generation(self) -> u16 {
        (self.0 >> 32) as u16
    }
    /// The shard whose table holds the flow.
    pub fn shard(self) -> u8 {
        (self.0 >> 48) as u8
    }
    pub fn with_shard(self, shard: u8) -> FlowId {
        FlowId(self.0 & !(0xff << 48) | (shard as u64) << 48)
    }
}

impl core::fmt::Display for FlowId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Packets and bytes of one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct DirCounters {
    pub packets: u64,
    pub bytes: u64,
}

impl DirCounters {
    pub fn add(&mut self, other: DirCounters) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }

    /// What is left of these once `other` is taken away, none below zero.
    pub fn less(self, other: DirCounters) -> DirCounters {
        DirCounters {
            packets: self.packets.saturating_sub(other.packets),
            bytes: self.bytes.saturating_sub(other.bytes),
        }
    }
}

/// What a flow's frames said beyond its counters, per direction
/// (`Direction::index`): the link header's length (from the
/// direction's first packet software saw), the bytes its counted frames
/// carried past their IP packets (Ethernet padding, a captured FCS), and
/// the TCP flags of the packets that moved the flow's TCP state (its
/// first packet, SYN, SYN-ACK, FIN, RST, the closing ACK), and for ICMP
/// the type and code of each direction's first packet.
///
/// IP octets (header and payload, as IPFIX counts them) follow from the
/// frame bytes: a direction's link header is the same for every packet of
/// it, so `bytes - packets * l2_len - trailer`. Hardware counts frames
/// without saying whether they were padded, so its part is
/// `hw_bytes - hw_packets * l2_len`. Written only at a flow's insert, at
/// each direction's first packet and for padded frames, so a packet of an
/// established flow never touches it.
///
/// 32 bytes, the last quarter of the flow's own 128 (see `Flow::tail`),
/// where they share the line of the flow's counters, so a new flow is
/// written in two lines rather than three. Once a rule counts for the
/// flow those bytes hold the rule's counters, and the framing moves to a
/// map beside the table (`FlowTable::counted_by_rules_mut`): few flows
/// have rules, and their packets seldom reach software. What is not yet
/// known is a bit of `known` rather than an `Option` each, and the
/// trailer counters are 48 bits (281 TB of padding a direction before
/// they stop growing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Framing {
    /// The flow's first packet's time, to the nanosecond (the latest's is
    /// `Flow::last_ns`): written at the first packet, and by a packet
    /// handled late that turns out earlier.
    pub first_ns: u64,
    /// Bytes past the IP packets in the frames software counted, by
    /// direction: low 32 and high 16 bits.
    trailer_low: [u32; 2],
    trailer_high: [u16; 2],
    l2_len: [u8; 2],
    /// TCP flags of the packets that moved the state, by direction.
    pub tcp_flags: [u8; 2],
    /// ICMP and ICMPv6: the type and code of the direction's first packet
    /// software saw (the key keeps only the echo identifier).
    icmp: [[u8; 2]; 2],
    /// `KNOWN_L2 << dir` and `KNOWN_ICMP << dir`: which of `l2_len` and
    /// `icmp` hold a packet's.
    known: u8,
    /// Padding made explicit, so the bytes can be the flow's tail.
    _reserved: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<Framing>() == 32);

const KNOWN_L2: u8 = 1 << 0;
const KNOWN_ICMP: u8 = 1 << 2;
/// Where the 48-bit trailer counters stop.
const TRAILER_MAX: u64 = (1 << 48) - 1;

impl Framing {
    fn known(&self, bit: u8, dir: Direction) -> bool {
        self.known & (bit << dir.index()) != 0
    }

    /// The link header's length of `dir`'s frames: as its first software
    /// packet had it, else as the other direction's (a direction only the
    /// NIC counted crossed the same link), else 0.
    pub fn l2_len(&self, dir: Direction) -> u8 {
        [dir, dir.reverse()].into_iter().find(|&d| self.known(KNOWN_L2, d)).map_or(0, |d| self.l2_len[d.index()])
    }

    fn set_l2_len(&mut self, dir: Direction, len: u8) {
        self.l2_len[dir.index()] = len;
        self.known |= KNOWN_L2 << dir.index();
    }

    /// ICMP type and code of `dir`'s first software packet, if one was seen.
    pub fn icmp(&self, dir: Direction) -> Option<[u8; 2]> {
        self.known(KNOWN_ICMP, dir).then_some(self.icmp[dir.index()])
    }

    /// Bytes past the IP packets in `dir`'s frames software counted.
    pub fn trailer(&self, dir: Direction) -> u64 {
        let d = dir.index();
        u64::from(self.trailer_high[d]) << 32 | u64::from(self.trailer_low[d])
    }

    fn add_trailer(&mut self, dir: Direction, bytes: u64) {
        let d = dir.index();
        let sum = self.trailer(dir).saturating_add(bytes).min(TRAILER_MAX);
        (self.trailer_low[d], self.trailer_high[d]) = (sum as u32, (sum >> 32) as u16);
    }

    /// IP octets of `dir`'s software-counted part (`sw`) and hardware-counted
    /// part (`hw`) of frame bytes.
    pub fn ip_bytes(&self, dir: Direction, sw: DirCounters, hw: DirCounters) -> (u64, u64) {
        let l2 = u64::from(self.l2_len(dir));
        let sw_ip = sw.bytes.saturating_sub(sw.packets.saturating_mul(l2)).saturating_sub(self.trailer(dir));
        let hw_ip = hw.bytes.saturating_sub(hw.packets.saturating_mul(l2));
        (sw_ip, hw_ip)
    }
}

/// Where a flow is in its offload lifecycle. The engine moves it along;
/// the table only needs to know which slots are free and which flows may
/// be evicted (those held in software alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum Stage {
    #[default]
    Free = 0,
    /// Seen, not yet classified.
    Tracking,
    /// Classified to stay in software.
    Software,
    /// Classified for offload; its request waits to be handed to the
    /// offload thread (whose queue is full).
    Queued,
    /// Rules installed; later packets handled by the NIC or kernel.
    Offloaded,
    /// The backend refused; the flow stays in software.
    Refused,
    /// Its install request is with the offload thread: waiting for its
    /// batch, or being installed.
    Installing,
    /// Its rules are being removed; the flow ends (or goes on in
    /// software) once the final counters are in.
    Removing,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Free => "free",
            Stage::Tracking => "tracking",
            Stage::Software => "software",
            Stage::Queued => "queued",
            Stage::Offloaded => "offloaded",
            Stage::Refused => "refused",
            Stage::Installing => "installing",
            Stage::Removing => "removing",
        }
    }
    /// Every stage a live flow can be in.
    pub const LIVE: [Stage; 7] = [
        Stage::Tracking,
        Stage::Software,
        Stage::Queued,
        Stage::Installing,
        Stage::Offloaded,
        Stage::Removing,
        Stage::Refused,
    ];
    fn evictable(self) -> bool {
        matches!(self, Stage::Tracking | Stage::Software | Stage::Refused)
    }
}

const FLAG_INITIATOR_HI: u8 = 1 << 0;
const FLAG_FIN_SHIFT: u8 = 1;
const FLAG_FIN_MASK: u8 = crate::tcp::FIN_BITS << FLAG_FIN_SHIFT;
const FLAG_HAS_CONTEXT: u8 = 1 << 4;
/// The flow is in the table's list of largest flows (see `heavy`).
const FLAG_HEAVY: u8 = 1 << 5;
/// Bit 6 + `Direction::index`: that direction's port is known (`ports`).
const FLAG_PORT_SHIFT: u8 = 6;

const fn port_known(dir: Direction) -> u8 {
    1 << (FLAG_PORT_SHIFT + dir.index() as u8)
}

/// Most entries the list of largest flows holds before its bar rises.
const HEAVY_MAX: usize = 4096;
/// `prefetch_flow`'s answer when the primary bucket holds no entry with the tag.
pub const NO_SLOT: u32 = u32::MAX;
/// The bar a flow's bytes must reach to enter that list, at first.
const HEAVY_START_BYTES: u64 = 64 * 1024;

/// One flow: 128 bytes holding key, state, both directions' software
/// counters, the last packet's time, and either its framing or its
/// rules' counters (`tail`). The application's context lives out of line
/// (see `context`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Flow {
    pub key: FlowKey,
    generation: u16,
    pub tcp: TcpState,
    /// Written only through `FlowTable::set_stage`, which keeps the counts
    /// by stage that statistics read without scanning the table.
    stage: Stage,
    flags: u8,
    /// Classifier rule that matched, plus one (0: none yet).
    pub class: u8,
    /// The port each direction's first packet arrived on, or was expected
    /// on when a rule for it went in first (by `Direction::index`).
    ports: [u8; 2],
    /// `tail` holds the rules' counters, not the framing.
    rules_counted: bool,
    /// Last activity: the latest packet's time (the first packet's time is
    /// in `Framing::first_ns`).
    last_ns: u64,
    /// Packets seen by software, by direction (`Direction::index`).
    pub sw: [DirCounters; 2],
    /// The flow's `Framing` until a rule counts for it; from then on the
    /// packets its rules counted, by direction (`[DirCounters; 2]`), the
    /// framing having moved beside the table. One or the other: every
    /// flow has framing, few have rules, and room for both in every flow
    /// would cost each a fifth more memory.
    tail: [u64; 4],
}

const _: () = assert!(core::mem::size_of::<Flow>() == 128);

impl Flow {
    fn vacant() -> Flow {
        Flow {
            key: FlowKey::default(),
            generation: 0,
            tcp: TcpState::NotTcp,
            stage: Stage::Free,
            flags: 0,
            class: 0,
            ports: [0; 2],
            rules_counted: false,
            last_ns: 0,
            sw: [DirCounters::default(); 2],
            tail: [0; 4],
        }
    }

    /// Packets counted by the NIC or kernel rules, by direction: none
    /// until a rule counted.
    #[inline]
    pub fn hw(&self) -> [DirCounters; 2] {
        if self.rules_counted {
            bytemuck::cast(self.tail)
        } else {
            [DirCounters::default(); 2]
        }
    }

    /// The rules' counters, to add to. The flow's tail becomes them: a
    /// flow in a table goes through `FlowTable::counted_by_rules_mut`,
    /// which moves its framing out first; a flow outside any table
    /// (`FlowTable::detached`, whose framing is apart) already has them.
    pub fn hw_mut(&mut self) -> &mut [DirCounters; 2] {
        let framing = self.tail_to_rules();
        debug_assert!(framing.is_none(), "a flow's tail given to its rules without its framing moved out");
        bytemuck::cast_mut(&mut self.tail)
    }

    /// The tail given over to the rules' counters; the framing it held,
    /// if it held it.
    fn tail_to_rules(&mut self) -> Option<Framing> {
        (!self.rules_counted).then(|| {
            let framing = bytemuck::cast(self.tail);
            self.tail = [0; 4];
            self.rules_counted = true;
            framing
        })
    }

    pub fn generation(&self) -> u16 {
        self.generation
    }

    #[inline]
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The port `dir`'s first packet arrived on (or a rule for it sits
    /// on); while that is unknown, the port of the flow's first packet.
    pub fn port(&self, dir: Direction) -> u8 {
        self.ports[dir.index()]
    }

    /// Whether `dir`'s port is known: a packet of it was seen, or a rule
    /// for it placed.
    #[inline]
    pub fn port_known(&self, dir: Direction) -> bool {
        self.flags & port_known(dir) != 0
    }

    #[inline]
    fn learn_port(&mut self, dir: Direction, port: u8) {
        if !self.port_known(dir) {
            self.ports[dir.index()] = port;
            self.flags |= port_known(dir);
        }
    }

    /// The direction of the flow's first packet.
    #[inline]
    pub fn initiator(&self) -> Direction {
        if self.flags & FLAG_INITIATOR_HI != 0 {
            Direction::HiToLo
        } else {
            Direction::LoToHi
        }
    }

    /// The latest packet's time, to the nanosecond.
    pub fn last_ns(&self) -> u64 {
        self.last_ns
    }

    /// A packet captured before the flow's first, but handled after it:
    /// captures of two ports are read in turn, not merged by time, so a
    /// reply can reach the table before its request. A packet going the
    /// other way makes its direction the initiator's, as long as no TCP
    /// state depends on who that is. (The flow's start moves in `Framing`.)
    fn start_earlier(&mut self, dir: Direction) {
        if dir != self.initiator()
            && self.flags & FLAG_FIN_MASK == 0
            && matches!(self.tcp, TcpState::NotTcp | TcpState::Midstream)
        {
            self.flags ^= FLAG_INITIATOR_HI;
        }
    }

    /// Marks activity at `now_ns` (never moves backwards).
    #[inline]
    pub fn touch(&mut self, now_ns: u64) {
        self.last_ns = self.last_ns.max(now_ns);
    }

    pub fn has_context(&self) -> bool {
        self.flags & FLAG_HAS_CONTEXT != 0
    }

    pub fn set_has_context(&mut self, yes: bool) {
        if yes {
            self.flags |= FLAG_HAS_CONTEXT;
        } else {
            self.flags &= !FLAG_HAS_CONTEXT;
        }
    }

    /// Total per direction, software plus hardware.
    #[inline]
    pub fn total(&self, dir: Direction) -> DirCounters {
        let i = dir.index();
        let hw = self.hw()[i];
        DirCounters { packets: self.sw[i].packets + hw.packets, bytes: self.sw[i].bytes + hw.bytes }
    }

    pub fn packets(&self) -> u64 {
        self.total(Direction::LoToHi).packets + self.total(Direction::HiToLo).packets
    }

    #[inline]
    pub fn bytes(&self) -> u64 {
        self.total(Direction::LoToHi).bytes + self.total(Direction::HiToLo).bytes
    }

    /// Updates TCP state for a packet; returns whether the state changed.
    #[inline]
    fn observe_tcp(&mut self, dir: Direction, tcp_flags: u8) -> bool {
        if self.key.proto != 6 {
            return false;
        }
        let mut fins = (self.flags & FLAG_FIN_MASK) >> FLAG_FIN_SHIFT;
        let next = self.tcp.next(tcp_flags, dir == self.initiator(), &mut fins);
        self.flags = (self.flags & !FLAG_FIN_MASK) | (fins << FLAG_FIN_SHIFT);
        let changed = next != self.tcp;
        self.tcp = next;
        changed
    }
}

/// Idle timeouts, per protocol and TCP state, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_handshake: u64,
    pub tcp_established: u64,
    pub tcp_closing: u64,
    pub tcp_closed: u64,
    pub udp: u64,
    pub icmp: u64,
    pub other: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        const S: u64 = 1_000_000_000;
        Timeouts {
            tcp_handshake: 30 * S,
            tcp_established: 300 * S,
            tcp_closing: 30 * S,
            tcp_closed: 5 * S,
            udp: 60 * S,
            icmp: 30 * S,
            other: 60 * S,
        }
    }
}

impl Timeouts {
    pub fn for_flow(&self, flow: &Flow) -> u64 {
        match flow.key.proto {
            6 => self.for_tcp(flow.tcp),
            17 => self.udp,
            1 | 58 => self.icmp,
            _ => self.other,
        }
    }

    /// A TCP flow's timeout in `state`.
    #[inline]
    pub fn for_tcp(&self, state: TcpState) -> u64 {
        match state {
            TcpState::SynSent | TcpState::SynReceived => self.tcp_handshake,
            TcpState::Established | TcpState::Midstream | TcpState::NotTcp => self.tcp_established,
            TcpState::FinWait | TcpState::Closing => self.tcp_closing,
            TcpState::Closed => self.tcp_closed,
        }
    }
}

/// What to do with a new flow when the table is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FullPolicy {
    /// Evict the software flow nearest to its idle deadline to make room
    /// (its record says `table-full`). Offloaded flows are never evicted:
    /// their rules are aged by counters.
    #[default]
    EvictIdle,
    /// Don't track the new flow; its packets are counted as untracked.
    RejectNew,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableConfig {
    pub max_flows: usize,
    pub full_policy: FullPolicy,
    pub timeouts: Timeouts,
    /// Timer granularity.
    pub tick_ns: u64,
    pub wheel_slots: usize,
    /// Most first fragments remembered to attribute later fragments.
    pub max_fragments: usize,
    /// How long a first fragment's id is remembered.
    pub fragment_timeout_ns: u64,
    /// The shard this table is, put in every id it hands out.
    pub shard: u8,
}

impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            max_flows: 1 << 20,
            full_policy: FullPolicy::EvictIdle,
            timeouts: Timeouts::default(),
            tick_ns: 100_000_000,
            wheel_slots: 4096,
            max_fragments: 1 << 14,
            fragment_timeout_ns: 30_000_000_000,
            shard: 0,
        }
    }
}

/// The outcome of looking a packet up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Found(FlowId),
    /// A new flow; `evicted` is the flow pushed out to make room for it.
    Inserted {
        id: FlowId,
        evicted: Option<(FlowId, Flow)>,
    },
    /// Full and nothing evictable (or policy `reject-new`).
    Full,
    /// A non-first fragment whose first fragment was never seen.
    OrphanFragment,
}

/// Counters the table keeps about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct TableStats {
    pub inserted: u64,
    pub evicted_full: u64,
    pub rejected_full: u64,
    pub orphan_fragments: u64,
    pub fragments_attributed: u64,
}

/// What the fragments of one datagram share: its addresses, protocol, IP
/// id, VLAN and zone (later fragments have no ports).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    src: [u8; 16],
    dst: [u8; 16],
    id: u32,
    proto: u8,
    vlan: u16,
    zone: u8,
}

impl FragKey {
    pub fn of(pkt: &PacketInfo, id: u32) -> FragKey {
        let k = &pkt.key;
        let (src, dst) = match pkt.dir {
            Direction::LoToHi => (k.addr_lo, k.addr_hi),
            Direction::HiToLo => (k.addr_hi, k.addr_lo),
        };
        FragKey { src, dst, id, proto: k.proto, vlan: k.vlan_outer, zone: k.zone }
    }
}

/// Remembers first fragments so later ones find their flow (or, for the
/// dispatcher in front of the workers, their worker). Bounded: it never
/// grows past its capacity, so it never allocates after creation.
pub struct FragTracker<V = FlowId> {
    map: hashbrown::HashMap<FragKey, (V, u64), foldhash::fast::RandomState>,
    cap: usize,
    timeout_ns: u64,
}

impl<V: Copy> FragTracker<V> {
    pub fn new(cap: usize, timeout_ns: u64) -> FragTracker<V> {
        FragTracker { map: hashbrown::HashMap::with_capacity_and_hasher(cap, Default::default()), cap, timeout_ns }
    }

    pub fn remember(&mut self, key: FragKey, id: V, now: u64) {
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            self.map.retain(|_, (_, expiry)| *expiry > now);
            if self.map.len() >= self.cap {
                return;
            }
        }
        self.map.insert(key, (id, now + self.timeout_ns));
    }

    pub fn find(&self, key: &FragKey, now: u64) -> Option<V> {
        match self.map.get(key) {
            Some((id, expiry)) if *expiry > now => Some(*id),
            _ => None,
        }
    }
}

/// A flow an earlier run left behind, to put back under its own id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdoptedFlow {
    pub id: FlowId,
    pub key: FlowKey,
    pub initiator: Direction,
    pub ports: [u8; 2],
    pub tcp: TcpState,
    pub first_ns: u64,
    pub last_ns: u64,
    /// Each direction's link-header length (0: not known).
    pub l2_len: [u8; 2],
    pub tcp_flags: [u8; 2],
}

/// Why a flow could not be put back under its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdoptError {
    #[error("its id belongs to another worker's table")]
    OtherShard,
    #[error("its id is past this table's max_flows")]
    OutOfRange,
    #[error("its id or its key is already in use")]
    Taken,
    #[error("the table's index is full")]
    Full,
}

pub struct FlowTable {
    flows: Vec<Flow>,
    /// The framing of the flows whose tail holds their rules' counters,
    /// by slot: kept until the slot's next flow, as a tail is.
    displaced_framing: hashbrown::HashMap<u32, Framing, foldhash::fast::FixedState>,
    /// The framing of the flow the last insert evicted, whose slot the new
    /// flow took: its record is made after the insert.
    evicted_framing: Option<(FlowId, Framing)>,
    free: Vec<u32>,
    index: FlowIndex,
    hasher: foldhash::fast::RandomState,
    wheel: TimerWheel,
    frags: FragTracker,
    live: usize,
    /// Live flows by stage (`Stage as usize`).
    by_stage: [usize; STAGE_COUNT],
    /// Every live flow with at least `heavy_bytes` bytes (and some stale
    /// ids), so "the largest flows" is answered without a scan: any flow
    /// left out is smaller than every flow in. Kept as packets and counters
    /// are counted; the bar doubles when the list grows past `HEAVY_MAX`.
    heavy: Vec<FlowId>,
    heavy_bytes: u64,
    config: TableConfig,
    stats: TableStats,
}

const STAGE_COUNT: usize = Stage::Removing as usize + 1;

impl FlowTable {
    pub fn new(config: TableConfig) -> FlowTable {
        let max = config.max_flows.clamp(1, u32::MAX as usize);
        // Reserved, not touched: pages are committed as slots fill.
        let mut flows: Vec<Flow> = Vec::with_capacity(max);
        crate::memory::advise_huge_pages(flows.as_mut_ptr() as *mut u8, max * core::mem::size_of::<Flow>());
        FlowTable {
            flows,
            displaced_framing: hashbrown::HashMap::default(),
            evicted_framing: None,
            free: Vec::new(),
            index: FlowIndex::with_capacity(max),
            hasher: Default::default(),
            wheel: TimerWheel::new(config.tick_ns, config.wheel_slots),
            frags: FragTracker::new(config.max_fragments, config.fragment_timeout_ns),
            live: 0,
            by_stage: [0; STAGE_COUNT],
            heavy: Vec::with_capacity(HEAVY_MAX + 1),
            heavy_bytes: HEAVY_START_BYTES,
            config: TableConfig { max_flows: max, ..config },
            stats: TableStats::default(),
        }
    }

    pub fn config(&self) -> &TableConfig {
        &self.config
    }

    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.config.timeouts = timeouts;
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn capacity(&self) -> usize {
        self.config.max_flows
    }

    pub fn stats(&self) -> TableStats {
        self.stats
    }

    /// The key's hash under this table's seed.
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        self.hasher.hash_one(key)
    }

    /// First step of a batched lookup: hashes the key and starts loading
    /// the index buckets it may be in. Returns the hash for the next steps.
    #[inline]
    pub fn prefetch_index(&self, key: &FlowKey) -> u64 {
        let hash = self.hash(key);
        self.index.prefetch(hash);
        hash
    }

    /// Second step: starts loading the flow the primary bucket points at
    /// (or, when it has none, the alternate bucket). Returns that flow's
    /// slot (`NO_SLOT` if none), for `lookup_or_insert_probed` to try
    /// before searching the buckets again.
    #[inline]
    pub fn prefetch_flow(&self, hash: u64) -> u32 {
        match self.index.probable(hash) {
            Some(slot) => {
                if let Some(flow) = self.flows.get(slot as usize) {
                    // A flow is two cache lines, key first.
                    // SAFETY: Flow is 128 bytes (asserted at compile time) and 64-aligned, so the cast covers
                    // exactly the live flow `flow` borrows; the bytes are never read (any padding included), only
                    // prefetched.
                    let lines: &[[u8; 64]; 2] = unsafe { &*(flow as *const Flow as *const [[u8; 64]; 2]) };
                    prefetch(&lines[0]);
                    prefetch(&lines[1]);
                }
                slot
            }
            None => NO_SLOT,
        }
    }

    /// The flow in `slot` if it is live and has `key`: the lookup for a
    /// packet whose NIC rule marked it with its flow's slot, no hash needed.
    #[inline]
    pub fn find_in_slot(&self, slot: u32, key: &FlowKey) -> Option<FlowId> {
        let f = self.flows.get(slot as usize)?;
        (f.stage != Stage::Free && f.key == *key).then(|| self.id(slot, f.generation))
    }

    /// Finds a flow by key.
    #[inline]
    pub fn find(&self, key: &FlowKey) -> Option<FlowId> {
        self.find_hashed(key, self.hash(key))
    }

    #[inline]
    fn find_hashed(&self, key: &FlowKey, hash: u64) -> Option<FlowId> {
        let flows = &self.flows;
        self.index.find(hash, |i| flows[i as usize].key == *key).map(|i| self.id(i, flows[i as usize].generation))
    }

    #[inline]
    pub fn get(&self, id: FlowId) -> Option<&Flow> {
        if id.shard() != self.config.shard {
            return None;
        }
        self.flows.get(id.index() as usize).filter(|f| f.stage != Stage::Free && f.generation == id.generation())
    }

    /// The id of slot `index` at `generation`, in this table's shard.
    #[inline]
    fn id(&self, index: u32, generation: u16) -> FlowId {
        FlowId::new(index, generation).with_shard(self.config.shard)
    }

    #[inline]
    pub fn get_mut(&mut self, id: FlowId) -> Option<&mut Flow> {
        if id.shard() != self.config.shard {
            return None;
        }
        self.flows.get_mut(id.index() as usize).filter(|f| f.stage != Stage::Free && f.generation == id.generation())
    }

    /// Looks up the flow of a packet, creating it if new. Counts nothing:
    /// see `observe`.
    #[inline]
    pub fn lookup_or_insert(&mut self, pkt: &PacketInfo, now_ns: u64) -> Lookup {
        let hash = self.hash(&pkt.key);
        self.lookup_or_insert_hashed(pkt, hash, now_ns)
    }

    /// `lookup_or_insert` with the hash `prefetch_index` returned.
    #[inline]
    pub fn lookup_or_insert_hashed(&mut self, pkt: &PacketInfo, hash: u64, now_ns: u64) -> Lookup {
        self.lookup_or_insert_probed(pkt, hash, NO_SLOT, now_ns)
    }

    /// `lookup_or_insert_hashed` given the slot `prefetch_flow` returned:
    /// a live flow there with the packet's key is the packet's flow (a key
    /// has at most one live flow), found without searching the bucket a
    /// second time. Packets handled since the prefetch may have moved it;
    /// then the search runs as without the slot.
    #[inline]
    pub fn lookup_or_insert_probed(&mut self, pkt: &PacketInfo, hash: u64, slot: u32, now_ns: u64) -> Lookup {
        // The common case inline; fragments and new flows out of line, so
        // the packet path around a lookup stays short enough to keep its
        // values in registers.
        if pkt.fragment == Fragment::Whole {
            if let Some(id) = self.find_in_slot(slot, &pkt.key) {
                return Lookup::Found(id);
            }
            return match self.find_hashed(&pkt.key, hash) {
                Some(id) => Lookup::Found(id),
                None => self.insert(pkt, hash, now_ns),
            };
        }
        self.lookup_or_insert_fragment(pkt, hash, now_ns)
    }

    #[inline(never)]
    fn lookup_or_insert_fragment(&mut self, pkt: &PacketInfo, hash: u64, now_ns: u64) -> Lookup {
        if let Fragment::Later { id } = pkt.fragment {
            return match self.frags.find(&FragKey::of(pkt, id), now_ns) {
                Some(flow) if self.get(flow).is_some() => {
                    self.stats.fragments_attributed += 1;
                    Lookup::Found(flow)
                }
                _ => {
                    self.stats.orphan_fragments += 1;
                    Lookup::OrphanFragment
                }
            };
        }
        let found = self.find_hashed(&pkt.key, hash);
        let result = match found {
            Some(id) => Lookup::Found(id),
            None => self.insert(pkt, hash, now_ns),
        };
        if let Fragment::First { id: frag_id } = pkt.fragment {
            if let Lookup::Found(id) | Lookup::Inserted { id, .. } = result {
                self.frags.remember(FragKey::of(pkt, frag_id), id, now_ns);
            }
        }
        result
    }

    #[inline(never)]
    fn insert(&mut self, pkt: &PacketInfo, hash: u64, now_ns: u64) -> Lookup {
        let mut evicted = None;
        if self.live >= self.config.max_flows {
            if self.config.full_policy == FullPolicy::RejectNew {
                self.stats.rejected_full += 1;
                return Lookup::Full;
            }
            match self.pick_victim() {
                Some(victim) => {
                    let flow = self.remove(victim).expect("victim is live");
                    self.stats.evicted_full += 1;
                    evicted = Some((victim, flow));
                }
                None => {
                    self.stats.rejected_full += 1;
                    return Lookup::Full;
                }
            }
        }
        let index = loop {
            match self.free.pop() {
                // Taken by `adopt` while still on the list.
                Some(i) if self.flows[i as usize].stage != Stage::Free => continue,
                Some(i) => break i,
                None => {
                    let i = self.flows.len() as u32;
                    self.flows.push(Flow::vacant());
                    break i;
                }
            }
        };
        if !self.index.insert(hash, index) {
            self.free.push(index);
            self.stats.rejected_full += 1;
            return match evicted {
                Some((id, flow)) => Lookup::Inserted { id: FlowId::new(u32::MAX, 0), evicted: Some((id, flow)) },
                None => Lookup::Full,
            };
        }
        if let Some((victim, _)) = &evicted {
            self.evicted_framing = Some((*victim, self.framing(*victim)));
        }
        let slot = &mut self.flows[index as usize];
        if slot.rules_counted {
            self.displaced_framing.remove(&index);
        }
        let generation = slot.generation.wrapping_add(1).max(1);
        *slot = Flow {
            key: pkt.key,
            generation,
            tcp: if pkt.key.proto == 6 { TcpState::first(pkt.tcp_flags) } else { TcpState::NotTcp },
            stage: Stage::Tracking,
            flags: (if pkt.dir == Direction::HiToLo { FLAG_INITIATOR_HI } else { 0 }) | port_known(pkt.dir),
            class: 0,
            ports: [pkt.port; 2],
            rules_counted: false,
            last_ns: now_ns,
            sw: [DirCounters::default(); 2],
            tail: bytemuck::cast(Framing { first_ns: now_ns, ..Framing::default() }),
        };
        let deadline = now_ns + self.config.timeouts.for_flow(slot);
        self.wheel.schedule(TimerEntry { index, generation }, deadline);
        self.live += 1;
        self.by_stage[Stage::Tracking as usize] += 1;
        self.stats.inserted += 1;
        Lookup::Inserted { id: self.id(index, generation), evicted }
    }

    /// Puts back a flow an earlier run had under `id` (its rules outlived
    /// that run and carry the id in their cookies), so the rules' counters
    /// find it. `initiator` is the direction of its first packet; `ports`
    /// each direction's port. It starts in stage `Tracking`, with no
    /// counts; the caller sets what it knows.
    pub fn adopt(&mut self, adopted: AdoptedFlow) -> Result<(), AdoptError> {
        let id = adopted.id;
        let index = id.index() as usize;
        if id.shard() != self.config.shard {
            return Err(AdoptError::OtherShard);
        }
        if index >= self.config.max_flows || id.generation() == 0 {
            return Err(AdoptError::OutOfRange);
        }
        let hash = self.hash(&adopted.key);
        if self.find_hashed(&adopted.key, hash).is_some()
            || self.flows.get(index).is_some_and(|f| f.stage != Stage::Free)
        {
            return Err(AdoptError::Taken);
        }
        while self.flows.len() <= index {
            self.free.push(self.flows.len() as u32);
            self.flows.push(Flow::vacant());
        }
        if !self.index.insert(hash, index as u32) {
            return Err(AdoptError::Full);
        }
        let generation = id.generation();
        let (flow, framing) = FlowTable::detached(&adopted);
        // Its rules count for it: its tail is theirs.
        self.displaced_framing.insert(index as u32, framing);
        let slot = &mut self.flows[index];
        *slot = flow;
        let deadline = adopted.last_ns + self.config.timeouts.for_flow(slot);
        self.wheel.schedule(TimerEntry { index: index as u32, generation }, deadline);
        self.live += 1;
        self.by_stage[Stage::Tracking as usize] += 1;
        self.stats.inserted += 1;
        Ok(())
    }

    /// A flow of an earlier run as `adopt` would put it back, outside any
    /// table: for the record of one that can't be put back. Its rules
    /// counted for it, so its tail is their counters (at zero) and its
    /// framing comes apart.
    pub fn detached(adopted: &AdoptedFlow) -> (Flow, Framing) {
        let generation = adopted.id.generation();
        let mut framing = Framing { first_ns: adopted.first_ns, tcp_flags: adopted.tcp_flags, ..Framing::default() };
        for dir in [Direction::LoToHi, Direction::HiToLo] {
            if adopted.l2_len[dir.index()] != 0 {
                framing.set_l2_len(dir, adopted.l2_len[dir.index()]);
            }
        }
        let flow = Flow {
            key: adopted.key,
            generation,
            tcp: adopted.tcp,
            stage: Stage::Tracking,
            flags: (if adopted.initiator == Direction::HiToLo { FLAG_INITIATOR_HI } else { 0 })
                | port_known(Direction::LoToHi)
                | port_known(Direction::HiToLo),
            class: 0,
            ports: adopted.ports,
            rules_counted: true,
            last_ns: adopted.last_ns,
            sw: [DirCounters::default(); 2],
            tail: [0; 4],
        };
        (flow, framing)
    }

    /// The software flow nearest to its deadline, looking at a bounded
    /// number of timer entries so eviction stays cheap.
    fn pick_victim(&self) -> Option<FlowId> {
        let flows = &self.flows;
        self.wheel
            .find_next(256, |e| {
                flows.get(e.index as usize).is_some_and(|f| f.generation == e.generation && f.stage.evictable())
            })
            .map(|e| self.id(e.index, e.generation))
    }

    /// Accounts a packet to its flow: TCP state, last activity and, when
    /// `count` is set, the software counters. A state change that shortens
    /// the timeout files an earlier timer entry.
    #[inline]
    pub fn observe(&mut self, id: FlowId, pkt: &PacketInfo, now_ns: u64, count: bool) {
        let heavy_bar = self.heavy_bytes;
        let Some(flow) = self.get_mut(id) else { return };
        // Older than the latest packet: perhaps older than the first too,
        // which only the side table knows (rare: off the common path).
        if now_ns < flow.last_ns {
            self.observe_late(id, pkt.dir, now_ns);
        }
        let flow = &mut self.flows[id.index() as usize];
        flow.learn_port(pkt.dir, pkt.port);
        let d = pkt.dir.index();
        let first = flow.sw[d].packets == 0;
        if count {
            let c = &mut flow.sw[d];
            c.packets += 1;
            c.bytes += pkt.wire_len as u64;
        }
        flow.touch(now_ns);
        let heavy = count && flow.flags & FLAG_HEAVY == 0 && flow.bytes() >= heavy_bar;
        let first_of_flow = first && flow.sw[d ^ 1].packets == 0;
        let was = flow.tcp;
        let tcp_moved = flow.observe_tcp(pkt.dir, pkt.tcp_flags);
        if tcp_moved {
            // Only TCP moves, so the timeouts before and after are TCP's.
            let (before, after) = (self.config.timeouts.for_tcp(was), self.config.timeouts.for_tcp(flow.tcp));
            if after < before {
                let deadline = flow.last_ns() + after;
                let entry = TimerEntry { index: id.index(), generation: id.generation() };
                self.wheel.schedule(entry, deadline);
            }
        }
        if first || tcp_moved || (count && pkt.trailer != 0) {
            self.note_framing(id, pkt, first, tcp_moved || first_of_flow, count);
        }
        if heavy {
            self.add_heavy(id);
        }
    }

    /// A packet older than its flow's latest: if older than its first, the
    /// flow starts earlier (see `Flow::start_earlier`).
    #[cold]
    fn observe_late(&mut self, id: FlowId, dir: Direction, now_ns: u64) {
        let Some(framing) = self.framing_mut(id.index()) else { return };
        if now_ns < framing.first_ns {
            framing.first_ns = now_ns;
            self.flows[id.index() as usize].start_earlier(dir);
        }
    }

    /// The framing of the flow in slot `index`, where it is: its tail, or
    /// beside the table once its rules have the tail.
    fn framing_mut(&mut self, index: u32) -> Option<&mut Framing> {
        let flow = self.flows.get_mut(index as usize)?;
        if flow.rules_counted {
            self.displaced_framing.get_mut(&index)
        } else {
            Some(bytemuck::cast_mut(&mut flow.tail))
        }
    }

    /// The live flow `id`, its tail given over to its rules' counters
    /// (`Flow::hw_mut`), its framing moved beside the table the first time.
    pub fn counted_by_rules_mut(&mut self, id: FlowId) -> Option<&mut Flow> {
        self.get(id)?;
        let index = id.index();
        let flow = &mut self.flows[index as usize];
        if let Some(framing) = flow.tail_to_rules() {
            self.displaced_framing.insert(index, framing);
        }
        Some(flow)
    }

    /// The framing facts of a packet (see `Framing`): off the common path.
    #[cold]
    fn note_framing(&mut self, id: FlowId, pkt: &PacketInfo, first: bool, flags: bool, count: bool) {
        let Some(f) = self.framing_mut(id.index()) else { return };
        let dir = pkt.dir;
        if first && !f.known(KNOWN_L2, dir) {
            f.set_l2_len(dir, pkt.l2_len);
        }
        if first && !f.known(KNOWN_ICMP, dir) && matches!(pkt.key.proto, 1 | 58) {
            f.icmp[dir.index()] = pkt.icmp;
            f.known |= KNOWN_ICMP << dir.index();
        }
        if flags {
            f.tcp_flags[dir.index()] |= pkt.tcp_flags;
        }
        if count {
            f.add_trailer(dir, u64::from(pkt.trailer));
        }
    }

    /// The time of a flow's first packet (live or just removed, as
    /// `framing`), to the nanosecond.
    pub fn first_ns(&self, id: FlowId) -> u64 {
        self.framing(id).first_ns
    }

    /// The framing facts of a flow (see `Framing`), live or just removed
    /// (until its slot is taken again; the flow an insert evicted keeps
    /// them until the next insert that evicts).
    pub fn framing(&self, id: FlowId) -> Framing {
        let index = id.index();
        match self.flows.get(index as usize) {
            Some(flow) if flow.generation == id.generation() => match flow.rules_counted {
                false => bytemuck::cast(flow.tail),
                true => self.displaced_framing.get(&index).copied().unwrap_or_default(),
            },
            _ => match self.evicted_framing {
                Some((evicted, f)) if (evicted.index(), evicted.generation()) == (id.index(), id.generation()) => f,
                _ => Framing::default(),
            },
        }
    }

    /// Where `dir`'s packets are expected while none was seen: the port a
    /// rule for it goes on, whose counters may well be that direction's
    /// first. A direction already seen keeps the port it was seen on.
    pub fn expect_port(&mut self, id: FlowId, dir: Direction, port: u8) {
        if let Some(flow) = self.get_mut(id) {
            flow.learn_port(dir, port);
        }
    }

    /// To be called after a flow's counters grew outside `observe` (the
    /// engine folding in hardware counters).
    pub fn note_counted(&mut self, id: FlowId) {
        let bar = self.heavy_bytes;
        if self.get(id).is_some_and(|f| f.flags & FLAG_HEAVY == 0 && f.bytes() >= bar) {
            self.add_heavy(id);
        }
    }

    #[cold]
    fn add_heavy(&mut self, id: FlowId) {
        self.flows[id.index() as usize].flags |= FLAG_HEAVY;
        self.heavy.push(id);
        if self.heavy.len() > HEAVY_MAX {
            self.raise_heavy_bar();
        }
    }

    /// Drops stale ids, then doubles the bar until the list is at most half
    /// full; flows dropped lose their mark and come back when they pass the
    /// new bar. Amortized over the `HEAVY_MAX / 2` additions between calls.
    fn raise_heavy_bar(&mut self) {
        loop {
            let bar = self.heavy_bytes;
            let flows = &mut self.flows;
            self.heavy.retain(|id| match flows.get_mut(id.index() as usize) {
                Some(f) if f.stage != Stage::Free && f.generation == id.generation() => {
                    if f.bytes() >= bar {
                        true
                    } else {
                        f.flags &= !FLAG_HEAVY;
                        false
                    }
                }
                _ => false,
            });
            if self.heavy.len() <= HEAVY_MAX / 2 {
                break;
            }
            self.heavy_bytes = self.heavy_bytes.saturating_mul(2);
        }
    }

    /// Rebuilds the list of largest flows with one scan, its bar set so
    /// that about `want` flows (at most `HEAVY_MAX`) are in: for when the
    /// list is too short to answer, e.g. after the bar rose and the large
    /// flows ended. The bar only ever rises otherwise, so this is how it
    /// comes down.
    pub fn rebuild_largest(&mut self, want: usize) {
        let want = want.clamp(1, HEAVY_MAX);
        // The `want`-th largest byte count: a bounded min-heap over one scan.
        let mut top: std::collections::BinaryHeap<core::cmp::Reverse<u64>> =
            std::collections::BinaryHeap::with_capacity(want + 1);
        for f in self.flows.iter().filter(|f| f.stage != Stage::Free) {
            let b = f.bytes();
            if top.len() < want {
                top.push(core::cmp::Reverse(b));
            } else if top.peek().is_some_and(|r| b > r.0) {
                top.pop();
                top.push(core::cmp::Reverse(b));
            }
        }
        let bar = top.peek().map_or(HEAVY_START_BYTES, |r| r.0).max(1);
        // Ties at the bar can overfill the list; then only flows above it.
        if self.mark_heavy(bar) > HEAVY_MAX {
            self.mark_heavy(bar + 1);
        }
    }

    /// Lists exactly the live flows with at least `bar` bytes; returns how many.
    fn mark_heavy(&mut self, bar: u64) -> usize {
        self.heavy.clear();
        self.heavy_bytes = bar;
        for (i, f) in self.flows.iter_mut().enumerate() {
            if f.stage != Stage::Free && f.bytes() >= bar {
                f.flags |= FLAG_HEAVY;
                self.heavy.push(FlowId::new(i as u32, f.generation).with_shard(self.config.shard));
            } else {
                f.flags &= !FLAG_HEAVY;
            }
        }
        self.heavy.len()
    }

    /// The largest flows by bytes: every live flow with at least `bar`
    /// bytes, none smaller. A query for the top N by bytes that finds N here
    /// is exact without scanning the table.
    pub fn largest_by_bytes(&self) -> (u64, impl Iterator<Item = (FlowId, &Flow)> + '_) {
        let live = self.heavy.iter().filter_map(|id| self.get(*id).map(|f| (*id, f)));
        (self.heavy_bytes, live)
    }

    /// Moves a flow to another stage of its offload lifecycle.
    pub fn set_stage(&mut self, id: FlowId, stage: Stage) {
        if stage == Stage::Free {
            return;
        }
        let Some(flow) = self.get_mut(id) else { return };
        let old = flow.stage;
        flow.stage = stage;
        self.by_stage[old as usize] -= 1;
        self.by_stage[stage as usize] += 1;
    }

    /// How many live flows are in each stage, without a scan.
    pub fn count_by_stage(&self) -> impl Iterator<Item = (Stage, usize)> + '_ {
        Stage::LIVE.into_iter().map(|s| (s, self.by_stage[s as usize]))
    }

    /// The moment a flow becomes idle, given its current state.
    pub fn deadline(&self, flow: &Flow) -> u64 {
        flow.last_ns() + self.config.timeouts.for_flow(flow)
    }

    /// Moves time to `now_ns` and appends every flow whose idle deadline
    /// has passed to `due`. The flows stay in the table: the caller removes
    /// their rules, writes their records, then calls `remove`.
    pub fn expire(&mut self, now_ns: u64, due: &mut Vec<FlowId>) {
        let flows = &self.flows;
        let timeouts = self.config.timeouts;
        let shard = self.config.shard;
        self.wheel.advance(now_ns, |e| {
            let f = flows.get(e.index as usize)?;
            if f.stage == Stage::Free || f.generation != e.generation {
                return None;
            }
            let deadline = f.last_ns() + timeouts.for_flow(f);
            if deadline <= now_ns {
                due.push(FlowId::new(e.index, e.generation).with_shard(shard));
                None
            } else {
                Some(deadline)
            }
        });
    }

    /// Files a flow again after the caller chose not to remove a due flow
    /// (for example while its rule removal is retried).
    pub fn reschedule(&mut self, id: FlowId, deadline_ns: u64) {
        if self.get(id).is_some() {
            self.wheel.schedule(TimerEntry { index: id.index(), generation: id.generation() }, deadline_ns);
        }
    }

    /// Removes a flow, returning it.
    pub fn remove(&mut self, id: FlowId) -> Option<Flow> {
        let flow = *self.get(id)?;
        let hash = self.hash(&flow.key);
        let index = id.index();
        self.index.remove(hash, index);
        let slot = &mut self.flows[index as usize];
        self.by_stage[slot.stage as usize] -= 1;
        slot.stage = Stage::Free;
        self.free.push(index);
        self.live -= 1;
        Some(flow)
    }

    /// Every live flow.
    pub fn iter(&self) -> impl Iterator<Item = (FlowId, &Flow)> + '_ {
        let shard = self.config.shard;
        self.flows
            .iter()
            .enumerate()
            .filter(|(_, f)| f.stage != Stage::Free)
            .map(move |(i, f)| (FlowId::new(i as u32, f.generation).with_shard(shard), f))
    }

    /// Slots the table has handed out so far, live or free: the bound of
    /// `at_slot`.
    pub fn slots(&self) -> usize {
        self.flows.len()
    }

    /// The live flow in slot `index`, if any: for walks over the table a
    /// slice at a time.
    pub fn at_slot(&self, index: u32) -> Option<(FlowId, &Flow)> {
        let f = self.flows.get(index as usize).filter(|f| f.stage != Stage::Free)?;
        Some((self.id(index, f.generation), f))
    }

    /// Ids of every live flow.
    pub fn ids(&self) -> Vec<FlowId> {
        self.iter().map(|(id, _)| id).collect()
    }

    /// Heap bytes held, for the per-flow memory figure.
    pub fn heap_bytes(&self) -> usize {
        self.flows.capacity() * core::mem::size_of::<Flow>()
            + self.displaced_framing.allocation_size()
            + self.free.capacity() * 4
            + self.index.heap_bytes()
            + self.wheel.heap_bytes()
            + self.frags.map.allocation_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::{TCP_ACK, TCP_FIN, TCP_SYN};
    use core::net::Ipv4Addr;

    const S: u64 = 1_000_000_000;

    fn pkt(sport: u16, dport: u16, proto: u8, flags: u8, len: u32) -> PacketInfo {
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let (key, dir) = if sport > dport {
            FlowKey::from_v4(a, b, sport, dport, proto)
        } else {
            FlowKey::from_v4(b, a, sport, dport, proto)
        };
        PacketInfo::whole(key, dir, 0, len, flags)
    }

    fn table(max: usize, policy: FullPolicy) -> FlowTable {
        FlowTable::new(TableConfig { max_flows: max, full_policy: policy, ..Default::default() })
    }

    fn track(t: &mut FlowTable, p: &PacketInfo, now: u64) -> FlowId {
        let id = match t.lookup_or_insert(p, now) {
            Lookup::Found(id) | Lookup::Inserted { id, .. } => id,
            other => panic!("{other:?}"),
        };
        t.observe(id, p, now, true);
        id
    }

    #[test]
    fn each_direction_keeps_the_port_it_arrives_on() {
        let mut t = table(16, FullPolicy::EvictIdle);
        let ports = crate::PortMap::with_pairs(&[(2, 5)]).unwrap();
        let on = |mut p: PacketInfo, port: u8| {
            let i = ports.ingress(port);
            p.key.zone = i.zone;
            p.port = i.port;
            p
        };
        let out = on(pkt(40000, 80, 17, 0, 60), 5);
        let a = track(&mut t, &out, 0);
        let f = t.get(a).unwrap();
        let (orig, reply) = (out.dir, out.dir.reverse());
        assert_eq!((f.port(orig), f.port(reply)), (5, 5), "an unseen direction starts on the first port");
        assert!(f.port_known(orig) && !f.port_known(reply));
        let b = track(&mut t, &on(pkt(80, 40000, 17, 0, 60), 2), 1000);
        assert_eq!(a, b, "the reply on the pair's other port is the same flow");
        let f = t.get(a).unwrap();
        assert_eq!((f.port(orig), f.port(reply)), (5, 2));
        assert!(f.port_known(reply));
        assert_eq!(f.key.zone, 2);
        track(&mut t, &on(pkt(80, 40000, 17, 0, 60), 5), 1500);
        assert_eq!(t.get(a).unwrap().port(reply), 2, "a direction keeps the port it first came in on");
        // Unpaired, the same 5-tuple on another port is another flow.
        let c = track(&mut t, &on(pkt(80, 40000, 17, 0, 60), 3), 2000);
        assert_ne!(a, c);
    }

    #[test]
    fn a_reply_captured_before_its_request_but_handled_after_makes_the_initiator() {
        let mut t = table(16, FullPolicy::EvictIdle);
        let ms = 1_000_000;
        let request = pkt(40000, 53, 17, 0, 80);
        let a = track(&mut t, &request, 100 * ms);
        let f = t.get(a).unwrap();
        assert_eq!(f.initiator(), request.dir);
        let reply = pkt(53, 40000, 17, 0, 120);
        track(&mut t, &reply, 97 * ms);
        let f = t.get(a).unwrap();
        assert_eq!(f.initiator(), reply.dir, "the earliest packet's direction starts the flow");
        assert_eq!((t.first_ns(a), f.last_ns()), (97 * ms, 100 * ms));
        // Once later packets come in order nothing moves.
        track(&mut t, &request, 150 * ms);
        let f = t.get(a).unwrap();
        assert_eq!((f.initiator(), t.first_ns(a), f.last_ns()), (reply.dir, 97 * ms, 150 * ms));

        // TCP past its first packet keeps its initiator: its state says who is who.
        let syn = pkt(40001, 80, 6, TCP_SYN, 60);
        let b = track(&mut t, &syn, 200 * ms);
        track(&mut t, &pkt(80, 40001, 6, TCP_SYN | TCP_ACK, 60), 199 * ms);
        let f = t.get(b).unwrap();
        assert_eq!((f.initiator(), t.first_ns(b)), (syn.dir, 199 * ms));
    }

    #[test]
    fn a_flows_first_and_last_packet_times_are_kept_to_the_nanosecond() {
        let mut t = table(16, FullPolicy::EvictIdle);
        let p = pkt(40000, 53, 17, 0, 80);
        let id = track(&mut t, &p, 1_643_129_441_023_341_461);
        track(&mut t, &p, 1_643_129_441_065_505_469);
        // One handled late (two ports read in turn) moves neither end inward.
        track(&mut t, &p, 1_643_129_441_030_000_001);
        assert_eq!(t.first_ns(id), 1_643_129_441_023_341_461);
        assert_eq!(t.get(id).unwrap().last_ns(), 1_643_129_441_065_505_469);
        // A flow lasting past the old millisecond counter's 49 days.
        let later = 1_643_129_441_065_505_469 + 60 * 86_400 * 1_000_000_000 + 7;
        track(&mut t, &p, later);
        assert_eq!(t.get(id).unwrap().last_ns(), later);
    }

    #[test]
    fn flow_is_128_bytes() {
        assert_eq!(core::mem::size_of::<Flow>(), 128);
    }

    #[test]
    fn both_directions_count_into_one_flow() {
        let mut t = table(16, FullPolicy::EvictIdle);
        let a = track(&mut t, &pkt(40000, 80, 6, TCP_SYN, 60), 0);
        let b = track(&mut t, &pkt(80, 40000, 6, TCP_SYN | TCP_ACK, 60), 1000);
        assert_eq!(a, b);
        let f = t.get(a).unwrap();
        assert_eq!(f.packets(), 2);
        assert_eq!(f.bytes(), 120);
        assert_eq!(f.tcp, TcpState::SynReceived);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn idle_flows_expire_on_their_protocol_timeout() {
        let mut t = table(16, FullPolicy::EvictIdle);
        let udp = track(&mut t, &pkt(5000, 53, 17, 0, 80), 0);
        let tcp = track(&mut t, &pkt(40000, 80, 6, TCP_ACK, 60), 0);
        let mut due = vec![];
        t.expire(59 * S, &mut due);
        assert!(due.is_empty());
        t.expire(61 * S, &mut due);
        assert_eq!(due, vec![udp]);
        t.remove(udp);
        due.clear();
        t.expire(299 * S, &mut due);
        assert!(due.is_empty());
        t.expire(301 * S, &mut due);
        assert_eq!(due, vec![tcp]);
    }

    #[test]
    fn activity_postpones_expiry() {
        let mut t = table(16, FullPolicy::EvictIdle);
        let p = pkt(5000, 53, 17, 0, 80);
        let id = track(&mut t, &p, 0);
        track(&mut t, &p, 50 * S);
        let mut due = vec![];
        t.expire(100 * S, &mut due);
        assert!(due.is_empty());
        t.expire(111 * S, &mut due);
        assert_eq!(due, vec![id]);
    }

    #[test]
    fn tcp_close_shortens_the_timeout() {
        let mut t = table(16, FullPolicy::EvictIdle);
        let id = track(&mut t, &pkt(40000, 80, 6, TCP_SYN, 60), 0);
        track(&mut t, &pkt(80, 40000, 6, TCP_SYN | TCP_ACK, 60), 0);
        track(&mut t, &pkt(40000, 80, 6, TCP_ACK, 60), 0);
        track(&mut t, &pkt(40000, 80, 6, TCP_FIN | TCP_ACK, 60), S);
        track(&mut t, &pkt(80, 40000, 6, TCP_FIN | TCP_ACK, 60), S);
        track(&mut t, &pkt(40000, 80, 6, TCP_ACK, 60), S);
        assert_eq!(t.get(id).unwrap().tcp, TcpState::Closed);
        let mut due = vec![];
        t.expire(S + 6 * S, &mut due);
        assert_eq!(due, vec![id]);
    }

    #[test]
    fn framing_gives_ip_octets_and_the_state_moving_flags_and_outlives_eviction() {
        let mut t = table(2, FullPolicy::EvictIdle);
        let framed = |mut p: PacketInfo, l2: u8, trailer: u16| {
            p.l2_len = l2;
            p.trailer = trailer;
            p
        };
        // 14 bytes of Ethernet; the SYN padded by 6, the rest not.
        let syn = framed(pkt(40000, 80, 6, TCP_SYN, 60), 14, 6);
        let id = track(&mut t, &syn, 0);
        track(&mut t, &framed(pkt(80, 40000, 6, TCP_SYN | TCP_ACK, 74), 18, 0), 1);
        track(&mut t, &framed(pkt(40000, 80, 6, TCP_ACK | 0x08, 1514), 14, 0), 2);
        // Established already: this one moves nothing, its URG is not kept.
        track(&mut t, &framed(pkt(40000, 80, 6, TCP_ACK | 0x20, 54), 14, 0), 2);
        let flow = *t.get(id).unwrap();
        let f = t.framing(id);
        let (c, s) = (syn.dir, syn.dir.reverse());
        assert_eq!((f.l2_len(c), f.l2_len(s)), (14, 18));
        // Client: 60 + 1514 + 54 frame bytes, less 3 x 14 of header and 6 of padding.
        assert_eq!(f.ip_bytes(c, flow.sw[c.index()], flow.hw()[c.index()]), (60 + 1514 + 54 - 42 - 6, 0));
        // The NIC's part: its frames less the direction's header.
        let hw = DirCounters { packets: 3, bytes: 300 };
        assert_eq!(f.ip_bytes(s, flow.sw[s.index()], hw), (74 - 18, 300 - 3 * 18));
        // The packets that moved the state: SYN and the handshake's ACK (with
        // its PSH), SYN-ACK; not the later URG.
        assert_eq!((f.tcp_flags[c.index()], f.tcp_flags[s.index()]), (TCP_SYN | TCP_ACK | 0x08, TCP_SYN | TCP_ACK));
        // A direction never seen by software takes the other's header.
        let only = track(&mut t, &framed(pkt(1000, 53, 17, 0, 80), 14, 0), 3);
        let g = t.framing(only);
        assert_eq!(g.l2_len(Direction::LoToHi), g.l2_len(Direction::HiToLo));
        // Evicted to make room: its framing is there for its record.
        match t.lookup_or_insert(&pkt(1001, 53, 17, 0, 80), 4) {
            Lookup::Inserted { evicted: Some((victim, _)), .. } => {
                let want = if victim == id { f } else { g };
                assert_eq!(t.framing(victim), want);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn framing_keeps_48_bit_trailers_and_tells_a_zero_header_from_none() {
        let (lo, hi) = (Direction::LoToHi, Direction::HiToLo);
        let mut f = Framing::default();
        assert_eq!((f.l2_len(lo), f.icmp(lo), f.trailer(lo)), (0, None, 0));
        // Carried past the low 32 bits, then stopped at 48.
        f.add_trailer(lo, u64::from(u32::MAX));
        f.add_trailer(lo, 2);
        assert_eq!((f.trailer(lo), f.trailer(hi)), ((1 << 32) + 1, 0));
        f.add_trailer(lo, u64::MAX);
        assert_eq!(f.trailer(lo), TRAILER_MAX);
        // A raw IP direction's header is a known 0, not the other's 14.
        f.set_l2_len(hi, 14);
        assert_eq!(f.l2_len(lo), 14, "unknown: the other direction's");
        f.set_l2_len(lo, 0);
        assert_eq!((f.l2_len(lo), f.l2_len(hi)), (0, 14));
    }

    #[test]
    fn icmp_type_zero_is_recorded_and_framing_lasts_until_the_slot_is_reused() {
        let mut t = table(1, FullPolicy::EvictIdle);
        let mut reply = pkt(7, 7, 1, 0, 98);
        reply.icmp = [0, 0];
        let id = track(&mut t, &reply, 0);
        let f = t.framing(id);
        assert_eq!((f.icmp(reply.dir), f.icmp(reply.dir.reverse())), (Some([0, 0]), None));
        t.remove(id).unwrap();
        assert_eq!(t.framing(id), f, "a removed flow's framing is there for its record");
        let next = track(&mut t, &pkt(1000, 53, 17, 0, 80), S);
        assert_eq!(next.index(), id.index());
        assert_eq!(t.framing(id), Framing::default(), "the slot's new flow is not the old one's");
        assert_eq!(t.framing(next).first_ns, S);
    }

    #[test]
    fn rules_take_the_tail_and_the_framing_moves_beside_the_table_whole() {
        let mut t = table(2, FullPolicy::EvictIdle);
        let mut syn = pkt(40000, 80, 6, TCP_SYN, 60);
        (syn.l2_len, syn.trailer) = (14, 6);
        let id = track(&mut t, &syn, 10 * S);
        let before = t.framing(id);
        assert_eq!(t.get(id).unwrap().hw(), [DirCounters::default(); 2], "no rule counted yet");
        // A rule counts: its counters take the tail, the framing is kept.
        let (c, s) = (syn.dir.index(), syn.dir.reverse().index());
        t.counted_by_rules_mut(id).unwrap().hw_mut()[s] = DirCounters { packets: 3, bytes: 300 };
        assert_eq!(t.framing(id), before);
        let flow = *t.get(id).unwrap();
        assert_eq!((flow.hw()[c], flow.hw()[s]), (DirCounters::default(), DirCounters { packets: 3, bytes: 300 }));
        assert_eq!(flow.total(syn.dir.reverse()).packets, 3, "totals count the rules' part");
        assert_eq!(flow.bytes(), 60 + 300);
        // Counting again leaves both alone.
        t.counted_by_rules_mut(id).unwrap().hw_mut()[c].packets += 1;
        assert_eq!((t.framing(id), t.get(id).unwrap().hw()[s].packets), (before, 3));
        // Packets software still takes write the moved framing: one handled
        // late moves the start, a FIN adds its flags, padding its trailer.
        let mut late = pkt(40000, 80, 6, TCP_ACK, 60);
        (late.l2_len, late.trailer) = (14, 6);
        track(&mut t, &late, 5 * S);
        let mut fin = pkt(80, 40000, 6, TCP_FIN | TCP_ACK, 60);
        (fin.l2_len, fin.trailer) = (18, 4);
        track(&mut t, &fin, 11 * S);
        let f = t.framing(id);
        assert_eq!(f.first_ns, 5 * S);
        assert_eq!((f.trailer(syn.dir), f.trailer(fin.dir)), (12, 4));
        assert_eq!((f.l2_len(syn.dir), f.l2_len(fin.dir)), (14, 18));
        assert_eq!(f.tcp_flags[s], TCP_FIN | TCP_ACK);
        assert_eq!(t.get(id).unwrap().hw()[s].packets, 3, "software's packets are not the rules'");
        // Removed, both last until the slot's next flow, which has neither.
        let gone = t.remove(id).unwrap();
        assert_eq!((t.framing(id), gone.hw()[s].packets), (f, 3));
        let next = track(&mut t, &pkt(1000, 53, 17, 0, 80), 12 * S);
        assert_eq!(next.index(), id.index());
        assert_eq!(t.framing(id), Framing::default());
        assert_eq!(t.framing(next).first_ns, 12 * S);
        assert_eq!(t.get(next).unwrap().hw(), [DirCounters::default(); 2]);
        assert!(t.displaced_framing.is_empty(), "the old flow's framing went with its slot");
    }

    #[test]
    fn an_evicted_flow_whose_rules_counted_keeps_its_framing_for_its_record() {
        let mut t = table(1, FullPolicy::EvictIdle);
        let mut first = pkt(1000, 53, 17, 0, 80);
        first.l2_len = 18;
        let id = track(&mut t, &first, S);
        t.counted_by_rules_mut(id).unwrap().hw_mut()[0] = DirCounters { packets: 2, bytes: 160 };
        let want = t.framing(id);
        match t.lookup_or_insert(&pkt(1001, 53, 17, 0, 80), 2 * S) {
            Lookup::Inserted { evicted: Some((victim, flow)), .. } => {
                assert_eq!(victim, id);
                assert_eq!(flow.hw()[0].packets, 2);
                assert_eq!(t.framing(victim), want);
                assert_eq!(want.l2_len(first.dir), 18);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_filled_table_holds_a_software_flow_in_at_most_155_bytes() {
        // The goal of docs/PERFORMANCE.md at a million flows, as `bench
        // table` fills its table: the flow, its index and timer entries,
        // its framing, and the table's fixed parts (the fragment map, the
        // wheel's slots) shared out.
        let n = 1 << 20;
        let mut t = table(n, FullPolicy::RejectNew);
        for i in 0..n as u32 {
            let key = FlowKey::from_v4(Ipv4Addr::from(0x0a00_0000 | i), Ipv4Addr::new(10, 255, 0, 1), 40000, 443, 6).0;
            let p = PacketInfo::whole(key, Direction::LoToHi, 0, 60, TCP_SYN);
            track(&mut t, &p, S + u64::from(i) * 1000);
        }
        assert_eq!(t.len(), n);
        let per_flow = t.heap_bytes() as f64 / n as f64;
        assert!(per_flow <= 155.0, "{per_flow:.1} bytes a flow");
    }

    #[test]
    fn full_table_evicts_the_flow_nearest_expiry() {
        let mut t = table(2, FullPolicy::EvictIdle);
        let first = track(&mut t, &pkt(1000, 53, 17, 0, 80), 0);
        let _second = track(&mut t, &pkt(1001, 53, 17, 0, 80), 10 * S);
        let p3 = pkt(1002, 53, 17, 0, 80);
        match t.lookup_or_insert(&p3, 20 * S) {
            Lookup::Inserted { evicted: Some((victim, flow)), .. } => {
                assert_eq!(victim, first);
                assert_eq!(flow.packets(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.len(), 2);
        assert!(t.get(first).is_none(), "stale id must not resolve");
        assert_eq!(t.stats().evicted_full, 1);
    }

    #[test]
    fn full_table_never_evicts_offloaded_flows() {
        let mut t = table(1, FullPolicy::EvictIdle);
        let id = track(&mut t, &pkt(1000, 53, 17, 0, 80), 0);
        t.set_stage(id, Stage::Offloaded);
        assert_eq!(t.lookup_or_insert(&pkt(1001, 53, 17, 0, 80), S), Lookup::Full);
        assert_eq!(t.stats().rejected_full, 1);
        assert!(t.get(id).is_some());
    }

    #[test]
    fn reject_policy_keeps_existing_flows() {
        let mut t = table(1, FullPolicy::RejectNew);
        let id = track(&mut t, &pkt(1000, 53, 17, 0, 80), 0);
        assert_eq!(t.lookup_or_insert(&pkt(1001, 53, 17, 0, 80), S), Lookup::Full);
        assert_eq!(t.lookup_or_insert(&pkt(1000, 53, 17, 0, 80), S), Lookup::Found(id));
    }

    #[test]
    fn later_fragments_follow_their_first() {
        let mut t = table(16, FullPolicy::EvictIdle);
        let mut first = pkt(5000, 53, 17, 0, 1500);
        first.fragment = Fragment::First { id: 77 };
        let id = track(&mut t, &first, 0);
        let mut later = first;
        later.key.port_lo = 0;
        later.key.port_hi = 0;
        later.fragment = Fragment::Later { id: 77 };
        assert_eq!(t.lookup_or_insert(&later, 1), Lookup::Found(id));
        let mut orphan = later;
        orphan.fragment = Fragment::Later { id: 78 };
        assert_eq!(t.lookup_or_insert(&orphan, 1), Lookup::OrphanFragment);
        assert_eq!(t.stats().orphan_fragments, 1);
    }

    #[test]
    fn counts_by_stage_follow_inserts_moves_and_removals() {
        let mut t = table(8, FullPolicy::EvictIdle);
        let a = track(&mut t, &pkt(1000, 53, 17, 0, 80), 0);
        let b = track(&mut t, &pkt(1001, 53, 17, 0, 80), 0);
        t.set_stage(a, Stage::Offloaded);
        let counts = |t: &FlowTable| t.count_by_stage().filter(|(_, n)| *n > 0).collect::<Vec<_>>();
        assert_eq!(counts(&t), vec![(Stage::Tracking, 1), (Stage::Offloaded, 1)]);
        t.remove(a);
        t.set_stage(a, Stage::Software); // stale id: no effect
        assert_eq!(counts(&t), vec![(Stage::Tracking, 1)]);
        t.remove(b);
        assert_eq!(counts(&t), vec![]);
    }

    #[test]
    fn largest_flows_list_holds_every_flow_over_its_bar() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(9);
        let mut t = table(40_000, FullPolicy::EvictIdle);
        let mut ids = Vec::new();
        for round in 0..400_000u32 {
            // Skewed towards low ports: a few large flows, many small ones.
            let port = 1000 + (rng.gen::<f64>().powi(2) * 30_000.0) as u16;
            let p = pkt(port, 53, 17, 0, rng.gen_range(64..9000));
            let id = track(&mut t, &p, round as u64);
            if rng.gen_bool(0.01) {
                ids.push(id);
            }
            // Now and then a flow ends, so stale ids must be told apart.
            if rng.gen_bool(0.02) {
                if let Some(victim) = ids.pop() {
                    t.remove(victim);
                }
            }
        }
        let (bar, listed) = t.largest_by_bytes();
        let listed: std::collections::HashSet<FlowId> = listed.map(|(id, _)| id).collect();
        assert!(bar > HEAVY_START_BYTES, "the bar rose ({bar})");
        assert!(listed.len() <= HEAVY_MAX);
        let mut over = 0;
        for (id, f) in t.iter() {
            if f.bytes() >= bar {
                over += 1;
                assert!(listed.contains(&id), "{id} has {} bytes >= {bar} but is not listed", f.bytes());
            } else {
                assert!(!listed.contains(&id), "{id} is listed under the bar");
            }
        }
        assert_eq!(over, listed.len());
        assert!(over > 100, "enough large flows to answer a top 100 ({over})");

        // Rebuilt for the 50 largest: the bar drops to the 50th largest.
        t.rebuild_largest(50);
        let (bar, listed) = t.largest_by_bytes();
        let listed: Vec<FlowId> = listed.map(|(id, _)| id).collect();
        let mut sizes: Vec<u64> = t.iter().map(|(_, f)| f.bytes()).collect();
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(bar, sizes[49]);
        assert_eq!(listed.len(), sizes.iter().filter(|b| **b >= bar).count());
    }

    #[test]
    fn removed_slots_are_reused_with_a_new_generation() {
        let mut t = table(4, FullPolicy::EvictIdle);
        let a = track(&mut t, &pkt(1000, 53, 17, 0, 80), 0);
        t.remove(a);
        let b = track(&mut t, &pkt(1001, 53, 17, 0, 80), 0);
        assert_eq!(a.index(), b.index());
        assert_ne!(a, b);
        assert!(t.get(a).is_none());
        assert_eq!(t.find(&pkt(1000, 53, 17, 0, 80).key), None);
    }
}
