//! Live packet capture against the real kernel: the AF_PACKET TPACKET_V3
//! source on veth interfaces. Runs inside the VM suite (FLOWTABLE_VM=1).

mod vmnet;

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowtable::source::afpacket::{AfPacketConfig, AfPacketSource};
use flowtable::source::{PacketSource, SourceError};
use flowtable_sw::{FlowKey, LinkType, PortMap};
use vmnet::{enter_netns, in_vm, send_udp_from, sh, Pair};

/// Starts `flowtable run` with `config` written into `dir`, its log in
/// `dir/daemon.log`; returns once its control socket is up.
fn start_daemon(dir: &Path, config: &str, socket: &Path) -> Child {
    let cfg_path = dir.join("config.json");
    std::fs::write(&cfg_path, config).unwrap();
    let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_flowtable"))
        .args(["run", "--config"])
        .arg(&cfg_path)
        .stderr(log)
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "daemon exited:\n{}",
            std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
        );
        assert!(start.elapsed() < Duration::from_secs(60), "daemon never opened its socket");
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon
}

/// SIGTERM, and a clean exit.
fn stop_daemon(mut daemon: Child, dir: &Path) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    assert!(status.success(), "{status}: {}", std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default());
}

/// The flow records written so far to `records`.
fn records_in(records: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(records).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The one record of the flow to or from `port`, waited for up to 30 s
/// after `since` (a close); fails with the daemon's log if none comes, or
/// if there are two.
fn the_one_record(records: &Path, port: u16, since: Instant, dir: &Path) -> serde_json::Value {
    loop {
        let mine: Vec<serde_json::Value> =
            records_in(records).into_iter().filter(|r| r["dport"] == port || r["sport"] == port).collect();
        if let Some(r) = mine.first() {
            assert_eq!(mine.len(), 1, "one flow, one record: {mine:#?}");
            return r.clone();
        }
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "no record after the close; log:\n{}",
            std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

#[test]
fn afpacket_delivers_every_frame_parsed_with_its_port() {
    if !in_vm("afpacket_delivers_every_frame_parsed_with_its_port") {
        return;
    }
    let pair = Pair::new("ap", 41);
    // Port 0 hears nothing; port 1 is A's host end.
    // A small ring: the 300 frames wrap it several times.
    let cfg = AfPacketConfig { block_size: 1 << 16, block_count: 4, ..AfPacketConfig::default() };
    let mut src = AfPacketSource::open(&[pair.host_b.clone(), pair.host_a.clone()], cfg).unwrap();
    assert!(src.next_packet_within(Duration::from_millis(200)).unwrap().is_none(), "quiet before traffic");

    let t0 = now_ns();
    let seen = {
        let (ip_a, ip_b) = (pair.ip_a, pair.ip_b);
        let p = &pair;
        std::thread::scope(|s| {
            let h = s.spawn(move || p.send_udp((ip_a, 4000), (ip_b, 5000), 300, 200, Duration::from_micros(500)));
            let mut seen = 0;
            let deadline = Instant::now() + Duration::from_secs(30);
            let (want, want_dir) = FlowKey::from_v4(ip_a, ip_b, 4000, 5000, 17);
            while seen < 300 && Instant::now() < deadline {
                let Some(pkt) = src.next_packet_within(Duration::from_millis(500)).unwrap() else { continue };
                assert_eq!(pkt.link, Some(LinkType::Ethernet));
                assert_eq!(pkt.ingress, 1);
                assert!(
                    pkt.ts_ns >= t0 - 1_000_000_000 && pkt.ts_ns <= now_ns() + 1_000_000_000,
                    "timestamp {}",
                    pkt.ts_ns
                );
                let info = pkt.parse(&PortMap::unpaired()).expect("parses");
                let mut k = want;
                k.zone = 1;
                assert_eq!(info.key, k);
                assert_eq!(info.dir, want_dir);
                assert_eq!(info.wire_len, 14 + 20 + 8 + 200);
                assert_eq!(pkt.data.len(), 14 + 20 + 8 + 200);
                seen += 1;
            }
            h.join().unwrap();
            seen
        })
    };
    assert_eq!(seen, 300, "every frame delivered once");
    assert!(src.next_packet_within(Duration::from_millis(300)).unwrap().is_none(), "and nothing more");
    let stats = src.stats();
    assert_eq!(stats[1].drops, 0);
    assert!(stats[1].packets >= 300);
}

#[test]
fn afpacket_hands_out_the_frames_of_all_ports_in_capture_order() {
    if !in_vm("afpacket_hands_out_the_frames_of_all_ports_in_capture_order") {
        return;
    }
    let pair = Pair::new("ao", 43);
    // Blocks of 64 KiB handed over when full or after 2 s: a request on
    // port 0 stays hidden in its block while port 1's reply, followed by
    // enough large datagrams to fill a block, is handed over at once.
    let timeout_ms = 2000;
    let cfg = AfPacketConfig {
        block_size: 1 << 16,
        block_count: 8,
        block_timeout_ms: timeout_ms,
        ..AfPacketConfig::default()
    };
    let opened = Instant::now();
    let mut src = AfPacketSource::open(&[pair.host_a.clone(), pair.host_b.clone()], cfg).unwrap();
    let (ip_a, ip_b) = (pair.ip_a, pair.ip_b);
    send_udp_from(&pair.ns_a, (ip_a, 4300), (ip_b, 5300), 1, 64, Duration::ZERO);
    send_udp_from(&pair.ns_b, (ip_b, 5300), (ip_a, 4300), 1, 64, Duration::ZERO);
    let fillers = 80; // 80 x ~1.5 KiB: more than one block
    send_udp_from(&pair.ns_b, (ip_b, 5301), (ip_a, 4301), fillers, 1400, Duration::ZERO);
    let sent = opened.elapsed();
    assert!(
        sent < Duration::from_millis(timeout_ms as u64 * 3 / 4),
        "sending took {sent:?}: port 0's block may already be handed over, so the test would prove nothing"
    );

    let mut frames: Vec<(u8, u64, u16)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while frames.len() < 2 + fillers && Instant::now() < deadline {
        let Some(pkt) = src.next_packet_within(Duration::from_millis(500)).unwrap() else { continue };
        let info = pkt.parse(&PortMap::unpaired()).expect("parses");
        let sport = info.key.endpoints(info.dir).sport;
        frames.push((pkt.ingress, pkt.ts_ns, sport));
    }
    assert_eq!(frames.len(), 2 + fillers, "every frame delivered: {frames:?}");
    assert_eq!((frames[0].0, frames[0].2), (0, 4300), "the request first, though port 1 had frames ready before it");
    assert_eq!((frames[1].0, frames[1].2), (1, 5300), "then its reply");
    for w in frames.windows(2) {
        assert!(w[0].1 <= w[1].1, "frames out of capture order: {w:?}");
    }
    assert_eq!(src.capture_losses(), Some(flowtable::source::CaptureLosses { dropped: 0, unordered: 0 }));
}

#[test]
fn afpacket_puts_stripped_vlan_tags_back() {
    if !in_vm("afpacket_puts_stripped_vlan_tags_back") {
        return;
    }
    let pair = Pair::new("av", 42);
    sh(&format!("ip -n {} link add link a0 name a0.100 type vlan id 100", pair.ns_a));
    sh(&format!("ip -n {} addr add 10.142.0.1/24 dev a0.100", pair.ns_a));
    sh(&format!("ip -n {} link set a0.100 up", pair.ns_a));
    sh(&format!("ip -n {} neigh replace 10.142.0.2 lladdr 02:00:00:00:00:02 dev a0.100 nud permanent", pair.ns_a));
    let mut src = AfPacketSource::open(std::slice::from_ref(&pair.host_a), AfPacketConfig::default()).unwrap();
    let a = std::net::Ipv4Addr::new(10, 142, 0, 1);
    let b = std::net::Ipv4Addr::new(10, 142, 0, 2);
    pair.send_udp((a, 4100), (b, 5100), 5, 64, Duration::from_millis(5));
    let mut tagged = 0;
    while let Some(pkt) = src.next_packet_within(Duration::from_millis(500)).unwrap() {
        let info = pkt.parse(&PortMap::unpaired()).expect("parses");
        assert_eq!(&pkt.data[12..14], &[0x81, 0x00], "802.1Q tag back in place");
        assert_eq!(info.key.vlan_outer, 100);
        assert_eq!(info.key.proto, 17);
        assert_eq!(info.wire_len, 14 + 4 + 20 + 8 + 64);
        tagged += 1;
    }
    assert_eq!(tagged, 5);
}

#[test]
fn afpacket_stops_on_request_and_names_missing_interfaces() {
    if !in_vm("afpacket_stops_on_request_and_names_missing_interfaces") {
        return;
    }
    let err = AfPacketSource::open(&["lo".into(), "ftNoSuch1".into()], AfPacketConfig::default()).err().unwrap();
    assert!(matches!(&err, SourceError::Open { path, .. } if path == "ftNoSuch1"), "{err}");
    assert!(err.to_string().contains("no such interface"));
    let bad = AfPacketConfig { block_size: 1000, ..AfPacketConfig::default() };
    assert!(AfPacketSource::open(&["lo".into()], bad).err().unwrap().to_string().contains("bad ring geometry"));

    let pair = Pair::new("as", 43);
    let mut src = AfPacketSource::open(std::slice::from_ref(&pair.host_a), AfPacketConfig::default()).unwrap();
    let stop = src.stop_handle();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let start = Instant::now();
    assert!(src.next_packet().unwrap().is_none(), "end of stream once stopped");
    assert!(start.elapsed() < Duration::from_secs(5));
    t.join().unwrap();
}

/// On a host's own interface, the frames the host sends are delivered
/// with the port index asked for them (the port's egress twin) beside the
/// frames it receives, each once; without one asked, they are left out.
#[test]
fn afpacket_delivers_what_the_host_sends_as_its_own_port_where_asked() {
    use flowtable::source::afpacket::Interface;
    if !in_vm("afpacket_delivers_what_the_host_sends_as_its_own_port_where_asked") {
        return;
    }
    let host = vmnet::OwnPort::new("ao", 53);
    let own = |outgoing| Interface { name: host.dev.clone(), ingress: 0, outgoing };
    let mut both = AfPacketSource::open_ports(&[own(Some(7))], AfPacketConfig::default()).unwrap();
    let mut received = AfPacketSource::open_ports(&[own(None)], AfPacketConfig::default()).unwrap();
    // From the client in, then from the host (here) out.
    send_udp_from(&host.ns, (host.ip_client, 4600), (host.ip_server, 5600), 4, 64, Duration::from_millis(2));
    let out = UdpSocket::bind((host.ip_server, 5600)).unwrap();
    for _ in 0..6 {
        out.send_to(&[0x11; 64], (host.ip_client, 4600)).unwrap();
    }
    let udp_ports = |src: &mut AfPacketSource| {
        let mut seen = Vec::new();
        while let Some(pkt) = src.next_packet_within(Duration::from_millis(500)).unwrap() {
            let ingress = pkt.ingress;
            if let Ok(info) = pkt.parse(&PortMap::unpaired()) {
                if info.key.proto == 17 {
                    seen.push((ingress, info.key.endpoints(info.dir).sport));
                }
            }
        }
        seen
    };
    let seen = udp_ports(&mut both);
    assert_eq!(seen.iter().filter(|s| **s == (0, 4600)).count(), 4, "received, as the port: {seen:?}");
    assert_eq!(seen.iter().filter(|s| **s == (7, 5600)).count(), 6, "sent, as the twin: {seen:?}");
    assert_eq!(seen.len(), 10, "{seen:?}");
    assert_eq!(udp_ports(&mut received), vec![(0, 4600); 4], "without a twin, only what came in");
}

/// `flowtable run` with the tc backend on a bump in the wire: a foreign
/// filter forwards everything between two veths; the daemon captures the
/// first packets of each flow with AF_PACKET, classifies them, installs a
/// drop rule for one flow, reads its counters back, ages it out and
/// writes its record, and on SIGTERM leaves no rule of its own behind.
#[test]
fn daemon_offloads_live_flows_to_tc_and_ages_them_out() {
    if !in_vm("daemon_offloads_live_flows_to_tc_and_ages_them_out") {
        return;
    }
    let pair = Pair::new("e2", 44);
    pair.redirect_between_hosts();
    let dir = std::path::Path::new("/tmp/ft-e2e");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let records = dir.join("records.jsonl");
    let socket = dir.join("ft.sock");
    let config = format!(
        r#"{{
  "instance_id": 3634,
  "ports": [{{ "name": "{a}" }}, {{ "name": "{b}" }}],
  "sources": [{{ "interface": {{ "name": "{a}", "ingress": 0 }} }}, {{ "interface": {{ "name": "{b}", "ingress": 1 }} }}],
  "timeouts": {{ "udp_s": 2 }},
  "classifier": {{
    "rules": [
      {{ "name": "block", "match": {{ "proto": "udp", "server_ports": [6200] }}, "result": {{ "offload": {{ "type": "drop" }} }} }}
    ],
    "default": "software"
  }},
  "offload": {{ "poll_interval_ms": 200, "placement": "auto" }},
  "backend": {{ "kind": "tc" }},
  "records": {{ "path": "{rec}" }},
  "control": {{ "socket": "{sock}" }},
  "log": {{ "level": "info" }}
}}"#,
        a = pair.host_a,
        b = pair.host_b,
        rec = records.display(),
        sock = socket.display()
    );
    let daemon = start_daemon(dir, &config, &socket);

    // Sent densely, so that some packets are likely to go past the rule
    // while it is going in: software must count those.
    let blocked = pair.udp_counted((5200, 6200), 300, 100, Duration::from_millis(2));
    let allowed = pair.udp_counted((5300, 6300), 10, 100, Duration::from_millis(20));
    println!("blocked flow: {blocked} of 300 reached B; software flow: {allowed} of 10");
    assert_eq!(allowed, 10, "a flow left in software is untouched");
    assert!((1..300).contains(&blocked), "the first packets pass, the rule drops the rest: {blocked}");

    // Aging: the UDP timeout is 2 s, counters are read every 200 ms.
    let find = |port: u16| records_in(&records).into_iter().find(|r| r["dport"] == port);
    let start = Instant::now();
    let rec = loop {
        if let Some(r) = find(6200) {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no record of the blocked flow");
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("{rec}");
    assert_eq!(rec["end_reason"], "idle");
    let stats = Command::new(env!("CARGO_BIN_EXE_flowtable"))
        .args(["stats", "--json", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    println!("packets that went past the rule while it went in: {}", stats["packets"]["slipped"]);
    assert_eq!(rec["orig"]["packets"], 300, "every packet counted once: software before the rule, tc after");
    assert_eq!(rec["orig"]["bytes"], 300 * 142);
    assert_eq!(rec["orig"]["sw_packets"], blocked as u64, "software counted what passed");
    assert_eq!(rec["orig"]["hw_packets"], 300 - blocked as u64, "tc counted what it dropped");
    assert_eq!(rec["offload"]["backend"], "tc");
    assert_eq!(rec["offload"]["action"]["type"], "drop");
    assert_eq!(rec["offload"]["placement"][0], "kernel-software");
    let show = sh(&format!("tc filter show dev {} ingress", pair.host_a));
    assert_eq!(show.matches(" handle ").count(), 1, "the aged flow's rules are gone:\n{show}");

    // SIGTERM: the daemon ends what is left and leaves nothing of ours behind.
    stop_daemon(daemon, dir);
    let soft = find(6300).expect("record of the software flow");
    assert_eq!(soft["orig"]["packets"], 10);
    assert!(soft.get("offload").is_none() || soft["offload"].is_null());
    for dev in [&pair.host_a, &pair.host_b] {
        let show = sh(&format!("tc filter show dev {dev} ingress"));
        assert_eq!(show.matches(" handle ").count(), 1, "only the foreign filter stays on {dev}:\n{show}");
        assert!(show.contains("mirred"));
    }
}

/// Namespaces A and B behind two host ports that forward to each other
/// (a bump-in-the-wire made of tc mirred filters), the daemon capturing on
/// both, joined in an inline pair, with one classifier rule for UDP to
/// 6400 that offloads `action` after six packets; and in B an echo server
/// on 6400.
struct InlinePair {
    pair: Pair,
    dir: &'static Path,
    daemon: Option<Child>,
    echo: Option<std::thread::JoinHandle<usize>>,
    /// B's echo socket, to send packets of the reply direction.
    b_socket: UdpSocket,
}

impl InlinePair {
    fn start(tag: &str, subnet: u8, dir: &'static Path, action: &str) -> InlinePair {
        Self::start_with(tag, subnet, dir, action, "")
    }

    /// `start`, with `extra` (top-level configuration fields, each followed
    /// by a comma) added to the configuration.
    fn start_with(tag: &str, subnet: u8, dir: &'static Path, action: &str, extra: &str) -> InlinePair {
        let pair = Pair::new(tag, subnet);
        pair.redirect_between_hosts();
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let config = format!(
            r#"{{
  "instance_id": 3635,{extra}
  "ports": [{{ "name": "{a}" }}, {{ "name": "{b}", "pair": "{a}" }}],
  "sources": [{{ "interface": {{ "name": "{a}", "ingress": 0 }} }}, {{ "interface": {{ "name": "{b}", "ingress": 1 }} }}],
  "classifier": {{
    "rules": [{{ "name": "cut", "match": {{ "proto": "udp", "server_ports": [6400] }},
                 "trigger": {{ "after_packets": 6 }}, "result": {{ "offload": {action} }} }}],
    "default": "software"
  }},
  "offload": {{ "poll_interval_ms": 100, "placement": "auto" }},
  "backend": {{ "kind": "tc" }},
  "records": {{ "path": "{dir}/records.jsonl" }},
  "control": {{ "socket": "{dir}/ft.sock" }}
}}"#,
            a = pair.host_a,
            b = pair.host_b,
            dir = dir.display(),
        );
        let daemon = start_daemon(dir, &config, &dir.join("ft.sock"));

        let (ns_b, ip_b) = (pair.ns_b.clone(), pair.ip_b);
        let stop = dir.join("stop-echo");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let echo = std::thread::spawn(move || {
            enter_netns(&ns_b);
            let s = UdpSocket::bind((ip_b, 6400)).expect("bind echo");
            s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
            ready_tx.send(s.try_clone().unwrap()).unwrap();
            let mut buf = [0u8; 2048];
            let mut echoed = 0;
            let started = Instant::now();
            while !stop.exists() && started.elapsed() < Duration::from_secs(60) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    s.send_to(&buf[..n], from).unwrap();
                    echoed += 1;
                }
            }
            echoed
        });
        let b_socket = ready_rx.recv().unwrap();
        InlinePair { pair, dir, daemon: Some(daemon), echo: Some(echo), b_socket }
    }

    /// Sends `count` requests from A's 5400 to B's echo, each waiting for
    /// its answer; returns how many were answered.
    fn ask(&self, count: usize) -> usize {
        self.ask_from(5400, count)
    }

    /// `ask` from A's port `port`.
    fn ask_from(&self, port: u16, count: usize) -> usize {
        let (ns_a, ip_a, ip_b) = (self.pair.ns_a.clone(), self.pair.ip_a, self.pair.ip_b);
        std::thread::spawn(move || {
            enter_netns(&ns_a);
            let s = UdpSocket::bind((ip_a, port)).expect("bind client");
            s.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
            let mut answered = 0;
            for _ in 0..count {
                s.send_to(&[0x42; 100], (ip_b, 6400)).unwrap();
                let mut buf = [0u8; 2048];
                if s.recv(&mut buf).is_ok() {
                    answered += 1;
                }
            }
            answered
        })
        .join()
        .unwrap()
    }

    /// Filters of the daemon's on `dev`: all but the pair's forwarding one.
    fn ours(&self, dev: &str) -> usize {
        sh(&format!("tc filter show dev {dev} ingress"))
            .lines()
            .filter(|l| l.contains(" handle ") && !l.contains(" pref 61000 "))
            .count()
    }

    /// Waits for the flow's two rules, one on each port.
    fn wait_for_rules(&self) {
        let (a, b) = (&self.pair.host_a, &self.pair.host_b);
        let start = Instant::now();
        while self.ours(a) + self.ours(b) < 2 {
            if start.elapsed() > Duration::from_secs(20) {
                let flows = Command::new(env!("CARGO_BIN_EXE_flowtable"))
                    .args(["flows", "--socket"])
                    .arg(self.dir.join("ft.sock"))
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
                panic!(
                    "the flow's rules never appeared; flows: {flows:?}\nlog:\n{}",
                    std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!((self.ours(a), self.ours(b)), (1, 1), "one rule per direction, each on its own port");
    }

    /// Stops echo and daemon; returns how many requests B echoed and the
    /// records of the conversation.
    fn finish(&mut self) -> (usize, Vec<serde_json::Value>) {
        std::fs::write(self.dir.join("stop-echo"), b"").unwrap();
        let echoed = self.echo.take().unwrap().join().unwrap();
        stop_daemon(self.daemon.take().unwrap(), self.dir);
        let recs = records_in(&self.dir.join("records.jsonl"))
            .into_iter()
            .filter(|r| r["dport"] == 6400 || r["sport"] == 6400)
            .collect();
        for dev in [&self.pair.host_a, &self.pair.host_b] {
            assert_eq!(self.ours(dev), 0, "no rule of ours left on {dev}");
        }
        (echoed, recs)
    }
}

/// A bump-in-the-wire joined in an inline pair: a UDP conversation
/// crossing it (requests in on the first port, replies in on the second)
/// is one flow; once classified, its two rules sit on the two devices,
/// each dropping and counting its own direction, and the record gives each
/// direction its port and exact counts.
#[test]
fn daemon_makes_one_flow_of_an_inline_pair_with_a_rule_on_each_port() {
    if !in_vm("daemon_makes_one_flow_of_an_inline_pair_with_a_rule_on_each_port") {
        return;
    }
    let mut t = InlinePair::start("ip", 45, Path::new("/tmp/ft-pair"), r#"{ "type": "drop" }"#);
    assert_eq!(t.ask(3), 3, "the inline pair forwards both ways before any rule");
    t.wait_for_rules();

    // Requests now die on A's port; packets of the reply direction, sent
    // from B's echo socket, die on B's.
    assert_eq!(t.ask(5), 0, "requests are dropped on the first port");
    let (ns_a, ip_a) = (t.pair.ns_a.clone(), t.pair.ip_a);
    let listener = std::thread::spawn(move || {
        enter_netns(&ns_a);
        let s = UdpSocket::bind((ip_a, 5400)).expect("bind listener");
        s.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
        let mut got = 0;
        let mut buf = [0u8; 2048];
        while s.recv(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..4 {
        t.b_socket.send_to(&[0x24; 60], (ip_a, 5400)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(listener.join().unwrap(), 0, "the reply direction is dropped on the second port");

    // Both interfaces are one capture, merged in order, and it lost nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_flowtable"))
        .args(["stats", "--json", "--socket"])
        .arg(t.dir.join("ft.sock"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sources = stats["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 1, "{sources:?}");
    assert_eq!(sources[0]["name"], format!("interfaces {}, {}", t.pair.host_a, t.pair.host_b));
    assert_eq!((&sources[0]["dropped"], &sources[0]["unordered"]), (&0.into(), &0.into()), "{sources:?}");

    let (echoed, recs) = t.finish();
    assert_eq!(echoed, 3);
    assert_eq!(recs.len(), 1, "one flow for the whole conversation: {recs:#?}");
    let r = &recs[0];
    println!("{r}");
    assert_eq!((r["sport"].as_u64(), r["dport"].as_u64()), (Some(5400), Some(6400)));
    assert_eq!((&r["orig"]["ingress"], &r["reply"]["ingress"]), (&0.into(), &1.into()));
    assert_eq!(r["orig"]["packets"], 8, "3 answered and 5 dropped requests");
    assert_eq!(r["orig"]["hw_packets"], 5, "the first port's rule counted the dropped requests");
    assert_eq!(r["reply"]["packets"], 7, "3 answers and 4 dropped packets");
    assert_eq!(r["reply"]["hw_packets"], 4, "the second port's rule counted the dropped replies");
}

/// `pass` on an inline pair: each direction's rule sends its packets on to
/// the other port itself, so the conversation keeps flowing after the
/// pair's own forwarding filters are gone, every packet counted by the
/// rules.
#[test]
fn pass_on_an_inline_pair_carries_the_conversation_port_to_port() {
    if !in_vm("pass_on_an_inline_pair_carries_the_conversation_port_to_port") {
        return;
    }
    let mut t = InlinePair::start("iq", 46, Path::new("/tmp/ft-pass"), r#"{ "type": "pass" }"#);
    assert_eq!(t.ask(3), 3);
    t.wait_for_rules();
    for dev in [&t.pair.host_a, &t.pair.host_b] {
        sh(&format!("tc filter del dev {dev} ingress prio 61000"));
    }
    assert_eq!(t.ask(5), 5, "answered through the flow's own rules");
    let (echoed, recs) = t.finish();
    assert_eq!(echoed, 8);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    let r = &recs[0];
    println!("{r}");
    assert_eq!(r["offload"]["action"]["type"], "pass");
    assert_eq!((&r["orig"]["packets"], &r["reply"]["packets"]), (&8.into(), &8.into()));
    assert_eq!((&r["orig"]["hw_packets"], &r["reply"]["hw_packets"]), (&5.into(), &5.into()));
}

/// Two workers, each reading its own share of both ports of an inline
/// pair by the kernel's fanout hash: requests arrive on one port and their
/// echoes on the other, yet every conversation is one flow on one worker
/// (the hash is symmetric and picks the same worker on both ports), both
/// workers get conversations, and each conversation's rules (one per port,
/// put in by the one offload thread) count exactly what they dropped.
#[test]
fn two_workers_share_an_inline_pair_by_fanout_and_split_no_conversation() {
    if !in_vm("two_workers_share_an_inline_pair_by_fanout_and_split_no_conversation") {
        return;
    }
    const CONVERSATIONS: u16 = 16;
    let mut t =
        InlinePair::start_with("fo", 47, Path::new("/tmp/ft-fanout"), r#"{ "type": "drop" }"#, r#" "workers": 2,"#);
    for c in 0..CONVERSATIONS {
        assert_eq!(t.ask_from(5400 + c, 3), 3, "conversation {c}: forwarded both ways before any rule");
    }
    // Each conversation's two rules, one on each port.
    let (a, b) = (t.pair.host_a.clone(), t.pair.host_b.clone());
    let start = Instant::now();
    while t.ours(&a) + t.ours(&b) < 2 * CONVERSATIONS as usize {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "rules never all appeared ({} on {a}, {} on {b}); log:\n{}",
            t.ours(&a),
            t.ours(&b),
            std::fs::read_to_string(t.dir.join("daemon.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!((t.ours(&a), t.ours(&b)), (CONVERSATIONS as usize, CONVERSATIONS as usize));
    for c in 0..CONVERSATIONS {
        assert_eq!(t.ask_from(5400 + c, 2), 0, "conversation {c}: requests dropped on the first port");
    }
    let (echoed, recs) = t.finish();
    assert_eq!(echoed, 3 * CONVERSATIONS as usize);
    assert_eq!(recs.len(), CONVERSATIONS as usize, "one flow per conversation, none split: {recs:#?}");
    let mut shards = std::collections::BTreeSet::new();
    for r in &recs {
        let c = r["sport"].as_u64().unwrap();
        assert_eq!(r["dport"], 6400, "{r}");
        assert_eq!((&r["orig"]["ingress"], &r["reply"]["ingress"]), (&0.into(), &1.into()), "{r}");
        assert_eq!(r["orig"]["packets"], 5, "port {c}: 3 answered and 2 dropped requests: {r}");
        assert_eq!(r["orig"]["hw_packets"], 2, "port {c}: the first port's rule counted the dropped: {r}");
        assert_eq!(r["reply"]["packets"], 3, "port {c}: the 3 answers: {r}");
        shards.insert(r["id"].as_u64().unwrap() >> 48);
    }
    assert_eq!(shards.len(), 2, "both workers had conversations: {shards:?}");
}

/// Two workers started while traffic already flows: each worker's share of
/// the port takes nothing until both have joined the fanout group, so no
/// flow's first packets land on the worker that joined first (a group of
/// one takes every flow) or on a socket not yet in the group (which sees
/// every frame): each flow is one flow, on one worker, with one record.
#[test]
fn two_workers_started_under_traffic_see_each_flow_once() {
    if !in_vm("two_workers_started_under_traffic_see_each_flow_once") {
        return;
    }
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const FLOWS: u16 = 16;
    let pair = Pair::new("su", 55);
    let dir = std::path::PathBuf::from("/tmp/ft-su");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for f in 0..FLOWS {
        let (ns, ip_a, ip_b, stop) = (pair.ns_a.clone(), pair.ip_a, pair.ip_b, stop.clone());
        senders.push(std::thread::spawn(move || {
            enter_netns(&ns);
            let s = UdpSocket::bind((ip_a, 5600 + f)).expect("bind sender");
            let mut sent = 0u64;
            while !stop.load(Ordering::Acquire) {
                s.send_to(&[0x44; 100], (ip_b, 6600)).expect("send");
                sent += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            sent
        }));
    }
    std::thread::sleep(Duration::from_millis(300));
    let config = format!(
        r#"{{
  "instance_id": 5353,
  "workers": 2,
  "ports": [{{ "name": "{a}" }}],
  "sources": [{{ "interface": {{ "name": "{a}", "ingress": 0 }} }}],
  "classifier": {{ "rules": [], "default": "software" }},
  "backend": {{ "kind": "sim" }},
  "records": {{ "path": "{dir}/records.jsonl" }},
  "control": {{ "socket": "{dir}/ft.sock" }}
}}"#,
        a = pair.host_a,
        dir = dir.display(),
    );
    let daemon = start_daemon(&dir, &config, &dir.join("ft.sock"));
    std::thread::sleep(Duration::from_millis(1500));
    stop_daemon(daemon, &dir);
    stop.store(true, Ordering::Release);
    let sent: Vec<u64> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    let recs: Vec<_> = records_in(&dir.join("records.jsonl")).into_iter().filter(|r| r["dport"] == 6600).collect();
    let mut by_flow = std::collections::BTreeMap::<u64, Vec<&serde_json::Value>>::new();
    for r in &recs {
        by_flow.entry(r["sport"].as_u64().unwrap()).or_default().push(r);
    }
    let split: Vec<_> = by_flow.iter().filter(|(_, rs)| rs.len() > 1).collect();
    assert!(split.is_empty(), "flows seen as more than one (by more than one worker): {split:#?}");
    assert_eq!(by_flow.len(), FLOWS as usize, "every flow seen: {by_flow:#?}");
    let shards: std::collections::BTreeSet<u64> = recs.iter().map(|r| r["id"].as_u64().unwrap() >> 48).collect();
    assert_eq!(shards.len(), 2, "both workers had flows: {shards:?}");
    for (f, rs) in &by_flow {
        let n = rs[0]["orig"]["packets"].as_u64().unwrap();
        assert!(n > 0 && n < sent[(f - 5600) as usize], "flow {f}: seen while the daemon ran, and once: {}", rs[0]);
    }
    pair.cleanup();
}

/// How a test's TCP connection ends.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Close {
    /// FIN from both sides.
    Clean,
    /// The client aborts: SO_LINGER 0, then close, sends RST.
    Reset,
}

/// A real TCP connection across an inline pair whose software path is a
/// catch-all redirect each way: offloaded (`pass`) mid-connection, then
/// closed as `close` says. The FINs or the RST miss the flow's rules and
/// reach software (the rules match FIN and RST clear), which removes the
/// rules and ends the flow `tcp-close` within the closing timeout plus a
/// poll; each direction's packets equal a capture taken in B.
fn offloaded_connection_is_torn_down(tag: &str, subnet: u8, close: Close) {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    let pair = Pair::new(tag, subnet);
    pair.one_packet_per_segment();
    pair.redirect_between_hosts();
    let dir = std::path::PathBuf::from(format!("/tmp/ft-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (closing_s, poll_ms) = (2.0, 100);
    let config = format!(
        r#"{{
  "instance_id": 3636,
  "ports": [{{ "name": "{a}" }}, {{ "name": "{b}", "pair": "{a}" }}],
  "sources": [{{ "interface": {{ "name": "{a}", "ingress": 0 }} }}, {{ "interface": {{ "name": "{b}", "ingress": 1 }} }}],
  "classifier": {{
    "rules": [{{ "name": "bulk", "match": {{ "proto": "tcp", "server_ports": [7000] }},
                 "trigger": {{ "after_packets": 6 }}, "result": {{ "offload": {{ "type": "pass" }} }} }}],
    "default": "software"
  }},
  "timeouts": {{ "tcp_closing_s": {closing_s}, "tcp_closed_s": {closing_s} }},
  "offload": {{ "poll_interval_ms": {poll_ms}, "placement": "auto" }},
  "backend": {{ "kind": "tc" }},
  "records": {{ "path": "{dir}/records.jsonl" }},
  "control": {{ "socket": "{dir}/ft.sock" }}
}}"#,
        a = pair.host_a,
        b = pair.host_b,
        dir = dir.display(),
    );
    let daemon = start_daemon(&dir, &config, &dir.join("ft.sock"));
    // Open and bound before the first SYN, so it misses nothing.
    let capture = vmnet::RawCapture::start(&pair.ns_b, "b0");

    let (ns_b, ip_b) = (pair.ns_b.clone(), pair.ip_b);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        enter_netns(&ns_b);
        let l = TcpListener::bind((ip_b, 7000)).expect("bind server");
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut got = 0usize;
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        got // dropped: the server's FIN (after a clean close)
    });
    ready_rx.recv().unwrap();
    let ours = |dev: &str| {
        sh(&format!("tc filter show dev {dev} ingress"))
            .lines()
            .filter(|l| l.contains(" handle ") && !l.contains(" pref 61000 "))
            .count()
    };
    let ns_a = pair.ns_a.clone();
    let client = std::thread::spawn(move || {
        enter_netns(&ns_a);
        let mut c = TcpStream::connect((ip_b, 7000)).expect("connect");
        c.set_nodelay(true).unwrap();
        for _ in 0..150 {
            c.write_all(&[0x5a; 1000]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        match close {
            Close::Clean => {
                c.shutdown(std::net::Shutdown::Write).unwrap();
                let mut rest = vec![];
                let _ = c.read_to_end(&mut rest);
            }
            Close::Reset => {
                let linger = libc::linger { l_onoff: 1, l_linger: 0 };
                // SAFETY: a valid socket and a linger struct of the size given.
                let rc = unsafe {
                    libc::setsockopt(
                        c.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        &linger as *const libc::linger as *const libc::c_void,
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    )
                };
                assert_eq!(rc, 0);
            }
        }
    });
    // The rules, from this thread (in the root namespace), while the
    // client sends.
    let mut rules_seen = false;
    while !client.is_finished() {
        rules_seen |= ours(&pair.host_a) + ours(&pair.host_b) == 2;
        std::thread::sleep(Duration::from_millis(100));
    }
    client.join().unwrap();
    let closed_at = Instant::now();
    let received = server.join().unwrap();
    assert!(rules_seen, "the connection was offloaded while it carried data");
    if close == Close::Clean {
        assert_eq!(received, 150_000, "every byte crossed, through the rules and the software path");
    }

    // The record comes within the closing timeout plus a poll (and the
    // emulated machine's slack), and the rules are gone by then.
    let records = dir.join("records.jsonl");
    let record = the_one_record(&records, 7000, closed_at, &dir);
    let waited = closed_at.elapsed();
    println!("{close:?}: record after {waited:?}: {record}");
    assert_eq!(record["end_reason"], "tcp-close", "{record}");
    assert_eq!((ours(&pair.host_a), ours(&pair.host_b)), (0, 0), "the rules went at the close");
    let bound = Duration::from_secs_f64(closing_s) + Duration::from_millis(poll_ms) + Duration::from_millis(1500);
    assert!(waited < bound, "ended {waited:?} after the close, bound {bound:?}");
    assert_eq!(record["offload"]["teardown"], "fin-rst", "{record}");
    assert!(record["offload"]["removed_ns"].is_u64(), "{record}");
    assert!(record["orig"]["hw_packets"].as_u64() > Some(0) && record["reply"]["hw_packets"].as_u64() > Some(0));

    // Against the capture in B: each direction's packets, exactly.
    std::thread::sleep(Duration::from_millis(500));
    let (frames, dropped) = capture.finish();
    assert_eq!(dropped, 0, "the capture in B dropped packets");
    let vmnet::Tally { from_a, from_b, seen, .. } = vmnet::tcp_tally(&frames, 7000, pair.ip_a, pair.ip_b);
    println!("capture in B: {from_a} packets from A, {from_b} from B");
    if (record["orig"]["packets"].as_u64(), record["reply"]["packets"].as_u64()) != (Some(from_a), Some(from_b)) {
        println!(
            "capture, first and last packets: {:#?} ... {:#?}",
            &seen[..seen.len().min(8)],
            &seen[seen.len().saturating_sub(12)..]
        );
        println!("daemon log:\n{}", std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default());
    }
    assert_eq!(
        (record["orig"]["packets"].as_u64(), record["reply"]["packets"].as_u64()),
        (Some(from_a), Some(from_b)),
        "{record}"
    );
    stop_daemon(daemon, &dir);
}

#[test]
fn offloaded_tcp_connection_closed_by_fin_is_torn_down_and_counted_exactly() {
    if !in_vm("offloaded_tcp_connection_closed_by_fin_is_torn_down_and_counted_exactly") {
        return;
    }
    offloaded_connection_is_torn_down("tf", 48, Close::Clean);
}

#[test]
fn offloaded_tcp_connection_reset_is_torn_down_and_counted_exactly() {
    if !in_vm("offloaded_tcp_connection_reset_is_torn_down_and_counted_exactly") {
        return;
    }
    offloaded_connection_is_torn_down("tr", 49, Close::Reset);
}

/// Restarts that keep the rules: a UDP flow (dropped) and a TCP connection
/// (passed) are offloaded across an inline pair whose software path is a
/// catch-all redirect; the daemon is killed with SIGKILL, started again,
/// stopped with SIGTERM and `keep_rules`, and started a third time, while
/// both carry traffic throughout. The flows' filters stay in place, the
/// same handles from first to last (never reinstalled), and go on
/// dropping and passing while no daemon runs; each run takes them over
/// from the offload journal. Each flow ends in one record, from the last
/// run, marked adopted, whose packets equal what was sent (UDP) and what a
/// capture in B saw (TCP, per direction). A foreign filter on the same
/// device is untouched.
#[test]
fn restarts_take_over_offloaded_flows_and_lose_no_packet() {
    if !in_vm("restarts_take_over_offloaded_flows_and_lose_no_packet") {
        return;
    }
    restarts_take_over("rs", 50, 1);
}

/// The same with two workers: each run's workers join the fanout groups
/// in the same order, so the kernel's hash sends a flow's packets to the
/// worker whose shard its id names, and the flow taken over is found there
/// (a packet reaching another worker would start a second flow).
#[test]
fn restarts_with_two_workers_find_each_flow_on_its_own_worker() {
    if !in_vm("restarts_with_two_workers_find_each_flow_on_its_own_worker") {
        return;
    }
    restarts_take_over("r2", 51, 2);
}

fn restarts_take_over(tag: &str, subnet: u8, workers: usize) {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let pair = Pair::new(tag, subnet);
    pair.one_packet_per_segment();
    pair.redirect_between_hosts();
    // Someone else's filter, on a port we use.
    sh(&format!(
        "tc filter add dev {} ingress prio 7 protocol ip flower ip_proto udp dst_port 9999 action drop",
        pair.host_a
    ));
    let dir = std::path::PathBuf::from(format!("/tmp/ft-{tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = |keep_rules: bool| {
        format!(
            r#"{{
  "instance_id": 5050,
  "workers": {workers},
  "ports": [{{ "name": "{a}" }}, {{ "name": "{b}", "pair": "{a}" }}],
  "sources": [{{ "interface": {{ "name": "{a}", "ingress": 0 }} }}, {{ "interface": {{ "name": "{b}", "ingress": 1 }} }}],
  "classifier": {{
    "rules": [{{ "name": "bulk", "match": {{ "proto": "tcp", "server_ports": [7000] }},
                 "trigger": {{ "after_packets": 6 }}, "result": {{ "offload": {{ "type": "pass" }} }} }},
              {{ "name": "sink", "match": {{ "proto": "udp", "server_ports": [6500] }},
                 "trigger": {{ "after_packets": 3 }}, "result": {{ "offload": {{ "type": "drop" }} }} }}],
    "default": "software"
  }},
  "timeouts": {{ "tcp_closing_s": 2, "tcp_closed_s": 2 }},
  "offload": {{ "poll_interval_ms": 100, "placement": "auto" }},
  "backend": {{ "kind": "tc", "keep_rules": {keep_rules}, "journal": "{dir}/journal.jsonl" }},
  "records": {{ "path": "{dir}/records.jsonl" }},
  "control": {{ "socket": "{dir}/ft.sock" }}
}}"#,
            a = pair.host_a,
            b = pair.host_b,
            dir = dir.display(),
        )
    };
    let socket = dir.join("ft.sock");
    let ours = || {
        let mut handles = Vec::new();
        for dev in [&pair.host_a, &pair.host_b] {
            for l in sh(&format!("tc filter show dev {dev} ingress")).lines() {
                if l.contains(" handle ") && !l.contains(" pref 61000 ") && !l.contains(" pref 7 ") {
                    handles.push(format!("{dev} {}", l.trim()));
                }
            }
        }
        handles.sort();
        handles
    };
    let log_of = |run: u32| std::fs::read_to_string(dir.join(format!("daemon-{run}.log"))).unwrap_or_default();
    let start = |run: u32, keep_rules: bool| {
        let _ = std::fs::remove_file(&socket);
        let child = start_daemon(&dir, &config(keep_rules), &socket);
        std::fs::rename(dir.join("daemon.log"), dir.join(format!("daemon-{run}.log"))).unwrap();
        child
    };

    let capture = vmnet::RawCapture::start(&pair.ns_b, "b0");
    let stop = Arc::new(AtomicBool::new(false));
    let (ns_b, ip_b) = (pair.ns_b.clone(), pair.ip_b);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        enter_netns(&ns_b);
        let l = TcpListener::bind((ip_b, 7000)).expect("bind server");
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 4096];
        let mut got = 0usize;
        while let Ok(n @ 1..) = s.read(&mut buf) {
            got += n;
        }
        got
    });
    ready_rx.recv().unwrap();
    let mut daemon = start(1, false);
    let (ns_a, ip_a) = (pair.ns_a.clone(), pair.ip_a);
    let (tcp_stop, udp_stop) = (stop.clone(), stop.clone());
    let client = std::thread::spawn(move || {
        enter_netns(&ns_a);
        let mut c = TcpStream::connect((ip_b, 7000)).expect("connect");
        c.set_nodelay(true).unwrap();
        let mut sent = 0usize;
        while !tcp_stop.load(Ordering::Acquire) {
            c.write_all(&[0x5a; 1000]).unwrap();
            sent += 1000;
            std::thread::sleep(Duration::from_millis(20));
        }
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let _ = c.read_to_end(&mut vec![]);
        sent
    });
    let ns_a = pair.ns_a.clone();
    let udp = std::thread::spawn(move || {
        enter_netns(&ns_a);
        let s = UdpSocket::bind((ip_a, 6400)).expect("bind sender");
        let mut sent = 0u64;
        while !udp_stop.load(Ordering::Acquire) {
            s.send_to(&[0x33; 200], (ip_b, 6500)).expect("send");
            sent += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        sent
    });

    let wait_for = |what: &str, run: u32, cond: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !cond() {
            assert!(t.elapsed() < Duration::from_secs(30), "{what}; log:\n{}", log_of(run));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("the first run never put both flows' rules in", 1, &|| ours().len() == 4);
    let handles = ours();
    println!("rules of the first run:\n{}", handles.join("\n"));
    std::thread::sleep(Duration::from_millis(1500));
    // What each run holds and journals, to tell on a mismatch where a
    // packet went.
    let show = |when: &str| {
        let flows = Command::new(env!("CARGO_BIN_EXE_flowtable"))
            .args(["flows", "--json", "--socket"])
            .arg(&socket)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let journal = std::fs::read_to_string(dir.join("journal.jsonl")).unwrap_or_default();
        println!("{when}: flows {flows}\njournal:\n{journal}");
    };
    show("before the kill");

    // SIGKILL: no cleanup, no records.
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let udp_hits = || {
        let out = sh(&format!("tc -s filter show dev {} ingress", pair.host_a));
        let at = out.find("dst_port 6500").expect("the UDP rule is there");
        let sent = out[at..].split("Sent ").nth(1).expect("its counters");
        sent.split(" pkt").next().unwrap().split_whitespace().last().unwrap().parse::<u64>().unwrap()
    };
    let hits = udp_hits();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(udp_hits() > hits, "the UDP rule goes on dropping with no daemon");
    assert_eq!(ours(), handles, "the killed run's rules stay");
    let none_yet = |when: &str, run: u32| {
        let early: Vec<_> = records_in(&dir.join("records.jsonl"))
            .into_iter()
            .filter(|r| [7000, 6500].iter().any(|p| r["dport"] == *p || r["sport"] == *p))
            .collect();
        assert!(early.is_empty(), "{when}: no record yet, the flows go on: {early:#?}\nlog:\n{}", log_of(run));
    };
    none_yet("after the kill", 1);

    // Second run: takes them over; stopped keeping them.
    let daemon = start(2, true);
    wait_for("the second run never took the flows over", 2, &|| log_of(2).contains("taken over"));
    assert_eq!(ours(), handles, "taken over, not reinstalled; log:\n{}", log_of(2));
    std::thread::sleep(Duration::from_millis(1500));
    show("second run, before its stop");
    stop_daemon(daemon, &dir);
    show("after the second run's stop");
    assert!(log_of(2).contains("left in place"), "{}", log_of(2));
    assert_eq!(ours(), handles, "kept at the stop; log:\n{}", log_of(2));
    none_yet("after the stop that kept the rules", 2);
    std::thread::sleep(Duration::from_millis(1000));

    // Third run: takes them over again, and ends them.
    let daemon = start(3, false);
    wait_for("the third run never took the flows over", 3, &|| log_of(3).contains("taken over"));
    assert_eq!(ours(), handles, "taken over again; log:\n{}", log_of(3));
    std::thread::sleep(Duration::from_millis(1500));
    show("third run");
    stop.store(true, Ordering::Release);
    let tcp_sent = client.join().unwrap();
    let udp_sent = udp.join().unwrap();
    let received = server.join().unwrap();
    assert_eq!(received, tcp_sent, "every byte crossed, through the rule and the software path");
    let records = dir.join("records.jsonl");
    wait_for("no tcp-close record", 3, &|| records_in(&records).iter().any(|r| r["dport"] == 7000));
    std::thread::sleep(Duration::from_millis(300));
    stop_daemon(daemon, &dir);
    assert!(ours().is_empty(), "the last run removed them: {:?}", ours());
    let foreign = sh(&format!("tc filter show dev {} ingress", pair.host_a));
    assert!(foreign.contains("dst_port 9999"), "the foreign filter is untouched:\n{foreign}");

    let recs = records_in(&records);
    let tcp: Vec<_> = recs.iter().filter(|r| r["dport"] == 7000).collect();
    let udp: Vec<_> = recs.iter().filter(|r| r["dport"] == 6500).collect();
    println!("records:\n{tcp:#?}\n{udp:#?}");
    assert_eq!((tcp.len(), udp.len()), (1, 1), "one record per flow over the three runs");
    let (tcp, udp) = (tcp[0], udp[0]);
    assert_eq!(tcp["end_reason"], "tcp-close", "{tcp}");
    for r in [tcp, udp] {
        assert!(r["offload"]["adopted_ns"].is_u64(), "taken over: {r}");
        assert!(r["offload"]["installed_ns"].as_u64() < Some(r["offload"]["adopted_ns"].as_u64().unwrap()));
    }
    assert_eq!(udp["orig"]["packets"].as_u64(), Some(udp_sent), "every datagram sent, counted once: {udp}");

    let (frames, dropped) = capture.finish();
    assert_eq!(dropped, 0, "the capture in B dropped packets");
    let tally = vmnet::tcp_tally(&frames, 7000, pair.ip_a, pair.ip_b);
    let (tcp_from_a, tcp_from_b) = (tally.from_a, tally.from_b);
    let udp_in_b = frames
        .iter()
        .filter(|d| d.len() >= 38 && d[12..14] == [0x08, 0x00] && d[23] == 17)
        .filter(|d| {
            let l4 = 14 + usize::from(d[14] & 0x0f) * 4;
            d.get(l4 + 2..l4 + 4) == Some(&6500u16.to_be_bytes()[..])
        })
        .count() as u64;
    println!("capture in B: TCP {tcp_from_a} from A, {tcp_from_b} from B; UDP {udp_in_b} to 6500");
    if (tcp["orig"]["packets"].as_u64(), tcp["reply"]["packets"].as_u64()) != (Some(tcp_from_a), Some(tcp_from_b)) {
        for run in 1..=3 {
            println!("log of run {run}:\n{}", log_of(run));
        }
        println!(
            "capture, first and last packets: {:#?} ... {:#?}",
            &tally.seen[..tally.seen.len().min(10)],
            &tally.seen[tally.seen.len().saturating_sub(10)..]
        );
    }
    assert_eq!(
        (tcp["orig"]["packets"].as_u64(), tcp["reply"]["packets"].as_u64()),
        (Some(tcp_from_a), Some(tcp_from_b)),
        "{tcp}"
    );
    assert_eq!(
        udp["orig"]["sw_packets"].as_u64(),
        Some(udp_in_b),
        "only what software saw before the drop rule got through"
    );
}

/// The daemon on the server's own interface, the one port carrying both
/// directions (`"egress": true`): a real TCP connection from a client
/// namespace to a server in this (the root) namespace, offloaded (`pass`)
/// mid-connection. The client's packets come in on the port and its rule
/// sits on the ingress hook; the server's answers leave by the port, are
/// read as the port's egress twin, and their rule sits on the egress hook,
/// where it counts them. One flow, the close (FIN both ways) seen as
/// `tcp-close`, and each direction's packets equal a capture in the
/// client's namespace.
#[test]
fn daemon_on_the_servers_own_interface_counts_both_directions_with_the_reply_rule_on_egress() {
    if !in_vm("daemon_on_the_servers_own_interface_counts_both_directions_with_the_reply_rule_on_egress") {
        return;
    }
    own_port_connection("ow", 50, 1);
}

/// The same with two workers, each reading its share of the port by the
/// kernel's fanout hash: what the host sends (through the same group)
/// lands on the worker that has the flow, so the conversation stays one
/// flow.
#[test]
fn two_workers_on_the_servers_own_interface_keep_a_connection_one_flow() {
    if !in_vm("two_workers_on_the_servers_own_interface_keep_a_connection_one_flow") {
        return;
    }
    own_port_connection("o2", 54, 2);
}

fn own_port_connection(tag: &str, subnet: u8, workers: usize) {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    const PORT: u16 = 7100;
    // Long enough that the rules, in after six packets, carry most of it
    // even on a slow emulated machine.
    const ROUNDS: usize = 200;
    let host = vmnet::OwnPort::new(tag, subnet);
    // One packet per segment (tc counts a GSO packet as its segments).
    sh(&format!("ip netns exec {} ethtool -K c0 tso off gso off gro off", host.ns));
    sh(&format!("ethtool -K {} tso off gso off gro off", host.dev));
    let dir = std::path::PathBuf::from(format!("/tmp/ft-{tag}"));
    let dir = dir.as_path();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let (closing_s, poll_ms) = (2.0, 100);
    let config = format!(
        r#"{{
  "instance_id": 3637,
  "workers": {workers},
  "ports": [{{ "name": "{dev}", "egress": true }}],
  "sources": [{{ "interface": {{ "name": "{dev}", "ingress": 0 }} }}],
  "classifier": {{
    "rules": [{{ "name": "echo", "match": {{ "proto": "tcp", "server_ports": [{PORT}] }},
                 "trigger": {{ "after_packets": 6 }}, "result": {{ "offload": {{ "type": "pass" }} }} }}],
    "default": "software"
  }},
  "timeouts": {{ "tcp_closing_s": {closing_s}, "tcp_closed_s": {closing_s} }},
  "offload": {{ "poll_interval_ms": {poll_ms}, "placement": "auto" }},
  "backend": {{ "kind": "tc" }},
  "records": {{ "path": "{dir}/records.jsonl" }},
  "control": {{ "socket": "{dir}/ft.sock" }}
}}"#,
        dev = host.dev,
        dir = dir.display(),
    );
    let daemon = start_daemon(dir, &config, &dir.join("ft.sock"));
    let capture = vmnet::RawCapture::start(&host.ns, "c0");

    // The server, here in the root namespace: echoes what it reads.
    let listener = TcpListener::bind((host.ip_server, PORT)).expect("bind server");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut echoed = 0usize;
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    s.write_all(&buf[..n]).unwrap();
                    echoed += n;
                }
            }
        }
        echoed // dropped: the server's FIN
    });
    let (ns, ip_server) = (host.ns.clone(), host.ip_server);
    let client = std::thread::spawn(move || {
        enter_netns(&ns);
        let mut c = TcpStream::connect((ip_server, PORT)).expect("connect");
        c.set_nodelay(true).unwrap();
        let mut back = 0usize;
        for _ in 0..ROUNDS {
            c.write_all(&[0x5a; 1000]).unwrap();
            let mut buf = [0u8; 1000];
            c.read_exact(&mut buf).unwrap();
            back += buf.len();
            std::thread::sleep(Duration::from_millis(20));
        }
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = vec![];
        let _ = c.read_to_end(&mut rest);
        back
    });
    // Our filters on each hook (no one else's are on this device).
    let ours = |hook: &str| sh(&format!("tc filter show dev {} {hook}", host.dev)).matches(" handle ").count();
    // The packets the egress rule counted, from `tc -s`.
    let egress_packets = |show: &str| -> u64 {
        show.lines()
            .filter_map(|l| l.trim().strip_prefix("Sent "))
            .filter_map(|l| l.split_whitespace().nth(2).and_then(|n| n.parse().ok()))
            .max()
            .unwrap_or(0)
    };
    let (mut rules_seen, mut egress_show) = (false, String::new());
    while !client.is_finished() {
        if ours("ingress") == 1 && ours("egress") == 1 {
            rules_seen = true;
            let show = sh(&format!("tc -s filter show dev {} egress", host.dev));
            // The rule can go between the two reads (the close).
            if show.contains(" handle ") && egress_packets(&show) >= egress_packets(&egress_show) {
                egress_show = show;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let back = client.join().unwrap();
    let closed_at = Instant::now();
    let echoed = server.join().unwrap();
    assert!(rules_seen, "one rule on ingress and one on egress while the connection carried data");
    assert_eq!((back, echoed), (ROUNDS * 1000, ROUNDS * 1000), "every byte crossed both ways");
    println!("tc -s filter show dev {} egress, the last read with the rules in:\n{egress_show}", host.dev);
    let log = || std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
    assert!(
        egress_show.contains("gact action pass"),
        "the answers' rule passes them on:\n{egress_show}\nlog:\n{}",
        log()
    );
    assert!(egress_packets(&egress_show) > 0, "the egress rule carried the answers:\n{egress_show}");

    let records = dir.join("records.jsonl");
    let record = the_one_record(&records, PORT, closed_at, dir);
    let waited = closed_at.elapsed();
    println!("record after {waited:?}: {record}");
    assert_eq!(record["end_reason"], "tcp-close", "{record}");
    assert_eq!((ours("ingress"), ours("egress")), (0, 0), "the rules went at the close");
    let bound = Duration::from_secs_f64(closing_s) + Duration::from_millis(poll_ms) + Duration::from_millis(1500);
    assert!(waited < bound, "ended {waited:?} after the close, bound {bound:?}");
    assert_eq!((&record["orig"]["ingress"], &record["reply"]["ingress"]), (&0.into(), &1.into()), "{record}");
    assert_eq!(record["offload"]["placement"], serde_json::json!(["kernel-software", "kernel-software"]));
    assert!(record["orig"]["hw_packets"].as_u64() > Some(0), "the ingress rule counted: {record}");
    assert!(record["reply"]["hw_packets"].as_u64() > Some(0), "the egress rule counted: {record}");

    std::thread::sleep(Duration::from_millis(500));
    let (frames, dropped) = capture.finish();
    assert_eq!(dropped, 0, "the client's capture dropped packets");
    let tally = vmnet::tcp_tally(&frames, PORT, host.ip_client, host.ip_server);
    println!(
        "capture in the client's namespace: {} packets ({} bytes) from the client, {} ({} bytes) from the server",
        tally.from_a, tally.bytes_a, tally.from_b, tally.bytes_b
    );
    let count = |d: &str, what: &str| record[d][what].as_u64().unwrap_or(0);
    let counted =
        [count("orig", "packets"), count("reply", "packets"), count("orig", "bytes"), count("reply", "bytes")];
    let captured = [tally.from_a, tally.from_b, tally.bytes_a, tally.bytes_b];
    if counted != captured {
        println!(
            "capture, first and last packets: {:#?} ... {:#?}",
            &tally.seen[..tally.seen.len().min(8)],
            &tally.seen[tally.seen.len().saturating_sub(12)..]
        );
        println!("daemon log:\n{}", std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default());
    }
    // Frame bytes too: the egress rule's bytes are counted from the
    // Ethernet header, the ingress rule's have it added back.
    assert_eq!(counted, captured, "packets client, server; bytes client, server: {record}");
    stop_daemon(daemon, dir);
}

/// The tc backend on a port's egress twin, straight: its rule goes under
/// clsact's egress hook (not ingress), drops and counts what the host
/// sends out of the device, with bytes counted from the Ethernet header,
/// and is read back by the egress dump and removed with its final counts.
/// A device whose hook is an `ingress` qdisc, which has no egress block,
/// is refused at start with the fix named.
#[test]
fn tc_backend_puts_an_egress_twins_rule_on_the_egress_hook() {
    use flowtable_hw::tc::{Hook, TcBackend, TcConfig};
    use flowtable_hw::{Action, Backend, Cookie, InstallOutcome, MatchFields, PlacementPolicy, RuleSpec};
    if !in_vm("tc_backend_puts_an_egress_twins_rule_on_the_egress_hook") {
        return;
    }
    let host = vmnet::OwnPort::new("oe", 51);
    let owner = 0x1700;
    let dev = host.dev.clone();
    let mut be =
        TcBackend::open(TcConfig { egress: vec![1], ..TcConfig::new(vec![dev.clone(), dev.clone()], owner) }).unwrap();
    assert_eq!((be.hook(0), be.hook(1)), (Some(Hook::Ingress), Some(Hook::Egress)));
    assert_eq!(be.devices().count(), 1, "the twin's device is its port's");
    // The host (here) sends to the client: that direction leaves by the twin.
    let (mut key, dir) = FlowKey::from_v4(host.ip_server, host.ip_client, 5500, 6500, 17);
    key.zone = 0;
    let rule = RuleSpec {
        cookie: Cookie::new(owner, 1, dir),
        matches: MatchFields { key, dir, port: 1 },
        action: Action::Drop,
        policy: PlacementPolicy::Software,
    };
    let out = be.install(&[rule]);
    assert!(matches!(out[0], InstallOutcome::Installed { .. }), "{out:?}");
    let ours = |hook: &str| sh(&format!("tc filter show dev {dev} {hook}")).matches(" handle ").count();
    assert_eq!((ours("ingress"), ours("egress")), (0, 1), "the rule is on egress");

    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (ns, ip_client) = (host.ns.clone(), host.ip_client);
    let receiver = std::thread::spawn(move || {
        enter_netns(&ns);
        let s = UdpSocket::bind((ip_client, 6500)).expect("bind receiver");
        s.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while s.recv(&mut buf).is_ok() {
            n += 1;
        }
        n
    });
    ready_rx.recv().unwrap();
    let s = UdpSocket::bind((host.ip_server, 5500)).unwrap();
    for _ in 0..12 {
        s.send_to(&[0x33; 100], (host.ip_client, 6500)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
    let other = UdpSocket::bind((host.ip_server, 5501)).unwrap();
    for _ in 0..3 {
        other.send_to(&[0x33; 100], (host.ip_client, 6500)).unwrap();
    }
    assert_eq!(receiver.join().unwrap(), 3, "the rule dropped its flow's 12 and let the other 3 go");

    let mut counters = Vec::new();
    be.read_counters(&mut counters).unwrap();
    assert_eq!(counters.len(), 1, "{counters:?}");
    // 100 bytes of data + UDP 8 + IPv4 20 + Ethernet 14, as tc counts them at egress.
    assert_eq!((counters[0].1.packets, counters[0].1.bytes), (12, 12 * 142), "{counters:?}");
    let listed = be.list_filters().unwrap();
    assert_eq!(listed.iter().map(|f| f.port).collect::<Vec<_>>(), [1], "read back as the twin's: {listed:?}");
    let fin = be.remove(&[rule.cookie]);
    let fin = fin[0].as_ref().expect("removed").expect("final counters from the delete echo");
    assert_eq!((fin.packets, fin.bytes), (12, 12 * 142));
    assert_eq!(ours("egress"), 0);
    be.shutdown().unwrap();

    let plain = vmnet::OwnPort::new("oi", 52);
    sh(&format!("tc qdisc add dev {} ingress", plain.dev));
    let err = TcBackend::open(TcConfig { egress: vec![1], ..TcConfig::new(vec![plain.dev.clone(); 2], owner) })
        .err()
        .expect("an ingress qdisc has no egress hook");
    println!("{err}");
    assert!(err.to_string().contains(&format!("{}: its `ingress` qdisc has no egress hook", plain.dev)), "{err}");
    // Why the check: where such a filter lands on this kernel.
    let filed = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tc filter add dev {d} parent ffff:fff3 protocol ip prio 9 flower action pass 2>&1; \
             echo '-- tc filter show dev {d} ingress:'; tc filter show dev {d} ingress",
            d = plain.dev
        ))
        .output()
        .unwrap();
    println!("a filter sent to ffff:fff3 under an ingress qdisc:\n{}", String::from_utf8_lossy(&filed.stdout));
}
