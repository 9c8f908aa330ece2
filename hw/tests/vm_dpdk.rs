//! The DPDK rte_flow backend against the tap PMD, inside the test VM: the
//! tap PMD turns rte_flow rules into kernel flower filters on its tap
//! netdevice, so rules are checked both by packets (sent by the kernel out
//! of `dtap0`, received or not by the PMD) and by `tc filter show`.
//!
//! Needs root, the tun/cls_flower/act_gact/sch_* modules and a kernel new
//! enough for the tap PMD's flower use; skips unless FLOWTABLE_VM=1.
//! Everything runs in one test function: the EAL lives once per process.

#![cfg(feature = "dpdk")]

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowtable_hw::dpdk::error::libc_errno;
use flowtable_hw::dpdk::rx::RxQueue;
use flowtable_hw::dpdk::{DpdkBackend, DpdkConfig, DpdkPortConfig, DpdkRuntime, FlowApi, TemplateState};
use flowtable_hw::{Action, Backend, Cookie, InstallOutcome, MatchFields, PlacementPolicy, RefusalKind, RuleSpec};
use flowtable_sw::parse::parse_packet;
use flowtable_sw::{Direction, FlowKey, LinkType};

const IFACE: &str = "dtap0";
const HOST: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PEER_MAC: &str = "02:00:00:00:77:02";

fn in_vm() -> bool {
    if std::env::var("FLOWTABLE_VM").as_deref() != Ok("1") {
        eprintln!("SKIPPED: DPDK tap PMD tests run only in the test VM (FLOWTABLE_VM=1)");
        return false;
    }
    true
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "`{cmd}` failed: {text}");
    text
}

fn config(api: FlowApi) -> DpdkConfig {
    DpdkConfig {
        eal_args: [
            "--no-huge",
            "--no-pci",
            "-m",
            "128",
            "--vdev=net_tap0,iface=dtap0",
            "-l",
            "0",
            "--log-level=pmd.net.tap:info",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ports: vec![DpdkPortConfig { device: "net_tap0".into(), peer: None }],
        rx_descriptors: 256,
        tx_descriptors: 256,
        mbufs: 2047,
        mbuf_cache: 64,
        api,
        ..DpdkConfig::default()
    }
}

/// The flower filters the PMD put on the tap netdevice (one line each).
fn flower_filters() -> Vec<String> {
    let out =
        sh(&format!("tc filter show dev {IFACE} parent 1: ; tc filter show dev {IFACE} ingress 2>/dev/null || true"));
    out.lines().filter(|l| l.contains("flower") && l.starts_with("filter")).map(|l| l.to_string()).collect()
}

fn setup_kernel_side() {
    sh(&format!(
        "ip link set {IFACE} up && ip addr replace {HOST}/24 dev {IFACE} && \
         ip neigh replace {PEER} lladdr {PEER_MAC} dev {IFACE} nud permanent && \
         sysctl -qw net.ipv6.conf.{IFACE}.disable_ipv6=1"
    ));
}

fn udp_key(sport: u16, dport: u16) -> (FlowKey, Direction) {
    FlowKey::from_v4(HOST, PEER, sport, dport, 17)
}

fn rule(flow: u64, key: FlowKey, dir: Direction, action: Action) -> RuleSpec {
    RuleSpec {
        cookie: Cookie::new(7, flow, dir),
        matches: MatchFields { key, dir, port: key.zone },
        action,
        policy: PlacementPolicy::Hardware,
    }
}

/// Sends `n` UDP datagrams from HOST:sport to PEER:dport; they leave the
/// kernel through dtap0 towards the PMD.
fn send_udp(sport: u16, dport: u16, n: usize) {
    let s = UdpSocket::bind(SocketAddrV4::new(HOST, sport)).expect("bind udp");
    for i in 0..n {
        s.send_to(format!("flowtable {i}").as_bytes(), SocketAddrV4::new(PEER, dport)).expect("send udp");
    }
}

/// Polls the PMD for `dur`, returning the IPv4 flows seen (key, dir, mark).
fn receive(rx: &mut RxQueue, dur: Duration) -> Vec<(FlowKey, Direction, Option<u32>, u8)> {
    let mut seen = Vec::new();
    let end = Instant::now() + dur;
    while Instant::now() < end {
        match rx.next_frame() {
            Some(f) => {
                if let Ok(p) = parse_packet(LinkType::Ethernet, f.data, f.wire_len, flowtable_sw::Ingress::port(0)) {
                    seen.push((p.key, p.dir, f.mark, p.tcp_flags));
                }
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    seen
}

fn count(seen: &[(FlowKey, Direction, Option<u32>, u8)], key: &FlowKey) -> usize {
    seen.iter().filter(|s| s.0 == *key).count()
}

#[test]
fn tap_pmd_rules_filters_and_packets() {
    if !in_vm() {
        return;
    }
    // The tap PMD needs /dev/net/tun; a minimal guest may lack the node.
    if !std::path::Path::new("/dev/net/tun").exists() {
        sh("mkdir -p /dev/net && mknod /dev/net/tun c 10 200");
    }

    // 1. The template API is refused by the tap PMD: asking for it alone
    //    fails with the PMD's answer; `auto` falls back to the sync API.
    let err = DpdkRuntime::start(&config(FlowApi::Template)).err().expect("tap has no template API");
    println!("api=template: {err}");
    assert!(err.contains("template flow API was asked for but refused"), "{err}");
    let rt = DpdkRuntime::start(&config(FlowApi::Auto)).expect("start tap port");
    match &rt.ports[0].template {
        TemplateState::Refused(e) => {
            println!("template API refused by {}: {e}", rt.ports[0].driver);
            assert_eq!(e.errno, libc_errno::ENOTSUP, "{e}");
        }
        other => panic!("expected the tap PMD to refuse the template API, got {other:?}"),
    }
    assert_eq!(rt.ports[0].driver, "net_tap");
    setup_kernel_side();
    let mut rx = RxQueue::new(rt.clone(), 0, 0).unwrap();
    receive(&mut rx, Duration::from_millis(300)); // whatever the link-up sent

    let mut be = DpdkBackend::new(Arc::clone(&rt), config(FlowApi::Auto));
    assert!(!be.uses_templates(0));
    for p in be.probe_report() {
        println!(
            "probe port {} {:<22} {:<28} {}",
            p.port,
            p.pattern,
            p.actions,
            match &p.result {
                Ok(()) => "accepted".to_string(),
                Err(e) => format!("refused: {e}"),
            }
        );
    }
    let caps = be.capabilities().clone();
    println!("capabilities: {caps:?}");
    assert!(caps.matches.ipv4 && caps.matches.tcp && caps.matches.udp, "{caps:?}");
    assert!(!caps.counters, "tap refuses COUNT");
    assert!(caps.actions.contains(&flowtable_hw::ActionKind::Drop));
    let count_probe = be
        .probe_report()
        .into_iter()
        .find(|p| p.pattern == "eth/ipv4/tcp" && p.actions == "count/drop")
        .expect("count probed");
    let count_err = count_probe.result.expect_err("tap refuses COUNT");
    assert_eq!(count_err.kind(), RefusalKind::UnsupportedAction, "{count_err}");
    println!("COUNT refused by the PMD: {count_err}");
    assert!(flower_filters().is_empty(), "probing leaves no filters: {:?}", flower_filters());

    // 2. ETH/IPV4/TCP DROP and ETH/IPV4/UDP DROP: installed without COUNT,
    //    visible as flower filters.
    let (tcp_key, tcp_dir) = FlowKey::from_v4(HOST, PEER, 40001, 8080, 6);
    let (drop_key, drop_dir) = udp_key(41000, 9000);
    let (pass_key, _) = udp_key(41001, 9001);
    let out = be.install(&[rule(1, tcp_key, tcp_dir, Action::Drop), rule(2, drop_key, drop_dir, Action::Drop)]);
    println!("install: {out:?}");
    for o in &out {
        assert!(matches!(o, InstallOutcome::Installed { counters: false, .. }), "{o:?}");
    }
    assert_eq!(be.rule_count(), 2);
    let filters = flower_filters();
    println!("tc filters after install:\n{}", sh(&format!("tc filter show dev {IFACE} parent 1:")));
    assert!(filters.len() >= 2, "{filters:?}");
    let dump = sh(&format!("tc -s filter show dev {IFACE} parent 1:"));
    assert!(
        dump.contains("dst_ip 10.77.0.2") && dump.contains("src_port 41000") && dump.contains("dst_port 9000"),
        "{dump}"
    );
    assert!(dump.contains("dst_port 8080") && dump.contains("ip_proto tcp"), "{dump}");

    // 3. Packets: the dropped UDP flow never reaches the PMD, the other does.
    send_udp(41000, 9000, 5);
    send_udp(41001, 9001, 5);
    let seen = receive(&mut rx, Duration::from_millis(500));
    println!(
        "received with the drop rule: dropped flow {} / other flow {}",
        count(&seen, &drop_key),
        count(&seen, &pass_key)
    );
    assert_eq!(count(&seen, &drop_key), 0);
    assert_eq!(count(&seen, &pass_key), 5);

    // TCP: the SYNs of the dropped flow (40001 -> 8080) don't arrive, those
    // of another flow from the same source port do. std's connect can't
    // pick its source port, so the kernel's ephemeral range is pinned to it.
    let range = sh("sysctl -n net.ipv4.ip_local_port_range").split_whitespace().collect::<Vec<_>>().join(" ");
    sh("sysctl -qw net.ipv4.ip_local_port_range='40001 40001'");
    let syns = |rx: &mut RxQueue, dport: u16| -> usize {
        let t = std::thread::spawn(move || {
            let _ =
                TcpStream::connect_timeout(&SocketAddr::V4(SocketAddrV4::new(PEER, dport)), Duration::from_millis(400));
        });
        let seen = receive(rx, Duration::from_millis(600));
        t.join().unwrap();
        let (key, _) = FlowKey::from_v4(HOST, PEER, 40001, dport, 6);
        seen.iter().filter(|s| s.0 == key && s.3 & 0x02 != 0).count()
    };
    let dropped_syns = syns(&mut rx, 8080);
    let other_syns = syns(&mut rx, 8081);
    sh(&format!("sysctl -qw net.ipv4.ip_local_port_range='{range}'"));
    println!("tcp SYNs seen: ruled flow 40001->8080: {dropped_syns}, unruled 40001->8081: {other_syns}");
    assert_eq!(dropped_syns, 0);
    assert!(other_syns >= 1);

    // 4. Removing a rule lets its packets through again; its filter goes.
    let before = flower_filters().len();
    let r = be.remove(&[Cookie::new(7, 2, drop_dir)]);
    assert!(matches!(r[0], Ok(None)), "{r:?}");
    assert_eq!(flower_filters().len(), before - 1);
    send_udp(41000, 9000, 3);
    let seen = receive(&mut rx, Duration::from_millis(500));
    assert_eq!(count(&seen, &drop_key), 3, "packets pass after the rule is gone");
    // Unknown cookies are an error of their own, not a panic.
    let r = be.remove(&[Cookie::new(7, 2, drop_dir)]);
    assert!(r[0].is_err());
    // The same cookie twice is refused as `exists`.
    let again = be.install(&[rule(1, tcp_key, tcp_dir, Action::Drop)]);
    assert!(matches!(&again[0], InstallOutcome::Refused(r) if r.kind == RefusalKind::Exists), "{again:?}");

    // 5. Matches and actions the PMD can't take: its own message comes back,
    //    classed by what it objected to.
    let (sctp_key, sctp_dir) = FlowKey::from_v4(HOST, PEER, 5000, 5001, 132);
    let (qinq_key, qinq_dir) = FlowKey::canonical(
        flowtable_sw::key::v4_bytes(HOST),
        flowtable_sw::key::v4_bytes(PEER),
        5000,
        5001,
        17,
        false,
        100,
        200,
        0,
    );
    let (mark_key, mark_dir) = udp_key(42000, 9002);
    let out = be.install(&[
        rule(3, sctp_key, sctp_dir, Action::Drop),
        rule(4, qinq_key, qinq_dir, Action::Drop),
        rule(5, mark_key, mark_dir, Action::Mark { mark: 5 }),
        rule(6, mark_key, mark_dir.reverse(), Action::Forward { port: 0 }),
    ]);
    let expect = [
        RefusalKind::UnsupportedMatch,
        RefusalKind::UnsupportedMatch,
        RefusalKind::UnsupportedAction,
        RefusalKind::UnsupportedAction,
    ];
    for (o, kind) in out.iter().zip(expect) {
        println!("refused as expected: {o:?}");
        match o {
            InstallOutcome::Refused(r) => {
                assert_eq!(r.kind, kind, "{r}");
                assert!(r.message.contains("on net_tap0") && r.message.contains("not supported"), "{}", r.message);
            }
            other => panic!("the tap PMD can't take this rule: {other:?}"),
        }
    }
    assert_eq!(be.rule_count(), 1, "refusals install nothing");
    // A protocol without ports is matched on addresses and protocol.
    let (gre_key, gre_dir) = FlowKey::from_v4(HOST, PEER, 0, 0, 47);
    let out = be.install(&[rule(8, gre_key, gre_dir, Action::Drop)]);
    assert!(matches!(out[0], InstallOutcome::Installed { .. }), "{out:?}");
    let dump = sh(&format!("tc filter show dev {IFACE} parent 1:"));
    // iproute2 prints protocols it has no name for in hex (47 = 0x2f).
    assert!(dump.contains("ip_proto 2f") && dump.contains("src_ip 10.77.0.1"), "{dump}");

    // 6. Counters: rules without COUNT report nothing, reading doesn't fail.
    let mut counters = Vec::new();
    be.read_counters(&mut counters).unwrap();
    assert!(counters.is_empty(), "{counters:?}");

    // 7. Shutdown removes our rules (and their filters).
    drop(be);
    let left = flower_filters();
    println!("tc filters after shutdown: {left:?}");
    assert!(left.is_empty(), "{left:?}");
    send_udp(41001, 9001, 2);
    let seen = receive(&mut rx, Duration::from_millis(300));
    assert_eq!(count(&seen, &pass_key), 2);
    drop(rx);
    rt.stop();
}
