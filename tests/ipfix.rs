//! IPFIX export against real collectors and decoders: `flowtable replay
//! FILE --ipfix ADDR` to Debian's nfcapd, read back with `nfdump -o
//! json`, must give the same flows, packets and IP bytes per direction and
//! the same first and last times to the millisecond as the replay's own
//! JSON records, on IPv4 and IPv6 captures; and Wireshark's IPFIX
//! dissector (`-d udp.port==PORT,cflow`) must decode every message of
//! those exports, templates included, with no malformed packet or expert
//! warning (its sequence analysis included).
//!
//! Needs nfdump and tshark (tests/run-all.sh installs them).

use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_flowtable");

/// IPv4 and IPv6 captures, TCP, UDP, ICMP and others; several link types,
/// VLANs, fragments, truncated packets (badpackets.pcap).
const CAPTURES: &[&str] = &[
    "443-curl.pcap",
    "443-chrome.pcap",
    "443-firefox.pcap",
    "1kxun.pcap",
    "google_ssl.pcap",
    "dns_long_domainname.pcap",
    "BGP_redist.pcap",
    "NTPv4.pcap",
    "IEC104.pcap",
    "amqp.pcap",
    "bfd.pcap",
    "badpackets.pcap",
    "dlt_ppp.pcap",
    "6in6tunnel.pcap",
    "ptpv2.pcap",
    "ftp_failed.pcap",
    "quic-23.pcap",
    "quic_0RTT.pcap",
    "upnp.pcap",
    "smtp-starttls.pcap",
    "syncthing.pcap",
    "dns_fragmented.pcap",
    "stun.pcap",
    "kcp.pcap",
    "http_ipv6.pcap",
];

fn capture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/pcaps").join(name)
}

fn tool(name: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().is_ok_and(|o| o.status.success())
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// nfcapd writing into `dir`, listening on `port`, until dropped.
struct Nfcapd {
    child: Child,
    log: PathBuf,
}

impl Nfcapd {
    fn start(dir: &Path, port: u16) -> Nfcapd {
        let log = dir.with_extension("log");
        let child = Command::new("nfcapd")
            .args(["-w", dir.to_str().unwrap(), "-b", "127.0.0.1", "-p", &port.to_string(), "-t", "2"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("nfcapd runs");
        // Ready once it says so (it binds its socket before).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("Startup") {
            assert!(Instant::now() < deadline, "nfcapd did not start: {}", std::fs::read_to_string(&log).unwrap());
            std::thread::sleep(Duration::from_millis(10));
        }
        Nfcapd { child, log }
    }

    /// Stops it (SIGTERM: the open file is finished) and returns its log.
    fn stop(mut self) -> String {
        // SAFETY: a signal to the child this test started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Nfcapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A datagram and who sent it.
type Datagram = (SocketAddr, Vec<u8>);

/// Every datagram sent to a socket, with its sender, until stopped.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Datagram>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Receiver {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let addr = s.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, st) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    g.lock().unwrap().push((from, buf[..n].to_vec()));
                }
            }
        });
        Receiver { addr, got, stop, thread: Some(thread) }
    }

    fn stop(mut self) -> Vec<Datagram> {
        // What is sent is on loopback already; a moment for the last read.
        std::thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut self.got.lock().unwrap())
    }
}

/// A flow as both sides must tell it: addresses, ports (none for ICMP,
/// which collectors show as type and code), protocol, then per direction
/// packets and IP bytes, then first and last millisecond.
type Facts = (IpAddr, IpAddr, u16, u16, u8, [u64; 4], u64, u64);

fn ports(proto: u8, sport: u64, dport: u64) -> (u16, u16) {
    if proto == 1 || proto == 58 {
        (0, 0)
    } else {
        (sport as u16, dport as u16)
    }
}

fn ours(r: &Value) -> Facts {
    let proto = r["proto"].as_u64().unwrap() as u8;
    let (sp, dp) = ports(proto, r["sport"].as_u64().unwrap(), r["dport"].as_u64().unwrap());
    let d = |k: &str, f: &str| r[k][f].as_u64().unwrap();
    (
        r["src"].as_str().unwrap().parse().unwrap(),
        r["dst"].as_str().unwrap().parse().unwrap(),
        sp,
        dp,
        proto,
        [d("orig", "packets"), d("orig", "ip_bytes"), d("reply", "packets"), d("reply", "ip_bytes")],
        r["start_ns"].as_u64().unwrap() / 1_000_000,
        r["end_ns"].as_u64().unwrap() / 1_000_000,
    )
}

/// Milliseconds since the epoch of nfdump's "2020-02-07T22:05:20.474" (UTC).
fn epoch_ms(s: &str) -> u64 {
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    let (hh, mm, ss, ms) = (n(11, 13), n(14, 16), n(17, 19), n(20, 23));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    (((days * 24 + hh) * 60 + mm) * 60 + ss) as u64 * 1000 + ms as u64
}

fn theirs(f: &Value) -> Facts {
    let proto = f["proto"].as_u64().unwrap() as u8;
    let (sp, dp) = ports(proto, f["src_port"].as_u64().unwrap_or(0), f["dst_port"].as_u64().unwrap_or(0));
    let addr = |v4: &str, v6: &str| f[v4].as_str().or(f[v6].as_str()).unwrap().parse::<IpAddr>().unwrap();
    let n = |k: &str| f[k].as_u64().unwrap_or(0);
    (
        addr("src4_addr", "src6_addr"),
        addr("dst4_addr", "dst6_addr"),
        sp,
        dp,
        proto,
        [n("in_packets"), n("in_bytes"), n("out_packets"), n("out_bytes")],
        epoch_ms(f["first"].as_str().unwrap()),
        epoch_ms(f["last"].as_str().unwrap()),
    )
}

/// The IP bytes of a capture's packets as tshark reads their (outer) IP
/// headers: IPv4 total length, IPv6 payload length and its fixed header.
fn tshark_ip_bytes(file: &Path) -> u64 {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(["-T", "fields", "-E", "separator=|", "-E", "occurrence=f", "-e", "ip.len", "-e", "ipv6.plen"])
        .output()
        .unwrap();
    assert!(out.status.success(), "tshark: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (v4, v6) = l.split_once('|').unwrap_or((l, ""));
            match (v4.parse::<u64>(), v6.parse::<u64>()) {
                (Ok(n), _) => n,
                (_, Ok(n)) => n + 40,
                _ => 0,
            }
        })
        .sum()
}

/// A pcap of the datagrams as UDP over IPv4 to `port`, for tshark.
fn write_pcap(path: &Path, datagrams: &[(SocketAddr, Vec<u8>)], port: u16) {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let file = std::fs::File::create(path).unwrap();
    let header = PcapHeader { datalink: pcap_file::DataLink::ETHERNET, ..PcapHeader::default() };
    let mut w = PcapWriter::with_header(file, header).unwrap();
    // Each exporter's ephemeral source port, renumbered from 40000 in the
    // order first seen: one in the 33434-33534 range reads to Wireshark as
    // a traceroute probe (an expert note the check below would take for a
    // malformed message), and the ports stay apart, so each exporter's
    // messages remain a conversation of their own to Wireshark.
    let mut ports: Vec<u16> = Vec::new();
    for (i, (from, data)) in datagrams.iter().enumerate() {
        let source = match ports.iter().position(|&p| p == from.port()) {
            Some(k) => 40000 + k as u16,
            None => {
                ports.push(from.port());
                40000 + (ports.len() - 1) as u16
            }
        };
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 8 + data.len()) as u16;
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        let sum = ip.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum::<u32>();
        let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&source.to_be_bytes());
        frame.extend_from_slice(&port.to_be_bytes());
        frame.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        frame.extend_from_slice(&[0, 0]);
        frame.extend_from_slice(data);
        let ts = Duration::from_millis(1_700_000_000_000 + i as u64);
        w.write_packet(&PcapPacket::new(ts, frame.len() as u32, &frame)).unwrap();
    }
}

#[test]
fn nfcapd_and_tshark_read_the_same_flows_as_the_json_records() {
    assert!(
        tool("nfcapd") && tool("nfdump"),
        "nfcapd and nfdump are needed: apt-get install nfdump (tests/run-all.sh does)"
    );
    assert!(tool("tshark"), "tshark is needed: apt-get install tshark (tests/run-all.sh does)");
    let work = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let (mut v4, mut v6, mut flows, mut checked_bytes) = (0, 0, 0, 0);
    for (i, name) in CAPTURES.iter().enumerate() {
        let dir = work.path().join(format!("nf{i}"));
        std::fs::create_dir(&dir).unwrap();
        let port = free_udp_port();
        let nfcapd = Nfcapd::start(&dir, port);
        // One replay: its JSON records and its export, to nfcapd and to
        // the receiver that keeps the datagrams for tshark.
        let out = Command::new(BIN)
            .arg("replay")
            .arg(capture(name))
            .args(["--json", "--ipfix", &format!("127.0.0.1:{port}"), "--ipfix", &receiver.addr.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<Value> =
            String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let (records, summary) = lines.split_at(lines.len() - 1);
        let export = summary[0]["export"].as_array().unwrap();
        assert_eq!(export.len(), 2);
        for sink in export {
            assert_eq!(sink["exported"].as_u64(), Some(records.len() as u64), "{name}: {sink}");
            assert_eq!(sink["dropped"].as_u64(), Some(0), "{name}: {sink}");
        }
        // Datagrams on loopback are in nfcapd's socket; let it read them.
        std::thread::sleep(Duration::from_millis(200));
        let log = nfcapd.stop();
        let dump = Command::new("nfdump").env("TZ", "UTC").arg("-R").arg(&dir).args(["-o", "json"]).output().unwrap();
        assert!(dump.status.success(), "{name}: nfdump: {}", String::from_utf8_lossy(&dump.stderr));
        let text = String::from_utf8(dump.stdout).unwrap();
        let collected: Vec<Value> =
            if text.trim().is_empty() { Vec::new() } else { serde_json::from_str(&text).unwrap() };
        let mut a: Vec<Facts> = records.iter().map(ours).collect();
        let mut b: Vec<Facts> = collected.iter().filter(|f| f["type"] == "FLOW").map(theirs).collect();
        a.sort();
        b.sort();
        assert!(!a.is_empty(), "{name}: no records");
        assert_eq!(a.len(), b.len(), "{name}: {} records, nfcapd has {} flows; nfcapd said: {log}", a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y, "{name}: ours, then nfdump's");
        }
        assert!(log.contains("Sequence Errors: 0") || !log.contains("Sequence Errors"), "{name}: {log}");
        // And the IP bytes are what Wireshark reads in the IP headers, on
        // every capture whose every packet is in a flow, but badpackets.pcap,
        // whose IP headers claim more bytes than their frames had on the
        // wire (flowtable counts what was there).
        if summary[0]["summary"]["skipped"].as_object().is_some_and(|m| m.is_empty()) && *name != "badpackets.pcap" {
            let total: u64 = a.iter().map(|f| f.5[1] + f.5[3]).sum();
            assert_eq!(total, tshark_ip_bytes(&capture(name)), "{name}: IP bytes of all flows");
            checked_bytes += 1;
        }
        v4 += a.iter().filter(|f| f.0.is_ipv4()).count();
        v6 += a.iter().filter(|f| f.0.is_ipv6()).count();
        flows += a.len();
    }
    assert!(v4 > 100 && v6 > 30, "IPv4 flows {v4}, IPv6 flows {v6}");
    assert!(checked_bytes >= 20, "IP bytes checked against tshark on {checked_bytes} captures");

    // Every message the receiver got, decoded by Wireshark.
    let datagrams = receiver.stop();
    // Full messages went in trains the kernel cut, padded to one length
    // (the default MTU less IP and UDP headers): nfcapd above and
    // Wireshark below read those too.
    let padded = datagrams.iter().filter(|d| d.1.len() == 1500 - 28).count();
    assert!(padded > 0, "no message of the trains' length among {} datagrams", datagrams.len());
    let port = 4739;
    let pcap = work.path().join("export.pcap");
    write_pcap(&pcap, &datagrams, port);
    let decode = |pcap: &Path| {
        let decoded = Command::new("tshark")
            .arg("-r")
            .arg(pcap)
            .args(["-d", &format!("udp.port=={port},cflow"), "-T", "fields", "-E", "separator=|"])
            .args(["-e", "frame.number", "-e", "cflow.version", "-e", "cflow.flowset_id", "-e", "cflow.template_id"])
            .args(["-e", "_ws.malformed", "-e", "_ws.expert.severity", "-e", "_ws.expert.message"])
            .output()
            .unwrap();
        assert!(decoded.status.success(), "tshark: {}", String::from_utf8_lossy(&decoded.stderr));
        String::from_utf8(decoded.stdout).unwrap()
    };
    // The check sees a broken message: the first template said to have 5
    // fields, so the rest of its set reads as garbage.
    let mut broken = datagrams[0].clone();
    broken.1[20..22].copy_from_slice(&5u16.to_be_bytes());
    let bad = work.path().join("broken.pcap");
    write_pcap(&bad, &[broken], port);
    let said = decode(&bad);
    assert!(said.split('|').skip(4).any(|f| !f.trim().is_empty()), "a cut message passed unnoticed: {said}");
    let text = decode(&pcap);
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), datagrams.len());
    let mut templates = 0;
    let mut data_sets: BTreeMap<String, usize> = BTreeMap::new();
    for r in &rows {
        assert_eq!(r[1], "10", "not read as IPFIX: {r:?}");
        assert!(
            r[4].is_empty() && r[5].is_empty() && r[6].is_empty(),
            "frame {}: malformed or expert info: {r:?}",
            r[0]
        );
        for set in r[2].split(',') {
            if set == "2" {
                templates += 1;
            } else {
                *data_sets.entry(set.to_string()).or_default() += 1;
            }
        }
    }
    assert!(templates >= CAPTURES.len(), "{templates} template sets for {} exports", CAPTURES.len());
    assert!(data_sets.contains_key("256") && data_sets.contains_key("257"), "{data_sets:?}");
    // The data records Wireshark counted are the flows.
    let counted = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args(["-d", &format!("udp.port=={port},cflow"), "-T", "fields", "-e", "cflow.flow_end_reason"])
        .output()
        .unwrap();
    assert!(counted.status.success(), "tshark: {}", String::from_utf8_lossy(&counted.stderr));
    let n: usize = String::from_utf8(counted.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split(',').filter(|s| !s.is_empty()).count())
        .sum();
    assert_eq!(n, flows, "data records Wireshark decoded");
}

/// The active timeout, through the binary: with `export.active_timeout_s`
/// the long flows of a capture give interim records (kind `interim`, end
/// reason `active`) and a final one, in the JSON records and at nfcapd
/// alike; per flow, packets and IP bytes over its records add up to what
/// the same replay without the timeout gives in one record.
#[test]
fn interim_records_add_up_to_each_flow_in_the_json_and_at_the_collector() {
    assert!(tool("nfcapd") && tool("nfdump"), "nfcapd and nfdump are needed: apt-get install nfdump");
    let work = tempfile::tempdir().unwrap();
    let file = capture("teams.pcap");
    let replay = |args: &[&str]| -> Vec<Value> {
        let out = Command::new(BIN).arg("replay").arg(&file).arg("--json").args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<Value> =
            String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        lines[..lines.len() - 1].to_vec()
    };
    // Per flow (by its addresses, ports and protocol): packets and IP bytes
    // each way, and how many records told it.
    type Sums = BTreeMap<(IpAddr, IpAddr, u16, u16, u8), ([u64; 4], usize)>;
    fn add(sums: &mut Sums, f: Facts) {
        let e = sums.entry((f.0, f.1, f.2, f.3, f.4)).or_default();
        for (t, v) in e.0.iter_mut().zip(f.5) {
            *t += v;
        }
        e.1 += 1;
    }
    let whole = replay(&[]);
    assert!(whole.iter().all(|r| r["kind"] == "final"), "without the timeout, one final record per flow");
    let mut want = Sums::new();
    for r in &whole {
        add(&mut want, ours(r));
    }

    let config = work.path().join("active.json");
    std::fs::write(&config, r#"{"export": {"active_timeout_s": 2}}"#).unwrap();
    let dir = work.path().join("nf");
    std::fs::create_dir(&dir).unwrap();
    let port = free_udp_port();
    let nfcapd = Nfcapd::start(&dir, port);
    let parts = replay(&["--config", config.to_str().unwrap(), "--ipfix", &format!("127.0.0.1:{port}")]);
    let interim: Vec<&Value> = parts.iter().filter(|r| r["kind"] == "interim").collect();
    assert!(interim.len() >= 5, "the flows lasting 9 to 25 s give interim records: {}", interim.len());
    assert!(interim.iter().all(|r| r["end_reason"] == "active"));
    assert_eq!(parts.len() - interim.len(), whole.len(), "still one final record per flow");
    let mut got = Sums::new();
    for r in &parts {
        add(&mut got, ours(r));
    }
    let deltas = |s: &Sums| s.iter().map(|(k, v)| (*k, v.0)).collect::<Vec<_>>();
    assert_eq!(deltas(&got), deltas(&want), "per flow, the records add up to the flow");
    assert!(got.values().any(|v| v.1 >= 4), "a long flow told in several records");

    std::thread::sleep(Duration::from_millis(200));
    let log = nfcapd.stop();
    let dump = Command::new("nfdump").env("TZ", "UTC").arg("-R").arg(&dir).args(["-o", "json"]).output().unwrap();
    assert!(dump.status.success(), "nfdump: {}", String::from_utf8_lossy(&dump.stderr));
    let collected: Vec<Value> = serde_json::from_slice(&dump.stdout).unwrap();
    let flows: Vec<&Value> = collected.iter().filter(|f| f["type"] == "FLOW").collect();
    assert_eq!(flows.len(), parts.len(), "nfcapd has every record, interim ones too; it said: {log}");
    let mut at_collector = Sums::new();
    for f in flows {
        add(&mut at_collector, theirs(f));
    }
    assert_eq!(deltas(&at_collector), deltas(&want), "at the collector too");
}
