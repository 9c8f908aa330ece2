//! A seeded synthetic traffic generator: an interleaved, realistic mix of
//! short TCP transactions, long TCP elephants, DNS-like UDP exchanges, UDP
//! streams and ICMP echo, as Ethernet frames, with the ground truth of every
//! flow kept so a flow table can be checked against it.
//!
//! Frames are Ethernet II, some 802.1Q-tagged, over IPv4 or IPv6, and carry
//! correct IP lengths, IPv4 header checksums, TCP/UDP lengths and correct
//! TCP, UDP, ICMP and ICMPv6 checksums. DNS flows carry real DNS queries
//! and answers (A, then AAAA); every other payload is a fixed byte pattern,
//! not real TLS or media contents; the pattern is what makes the checksums
//! cheap (its prefix sums are computed once).
//!
//! The generator keeps `concurrency` flows live; each packet comes from a
//! live flow picked at random with a weight that grows with the flow's size
//! (one lottery ticket per [`TICKET_PACKETS`] packets it will send), so big
//! flows send faster than small ones and a run doesn't end with a long tail
//! of lone elephants. A finished flow is replaced by a new one until `flows`
//! have been started. Timestamps advance by exponential gaps whose mean is
//! `1 / rate_pps`, so arrivals are Poisson in simulated time.
//!
//! The hot loop allocates nothing per packet: each frame is built into one
//! of a few reused buffers, one per header layout, whose payload area holds
//! the pattern once and for all. Per flow, the ticket list and the ground
//! truth (about 100 bytes a flow; `keep_truth: false` turns it off) grow
//! amortised.

use super::{PacketSource, RawPacket, SourceError};
use flowtable_sw::{Direction, FlowKey, LinkType};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, TsResolution};
use rand::{Rng, RngCore, SeedableRng};
use rand_distr::{Distribution, Exp1, LogNormal, Pareto};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

// The settings live with the configuration, which checks them; they are
// the generator's own, so they are named from here too.
use flowtable_config::synth::invalid;
pub use flowtable_config::synth::{FlowMix, InvalidSynthConfig, SynthConfig, MAX_FLOWS};

/// What kind of conversation a flow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowKind {
    /// Handshake, a request and a response of a few segments, teardown.
    TcpShort,
    /// Handshake, thousands of full segments one way with ACKs back, teardown.
    TcpElephant,
    /// One or two query/response pairs to port 53.
    UdpDns,
    /// A long stream of datagrams, mostly from the server.
    UdpStream,
    /// ICMP or ICMPv6 echo requests, each answered.
    IcmpEcho,
}

/// How a flow's traffic ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowEnd {
    /// TCP: FIN from each side, then the last ACK.
    Fin,
    /// TCP: an RST after the data.
    Rst,
    /// TCP: left open after the data; only a timeout ends it.
    Idle,
    /// UDP or ICMP: the exchange ran to its planned end (no close on the wire).
    Complete,
    /// Not at its end yet: the generator is still running, or stopped at `max_packets`.
    Unfinished,
}

/// The ground truth of one generated flow. Counters are indexed by
/// [`Direction::index`] relative to `key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowTruth {
    pub key: FlowKey,
    pub kind: FlowKind,
    pub end: FlowEnd,
    /// The direction of the client's (first) packet.
    pub client_dir: Direction,
    pub packets: [u64; 2],
    /// Bytes on the wire (whole Ethernet frames, no FCS).
    pub bytes: [u64; 2],
    pub first_ts_ns: u64,
    pub last_ts_ns: u64,
}

impl FlowTruth {
    pub fn total_packets(&self) -> u64 {
        self.packets[0] + self.packets[1]
    }
    pub fn total_bytes(&self) -> u64 {
        self.bytes[0] + self.bytes[1]
    }
}

/// Totals of what a generator has produced so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct SynthTotals {
    pub packets: u64,
    pub bytes: u64,
    pub flows_started: u64,
    pub flows_ended: u64,
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;

const PROTO_ICMP: u8 = 1;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMPV6: u8 = 58;

/// IP MTU of every simulated link.
const IP_MTU: usize = 1500;
/// Bytes per layout buffer: the largest frame is 18 + 1500.
const STRIDE: usize = 1536;
/// Layouts: VLAN or not x IPv4 or IPv6 x L4 header of 8, 20, 32 or 40 bytes.
const LANES: usize = 16;
const MAX_L23: usize = 18 + 40;
const L4_LENS: [usize; 4] = [8, 20, 32, 40];
/// The generator side of the pair: index 0 is the client, 1 the server.
const CLIENT: usize = 0;
const SERVER: usize = 1;
const NO_ACK: u8 = 2;
/// A flow gets one lottery ticket per this many packets it plans to send
/// (at least one): flows up to this size share the lowest rate, bigger ones
/// send in proportion to their size.
pub const TICKET_PACKETS: u64 = 128;

/// pcap LINKTYPE_ETHERNET.
const LINKTYPE_ETHERNET: u32 = 1;

const DNS_NAME_MAX: usize = 40;
const DNS_TYPE_A: u16 = 1;
const DNS_TYPE_AAAA: u16 = 28;

const GATEWAY_MAC: [u8; 6] = [0x02, 0xf1, 0x00, 0x00, 0x00, 0x01];

fn pattern_byte(i: usize) -> u8 {
    (i as u8).wrapping_add(0x10)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Syn,
    SynAck,
    HandshakeAck,
    Data,
    Fin1,
    Fin2,
    Fin3,
    Rst,
    Exchange,
    Done,
}

/// One direction of a live flow: its prebuilt L2+L3 header and counters.
#[derive(Clone)]
struct Side {
    l23: [u8; MAX_L23],
    /// One's-complement sum of the IPv4 header with length, id and checksum zero.
    ip_sum: u32,
    /// Sum of the L4 pseudo-header without its length (0 for ICMPv4).
    pseudo: u32,
    sport: u16,
    dport: u16,
    ip_id: u16,
    seq: u32,
    tsval_offset: u32,
    last_tsval: u32,
    /// TCP: bytes still to send. DNS/ICMP: messages still to send. Stream: packets left (client side).
    remaining: u32,
    /// UDP payload size this side sends.
    size: u16,
    packets: u64,
    bytes: u64,
}

struct Live {
    key: FlowKey,
    client_dir: Direction,
    /// Bumped whenever the slot's flow changes, so old tickets go stale.
    generation: u32,
    /// The slot holds no flow (every flow has been started and this one ended).
    vacant: bool,
    kind: FlowKind,
    plan: FlowEnd,
    phase: Phase,
    proto: u8,
    /// Layout bits: VLAN (1) and IPv6 (2).
    lane_base: u8,
    l23_len: u8,
    tcp_ts: bool,
    closer: u8,
    pending_ack: u8,
    unacked: u8,
    /// Payload bytes of a full segment (the MSS less the timestamp option).
    mss: u16,
    icmp_seq: u16,
    icmp_types: [u8; 2],
    /// UDP stream: chance, out of 2^16, that a packet goes client to server.
    upstream: u16,
    /// DNS: transaction id of the first query, and the name asked for, in wire form.
    dns_id: u16,
    dns_name_len: u8,
    dns_name: [u8; DNS_NAME_MAX],
    first_ts: u64,
    last_ts: u64,
    sides: [Side; 2],
}

impl Live {
    /// Chooses this flow's next packet and moves its state on; returns the
    /// sending side, TCP flags and payload length.
    #[inline]
    fn step(&mut self, rng: &mut Xoshiro256PlusPlus) -> (usize, u8, usize) {
        match self.phase {
            Phase::Syn => {
                self.phase = Phase::SynAck;
                (CLIENT, TCP_SYN, 0)
            }
            Phase::SynAck => {
                self.phase = Phase::HandshakeAck;
                (SERVER, TCP_SYN | TCP_ACK, 0)
            }
            Phase::HandshakeAck => {
                self.phase = Phase::Data;
                (CLIENT, TCP_ACK, 0)
            }
            Phase::Data => self.data_step(),
            Phase::Fin1 => {
                self.phase = Phase::Fin2;
                (self.closer as usize, TCP_FIN | TCP_ACK, 0)
            }
            Phase::Fin2 => {
                self.phase = Phase::Fin3;
                (1 - self.closer as usize, TCP_FIN | TCP_ACK, 0)
            }
            Phase::Fin3 | Phase::Rst => {
                let flags = if self.phase == Phase::Rst { TCP_RST | TCP_ACK } else { TCP_ACK };
                self.phase = Phase::Done;
                (self.closer as usize, flags, 0)
            }
            Phase::Exchange => self.exchange_step(rng),
            Phase::Done => (CLIENT, 0, 0),
        }
    }

    /// Data transfer: the client's request, then the server's response;
    /// the receiver ACKs every second segment and the end of the last
    /// burst, other ACKs ride on data.
    #[inline]
    fn data_step(&mut self) -> (usize, u8, usize) {
        let out = if self.pending_ack != NO_ACK {
            let side = self.pending_ack as usize;
            self.pending_ack = NO_ACK;
            (side, TCP_ACK, 0)
        } else {
            let s = if self.sides[CLIENT].remaining > 0 { CLIENT } else { SERVER };
            let r = 1 - s;
            let len = self.sides[s].remaining.min(self.mss as u32);
            self.sides[s].remaining -= len;
            self.unacked += 1;
            let mut flags = TCP_ACK;
            if self.sides[s].remaining == 0 {
                flags |= TCP_PSH;
                self.unacked = 0;
                if self.sides[r].remaining == 0 {
                    self.pending_ack = r as u8;
                }
            } else if self.unacked >= 2 {
                self.unacked = 0;
                self.pending_ack = r as u8;
            }
            (s, flags, len as usize)
        };
        if self.pending_ack == NO_ACK && self.sides[CLIENT].remaining == 0 && self.sides[SERVER].remaining == 0 {
            self.phase = match self.plan {
                FlowEnd::Rst => Phase::Rst,
                FlowEnd::Idle => Phase::Done,
                _ => Phase::Fin1,
            };
        }
        out
    }

    #[inline]
    fn exchange_step(&mut self, rng: &mut Xoshiro256PlusPlus) -> (usize, u8, usize) {
        if self.kind == FlowKind::UdpStream {
            let side = if self.sides[CLIENT].packets + self.sides[SERVER].packets == 0
                || (rng.next_u32() >> 16) < self.upstream as u32
            {
                CLIENT
            } else {
                SERVER
            };
            self.sides[CLIENT].remaining -= 1;
            if self.sides[CLIENT].remaining == 0 {
                self.phase = Phase::Done;
            }
            return (side, 0, self.sides[side].size as usize);
        }
        // Request/response: the client asks when both sides have as many
        // messages left, the server answers otherwise.
        let side = if self.sides[CLIENT].remaining == self.sides[SERVER].remaining { CLIENT } else { SERVER };
        self.sides[side].remaining -= 1;
        if side == CLIENT {
            self.icmp_seq = self.icmp_seq.wrapping_add(1);
        } else if self.sides[SERVER].remaining == 0 {
            self.phase = Phase::Done;
        }
        let len = if self.kind == FlowKind::UdpDns { self.dns_len(side) } else { self.sides[side].size as usize };
        (side, 0, len)
    }

    /// The DNS question asked now: A first, AAAA second.
    fn dns_type(&self) -> u16 {
        if self.icmp_seq <= 1 {
            DNS_TYPE_A
        } else {
            DNS_TYPE_AAAA
        }
    }

    /// Length of the DNS message `side` sends now: header and question, and
    /// for the answer one resource record.
    fn dns_len(&self, side: usize) -> usize {
        let question = 12 + self.dns_name_len as usize + 4;
        if side == CLIENT {
            question
        } else {
            question + 12 + if self.dns_type() == DNS_TYPE_A { 4 } else { 16 }
        }
    }

    /// Writes the DNS message `side` sends now into `out` (exactly `dns_len` bytes).
    fn write_dns(&self, side: usize, out: &mut [u8]) {
        let qtype = self.dns_type();
        put16(out, 0, self.dns_id.wrapping_add(self.icmp_seq));
        // Query: recursion desired. Answer: response, RD and RA, no error.
        put16(out, 2, if side == CLIENT { 0x0100 } else { 0x8180 });
        put16(out, 4, 1);
        put16(out, 6, (side == SERVER) as u16);
        put32(out, 8, 0);
        let name_len = self.dns_name_len as usize;
        out[12..12 + name_len].copy_from_slice(&self.dns_name[..name_len]);
        let mut at = 12 + name_len;
        put16(out, at, qtype);
        put16(out, at + 2, 1); // class IN
        at += 4;
        if side == SERVER {
            put16(out, at, 0xc00c); // the name, by pointer to the question
            put16(out, at + 2, qtype);
            put16(out, at + 4, 1);
            put32(out, at + 6, 300); // TTL
            let id = self.dns_id.to_be_bytes();
            if qtype == DNS_TYPE_A {
                put16(out, at + 10, 4);
                out[at + 12..at + 16].copy_from_slice(&[203, 0, 113, id[1]]);
            } else {
                put16(out, at + 10, 16);
                out[at + 12..at + 28]
                    .copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, id[0], id[1]]);
            }
        }
    }
}

#[inline]
fn put16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[inline]
fn sum_words(bytes: &[u8]) -> u32 {
    let mut s = 0u32;
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        s += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        s += (*last as u32) << 8;
    }
    s
}

#[inline]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The frame buffers, one per header layout, with the payload pattern in
/// place after each layout's headers, and the pattern's prefix sums.
struct Frames {
    buf: Vec<u8>,
    /// The payload pattern, from its first byte.
    pattern: Vec<u8>,
    /// `pattern_sum[n]`: one's-complement sum (unfolded) of the first n pattern bytes.
    pattern_sum: Vec<u32>,
    /// Where the last frame wrote its own payload over the pattern (offset, length).
    dirty: Option<(usize, usize)>,
}

impl Frames {
    fn new() -> Frames {
        let mut buf = vec![0u8; LANES * STRIDE];
        for lane in 0..LANES {
            let hdr = lane_header_len(lane);
            for (i, b) in buf[lane * STRIDE + hdr..(lane + 1) * STRIDE].iter_mut().enumerate() {
                *b = pattern_byte(i);
            }
        }
        let mut pattern_sum = vec![0u32; STRIDE + 1];
        for n in 1..=STRIDE {
            let i = n - 1;
            let word = if i % 2 == 0 { (pattern_byte(i) as u32) << 8 } else { pattern_byte(i) as u32 };
            pattern_sum[n] = pattern_sum[n - 1] + word;
        }
        let pattern = (0..STRIDE).map(pattern_byte).collect();
        Frames { buf, pattern, pattern_sum, dirty: None }
    }

    /// Builds the frame `live` sends from `side` into its layout's buffer;
    /// returns where it lies in `buf`.
    #[inline]
    fn build(&mut self, live: &mut Live, side: usize, flags: u8, payload: usize, ts_ns: u64) -> (usize, usize) {
        if let Some((at, len)) = self.dirty.take() {
            self.buf[at..at + len].copy_from_slice(&self.pattern[..len]);
        }
        let l4_len = match live.proto {
            PROTO_TCP => {
                let opts = if flags & TCP_SYN != 0 {
                    if live.tcp_ts {
                        20
                    } else {
                        12
                    }
                } else if live.tcp_ts {
                    12
                } else {
                    0
                };
                20 + opts
            }
            _ => 8,
        };
        let code = match l4_len {
            8 => 0,
            20 => 1,
            32 => 2,
            _ => 3,
        };
        let lane = live.lane_base as usize | code << 2;
        let start = lane * STRIDE;
        let l23_len = live.l23_len as usize;
        let frame_len = l23_len + l4_len + payload;
        let frame = &mut self.buf[start..start + frame_len];
        let other_seq = live.sides[1 - side].seq;
        let other_tsval = live.sides[1 - side].last_tsval;
        let ipv6 = live.lane_base & 2 != 0;
        let s = &mut live.sides[side];
        frame[..l23_len].copy_from_slice(&s.l23[..l23_len]);
        let l3 = l23_len - if ipv6 { 40 } else { 20 };
        let seg_len = l4_len + payload;
        if ipv6 {
            put16(frame, l3 + 4, seg_len as u16);
        } else {
            let total = (20 + seg_len) as u16;
            put16(frame, l3 + 2, total);
            put16(frame, l3 + 4, s.ip_id);
            let sum = s.ip_sum + total as u32 + s.ip_id as u32;
            put16(frame, l3 + 10, !fold(sum));
            s.ip_id = s.ip_id.wrapping_add(1);
        }
        let l4 = l23_len;
        let csum_at;
        match live.proto {
            PROTO_TCP => {
                put16(frame, l4, s.sport);
                put16(frame, l4 + 2, s.dport);
                put32(frame, l4 + 4, s.seq);
                put32(frame, l4 + 8, if flags & TCP_ACK != 0 { other_seq } else { 0 });
                frame[l4 + 12] = ((l4_len / 4) as u8) << 4;
                frame[l4 + 13] = flags;
                let window: u16 = if flags & TCP_SYN != 0 {
                    if side == CLIENT {
                        64240
                    } else {
                        65160
                    }
                } else if side == CLIENT {
                    502
                } else {
                    509
                };
                put16(frame, l4 + 14, window);
                put32(frame, l4 + 16, 0); // checksum and urgent pointer
                let tsval = ((ts_ns / 1_000_000) as u32).wrapping_add(s.tsval_offset);
                let o = l4 + 20;
                if flags & TCP_SYN != 0 {
                    // MSS, SACK permitted, [timestamps], window scale: the
                    // order and padding Linux uses. The MSS excludes options.
                    let mss = (IP_MTU - if ipv6 { 40 } else { 20 } - 20) as u16;
                    frame[o..o + 4].copy_from_slice(&[2, 4, (mss >> 8) as u8, mss as u8]);
                    if live.tcp_ts {
                        frame[o + 4..o + 8].copy_from_slice(&[4, 2, 8, 10]);
                        put32(frame, o + 8, tsval);
                        put32(frame, o + 12, if flags & TCP_ACK != 0 { other_tsval } else { 0 });
                        frame[o + 16..o + 20].copy_from_slice(&[1, 3, 3, 7]);
                    } else {
                        frame[o + 4..o + 12].copy_from_slice(&[1, 1, 4, 2, 1, 3, 3, 7]);
                    }
                } else if live.tcp_ts {
                    frame[o..o + 4].copy_from_slice(&[1, 1, 8, 10]);
                    put32(frame, o + 4, tsval);
                    put32(frame, o + 8, other_tsval);
                }
                s.last_tsval = tsval;
                s.seq = s.seq.wrapping_add(payload as u32 + (flags & (TCP_SYN | TCP_FIN) != 0) as u32);
                csum_at = l4 + 16;
            }
            PROTO_UDP => {
                put16(frame, l4, s.sport);
                put16(frame, l4 + 2, s.dport);
                put16(frame, l4 + 4, seg_len as u16);
                put16(frame, l4 + 6, 0);
                csum_at = l4 + 6;
            }
            _ => {
                frame[l4] = live.icmp_types[side];
                frame[l4 + 1] = 0;
                put16(frame, l4 + 2, 0);
                put16(frame, l4 + 4, s.sport);
                put16(frame, l4 + 6, live.icmp_seq);
                csum_at = l4 + 2;
            }
        }
        let payload_sum = if live.kind == FlowKind::UdpDns {
            let at = l4 + l4_len;
            live.write_dns(side, &mut frame[at..at + payload]);
            self.dirty = Some((start + at, payload));
            sum_words(&frame[at..at + payload])
        } else {
            self.pattern_sum[payload]
        };
        let s = &mut live.sides[side];
        let len_sum = if live.proto == PROTO_ICMP { 0 } else { seg_len as u32 };
        let sum = s.pseudo + len_sum + sum_words(&frame[l4..l4 + l4_len]) + payload_sum;
        let mut csum = !fold(sum);
        if csum == 0 && live.proto == PROTO_UDP {
            csum = 0xffff;
        }
        put16(frame, csum_at, csum);
        s.packets += 1;
        s.bytes += frame_len as u64;
        (start, frame_len)
    }
}

fn lane_header_len(lane: usize) -> usize {
    let eth = if lane & 1 != 0 { 18 } else { 14 };
    let ip = if lane & 2 != 0 { 40 } else { 20 };
    eth + ip + L4_LENS[lane >> 2]
}

/// Addresses and header fields of one direction, from which its template is built.
struct SideSpec {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    ttl: u8,
    flow_label: u32,
}

fn make_side(spec: &SideSpec, vid: u16, ipv6: bool, proto: u8, sport: u16, dport: u16) -> Side {
    let mut l23 = [0u8; MAX_L23];
    l23[0..6].copy_from_slice(&spec.dst_mac);
    l23[6..12].copy_from_slice(&spec.src_mac);
    let ethertype: u16 = if ipv6 { 0x86dd } else { 0x0800 };
    let mut l3 = 12;
    if vid != 0 {
        put16(&mut l23, 12, 0x8100);
        put16(&mut l23, 14, vid);
        l3 = 16;
    }
    put16(&mut l23, l3, ethertype);
    l3 += 2;
    let mut ip_sum = 0;
    let pseudo;
    if ipv6 {
        put32(&mut l23, l3, 0x6000_0000 | (spec.flow_label & 0xfffff));
        l23[l3 + 6] = proto;
        l23[l3 + 7] = spec.ttl;
        l23[l3 + 8..l3 + 24].copy_from_slice(&spec.src);
        l23[l3 + 24..l3 + 40].copy_from_slice(&spec.dst);
        pseudo = sum_words(&l23[l3 + 8..l3 + 40]) + proto as u32;
    } else {
        l23[l3] = 0x45;
        put16(&mut l23, l3 + 6, 0x4000); // don't fragment
        l23[l3 + 8] = spec.ttl;
        l23[l3 + 9] = proto;
        l23[l3 + 12..l3 + 16].copy_from_slice(&spec.src[..4]);
        l23[l3 + 16..l3 + 20].copy_from_slice(&spec.dst[..4]);
        ip_sum = sum_words(&l23[l3..l3 + 20]);
        pseudo = if proto == PROTO_ICMP { 0 } else { sum_words(&l23[l3 + 12..l3 + 20]) + proto as u32 };
    }
    Side {
        l23,
        ip_sum,
        pseudo,
        sport,
        dport,
        ip_id: 0,
        seq: 0,
        tsval_offset: 0,
        last_tsval: 0,
        remaining: 0,
        size: 0,
        packets: 0,
        bytes: 0,
    }
}

fn live_truth(live: &Live, end: FlowEnd) -> FlowTruth {
    let c = live.client_dir.index();
    let mut packets = [0; 2];
    let mut bytes = [0; 2];
    packets[c] = live.sides[CLIENT].packets;
    packets[1 - c] = live.sides[SERVER].packets;
    bytes[c] = live.sides[CLIENT].bytes;
    bytes[1 - c] = live.sides[SERVER].bytes;
    FlowTruth {
        key: live.key,
        kind: live.kind,
        end,
        client_dir: live.client_dir,
        packets,
        bytes,
        first_ts_ns: live.first_ts,
        last_ts_ns: live.last_ts,
    }
}

/// The synthetic packet source. See the module documentation.
pub struct SyntheticSource {
    cfg: SynthConfig,
    rng: Xoshiro256PlusPlus,
    /// Flow slots; a slot never moves, so tickets can name it.
    live: Vec<Live>,
    /// Slots not vacant.
    live_count: usize,
    /// Lottery tickets: slot index in the low 32 bits, the slot's generation
    /// in the high 32. A stale ticket is dropped when drawn.
    tickets: Vec<u64>,
    flows_started: u64,
    /// Ended flows, in the order they ended.
    truth: Vec<FlowTruth>,
    frames: Frames,
    /// Cumulative shares of the flow kinds, in `KINDS` order.
    mix_cdf: [f64; 5],
    period_ns: f64,
    clock_ns: f64,
    last_ts: u64,
    packets: u64,
    bytes: u64,
    flows_ended: u64,
    stopped: bool,
    request_bytes: LogNormal<f64>,
    response_bytes: LogNormal<f64>,
    elephant_packets: Pareto<f64>,
    stream_packets: Pareto<f64>,
}

const KINDS: [FlowKind; 5] =
    [FlowKind::TcpShort, FlowKind::TcpElephant, FlowKind::UdpDns, FlowKind::UdpStream, FlowKind::IcmpEcho];

impl SyntheticSource {
    pub fn new(cfg: SynthConfig) -> Result<SyntheticSource, InvalidSynthConfig> {
        cfg.validate()?;
        let m = &cfg.mix;
        let w = [m.tcp_short, m.tcp_elephant, m.udp_dns, m.udp_stream, m.icmp_echo];
        let total: f64 = w.iter().sum();
        let mut mix_cdf = [0.0; 5];
        let mut acc = 0.0;
        for (c, w) in mix_cdf.iter_mut().zip(w) {
            acc += w / total;
            *c = acc;
        }
        mix_cdf[4] = f64::INFINITY;
        let elephant_packets = Pareto::new(cfg.elephant_min_packets as f64, cfg.elephant_shape)
            .map_err(|e| invalid("elephant_shape", e.to_string()))?;
        let mut src = SyntheticSource {
            rng: Xoshiro256PlusPlus::seed_from_u64(cfg.seed),
            live: Vec::with_capacity((cfg.concurrency as u64).min(cfg.flows) as usize),
            live_count: 0,
            tickets: Vec::new(),
            flows_started: 0,
            // Reserved up front so ending flows doesn't reallocate mid-run.
            truth: Vec::with_capacity(if cfg.keep_truth { cfg.flows.min(1 << 20) as usize } else { 0 }),
            frames: Frames::new(),
            mix_cdf,
            period_ns: 1e9 / cfg.rate_pps,
            clock_ns: 0.0,
            last_ts: 0,
            packets: 0,
            bytes: 0,
            flows_ended: 0,
            stopped: false,
            // Medians of 350 and 4000 bytes; fixed parameters, so `unwrap` can't fail.
            request_bytes: LogNormal::new(350f64.ln(), 1.0).expect("valid lognormal"),
            response_bytes: LogNormal::new(4000f64.ln(), 1.5).expect("valid lognormal"),
            elephant_packets,
            stream_packets: Pareto::new(20.0, 1.3).expect("valid pareto"),
            cfg,
        };
        let initial = (src.cfg.concurrency as u64).min(src.cfg.flows);
        for slot in 0..initial as usize {
            let (flow, tickets) = src.new_flow(0);
            src.live.push(flow);
            src.push_tickets(slot, tickets);
        }
        src.live_count = src.live.len();
        // Headroom so the list rarely grows while running.
        src.tickets.reserve(src.tickets.len() * 2);
        Ok(src)
    }

    pub fn config(&self) -> &SynthConfig {
        &self.cfg
    }

    pub fn totals(&self) -> SynthTotals {
        SynthTotals {
            packets: self.packets,
            bytes: self.bytes,
            flows_started: self.flows_started,
            flows_ended: self.flows_ended,
        }
    }

    /// The ground truth of every flow that has sent at least one packet:
    /// ended flows in the order they ended (none when `keep_truth` is off),
    /// then live ones with their counts so far, ending `Unfinished`.
    pub fn flows(&self) -> Vec<FlowTruth> {
        let mut out = self.truth.clone();
        out.extend(
            self.live
                .iter()
                .filter(|l| !l.vacant && l.sides[CLIENT].packets + l.sides[SERVER].packets > 0)
                .map(|l| live_truth(l, FlowEnd::Unfinished)),
        );
        out
    }

    /// Writes a random host name in DNS wire form (labels, then the root);
    /// returns its length, at most `DNS_NAME_MAX`.
    fn dns_name(&mut self, out: &mut [u8; DNS_NAME_MAX]) -> usize {
        const HOSTS: [&[u8]; 8] = [b"www", b"api", b"cdn", b"mail", b"static", b"login", b"edge", b"img"];
        const TLDS: [&[u8]; 5] = [b"com", b"net", b"org", b"io", b"de"];
        let mut at = 0;
        let host = HOSTS[self.below(HOSTS.len() as u32) as usize];
        let mut label = |out: &mut [u8; DNS_NAME_MAX], bytes: &mut dyn Iterator<Item = u8>| {
            let start = at;
            at += 1;
            for b in bytes {
                out[at] = b;
                at += 1;
            }
            out[start] = (at - start - 1) as u8;
        };
        label(out, &mut host.iter().copied());
        let domain_len = 4 + self.below(9) as usize;
        let letters: [u8; 12] = std::array::from_fn(|_| b'a' + self.below(26) as u8);
        label(out, &mut letters[..domain_len].iter().copied());
        let tld = TLDS[self.below(TLDS.len() as u32) as usize];
        label(out, &mut tld.iter().copied());
        out[at] = 0;
        at + 1
    }

    fn push_tickets(&mut self, slot: usize, tickets: u64) {
        let ticket = slot as u64 | (self.live[slot].generation as u64) << 32;
        self.tickets.extend(std::iter::repeat_n(ticket, tickets as usize));
    }

    #[inline]
    fn below(&mut self, n: u32) -> u32 {
        ((self.rng.next_u32() as u64 * n as u64) >> 32) as u32
    }

    #[inline]
    fn chance(&mut self, p: f64) -> bool {
        self.rng.gen::<f64>() < p
    }

    /// Starts the next flow: its addresses, sizes and plan, and how many
    /// tickets it gets. `generation` is the slot's new generation.
    fn new_flow(&mut self, generation: u32) -> (Live, u64) {
        let index = self.flows_started;
        self.flows_started += 1;
        let u: f64 = self.rng.gen();
        let kind = KINDS[self.mix_cdf.iter().position(|&c| u < c).unwrap_or(0)];
        let ipv6 = self.chance(self.cfg.ipv6_share);
        let vid = if self.chance(self.cfg.vlan_share) {
            self.cfg.vlan_first + self.below(self.cfg.vlan_count as u32) as u16
        } else {
            0
        };
        // Client hosts and ports come from the flow's index through a
        // bijection, so no two flows of a run share a 5-tuple.
        let host = index >> 4;
        let client_port = 32768 + (index & 15) as u16 * 1700 + self.below(1700) as u16;
        let server_index = self.below(1024) + 1;
        let mut client = [0u8; 16];
        let mut server = [0u8; 16];
        if ipv6 {
            let iid = host.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(self.cfg.seed);
            client[..8].copy_from_slice(&[0xfd, 0x00, 0x0f, 0x10, 0, 0, 0, 1]);
            client[8..].copy_from_slice(&iid.to_be_bytes());
            server[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0x00, 0x05]);
            server[14..].copy_from_slice(&(server_index as u16).to_be_bytes());
        } else {
            let h = (host.wrapping_mul(0x9E_3779).wrapping_add(self.cfg.seed)) & 0xff_ffff;
            client[..4].copy_from_slice(&[10, (h >> 16) as u8, (h >> 8) as u8, h as u8]);
            server[..4].copy_from_slice(&[198, 18, (server_index >> 8) as u8, server_index as u8]);
        }
        let (proto, server_port) = match kind {
            FlowKind::TcpShort => (PROTO_TCP, [443, 443, 443, 80, 80, 22, 8080, 993][self.below(8) as usize]),
            FlowKind::TcpElephant => (PROTO_TCP, [443, 443, 80, 445, 873, 5201][self.below(6) as usize]),
            FlowKind::UdpDns => (PROTO_UDP, 53),
            FlowKind::UdpStream => (PROTO_UDP, [443, 443, 5004, 5004, 3478, 51820][self.below(6) as usize]),
            FlowKind::IcmpEcho => (if ipv6 { PROTO_ICMPV6 } else { PROTO_ICMP }, client_port),
        };
        let client_mac = [0x02, 0x00, (host >> 24) as u8, (host >> 16) as u8, (host >> 8) as u8, host as u8];
        let client_ttl = if self.chance(0.8) { 64 } else { 128 };
        let server_ttl = [64u8, 128, 255][self.below(3) as usize] - 4 - self.below(20) as u8;
        let up = SideSpec {
            src_mac: client_mac,
            dst_mac: GATEWAY_MAC,
            src: client,
            dst: server,
            ttl: client_ttl,
            flow_label: self.rng.next_u32(),
        };
        let down = SideSpec {
            src_mac: GATEWAY_MAC,
            dst_mac: client_mac,
            src: server,
            dst: client,
            ttl: server_ttl,
            flow_label: self.rng.next_u32(),
        };
        let sides = [
            make_side(&up, vid, ipv6, proto, client_port, server_port),
            make_side(&down, vid, ipv6, proto, server_port, client_port),
        ];
        let (key, client_dir) =
            FlowKey::canonical(client, server, client_port, server_port, proto, ipv6, vid, 0, self.cfg.ingress);
        let ip_len = if ipv6 { 40 } else { 20 };
        let l23_len = if vid != 0 { 18 } else { 14 } + ip_len;
        let mut live = Live {
            key,
            client_dir,
            generation,
            vacant: false,
            kind,
            plan: FlowEnd::Complete,
            phase: Phase::Exchange,
            proto,
            lane_base: (vid != 0) as u8 | (ipv6 as u8) << 1,
            l23_len: l23_len as u8,
            tcp_ts: false,
            closer: CLIENT as u8,
            pending_ack: NO_ACK,
            unacked: 0,
            mss: 0,
            icmp_seq: 0,
            icmp_types: if ipv6 { [128, 129] } else { [8, 0] },
            upstream: 0,
            dns_id: 0,
            dns_name_len: 0,
            dns_name: [0; DNS_NAME_MAX],
            first_ts: 0,
            last_ts: 0,
            sides,
        };
        let planned_packets = match kind {
            FlowKind::TcpShort | FlowKind::TcpElephant => {
                live.phase = Phase::Syn;
                live.tcp_ts = self.chance(self.cfg.tcp_timestamps_share);
                let seg = (IP_MTU - ip_len - 20 - if live.tcp_ts { 12 } else { 0 }) as u32;
                let u: f64 = self.rng.gen();
                live.plan = if u < self.cfg.tcp_rst_share {
                    FlowEnd::Rst
                } else if u < self.cfg.tcp_rst_share + self.cfg.tcp_idle_share {
                    FlowEnd::Idle
                } else {
                    FlowEnd::Fin
                };
                live.closer = self.below(2) as u8;
                let (request, response) = if kind == FlowKind::TcpShort {
                    let req = self.request_bytes.sample(&mut self.rng).clamp(1.0, 16384.0) as u32;
                    let resp = self.response_bytes.sample(&mut self.rng).min(65536.0) as u32;
                    (req, resp)
                } else {
                    // About two data segments per ACK, so a third of the packets are ACKs.
                    let packets = self.elephant_packets.sample(&mut self.rng).min(self.cfg.elephant_max_packets as f64);
                    let bulk = ((packets * 2.0 / 3.0) as u32).max(1) * seg;
                    let small = 100 + self.below(900);
                    if self.chance(0.2) {
                        (bulk, small)
                    } else {
                        (small, bulk)
                    }
                };
                live.sides[CLIENT].remaining = request;
                live.sides[SERVER].remaining = response;
                live.mss = seg as u16;
                for s in &mut live.sides {
                    s.seq = self.rng.next_u32();
                    s.tsval_offset = self.rng.next_u32();
                }
                let segments = (request.div_ceil(seg) + response.div_ceil(seg)) as u64;
                segments * 3 / 2 + 6
            }
            FlowKind::UdpDns => {
                let queries = 1 + self.below(2);
                live.sides[CLIENT].remaining = queries;
                live.sides[SERVER].remaining = queries;
                live.dns_id = self.rng.next_u32() as u16;
                live.dns_name_len = self.dns_name(&mut live.dns_name) as u8;
                2 * queries as u64
            }
            FlowKind::UdpStream => {
                let packets = self.stream_packets.sample(&mut self.rng).min(20_000.0) as u32;
                live.sides[CLIENT].remaining = packets.max(1);
                live.sides[CLIENT].size = 40 + self.below(200) as u16;
                live.sides[SERVER].size = 100 + self.below(1100) as u16;
                live.upstream = (3000 + self.below(30000)) as u16;
                packets as u64
            }
            FlowKind::IcmpEcho => {
                let pings = 1 + self.below(8);
                let size = if self.chance(0.8) { 56 } else { 32 };
                live.sides[CLIENT].remaining = pings;
                live.sides[SERVER].remaining = pings;
                live.sides[CLIENT].size = size;
                live.sides[SERVER].size = size;
                live.icmp_seq = self.below(1000) as u16;
                2 * pings as u64
            }
        };
        (live, planned_packets.div_ceil(TICKET_PACKETS).max(1))
    }

    /// Records the ended flow in `slot` and starts a new one in its place,
    /// or leaves the slot vacant when every flow has been started. Either
    /// way the slot's old tickets go stale.
    fn end_flow(&mut self, slot: usize) {
        let ended = &self.live[slot];
        if self.cfg.keep_truth {
            self.truth.push(live_truth(ended, ended.plan));
        }
        self.flows_ended += 1;
        let generation = ended.generation.wrapping_add(1);
        if self.flows_started < self.cfg.flows {
            let (flow, tickets) = self.new_flow(generation);
            self.live[slot] = flow;
            self.push_tickets(slot, tickets);
        } else {
            let l = &mut self.live[slot];
            l.generation = generation;
            l.vacant = true;
            self.live_count -= 1;
        }
    }

    /// Ends generation: live flows that have sent are recorded `Unfinished`.
    fn stop(&mut self) {
        self.stopped = true;
        if self.cfg.keep_truth {
            let unfinished = self
                .live
                .iter()
                .filter(|l| !l.vacant && l.sides[CLIENT].packets + l.sides[SERVER].packets > 0)
                .map(|l| live_truth(l, FlowEnd::Unfinished));
            self.truth.extend(unfinished);
        }
        self.live.clear();
        self.live_count = 0;
        self.tickets.clear();
    }

    /// Draws a live slot; stale tickets drawn on the way are thrown away.
    #[inline]
    fn draw(&mut self) -> usize {
        loop {
            let i = ((self.rng.next_u32() as u64 * self.tickets.len() as u64) >> 32) as usize;
            let ticket = self.tickets[i];
            let slot = ticket as u32 as usize;
            if self.live[slot].generation == (ticket >> 32) as u32 {
                return slot;
            }
            self.tickets.swap_remove(i);
        }
    }

    /// Drains the generator into a pcap file with nanosecond timestamps.
    pub fn write_pcap(&mut self, path: &Path) -> Result<SynthTotals, SourceError> {
        let file = std::fs::File::create(path)
            .map_err(|e| SourceError::Open { path: path.display().to_string(), message: e.to_string() })?;
        self.write_pcap_to(std::io::BufWriter::new(file), &path.display().to_string())
    }

    /// Drains the generator into `out` as a pcap stream; `what` names the
    /// destination in errors. Returns the totals of the whole run.
    pub fn write_pcap_to<W: Write>(&mut self, out: W, what: &str) -> Result<SynthTotals, SourceError> {
        let io = |e: &dyn std::fmt::Display| SourceError::Io { what: what.to_string(), message: e.to_string() };
        let header = PcapHeader {
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::NanoSecond,
            endianness: Endianness::native(),
            ..PcapHeader::default()
        };
        let mut writer = PcapWriter::with_header(out, header).map_err(|e| io(&e))?;
        while let Some(p) = self.next_packet()? {
            let packet = PcapPacket::new(Duration::from_nanos(p.ts_ns), p.wire_len, p.data);
            writer.write_packet(&packet).map_err(|e| io(&e))?;
        }
        writer.into_writer().flush().map_err(|e| io(&e))?;
        Ok(self.totals())
    }
}

impl PacketSource for SyntheticSource {
    #[inline]
    fn next_packet(&mut self) -> Result<Option<RawPacket<'_>>, SourceError> {
        if self.stopped {
            return Ok(None);
        }
        if self.live_count == 0 || (self.cfg.max_packets != 0 && self.packets >= self.cfg.max_packets) {
            self.stop();
            return Ok(None);
        }
        // Every live flow holds at least one current ticket, so this ends.
        let slot = self.draw();
        let gap: f64 = Exp1.sample(&mut self.rng);
        self.clock_ns += self.period_ns * gap;
        let mut ts = self.cfg.start_ns.saturating_add(self.clock_ns as u64);
        if self.packets > 0 && ts <= self.last_ts {
            ts = self.last_ts + 1;
        }
        self.last_ts = ts;
        let live = &mut self.live[slot];
        if live.sides[CLIENT].packets + live.sides[SERVER].packets == 0 {
            live.first_ts = ts;
        }
        live.last_ts = ts;
        let (side, flags, payload) = live.step(&mut self.rng);
        let (start, len) = self.frames.build(live, side, flags, payload, ts);
        let done = live.phase == Phase::Done;
        self.packets += 1;
        self.bytes += len as u64;
        if done {
            self.end_flow(slot);
        }
        Ok(Some(RawPacket {
            ts_ns: ts,
            data: &self.frames.buf[start..start + len],
            wire_len: len as u32,
            link: Some(LinkType::Ethernet),
            linktype: LINKTYPE_ETHERNET,
            ingress: self.cfg.ingress,
            mark: None,
        }))
    }
}
