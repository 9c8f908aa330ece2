//! The synthetic generator checked from outside: frames decoded by an
//! independent parser (etherparse) must be valid Ethernet/IP/TCP/UDP/ICMP
//! with correct lengths and checksums, and their per-flow counts must equal
//! the generator's ground truth; runs are deterministic for a seed; the pcap
//! it writes reads back the same.

use etherparse::{LinkExtHeader, NetHeaders, PacketHeaders, TcpOptionElement, TransportHeader};
use flowtable::source::synth::{FlowEnd, FlowKind, FlowTruth, SynthConfig, SyntheticSource};
use flowtable::source::PacketSource;
use flowtable_sw::{Direction, FlowKey, LinkType, PortMap};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;

/// Counts this thread's allocations, so a test can prove the hot loop makes none.
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations() -> u64 {
    ALLOCATIONS.with(|c| c.get())
}

/// A run small enough for a debug build, with every kind of flow in it.
fn config(seed: u64) -> SynthConfig {
    let mut cfg = SynthConfig {
        seed,
        flows: 3_000,
        concurrency: 200,
        rate_pps: 200_000.0,
        ipv6_share: 0.3,
        vlan_share: 0.2,
        ingress: 3,
        elephant_min_packets: 300,
        elephant_max_packets: 3_000,
        ..SynthConfig::default()
    };
    cfg.mix.tcp_elephant = 0.01;
    cfg
}

struct Frame {
    ts_ns: u64,
    wire_len: u32,
    data: Vec<u8>,
}

fn collect(src: &mut SyntheticSource) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(p) = src.next_packet().expect("the generator doesn't fail") {
        assert_eq!(p.link, Some(LinkType::Ethernet));
        assert_eq!(p.linktype, 1);
        assert_eq!(p.data.len(), p.wire_len as usize, "frames are never cut");
        out.push(Frame { ts_ns: p.ts_ns, wire_len: p.wire_len, data: p.data.to_vec() });
    }
    out
}

fn run(cfg: SynthConfig) -> (Vec<Frame>, Vec<FlowTruth>) {
    let mut src = SyntheticSource::new(cfg).expect("valid config");
    let frames = collect(&mut src);
    assert!(src.next_packet().unwrap().is_none(), "an ended generator stays ended");
    (frames, src.flows())
}

/// What etherparse found in one frame.
#[derive(Debug, Clone, Copy)]
struct Decoded {
    key: FlowKey,
    dir: Direction,
    proto: u8,
    ipv6: bool,
    /// TCP flags (FIN 0x01 SYN 0x02 RST 0x04 PSH 0x08 ACK 0x10), 0 otherwise.
    flags: u8,
    seq: u32,
    ack: u32,
    payload: usize,
    syn_mss: Option<u16>,
}

/// Decodes a frame with etherparse and checks every length and checksum;
/// panics naming the frame on any defect.
fn decode(frame: &[u8], ingress: u8, n: usize) -> Decoded {
    let h = PacketHeaders::from_ethernet_slice(frame).unwrap_or_else(|e| panic!("frame {n}: {e}"));
    assert!(h.link.is_some(), "frame {n}: no Ethernet header");
    let mut l2 = 14;
    let vid = match h.link_exts.as_slice() {
        [] => 0,
        [LinkExtHeader::Vlan(v)] => {
            l2 += 4;
            v.vlan_id.value()
        }
        other => panic!("frame {n}: unexpected link extensions {other:?}"),
    };
    let payload = match &h.payload {
        etherparse::PayloadSlice::Tcp(p)
        | etherparse::PayloadSlice::Udp(p)
        | etherparse::PayloadSlice::Icmpv4(p)
        | etherparse::PayloadSlice::Icmpv6(p) => *p,
        other => panic!("frame {n}: no transport payload: {other:?}"),
    };
    let transport = h.transport.as_ref().unwrap_or_else(|| panic!("frame {n}: no transport header"));
    let (src, dst, ipv6, proto) = match h.net.as_ref() {
        Some(NetHeaders::Ipv4(ip, ext)) => {
            assert!(ext.is_empty(), "frame {n}: IPv4 extensions");
            assert_eq!(ip.header_len(), 20, "frame {n}");
            assert_eq!(ip.total_len as usize, frame.len() - l2, "frame {n}: IPv4 total length");
            assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "frame {n}: IPv4 header checksum");
            assert!(!ip.is_fragmenting_payload(), "frame {n}: fragment");
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s[..4].copy_from_slice(&ip.source);
            d[..4].copy_from_slice(&ip.destination);
            let csum_ok = match transport {
                TransportHeader::Tcp(t) => t.checksum == t.calc_checksum_ipv4(ip, payload).unwrap(),
                TransportHeader::Udp(u) => u.checksum == u.calc_checksum_ipv4(ip, payload).unwrap(),
                TransportHeader::Icmpv4(i) => i.checksum == i.icmp_type.calc_checksum(payload),
                other => panic!("frame {n}: {other:?} over IPv4"),
            };
            assert!(csum_ok, "frame {n}: bad L4 checksum");
            (s, d, false, ip.protocol.0)
        }
        Some(NetHeaders::Ipv6(ip, ext)) => {
            assert!(ext.is_empty(), "frame {n}: IPv6 extension headers");
            assert_eq!(ip.payload_length as usize, frame.len() - l2 - 40, "frame {n}: IPv6 payload length");
            let csum_ok = match transport {
                TransportHeader::Tcp(t) => t.checksum == t.calc_checksum_ipv6(ip, payload).unwrap(),
                TransportHeader::Udp(u) => u.checksum == u.calc_checksum_ipv6(ip, payload).unwrap(),
                TransportHeader::Icmpv6(i) => {
                    i.checksum == i.icmp_type.calc_checksum(ip.source, ip.destination, payload).unwrap()
                }
                other => panic!("frame {n}: {other:?} over IPv6"),
            };
            assert!(csum_ok, "frame {n}: bad L4 checksum");
            (ip.source, ip.destination, true, ip.next_header.0)
        }
        other => panic!("frame {n}: not IP: {other:?}"),
    };
    let mut d = Decoded {
        key: FlowKey::default(),
        dir: Direction::LoToHi,
        proto,
        ipv6,
        flags: 0,
        seq: 0,
        ack: 0,
        payload: payload.len(),
        syn_mss: None,
    };
    let (sport, dport) = match transport {
        TransportHeader::Tcp(t) => {
            d.flags = (t.fin as u8) | (t.syn as u8) << 1 | (t.rst as u8) << 2 | (t.psh as u8) << 3 | (t.ack as u8) << 4;
            d.seq = t.sequence_number;
            d.ack = t.acknowledgment_number;
            for opt in t.options.elements_iter() {
                match opt.unwrap_or_else(|e| panic!("frame {n}: TCP option: {e:?}")) {
                    TcpOptionElement::MaximumSegmentSize(mss) => d.syn_mss = Some(mss),
                    TcpOptionElement::Noop
                    | TcpOptionElement::WindowScale(_)
                    | TcpOptionElement::SelectiveAcknowledgementPermitted
                    | TcpOptionElement::Timestamp(_, _) => {}
                    other => panic!("frame {n}: unexpected TCP option {other:?}"),
                }
            }
            (t.source_port, t.destination_port)
        }
        TransportHeader::Udp(u) => {
            assert_eq!(u.length as usize, 8 + payload.len(), "frame {n}: UDP length");
            (u.source_port, u.destination_port)
        }
        TransportHeader::Icmpv4(i) => match &i.icmp_type {
            etherparse::Icmpv4Type::EchoRequest(e) | etherparse::Icmpv4Type::EchoReply(e) => (e.id, e.id),
            other => panic!("frame {n}: ICMP {other:?}"),
        },
        TransportHeader::Icmpv6(i) => match &i.icmp_type {
            etherparse::Icmpv6Type::EchoRequest(e) | etherparse::Icmpv6Type::EchoReply(e) => (e.id, e.id),
            other => panic!("frame {n}: ICMPv6 {other:?}"),
        },
        other => panic!("frame {n}: {other:?}"),
    };
    let (key, dir) = FlowKey::canonical(src, dst, sport, dport, proto, ipv6, vid, 0, ingress);
    d.key = key;
    d.dir = dir;
    d
}

#[test]
fn same_seed_gives_the_same_frames_and_truth() {
    let (a, ta) = run(config(7));
    let (b, tb) = run(config(7));
    assert!(a.len() > 10_000, "a run of {} packets is too small to mean much", a.len());
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!((x.ts_ns, x.wire_len, &x.data), (y.ts_ns, y.wire_len, &y.data), "frame {i} differs");
    }
    assert_eq!(ta, tb);
}

#[test]
fn different_seeds_give_different_traffic() {
    let (a, ta) = run(config(1));
    let (b, tb) = run(config(2));
    let same = a.iter().zip(&b).filter(|(x, y)| x.data == y.data).count();
    assert!(same < a.len().min(b.len()) / 100, "{same} identical frames between seeds");
    let keys_a: std::collections::HashSet<_> = ta.iter().map(|t| t.key).collect();
    let shared = tb.iter().filter(|t| keys_a.contains(&t.key)).count();
    assert!(shared < tb.len() / 100, "{shared} flow keys shared between seeds");
}

#[test]
fn frames_decode_and_per_flow_counts_equal_the_truth() {
    let cfg = config(11);
    let ingress = cfg.ingress;
    let (frames, truth) = run(cfg.clone());
    let mut seen: HashMap<FlowKey, ([u64; 2], [u64; 2])> = HashMap::new();
    let mut protos = HashMap::new();
    for (n, f) in frames.iter().enumerate() {
        let d = decode(&f.data, ingress, n);
        let e = seen.entry(d.key).or_default();
        e.0[d.dir.index()] += 1;
        e.1[d.dir.index()] += f.wire_len as u64;
        *protos.entry((d.proto, d.ipv6)).or_insert(0u64) += 1;
    }
    assert_eq!(truth.len() as u64, cfg.flows, "every flow is started and sends");
    assert_eq!(seen.len(), truth.len(), "distinct keys decoded vs flows generated");
    for t in &truth {
        let (packets, bytes) = seen.get(&t.key).unwrap_or_else(|| panic!("{} never seen on the wire", t.key));
        assert_eq!((*packets, *bytes), (t.packets, t.bytes), "{} ({:?})", t.key, t.kind);
        assert_ne!(t.end, FlowEnd::Unfinished, "{} left unfinished by a complete run", t.key);
        assert_eq!(t.key.zone, ingress);
    }
    let total: u64 = truth.iter().map(|t| t.total_packets()).sum();
    assert_eq!(total, frames.len() as u64);
    for combo in [(6, false), (6, true), (17, false), (17, true), (1, false), (58, true)] {
        assert!(protos.get(&combo).copied().unwrap_or(0) > 0, "no {combo:?} traffic: {protos:?}");
    }
    let tagged = truth.iter().filter(|t| t.key.vlan_outer != 0).count() as f64 / truth.len() as f64;
    assert!((0.15..0.25).contains(&tagged), "VLAN share {tagged}");
    let v6 = truth.iter().filter(|t| t.key.is_ipv6()).count() as f64 / truth.len() as f64;
    assert!((0.25..0.35).contains(&v6), "IPv6 share {v6}");
}

#[test]
fn the_project_parser_agrees_with_etherparse() {
    let cfg = config(5);
    let mut src = SyntheticSource::new(cfg.clone()).unwrap();
    let mut n = 0;
    while let Some(p) = src.next_packet().unwrap() {
        let info = p.parse(&PortMap::unpaired()).unwrap_or_else(|r| panic!("frame {n}: parser skipped it: {r:?}"));
        let d = decode(p.data, cfg.ingress, n);
        assert_eq!((info.key, info.dir), (d.key, d.dir), "frame {n}");
        assert_eq!(info.wire_len, p.wire_len);
        assert_eq!(info.tcp_flags, d.flags, "frame {n}");
        n += 1;
    }
    assert!(n > 10_000);
}

#[test]
fn the_mix_follows_the_weights() {
    let (_, truth) = run(config(3));
    let share = |k: FlowKind| truth.iter().filter(|t| t.kind == k).count() as f64 / truth.len() as f64;
    let m = &config(3).mix;
    let sum = m.tcp_short + m.tcp_elephant + m.udp_dns + m.udp_stream + m.icmp_echo;
    for (kind, weight, tolerance) in [
        (FlowKind::TcpShort, m.tcp_short, 0.03),
        (FlowKind::UdpDns, m.udp_dns, 0.03),
        (FlowKind::UdpStream, m.udp_stream, 0.015),
        (FlowKind::IcmpEcho, m.icmp_echo, 0.02),
        (FlowKind::TcpElephant, m.tcp_elephant, 0.006),
    ] {
        let got = share(kind);
        assert!((got - weight / sum).abs() < tolerance, "{kind:?}: {got} vs {}", weight / sum);
    }
    let ends = |e: FlowEnd| truth.iter().filter(|t| t.kind == FlowKind::TcpShort && t.end == e).count();
    assert!(ends(FlowEnd::Fin) > ends(FlowEnd::Rst) && ends(FlowEnd::Rst) > 0 && ends(FlowEnd::Idle) > 0);
}

/// Per flow, the TCP packets in order: direction relative to the client, flags, seq, ack, payload.
#[test]
fn tcp_flows_open_with_a_handshake_and_close_as_planned() {
    let cfg = config(9);
    let (frames, truth) = run(cfg.clone());
    let mut packets: HashMap<FlowKey, Vec<(Direction, Decoded)>> = HashMap::new();
    for (n, f) in frames.iter().enumerate() {
        let d = decode(&f.data, cfg.ingress, n);
        if d.proto == 6 {
            packets.entry(d.key).or_default().push((d.dir, d));
        }
    }
    let (mut fin, mut rst, mut idle) = (0, 0, 0);
    for t in truth.iter().filter(|t| matches!(t.kind, FlowKind::TcpShort | FlowKind::TcpElephant)) {
        let p = &packets[&t.key];
        let client = t.client_dir;
        let server = client.reverse();
        let (syn, synack, ack) = (&p[0], &p[1], &p[2]);
        assert_eq!((syn.0, syn.1.flags), (client, 0x02), "{}: first packet", t.key);
        assert_eq!((synack.0, synack.1.flags), (server, 0x12), "{}: second packet", t.key);
        assert_eq!((ack.0, ack.1.flags, ack.1.payload), (client, 0x10, 0), "{}: third packet", t.key);
        assert_eq!(synack.1.ack, syn.1.seq.wrapping_add(1), "{}: SYN-ACK acknowledges the SYN", t.key);
        assert_eq!(ack.1.ack, synack.1.seq.wrapping_add(1), "{}: ACK acknowledges the SYN-ACK", t.key);
        let mss = if t.key.is_ipv6() { 1440 } else { 1460 };
        assert_eq!((syn.1.syn_mss, synack.1.syn_mss), (Some(mss), Some(mss)), "{}", t.key);
        // Sequence numbers advance by exactly the payload (and SYN/FIN) sent.
        let mut next = [syn.1.seq, synack.1.seq];
        for (dir, d) in p {
            let side = (*dir != client) as usize;
            assert_eq!(d.seq, next[side], "{}: sequence gap", t.key);
            next[side] = next[side].wrapping_add(d.payload as u32 + (d.flags & 0x03 != 0) as u32);
            if d.flags & 0x10 != 0 {
                assert_eq!(d.ack, next[1 - side], "{}: ACK doesn't cover what the peer sent", t.key);
            }
        }
        // The receiver answers at least every second segment (delayed ACK).
        let mut streak = 0;
        for w in p.windows(2) {
            streak = if w[1].0 == w[0].0 && w[0].1.payload > 0 { streak + 1 } else { 0 };
            assert!(streak < 2, "{}: three segments in a row without an answer", t.key);
        }
        let fins: Vec<_> = p.iter().filter(|(_, d)| d.flags & 0x01 != 0).collect();
        let rsts = p.iter().filter(|(_, d)| d.flags & 0x04 != 0).count();
        let last = p.last().unwrap();
        match t.end {
            FlowEnd::Fin => {
                fin += 1;
                assert_eq!(fins.len(), 2, "{}: one FIN each way", t.key);
                assert_ne!(fins[0].0, fins[1].0, "{}: FINs from both sides", t.key);
                assert_eq!((last.0, last.1.flags), (fins[0].0, 0x10), "{}: the closer's last ACK ends it", t.key);
                assert_eq!(rsts, 0);
            }
            FlowEnd::Rst => {
                rst += 1;
                assert!(last.1.flags & 0x04 != 0 && rsts == 1 && fins.is_empty(), "{}: ends by RST", t.key);
            }
            FlowEnd::Idle => {
                idle += 1;
                assert!(rsts == 0 && fins.is_empty(), "{}: idle flows aren't closed", t.key);
                assert!(p.iter().any(|(_, d)| d.payload > 0), "{}: idle after data", t.key);
            }
            other => panic!("{}: a TCP flow ended {other:?}", t.key),
        }
    }
    assert!(fin > 100 && rst > 10 && idle > 10, "fin {fin} rst {rst} idle {idle}");
}

/// Splits a DNS message into (id, flags, answer count, question bytes,
/// question type, answer rdata), checking every length on the way.
fn dns(msg: &[u8], n: usize) -> (u16, u16, u16, Vec<u8>, u16, Option<Vec<u8>>) {
    let be = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]);
    assert!(msg.len() >= 17, "frame {n}: DNS message of {} bytes", msg.len());
    assert_eq!((be(4), be(8), be(10)), (1, 0, 0), "frame {n}: one question, no authority or additional");
    let mut at = 12;
    while msg[at] != 0 {
        let len = msg[at] as usize;
        assert!(len <= 63, "frame {n}: label of {len}");
        assert!(msg[at + 1..at + 1 + len].iter().all(|b| b.is_ascii_lowercase()), "frame {n}: label bytes");
        at += 1 + len;
    }
    let question = msg[12..at + 5].to_vec();
    let qtype = be(at + 1);
    assert_eq!(be(at + 3), 1, "frame {n}: class IN");
    at += 5;
    let answer = match be(6) {
        0 => None,
        1 => {
            assert_eq!((be(at), be(at + 2), be(at + 4)), (0xc00c, qtype, 1), "frame {n}: answer header");
            let rdlen = be(at + 10) as usize;
            at += 12 + rdlen;
            Some(msg[at - rdlen..at].to_vec())
        }
        other => panic!("frame {n}: {other} answers"),
    };
    assert_eq!(at, msg.len(), "frame {n}: DNS message length");
    (be(0), be(2), be(6), question, qtype, answer)
}

#[test]
fn dns_flows_carry_real_queries_and_answers() {
    let cfg = config(15);
    let (frames, truth) = run(cfg.clone());
    let mut pending: HashMap<FlowKey, (u16, Vec<u8>, u16)> = HashMap::new();
    let mut answered = HashMap::<FlowKey, u32>::new();
    for (n, f) in frames.iter().enumerate() {
        let h = PacketHeaders::from_ethernet_slice(&f.data).unwrap();
        let Some(TransportHeader::Udp(u)) = &h.transport else { continue };
        if u.source_port != 53 && u.destination_port != 53 {
            continue;
        }
        let etherparse::PayloadSlice::Udp(msg) = h.payload else { panic!("frame {n}: no UDP payload") };
        let d = decode(&f.data, cfg.ingress, n);
        let (id, flags, answers, question, qtype, rdata) = dns(msg, n);
        if u.destination_port == 53 {
            assert_eq!((flags, answers), (0x0100, 0), "frame {n}: a query");
            assert!(pending.insert(d.key, (id, question, qtype)).is_none(), "frame {n}: query before the answer");
        } else {
            let (qid, q, t) = pending.remove(&d.key).unwrap_or_else(|| panic!("frame {n}: answer without query"));
            assert_eq!((id, flags, answers, &question), (qid, 0x8180, 1, &q), "frame {n}: answer to its query");
            let want = if t == 1 { 4 } else { 16 };
            assert_eq!(rdata.map(|r| r.len()), Some(want), "frame {n}: rdata of type {t}");
            *answered.entry(d.key).or_default() += 1;
        }
    }
    assert!(pending.is_empty(), "unanswered queries");
    let dns_flows: Vec<_> = truth.iter().filter(|t| t.kind == FlowKind::UdpDns).collect();
    assert!(dns_flows.len() > 300);
    for t in dns_flows {
        assert_eq!(answered[&t.key] as u64 * 2, t.total_packets(), "{}", t.key);
    }
}

#[test]
fn sizes_are_plausible() {
    let cfg = config(4);
    let (frames, truth) = run(cfg.clone());
    let mut full = 0;
    for (n, f) in frames.iter().enumerate() {
        let d = decode(&f.data, cfg.ingress, n);
        let tag = if d.key.vlan_outer != 0 { 4 } else { 0 };
        let ip_extra = if d.ipv6 { 20 } else { 0 };
        assert!(f.data.len() <= 1514 + tag, "frame {n}: {} bytes", f.data.len());
        if d.proto == 6 && d.payload == 0 && d.flags & 0x02 == 0 {
            let len = f.data.len() - tag - ip_extra;
            assert!(len == 54 || len == 66, "frame {n}: a pure ACK of {} bytes", f.data.len());
        }
        if f.data.len() - tag == 1514 {
            full += 1;
        }
    }
    assert!(full > frames.len() / 5, "only {full} full-size frames");
    let elephants: Vec<u64> =
        truth.iter().filter(|t| t.kind == FlowKind::TcpElephant).map(|t| t.total_packets()).collect();
    assert!(!elephants.is_empty());
    assert!(elephants.iter().all(|&p| p >= cfg.elephant_min_packets as u64 / 2), "{elephants:?}");
    let shorts: Vec<u64> = truth.iter().filter(|t| t.kind == FlowKind::TcpShort).map(|t| t.total_packets()).collect();
    let median = {
        let mut s = shorts.clone();
        s.sort();
        s[s.len() / 2]
    };
    assert!((7..=30).contains(&median), "short TCP flows have a median of {median} packets");
    assert!(elephants.iter().max() > Some(&(2 * elephants.iter().min().unwrap())), "no heavy tail: {elephants:?}");
}

#[test]
fn timestamps_rise_at_the_configured_rate_and_flows_interleave() {
    let cfg = config(6);
    let (frames, _) = run(cfg.clone());
    assert!(frames[0].ts_ns >= cfg.start_ns);
    for w in frames.windows(2) {
        assert!(w[1].ts_ns > w[0].ts_ns, "time stands still or runs back");
    }
    let span = (frames.last().unwrap().ts_ns - frames[0].ts_ns) as f64 / 1e9;
    let rate = (frames.len() - 1) as f64 / span;
    assert!((rate / cfg.rate_pps - 1.0).abs() < 0.03, "rate {rate} pps");
    // A flow is interleaved when another flow's packet falls between its first and last.
    let mut spans: HashMap<FlowKey, (usize, usize, usize)> = HashMap::new();
    for (n, f) in frames.iter().enumerate() {
        let d = decode(&f.data, cfg.ingress, n);
        let e = spans.entry(d.key).or_insert((n, n, 0));
        e.1 = n;
        e.2 += 1;
    }
    // No flow holds the line for long while many are live (the tail of a
    // run, when few flows are left, is excluded).
    let mut longest = (0, 0);
    let mut run = 0;
    for n in 1..frames.len() / 2 {
        run = if same_flow(&frames[n - 1], &frames[n], &cfg) { run + 1 } else { 0 };
        longest = longest.max((run, n));
    }
    assert!(longest.0 < 40, "{} packets of one flow in a row at frame {}", longest.0, longest.1);
    let multi: Vec<_> = spans.values().filter(|s| s.2 > 1).collect();
    let interleaved = multi.iter().filter(|s| s.1 - s.0 + 1 > s.2).count();
    assert!(interleaved as f64 > 0.95 * multi.len() as f64, "{interleaved} of {} interleaved", multi.len());
}

fn same_flow(a: &Frame, b: &Frame, cfg: &SynthConfig) -> bool {
    decode(&a.data, cfg.ingress, 0).key == decode(&b.data, cfg.ingress, 0).key
}

#[test]
fn max_packets_stops_the_run_and_marks_live_flows_unfinished() {
    let cfg = SynthConfig { max_packets: 5_000, ..config(8) };
    let mut src = SyntheticSource::new(cfg).unwrap();
    let frames = collect(&mut src);
    assert_eq!(frames.len(), 5_000);
    assert!(src.next_packet().unwrap().is_none());
    let truth = src.flows();
    assert_eq!(truth.iter().map(|t| t.total_packets()).sum::<u64>(), 5_000);
    assert_eq!(truth.iter().map(|t| t.total_bytes()).sum::<u64>(), src.totals().bytes);
    let unfinished = truth.iter().filter(|t| t.end == FlowEnd::Unfinished).count();
    assert!(unfinished > 100, "{unfinished} unfinished");
    assert!(truth.iter().any(|t| t.end != FlowEnd::Unfinished));
}

#[test]
fn truth_while_running_counts_what_was_sent() {
    let mut src = SyntheticSource::new(config(12)).unwrap();
    for _ in 0..2_000 {
        src.next_packet().unwrap().unwrap();
    }
    let truth = src.flows();
    assert_eq!(truth.iter().map(|t| t.total_packets()).sum::<u64>(), 2_000);
    assert_eq!(src.totals().packets, 2_000);
}

#[test]
fn the_written_pcap_reads_back_frame_for_frame() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("synth.pcap");
    let cfg = config(13);
    let mut writer_src = SyntheticSource::new(cfg.clone()).unwrap();
    let totals = writer_src.write_pcap(&path).unwrap();
    let (frames, _) = run(cfg);
    assert_eq!(totals.packets, frames.len() as u64);
    assert_eq!(totals.bytes, frames.iter().map(|f| f.wire_len as u64).sum::<u64>());

    let file = std::fs::File::open(&path).unwrap();
    let mut reader = pcap_file::pcap::PcapReader::new(file).unwrap();
    assert_eq!(reader.header().datalink, pcap_file::DataLink::ETHERNET);
    let (mut packets, mut bytes) = (0u64, 0u64);
    while let Some(p) = reader.next_packet() {
        let p = p.unwrap();
        let f = &frames[packets as usize];
        assert_eq!(p.timestamp.as_nanos() as u64, f.ts_ns);
        assert_eq!(p.orig_len, f.wire_len);
        assert_eq!(&*p.data, &f.data[..]);
        packets += 1;
        bytes += p.orig_len as u64;
    }
    assert_eq!((packets, bytes), (totals.packets, totals.bytes));
}

#[test]
fn write_errors_name_the_file() {
    let mut src = SyntheticSource::new(config(1)).unwrap();
    let err = src.write_pcap(std::path::Path::new("/nonexistent-dir/x.pcap")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent-dir/x.pcap"), "{err}");
}

#[test]
fn generation_allocates_nothing_per_packet() {
    let cfg = SynthConfig { flows: 20_000, concurrency: 500, ..config(14) };
    let mut src = SyntheticSource::new(cfg).unwrap();
    let before = allocations();
    let mut n = 0u64;
    while let Some(p) = src.next_packet().unwrap() {
        n += (!p.data.is_empty()) as u64;
    }
    let made = allocations() - before;
    assert!(n > 100_000);
    // Frames are built in place; only the ticket list may grow, by doubling.
    assert!(made <= 4, "{made} allocations while generating {n} packets");
}

#[test]
fn config_defaults_and_errors() {
    let cfg: SynthConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(cfg, SynthConfig::default());
    let cfg: SynthConfig = serde_json::from_str(r#"{"seed": 5, "mix": {"icmp_echo": 0}}"#).unwrap();
    assert_eq!((cfg.seed, cfg.mix.icmp_echo, cfg.mix.udp_dns), (5, 0.0, SynthConfig::default().mix.udp_dns));
    let unknown = serde_json::from_str::<SynthConfig>(r#"{"sed": 5}"#).unwrap_err();
    assert!(unknown.to_string().contains("sed"), "{unknown}");

    let field = |cfg: SynthConfig| SyntheticSource::new(cfg).err().map(|e| e.field);
    let base = SynthConfig::default();
    assert_eq!(field(SynthConfig { rate_pps: 0.0, ..base.clone() }), Some("rate_pps"));
    assert_eq!(field(SynthConfig { concurrency: 0, ..base.clone() }), Some("concurrency"));
    assert_eq!(field(SynthConfig { ipv6_share: 1.5, ..base.clone() }), Some("ipv6_share"));
    assert_eq!(field(SynthConfig { vlan_first: 4090, vlan_count: 10, ..base.clone() }), Some("vlan_first"));
    assert_eq!(field(SynthConfig { flows: 1 << 30, ..base.clone() }), Some("flows"));
    assert_eq!(field(SynthConfig { tcp_rst_share: 0.6, tcp_idle_share: 0.6, ..base.clone() }), Some("tcp_idle_share"));
    let mut no_mix = base.clone();
    no_mix.mix = flowtable::source::synth::FlowMix {
        tcp_short: 0.0,
        tcp_elephant: 0.0,
        udp_dns: 0.0,
        udp_stream: 0.0,
        icmp_echo: 0.0,
    };
    assert_eq!(field(no_mix), Some("mix"));
    let err = SyntheticSource::new(SynthConfig { rate_pps: -1.0, ..base }).err().unwrap();
    assert!(err.to_string().contains("rate_pps"), "{err}");
    // A run of zero flows is empty, not an error.
    let mut empty = SyntheticSource::new(SynthConfig { flows: 0, ..SynthConfig::default() }).unwrap();
    assert!(empty.next_packet().unwrap().is_none());
}

/// Generation speed in release: `cargo test --release --test synth -- --ignored --nocapture`.
#[test]
#[ignore]
fn generation_rate() {
    let cfg = SynthConfig { flows: 200_000, concurrency: 10_000, ..SynthConfig::default() };
    let mut src = SyntheticSource::new(cfg).unwrap();
    let started = std::time::Instant::now();
    let (mut packets, mut bytes) = (0u64, 0u64);
    while let Some(p) = src.next_packet().unwrap() {
        packets += 1;
        bytes += p.wire_len as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!((packets, bytes), (src.totals().packets, src.totals().bytes));
    println!(
        "{packets} packets, {bytes} bytes in {secs:.3} s: {:.1} M packets/s, {:.2} Gbit/s",
        packets as f64 / secs / 1e6,
        bytes as f64 * 8.0 / secs / 1e9
    );
}
