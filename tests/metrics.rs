//! Prometheus metrics of a running daemon (`metrics.listen`), as
//! Prometheus itself sees them: the built binary replays a capture on the
//! sim backend, `/metrics` is scraped over HTTP, checked by `promtool
//! check metrics` and against `flowtable stats --json` of the same moment,
//! and Debian's Prometheus server scrapes it and answers a query.

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_flowtable");

fn capture(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/pcaps");
    let p = dir.join(name);
    assert!(p.is_file(), "capture {} not found: the shared captures must be at {}", name, dir.display());
    p
}

/// A port nobody listens on now (the kernel's pick, released at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A tool of Debian's `prometheus` package; `tests/run-all.sh` installs it.
fn tool(name: &str) -> PathBuf {
    let p = Path::new("/usr/bin").join(name);
    assert!(p.is_file(), "{} not found: install Debian's prometheus package (tests/run-all.sh does)", p.display());
    p
}

/// One HTTP/1.0 GET (the server closes the connection after its answer):
/// status code and body.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("reading the answer of {addr}{path}: {e}"))?;
    let raw = String::from_utf8(raw).map_err(|e| e.to_string())?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(|| format!("no HTTP header in {raw:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    Ok((status, body.to_string()))
}

struct Daemon {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    socket: PathBuf,
    log: PathBuf,
    metrics: SocketAddr,
    config: PathBuf,
    /// An IPFIX collector that takes the records and does nothing with them.
    _collector: std::net::UdpSocket,
}

impl Daemon {
    /// `flowtable run` replaying `pcap` as fast as it goes, every flow
    /// offloaded from its second packet, none expiring during the test.
    fn start(pcap: &str, workers: usize) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ft.sock");
        let log = dir.path().join("daemon.log");
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = dir.path().join("flowtable.json");
        let collector = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let ipfix = collector.local_addr().unwrap();
        let text = format!(
            r#"{{"control": {{"socket": {socket:?}}},
  "records": {{"path": {records:?}}},
  "workers": {workers},
  "timeouts": {{"tcp_handshake_s": 3600, "tcp_established_s": 3600, "tcp_closing_s": 3600,
    "tcp_closed_s": 3600, "udp_s": 3600, "icmp_s": 3600, "other_s": 3600}},
  "classifier": {{"rules": [
    {{"name": "rest", "match": {{}}, "trigger": {{"after_packets": 2}}, "result": {{"offload": {{"type": "pass"}}}}}}]}},
  "offload": {{"poll_interval_ms": 50}},
  "metrics": {{"listen": "{metrics}"}},
  "export": {{"ipfix": [{{"address": "{ipfix}"}}]}},
  "sources": [{{"pcap": {{"path": {pcap:?}, "pace": "fast"}}}}]}}"#,
            socket = socket.display().to_string(),
            records = dir.path().join("records.jsonl").display().to_string(),
            pcap = capture(pcap).display().to_string(),
        );
        std::fs::write(&config, text).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let d = Daemon { child: Some(child), _dir: dir, socket, log, metrics, config, _collector: collector };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&d.socket).is_err() {
            assert!(Instant::now() < deadline, "daemon did not come up; log:\n{}", d.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stats(&self) -> Value {
        let out = Command::new(BIN).args(["stats", "--json", "--socket"]).arg(&self.socket).output().unwrap();
        assert!(
            out.status.success(),
            "flowtable stats: {}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn scrape(&self) -> String {
        let (status, body) =
            http_get(self.metrics, "/metrics").unwrap_or_else(|e| panic!("{e}\nlog:\n{}", self.log_text()));
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Once the capture is read and every offloaded flow's counters are
    /// in: two looks a second apart that agree on everything the packets
    /// moved.
    fn settle(&self) -> Value {
        let moved = |s: &Value| {
            let mut s = s.clone();
            for volatile in ["uptime_s", "now_ns", "control"] {
                s.as_object_mut().unwrap().remove(volatile);
            }
            for volatile in ["counter_reads", "installs_per_s", "removals_per_s"] {
                s["rules"].as_object_mut().unwrap().remove(volatile);
            }
            s["packets"].as_object_mut().unwrap().remove("packets_per_s");
            for src in s["sources"].as_array_mut().unwrap() {
                src.as_object_mut().unwrap().remove("wall_s");
            }
            s
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = self.stats();
        loop {
            std::thread::sleep(Duration::from_millis(1000));
            let now = self.stats();
            let done = now["sources"].as_array().unwrap().iter().all(|s| s["state"] == "done");
            if done && moved(&now) == moved(&last) {
                return now;
            }
            assert!(Instant::now() < deadline, "the daemon did not settle in 30 s: {now}");
            last = now;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `name{labels}` -> value of every sample in a text exposition; labels in
/// the order written.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("not a number in {line}"));
        assert!(out.insert(series.to_string(), v).is_none(), "{series} twice");
    }
    out
}

fn u(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// What each series must be, read from a `stats --json` answer: the
/// metrics' meaning written out a second time, independently of the
/// daemon's own mapping.
fn expected(st: &Value) -> BTreeMap<String, f64> {
    let mut e = BTreeMap::new();
    let mut put = |k: String, v: f64| {
        e.insert(k, v);
    };
    let backend = st["rules"]["backend"].as_str().unwrap();
    let get = |m: &Value, k: &str| m.get(k).map_or(0.0, u);
    put("flowtable_config_generation".into(), u(&st["config"]["generation"]));
    put("flowtable_config_reloads_refused_total".into(), u(&st["config"]["reloads_refused"]));
    for stage in ["tracking", "software", "queued", "installing", "offloaded", "removing", "refused"] {
        put(format!("flowtable_flows{{stage=\"{stage}\"}}"), get(&st["flows"]["by_stage"], stage));
    }
    for p in ["hardware", "kernel-software", "mixed", "software"] {
        put(format!("flowtable_flows_by_placement{{placement=\"{p}\"}}"), get(&st["flows"]["by_placement"], p));
    }
    put("flowtable_table_capacity_flows".into(), u(&st["flows"]["capacity"]));
    put("flowtable_table_fill_ratio".into(), u(&st["flows"]["fill"]));
    put("flowtable_flows_created_total".into(), u(&st["flows"]["created"]));
    for (reason, n) in st["ended"].as_object().unwrap() {
        put(format!("flowtable_flows_ended_total{{reason=\"{reason}\"}}"), u(n));
    }
    put("flowtable_flows_offloaded_total".into(), u(&st["flows"]["offloaded_total"]));
    put("flowtable_flows_refused_total".into(), u(&st["flows"]["refused_total"]));
    put("flowtable_flows_adopted_total".into(), u(&st["flows"]["adopted_total"]));
    for (reason, n) in st["refusals"].as_object().unwrap() {
        put(format!("flowtable_offload_refusals_total{{reason=\"{reason}\"}}"), u(n));
    }
    let devices = st["rules"]["by_device"].as_object().unwrap();
    for (device, n) in devices {
        put(format!("flowtable_rules{{backend=\"{backend}\",device=\"{device}\"}}"), u(n));
    }
    if devices.is_empty() {
        put(format!("flowtable_rules{{backend=\"{backend}\",device=\"\"}}"), 0.0);
    }
    put(format!("flowtable_rules_capacity{{backend=\"{backend}\"}}"), u(&st["rules"]["capacity"]));
    put("flowtable_offload_queued_flows".into(), u(&st["rules"]["queued"]));
    for (name, field) in [
        ("rules_installed", "installed"),
        ("rules_removed", "removed"),
        ("rule_remove_errors", "remove_errors"),
        ("rule_dumps", "counter_reads"),
        ("rule_dump_errors", "counter_errors"),
    ] {
        put(format!("flowtable_{name}_total{{backend=\"{backend}\"}}"), u(&st["rules"][field]));
    }
    let c = &st["rules"]["counted"];
    for (what, all, hw) in [("packets", "packets", "hw_packets"), ("bytes", "bytes", "hw_bytes")] {
        put(format!("flowtable_rule_{what}_total{{backend=\"{backend}\",counted_by=\"hardware\"}}"), u(&c[hw]));
        put(
            format!("flowtable_rule_{what}_total{{backend=\"{backend}\",counted_by=\"kernel-software\"}}"),
            u(&c[all]) - u(&c[hw]),
        );
    }
    let p = &st["packets"];
    for (name, field) in [
        ("received_packets", "received"),
        ("received_bytes", "bytes"),
        ("software_packets", "software"),
        ("software_bytes", "software_bytes"),
        ("nic_packets", "nic"),
        ("nic_bytes", "nic_bytes"),
        ("tap_skipped_packets", "tap_skipped"),
        ("slipped_packets", "slipped"),
    ] {
        put(format!("flowtable_{name}_total"), u(&p[field]));
    }
    for reason in [
        "unsupported-link-type",
        "truncated-link",
        "non-ip",
        "truncated-ip",
        "bad-ip-version",
        "bad-ip-header",
        "truncated-transport",
        "bad-transport-header",
    ] {
        put(format!("flowtable_skipped_packets_total{{reason=\"{reason}\"}}"), get(&p["skipped"], reason));
    }
    for (reason, n) in p["untracked"].as_object().unwrap() {
        put(format!("flowtable_untracked_packets_total{{reason=\"{reason}\"}}"), u(n));
    }
    for s in st["sources"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        put(format!("flowtable_source_running{{source=\"{name}\"}}"), f64::from(s["state"] == "running"));
        put(format!("flowtable_source_packets_total{{source=\"{name}\"}}"), u(&s["packets"]));
        put(format!("flowtable_source_bytes_total{{source=\"{name}\"}}"), u(&s["bytes"]));
    }
    let r = &st["records"];
    put("flowtable_records_exported_total{sink=\"file\"}".into(), u(&r["written"]));
    put("flowtable_records_dropped_total{sink=\"file\"}".into(), u(&r["lost"]));
    put("flowtable_records_errors_total{sink=\"file\"}".into(), u(&r["errors"]));
    for c in st["export"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        put(format!("flowtable_records_exported_total{{sink=\"{name}\"}}"), u(&c["exported"]));
        put(format!("flowtable_records_dropped_total{{sink=\"{name}\"}}"), u(&c["dropped"]));
        put(format!("flowtable_records_errors_total{{sink=\"{name}\"}}"), u(&c["errors"]));
    }
    put("flowtable_records_file_rotations_total".into(), u(&r["rotations"]));
    put("flowtable_event_subscribers".into(), u(&st["subscribers"]));
    put("flowtable_control_requests_total".into(), u(&st["control"]["requests"]));
    put("flowtable_control_cpu_seconds_total".into(), u(&st["control"]["cpu_s"]));
    put("flowtable_uptime_seconds".into(), u(&st["uptime_s"]));
    e
}

#[test]
fn metrics_pass_promtool_and_match_stats_of_the_same_moment() {
    let promtool = tool("promtool");
    let d = Daemon::start("1kxun.pcap", 2);
    let before = d.settle();
    // The metrics are gathered once a second: wait past one gathering, so
    // the scrape shows a moment between the two `stats` around it.
    std::thread::sleep(Duration::from_millis(1300));
    let text = d.scrape();
    let after = d.stats();

    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics complained:\n{said}\n{text}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(text.contains(&format!("# HELP {name} ")), "no HELP for {name}");
        assert!(text.contains(&format!("# TYPE {name} ")), "no TYPE for {name}");
    }

    let got = samples(&text);
    let (lo, hi) = (expected(&before), expected(&after));
    assert_eq!(got.keys().collect::<Vec<_>>(), lo.keys().collect::<Vec<_>>(), "series differ from what stats holds");
    let mut exact = 0;
    for (series, v) in &got {
        let (a, b) = (lo[series], hi[series]);
        // Settled: what the packets moved is the same in both looks, so
        // the scrape must show exactly it; what runs on with the clock
        // (uptime, counter reads, control requests) lies between them.
        assert!(a.min(b) <= *v && *v <= a.max(b), "{series} = {v}: stats said {a} before and {b} after");
        if a == b {
            assert_eq!(*v, a, "{series}");
            exact += 1;
        }
    }
    assert!(exact + 4 >= got.len(), "only {exact} of {} series were settled", got.len());
    // The capture went through: counted by the NIC and by software, the
    // rules' own tally matching what the in-process NIC took.
    let received = got["flowtable_received_packets_total"];
    assert!(received > 1000.0, "{received}");
    assert_eq!(received, got["flowtable_software_packets_total"] + got["flowtable_nic_packets_total"]);
    assert!(got["flowtable_nic_packets_total"] > 0.0);
    assert_eq!(
        got["flowtable_rule_packets_total{backend=\"sim\",counted_by=\"hardware\"}"],
        got["flowtable_nic_packets_total"]
    );
    assert_eq!(
        got["flowtable_rule_bytes_total{backend=\"sim\",counted_by=\"hardware\"}"],
        got["flowtable_nic_bytes_total"]
    );
    assert_eq!(
        got["flowtable_received_bytes_total"],
        got["flowtable_software_bytes_total"] + got["flowtable_nic_bytes_total"]
    );
    let live: f64 = got.iter().filter(|(k, _)| k.starts_with("flowtable_flows{")).map(|(_, v)| v).sum();
    assert_eq!(live, u(&after["flows"]["live"]));
    assert!(got["flowtable_rules{backend=\"sim\",device=\"port0\"}"] > 0.0, "{text}");

    // Other paths are told where the metrics are; other methods refused.
    let (status, body) = http_get(d.metrics, "/nothing").unwrap();
    assert!(status == 404 && body.contains("/metrics"), "{status} {body}");
}

#[test]
fn idle_connections_to_the_metrics_port_hold_up_neither_scrapes_nor_the_daemon() {
    let d = Daemon::start("443-curl.pcap", 1);
    // Connections that never send a request, as a stuck scraper's.
    let idle: Vec<TcpStream> = (0..16).map(|_| TcpStream::connect(d.metrics).unwrap()).collect();
    let t = Instant::now();
    let st = d.stats();
    let text = d.scrape();
    assert!(t.elapsed() < Duration::from_secs(3), "stats and a scrape took {:?} beside idle clients", t.elapsed());
    assert!(st["pid"].as_u64().is_some(), "{st}");
    assert!(text.contains("\nflowtable_received_packets_total "), "{text}");
    drop(idle);
}

#[test]
fn a_taken_metrics_port_stops_the_start_naming_the_field() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("flowtable.json");
    let socket = dir.path().join("ft.sock");
    std::fs::write(
        &config,
        format!(
            r#"{{"control": {{"socket": {:?}}}, "metrics": {{"listen": "127.0.0.1:{port}"}}}}"#,
            socket.display().to_string()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon kept running with its metrics port taken");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut said = String::new();
    child.stderr.take().unwrap().read_to_string(&mut said).unwrap();
    assert!(!status.success(), "{said}");
    assert!(
        said.contains(&format!("metrics.listen 127.0.0.1:{port}: cannot serve metrics there"))
            && said.contains("something else listens there"),
        "{said}"
    );
    assert!(!said.contains("panicked"), "{said}");
    assert!(!socket.exists(), "the control socket was left behind");
}

#[test]
fn a_reload_keeps_the_metrics_server_and_says_its_change_waits_for_a_restart() {
    let d = Daemon::start("443-curl.pcap", 1);
    let other = free_port();
    let text = std::fs::read_to_string(&d.config).unwrap();
    let changed = text.replace(&d.metrics.to_string(), &format!("127.0.0.1:{other}"));
    assert_ne!(text, changed);
    std::fs::write(&d.config, changed).unwrap();
    let pid = d.child.as_ref().unwrap().id() as i32;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.stats()["config"]["generation"] != 2 {
        assert!(Instant::now() < deadline, "the reload did not apply; log:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = d.log_text();
    let warned = log.lines().find(|l| l.contains("take effect at the next start")).unwrap_or("");
    assert!(warned.contains("metrics"), "no word that metrics waits for a restart:\n{log}");
    assert!(d.scrape().contains("flowtable_config_generation "), "the old address stopped serving");
    let addr: SocketAddr = format!("127.0.0.1:{other}").parse().unwrap();
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(), "a second server started");
}

/// Debian's Prometheus server, on a free port with its own storage,
/// killed when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let bin = tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: flowtable\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.path().join("prometheus.log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Prometheus { child, addr, _dir: dir, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The instant query's vector result, or why there is none yet.
    fn query(&self, q: &str) -> Result<Vec<Value>, String> {
        let (status, body) = http_get(self.addr, &format!("/api/v1/query?query={q}"))?;
        if status != 200 {
            return Err(format!("status {status}: {body}"));
        }
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_the_daemon_and_answers_a_query() {
    let d = Daemon::start("443-curl.pcap", 1);
    let st = d.settle();
    let received = st["packets"]["received"].as_u64().unwrap();
    assert!(received > 0);
    let prom = Prometheus::start(d.metrics);
    // Prometheus takes a few seconds to start, then scrapes every second.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last: String;
    let value = loop {
        match prom.query("flowtable_received_packets_total") {
            Ok(r) if !r.is_empty() => break r,
            Ok(_) => last = "no sample yet".into(),
            Err(e) => last = e,
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus had no flowtable sample within 60 s ({last}); its log:\n{}\ndaemon log:\n{}",
            prom.log_text(),
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(value.len(), 1, "{value:?}");
    assert_eq!(value[0]["metric"]["job"], "flowtable", "{value:?}");
    assert_eq!(value[0]["metric"]["instance"], d.metrics.to_string(), "{value:?}");
    let got: u64 = value[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert_eq!(got, received, "Prometheus stored {got}, flowtable stats said {received}");
    // The scrape itself was healthy.
    let up = prom.query("up").unwrap();
    assert_eq!(up[0]["value"][1], "1", "{up:?}");
}
