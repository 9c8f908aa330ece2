//! `flowtable run` with the DPDK backend and the `dpdk` source on the tap
//! PMD, inside the test VM: UDP the kernel sends out of `dtap0` reaches the
//! daemon through the PMD's rx queue, the classifier offloads one flow as
//! DROP, the PMD writes it as a flower filter on `dtap0` (without COUNT,
//! which tap refuses, so the flow reports hw counters unreadable), later
//! packets of that flow never reach software, and SIGTERM removes the
//! filter (with `keep_rules` it stays). Skips unless FLOWTABLE_VM=1.

#![cfg(feature = "dpdk")]

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

const IFACE: &str = "dtap0";
const HOST: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 2);
const BLOCKED_PORT: u16 = 9100;
const SOFT_PORT: u16 = 9101;

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(out.status.success(), "`{cmd}`: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The flower filters the PMD put on the tap netdevice (one line each; tc
/// also prints a header line per priority, without a handle).
fn flower_filters() -> Vec<String> {
    sh(&format!(
        "tc filter show dev {IFACE} parent 1: 2>/dev/null; tc filter show dev {IFACE} ingress 2>/dev/null; true"
    ))
    .lines()
    .filter(|l| l.starts_with("filter") && l.contains("flower") && l.contains(" handle "))
    .map(str::to_string)
    .collect()
}

fn send_udp(sport: u16, dport: u16, n: usize) {
    let s = UdpSocket::bind(SocketAddrV4::new(HOST, sport)).expect("bind udp");
    for i in 0..n {
        s.send_to(format!("flowtable {i}").as_bytes(), SocketAddrV4::new(PEER, dport)).expect("send udp");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    /// Starts `flowtable run` on a dpdk backend and source; `persist` keeps
    /// dtap0 after the process ends, so its filters can be read then.
    fn start(name: &str, keep_rules: bool) -> Daemon {
        Self::start_with(name, keep_rules, 1)
    }

    /// `start` with `workers` workers, each reading its own rx queue.
    fn start_with(name: &str, keep_rules: bool, workers: usize) -> Daemon {
        let dir = Path::new("/tmp").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("ft.sock");
        let config = serde_json::json!({
            "instance_id": 3790,
            "workers": workers,
            "ports": [{ "name": "tap0" }],
            "sources": [{ "dpdk": {} }],
            "classifier": {
                "rules": [
                    { "name": "block", "match": { "proto": "udp", "server_ports": [BLOCKED_PORT] },
                      "result": { "offload": { "type": "drop" } } }
                ],
                "default": "software"
            },
            "offload": { "poll_interval_ms": 200 },
            "backend": {
                "kind": "dpdk",
                "eal_args": ["--no-huge", "--no-pci", "-m", "128",
                             format!("--vdev=net_tap0,iface={IFACE},persist"), "-l", "0"],
                "ports": [{ "device": "net_tap0" }],
                "rx_descriptors": 256,
                "tx_descriptors": 256,
                "rx_queues": workers,
                "tx_queues": workers,
                "mbufs": 4095,
                "mbuf_cache": 64,
                "api": "sync",
                "keep_rules": keep_rules
            },
            "control": { "socket": socket },
            "log": { "level": "debug" }
        });
        let cfg_path = dir.join("config.json");
        std::fs::write(&cfg_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_flowtable"))
            .args(["run", "--config"])
            .arg(&cfg_path)
            .stderr(log)
            .spawn()
            .unwrap();
        let mut d = Daemon { child, dir, socket };
        let start = Instant::now();
        while !d.socket.exists() {
            assert!(d.child.try_wait().unwrap().is_none(), "daemon exited:\n{}", d.log());
            assert!(start.elapsed() < Duration::from_secs(60), "daemon never opened its socket:\n{}", d.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        sh(&format!(
            "ip link set {IFACE} up && ip addr replace {HOST}/24 dev {IFACE} && \
             ip neigh replace {PEER} lladdr 02:00:00:00:79:02 dev {IFACE} nud permanent && \
             sysctl -qw net.ipv6.conf.{IFACE}.disable_ipv6=1"
        ));
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// A CLI command against this daemon's socket, its JSON answer.
    fn cli(&self, args: &[&str]) -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_flowtable"))
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--json")
            .output()
            .unwrap();
        assert!(out.status.success(), "flowtable {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("flowtable {args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// The summary row of the UDP flow to `dport`, if the daemon has it.
    fn flow(&self, dport: u16) -> Option<Value> {
        let page = self.cli(&["flows", "--top", "1000"]);
        page["flows"].as_array()?.iter().find(|f| f["dport"] == dport && f["proto"] == 17).cloned()
    }

    /// SIGTERM, then the exit status must be success.
    fn terminate(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}:\n{}", self.log());
    }
}

/// In the test VM (else says it skips), with /dev/net/tun and no dtap0
/// left by an earlier test.
fn in_vm_with_tun() -> bool {
    if std::env::var("FLOWTABLE_VM").as_deref() != Ok("1") {
        eprintln!("SKIPPED: DPDK daemon test runs only in the test VM (FLOWTABLE_VM=1)");
        return false;
    }
    if !Path::new("/dev/net/tun").exists() {
        sh("mkdir -p /dev/net && mknod /dev/net/tun c 10 200");
    }
    let _ = Command::new("ip").args(["link", "del", IFACE]).output();
    true
}

/// Sends a few packets of the blocked flow until the daemon reports its
/// rule in hardware; returns that flow row.
fn offload_blocked_flow(d: &Daemon) -> Value {
    send_udp(42000, BLOCKED_PORT, 3);
    let start = Instant::now();
    loop {
        if let Some(f) = d.flow(BLOCKED_PORT) {
            if f["placement"] == "hardware" {
                return f;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the blocked flow was never offloaded: {:?}\n{}",
            d.flow(BLOCKED_PORT),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn daemon_offloads_tap_flows_through_rte_flow() {
    if !in_vm_with_tun() {
        return;
    }

    let d = Daemon::start("ft-dpdk-daemon", false);
    let row = offload_blocked_flow(&d);
    println!("blocked flow: {row}");
    assert_eq!(row["action"]["type"], "drop");
    let seen = row["packets"].as_u64().unwrap();
    assert!((1..=3).contains(&seen), "software saw the first packets: {row}");
    assert_eq!(row["sw_packets"].as_u64(), Some(seen));

    // The PMD wrote the flow's two rules (one per direction) as flower
    // filters on dtap0.
    let filters = flower_filters();
    let dump = sh(&format!("tc filter show dev {IFACE} parent 1:"));
    println!("tc filters with the rules in:\n{dump}");
    assert_eq!(filters.len(), 2, "a rule per direction, a filter per rule: {filters:?}");
    let orig = format!("dst_ip 10.79.0.2\n  src_ip 10.79.0.1\n  dst_port {BLOCKED_PORT}\n  src_port 42000");
    let reply = format!("dst_ip 10.79.0.1\n  src_ip 10.79.0.2\n  dst_port 42000\n  src_port {BLOCKED_PORT}");
    assert!(dump.contains(&orig) && dump.contains(&reply), "{dump}");
    assert_eq!(dump.matches("gact action drop").count(), 2, "{dump}");

    // Tap takes DROP but not COUNT: the record says counters are unreadable.
    let id = row["id"].as_u64().expect("flow id").to_string();
    let detail = d.cli(&["flow", &id]);
    println!("flow {id}: {detail}");
    assert_eq!(detail["backend"], "dpdk");
    assert_eq!(detail["offload"]["action"]["type"], "drop");
    assert_eq!(detail["offload"]["hw_counters"], false);
    assert_eq!(detail["offload"]["placement"], serde_json::json!(["hardware", "hardware"]));

    // Later packets of the flow are dropped before the PMD; another flow
    // still reaches software, every packet of it.
    send_udp(42000, BLOCKED_PORT, 5);
    send_udp(42001, SOFT_PORT, 5);
    let start = Instant::now();
    let soft = loop {
        match d.flow(SOFT_PORT) {
            Some(f) if f["packets"] == 5 => break f,
            other => assert!(start.elapsed() < Duration::from_secs(5), "software flow: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("software flow: {soft}");
    assert_eq!(soft["placement"], "none");
    assert_eq!(d.flow(BLOCKED_PORT).unwrap()["packets"].as_u64(), Some(seen), "the filter dropped the rest");

    let stats = d.cli(&["stats"]);
    println!("stats: rules {} sources {}", stats["rules"], stats["sources"]);
    assert_eq!(stats["rules"]["backend"], "dpdk");
    assert_eq!(stats["rules"]["live"], 2);
    assert_eq!(stats["sources"].as_array().map(Vec::len), Some(1));
    let from_source = stats["sources"][0]["packets"].as_u64().unwrap();
    assert!(from_source >= seen + 5, "the dpdk source delivered both flows' packets: {}", stats["sources"][0]);

    // SIGTERM: the daemon removes its rule; dtap0 (persist) outlives it.
    d.terminate();
    assert!(sh(&format!("ip -o link show {IFACE}")).contains(IFACE), "persist keeps dtap0");
    let left = flower_filters();
    println!("tc filters after SIGTERM: {left:?}");
    assert!(left.is_empty(), "{left:?}");

    // Control: with keep_rules the same shutdown leaves the rule in place.
    let d = Daemon::start("ft-dpdk-daemon-keep", true);
    assert!(flower_filters().is_empty(), "a new start begins clean");
    offload_blocked_flow(&d);
    d.terminate();
    let kept = flower_filters();
    println!("tc filters after SIGTERM with keep_rules: {kept:?}");
    assert_eq!(kept.len(), 2, "{kept:?}");
    sh(&format!("ip link del {IFACE}"));
}

/// Two workers, each reading its own rx queue of the tap PMD (the kernel
/// spreads what it sends into a multi-queue tap by its symmetric flow
/// hash): every conversation is one flow with all its packets, on one
/// worker, and both workers get some.
#[test]
fn two_workers_each_read_their_own_rx_queue() {
    if !in_vm_with_tun() {
        return;
    }
    let d = Daemon::start_with("ft-dpdk-workers", false, 2);
    const FLOWS: u16 = 24;
    for i in 0..FLOWS {
        send_udp(43000 + i, SOFT_PORT, 4);
    }
    let start = Instant::now();
    let rows = loop {
        let page = d.cli(&["flows", "--top", "1000"]);
        let rows: Vec<Value> = page["flows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["dport"] == SOFT_PORT && f["proto"] == 17)
            .cloned()
            .collect();
        if rows.len() >= FLOWS as usize && rows.iter().all(|f| f["packets"] == 4) {
            break rows;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "flows: {rows:?}\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rows.len(), FLOWS as usize, "one flow per conversation: {rows:?}");
    let sports: std::collections::BTreeSet<u64> = rows.iter().map(|f| f["sport"].as_u64().unwrap()).collect();
    assert_eq!(sports.len(), FLOWS as usize, "no conversation split in two: {rows:?}");
    let shards: std::collections::BTreeSet<u64> = rows.iter().map(|f| f["id"].as_u64().unwrap() >> 48).collect();
    println!("flows by worker: {shards:?}");
    assert_eq!(shards.len(), 2, "both workers read flows: {rows:?}");
    let stats = d.cli(&["stats"]);
    // The kernel sends the odd frame of its own out of dtap0 too (router
    // solicitations, ARP): at least the conversations' packets.
    let delivered = stats["sources"][0]["packets"].as_u64().unwrap();
    assert!(delivered >= 4 * FLOWS as u64, "both workers' queues add up: {}", stats["sources"]);
    d.terminate();
    sh(&format!("ip link del {IFACE}"));
}
