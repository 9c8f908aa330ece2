//! The engine driven through the sim NIC: offload, counting, aging,
//! limits, refusals and records.

use flowtable_config::parse;
use flowtable_hw::sim::SimPath;
use flowtable_hw::{
    Action, ActionKind, Backend, BackendError, Capabilities, Cookie, InlineNic, InstallOutcome, RuleCounters, RuleSpec,
    SimNic, SimProfile,
};
use flowtable_offload::{EndReason, Engine, FlowRecord};
use flowtable_sw::context::{FlowContext, Verdict};
use flowtable_sw::packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use flowtable_sw::pipeline::CANDIDATES;
use flowtable_sw::{FlowId, FlowKey, PacketInfo, PortMap, Stage};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

fn engine(config: &str, profile: SimProfile) -> Engine {
    let c = parse("test.json", config).unwrap();
    Engine::from_config(&c, Box::new(SimNic::new(profile))).unwrap()
}

/// A packet from client port `cport` to server port `sport` (or back).
fn pkt(client: u8, cport: u16, sport: u16, proto: u8, to_server: bool, flags: u8, len: u32) -> PacketInfo {
    let c = Ipv4Addr::new(10, 0, 0, client);
    let s = Ipv4Addr::new(192, 168, 1, 1);
    let (key, dir) = if to_server {
        FlowKey::from_v4(c, s, cport, sport, proto)
    } else {
        FlowKey::from_v4(s, c, sport, cport, proto)
    };
    PacketInfo::whole(key, dir, 0, len, flags)
}

/// What a replay does per packet: the NIC first, then software.
fn feed(e: &mut Engine, p: &PacketInfo, now: u64) -> bool {
    if e.offer_to_nic(p, now) {
        return true;
    }
    e.process(p, now);
    false
}

fn only_flow(e: &Engine) -> FlowId {
    let ids: Vec<_> = e.flows().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 1, "expected one flow");
    ids[0]
}

const OFFLOAD_UDP_AFTER_3: &str = r#"{
  "classifier": {"rules": [{"name": "udp", "match": {"proto": "udp"},
     "trigger": {"after_packets": 3}, "result": {"offload": {"type": "pass"}}}]},
  "offload": {"poll_interval_ms": 100}
}"#;

#[test]
fn offloaded_flow_counts_each_packet_once_and_ages_by_counters() {
    let mut e = engine(OFFLOAD_UDP_AFTER_3, SimProfile::full());
    let mut t = 0;
    let mut sent = [0u64; 2];
    let mut taken_by_nic = 0;
    for i in 0..100 {
        let to_server = i % 3 != 2;
        let p = pkt(1, 5000, 53, 17, to_server, 0, 100 + i);
        sent[to_server as usize] += 1;
        if feed(&mut e, &p, t) {
            taken_by_nic += 1;
        }
        t += 10 * MS;
        e.poll(t);
    }
    let id = only_flow(&e);
    let view = e.flow(id).unwrap();
    assert_eq!(view.stage, Stage::Offloaded);
    assert!(taken_by_nic > 90, "the NIC handled the flow after offload ({taken_by_nic})");
    assert_eq!(view.orig.sw_packets + view.reply.sw_packets + taken_by_nic, 100);
    // Counters not yet polled may lag; after a poll every packet is accounted.
    e.poll(t + 200 * MS);
    let view = e.flow(id).unwrap();
    assert_eq!(view.orig.packets, sent[1]);
    assert_eq!(view.reply.packets, sent[0]);
    assert_eq!(view.packets, 100);
    assert_eq!(view.bytes, (0..100u64).map(|i| 100 + i).sum::<u64>());
    assert!(view.orig.hw_packets > 0 && view.reply.hw_packets > 0);
    // The offload thread's own tally of what the rules counted agrees.
    let counted = e.coordinator().stats().rule_counted;
    assert_eq!(counted.packets, view.orig.hw_packets + view.reply.hw_packets);
    assert_eq!((counted.hw_packets, counted.hw_bytes), (counted.packets, counted.bytes), "the sim counts in hardware");

    // Idle in hardware: the rule is removed after the UDP timeout and the
    // record carries every packet.
    let last_activity = t;
    e.poll(last_activity + 59 * S);
    assert_eq!(e.rules_live(), 2, "not idle long enough yet");
    e.poll(last_activity + 61 * S);
    assert_eq!(e.rules_live(), 0);
    assert_eq!(e.backend_mut().capabilities().max_rules, 65536);
    assert!(e.coordinator().rules_by_port().is_empty(), "{:?}", e.coordinator().rules_by_port());
    assert_eq!(e.coordinator().stats().rule_counted.packets, taken_by_nic, "final counters taken at the removal");
    let recs = e.drain_records();
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r.end_reason, EndReason::Idle);
    assert_eq!(r.packets(), 100);
    assert_eq!(r.orig.sw_packets + r.orig.hw_packets, r.orig.packets);
    assert_eq!(r.src.to_string(), "10.0.0.1");
    assert_eq!(r.dport, 53);
    let off = r.offload.as_ref().expect("offload recorded");
    assert_eq!(off.action, Action::Pass);
    assert!(off.hw_counters);
    assert_eq!(r.class.as_deref(), Some("udp"));
    let mut counters = vec![];
    e.backend_mut().read_counters(&mut counters).unwrap();
    assert!(counters.is_empty(), "no rule left in the NIC");
}

#[test]
fn counters_that_keep_moving_keep_the_flow_alive() {
    let mut e = engine(OFFLOAD_UDP_AFTER_3, SimProfile::full());
    for i in 0..3 {
        feed(&mut e, &pkt(1, 5000, 53, 17, true, 0, 100), i * MS);
    }
    e.poll(10 * MS);
    assert_eq!(e.rules_live(), 2);
    // One packet every 30 s for 5 minutes, all taken by the NIC.
    let mut t = 10 * MS;
    for _ in 0..10 {
        t += 30 * S;
        assert!(feed(&mut e, &pkt(1, 5000, 53, 17, true, 0, 100), t));
        e.poll(t);
    }
    assert_eq!(e.rules_live(), 2, "moving counters kept it");
    assert!(e.drain_records().is_empty());
}

#[test]
fn refused_offload_stays_in_software_with_the_reason() {
    let mut e = engine(OFFLOAD_UDP_AFTER_3, SimProfile::refuse_all());
    for i in 0..10 {
        assert!(!feed(&mut e, &pkt(1, 5000, 53, 17, i % 2 == 0, 0, 100), i * MS));
        e.poll(i * MS + 1);
    }
    let view = e.flow(only_flow(&e)).unwrap();
    assert_eq!(view.stage, Stage::Refused);
    assert_eq!(view.packets, 10, "software counted everything");
    let refusal = view.offload.unwrap().refusal.unwrap();
    assert!(refusal.message.contains("refuse-all"), "{}", refusal.message);
    assert_eq!(e.stats().refusals.get("driver"), Some(&1));
    e.shutdown(false);
    let r = e.drain_records().pop().unwrap();
    assert_eq!(r.end_reason, EndReason::Shutdown);
    assert!(r.refused.as_deref().unwrap().starts_with("driver:"));
    assert!(r.offload.is_none());
}

#[test]
fn unsupported_action_is_refused_without_asking_the_nic() {
    let cfg = r#"{"classifier": {"rules": [{"name": "m", "match": {}, "result": {"offload": {"type": "mirror", "port": 1}}}]}}"#;
    let mut e = engine(cfg, SimProfile::small());
    feed(&mut e, &pkt(1, 5000, 80, 6, true, TCP_SYN, 60), 0);
    e.poll(1);
    let v = e.flow(only_flow(&e)).unwrap();
    assert_eq!(v.stage, Stage::Refused);
    assert_eq!(e.stats().refusals.get("unsupported-action"), Some(&1));
}

#[test]
fn capacity_limit_offloads_the_largest_flows_first() {
    let cfg = r#"{"classifier": {"rules": [{"name": "all", "match": {}, "result": {"offload": {"type": "drop"}}}]},
                  "backend": {"kind": "sim", "max_rules": 6}}"#;
    let mut profile = SimProfile::full();
    profile.capabilities.max_rules = 6;
    let mut e = engine(cfg, profile);
    // Five flows classified at once, of different sizes, before any poll.
    for client in 1..=5u8 {
        e.process(&pkt(client, 1000, 80, 17, true, 0, client as u32 * 100), 0);
    }
    e.poll(MS);
    assert_eq!(e.rules_live(), 6, "three flows of two rules fill the NIC");
    let offloaded: Vec<u8> = e
        .flows()
        .filter(|(_, f)| f.stage() == Stage::Offloaded)
        .map(|(id, _)| match e.flow(id).unwrap().src {
            std::net::IpAddr::V4(a) => a.octets()[3],
            a => panic!("not IPv4: {a}"),
        })
        .collect::<Vec<_>>();
    let mut sorted = offloaded.clone();
    sorted.sort();
    assert_eq!(sorted, vec![3, 4, 5], "the three largest");
    assert_eq!(e.queued(), 2, "the others wait, counted in software");
    assert_eq!(e.stats().refusals.get("capacity"), None, "the engine kept within capacity");
}

#[test]
fn insertion_rate_is_respected() {
    let cfg = r#"{"classifier": {"rules": [{"name": "all", "match": {}, "result": {"offload": {"type": "pass"}}}]},
                  "offload": {"poll_interval_ms": 10}}"#;
    let mut profile = SimProfile::full();
    profile.capabilities.max_insert_rate = 20; // 10 flows a second
    let mut e = engine(cfg, profile);
    for client in 1..=50u8 {
        e.process(&pkt(client, 1000, 80, 17, true, 0, 100), 0);
    }
    e.poll(0);
    let first = e.rules_live();
    assert!(first <= 20, "{first} rules in the first instant");
    let mut t = 0;
    while t < 2 * S {
        t += 10 * MS;
        e.poll(t);
    }
    // Two seconds at 20 rules/s, plus the initial burst.
    assert!(e.rules_live() <= 20 + 40 + 2, "{}", e.rules_live());
    assert!(e.rules_live() >= 40);
    assert_eq!(e.stats().refusals.get("rate"), None, "the NIC never had to say no");
}

#[test]
fn tcp_close_ends_with_its_reason_and_idle_flows_with_theirs() {
    let mut e = engine("{}", SimProfile::full());
    let seq = [
        (true, TCP_SYN),
        (false, TCP_SYN | TCP_ACK),
        (true, TCP_ACK),
        (true, TCP_FIN | TCP_ACK),
        (false, TCP_FIN | TCP_ACK),
        (true, TCP_ACK),
    ];
    for (i, (to_server, flags)) in seq.iter().enumerate() {
        feed(&mut e, &pkt(1, 4000, 80, 6, *to_server, *flags, 60), i as u64 * MS);
    }
    feed(&mut e, &pkt(2, 4000, 80, 6, true, TCP_SYN, 60), 0);
    feed(&mut e, &pkt(3, 4000, 53, 17, true, 0, 60), 0);
    e.poll(6 * S);
    let recs = e.drain_records();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].end_reason, EndReason::TcpClose);
    assert_eq!(recs[0].packets(), 6);
    e.poll(61 * S);
    let mut recs: Vec<FlowRecord> = e.drain_records();
    recs.sort_by_key(|r| r.proto);
    assert_eq!(recs.len(), 2, "handshake timeout (30 s) and UDP (60 s)");
    assert!(recs.iter().all(|r| r.end_reason == EndReason::Idle));
    assert!(e.flows().next().is_none());
}

#[test]
fn table_full_evicts_with_a_record() {
    let mut e = engine(r#"{"table": {"max_flows": 2}}"#, SimProfile::full());
    for client in 1..=3u8 {
        feed(&mut e, &pkt(client, 1000, 53, 17, true, 0, 100), client as u64 * S);
    }
    let recs = e.drain_records();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].end_reason, EndReason::TableFull);
    assert_eq!(recs[0].src.to_string(), "10.0.0.1");
    let mut e = engine(r#"{"table": {"max_flows": 2, "full_policy": "reject-new"}}"#, SimProfile::full());
    for client in 1..=3u8 {
        feed(&mut e, &pkt(client, 1000, 53, 17, true, 0, 100), 0);
    }
    assert!(e.drain_records().is_empty());
    assert_eq!(e.stats().untracked_table_full, 1);
}

#[test]
fn verdict_overrides_and_unoffload_keeps_counts() {
    let mut e = engine(r#"{"classifier": {"default_after_packets": 1000}}"#, SimProfile::full());
    feed(&mut e, &pkt(1, 1000, 443, 6, true, TCP_ACK, 100), 0);
    let id = only_flow(&e);
    assert_eq!(e.flow(id).unwrap().stage, Stage::Tracking);
    e.set_context(id, FlowContext { verdict: Some(Verdict::Drop), label: Some("bad".into()), ..Default::default() })
        .unwrap();
    e.poll(MS);
    let v = e.flow(id).unwrap();
    assert_eq!(v.stage, Stage::Offloaded);
    assert_eq!(v.offload.as_ref().unwrap().action, Action::Drop);
    assert_eq!(v.rules.len(), 2);
    for i in 0..5 {
        assert!(feed(&mut e, &pkt(1, 1000, 443, 6, true, TCP_ACK, 100), 2 * MS + i));
    }
    e.request_unoffload(id).unwrap();
    assert_eq!(e.rules_live(), 0);
    let v = e.flow(id).unwrap();
    assert_eq!(v.stage, Stage::Software);
    assert_eq!(v.packets, 6, "final counters folded in at removal");
    assert!(!feed(&mut e, &pkt(1, 1000, 443, 6, true, TCP_ACK, 100), 3 * MS));
    assert_eq!(e.flow(id).unwrap().packets, 7);
    assert!(e.request_unoffload(id).is_err());
    assert!(e.set_context(FlowId(999), FlowContext::default()).is_err());
    let rec = e.evict(id).unwrap();
    assert_eq!(rec.end_reason, EndReason::Evicted);
    assert_eq!(rec.context.unwrap().label.as_deref(), Some("bad"));
}

#[test]
fn shutdown_removes_every_rule_and_writes_every_record() {
    let mut e = engine(OFFLOAD_UDP_AFTER_3, SimProfile::full());
    for client in 1..=10u8 {
        for i in 0..5 {
            feed(&mut e, &pkt(client, 1000, 53, 17, true, 0, 100), i * MS);
            e.poll(i * MS);
        }
    }
    assert_eq!(e.rules_live(), 20);
    e.shutdown(false);
    let recs = e.drain_records();
    assert_eq!(recs.len(), 10);
    assert!(recs.iter().all(|r| r.packets() == 5 && r.end_reason == EndReason::Shutdown));
    let mut counters = vec![];
    e.backend_mut().read_counters(&mut counters).unwrap();
    assert!(counters.is_empty());
    assert_eq!(e.rules_live(), 0);
}

#[test]
fn reload_keeps_the_names_of_the_rules_that_decided() {
    let cfg = r#"{"classifier": {"rules": [
        {"name": "dns", "match": {"proto": "udp", "server_ports": [53]}, "result": "software"},
        {"name": "web", "match": {"proto": "tcp"}, "result": "software"}]}}"#;
    let mut e = engine(cfg, SimProfile::full());
    feed(&mut e, &pkt(1, 1000, 53, 17, true, 0, 80), 0);
    feed(&mut e, &pkt(2, 1000, 80, 6, true, TCP_SYN, 60), 0);
    let names = |e: &Engine| {
        let mut v: Vec<String> = e.flows().map(|(id, _)| e.flow(id).unwrap().class.unwrap()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&e), vec!["dns", "web"]);
    // The new configuration drops "dns" and puts "web" first.
    let new = parse(
        "new.json",
        r#"{"classifier": {"rules": [
        {"name": "web", "match": {"proto": "tcp"}, "result": "software"},
        {"name": "ssh", "match": {"proto": "tcp", "server_ports": [22]}, "result": "software"}]}}"#,
    )
    .unwrap();
    let next = flowtable_offload::Classifier::succeeding(e.classifier(), &new.classifier, 2).unwrap();
    e.reload(next, new.timeouts.to_timeouts());
    assert_eq!(names(&e), vec!["dns", "web"]);
    let dns = e.flows().map(|(id, _)| e.flow(id).unwrap()).find(|v| v.class.as_deref() == Some("dns")).unwrap();
    assert_eq!(dns.class_removed_in_generation, Some(2));
}

#[test]
fn marked_packets_find_their_flow_and_count_once() {
    // Mark 0: the rule marks packets with the flow's own id (slot + 1). A
    // NIC with MARK delivers the packet to software as well as counting it.
    let cfg = r#"{"classifier": {"rules": [{"name": "m", "match": {"proto": "udp"},
        "trigger": {"after_packets": 2}, "result": {"offload": {"type": "mark", "mark": 0}}}]}}"#;
    let mut e = engine(cfg, SimProfile::full());
    let p = pkt(1, 5000, 53, 17, true, 0, 100);
    feed(&mut e, &p, 0);
    feed(&mut e, &p, MS);
    e.poll(2 * MS);
    let id = only_flow(&e);
    assert_eq!(e.flow(id).unwrap().stage, Stage::Offloaded);
    let mark = id.index() + 1;
    for i in 0..10 {
        assert!(e.offer_to_nic(&p, 3 * MS + i), "the rule counts it");
        e.process_marked(&p, mark, 3 * MS + i);
    }
    // A stale or foreign mark falls back to the hash lookup: same flow.
    e.offer_to_nic(&p, 4 * MS);
    e.process_marked(&p, mark + 7, 4 * MS);
    assert_eq!(e.stats().mark_hits, 10);
    assert_eq!(e.stats().mark_misses, 1);
    e.poll(2 * S);
    let v = e.flow(id).unwrap();
    assert_eq!(v.packets, 13, "2 in software before the rule, 11 counted by the rule, none twice");
    assert_eq!(v.orig.sw_packets, 2);
    assert_eq!(v.orig.hw_packets, 11);
}

/// The pipelined batch path handles packets exactly as one `process` call
/// each: the same flows, counts, TCP ends and table-full evictions, even
/// when a batch creates a flow and later packets of the same batch hit it,
/// or evicts a flow that a later packet of the batch belonged to.
#[test]
fn a_batch_is_handled_exactly_as_its_packets_one_by_one() {
    const CONFIG: &str = r#"{"table": {"max_flows": 40}, "timeouts": {"udp_s": 0.5, "tcp_closed_s": 0.3}}"#;
    let mut stream = Vec::new();
    // A deterministic mix: 50 client flows, TCP opened and closed, UDP
    // repeated, in an order that interleaves them within batches.
    let mut x: u32 = 12345;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    for n in 0..3000u64 {
        let r = next();
        let client = (r % 50) as u8 + 1;
        let p = if client % 3 == 0 {
            let flags = match (r >> 8) % 10 {
                0 => TCP_SYN,
                1 => TCP_FIN | TCP_ACK,
                2 => TCP_RST,
                _ => TCP_ACK,
            };
            pkt(client, 2000, 443, 6, (r >> 12) % 2 == 0, flags, 60 + (r >> 16) % 1400)
        } else {
            pkt(client, 3000, 53, 17, (r >> 12) % 3 != 0, 0, 80 + (r >> 16) % 500)
        };
        stream.push((p, n * 7 * MS));
    }

    // Each schedule a shard's tuner may pick, pinned: these carry the
    // proof. Then the tuner itself, whose choices after its first trial
    // depend on the clock.
    let pins = CANDIDATES.iter().map(|&c| Some(c)).chain([None]);
    for pin in pins {
        one_by_one_and_batched_agree(CONFIG, &stream, pin);
    }
}

fn one_by_one_and_batched_agree(config: &str, stream: &[(PacketInfo, u64)], pin: Option<(usize, usize)>) {
    // Both engines poll at the same points (expiring idle and closed flows);
    // between them one takes packets singly, the other in batches of 1 to
    // 256 packets, sizes on either side of the candidates' groups and of
    // the ring: one pipeline runs over each, however long, so its ring of
    // hashes and slots (`RING`, 128) wraps in the longer ones (as in a
    // worker's dispatch batch of 256).
    let mut one_by_one = engine(config, SimProfile::full());
    let mut batched = engine(config, SimProfile::full());
    if let Some(schedule) = pin {
        assert!(batched.pin_lookup_schedule(schedule));
    }
    const SIZES: [usize; 14] = [1, 31, 32, 33, 95, 96, 97, 127, 128, 129, 255, 256, 7, 64];
    for (k, segment) in stream.chunks(256).enumerate() {
        let size = SIZES[k % SIZES.len()];
        for (p, t) in segment {
            one_by_one.process(p, *t);
        }
        for part in segment.chunks(size) {
            let (pkts, ts): (Vec<PacketInfo>, Vec<u64>) = part.iter().copied().unzip();
            batched.process_batch(&pkts, &ts);
        }
        let now = segment.last().unwrap().1;
        one_by_one.poll(now);
        batched.poll(now);
    }

    assert_eq!(batched.stats().flows_created, one_by_one.stats().flows_created);
    assert!(one_by_one.stats().flows_created > 50, "flows ended and came back");
    for e in [&mut one_by_one, &mut batched] {
        e.shutdown(false);
    }
    let (a, b) = (one_by_one.drain_records(), batched.drain_records());
    assert!(a.iter().any(|r| r.end_reason == EndReason::TableFull));
    assert!(a.iter().any(|r| r.end_reason == EndReason::TcpClose));
    assert!(a.iter().any(|r| r.end_reason == EndReason::Idle));
    assert_eq!(a.iter().map(|r| r.packets()).sum::<u64>(), 3000);
    assert_eq!(a, b, "batches in schedule {pin:?} (None: the tuner's)");
}

/// A packet of `p`'s flow arriving on `port`, keyed by that port's zone.
fn arriving(ports: &PortMap, mut p: PacketInfo, port: u8) -> PacketInfo {
    let ingress = ports.ingress(port);
    p.key.zone = ingress.zone;
    p.port = ingress.port;
    p
}

#[test]
fn inline_pair_is_one_flow_with_each_rule_on_its_arrival_port() {
    const PAIRED: &str = r#"{
      "ports": [{"name": "wan"}, {"name": "lan", "pair": "wan"}],
      "classifier": {"rules": [{"name": "from-lan", "match": {"proto": "udp", "ingress": 1},
         "trigger": {"after_packets": 3}, "result": {"offload": {"type": "pass"}}}]},
      "offload": {"poll_interval_ms": 100}
    }"#;
    let (lan, wan) = (1, 0);
    let mut e = engine(PAIRED, SimProfile::full());
    let ports = *e.ports();
    let out = |ports: &PortMap, port| arriving(ports, pkt(1, 5000, 53, 17, true, 0, 100), port);
    let back = |ports: &PortMap, port| arriving(ports, pkt(1, 5000, 53, 17, false, 0, 100), port);
    // Out through the LAN port, no reply yet: offloaded after three.
    for i in 0..3 {
        assert!(!feed(&mut e, &out(&ports, lan), i * MS));
    }
    e.poll(10 * MS);
    let id = only_flow(&e);
    assert_eq!(e.flow(id).unwrap().stage, Stage::Offloaded);
    assert_eq!(e.flow(id).unwrap().rules.len(), 2);
    // Each direction's rule sits on its port; the reply's, never seen,
    // on the LAN port's partner.
    assert!(feed(&mut e, &out(&ports, lan), 11 * MS), "outbound on the LAN port: the NIC");
    assert!(feed(&mut e, &back(&ports, wan), 12 * MS), "reply on the WAN port: the NIC");
    assert!(!feed(&mut e, &back(&ports, lan), 13 * MS), "a reply on the LAN port passes the rule by");
    assert!(!feed(&mut e, &out(&ports, wan), 14 * MS), "outbound on the WAN port passes the rule by");
    assert!(feed(&mut e, &back(&ports, wan), 15 * MS));
    e.poll(200 * MS);
    assert_eq!(only_flow(&e), id, "all of it one flow");
    let by_port: Vec<(u8, usize)> = e.coordinator().rules_by_port().iter().map(|(p, n)| (*p, *n)).collect();
    assert_eq!(by_port, [(wan, 1), (lan, 1)], "one rule on each port");
    e.shutdown(false);
    assert!(e.coordinator().rules_by_port().is_empty());
    assert_eq!(e.coordinator().stats().rule_counted.packets, 3, "what the two rules took");
    let recs = e.drain_records();
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r.ingress, lan);
    assert_eq!((r.orig.ingress, r.reply.ingress), (lan, wan), "where each direction came in first");
    assert_eq!((r.orig.packets, r.reply.packets), (5, 3));
    assert_eq!((r.orig.hw_packets, r.reply.hw_packets), (1, 2));

    // Unpaired, the reply on the other port is another flow, and the
    // classifier's `ingress` only takes flows that came in on port 1.
    let unpaired = PAIRED.replace(r#", "pair": "wan""#, "");
    let mut e = engine(&unpaired, SimProfile::full());
    let ports = *e.ports();
    for i in 0..3 {
        feed(&mut e, &out(&ports, wan), i * MS);
    }
    feed(&mut e, &back(&ports, lan), 4 * MS);
    e.poll(10 * MS);
    assert_eq!(e.flows().count(), 2);
    assert_eq!(e.rules_live(), 0, "no flow came in on port 1 first with three packets");
}

/// The sim NIC as the tests below need it: it keeps a copy of every rule
/// it is asked to install, and `behind_tap` puts its rules behind a
/// software tap, as tc's sit behind AF_PACKET.
struct Wrapped {
    nic: SimNic,
    caps: Capabilities,
    asked: Arc<Mutex<Vec<RuleSpec>>>,
    tap: Option<Arc<Mutex<Tap>>>,
    /// While set, every removal fails as a netlink error would.
    fail_removals: Arc<std::sync::atomic::AtomicBool>,
    /// Set: each counter read takes time on this clock, and packets come
    /// while it runs (see `DuringRead`).
    during_read: Option<Arc<Mutex<DuringRead>>>,
}

/// A read that takes 3 ms on `clock`; in two of three, a packet of the UDP
/// flow comes 1 ms in, which the rule counts before its counters are read
/// and software takes after the read's answer (`got`, with its time).
struct DuringRead {
    clock: Arc<std::sync::atomic::AtomicU64>,
    path: WrappedPath,
    got: Vec<(PacketInfo, u64)>,
    reads: u32,
}

/// Software sees every packet and the rule counts (and drops) it
/// afterwards; a rule takes effect only `late` packets after it is
/// installed, as a real one does a netlink round trip later.
struct Tap {
    late: usize,
    until_effective: usize,
    egress: Option<EgressFirst>,
}

/// Rules on the egress twins of these ports run before the tap, as tc's
/// egress hook runs before AF_PACKET sees a frame leave: a packet such a
/// rule took is seen by software only if the function says the rule let
/// it go on.
type EgressFirst = (PortMap, fn(&PacketInfo) -> bool);

impl Wrapped {
    fn new(profile: SimProfile) -> Wrapped {
        let nic = SimNic::new(profile);
        let caps = nic.capabilities().clone();
        Wrapped {
            nic,
            caps,
            asked: Default::default(),
            tap: None,
            fail_removals: Default::default(),
            during_read: None,
        }
    }

    fn behind_tap(mut self, late: usize) -> Wrapped {
        self.caps.software_sees_offloaded = true;
        self.tap = Some(Arc::new(Mutex::new(Tap { late, until_effective: 0, egress: None })));
        self
    }

    /// `behind_tap` at ingress; on the egress twins of `ports`, rules
    /// before the tap (see `EgressFirst`).
    fn tc_like(mut self, late: usize, ports: PortMap, passes: fn(&PacketInfo) -> bool) -> Wrapped {
        self.caps.software_sees_offloaded = true;
        self.caps.egress_rules_before_taps = true;
        self.tap = Some(Arc::new(Mutex::new(Tap { late, until_effective: 0, egress: Some((ports, passes)) })));
        self
    }
}

impl Backend for Wrapped {
    fn name(&self) -> &str {
        self.nic.name()
    }
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    fn install(&mut self, rules: &[RuleSpec]) -> Vec<InstallOutcome> {
        self.asked.lock().unwrap().extend_from_slice(rules);
        if let Some(tap) = self.tap.as_ref() {
            let mut tap = tap.lock().unwrap();
            tap.until_effective = tap.late;
        }
        self.nic.install(rules)
    }
    fn remove(&mut self, cookies: &[Cookie]) -> Vec<Result<Option<RuleCounters>, BackendError>> {
        if self.fail_removals.load(std::sync::atomic::Ordering::Relaxed) {
            return cookies
                .iter()
                .map(|_| Err(BackendError::Io { backend: "sim".into(), message: "removal refused (test)".into() }))
                .collect();
        }
        self.nic.remove(cookies)
    }
    fn read_counters(&mut self, out: &mut Vec<(Cookie, RuleCounters)>) -> Result<(), BackendError> {
        if let Some(during) = self.during_read.as_ref() {
            use std::sync::atomic::Ordering::SeqCst;
            let mut during = during.lock().unwrap();
            during.reads += 1;
            let began = during.clock.load(SeqCst);
            if during.reads % 3 != 0 {
                let p = pkt(1, 5000, 53, 17, true, 0, 120);
                assert!(!during.path.offer(&p, began + MS), "software taps every packet");
                during.got.push((p, began + MS));
            }
            during.clock.store(began + 3 * MS, SeqCst);
        }
        self.nic.read_counters(out)
    }
    fn set_clock(&mut self, now_ns: u64) {
        self.nic.set_clock(now_ns)
    }
    fn inline_nic(&self) -> Option<Box<dyn InlineNic>> {
        Some(Box::new(WrappedPath { path: self.nic.path(), tap: self.tap.clone() }))
    }
    fn take_adopted(&mut self) -> Vec<flowtable_hw::AdoptedRule> {
        self.nic.take_adopted()
    }
}

impl Wrapped {
    /// The same NIC for the next run (see `SimNic::successor`), its rules
    /// in effect at once.
    fn successor(&self) -> Wrapped {
        Wrapped {
            nic: self.nic.successor(),
            caps: self.caps.clone(),
            asked: Default::default(),
            tap: self.tap.as_ref().map(|_| Arc::new(Mutex::new(Tap { late: 0, until_effective: 0, egress: None }))),
            fail_removals: Default::default(),
            during_read: None,
        }
    }
}

struct WrappedPath {
    path: SimPath,
    tap: Option<Arc<Mutex<Tap>>>,
}

impl InlineNic for WrappedPath {
    fn offer(&mut self, pkt: &PacketInfo, now_ns: u64) -> bool {
        let Some(tap) = self.tap.as_ref() else { return self.path.offer(pkt, now_ns) };
        let mut tap = tap.lock().unwrap();
        if tap.until_effective > 0 {
            tap.until_effective -= 1;
            return false;
        }
        let taken = self.path.offer(pkt, now_ns);
        match tap.egress {
            // The rule first: what it dropped never reaches the tap.
            Some((ports, passes)) if ports.is_egress(pkt.port) => taken && !passes(pkt),
            // The tap saw it first: software handles it too.
            _ => false,
        }
    }
}

#[test]
fn pass_on_an_inline_pair_forwards_each_direction_to_the_other_port() {
    const PAIRED: &str = r#"{
      "ports": [{"name": "wan"}, {"name": "lan", "pair": "wan"}, {"name": "tap"}],
      "classifier": {"rules": [{"name": "bypass", "match": {"proto": "udp"},
         "trigger": {"after_packets": 2}, "result": {"offload": {"type": "pass"}}}]},
      "offload": {"poll_interval_ms": 100}
    }"#;
    let recording = |profile: SimProfile| {
        let c = parse("test.json", PAIRED).unwrap();
        let backend = Wrapped::new(profile);
        let asked = backend.asked.clone();
        (Engine::from_config(&c, Box::new(backend)).unwrap(), asked)
    };
    let (mut e, asked) = recording(SimProfile::full());
    let ports = *e.ports();
    let (lan, wan, tap) = (1, 0, 2);
    feed(&mut e, &arriving(&ports, pkt(1, 5000, 53, 17, true, 0, 100), lan), 0);
    feed(&mut e, &arriving(&ports, pkt(1, 5000, 53, 17, false, 0, 100), wan), MS);
    feed(&mut e, &arriving(&ports, pkt(2, 5000, 53, 17, true, 0, 100), tap), 2 * MS);
    feed(&mut e, &arriving(&ports, pkt(2, 5000, 53, 17, true, 0, 100), tap), 3 * MS);
    e.poll(10 * MS);
    assert_eq!(e.rules_live(), 4);
    let mut rules: Vec<(u8, Action)> = asked.lock().unwrap().iter().map(|r| (r.matches.port, r.action)).collect();
    rules.sort_by_key(|r| r.0);
    assert_eq!(
        rules,
        vec![
            (wan, Action::Forward { port: lan }),
            (lan, Action::Forward { port: wan }),
            (tap, Action::Pass),
            (tap, Action::Pass),
        ],
        "pass on the pair crosses to the other port; on the tap port it stays pass"
    );
    let view = e.flows().find(|(_, f)| f.port(f.initiator()) == lan).map(|(id, _)| e.flow(id).unwrap()).unwrap();
    assert_eq!(view.offload.unwrap().action, Action::Pass, "the flow keeps the action it was given");

    // A NIC that can't forward refuses pass on the pair up front, not on the tap port.
    let mut profile = SimProfile::full();
    profile.capabilities.actions.retain(|k| *k != ActionKind::Forward);
    let (mut e, asked) = recording(profile);
    feed(&mut e, &arriving(&ports, pkt(1, 5000, 53, 17, true, 0, 100), lan), 0);
    feed(&mut e, &arriving(&ports, pkt(1, 5000, 53, 17, true, 0, 100), lan), MS);
    feed(&mut e, &arriving(&ports, pkt(2, 5000, 53, 17, true, 0, 100), tap), 2 * MS);
    feed(&mut e, &arriving(&ports, pkt(2, 5000, 53, 17, true, 0, 100), tap), 3 * MS);
    e.poll(10 * MS);
    assert_eq!(e.rules_live(), 2, "only the tap port's flow went in");
    assert!(asked.lock().unwrap().iter().all(|r| r.matches.port == tap), "the NIC was never asked for the pair's");
    let refused: Vec<_> = e.flows().filter(|(_, f)| f.stage() == Stage::Refused).map(|(id, _)| id).collect();
    assert_eq!(refused.len(), 1);
    let why = e.flow(refused[0]).unwrap().offload.unwrap().refusal.unwrap().message;
    assert!(why.contains("does not support the forward action"), "{why}");
}

#[test]
fn packets_that_slip_past_a_rule_going_in_are_counted_by_software_once() {
    const DROP_AFTER_3: &str = r#"{
      "classifier": {"rules": [{"name": "udp", "match": {"proto": "udp"},
         "trigger": {"after_packets": 3}, "result": {"offload": {"type": "drop"}}}]},
      "offload": {"poll_interval_ms": 100}
    }"#;
    for (late, keep_rules) in [(0, false), (2, false), (7, false), (2, true)] {
        let backend = Wrapped::new(SimProfile::full()).behind_tap(late);
        let mut e = Engine::from_config(&parse("test.json", DROP_AFTER_3).unwrap(), Box::new(backend)).unwrap();
        let mut t = 0;
        for i in 0..30 {
            feed(&mut e, &pkt(1, 5000, 53, 17, true, 0, 100 + i), t);
            t += 40 * MS;
            e.poll(t);
        }
        assert_eq!(e.flow(only_flow(&e)).unwrap().stage, Stage::Offloaded);
        e.shutdown(keep_rules);
        let recs = e.drain_records();
        let orig = &recs[0].orig;
        assert_eq!(orig.packets, 30, "late {late}: every packet counted once: {orig:?}");
        assert_eq!(orig.bytes, (0..30).map(|i| 100 + i).sum::<u64>(), "late {late}");
        assert!(orig.hw_packets > 0 && orig.hw_packets + late as u64 <= 27, "late {late}: {orig:?}");
        assert_eq!(e.stats().slipped_packets, late as u64, "late {late}");
        assert_eq!(e.stats().sw_packets, orig.sw_packets, "late {late}");
    }
}

/// A host that is itself the endpoint on its one port: requests come in
/// on the port, its answers leave by the port's egress twin. A
/// conversation is one flow, each direction's rule on the port its packets
/// pass (the answers' on the twin, where `pass` stays a pass), and every
/// packet is counted once, whether software sees it before the rule (in)
/// or after it, and only if the rule let it go on (out).
#[test]
fn a_hosts_own_port_is_one_flow_counted_once_with_the_answers_rule_on_egress() {
    const OWN_PORT: &str = r#"{
      "ports": [{"name": "eth0", "egress": true}],
      "classifier": {"rules": [
        {"name": "dns", "match": {"proto": "udp", "server_ports": [53]},
         "trigger": {"after_packets": 3}, "result": {"offload": {"type": "drop"}}},
        {"name": "web", "match": {"proto": "udp", "server_ports": [80]},
         "trigger": {"after_packets": 3}, "result": {"offload": {"type": "pass"}}}]},
      "offload": {"poll_interval_ms": 100}
    }"#;
    let config = parse("test.json", OWN_PORT).unwrap();
    let ports = config.port_map().unwrap();
    let (port, twin) = (0, 1);
    assert_eq!(config.egress_twins(), [(port, twin)]);
    assert!(ports.is_egress(twin) && ports.ingress(twin).zone == port);
    let passes = |p: &PacketInfo| p.key.endpoints(p.dir).sport == 80 || p.key.endpoints(p.dir).dport == 80;
    for late in [0, 3] {
        let backend = Wrapped::new(SimProfile::full()).tc_like(late, ports, passes);
        let asked = backend.asked.clone();
        let mut e = Engine::from_config(&config, Box::new(backend)).unwrap();
        let mut t = 0;
        for i in 0..30 {
            for server in [53, 80] {
                feed(&mut e, &arriving(&ports, pkt(1, 5000, server, 17, true, 0, 100 + i), port), t);
                feed(&mut e, &arriving(&ports, pkt(1, 5000, server, 17, false, 0, 200 + i), twin), t + MS);
            }
            t += 40 * MS;
            e.poll(t);
        }
        assert_eq!(e.flows().count(), 2, "late {late}: one flow per conversation");
        let mut rules: Vec<(u16, u8, Action)> = asked
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                let ends = r.matches.key.endpoints(r.matches.dir);
                (ends.sport.min(ends.dport), r.matches.port, r.action)
            })
            .collect();
        rules.sort_by_key(|r| (r.0, r.1));
        assert_eq!(
            rules,
            [(53, port, Action::Drop), (53, twin, Action::Drop), (80, port, Action::Pass), (80, twin, Action::Pass)],
            "late {late}: requests' rules on the port, answers' on its twin, pass left a pass"
        );
        e.shutdown(false);
        let mut recs = e.drain_records();
        recs.sort_by_key(|r| r.dport);
        assert_eq!(recs.iter().map(|r| r.dport).collect::<Vec<_>>(), [53, 80], "late {late}");
        for r in &recs {
            let what = format!("late {late}, server port {}", r.dport);
            assert_eq!((r.orig.ingress, r.reply.ingress), (port, twin), "{what}");
            assert_eq!((r.orig.packets, r.reply.packets), (30, 30), "{what}: every packet once: {r:?}");
            assert_eq!(r.orig.bytes, (0..30).map(|i| 100 + i).sum::<u64>(), "{what}");
            assert_eq!(r.reply.bytes, (0..30).map(|i| 200 + i).sum::<u64>(), "{what}");
            assert!(r.orig.hw_packets > 0 && r.reply.hw_packets > 0, "{what}: both rules counted: {r:?}");
        }
        assert_eq!(e.stats().sw_packets, recs.iter().map(|r| r.orig.sw_packets + r.reply.sw_packets).sum::<u64>());
    }
}

const OFFLOAD_TCP_AFTER: &str = r#"{
  "classifier": {"rules": [{"name": "web", "match": {"proto": "tcp"},
     "trigger": {"after_packets": AFTER}, "result": {"offload": {"type": "pass"}}}]},
  "timeouts": {"tcp_closing_s": 10, "tcp_closed_s": 5},
  "offload": {"poll_interval_ms": 100}
}"#;

fn tcp_engine(after: u64, profile: SimProfile) -> Engine {
    engine(&OFFLOAD_TCP_AFTER.replace("AFTER", &after.to_string()), profile)
}

/// Feeds one packet of the 10.0.0.1:4000 -> :80 connection at `t` and
/// polls; counts it into `sent` by direction ([to client, to server]).
fn step(e: &mut Engine, t: &mut u64, sent: &mut [u64; 2], to_server: bool, flags: u8) -> bool {
    sent[to_server as usize] += 1;
    let taken = feed(e, &pkt(1, 4000, 80, 6, to_server, flags, 100), *t);
    *t += 10 * MS;
    e.poll(*t);
    taken
}

fn open_and_offload(e: &mut Engine, t: &mut u64, sent: &mut [u64; 2]) {
    for (to_server, flags) in [(true, TCP_SYN), (false, TCP_SYN | TCP_ACK), (true, TCP_ACK)] {
        step(e, t, sent, to_server, flags);
    }
    for i in 0..20 {
        step(e, t, sent, i % 2 == 0, TCP_ACK);
    }
    assert_eq!(e.rules_live(), 2, "offloaded mid-connection");
    assert!(step(e, t, sent, true, TCP_ACK) && step(e, t, sent, false, TCP_ACK), "the NIC takes the data");
}

#[test]
fn fin_both_ways_tears_an_offloaded_connection_down_and_it_ends_tcp_close() {
    let mut e = tcp_engine(4, SimProfile::full());
    let (mut t, mut sent) = (0, [0u64; 2]);
    open_and_offload(&mut e, &mut t, &mut sent);
    // The client's FIN misses the rule: software sees it, the rules stay
    // for the data still coming back.
    assert!(!step(&mut e, &mut t, &mut sent, true, TCP_FIN | TCP_ACK), "FIN reaches software");
    assert_eq!(e.rules_live(), 2, "half closed: the rules stay");
    assert!(step(&mut e, &mut t, &mut sent, false, TCP_ACK), "the reply direction still goes by its rule");
    // The server's FIN: closed both ways, the rules go.
    assert!(!step(&mut e, &mut t, &mut sent, false, TCP_FIN | TCP_ACK));
    assert_eq!(e.rules_live(), 0, "torn down on the second FIN");
    let id = only_flow(&e);
    assert_eq!(e.flow(id).unwrap().stage, Stage::Software);
    // The last ACK: no rule left, software's.
    assert!(!step(&mut e, &mut t, &mut sent, true, TCP_ACK));
    let last = t - 10 * MS;
    // Ended by the closed timeout (5 s), not the established one (300 s).
    e.poll(last + 4 * S);
    assert!(e.drain_records().is_empty(), "not before its timeout");
    e.poll(last + 5 * S + 100 * MS);
    let recs = e.drain_records();
    assert_eq!(recs.len(), 1);
    let r = &recs[0];
    assert_eq!(r.end_reason, EndReason::TcpClose);
    assert_eq!((r.orig.packets, r.reply.packets), (sent[1], sent[0]), "every packet once: {r:?}");
    assert_eq!(r.orig.sw_packets + r.orig.hw_packets, r.orig.packets);
    assert!(r.orig.hw_packets > 0 && r.reply.hw_packets > 0);
    // FIN, FIN and the last ACK at least went by software after offload.
    assert!(r.orig.sw_packets >= 4 && r.reply.sw_packets >= 2, "{r:?}");
    let off = r.offload.as_ref().unwrap();
    assert!(off.removed_ns.is_some(), "the rules went before the end");
    assert_eq!(off.teardown, Some(flowtable_offload::Teardown::FinRst));
    let mut counters = vec![];
    e.backend_mut().read_counters(&mut counters).unwrap();
    assert!(counters.is_empty());
}

#[test]
fn rst_tears_an_offloaded_connection_down_at_once() {
    let mut e = tcp_engine(4, SimProfile::full());
    let (mut t, mut sent) = (0, [0u64; 2]);
    open_and_offload(&mut e, &mut t, &mut sent);
    assert!(!step(&mut e, &mut t, &mut sent, false, TCP_RST | TCP_ACK), "RST reaches software");
    assert_eq!(e.rules_live(), 0);
    let last = t - 10 * MS;
    e.poll(last + 5 * S + 100 * MS);
    let recs = e.drain_records();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].end_reason, EndReason::TcpClose);
    assert_eq!((recs[0].orig.packets, recs[0].reply.packets), (sent[1], sent[0]));
}

#[test]
fn a_close_while_the_install_is_queued_withdraws_it() {
    let mut p = SimProfile::full();
    p.capabilities.max_insert_rate = 1;
    let mut e = tcp_engine(4, p);
    let (mut t, mut sent) = (0, [0u64; 2]);
    for (to_server, flags) in [(true, TCP_SYN), (false, TCP_SYN | TCP_ACK), (true, TCP_ACK), (true, TCP_ACK)] {
        step(&mut e, &mut t, &mut sent, to_server, flags);
    }
    step(&mut e, &mut t, &mut sent, true, TCP_RST);
    let last = t - 10 * MS;
    e.poll(last + 6 * S);
    let recs = e.drain_records();
    assert_eq!(recs.len(), 1, "ended, whether its rules went in or not");
    assert_eq!(recs[0].end_reason, EndReason::TcpClose);
    assert_eq!(recs[0].packets(), 5);
    assert_eq!(e.rules_live(), 0);
}

#[test]
fn a_backend_without_the_flags_match_sees_no_close_and_says_so() {
    let mut p = SimProfile::full();
    p.capabilities.tcp_teardown_to_software = false;
    let mut e = tcp_engine(4, p);
    let (mut t, mut sent) = (0, [0u64; 2]);
    open_and_offload(&mut e, &mut t, &mut sent);
    assert!(step(&mut e, &mut t, &mut sent, true, TCP_FIN | TCP_ACK), "the rule takes the FIN");
    assert!(step(&mut e, &mut t, &mut sent, false, TCP_FIN | TCP_ACK));
    assert_eq!(e.rules_live(), 2, "nothing to see: the rules stay");
    let last = t - 10 * MS;
    e.poll(last + 299 * S);
    assert!(e.drain_records().is_empty(), "aged as established");
    e.poll(last + 301 * S);
    e.poll(last + 302 * S);
    let recs = e.drain_records();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].end_reason, EndReason::Idle);
    assert_eq!(recs[0].packets(), sent[0] + sent[1]);
    assert_eq!(recs[0].offload.as_ref().unwrap().teardown, Some(flowtable_offload::Teardown::IdleOnly));
}

/// Offloaded at its SYN: software never sees the handshake complete, but
/// counters moving both ways mean a connection carrying traffic, aged as
/// established; counters moving one way only (a SYN sent again and again)
/// leave it a handshake.
#[test]
fn a_flow_offloaded_before_its_handshake_is_established_once_both_rules_count() {
    let mut e = tcp_engine(1, SimProfile::full());
    let (mut t, mut sent) = (0, [0u64; 2]);
    step(&mut e, &mut t, &mut sent, true, TCP_SYN);
    assert_eq!(e.rules_live(), 2);
    let id = only_flow(&e);
    assert!(step(&mut e, &mut t, &mut sent, true, TCP_SYN), "a second SYN, by the rule");
    t += 200 * MS;
    e.poll(t);
    assert_eq!(e.flow(id).unwrap().tcp_state, flowtable_sw::TcpState::SynSent, "one way only: a handshake yet");
    for (to_server, flags) in [(false, TCP_SYN | TCP_ACK), (true, TCP_ACK), (true, TCP_ACK), (false, TCP_ACK)] {
        assert!(step(&mut e, &mut t, &mut sent, to_server, flags));
    }
    e.poll(t + 200 * MS);
    assert_eq!(e.flow(id).unwrap().tcp_state, flowtable_sw::TcpState::Established);
    let last = t - 10 * MS;
    e.poll(last + 31 * S);
    assert!(e.drain_records().is_empty(), "not aged on the 30 s handshake timeout");
    assert_eq!(e.rules_live(), 2);
    e.poll(last + 301 * S);
    e.poll(last + 302 * S);
    let recs = e.drain_records();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].end_reason, EndReason::Idle);
    assert_eq!(recs[0].packets(), sent[0] + sent[1]);

    // One way only, to the end: aged as a handshake.
    let mut e = tcp_engine(1, SimProfile::full());
    let (mut t, mut sent) = (0, [0u64; 2]);
    for _ in 0..3 {
        step(&mut e, &mut t, &mut sent, true, TCP_SYN);
    }
    let last = t - 10 * MS;
    e.poll(last + 31 * S);
    e.poll(last + 32 * S);
    let recs = e.drain_records();
    assert_eq!(recs.len(), 1, "aged on the handshake timeout");
    assert_eq!(recs[0].tcp_state, flowtable_sw::TcpState::SynSent);
    assert_eq!(recs[0].packets(), 3);
}

fn engine_with_active_timeout(config: &str, profile: SimProfile, active_s: u64) -> Engine {
    let c = parse("test.json", config).unwrap();
    let classifier = flowtable_offload::Classifier::new(&c.classifier).unwrap();
    let cfg = flowtable_offload::EngineConfig {
        active_timeout_ns: active_s * S,
        ..flowtable_offload::EngineConfig::from_config(&c)
    };
    Engine::new(c.table_config(), classifier, Box::new(SimNic::new(profile)), cfg)
}

/// A flow lasting 10 minutes with a 60 s active timeout: an interim record
/// a minute, each with what came since the previous one, and a final
/// record with the rest; over them all, the flow's packets and bytes, in
/// software and hardware, exactly. A short flow gets only its final one.
#[test]
fn a_long_flow_gives_interim_records_that_add_up_to_it() {
    let config = OFFLOAD_UDP_AFTER_3.replace(r#""offload": {"poll"#, r#""timeouts": {"udp_s": 30}, "offload": {"poll"#);
    let mut e = engine_with_active_timeout(&config, SimProfile::full(), 60);
    let mut t = 0;
    let (mut packets, mut bytes) = (0u64, 0u64);
    for i in 0..600u64 {
        let p = pkt(1, 5000, 53, 17, i % 4 != 3, 0, 100 + (i % 50) as u32);
        feed(&mut e, &p, t);
        packets += 1;
        bytes += p.wire_len as u64;
        // A short flow beside it, ended idle long before.
        if i < 3 {
            feed(&mut e, &pkt(2, 6000, 53, 17, true, 0, 80), t);
        }
        t += S;
        e.poll(t);
    }
    e.poll(t + 31 * S);
    e.poll(t + 32 * S);
    let recs = e.drain_records();
    let (long, short): (Vec<&FlowRecord>, Vec<&FlowRecord>) =
        recs.iter().partition(|r| r.src.to_string() == "10.0.0.1");
    assert_eq!(short.len(), 1);
    assert_eq!(short[0].kind, flowtable_offload::RecordKind::Final);
    assert_eq!(short[0].packets(), 3);
    let interim: Vec<_> = long.iter().filter(|r| r.kind == flowtable_offload::RecordKind::Interim).collect();
    assert!((9..=10).contains(&interim.len()), "one a minute for 10 minutes: {}", interim.len());
    assert!(interim.iter().all(|r| r.end_reason == EndReason::Active));
    let last = long.last().unwrap();
    assert_eq!(last.kind, flowtable_offload::RecordKind::Final);
    assert_eq!(last.end_reason, EndReason::Idle);
    assert!(long.iter().all(|r| r.id == last.id && r.start_ns == last.start_ns));
    assert_eq!(long.iter().map(|r| r.packets()).sum::<u64>(), packets);
    assert_eq!(long.iter().map(|r| r.bytes()).sum::<u64>(), bytes);
    let sum = |f: fn(&FlowRecord) -> u64| long.iter().map(|r| f(r)).sum::<u64>();
    assert!(sum(|r| r.orig.hw_packets) > 0, "mostly counted by the rule");
    assert_eq!(sum(|r| r.orig.sw_packets + r.orig.hw_packets), sum(|r| r.orig.packets));
    assert_eq!(e.stats().interim_records, interim.len() as u64);
    // Each interim record carries about a minute of packets (one a second).
    for r in &interim[1..] {
        assert!((55..=65).contains(&r.packets()), "{}", r.packets());
    }
}

/// The current rate is the last one-second window's, in software and for
/// what the NIC counted alike; the mean is since the flow began.
#[test]
fn current_rate_is_the_last_windows_in_software_and_on_the_nic() {
    const NO_RULES: &str = r#"{"timeouts": {"udp_s": 3600}}"#;
    for (config, offloaded) in [(NO_RULES, false), (OFFLOAD_UDP_AFTER_3, true)] {
        let mut e = engine(config, SimProfile::full());
        e.enable_rates();
        // 100 packets of 100 bytes a second for 3 s, then 1000 a second for 3 s.
        let mut t = 0;
        for (secs, every) in [(3, 10 * MS), (3, MS)] {
            for _ in 0..secs * S / every {
                feed(&mut e, &pkt(1, 5000, 53, 17, true, 0, 100), t);
                t += every;
                if t % (10 * MS) == 0 {
                    e.poll(t);
                }
            }
        }
        let id = only_flow(&e);
        if offloaded {
            assert_eq!(e.shard().flow(id).unwrap().stage, Stage::Offloaded);
            assert!(e.shard().flow(id).unwrap().orig.hw_packets > 3000);
        }
        let r = e.shard().current_rate(id).unwrap();
        assert!((r.packets_per_s - 1000.0).abs() < 30.0, "offloaded {offloaded}: {r:?}");
        assert!((r.bytes_per_s - 100_000.0).abs() < 3_000.0, "offloaded {offloaded}: {r:?}");
        // The mean since start is lower: (300 + 3000) packets over 6 s.
        let v = e.shard().flow(id).unwrap();
        let mean = v.packets as f64 * 1e9 / (t - v.start_ns) as f64;
        assert!((mean - 550.0).abs() < 20.0, "{mean}");
        // Idle for two windows: nothing now.
        for _ in 0..300 {
            t += 10 * MS;
            e.poll(t);
        }
        assert_eq!(e.shard().current_rate(id).unwrap(), flowtable_offload::Rate::default(), "offloaded {offloaded}");
    }
    // A flow sampled just after it began (here 5 ms) has no window yet:
    // its one packet is not a burst for the next second, but spread over
    // its life so far.
    let mut e = engine(NO_RULES, SimProfile::full());
    e.enable_rates();
    let mut t = 0;
    while t < 990 * MS {
        t += 10 * MS;
        e.poll(t);
    }
    feed(&mut e, &pkt(1, 5000, 53, 17, true, 0, 100), 995 * MS);
    while t < 1900 * MS {
        t += 10 * MS;
        e.poll(t);
    }
    let r = e.shard().current_rate(only_flow(&e)).unwrap();
    assert!((r.bytes_per_s - 100.0 / 0.905).abs() < 1.0, "{r:?}");

    // Off until asked for.
    let mut e = engine(NO_RULES, SimProfile::full());
    feed(&mut e, &pkt(1, 5000, 53, 17, true, 0, 100), 0);
    assert!(e.shard().current_rate(only_flow(&e)).is_none());
}

/// Two runs of one instance on one NIC (the sim's `successor`: its rules
/// outlive the first run), the offload journal at `journal`.
fn first_run(config: &str, nic: SimNic, journal: &std::path::Path) -> Engine {
    let c = parse("test.json", config).unwrap();
    let mut e = Engine::from_config(&c, Box::new(nic)).unwrap();
    e.set_journal(journal).unwrap();
    e
}

fn next_run(config: &str, nic: SimNic, journal: &std::path::Path, now: u64) -> Engine {
    let c = parse("test.json", config).unwrap();
    let classifier = flowtable_offload::Classifier::new(&c.classifier).unwrap();
    let cfg = flowtable_offload::EngineConfig { journal: true, ..flowtable_offload::EngineConfig::from_config(&c) };
    Engine::restarted(c.table_config(), classifier, Box::new(nic), cfg, journal, now).unwrap()
}

/// The next run of `config` on `backend`, taking over from `journal` at `now`.
fn restart(
    config: &flowtable_config::Config,
    backend: Box<dyn Backend>,
    journal: &std::path::Path,
    now: u64,
) -> Engine {
    let classifier = flowtable_offload::Classifier::new(&config.classifier).unwrap();
    let cfg = flowtable_offload::EngineConfig::from_config(config);
    Engine::restarted(config.table_config(), classifier, backend, cfg, journal, now).unwrap()
}

/// `rounds` packets each of `flows` UDP flows (client ports from
/// `first_port` on), rounds 10 ms apart from 0 on, polled after each; the
/// time after the last.
fn udp_rounds(e: &mut Engine, flows: u16, rounds: u32, first_port: u16) -> u64 {
    let mut t = 0;
    for round in 0..rounds {
        for f in 0..flows {
            feed(e, &pkt(1, first_port + f, 53, 17, true, 0, 100 + round), t);
        }
        t += 10 * MS;
        e.poll(t);
    }
    t
}

/// Twenty packets each of four UDP flows (see `udp_rounds`).
fn four_udp_flows(e: &mut Engine) -> u64 {
    udp_rounds(e, 4, 20, 5000)
}

/// A first run with a journal, dropping UDP flows after 3 packets, on the
/// sim behind a software tap whose rules take effect `late` packets after
/// they go in: its configuration, the engine, and the NIC for the next run.
fn journaled_udp_drop_behind_tap(
    late: usize,
    journal: &std::path::Path,
) -> (flowtable_config::Config, Engine, Wrapped) {
    let backend = Wrapped::new(SimProfile::full()).behind_tap(late);
    let next = backend.successor();
    let c = parse("test.json", &OFFLOAD_UDP_AFTER_3_JOURNALED.replace("pass", "drop")).unwrap();
    let mut e = Engine::from_config(&c, Box::new(backend)).unwrap();
    e.set_journal(journal).unwrap();
    (c, e, next)
}

/// The one record of the connection of `step`, once its closed timeout
/// after `t` has passed: ended `tcp-close`, with every packet of `sent`.
fn closed_record(e: &mut Engine, t: u64, sent: [u64; 2]) -> FlowRecord {
    e.poll(t + 6 * S);
    let mut recs = e.drain_records();
    assert_eq!(recs.len(), 1);
    let r = recs.remove(0);
    assert_eq!(r.end_reason, EndReason::TcpClose);
    assert_eq!((r.orig.packets, r.reply.packets), (sent[1], sent[0]), "every packet once: {r:?}");
    r
}

fn journal_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ft-engine-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir.join("journal.jsonl")
}

/// Sends `n` packets of the UDP flow (two of three to the server), from
/// `*t` on, 10 ms apart; counts what was sent per direction.
fn udp_traffic(e: &mut Engine, t: &mut u64, sent: &mut [u64; 2], n: u32) {
    for i in 0..n {
        let to_server = i % 3 != 2;
        let p = pkt(1, 5000, 53, 17, to_server, 0, 100 + i);
        sent[to_server as usize] += 1;
        feed(e, &p, *t);
        *t += 10 * MS;
        e.poll(*t);
    }
}

const OFFLOAD_UDP_AFTER_3_JOURNALED: &str = r#"{
  "classifier": {"rules": [{"name": "udp", "match": {"proto": "udp"},
     "trigger": {"after_packets": 3}, "result": {"offload": {"type": "pass"}}}]},
  "offload": {"poll_interval_ms": 100},
  "backend": {"kind": "tc", "journal": "/unused"}
}"#;

#[test]
fn a_run_killed_with_flows_offloaded_is_taken_over_and_counts_every_packet_once() {
    let journal = journal_path("kill");
    let nic = SimNic::new(SimProfile::full());
    let successor = nic.successor();
    let mut e = first_run(OFFLOAD_UDP_AFTER_3_JOURNALED, nic, &journal);
    assert!(e.config().journal, "a tc backend with a journal journals");
    let (mut t, mut sent) = (0, [0u64; 2]);
    udp_traffic(&mut e, &mut t, &mut sent, 40);
    let id = only_flow(&e);
    let before = e.flow(id).unwrap();
    assert_eq!(before.stage, Stage::Offloaded);
    let sw_before = before.orig.sw_packets + before.reply.sw_packets;
    assert!(sw_before >= 3, "software saw the packets before the offload");
    // Killed: no shutdown, no record. Traffic goes on through the rules
    // while no run is there to read them.
    drop(e);
    let mut gap = [0u64; 2];
    let mut path = successor.path();
    for i in 0..10u32 {
        let to_server = i % 2 == 0;
        gap[to_server as usize] += 1;
        assert!(path.offer(&pkt(1, 5000, 53, 17, to_server, 0, 500), t), "the rule takes it");
        t += 10 * MS;
    }
    let mut e = next_run(OFFLOAD_UDP_AFTER_3_JOURNALED, successor, &journal, t);
    assert_eq!(e.rules_live(), 2, "both rules taken over");
    let view = e.flow(id).expect("the flow is back under its own id");
    assert_eq!(view.stage, Stage::Offloaded);
    assert_eq!(view.packets, 40 + 10, "what the earlier run counted, and what the rules took meanwhile");
    udp_traffic(&mut e, &mut t, &mut sent, 30);
    e.shutdown(false);
    let recs = e.drain_records();
    assert_eq!(recs.len(), 1, "one record, from the run that ended the flow: {recs:#?}");
    let r = &recs[0];
    assert_eq!(r.packets(), 40 + 10 + 30, "every packet once");
    assert_eq!((r.orig.packets, r.reply.packets), (sent[1] + gap[1], sent[0] + gap[0]));
    assert_eq!(r.orig.sw_packets + r.reply.sw_packets, sw_before, "software's part came through the journal");
    assert_eq!(r.class.as_deref(), Some("udp"));
    assert_eq!(r.start_ns, 0, "the flow's start came through the journal");
    let off = r.offload.as_ref().unwrap();
    assert_eq!(off.adopted_ns, Some(400 * MS + 100 * MS), "taken over when the second run started");
    assert_eq!(e.rules_live(), 0);
}

#[test]
fn a_stop_that_keeps_its_rules_leaves_the_flow_to_the_next_run_and_one_record() {
    let journal = journal_path("keep");
    let nic = SimNic::new(SimProfile::full());
    let successor = nic.successor();
    let mut e = first_run(OFFLOAD_UDP_AFTER_3_JOURNALED, nic, &journal);
    let (mut t, mut sent) = (0, [0u64; 2]);
    udp_traffic(&mut e, &mut t, &mut sent, 40);
    e.shutdown(true);
    assert!(e.drain_records().is_empty(), "the flow goes on in the next run: no record from this one");
    assert_eq!(e.stats().flows_left_in_place, 1);
    assert_eq!(e.rules_live(), 2, "its rules stay");
    drop(e);
    let mut e = next_run(OFFLOAD_UDP_AFTER_3_JOURNALED, successor, &journal, t);
    udp_traffic(&mut e, &mut t, &mut sent, 20);
    e.shutdown(false);
    let recs = e.drain_records();
    assert_eq!(recs.len(), 1);
    assert_eq!((recs[0].orig.packets, recs[0].reply.packets), (sent[1], sent[0]));
    assert!(recs[0].offload.as_ref().unwrap().adopted_ns.is_some());
}

#[test]
fn rules_the_new_configuration_would_not_put_in_are_removed_and_the_flow_goes_on_in_software() {
    let journal = journal_path("reconf");
    let nic = SimNic::new(SimProfile::full());
    let successor = nic.successor();
    let mut e = first_run(OFFLOAD_UDP_AFTER_3_JOURNALED, nic, &journal);
    let (mut t, mut sent) = (0, [0u64; 2]);
    udp_traffic(&mut e, &mut t, &mut sent, 40);
    drop(e);
    // Same flows, but now dropped rather than passed.
    let drop_udp = OFFLOAD_UDP_AFTER_3_JOURNALED.replace(r#""type": "pass""#, r#""type": "drop""#);
    let mut e = next_run(&drop_udp, successor, &journal, t);
    let id = only_flow(&e);
    e.poll(t + MS);
    assert_eq!(e.rules_live(), 0, "the pass rules went: this configuration drops");
    assert_eq!(e.flow(id).unwrap().stage, Stage::Software);
    udp_traffic(&mut e, &mut t, &mut sent, 10);
    e.shutdown(false);
    let recs = e.drain_records();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].packets(), 50, "what the rules counted before their removal is kept");
    assert!(recs[0].orig.sw_packets + recs[0].reply.sw_packets > 10, "the last ten were software's");
}

#[test]
fn a_rule_the_journal_does_not_know_is_removed_not_taken_over() {
    let journal = journal_path("unknown");
    let nic = SimNic::new(SimProfile::full());
    let successor = nic.successor();
    // A first run without a journal: nothing tells the next run of its flows.
    let c = parse("test.json", OFFLOAD_UDP_AFTER_3).unwrap();
    let mut e = Engine::from_config(&c, Box::new(nic)).unwrap();
    let (mut t, mut sent) = (0, [0u64; 2]);
    udp_traffic(&mut e, &mut t, &mut sent, 40);
    assert_eq!(e.rules_live(), 2);
    drop(e);
    let e = next_run(OFFLOAD_UDP_AFTER_3_JOURNALED, successor.successor(), &journal, t);
    assert_eq!(e.flows().count(), 0);
    assert_eq!(e.rules_live(), 0);
    let mut left = vec![];
    successor.successor().read_counters(&mut left).unwrap();
    assert!(left.is_empty(), "removed from the NIC: {left:?}");
}

#[test]
fn what_slipped_past_a_rule_going_in_survives_a_kill_through_the_journal() {
    // `lagging`: software gets each packet only after the next counter
    // read, as a capture ring hands packets over milliseconds late, so a
    // read finds the rule ahead of software.
    for (late, lagging) in [(0, false), (2, false), (0, true), (2, true)] {
        let journal = journal_path(&format!("slip{late}"));
        let (c, mut e, next) = journaled_udp_drop_behind_tap(late, &journal);
        let mut t = 0;
        for i in 0..30 {
            let p = pkt(1, 5000, 53, 17, true, 0, 100 + i);
            if lagging {
                assert!(!e.offer_to_nic(&p, t), "software taps every packet");
                e.poll(t + 30 * MS);
                e.process(&p, t);
            } else {
                feed(&mut e, &p, t);
            }
            t += 40 * MS;
            e.poll(t);
        }
        assert_eq!(e.stats().slipped_packets, 0, "late {late}: nothing settled yet, the rules are in");
        drop(e);
        let mut e = restart(&c, Box::new(next), &journal, t);
        for i in 30..40 {
            feed(&mut e, &pkt(1, 5000, 53, 17, true, 0, 100 + i), t);
            t += 40 * MS;
            e.poll(t);
        }
        e.shutdown(false);
        let recs = e.drain_records();
        assert_eq!(recs.len(), 1, "late {late} lagging {lagging}");
        let orig = &recs[0].orig;
        assert_eq!(orig.packets, 40, "late {late} lagging {lagging}: every packet once across the kill: {orig:?}");
        assert_eq!(orig.bytes, (0..40).map(|i| 100 + i).sum::<u64>(), "late {late} lagging {lagging}");
        assert_eq!(orig.sw_packets, 3 + late as u64, "late {late} lagging {lagging}: the slipped ones are software's");
    }
}

/// The offload thread reads the counters while a worker goes on handling
/// packets, so software may take a packet from after the read (which the
/// rule counted after it too) before the read's answer reaches it. Such a
/// packet must not go into the journal's figure of what slipped past the
/// rule going in: taken for a slipped one, it would be counted by software
/// there and by the rule in the next run, after a kill.
#[test]
fn packets_software_takes_before_a_reads_answer_are_not_taken_for_slipped_ones() {
    for late in [0, 2] {
        let journal = journal_path(&format!("ahead{late}"));
        let (c, mut e, next) = journaled_udp_drop_behind_tap(late, &journal);
        // Of one length, as a bulk transfer's are: a packet too many in
        // two reads' figures in a row would make them agree.
        let (mut t, mut sent) = (0, 0u64);
        let mut send = |e: &mut Engine, at: u64| {
            feed(e, &pkt(1, 5000, 53, 17, true, 0, 120), at);
            sent += 1;
        };
        for _ in 0..30 {
            // A read begins at `t` (one is due each 100 ms); a packet from
            // after it is handled before its answer comes.
            e.offload_step(t);
            send(&mut e, t + 5 * MS);
            e.poll(t + 10 * MS);
            send(&mut e, t + 50 * MS);
            e.poll(t + 60 * MS);
            t += 100 * MS;
        }
        drop(e);
        let mut e = restart(&c, Box::new(next), &journal, t);
        for i in 0..10 {
            feed(&mut e, &pkt(1, 5000, 53, 17, true, 0, 50), t + i * 40 * MS);
            e.poll(t + i * 40 * MS);
        }
        e.shutdown(false);
        let recs = e.drain_records();
        assert_eq!(recs.len(), 1, "late {late}");
        let orig = &recs[0].orig;
        assert_eq!(orig.packets, sent + 10, "late {late}: every packet once across the kill: {orig:?}");
        assert_eq!(orig.bytes, sent * 120 + 500, "late {late}");
        assert_eq!(orig.sw_packets, 3 + late as u64, "late {late}: the slipped ones are software's, and only they");
    }
}

/// A rule's counters are taken at some moment within a read that takes
/// time (a netlink dump of thousands of rules), so a packet the rule
/// counts during the read may be in them or not: what software had seen
/// before the read then says nothing exact of what slipped past the rule,
/// and a figure from it, agreed twice, would lose a packet across a kill.
#[test]
fn a_read_during_which_a_packet_came_gives_no_figure_of_what_slipped() {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    let journal = journal_path("during");
    let mut backend = Wrapped::new(SimProfile::full()).behind_tap(2);
    let clock = Arc::new(AtomicU64::new(0));
    let path = WrappedPath { path: backend.nic.path(), tap: backend.tap.clone() };
    let during = Arc::new(Mutex::new(DuringRead { clock: clock.clone(), path, got: vec![], reads: 0 }));
    backend.during_read = Some(during.clone());
    let next = backend.successor();
    let c = parse("test.json", &OFFLOAD_UDP_AFTER_3_JOURNALED.replace("pass", "drop")).unwrap();
    let mut e = Engine::from_config(&c, Box::new(backend)).unwrap();
    e.set_journal(&journal).unwrap();
    let read_clock = clock.clone();
    e.set_read_clock(Box::new(move || read_clock.load(SeqCst)));
    let (mut t, mut sent) = (0, 0u64);
    for _ in 0..40 {
        clock.store(t, SeqCst);
        e.poll(t);
        let got: Vec<_> = std::mem::take(&mut during.lock().unwrap().got);
        for (p, at) in got {
            e.process(&p, at);
            sent += 1;
        }
        feed(&mut e, &pkt(1, 5000, 53, 17, true, 0, 120), t + 50 * MS);
        sent += 1;
        t += 100 * MS;
    }
    drop(e);
    let mut e = restart(&c, Box::new(next), &journal, t);
    for i in 0..10 {
        feed(&mut e, &pkt(1, 5000, 53, 17, true, 0, 120), t + i * 40 * MS);
        sent += 1;
        e.poll(t + i * 40 * MS);
    }
    e.shutdown(false);
    let recs = e.drain_records();
    assert_eq!(recs.len(), 1);
    let orig = &recs[0].orig;
    assert_eq!(orig.packets, sent, "every packet once across the kill: {orig:?}");
    assert_eq!(orig.sw_packets, 3 + 2, "what slipped past the rule is software's, and only that");
}

/// Software taps in front of the rules but takes packets some time late
/// (a capture ring), so a packet a rule counted may reach software only
/// after the rule's removal is answered. It is the rule's: settled before
/// it came, it would hide a packet that slipped past the rule going in,
/// and then be counted by software as well.
#[test]
fn a_packet_the_rule_counted_that_reaches_software_after_the_removal_is_counted_once() {
    let c = parse("test.json", &OFFLOAD_TCP_AFTER.replace("AFTER", "4")).unwrap();
    let mut e = Engine::from_config(&c, Box::new(Wrapped::new(SimProfile::full()).behind_tap(2))).unwrap();
    let (mut t, mut sent) = (0, [0u64; 2]);
    for (to_server, flags) in [(true, TCP_SYN), (false, TCP_SYN | TCP_ACK), (true, TCP_ACK)] {
        step(&mut e, &mut t, &mut sent, to_server, flags);
    }
    for i in 0..30 {
        step(&mut e, &mut t, &mut sent, i % 2 == 0, TCP_ACK);
    }
    assert_eq!(e.rules_live(), 2);
    step(&mut e, &mut t, &mut sent, true, TCP_FIN | TCP_ACK);
    // The client's ACK: the rule counts it, the capture holds it a while.
    // Of another length than the rest, so that a packet too many and one
    // too few show in the bytes.
    let late = pkt(1, 4000, 80, 6, true, TCP_ACK, 300);
    assert!(!e.offer_to_nic(&late, t));
    sent[1] += 1;
    // The server's FIN: closed both ways; the rules go at the poll.
    step(&mut e, &mut t, &mut sent, false, TCP_FIN | TCP_ACK);
    assert_eq!(e.rules_live(), 0);
    let id = only_flow(&e);
    let stage = |e: &Engine| e.flow(id).unwrap().stage;
    // An ACK from the server, from after the removal: its side is done,
    // the client's may still have packets in the ring.
    let removed_at = t;
    step(&mut e, &mut t, &mut sent, false, TCP_ACK);
    assert_eq!(stage(&e), Stage::Removing, "one direction from after the removal: the answer is held");
    e.process(&late, removed_at - 5 * MS);
    assert_eq!(stage(&e), Stage::Removing, "a packet from before the removal: still held");
    // The client's last ACK, from after the removal, well before the
    // hold's 50 ms are up: both directions have come past it.
    step(&mut e, &mut t, &mut sent, true, TCP_ACK);
    assert_eq!(stage(&e), Stage::Software, "both directions from after the removal: settled");
    let r = closed_record(&mut e, t, sent);
    assert_eq!(r.orig.bytes, (sent[1] - 1) * 100 + 300, "{r:?}");
    assert_eq!(r.orig.hw_packets + r.orig.sw_packets, r.orig.packets);
}

/// A run that takes a flow over reads its rules' counters at start, some
/// time before software takes its first packet, so the rules count
/// packets software never sees. When the rules later go and a packet slips
/// past their removal (software takes it, no rule counts it), it is
/// software's to count: the rules' head start must not hide it.
#[test]
fn a_packet_past_a_taken_over_rules_removal_is_counted_whatever_they_counted_before_software_began() {
    let journal = journal_path("headstart");
    let backend = Wrapped::new(SimProfile::full()).behind_tap(0);
    let next = backend.successor();
    let config = OFFLOAD_TCP_AFTER
        .replace("AFTER", "4")
        .replace(r#""offload": {"poll"#, r#""backend": {"kind": "tc", "journal": "/unused"}, "offload": {"poll"#);
    let c = parse("test.json", &config).unwrap();
    let mut e = Engine::from_config(&c, Box::new(backend)).unwrap();
    e.set_journal(&journal).unwrap();
    let (mut t, mut sent) = (0, [0u64; 2]);
    for (to_server, flags) in [(true, TCP_SYN), (false, TCP_SYN | TCP_ACK), (true, TCP_ACK)] {
        assert!(!step(&mut e, &mut t, &mut sent, to_server, flags), "software taps every packet");
    }
    for i in 0..40 {
        step(&mut e, &mut t, &mut sent, i % 2 == 0, TCP_ACK);
    }
    assert_eq!(e.rules_live(), 2);
    drop(e);

    let mut e = restart(&c, Box::new(next), &journal, t);
    // The head start: the rules count, software is not reading yet.
    for i in 0..4 {
        let to_server = i % 2 == 0;
        assert!(!e.offer_to_nic(&pkt(1, 4000, 80, 6, to_server, TCP_ACK, 100), t));
        sent[to_server as usize] += 1;
        t += MS;
    }
    for i in 0..30 {
        step(&mut e, &mut t, &mut sent, i % 2 == 0, TCP_ACK);
    }
    step(&mut e, &mut t, &mut sent, true, TCP_FIN | TCP_ACK);
    // The server's FIN closes it: its rules' removal is asked for, and the
    // client's last ACK comes after the rules are gone from the NIC but
    // before the answer says so.
    feed(&mut e, &pkt(1, 4000, 80, 6, false, TCP_FIN | TCP_ACK, 100), t);
    e.process(&pkt(1, 4000, 80, 6, true, TCP_ACK, 100), t + MS);
    sent[0] += 1;
    sent[1] += 1;
    e.poll(t + 2 * MS);
    assert_eq!(e.rules_live(), 0, "torn down");
    closed_record(&mut e, t, sent);
}

/// A flow of the earlier run that this run can't put back under its id
/// (here: its slot is past a smaller `table.max_flows`; the same path is
/// taken for a worker the new run doesn't have, or a key already in use)
/// has its rules removed at start. What the journal and its rules knew of
/// it must still end in its one record: it may not vanish.
#[test]
fn a_flow_the_next_run_cannot_take_over_still_ends_in_one_record() {
    let journal = journal_path("refused");
    let nic = SimNic::new(SimProfile::full());
    let successor = nic.successor();
    let big = OFFLOAD_UDP_AFTER_3_JOURNALED.replacen('{', r#"{"table": {"max_flows": 64},"#, 1);
    let mut e = first_run(&big, nic, &journal);
    let t = four_udp_flows(&mut e);
    assert_eq!(e.flows().count(), 4);
    assert!(e.flows().all(|(_, f)| f.stage() == Stage::Offloaded));
    // Killed, then started with a smaller table.
    drop(e);
    let small = big.replace(r#""max_flows": 64"#, r#""max_flows": 2"#);
    let mut e = next_run(&small, successor, &journal, t);
    e.shutdown(false);
    let recs = e.drain_records();
    let total: u64 = recs.iter().map(|r| r.packets()).sum();
    assert_eq!((recs.len(), total), (4, 80), "one record per flow, every packet once: {recs:#?}");
}

/// Rules of an earlier run that this run can't take over are removed at
/// start; where that removal fails (netlink refused it), they would go on
/// acting on traffic no flow counts, with no one to remove them: the
/// offload thread asks again each poll until they go.
#[test]
fn rules_that_could_not_be_removed_at_start_are_removed_later() {
    let journal = journal_path("leftover");
    let backend = Wrapped::new(SimProfile::full());
    let next = backend.successor();
    let refuse = next.fail_removals.clone();
    let big = OFFLOAD_UDP_AFTER_3_JOURNALED.replacen('{', r#"{"table": {"max_flows": 64},"#, 1);
    let c = parse("test.json", &big).unwrap();
    let mut e = Engine::from_config(&c, Box::new(backend)).unwrap();
    e.set_journal(&journal).unwrap();
    let t = four_udp_flows(&mut e);
    assert_eq!(e.rules_live(), 8);
    drop(e);
    // Killed, then started with a table too small to take two of them over,
    // while the NIC refuses removals.
    refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    let small = parse("test.json", &big.replace(r#""max_flows": 64"#, r#""max_flows": 2"#)).unwrap();
    let mut e = restart(&small, Box::new(next), &journal, t);
    let left = e.coordinator().leftover_rules();
    assert!(left >= 2, "the rules of the flows not taken over are still to go: {left}");
    let in_nic = |e: &mut Engine| {
        let mut all = vec![];
        e.backend_mut().read_counters(&mut all).unwrap();
        all.len()
    };
    let before = in_nic(&mut e);
    e.poll(t + 200 * MS);
    assert_eq!(e.coordinator().leftover_rules(), left, "refused again: kept");
    refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    e.poll(t + 400 * MS);
    assert_eq!(e.coordinator().leftover_rules(), 0);
    assert_eq!(in_nic(&mut e), before - left, "removed from the NIC");
}

/// A stop with `keep_rules` writes no record of the flows it leaves in
/// place: the next run is to write them. When that run finds the journal's
/// flows but not their rules (the host rebooted, or someone ran `tc qdisc
/// del`, between the runs), the flows must still end in one record each,
/// with what the journal knew: here they vanish without a word.
#[test]
fn flows_left_in_place_whose_rules_are_gone_by_the_next_run_still_end_in_a_record() {
    let journal = journal_path("rebooted");
    let mut e = first_run(OFFLOAD_UDP_AFTER_3_JOURNALED, SimNic::new(SimProfile::full()), &journal);
    let (mut t, mut sent) = (0, [0u64; 2]);
    udp_traffic(&mut e, &mut t, &mut sent, 40);
    e.shutdown(true);
    assert!(e.drain_records().is_empty(), "left to the next run");
    drop(e);
    // A NIC without the earlier run's rules.
    let mut e = next_run(OFFLOAD_UDP_AFTER_3_JOURNALED, SimNic::new(SimProfile::full()), &journal, t);
    e.shutdown(false);
    let recs = e.drain_records();
    assert_eq!(recs.len(), 1, "the flow left in place ends in one record");
}

/// The journal keeps what a flow's interim records carried, so the run
/// that takes it over leaves that out of its final record. A next run
/// without an active timeout (it was turned off in the new configuration)
/// must still leave it out, or the collector counts it twice.
#[test]
fn what_interim_records_carried_is_not_carried_again_by_a_run_without_active_timeout() {
    let journal = journal_path("interim");
    let nic = SimNic::new(SimProfile::full());
    let successor = nic.successor();
    let with_active = OFFLOAD_UDP_AFTER_3_JOURNALED.replacen('{', r#"{"export": {"active_timeout_s": 1},"#, 1);
    let mut e = first_run(&with_active, nic, &journal);
    let (mut t, mut sent) = (0, [0u64; 2]);
    udp_traffic(&mut e, &mut t, &mut sent, 150);
    let interim = e.drain_records();
    assert!(!interim.is_empty() && interim.iter().all(|r| r.kind == flowtable_offload::RecordKind::Interim));
    drop(e);
    let mut e = next_run(OFFLOAD_UDP_AFTER_3_JOURNALED, successor, &journal, t);
    e.shutdown(false);
    let last = e.drain_records();
    assert_eq!(last.len(), 1);
    let total: u64 = interim.iter().chain(&last).map(|r| r.packets()).sum();
    assert_eq!(total, 150, "interim records and the final one add up to the flow, once");
}

/// An operator's `flowtable offload ID --action drop` (the control API's
/// offload) is a decision of its own, as an application's verdict is: a
/// crash and restart with the same configuration must not take the drop
/// away and let the flow's traffic through.
#[test]
fn an_offload_the_operator_asked_for_survives_a_restart_with_the_same_configuration() {
    let journal = journal_path("manual");
    let nic = SimNic::new(SimProfile::full());
    let successor = nic.successor();
    // Nothing offloads by configuration.
    let config = r#"{"offload": {"poll_interval_ms": 100}, "backend": {"kind": "tc", "journal": "/unused"}}"#;
    let mut e = first_run(config, nic, &journal);
    let (mut t, mut sent) = (0, [0u64; 2]);
    udp_traffic(&mut e, &mut t, &mut sent, 5);
    let id = only_flow(&e);
    e.request_offload(id, Action::Drop).unwrap();
    udp_traffic(&mut e, &mut t, &mut sent, 20);
    assert_eq!(e.flow(id).unwrap().stage, Stage::Offloaded);
    drop(e);
    let mut e = next_run(config, successor, &journal, t);
    e.poll(t + MS);
    assert_eq!(e.rules_live(), 2, "the operator's drop rules stay");
    assert_eq!(e.flow(id).unwrap().stage, Stage::Offloaded);
}

/// Offloads more UDP flows than the queue to the offload thread holds,
/// 4 packets each; how many, and the time after.
fn offload_more_flows_than_the_queue(e: &mut Engine) -> (u16, u64) {
    let flows = flowtable_offload::link::QUEUE_DEPTH as u16 + 50;
    let mut t = udp_rounds(e, flows, 4, 1000);
    for _ in 0..20 {
        t += 10 * MS;
        e.poll(t);
    }
    assert!(e.flows().all(|(_, f)| f.stage() == Stage::Offloaded));
    (flows, t)
}

/// A stop with `keep_rules` that can't hand a flow's parting line to the
/// journal (here the synchronous engine's queue is full; in the daemon, an
/// offload thread that is gone) writes that flow's record itself, rules
/// left in place. The journal still has the flow from when its rules went
/// in, so the next run takes it over and writes a second record, counting
/// it all again.
#[test]
fn a_flow_recorded_at_a_keep_rules_stop_is_not_taken_over_and_recorded_again() {
    let journal = journal_path("twice");
    let nic = SimNic::new(SimProfile::full());
    let successor = nic.successor();
    let mut e = first_run(OFFLOAD_UDP_AFTER_3_JOURNALED, nic, &journal);
    let (flows, t) = offload_more_flows_than_the_queue(&mut e);
    e.shutdown(true);
    let mut recs = e.drain_records();
    let recorded_at_stop = recs.len();
    drop(e);
    let mut e = next_run(OFFLOAD_UDP_AFTER_3_JOURNALED, successor, &journal, t);
    e.shutdown(false);
    recs.extend(e.drain_records());
    let mut ids: Vec<_> = recs.iter().map(|r| r.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        (recs.len(), ids.len()),
        (flows as usize, flows as usize),
        "one record per flow ({recorded_at_stop} written at the stop)"
    );
}

/// A stop that removes its rules, with more flows than the queue to the
/// offload thread holds: every flow's gone line reaches the journal (in
/// the daemon, the last ones can still wait in the shard's outbox when the
/// stop ends, and go with its parting lines). One lost, the next run would
/// find the flow's journal line with no rules and record it a second time.
#[test]
fn a_plain_stop_with_more_flows_than_the_queue_leaves_none_for_the_next_run_to_record() {
    let journal = journal_path("plain-stop");
    let nic = SimNic::new(SimProfile::full());
    let successor = nic.successor();
    let mut e = first_run(OFFLOAD_UDP_AFTER_3_JOURNALED, nic, &journal);
    let (flows, t) = offload_more_flows_than_the_queue(&mut e);
    e.shutdown(false);
    let first = e.drain_records().len();
    assert_eq!(first, flows as usize, "every flow recorded at the stop");
    drop(e);
    let mut e = next_run(OFFLOAD_UDP_AFTER_3_JOURNALED, successor, &journal, t);
    e.shutdown(false);
    let again = e.drain_records();
    assert!(again.is_empty(), "{} flows recorded a second time by the next run", again.len());
}

/// A stop that removes its rules, but the backend refuses the removals:
/// the flow's record is written at the stop and its rules stay in the NIC.
/// The next run must remove them, not take the flow over (and record it
/// again, every packet counted twice).
#[test]
fn rules_a_stop_failed_to_remove_are_removed_by_the_next_run_not_taken_over() {
    let journal = journal_path("failed-removal");
    let w = Wrapped::new(SimProfile::full());
    let mut successor = w.nic.successor();
    let fail = w.fail_removals.clone();
    let c = parse("test.json", OFFLOAD_UDP_AFTER_3_JOURNALED).unwrap();
    let mut e = Engine::from_config(&c, Box::new(w)).unwrap();
    e.set_journal(&journal).unwrap();
    let (mut t, mut sent) = (0, [0u64; 2]);
    udp_traffic(&mut e, &mut t, &mut sent, 20);
    assert_eq!(e.flow(only_flow(&e)).unwrap().stage, Stage::Offloaded);
    fail.store(true, std::sync::atomic::Ordering::Relaxed);
    e.shutdown(false);
    let recs = e.drain_records();
    assert_eq!(recs.len(), 1, "recorded at the stop");
    drop(e);
    let mut left = Vec::new();
    successor.read_counters(&mut left).unwrap();
    assert_eq!(left.len(), 2, "the rules the stop failed to remove are still in");
    let mut e = next_run(OFFLOAD_UDP_AFTER_3_JOURNALED, successor.successor(), &journal, t);
    assert_eq!(e.rules_live(), 0, "not taken over");
    e.shutdown(false);
    assert!(e.drain_records().is_empty(), "the flow's one record was the first run's");
    let mut left = Vec::new();
    successor.read_counters(&mut left).unwrap();
    assert!(left.is_empty(), "the next run removed them: {left:?}");
}
