//! Every capture replayed through the sim NIC with offload on: no panic,
//! and every packet read is either skipped with a reason, untracked with a
//! reason, or in exactly one flow record, whether software or a NIC rule
//! counted it.

mod common;

use common::captures;
use flowtable::source::pcap::PcapFileSource;
use flowtable_offload::FlowRecord;
use std::path::Path;

const OFFLOAD_AFTER_TWO: &str = r#"{
  "classifier": {"rules": [
    {"name": "drop-telnet", "match": {"proto": "tcp", "server_ports": [23]}, "result": {"offload": {"type": "drop"}}},
    {"name": "rest", "match": {}, "trigger": {"after_packets": 2}, "result": {"offload": {"type": "pass"}}}
  ]},
  "offload": {"poll_interval_ms": 50},
  "timeouts": {"udp_s": 5, "tcp_established_s": 10, "other_s": 5, "icmp_s": 5}
}"#;

fn replay_one(
    path: &Path,
    config: &str,
) -> (flowtable::replay::ReplaySummary, flowtable_offload::EngineStats, Vec<FlowRecord>) {
    replay_with(path, config, 1)
}

fn replay_with(
    path: &Path,
    config: &str,
    workers: usize,
) -> (flowtable::replay::ReplaySummary, flowtable_offload::EngineStats, Vec<FlowRecord>) {
    let c = flowtable_config::parse("test", config).unwrap();
    let mut source = PcapFileSource::open(path, 0).unwrap_or_else(|e| panic!("{e}"));
    let mut records = Vec::new();
    let backend = flowtable::backend::build(&c).unwrap();
    let r = flowtable::replay::replay(&mut source, &c, workers, backend, |r| records.push(r.clone())).unwrap();
    // A capture cut or corrupt part-way: the error names the file and the
    // offset, and what came before is still accounted.
    if let Some(e) = &r.source_error {
        let msg = e.to_string();
        assert!(msg.contains(&*path.to_string_lossy()) && msg.contains("offset"), "{msg}");
    }
    assert_eq!(r.rules_left, 0, "{}: every rule removed at the end", path.display());
    (r.summary, r.stats, records)
}

fn facts(records: &[FlowRecord]) -> Vec<flowtable::replay::RecordFacts> {
    let mut v: Vec<_> = records.iter().map(flowtable::replay::record_facts).collect();
    v.sort();
    v
}

#[test]
fn every_capture_gives_the_same_flows_with_one_two_or_four_workers() {
    let software = r#"{"classifier": {"default": "software"}}"#;
    let (mut flows, mut offloaded) = (0usize, 0u64);
    for path in &captures() {
        for config in [software, OFFLOAD_AFTER_TWO] {
            let (_, stats, one) = replay_with(path, config, 1);
            let one = facts(&one);
            for workers in [2, 4] {
                let (_, _, many) = replay_with(path, config, workers);
                assert!(
                    facts(&many) == one,
                    "{}: {workers} workers give other flows than one ({} against {} records)",
                    path.display(),
                    many.len(),
                    one.len()
                );
            }
            flows += one.len();
            offloaded += stats.flows_offloaded;
        }
    }
    assert!(offloaded > 1000, "offload took part: {offloaded} flows offloaded");
    eprintln!("{flows} flows the same with 1, 2 and 4 workers, {offloaded} of them offloaded");
}

#[test]
fn every_capture_replays_and_every_packet_is_accounted_once() {
    let files = captures();
    let (mut total, mut in_hw, mut offloaded) = (0u64, 0u64, 0u64);
    for path in &files {
        let (s, stats, records) = replay_one(path, OFFLOAD_AFTER_TWO);
        let in_records: u64 = records.iter().map(|r| r.packets()).sum();
        let hw: u64 = records.iter().map(|r| r.orig.hw_packets + r.reply.hw_packets).sum();
        assert_eq!(
            in_records,
            s.packets - s.skipped.total() - stats.orphan_fragments - stats.untracked_table_full,
            "{}: packets in records vs packets read less skipped and untracked",
            path.display()
        );
        assert_eq!(hw, s.nic_packets, "{}: hardware counts vs packets the NIC took", path.display());
        assert_eq!(records.len() as u64, stats.flows_created, "{}: one record per flow", path.display());
        // Every rule removed was one the NIC held: no removal of a rule it
        // never had, or had lost (the sim once reported half of them so).
        assert_eq!(
            (stats.remove_errors, stats.unknown_rules),
            (0, 0),
            "{}: removals and counters all matched rules the NIC held",
            path.display()
        );
        total += s.packets;
        in_hw += hw;
        offloaded += stats.flows_offloaded;
    }
    assert!(in_hw > total / 4, "offload took a real share: {in_hw} of {total}");
    assert!(offloaded > 1000);
    eprintln!("{} captures, {total} packets, {in_hw} counted by NIC rules, {offloaded} flows offloaded", files.len());
}

#[test]
fn refusing_nic_leaves_every_flow_in_software_with_the_same_counts() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/pcaps/bittorrent.pcap");
    let (_, _, full) = replay_one(&path, OFFLOAD_AFTER_TWO);
    let refuse = OFFLOAD_AFTER_TWO.replace(
        "\"offload\": {\"poll_interval_ms\": 50}",
        "\"offload\": {\"poll_interval_ms\": 50}, \"backend\": {\"kind\": \"sim\", \"profile\": \"refuse-all\"}",
    );
    let (s, stats, refused) = replay_one(&path, &refuse);
    assert_eq!(s.nic_packets, 0);
    assert!(stats.flows_refused > 0);
    let key = |r: &FlowRecord| (r.src, r.sport, r.dst, r.dport, r.proto);
    let mut a: Vec<_> = full.iter().map(|r| (key(r), r.packets(), r.bytes())).collect();
    let mut b: Vec<_> = refused.iter().map(|r| (key(r), r.packets(), r.bytes())).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "offloaded or not, each flow carries the same packets and bytes");
    assert!(refused.iter().all(|r| r.offload.is_none()));
    assert!(refused.iter().any(|r| r.refused.is_some()));
}

/// Flows that came through PPPoE (discord_mid_flow.pcap: every packet,
/// behind two VLAN tags), Cisco HDLC framing (BGP_Cisco_hdlc_slarp.pcap)
/// or FabricPath (ajp.pcap: 12 of 38 packets) can't be matched
/// by the sim NIC any more than by the real backends: they stay in
/// software, refused as unsupported matches naming the encapsulation, and
/// the plain flows beside them are still offloaded.
#[test]
fn encapsulated_flows_stay_in_software_refused_by_name() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/pcaps");
    for (name, encap, all_encapsulated) in [
        ("discord_mid_flow.pcap", "pppoe", true),
        ("BGP_Cisco_hdlc_slarp.pcap", "cisco-hdlc", true),
        ("ajp.pcap", "fabricpath", false),
    ] {
        let (s, stats, records) = replay_one(&dir.join(name), OFFLOAD_AFTER_TWO);
        assert!(!records.is_empty(), "{name}");
        let refused: Vec<&FlowRecord> = records.iter().filter(|r| r.refused.is_some()).collect();
        assert!(!refused.is_empty(), "{name}: no flow refused");
        for r in &refused {
            let why = r.refused.as_deref().unwrap();
            assert!(why.starts_with("unsupported-match") && why.contains(encap), "{name}: {why}");
            assert!(r.offload.is_none(), "{name}");
            assert_eq!(r.orig.hw_packets + r.reply.hw_packets, 0, "{name}");
        }
        if all_encapsulated {
            assert_eq!((s.nic_packets, stats.flows_offloaded), (0, 0), "{name}");
        } else {
            // (Whether their later packets meet the rules depends on how long
            // the capture goes on after the rules are in: this one stops soon.)
            assert!(stats.flows_offloaded > 0, "{name}: the plain flows offload");
        }
    }
}

/// fuzz-2021-06-07-c6c72a0a56.pcap: its one record claims 4 093 509 168
/// bytes on the wire with 48 captured, in a file of 88 bytes. Through the
/// real binary, the packet and its flow count the 48 bytes the capture
/// holds, not 4 GB.
#[test]
fn absurd_original_length_counts_the_captured_length() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/pcaps/fuzz-2021-06-07-c6c72a0a56.pcap");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowtable"))
        .args(["replay", "--json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (summary, records) = lines.split_last().unwrap();
    let summary = &summary["summary"];
    assert_eq!((summary["packets"].as_u64(), summary["bytes"].as_u64()), (Some(1), Some(48)), "{summary}");
    let flow_bytes: u64 =
        records.iter().map(|r| r["orig"]["bytes"].as_u64().unwrap() + r["reply"]["bytes"].as_u64().unwrap()).sum();
    assert_eq!((records.len(), flow_bytes), (1, 48), "{records:?}");

    // The source counts what it clamped.
    use flowtable::source::PacketSource;
    let mut source = PcapFileSource::open(&path, 0).unwrap();
    let first = source.next_packet().unwrap().unwrap();
    assert_eq!((first.data.len(), first.wire_len), (48, 48));
    assert!(source.next_packet().unwrap().is_none());
    assert_eq!(source.clamped_wire_lengths(), 1);
}

/// The active timeout across workers, with offload: interim records come
/// at the same packet times whatever the number of workers, and each
/// flow's records (software and hardware parts alike) add up to what the
/// same replay without the timeout gives in one record.
#[test]
fn interim_records_are_the_same_with_any_number_of_workers_and_add_up() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/pcaps");
    let active = OFFLOAD_AFTER_TWO.replacen('{', r#"{"export": {"active_timeout_s": 2},"#, 1);
    let mut interim = 0;
    for name in ["teams.pcap", "1kxun.pcap", "google_ssl.pcap"] {
        let path = dir.join(name);
        let (_, _, whole) = replay_with(&path, OFFLOAD_AFTER_TWO, 1);
        let (_, _, one) = replay_with(&path, &active, 1);
        for workers in [2, 4] {
            let (_, _, many) = replay_with(&path, &active, workers);
            assert!(facts(&many) == facts(&one), "{name}: {workers} workers give other records than one");
        }
        // Per flow: packets and bytes, each way, split by who counted them.
        type Sums = std::collections::BTreeMap<(std::net::IpAddr, u16, std::net::IpAddr, u16, u8), [u64; 8]>;
        let sums = |records: &[FlowRecord]| {
            let mut m = Sums::new();
            for r in records {
                let e = m.entry((r.src, r.sport, r.dst, r.dport, r.proto)).or_default();
                let d = [&r.orig, &r.reply];
                let v = [
                    d[0].sw_packets,
                    d[0].hw_packets,
                    d[0].sw_bytes,
                    d[0].hw_bytes,
                    d[1].sw_packets,
                    d[1].hw_packets,
                    d[1].sw_bytes,
                    d[1].hw_bytes,
                ];
                for (t, x) in e.iter_mut().zip(v) {
                    *t += x;
                }
            }
            m
        };
        assert_eq!(sums(&one), sums(&whole), "{name}: a flow's records add up to it");
        assert_eq!(one.iter().filter(|r| r.kind == flowtable_offload::RecordKind::Final).count(), whole.len());
        interim += one.len() - whole.len();
    }
    assert!(interim > 10, "long flows gave interim records: {interim}");
}
