//! The count-once rule across threads: workers, the offload thread and a
//! backend that takes random time over every call, with many flows starting
//! and ending, queues so small they fill, capacity and rate limits, flows
//! taken back to software, offloaded by hand and evicted while their rules
//! come and go, and a shutdown in the middle of it all. Every packet sent
//! must be in exactly one record, per direction, to the byte.

use flowtable::runtime::{Clock, FromWorker, Runtime, RuntimeConfig};
use flowtable_hw::{
    Backend, BackendError, Capabilities, Cookie, InlineNic, InstallOutcome, RuleCounters, RuleSpec, SimNic, SimPath,
    SimProfile,
};
use flowtable_offload::{Classifier, FlowRecord};
use flowtable_sw::{FlowId, FlowKey, PacketInfo, Stage};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The sim NIC, each call taking a random 0 to `max_delay`; `tapped`
/// puts software in front of its rules (AF_PACKET before tc): software
/// sees every packet, and a rule counts it too once in effect.
struct Jittery {
    nic: SimNic,
    caps: Capabilities,
    rng: Mutex<rand_xoshiro::Xoshiro256PlusPlus>,
    max_delay: Duration,
    tapped: bool,
}

impl Jittery {
    fn new(profile: SimProfile, seed: u64, max_delay: Duration, tapped: bool) -> Jittery {
        let nic = SimNic::new(profile);
        let mut caps = nic.capabilities().clone();
        caps.software_sees_offloaded = tapped;
        Jittery { nic, caps, rng: Mutex::new(SeedableRng::seed_from_u64(seed)), max_delay, tapped }
    }
    fn pause(&self) {
        let ns = self.rng.lock().unwrap().gen_range(0..=self.max_delay.as_nanos() as u64);
        std::thread::sleep(Duration::from_nanos(ns));
    }
}

impl Backend for Jittery {
    fn name(&self) -> &str {
        "jittery-sim"
    }
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }
    fn install(&mut self, rules: &[RuleSpec]) -> Vec<InstallOutcome> {
        self.pause();
        self.nic.install(rules)
    }
    fn remove(&mut self, cookies: &[Cookie]) -> Vec<Result<Option<RuleCounters>, BackendError>> {
        self.pause();
        self.nic.remove(cookies)
    }
    fn read_counters(&mut self, out: &mut Vec<(Cookie, RuleCounters)>) -> Result<(), BackendError> {
        self.pause();
        self.nic.read_counters(out)
    }
    fn set_clock(&mut self, now_ns: u64) {
        self.nic.set_clock(now_ns);
    }
    fn inline_nic(&self) -> Option<Box<dyn InlineNic>> {
        Some(Box::new(TapPath { path: self.nic.path(), tapped: self.tapped }))
    }
}

struct TapPath {
    path: SimPath,
    tapped: bool,
}

impl InlineNic for TapPath {
    fn offer(&mut self, pkt: &PacketInfo, now_ns: u64) -> bool {
        let taken = self.path.offer(pkt, now_ns);
        // Behind a tap, software sees the packet whether or not a rule took it.
        taken && !self.tapped
    }
}

const CONFIG: &str = r#"{
  "table": {"max_flows": 4000},
  "classifier": {"rules": [
    {"name": "some-udp", "match": {"proto": "udp", "server_ports": ["1000-1199"]},
     "trigger": {"after_packets": 3}, "result": {"offload": {"type": "drop"}}},
    {"name": "tcp", "match": {"proto": "tcp"}, "trigger": {"after_packets": 2},
     "result": {"offload": {"type": "pass"}}}
  ]},
  "timeouts": {"udp_s": 0.15, "tcp_handshake_s": 0.3, "tcp_established_s": 0.3, "tcp_closing_s": 0.1,
               "tcp_closed_s": 0.05},
  "offload": {"poll_interval_ms": 7, "batch_size": 16, "max_queued": 64}
}"#;

/// Packets per ordered endpoint pair (src, sport, dst, dport, proto).
type Dirs = HashMap<(std::net::IpAddr, u16, std::net::IpAddr, u16, u8), (u64, u64)>;

fn run(workers: usize, tapped: bool, seed: u64) {
    let config = flowtable_config::parse("stress", CONFIG).unwrap();
    let mut profile = SimProfile::full();
    profile.capabilities.max_rules = 120;
    profile.capabilities.max_insert_rate = 3000;
    let backend = Jittery::new(profile, seed, Duration::from_millis(4), tapped);
    let mut rt_config = RuntimeConfig::from_config(&config, workers, false);
    // So small that they fill: requests and answers must wait, not vanish.
    rt_config.queue_depth = 3;
    let classifier = Classifier::new(&config.classifier).unwrap();
    let clock = Clock::new();
    let mut rt = Runtime::start(rt_config, classifier, Box::new(backend), clock.clone()).unwrap();
    let mut dispatch = rt.dispatcher();
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut sent: Dirs = HashMap::new();
    let (mut total, mut by_nic) = (0u64, 0u64);
    let conversations = 500u16;
    let started = Instant::now();
    let mut controls = 0;
    let mut round = 0u64;
    while started.elapsed() < Duration::from_millis(1500) {
        round += 1;
        for _ in 0..200 {
            let c = rng.gen_range(0..conversations);
            let client = Ipv4Addr::new(10, 1, (c >> 8) as u8, c as u8);
            let server = Ipv4Addr::new(192, 0, 2, 1 + (c % 7) as u8);
            let tcp = c % 3 == 0;
            let (sport, dport, proto) = (20_000 + c, 1000 + (c % 400), if tcp { 6 } else { 17 });
            let to_server = rng.gen_bool(0.6);
            let (src, dst, sp, dp) =
                if to_server { (client, server, sport, dport) } else { (server, client, dport, sport) };
            let (key, dir) = FlowKey::from_v4(src, dst, sp, dp, proto);
            // Some TCP conversations close with FIN both ways, some reset.
            let flags = if tcp {
                match rng.gen_range(0..40) {
                    0 => 0x11,
                    1 => 0x04,
                    _ => 0x10,
                }
            } else {
                0
            };
            let len = rng.gen_range(60..1500);
            let pkt = PacketInfo::whole(key, dir, 0, len, flags);
            let now = clock.now();
            total += 1;
            let e = sent.entry((src.into(), sp, dst.into(), dp, proto)).or_default();
            e.0 += 1;
            e.1 += len as u64;
            if dispatch.offer(&pkt, now) {
                by_nic += 1;
            } else {
                dispatch.push(pkt, now, None);
            }
        }
        dispatch.tick(clock.now());
        std::thread::sleep(Duration::from_micros(300));
        if round % 40 == 0 {
            // The operator at work: some offloaded flows taken back, some
            // flows offloaded by hand, some evicted, wherever their rules are.
            let picked: Vec<Vec<(FlowId, Stage)>> =
                rt.ask_all(|s| s.flows().map(|(id, f)| (id, f.stage())).take(6).collect());
            for (id, stage) in picked.into_iter().flatten() {
                let shard = id.shard() as usize;
                controls += 1;
                match (stage, controls % 3) {
                    (Stage::Offloaded | Stage::Installing, 0) => {
                        let _ = rt.ask_one(shard, move |s| s.request_unoffload(id).map(|_| ()));
                    }
                    (Stage::Software | Stage::Tracking | Stage::Refused, 1) => {
                        let _ = rt.ask_one(shard, move |s| s.request_offload(id, flowtable_hw::Action::Drop));
                    }
                    _ => {
                        let _ = rt.ask_one(shard, move |s| s.evict(id).map(|_| ()));
                    }
                }
            }
        }
    }
    // Shutdown in the middle: rules going in and out, counters unread.
    drop(dispatch);
    let output = rt.output.clone();
    let finished = rt.shutdown(false).unwrap();
    let mut records: Vec<FlowRecord> = Vec::new();
    for out in output.try_iter() {
        if let FromWorker::Records(r) = out {
            records.extend(r);
        }
    }
    let mut got: Dirs = HashMap::new();
    for r in &records {
        let o = got.entry((r.src, r.sport, r.dst, r.dport, r.proto)).or_default();
        o.0 += r.orig.packets;
        o.1 += r.orig.bytes;
        let b = got.entry((r.dst, r.dport, r.src, r.sport, r.proto)).or_default();
        b.0 += r.reply.packets;
        b.1 += r.reply.bytes;
        assert_eq!(r.orig.sw_packets + r.orig.hw_packets, r.orig.packets, "{r:?}");
    }
    got.retain(|_, v| v.0 > 0);
    let st = &finished.stats;
    let what = format!(
        "workers {workers}, tapped {tapped}: {total} packets ({by_nic} taken by rules), {} records, {} flows \
         offloaded, {} refused, {} slipped, {} installs retried, {controls} operator actions",
        records.len(),
        st.flows_offloaded,
        st.flows_refused,
        st.slipped_packets,
        st.refusals.values().sum::<u64>()
    );
    eprintln!("{what}");
    assert_eq!(finished.coordinator.rules_live(), 0, "{what}: every rule removed");
    assert_eq!(records.len() as u64, st.flows_created, "{what}: one record per flow");
    let mut wrong: Vec<_> = sent.iter().filter(|(k, v)| got.get(*k) != Some(v)).collect();
    wrong.sort();
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} directions counted wrong, e.g. {:?} sent, {:?} recorded",
        wrong.len(),
        sent.len(),
        wrong[0],
        got.get(wrong[0].0)
    );
    assert_eq!(got.len(), sent.len(), "{what}: no direction recorded that was never sent");
    assert!(st.flows_offloaded > 50, "{what}: offload took part");
    assert!(st.flows_ended > st.flows_offloaded, "{what}: flows ended and started again");
}

#[test]
fn every_packet_counted_once_across_workers_and_a_slow_random_backend() {
    for (workers, tapped, seed) in [(1, false, 1), (3, false, 2), (2, true, 3), (4, true, 4)] {
        run(workers, tapped, seed);
    }
}

/// A worker whose live source panics while it opens must not hang the
/// start: every worker opens in turn, and waits for all to have opened.
#[test]
fn a_worker_whose_source_panics_while_opening_fails_the_start_without_a_hang() {
    let config = flowtable_config::parse("stress", CONFIG).unwrap();
    let mut rt_config = RuntimeConfig::from_config(&config, 3, false);
    rt_config.live = Some(std::sync::Arc::new(|worker| match worker {
        1 => panic!("a source that panics while opening (test)"),
        _ => Err(format!("worker {worker}: no such device (test)")),
    }));
    let classifier = Classifier::new(&config.classifier).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let started = Runtime::start(rt_config, classifier, Box::new(SimNic::new(SimProfile::full())), Clock::new());
        let _ = tx.send(started.err());
    });
    let error = rx.recv_timeout(Duration::from_secs(20)).expect("the start returns, with an error");
    let error = error.expect("the start fails");
    assert!(error.contains("no such device") || error.contains("panicked"), "{error}");
}

/// Replay's lockstep with queues so small they fill: the packet reader
/// runs the coordinator's epochs itself, so while a worker waits for room
/// in its queue of requests, the reader, waiting for room in that worker's
/// queue of packets, must take those requests, or neither goes on. One
/// epoch asks for thousands of rules and the next brings more packets than
/// the worker's queue holds; every packet must still be counted once.
#[test]
fn lockstep_with_full_queues_both_ways_goes_on_and_counts_every_packet_once() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        lockstep_full_queues();
        let _ = done_tx.send(());
    });
    match done_rx.recv_timeout(Duration::from_secs(120)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("the lockstep replay hung"),
        Err(e) => panic!("the lockstep replay failed: {e}"),
    }
}

fn lockstep_full_queues() {
    let config = flowtable_config::parse(
        "lockstep",
        r#"{"table": {"max_flows": 100000},
            "classifier": {"rules": [{"name": "all", "match": {}, "trigger": {"after_packets": 2},
                                      "result": {"offload": {"type": "pass"}}}]}}"#,
    )
    .unwrap();
    let mut rt_config = RuntimeConfig::from_config(&config, 1, true);
    rt_config.queue_depth = 2;
    let classifier = Classifier::new(&config.classifier).unwrap();
    let clock = Clock::frozen();
    let backend = Box::new(SimNic::new(SimProfile::full()));
    let mut rt = Runtime::start(rt_config, classifier, backend, clock.clone()).unwrap();
    let mut dispatch = rt.dispatcher();
    let mut sent: Dirs = HashMap::new();
    let (mut total, mut by_nic) = (0u64, 0u64);
    let mut now = 1_000_000_000u64;
    let mut send = |dispatch: &mut flowtable::runtime::Dispatcher, c: u32, now: u64| {
        let client = Ipv4Addr::from(0x0a00_0000 + c);
        let (key, dir) = FlowKey::from_v4(client, Ipv4Addr::new(192, 0, 2, 1), 40_000, 443, 17);
        let pkt = PacketInfo::whole(key, dir, 0, 100, 0);
        total += 1;
        let e = sent.entry((client.into(), 40_000, Ipv4Addr::new(192, 0, 2, 1).into(), 443, 17)).or_default();
        e.0 += 1;
        e.1 += 100;
        if dispatch.offer(&pkt, now) {
            by_nic += 1;
        } else {
            dispatch.push(pkt, now, None);
        }
    };
    // Epoch 0: 4000 flows classified, each asking for its rules.
    for c in 0..4000 {
        send(&mut dispatch, c, now);
        send(&mut dispatch, c, now);
    }
    dispatch.tick(now);
    // Epoch 1: within one tick, far more batches than a worker's queue
    // holds, while the worker's requests of epoch 0 wait for room.
    now += 1;
    for i in 0..40_000u32 {
        send(&mut dispatch, 10_000 + i % 5000, now);
    }
    dispatch.tick(now + flowtable::runtime::EPOCH_NS);
    // Epochs 2 and on: the rules of epoch 0 are in and take their packets.
    for epoch in 2..6u64 {
        let at = now + epoch * flowtable::runtime::EPOCH_NS;
        for c in 0..4000 {
            send(&mut dispatch, c, at);
        }
        dispatch.tick(at + flowtable::runtime::EPOCH_NS / 2);
    }
    let end = now + 7 * flowtable::runtime::EPOCH_NS;
    dispatch.go_free(end);
    drop(dispatch);
    let output = rt.output.clone();
    let finished = rt.shutdown(false).unwrap();
    let mut got: Dirs = HashMap::new();
    let mut records = 0u64;
    for out in output.try_iter() {
        if let FromWorker::Records(rs) = out {
            for r in rs {
                records += 1;
                let o = got.entry((r.src, r.sport, r.dst, r.dport, r.proto)).or_default();
                o.0 += r.orig.packets;
                o.1 += r.orig.bytes;
            }
        }
    }
    let st = &finished.stats;
    let what =
        format!("{total} packets ({by_nic} taken by rules), {records} records, {} offloaded", st.flows_offloaded);
    assert_eq!(records, st.flows_created, "{what}: one record per flow");
    assert_eq!(got, sent, "{what}: every packet in exactly one record");
    assert!(st.flows_offloaded >= 4000, "{what}: the first epoch's flows were offloaded");
    assert!(by_nic > 0, "{what}: their rules took packets of the later epochs");
    assert_eq!(finished.coordinator.rules_live(), 0, "{what}: every rule removed");
}
