//! The daemon as its users run it: the built `flowtable` binary started
//! with `run --config`, driven through the CLI client commands and raw
//! socket requests, stopped and reloaded with signals. Flows are checked
//! against `flowtable replay --json` of the same capture.

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_flowtable");

fn capture(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/pcaps");
    let p = dir.join(name);
    assert!(p.is_file(), "capture {} not found: the shared captures must be at {}", name, dir.display());
    p
}

/// Flows live for an hour: nothing expires during a test unless asked.
const LONG_TIMEOUTS: &str = r#""timeouts": {"tcp_handshake_s": 3600, "tcp_established_s": 3600, "tcp_closing_s": 3600,
    "tcp_closed_s": 3600, "udp_s": 3600, "icmp_s": 3600, "other_s": 3600}"#;

/// Every flow offloaded (pass) from its second packet.
const OFFLOAD_AFTER_TWO: &str = r#""classifier": {"rules": [
    {"name": "rest", "match": {}, "trigger": {"after_packets": 2}, "result": {"offload": {"type": "pass"}}}]},
  "offload": {"poll_interval_ms": 50}"#;

struct Daemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
    socket: PathBuf,
    config: PathBuf,
    records: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Starts `flowtable run` with a configuration made of `sections`
    /// (JSON members) plus socket and records paths in a temp dir, and
    /// waits until it answers.
    fn start(sections: &str) -> Daemon {
        let d = Daemon::spawn(sections);
        d.wait_ready();
        d
    }

    fn spawn(sections: &str) -> Daemon {
        Daemon::spawn_rotating(sections, 0, 3)
    }

    /// As `spawn`, with the records file rotated past `rotate_bytes`, `keep` kept.
    fn spawn_rotating(sections: &str, rotate_bytes: u64, keep: u32) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("ft.sock");
        let records = dir.path().join("records.jsonl");
        let config = dir.path().join("flowtable.json");
        let log = dir.path().join("daemon.log");
        let text = Daemon::config_text(sections, &socket, &records)
            .replace(r#""rotate_bytes": 0, "keep": 3"#, &format!(r#""rotate_bytes": {rotate_bytes}, "keep": {keep}"#));
        std::fs::write(&config, text).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon { child: Some(child), dir, socket, config, records, log }
    }

    fn config_text(sections: &str, socket: &Path, records: &Path) -> String {
        let mut text = format!(
            r#"{{"control": {{"socket": {:?}}}, "records": {{"path": {:?}, "rotate_bytes": 0, "keep": 3}}"#,
            socket.display().to_string(),
            records.display().to_string()
        );
        if !sections.trim().is_empty() {
            text.push_str(",\n");
            text.push_str(sections);
        }
        text.push('}');
        text
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "daemon did not come up; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a client command against this daemon.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN).args(args).arg("--socket").arg(&self.socket).output().unwrap()
    }

    /// A client command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "flowtable {args:?} failed: {}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    fn stats(&self) -> Value {
        self.json(&["stats"])
    }

    /// Waits until every source is done.
    fn wait_sources_done(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.stats();
            if s["sources"].as_array().unwrap().iter().all(|src| src["state"] != "running") {
                return s;
            }
            assert!(Instant::now() < deadline, "sources still running: {s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn all_flows(&self) -> Value {
        self.json(&["flows", "--top", "10000"])
    }

    fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn terminate(&mut self) {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "daemon exited with {status}; log:\n{}", self.log_text());
                return;
            }
            assert!(Instant::now() < deadline, "daemon ignored SIGTERM; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Records written so far, from the file and its rotations.
    fn records(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("records.jsonl"))
            .collect();
        files.sort();
        files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<Value>>()
            })
            .collect()
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

/// What identifies a flow across runs: its endpoints as the initiator sees them.
fn flow_key(v: &Value) -> String {
    format!(
        "{} {}:{} > {}:{} vlan {}",
        v["proto"],
        v["src"],
        v["sport"],
        v["dst"],
        v["dport"],
        v["vlan"].as_u64().unwrap_or(0)
    )
}

/// Per flow: (orig packets, orig bytes, reply packets, reply bytes).
type Counts = BTreeMap<String, Vec<(u64, u64, u64, u64)>>;

fn counts_of_records(records: &[Value]) -> Counts {
    let mut m = Counts::new();
    for r in records {
        let c = (
            r["orig"]["packets"].as_u64().unwrap(),
            r["orig"]["bytes"].as_u64().unwrap(),
            r["reply"]["packets"].as_u64().unwrap(),
            r["reply"]["bytes"].as_u64().unwrap(),
        );
        m.entry(flow_key(r)).or_default().push(c);
    }
    m.values_mut().for_each(|v| v.sort());
    m
}

/// Equal counts, or a panic listing the flows that differ.
fn assert_counts_equal(got: &Counts, want: &Counts) {
    let diff: Vec<String> = want
        .keys()
        .chain(got.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .map(|k| format!("{k}: got {:?}, want {:?}", got.get(k), want.get(k)))
        .collect();
    assert!(diff.is_empty(), "{} flows differ:\n{}", diff.len(), diff.join("\n"));
}

fn counts_of_listing(page: &Value) -> Counts {
    let mut m = Counts::new();
    for f in page["flows"].as_array().unwrap() {
        let c = (
            f["orig_packets"].as_u64().unwrap(),
            f["orig_bytes"].as_u64().unwrap(),
            f["reply_packets"].as_u64().unwrap(),
            f["reply_bytes"].as_u64().unwrap(),
        );
        m.entry(flow_key(f)).or_default().push(c);
    }
    m.values_mut().for_each(|v| v.sort());
    m
}

/// `flowtable replay FILE --config C --json`: the records and the summary line.
fn replay(file: &Path, config: &Path) -> (Vec<Value>, Value) {
    let out = Command::new(BIN).arg("replay").arg(file).arg("--config").arg(config).arg("--json").output().unwrap();
    assert!(out.status.success(), "replay failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut lines: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let summary = lines.pop().unwrap();
    (lines, summary)
}

fn pcap_source(name: &str, pace: &str) -> String {
    format!(r#""sources": [{{"pcap": {{"path": {:?}, "pace": "{pace}"}}}}]"#, capture(name).display().to_string())
}

/// The daemon's flows, once the hardware counters of every flow have been
/// read, equal the replay's records of the same capture.
fn wait_for_counts(d: &Daemon, expected: &Counts) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = d.all_flows();
        let got = counts_of_listing(&page);
        if &got == expected {
            return page;
        }
        if Instant::now() > deadline {
            let missing: Vec<_> = expected.iter().filter(|(k, v)| got.get(*k) != Some(v)).take(5).collect();
            panic!("daemon flows differ from the replay; first differences (expected): {missing:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn flows_of_a_capture_match_its_replay_and_queries_sort_filter_and_page() {
    let file = "teams.pcap";
    let d = Daemon::start(&format!("{OFFLOAD_AFTER_TWO}, {LONG_TIMEOUTS}, {}", pcap_source(file, "fast")));
    let (records, summary) = replay(&capture(file), &d.config);
    assert!(records.len() > 50, "the capture has many flows");
    let stats = d.wait_sources_done();
    let expected = counts_of_records(&records);
    let page = wait_for_counts(&d, &expected);
    assert_eq!(page["total"].as_u64().unwrap() as usize, records.len());

    // Stats agree with the replay's summary and with the listing.
    let stats_after = d.stats();
    assert_eq!(stats["packets"]["received"], summary["summary"]["packets"]);
    assert_eq!(stats_after["flows"]["live"].as_u64().unwrap() as usize, records.len());
    assert_eq!(stats_after["flows"]["created"], summary["engine"]["flows_created"]);
    let by_stage: u64 =
        stats_after["flows"]["by_stage"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(by_stage as usize, records.len());
    let offloaded = stats_after["flows"]["by_stage"]["offloaded"].as_u64().unwrap();
    assert!(offloaded > 0);
    assert_eq!(stats_after["rules"]["live"].as_u64().unwrap(), 2 * offloaded, "two rules per offloaded flow");
    assert_eq!(stats_after["flows"]["by_placement"]["hardware"].as_u64().unwrap(), offloaded);
    assert_eq!(stats_after["rules"]["backend"], "sim");
    let nic: u64 = records
        .iter()
        .map(|r| r["orig"]["hw_packets"].as_u64().unwrap() + r["reply"]["hw_packets"].as_u64().unwrap())
        .sum();
    assert_eq!(stats_after["packets"]["nic"].as_u64().unwrap(), summary["summary"]["nic_packets"].as_u64().unwrap());
    assert!(nic > 0);

    // Sorted: the top 5 by packets are the replay's five largest.
    let top = d.json(&["flows", "--top", "5", "--sort", "packets"]);
    let got: Vec<u64> = top["flows"].as_array().unwrap().iter().map(|f| f["packets"].as_u64().unwrap()).collect();
    let mut want: Vec<u64> = records
        .iter()
        .map(|r| r["orig"]["packets"].as_u64().unwrap() + r["reply"]["packets"].as_u64().unwrap())
        .collect();
    want.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(got, want[..5]);
    let by_bytes = d.json(&["flows", "--top", "3", "--sort", "bytes"]);
    let b: Vec<u64> = by_bytes["flows"].as_array().unwrap().iter().map(|f| f["bytes"].as_u64().unwrap()).collect();
    assert!(b.windows(2).all(|w| w[0] >= w[1]), "{b:?}");
    for sort in ["rate", "age"] {
        let p = d.json(&["flows", "--top", "4", "--sort", sort]);
        assert_eq!(p["flows"].as_array().unwrap().len(), 4, "{sort}");
    }

    // Filtered: by protocol, by port, by stage and placement.
    let udp = records.iter().filter(|r| r["proto"] == 17).count();
    assert_eq!(d.json(&["flows", "--filter", "proto=udp", "--top", "10000"])["total"].as_u64().unwrap() as usize, udp);
    let https = records.iter().filter(|r| r["sport"] == 443 || r["dport"] == 443).count();
    let p443 = d.json(&["flows", "--filter", "port=443", "--top", "10000"]);
    assert_eq!(p443["total"].as_u64().unwrap() as usize, https);
    assert!(p443["flows"].as_array().unwrap().iter().all(|f| f["sport"] == 443 || f["dport"] == 443));
    let tcp_not_443 = records.iter().filter(|r| r["proto"] == 6 && r["sport"] != 443 && r["dport"] != 443).count();
    assert_eq!(
        d.json(&["flows", "--filter", "proto=tcp,port!=443", "--top", "10000"])["total"].as_u64().unwrap() as usize,
        tcp_not_443
    );
    assert_eq!(
        d.json(&["flows", "--filter", "stage=offloaded placement=hardware"])["total"].as_u64().unwrap(),
        offloaded
    );
    let bad = d.cli(&["flows", "--filter", "colour=red"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("filter: column 1: unknown field \"colour\""), "{err}");

    // Paged: pages of 7 put together are the whole listing, in order.
    let whole: Vec<Value> = d.all_flows()["flows"].as_array().unwrap().iter().map(|f| f["id"].clone()).collect();
    let mut paged = Vec::new();
    let mut offset = 0;
    loop {
        let p = d.json(&["flows", "--top", "7", "--offset", &offset.to_string()]);
        let ids: Vec<Value> = p["flows"].as_array().unwrap().iter().map(|f| f["id"].clone()).collect();
        if ids.is_empty() {
            break;
        }
        offset += ids.len();
        paged.extend(ids);
    }
    assert_eq!(paged, whole);

    // Human output: a table with units and a footer.
    let text = d.ok(&["flows", "--top", "3"]);
    assert!(text.trim_start().starts_with("id") && text.contains("bytes") && text.contains("rate"), "{text}");
    assert!(text.contains("B ") || text.contains("KiB") || text.contains("MiB"), "{text}");
    assert!(text.contains(&format!("3 of {} flows, by bytes", records.len())), "{text}");
    let stats_text = d.ok(&["stats"]);
    for want in ["flows", "by stage", "by placement", "rules     sim", "refusals", "packets", "skipped", "records"] {
        assert!(stats_text.contains(want), "stats lacks {want:?}:\n{stats_text}");
    }
}

#[test]
fn one_flow_in_full_and_control_of_context_and_offload() {
    let d = Daemon::start(&format!("{OFFLOAD_AFTER_TWO}, {LONG_TIMEOUTS}, {}", pcap_source("teams.pcap", "fast")));
    d.wait_sources_done();
    std::thread::sleep(Duration::from_millis(200));
    let top = d.json(&["flows", "--top", "1", "--filter", "stage=offloaded"]);
    let f = &top["flows"][0];
    let id = f["id"].as_u64().unwrap().to_string();

    // Everything about one flow: counters split, rules with their cookies.
    let v = d.json(&["flow", &id]);
    assert_eq!(v["id"].as_u64().unwrap().to_string(), id);
    assert_eq!(v["stage"], "offloaded");
    assert_eq!(v["backend"], "sim");
    assert_eq!(v["placement"], "hardware");
    assert_eq!(v["rules"].as_array().unwrap().len(), 2);
    assert!(
        v["rules"][0].as_str().unwrap().starts_with("465442"),
        "cookies start with the magic FTB: {}",
        v["rules"][0]
    );
    assert_eq!(v["packets"], f["packets"]);
    let hw = v["orig"]["hw_packets"].as_u64().unwrap() + v["reply"]["hw_packets"].as_u64().unwrap();
    let sw = v["orig"]["sw_packets"].as_u64().unwrap() + v["reply"]["sw_packets"].as_u64().unwrap();
    assert_eq!(hw + sw, v["packets"].as_u64().unwrap());
    let text = d.ok(&["flow", &id]);
    for want in ["stage", "offload", "pass on sim", "rules", "software", "hardware"] {
        assert!(text.contains(want), "flow text lacks {want:?}:\n{text}");
    }

    // Context: label, verdict, metadata; then found by the label filter.
    let out = d.json(&["label", &id, "app=teams", "team=blue", "--label", "video-call", "--verdict", "software"]);
    assert_eq!(out["context"]["label"], "video-call");
    let v = d.json(&["flow", &id]);
    assert_eq!(v["context"]["label"], "video-call");
    assert_eq!(v["context"]["verdict"], "software");
    assert_eq!(v["context"]["metadata"]["app"], "teams");
    assert_eq!(v["context"]["metadata"]["team"], "blue");
    let labelled = d.json(&["flows", "--filter", "label=video-call"]);
    assert_eq!(labelled["total"], 1);
    assert_eq!(labelled["flows"][0]["id"].as_u64().unwrap().to_string(), id);
    let too_long = "x".repeat(300);
    let out = d.cli(&["label", &id, "--label", &too_long]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid-context"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The verdict `software` took the offloaded flow back to software:
    // its rules go, as with unoffload.
    let rules_before = d.stats()["rules"]["live"].as_u64().unwrap() + 2;
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.json(&["flow", &id])["stage"] != "software" {
        assert!(Instant::now() < deadline, "still not in software: {}", d.json(&["flow", &id]));
        std::thread::sleep(Duration::from_millis(20));
    }
    let v = d.json(&["flow", &id]);
    assert_eq!(v["rules"].as_array().unwrap().len(), 0);
    assert_eq!(d.stats()["rules"]["live"].as_u64().unwrap(), rules_before - 2);
    let again = d.cli(&["unoffload", &id]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("wrong-stage"));

    // Offload with an action of our choosing: handed to the offload thread.
    let out = d.json(&["offload", &id, "--action", "mark:0x7"]);
    assert_eq!(out["stage"], "offloaded", "the answer waits for the outcome: {out}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = d.json(&["flow", &id]);
        if v["stage"] == "offloaded" {
            assert_eq!(v["offload"]["action"]["type"], "mark");
            assert_eq!(v["offload"]["action"]["mark"], 7);
            assert_eq!(v["rules"].as_array().unwrap().len(), 2);
            break;
        }
        assert!(Instant::now() < deadline, "not installed: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(d.stats()["rules"]["live"].as_u64().unwrap(), rules_before);
    // A drop verdict on a flow offloaded with another action replaces its
    // rules (it is not stored and left unapplied); `offload` on an
    // offloaded flow leaves it as it is.
    let out = d.json(&["label", &id, "--verdict", "drop"]);
    assert_eq!(out["stage"], "offloaded", "the answer waits for the new rules: {out}");
    let v = d.json(&["flow", &id]);
    assert_eq!((&v["stage"], &v["offload"]["action"]["type"]), (&"offloaded".into(), &"drop".into()), "{v}");
    assert_eq!(v["rules"].as_array().unwrap().len(), 2, "{v}");
    let out = d.json(&["label", &id, "--verdict", "offload"]);
    assert_eq!(out["stage"], "offloaded");
    assert_eq!(d.json(&["flow", &id])["offload"]["action"]["type"], "drop");
    assert_eq!(d.stats()["rules"]["live"].as_u64().unwrap(), rules_before);
    let help = String::from_utf8(Command::new(BIN).args(["label", "--help"]).output().unwrap().stdout).unwrap();
    assert!(help.contains("replacing the rules") && help.contains("exits non-zero"), "{help}");

    // The daemon's log names the action as it was written, not as Rust prints it.
    let log = d.log_text();
    let line = log.lines().find(|l| l.contains("offload requested")).unwrap_or_else(|| panic!("not logged:\n{log}"));
    assert!(line.contains("action=mark:0x7") && !line.contains("Mark {"), "{line}");

    // Requests that can't be done say why, and name the flow or port.
    let out = d.cli(&["offload", &id, "--action", "forward:9"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("port 9 does not exist"));
    let out = d.cli(&["offload", "999999", "--action", "drop"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-flow") && err.contains("999999"), "{err}");
    let out = d.cli(&["flow", "999999"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no flow with id 999999"));
    let out = d.cli(&["offload", &id, "--action", "teleport"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give drop, pass"));
}

/// Sends raw bytes and reads one answer line.
fn raw_answer(stream: &mut UnixStream, bytes: &[u8]) -> Value {
    stream.write_all(bytes).unwrap();
    let mut line = String::new();
    BufReader::new(stream.try_clone().unwrap()).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn read_to_end_within(stream: &mut UnixStream, limit: Duration) -> (String, Duration) {
    stream.set_read_timeout(Some(limit)).unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    (String::from_utf8_lossy(&buf).into_owned(), t.elapsed())
}

#[test]
fn bad_requests_get_clear_errors_and_stalled_clients_are_cut_off_without_losing_flows() {
    let d = Daemon::start(&format!("{OFFLOAD_AFTER_TWO}, {LONG_TIMEOUTS}, {}", pcap_source("netflix.pcap", "fast")));
    d.wait_sources_done();
    std::thread::sleep(Duration::from_millis(200));
    let before = d.all_flows();
    let created = d.stats()["flows"]["created"].clone();

    // A stalled client connects first and sends nothing; another sends half
    // a request and stalls. Neither blocks anyone.
    let mut silent = UnixStream::connect(&d.socket).unwrap();
    let mut half = UnixStream::connect(&d.socket).unwrap();
    half.write_all(br#"{"v":1,"id":1,"cm"#).unwrap();
    let started = Instant::now();

    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let a = raw_answer(&mut s, b"this is not json\n");
    assert_eq!(a["ok"], false);
    assert_eq!(a["error"]["code"], "bad-json");
    // The same connection keeps working after an error.
    let a = raw_answer(&mut s, b"{\"v\":1,\"id\":\"p\",\"cmd\":\"ping\"}\n");
    assert_eq!(a["ok"], true);
    assert_eq!(a["id"], "p");
    assert_eq!(a["result"]["pong"], true);
    let a = raw_answer(&mut s, b"{\"v\":1,\"id\":2,\"cmd\":\"reboot\"}\n");
    assert_eq!(a["error"]["code"], "unknown-command");
    assert_eq!(a["id"], 2);
    assert!(a["error"]["message"].as_str().unwrap().contains("reboot"));
    let a = raw_answer(&mut s, b"{\"v\":7,\"id\":3,\"cmd\":\"stats\"}\n");
    assert_eq!(a["error"]["code"], "unsupported-version");
    let a = raw_answer(&mut s, b"{\"v\":1,\"id\":4,\"cmd\":\"flow\",\"flow\":123456789}\n");
    assert_eq!(a["error"]["code"], "no-such-flow");
    let a = raw_answer(&mut s, b"{\"v\":1,\"id\":5,\"cmd\":\"flows\",\"limit\":\"ten\"}\n");
    assert_eq!(a["error"]["code"], "bad-request");
    let a = raw_answer(&mut s, b"{\"v\":1,\"id\":6,\"cmd\":\"flows\",\"limit\":1000000}\n");
    assert_eq!(a["error"]["code"], "bad-request");
    let a = raw_answer(&mut s, b"{\"v\":1,\"id\":7,\"cmd\":\"flows\",\"filter\":\"port=70000\"}\n");
    assert_eq!(a["error"]["code"], "bad-filter");
    assert!(started.elapsed() < Duration::from_secs(3), "answers came while others stalled");

    // A request past 64 KiB is refused and its connection closed.
    let mut big = UnixStream::connect(&d.socket).unwrap();
    let huge = format!("{{\"v\":1,\"cmd\":\"ping\",\"pad\":\"{}\"}}\n", "x".repeat(100 * 1024));
    let _ = big.write_all(huge.as_bytes());
    let (text, _) = read_to_end_within(&mut big, Duration::from_secs(10));
    let a: Value = serde_json::from_str(text.lines().next().expect("an answer before the close")).unwrap();
    assert_eq!(a["error"]["code"], "too-large");

    // The CLI is served while the stalled clients still hang on.
    assert!(d.json(&["stats"])["flows"]["live"].as_u64().unwrap() > 0);

    // The stalled clients are cut off at the request timeout (5 s) with an error.
    for stalled in [&mut silent, &mut half] {
        let (text, _) = read_to_end_within(stalled, Duration::from_secs(15));
        let a: Value = serde_json::from_str(text.lines().next().expect("a timeout answer")).unwrap();
        assert_eq!(a["error"]["code"], "timeout", "{text}");
    }
    let cut_after = started.elapsed();
    assert!(cut_after >= Duration::from_millis(4500) && cut_after < Duration::from_secs(12), "{cut_after:?}");

    // No flow was lost or added by any of it.
    assert_eq!(counts_of_listing(&d.all_flows()), counts_of_listing(&before));
    assert_eq!(d.stats()["flows"]["created"], created);
}

#[test]
fn sigterm_removes_every_rule_and_writes_every_live_flows_record() {
    // Short UDP timeouts: some flows end (and are recorded) before the stop;
    // a small rotation size spreads records over several files.
    let sections = format!(
        r#"{OFFLOAD_AFTER_TWO},
        "timeouts": {{"udp_s": 0.5, "tcp_established_s": 3600, "tcp_handshake_s": 3600, "tcp_closing_s": 3600, "tcp_closed_s": 3600}},
        {}"#,
        pcap_source("teams.pcap", "fast")
    );
    // Rotation after about 4 KiB, 100 files kept: nothing rotated away.
    let mut d = Daemon::spawn_rotating(&sections, 4096, 100);
    d.wait_ready();
    let (records, _) = replay(&capture("teams.pcap"), &d.config);
    d.wait_sources_done();
    // Let the short-lived UDP flows age out.
    std::thread::sleep(Duration::from_millis(1500));
    let stats = d.stats();
    let live = stats["flows"]["live"].as_u64().unwrap();
    let ended = stats["flows"]["ended"].as_u64().unwrap();
    let rules = stats["rules"]["live"].as_u64().unwrap();
    assert!(ended > 0, "some flows ended before the stop: {stats}");
    assert!(live > 0 && rules > 0, "{stats}");
    let listing = d.all_flows();
    let live_ids: Vec<u64> = listing["flows"].as_array().unwrap().iter().map(|f| f["id"].as_u64().unwrap()).collect();

    d.terminate();
    assert!(!d.socket.exists(), "the socket is removed at exit");
    let written = d.records();
    assert!(
        std::fs::read_dir(d.dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("records.jsonl."))
            .count()
            >= 2,
        "records rotated"
    );
    // Every flow has exactly one record: those ended before, and every live one at the stop.
    assert_eq!(written.len() as u64, live + ended);
    assert_eq!(written.len(), records.len(), "as many records as the replay made");
    let shutdown: Vec<&Value> = written.iter().filter(|r| r["end_reason"] == "shutdown").collect();
    assert_eq!(shutdown.len() as u64, live);
    let mut ids: Vec<u64> = shutdown.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    let mut want = live_ids.clone();
    want.sort_unstable();
    assert_eq!(ids, want, "the records at the stop are those of the live flows");
    // Every packet of the capture is in exactly one record, hardware ones included.
    assert_counts_equal(&counts_of_records(&written), &counts_of_records(&records));
    // Offloaded flows' rules were removed: their records say when.
    // (Connections that closed while offloaded had theirs removed at the
    // close, and live on in software until their closing timeout.)
    let offloaded_at_stop =
        listing["flows"].as_array().unwrap().iter().filter(|f| f["stage"] == "offloaded").count() as u64;
    assert_eq!(offloaded_at_stop * 2, rules, "every rule belonged to a live offloaded flow");
    let torn_down = listing["flows"].as_array().unwrap().iter().filter(|f| f["offload"]["removed_ns"].is_u64()).count();
    println!("{offloaded_at_stop} flows offloaded at the stop, {torn_down} torn down at their close before it");
    assert!(shutdown
        .iter()
        .filter(|r| r["offload"].is_object())
        .all(|r| r["offload"]["removed_ns"].as_u64().is_some()));
    let log = d.log_text();
    assert!(log.contains("rules_left=0"), "{log}");
    assert!(log.contains(&format!("rules_removed={rules}")), "{log}");
}

#[test]
fn sighup_applies_a_good_configuration_and_refuses_a_broken_one() {
    // Synthetic traffic paced in real time: new flows keep coming, so the
    // reloaded classifier is seen deciding them.
    let sections = |rule: &str, result: &str, udp_s: &str| {
        format!(
            r#""log": {{"format": "json"}},
            "classifier": {{"rules": [{{"name": "{rule}", "match": {{}}, "result": {result}}}]}},
            "timeouts": {{"udp_s": {udp_s}, "tcp_established_s": 3600, "tcp_handshake_s": 3600, "tcp_closing_s": 3600, "tcp_closed_s": 3600, "icmp_s": 3600}},
            "sources": [{{"synthetic": {{"flows": 1000000, "rate_pps": 2000, "concurrency": 200, "seed": 3, "pace": "timestamps"}}}}]"#
        )
    };
    let mut d = Daemon::start(&sections("first", r#""software""#, "3600"));
    let count = |d: &Daemon, filter: &str| d.json(&["flows", "--filter", filter])["total"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(count(&d, "stage=software") > 0);
    assert_eq!(count(&d, "stage=offloaded"), 0);

    // Broken: a timeout that isn't one. Refused, the field named, nothing changes.
    let good_text = std::fs::read_to_string(&d.config).unwrap();
    let broken = good_text.replace(r#""udp_s": 3600"#, r#""udp_s": -4"#);
    assert_ne!(broken, good_text);
    std::fs::write(&d.config, broken).unwrap();
    let live_before = d.stats()["flows"]["live"].as_u64().unwrap();
    d.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.stats()["config"]["reloads_refused"] != 1 {
        assert!(Instant::now() < deadline, "reload not refused");
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = d.stats();
    assert_eq!(s["config"]["generation"], 1);
    assert_eq!(s["config"]["rules"], serde_json::json!(["first"]));
    assert_eq!(s["config"]["timeouts"]["udp_s"], 3600.0);
    assert!(s["flows"]["live"].as_u64().unwrap() >= live_before, "no flow dropped");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(&d, "stage=offloaded"), 0, "the old classifier still decides");
    let log = d.log_text();
    let refusal: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"].as_str().is_some_and(|m| m.contains("reload refused")))
        .unwrap_or_else(|| panic!("no JSON log line of the refusal:\n{log}"));
    assert_eq!(refusal["level"], "ERROR");
    assert_eq!(refusal["fields"]["field"], "timeouts.udp_s");

    // Good: a new rule, result and timeout apply; every flow stays, and
    // flows already decided keep their decision.
    let good =
        Daemon::config_text(&sections("second", r#"{"offload": {"type": "pass"}}"#, "120"), &d.socket, &d.records);
    std::fs::write(&d.config, good).unwrap();
    let live_before = d.stats()["flows"]["live"].as_u64().unwrap();
    let software_before = count(&d, "stage=software");
    d.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.stats()["config"]["generation"] != 2 {
        assert!(Instant::now() < deadline, "reload not applied:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = d.stats();
    assert_eq!(s["config"]["rules"], serde_json::json!(["second"]));
    assert_eq!(s["config"]["timeouts"]["udp_s"], 120.0);
    assert!(s["flows"]["live"].as_u64().unwrap() >= live_before, "no flow dropped by the reload");
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&d, "stage=offloaded") == 0 {
        assert!(Instant::now() < deadline, "no new flow offloaded by the new rule");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(count(&d, "stage=software") > 0 && software_before > 0, "decided flows stay in software");
    // The flows "first" decided still name it, with the generation that
    // removed it; filtering by its name finds them.
    let by_first = count(&d, "class=first");
    assert!(by_first > 0, "flows decided by the removed rule keep its name");
    let flows = d.json(&["flows", "--filter", "class=first"]);
    let row = &flows["flows"][0];
    assert_eq!(row["class_removed_in_generation"], 2, "{row}");
    d.terminate();
    let records = d.records();
    assert!(!records.is_empty());
    let unnamed: Vec<&Value> = records.iter().filter(|r| !r["class"].is_string()).collect();
    assert!(unnamed.is_empty(), "every record names its rule: {unnamed:?}");
    let (first, second): (Vec<&Value>, Vec<&Value>) = records.iter().partition(|r| r["class"] == "first");
    assert!(!first.is_empty() && !second.is_empty());
    assert!(first.iter().all(|r| r["class_removed_in_generation"] == 2), "{:?}", first[0]);
    assert!(second.iter().all(|r| r["class"] == "second" && r.get("class_removed_in_generation").is_none()));
    assert!(records.iter().all(|r| r["class"] != "(rule removed by reload)"));
}

/// A capture file replayed by the daemon gives records in the capture's
/// own times, the same as `flowtable replay` gives, and stats says so.
#[test]
fn records_of_a_capture_file_carry_the_captures_own_times() {
    for pace in ["fast", "timestamps"] {
        let mut d = Daemon::start(&format!("{LONG_TIMEOUTS}, {}", pcap_source("http.pcapng", pace)));
        let s = d.wait_sources_done();
        assert_eq!(s["sources"][0]["capture_times"], true, "{}", s["sources"]);
        assert!(d.ok(&["stats"]).contains("records in the capture's own times"));
        d.terminate();
        let ours = d.records();
        let out = Command::new(BIN).args(["replay", "--json"]).arg(capture("http.pcapng")).output().unwrap();
        let replayed: Vec<Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v.get("start_ns").is_some())
            .collect();
        assert!(!ours.is_empty() && ours.len() == replayed.len(), "{pace}: {ours:?} / {replayed:?}");
        for r in &ours {
            let twin = replayed
                .iter()
                .find(|x| (&x["src"], &x["sport"], &x["dport"]) == (&r["src"], &r["sport"], &r["dport"]));
            let twin = twin.unwrap_or_else(|| panic!("{pace}: no replayed record like {r}"));
            assert_eq!((&r["start_ns"], &r["end_ns"]), (&twin["start_ns"], &twin["end_ns"]), "{pace}: {r}");
        }
    }
    // Beside a live interface (read by the workers, not the reader), the
    // file's records stay in the daemon's times, as the live ones are, and
    // stats says so.
    let sources = format!(
        r#""sources": [{{"interface": {{"name": "lo", "ingress": 1}}}}, {{"pcap": {{"path": {:?}, "pace": "fast"}}}}]"#,
        capture("http.pcapng").display().to_string()
    );
    let mut d = Daemon::start(&format!("{LONG_TIMEOUTS}, {sources}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let file = loop {
        let s = d.stats();
        let file =
            s["sources"].as_array().unwrap().iter().find(|x| x["name"].as_str().unwrap().starts_with("pcap")).cloned();
        if let Some(f) = file.filter(|f| f["state"] == "done") {
            break f;
        }
        assert!(Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(file["capture_times"], false, "{file}");
    d.terminate();
    let http: Vec<Value> = d.records().into_iter().filter(|r| r["dport"] == 80).collect();
    assert!(!http.is_empty());
    let captured_at = 1_643_129_441_023_341_461u64;
    assert!(http.iter().all(|r| r["start_ns"].as_u64() != Some(captured_at)), "{http:?}");
}

#[test]
fn events_stream_new_classified_offloaded_and_expired_with_records() {
    let sections = format!(
        r#"{OFFLOAD_AFTER_TWO},
        "timeouts": {{"udp_s": 0.3, "icmp_s": 0.3, "tcp_established_s": 0.3, "tcp_handshake_s": 0.3, "tcp_closing_s": 0.3, "tcp_closed_s": 0.3}},
        "sources": [{{"synthetic": {{"flows": 1000000, "rate_pps": 3000, "concurrency": 50, "seed": 5}}}}]"#
    );
    let d = Daemon::start(&sections);
    let out =
        Command::new(BIN).args(["events", "--json", "--count", "400", "--socket"]).arg(&d.socket).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(events.len(), 400);
    let kinds: std::collections::BTreeSet<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    for k in ["new", "classified", "offloaded", "expired"] {
        assert!(kinds.contains(k), "no {k} event in {kinds:?}");
    }
    let expired = events.iter().find(|e| e["event"] == "expired").unwrap();
    assert!(expired["record"]["end_reason"].is_string());
    assert!(expired["record"]["orig"]["packets"].as_u64().unwrap() > 0);
    // Every event is stamped when it happened (conntrack -E): the stream
    // never goes back in time, and an expiry is stamped when the flow
    // ended, its idle timeout after its last packet (the record's end_ns).
    let stamps: Vec<u64> = events.iter().map(|e| e["ts_ns"].as_u64().unwrap_or(0)).collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1] && w[0] > 0), "events out of time order: {stamps:?}");
    for e in events.iter().filter(|e| e["event"] == "expired" && e["record"]["end_reason"] == "idle") {
        let (at, last) = (e["ts_ns"].as_u64().unwrap(), e["record"]["end_ns"].as_u64().unwrap());
        assert!(at >= last + 300_000_000, "an idle expiry stamped before its timeout passed: {e}");
        let line = flowtable::client::event_text(e);
        assert!(
            line.starts_with(&format!("[{}.{:06}] expired", at / 1_000_000_000, at % 1_000_000_000 / 1000)),
            "{line}"
        );
    }
    // An offload's placement in the words of the flows listing.
    let offloaded = events.iter().find(|e| e["event"] == "offloaded").unwrap();
    let line = flowtable::client::event_text(offloaded);
    assert!(line.ends_with(&format!("offloaded   flow {} pass hardware", offloaded["id"])), "{line}");
    // Human lines too.
    let out = Command::new(BIN).args(["events", "--count", "20", "--socket"]).arg(&d.socket).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 20);
    // Each line after its time, as conntrack -E -o timestamp prints it.
    let body = |l: &str| -> String {
        let (ts, rest) = l.split_once("] ").unwrap_or_else(|| panic!("no timestamp: {l}"));
        let secs: f64 = ts.trim_start_matches('[').parse().unwrap_or_else(|_| panic!("bad timestamp: {l}"));
        assert!(secs > 1e9, "{l}");
        rest.to_string()
    };
    assert!(
        text.lines().map(body).all(|l| ["new", "classified", "offloaded", "expired", "refused", "unoffloaded"]
            .iter()
            .any(|k| l.starts_with(k))),
        "{text}"
    );
    // Only the kinds asked for; a new flow's initiator first, as in the
    // JSON event and as `expired` prints it.
    let out = Command::new(BIN)
        .args(["events", "--type", "new,EXPIRED", "--count", "30", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<String> = text.lines().map(body).collect();
    assert_eq!(lines.len(), 30);
    assert!(lines.iter().all(|l| l.starts_with("new ") || l.starts_with("expired ")), "{text}");
    let new = events.iter().find(|e| e["event"] == "new").unwrap();
    let proto = new["proto"].as_u64().unwrap() as u8;
    let ep = |a: &Value, p: &Value| flowtable::report::endpoint(proto, a.as_str().unwrap(), p.as_u64().unwrap() as u16);
    assert!(
        flowtable::client::event_text(new).ends_with(&format!(
            "{} -> {}",
            ep(&new["src"], &new["sport"]),
            flowtable::report::server_text(
                proto,
                new["dst"].as_str().unwrap(),
                new["dport"].as_u64().unwrap() as u16,
                new["icmp_type"].as_u64().map(|t| t as u8),
                new["icmp_code"].as_u64().map(|c| c as u8)
            )
        )),
        "{new}"
    );
    let bad = Command::new(BIN).args(["events", "--type", "gone", "--socket"]).arg(&d.socket).output().unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unknown event kind"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    // Records of expired flows reach the file even with nobody subscribed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.records().is_empty() {
        assert!(Instant::now() < deadline, "no records written");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Subscribers that left are dropped (noticed within a second).
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.stats()["subscribers"] != 0 {
        assert!(Instant::now() < deadline, "a subscriber that left is still counted");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn socket_lifecycle_not_running_stale_and_busy_path() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    // No daemon: the error says so and names the path.
    let out = Command::new(BIN).args(["stats", "--socket"]).arg(&sock).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not running") && err.contains(&*sock.to_string_lossy()), "{err}");

    // A daemon that died left its socket: the next start replaces it.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists() && UnixStream::connect(&stale).is_err());
    let cfg = dir.path().join("stale.json");
    std::fs::write(&cfg, Daemon::config_text(LONG_TIMEOUTS, &stale, &dir.path().join("r.jsonl"))).unwrap();
    let mut child = Command::new(BIN).args(["run", "--config"]).arg(&cfg).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Command::new(BIN).args(["stats", "--socket"]).arg(&stale).output().unwrap().status.success() {
        assert!(Instant::now() < deadline && child.try_wait().unwrap().is_none(), "no start over a stale socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let mut log = String::new();
    child.wait().unwrap();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert!(log.contains("removed a stale socket"), "{log}");

    // A regular file in the way is not replaced.
    let file = dir.path().join("file.sock");
    std::fs::write(&file, "precious").unwrap();
    let cfg = dir.path().join("file.json");
    std::fs::write(&cfg, Daemon::config_text("", &file, &dir.path().join("r2.jsonl"))).unwrap();
    let out = Command::new(BIN).args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a socket"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");

    let d = Daemon::start(LONG_TIMEOUTS);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    // A second daemon on a live socket refuses to start and says why.
    let out = Command::new(BIN).args(["run", "--config"]).arg(&d.config).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("another daemon is serving"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.stats()["flows"]["live"].is_u64(), "the first daemon still serves");

    // A missing interface: the error names the source and the interface.
    let cfg = dir.path().join("iface.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"control": {{"socket": {:?}}}, "sources": [{{"interface": {{"name": "ftnosuch9"}}}}]}}"#,
            dir.path().join("i.sock")
        ),
    )
    .unwrap();
    let out = Command::new(BIN).args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sources[0].interface: ftnosuch9: no such interface"), "{err}");

    // A missing capture names its file.
    let cfg = dir.path().join("nofile.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"control": {{"socket": {:?}}}, "sources": [{{"pcap": {{"path": "/nonexistent/x.pcap"}}}}]}}"#,
            dir.path().join("n.sock")
        ),
    )
    .unwrap();
    let out = Command::new(BIN).args(["run", "--config"]).arg(&cfg).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.pcap"));
}

#[test]
fn exit_when_done_ends_after_the_capture_with_every_record_written() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("ft.sock");
    let records = dir.path().join("records.jsonl");
    let config = dir.path().join("c.json");
    let sections = format!("{OFFLOAD_AFTER_TWO}, {LONG_TIMEOUTS}, {}", pcap_source("netflix.pcap", "fast"));
    std::fs::write(&config, Daemon::config_text(&sections, &socket, &records)).unwrap();
    let out = Command::new(BIN).args(["run", "--exit-when-done", "--config"]).arg(&config).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!socket.exists());
    let written: Vec<Value> =
        std::fs::read_to_string(&records).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let (want, _) = replay(&capture("netflix.pcap"), &config);
    assert_counts_equal(&counts_of_records(&written), &counts_of_records(&want));
}

/// Starts `flowtable run` on `config` and waits up to `limit` for it to
/// end by itself; its exit status and stderr, or a panic if it didn't end.
fn run_until_exit(config: &Path, limit: Duration) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("flowtable run did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status, err)
}

#[test]
fn sigterm_stops_the_daemon_after_its_socket_file_was_removed() {
    let mut d = Daemon::start(LONG_TIMEOUTS);
    std::fs::remove_file(&d.socket).unwrap();
    // Nobody can connect now, which is how the accept thread used to be woken.
    assert!(UnixStream::connect(&d.socket).is_err());
    d.terminate();
    assert!(d.log_text().contains("stopped"), "{}", d.log_text());
}

#[test]
fn records_path_naming_a_fifo_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("records.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let cfg = dir.path().join("fifo.json");
    std::fs::write(&cfg, Daemon::config_text(LONG_TIMEOUTS, &dir.path().join("f.sock"), &fifo)).unwrap();
    let (status, err) = run_until_exit(&cfg, Duration::from_secs(10));
    assert!(!status.success());
    assert!(err.contains("records.path") && err.contains("FIFO") && err.contains(fifo.to_str().unwrap()), "{err}");
    assert!(!dir.path().join("f.sock").exists(), "refused before serving");
}

/// /dev/full as the records file fails every write with ENOSPC, as a full
/// disk does: the failure is logged once, not on every flush, and the
/// records counted as written are those that were (none).
#[test]
fn a_full_records_disk_is_reported_once_and_nothing_counted_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("full.sock");
    // Short timeouts: flows end, and their records are written, all along.
    let sections = format!(
        r#""timeouts": {{"udp_s": 0.2, "tcp_established_s": 0.2, "tcp_handshake_s": 0.2, "tcp_closing_s": 0.2,
            "tcp_closed_s": 0.2, "icmp_s": 0.2, "other_s": 0.2}}, {}"#,
        pcap_source("teams.pcap", "fast")
    );
    let log = dir.path().join("daemon.log");
    let cfg = dir.path().join("full.json");
    std::fs::write(&cfg, Daemon::config_text(&sections, &socket, Path::new("/dev/full"))).unwrap();
    let child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let records = dir.path().join("unused");
    let mut d = Daemon { child: Some(child), dir, socket, config: cfg, records, log };
    d.wait_ready();
    d.wait_sources_done();
    std::thread::sleep(Duration::from_millis(1500));
    let stats = d.stats();
    assert!(stats["flows"]["ended"].as_u64().unwrap() > 10, "{stats}");
    assert_eq!(stats["records"]["written"], 0, "{stats}");
    d.terminate();
    let text = d.log_text();
    let failures = text
        .lines()
        .filter(|l| l.contains("writing flow records failed") || l.contains("writing a flow record failed"))
        .count();
    assert!((1..=2).contains(&failures), "{failures} failure lines:\n{text}");
    assert!(text.contains("records lost so far"), "{text}");
    assert!(text.contains("records_written=0"), "{text}");
}

/// 64 clients that connect and say nothing don't lock others out: a new
/// client closes the longest idle one and is served at once. Subscribers
/// are bounded, and a refused one is told why.
#[test]
fn idle_clients_make_room_and_subscribers_are_bounded() {
    let d = Daemon::start(LONG_TIMEOUTS);
    let mut idle: Vec<UnixStream> = (0..64).map(|_| UnixStream::connect(&d.socket).unwrap()).collect();
    // Long enough for the server to have taken all 64 in, even on a
    // loaded machine (the oldest of them is the one to go first).
    std::thread::sleep(Duration::from_millis(1000));
    let started = Instant::now();
    for _ in 0..3 {
        assert!(d.stats()["flows"]["live"].is_u64());
    }
    assert!(started.elapsed() < Duration::from_secs(3), "served at once: {:?}", started.elapsed());
    // The oldest idle ones were closed, each told why.
    let first = idle.remove(0);
    let mut first = first;
    let (text, waited) = read_to_end_within(&mut first, Duration::from_secs(3));
    assert!(waited < Duration::from_secs(2), "closed, not left to time out");
    let a: Value = serde_json::from_str(text.lines().next().expect("an answer before the close")).unwrap();
    assert_eq!(a["error"]["code"], "timeout");
    assert!(a["error"]["message"].as_str().unwrap().contains("idle"), "{a}");
    drop(idle);
    std::thread::sleep(Duration::from_millis(200));

    let subscribe = |n: usize| -> (UnixStream, Value) {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let a = raw_answer(&mut s, format!("{{\"v\":1,\"id\":{n},\"cmd\":\"subscribe\"}}\n").as_bytes());
        (s, a)
    };
    let subscribers: Vec<(UnixStream, Value)> = (0..16).map(subscribe).collect();
    assert!(
        subscribers.iter().all(|(_, a)| a["ok"] == true),
        "{:?}",
        subscribers.iter().map(|s| &s.1).collect::<Vec<_>>()
    );
    let (_, refused) = subscribe(16);
    assert_eq!(refused["error"]["code"], "busy", "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("16 subscribers"), "{refused}");
    // Other requests are still served.
    assert!(d.stats()["flows"]["live"].is_u64());
    // A subscriber that leaves frees its slot.
    drop(subscribers);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, a) = subscribe(17);
        if a["ok"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "no slot freed: {a}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Each flow's context is bounded (64 entries of 1 KiB), and so is what
/// all of them hold together (`table.max_context_bytes`): filling flows'
/// contexts one after the other is refused, through the real binary, once
/// the total would pass the limit, with the limit named; flows already
/// holding context keep it, and a smaller update still goes in.
#[test]
fn flow_contexts_together_are_bounded() {
    let d = Daemon::start(&format!(
        r#""table": {{"max_context_bytes": 40000}}, {LONG_TIMEOUTS}, {}"#,
        pcap_source("netflix.pcap", "fast")
    ));
    d.wait_sources_done();
    let flows = d.all_flows();
    let ids: Vec<String> =
        flows["flows"].as_array().unwrap().iter().map(|f| f["id"].as_u64().unwrap().to_string()).collect();
    assert!(ids.len() > 20, "enough flows to fill: {}", ids.len());
    let value = "v".repeat(900);
    let entries: Vec<String> = (0..4).map(|i| format!("k{i}={value}")).collect();
    let mut labelled = Vec::new();
    let refusal = ids
        .iter()
        .find_map(|id| {
            let mut args = vec!["label", id.as_str()];
            args.extend(entries.iter().map(String::as_str));
            let out = d.cli(&args);
            if out.status.success() {
                labelled.push(id.clone());
                None
            } else {
                Some(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        })
        .expect("some update is refused before every flow holds 3.9 kB");
    assert!(refusal.contains("invalid-context") && refusal.contains("table.max_context_bytes"), "{refusal}");
    assert!((5..=10).contains(&labelled.len()), "about 40 kB of contexts went in: {}", labelled.len());
    let first = d.json(&["flow", &labelled[0]]);
    assert_eq!(first["context"]["metadata"]["k0"].as_str().map(str::len), Some(900), "kept: {first}");
    let small = d.cli(&["label", &ids[ids.len() - 1], "--label", "x"]);
    assert!(small.status.success(), "a small update still fits: {}", String::from_utf8_lossy(&small.stderr));
}

/// One export sink of the daemon's statistics, by its address.
fn sink<'a>(stats: &'a Value, address: &std::net::SocketAddr) -> &'a Value {
    let want = address.to_string();
    stats["export"].as_array().unwrap().iter().find(|s| s["address"] == want.as_str()).unwrap()
}

/// Every record a sink took is exported, dropped or still pending.
fn assert_sink_accounts(s: &Value) {
    let n = |k: &str| s[k].as_u64().unwrap();
    assert_eq!(n("records"), n("exported") + n("dropped_unsent") + n("dropped_unencodable") + n("pending"), "{s}");
    assert_eq!(n("dropped"), n("dropped_queue_full") + n("dropped_unsent") + n("dropped_unencodable"), "{s}");
}

#[test]
fn export_to_absent_and_stopping_collectors_counts_drops_and_holds_nothing_up() {
    use std::net::{TcpListener, UdpSocket};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    // Ports nothing listens on, TCP and UDP.
    let absent_tcp = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let absent_udp = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // A TCP collector that reads for a while, then stops.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let live = listener.local_addr().unwrap();
    let (stop, bytes) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let collector = {
        let (stop, bytes) = (stop.clone(), bytes.clone());
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let mut buf = [0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(n) = s.read(&mut buf) {
                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            // Listener and connection go: the collector is gone.
        })
    };
    let rate = 4000.0;
    let sections = format!(
        r#""timeouts": {{"udp_s": 0.2, "icmp_s": 0.2, "tcp_established_s": 0.2, "tcp_handshake_s": 0.2, "tcp_closing_s": 0.2, "tcp_closed_s": 0.2, "other_s": 0.2}},
        "sources": [{{"synthetic": {{"flows": 1000000, "rate_pps": {rate}, "concurrency": 100, "seed": 11}}}}],
        "export": {{"ipfix": [
            {{"address": "{absent_tcp}", "transport": "tcp"}},
            {{"address": "{absent_udp}", "transport": "udp"}},
            {{"address": "{live}", "transport": "tcp"}}]}}"#
    );
    let mut d = Daemon::start(&sections);
    let deadline = Instant::now() + Duration::from_secs(15);
    let before = loop {
        let s = d.stats();
        if sink(&s, &live)["exported"].as_u64().unwrap() > 100 && sink(&s, &absent_udp)["errors"].as_u64().unwrap() > 0
        {
            break s;
        }
        assert!(Instant::now() < deadline, "the live collector got no records: {s}\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(50));
    };
    let t0 = Instant::now();
    stop.store(true, Ordering::Relaxed);
    collector.join().unwrap();
    assert!(bytes.load(Ordering::Relaxed) > 0);
    std::thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    let after = d.stats();
    assert!(asked.elapsed() < Duration::from_secs(1), "stats took {:?}", asked.elapsed());
    // The packet rate held while every collector was failing.
    let received = |s: &Value| s["packets"]["received"].as_u64().unwrap();
    let pps = (received(&after) - received(&before)) as f64 / t0.elapsed().as_secs_f64();
    assert!(pps > 0.8 * rate, "{pps:.0} packets/s with the collectors gone, {rate} offered");
    // Nothing listens: every record dropped and counted, none exported.
    let tcp = sink(&after, &absent_tcp);
    assert_eq!(tcp["exported"], 0, "{tcp}");
    assert!(tcp["dropped"].as_u64().unwrap() > 100 && tcp["connected"] == false, "{tcp}");
    assert!(tcp["last_error"].as_str().unwrap().contains("connecting to"), "{tcp}");
    // Over UDP the closed port comes back as send errors, each message's records dropped.
    let udp = sink(&after, &absent_udp);
    assert!(udp["errors"].as_u64().unwrap() > 0 && udp["dropped_unsent"].as_u64().unwrap() > 0, "{udp}");
    // The collector that stopped: what came before was exported, what came
    // after is dropped while the sink tries again.
    let (was, now) = (sink(&before, &live), sink(&after, &live));
    assert!(now["dropped_unsent"].as_u64() > was["dropped_unsent"].as_u64(), "{was}\n{now}");
    assert!(now["exported"].as_u64() >= was["exported"].as_u64() && now["connected"] == false, "{now}");
    for s in after["export"].as_array().unwrap() {
        assert_sink_accounts(s);
        // Each sink was offered every record the main thread had.
        assert_eq!(
            s["records"].as_u64().unwrap() + s["dropped_queue_full"].as_u64().unwrap(),
            sink(&after, &live)["records"].as_u64().unwrap()
                + sink(&after, &live)["dropped_queue_full"].as_u64().unwrap(),
            "{s}"
        );
    }
    assert!(after["flows"]["ended"].as_u64().unwrap() >= tcp["records"].as_u64().unwrap());
    let text = d.ok(&["stats"]);
    assert!(
        text.contains(&format!("export    ipfix {absent_tcp}/tcp: 0 exported")) && text.contains("not connected"),
        "{text}"
    );
    // It stops as promptly as ever, the sinks closed.
    let stopping = Instant::now();
    d.terminate();
    assert!(stopping.elapsed() < Duration::from_secs(5), "stopping took {:?}", stopping.elapsed());
    assert!(d.log_text().contains("flow export stopped"), "{}", d.log_text());
}

/// Commands that did not do what was asked say so and exit non-zero: an
/// offload the backend refuses prints its reason; `events` says when the
/// daemon stopped.
#[test]
fn a_refused_offload_and_a_stopped_event_stream_fail_with_the_reason() {
    let mut d = Daemon::start(&format!(
        r#"{LONG_TIMEOUTS}, "log": {{"format": "json"}}, "backend": {{"kind": "sim", "profile": "refuse-all"}}, {}"#,
        pcap_source("teams.pcap", "fast")
    ));
    d.wait_sources_done();
    let top = d.json(&["flows", "--top", "1"]);
    let id = top["flows"][0]["id"].as_u64().unwrap().to_string();
    // Rates named by their unit (bps means bits to this audience): the
    // mean since the flow began, in bytes and in bits a second.
    let f = &top["flows"][0];
    let (bytes, bits) = (f["mean_bytes_per_s"].as_f64().unwrap(), f["mean_bits_per_s"].as_f64().unwrap());
    assert!(bytes > 0.0 && (bits - 8.0 * bytes).abs() < 1e-6 * bits, "{f}");
    assert!(f.get("rate_bps").is_none(), "{f}");
    let one = d.json(&["flow", &id]);
    assert!(one["mean_bits_per_s"].as_f64().unwrap() > 0.0 && one.get("rate_bps").is_none(), "{one}");
    // The capability report says how a close is seen on this backend.
    assert_eq!(d.stats()["rules"]["tcp_teardown"], "fin-rst");
    // Rates named by their unit, as the flows' are.
    let s = d.stats();
    for (section, name) in [("rules", "installs_per_s"), ("rules", "removals_per_s"), ("packets", "packets_per_s")] {
        assert!(s[section][name].is_f64(), "no {section}.{name}: {s}");
    }
    for (section, old) in [("rules", "install_rate"), ("rules", "remove_rate"), ("packets", "rate_pps")] {
        assert!(s[section].get(old).is_none(), "{section}.{old} is still there: {s}");
    }
    assert!(d.ok(&["stats"]).contains(" rules/s)"), "{}", d.ok(&["stats"]));
    assert!(d.ok(&["stats"]).contains("tcp teardown  fin-rst"));
    let out = d.cli(&["offload", &id, "--action", "mark:0xff"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a refusal is a failure: {err}");
    assert!(err.contains("refused") && err.contains(&id), "{err}");
    assert_eq!(d.json(&["flow", &id])["stage"], "refused");
    // So is a verdict whose offload the backend refuses: said, non-zero.
    let other = top["flows"][0]["id"].as_u64().unwrap();
    let page = d.json(&["flows", "--top", "5", "--filter", "stage=software"]);
    let soft = page["flows"].as_array().unwrap().iter().map(|f| f["id"].as_u64().unwrap()).find(|i| *i != other);
    let soft = soft.expect("a flow in software").to_string();
    let out = d.cli(&["label", &soft, "--verdict", "drop"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a verdict not applied is a failure: {err}");
    assert!(err.contains("the verdict is kept, but its offload was refused"), "{err}");
    // The JSON log too names the action as `--action` takes it.
    let log = d.log_text();
    let asked = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["fields"]["message"] == "offload requested")
        .unwrap_or_else(|| panic!("no JSON log line of the request:\n{log}"));
    assert_eq!(asked["fields"]["action"], "mark:0xff", "{asked}");

    let events = std::process::Command::new(BIN)
        .args(["events", "--socket"])
        .arg(&d.socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Subscribed before the stop (a loaded machine may take its time).
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.stats()["subscribers"] != 1 {
        assert!(Instant::now() < deadline, "events never subscribed");
        std::thread::sleep(Duration::from_millis(20));
    }
    d.terminate();
    let out = events.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "events must fail when the daemon goes: {err}");
    assert!(err.contains("the daemon stopped"), "{err}");
}

/// Waits until no flow has its rules on their way in or out.
fn wait_settled(d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = d.stats();
        let moving =
            ["queued", "installing", "removing"].iter().any(|k| s["flows"]["by_stage"][*k].as_u64().unwrap_or(0) > 0);
        if !moving {
            return;
        }
        assert!(Instant::now() < deadline, "flows still moving: {}", s["flows"]["by_stage"]);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ids_of(page: &Value) -> std::collections::BTreeSet<u64> {
    page["flows"].as_array().unwrap().iter().map(|f| f["id"].as_u64().unwrap()).collect()
}

/// Waits until the records file holds `n` records.
fn wait_records(d: &Daemon, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = d.records();
        if r.len() >= n {
            return r;
        }
        assert!(Instant::now() < deadline, "{} records written, {n} expected", r.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn filters_count_unoffload_and_flush_select_the_same_flows_and_keep_counts_exact() {
    let file = "teams.pcap";
    let mut d = Daemon::start(&format!("{OFFLOAD_AFTER_TWO}, {LONG_TIMEOUTS}, {}", pcap_source(file, "fast")));
    let (records, _) = replay(&capture(file), &d.config);
    d.wait_sources_done();
    wait_for_counts(&d, &counts_of_records(&records));
    wait_settled(&d);

    // --count: the whole table, and what a filter selects.
    let count = |filter: Option<&str>| -> u64 {
        let mut a = vec!["flows", "--count"];
        if let Some(f) = filter {
            a.extend(["--filter", f]);
        }
        let v = d.json(&a);
        let text = d.ok(&a[..]);
        let n = v["count"].as_u64().unwrap();
        assert_eq!(text.trim(), format!("{n} flow{}", if n == 1 { "" } else { "s" }), "{a:?}");
        n
    };
    assert_eq!(count(None) as usize, records.len());
    let udp = records.iter().filter(|r| r["proto"] == 17).count();
    assert_eq!(count(Some("proto=UDP")) as usize, udp);
    let big = records
        .iter()
        .filter(|r| r["orig"]["bytes"].as_u64().unwrap() + r["reply"]["bytes"].as_u64().unwrap() > 10_000)
        .count();
    assert!(big > 0 && big < records.len());
    assert_eq!(count(Some("bytes > 10k")) as usize, big);
    assert_eq!(count(Some("bytes > 10k or not bytes > 10k")) as usize, records.len());

    // unoffload --filter takes back exactly the offloaded flows that
    // `flows --filter` lists, and says how many.
    let expr = "proto=udp or (port=443 and packets >= 10)";
    let listed = d.json(&["flows", "--filter", expr, "--top", "10000"]);
    let selected = ids_of(&listed);
    let offloaded: std::collections::BTreeSet<u64> = listed["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["stage"] == "offloaded")
        .map(|f| f["id"].as_u64().unwrap())
        .collect();
    assert!(!offloaded.is_empty() && offloaded.len() < selected.len(), "the filter selects offloaded flows and others");
    let others_offloaded = count(Some("stage=offloaded")) as usize - offloaded.len();
    assert!(others_offloaded > 0);
    let answer = d.json(&["unoffload", "--filter", expr]);
    assert_eq!(answer["matched"].as_u64().unwrap() as usize, selected.len(), "{answer}");
    assert_eq!(answer["done"].as_u64().unwrap() as usize, offloaded.len(), "{answer}");
    assert_eq!(answer["skipped"].as_u64().unwrap() as usize, selected.len() - offloaded.len(), "{answer}");
    assert_eq!((answer["pending"].as_u64(), answer["failed"].as_u64()), (Some(0), Some(0)), "{answer}");
    let done: std::collections::BTreeSet<u64> =
        answer["flows"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(done, offloaded);
    assert_eq!(count(Some(&format!("stage=offloaded and ({expr})"))), 0);
    assert_eq!(count(Some("stage=offloaded")) as usize, others_offloaded, "flows not selected keep their rules");
    assert_eq!(d.stats()["rules"]["live"].as_u64().unwrap() as usize, 2 * others_offloaded);
    // Again: nothing left to take back, said so.
    let text = d.ok(&["unoffload", "--filter", expr]);
    assert_eq!(
        text.trim(),
        format!("0 flows unoffloaded ({} of the {} selected not offloaded)", selected.len(), selected.len())
    );
    // The counts are still the capture's.
    wait_for_counts(&d, &counts_of_records(&records));

    // flush --filter: the TCP flows end now, each with one record holding
    // exactly its packets, rules and all.
    let tcp: Vec<Value> = records.iter().filter(|r| r["proto"] == 6).cloned().collect();
    let text = d.ok(&["flush", "--filter", "proto=tcp"]);
    assert_eq!(text.trim(), format!("{} flows flushed", tcp.len()));
    let written = wait_records(&d, tcp.len());
    assert_eq!(written.len(), tcp.len());
    assert!(written.iter().all(|r| r["end_reason"] == "evicted" && r["proto"] == 6), "{written:?}");
    assert_counts_equal(&counts_of_records(&written), &counts_of_records(&tcp));
    assert_eq!(count(Some("proto=tcp")), 0);
    assert_eq!(count(None) as usize, records.len() - tcp.len());
    let rules_left = 2 * count(Some("stage=offloaded"));
    assert_eq!(d.stats()["rules"]["live"].as_u64().unwrap(), rules_left);
    assert_eq!(d.stats()["ended"]["evicted"].as_u64().unwrap() as usize, tcp.len());

    // flush: the rest, every rule removed, every flow in exactly one record.
    let answer = d.json(&["flush"]);
    assert_eq!(answer["done"].as_u64().unwrap() as usize, records.len() - tcp.len(), "{answer}");
    assert_eq!(answer["matched"], answer["done"]);
    let written = wait_records(&d, records.len());
    assert_eq!(written.len(), records.len());
    assert_counts_equal(&counts_of_records(&written), &counts_of_records(&records));
    assert_eq!(count(None), 0);
    assert_eq!(d.stats()["rules"]["live"], 0);
    d.terminate();
    assert_eq!(d.records().len(), records.len(), "nothing left to end at the stop");
}

#[test]
fn filters_that_do_not_parse_point_at_the_column() {
    let d = Daemon::start(&format!(r#"{LONG_TIMEOUTS}, "ports": [{{"name": "wan0"}}, {{"name": "lan0"}}]"#));
    for cmd in [&["flows"][..], &["flows", "--count"], &["unoffload"], &["flush"], &["events"]] {
        let mut a = cmd.to_vec();
        a.extend(["--filter", "proto=tcp and bytes >"]);
        let out = d.cli(&a);
        assert!(!out.status.success(), "{a:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(
                "filter: column 22: expected a value after '>'\n  proto=tcp and bytes >\n                       ^"
            ),
            "{a:?}: {err}"
        );
    }
    // Port names are the configuration's.
    assert_eq!(d.json(&["flows", "--count", "--filter", "ingress=lan0 or ingress=wan0"])["count"], 0);
    let out = d.cli(&["flows", "--filter", "ingress=dmz0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("column 9: no port named \"dmz0\"; the ports are wan0, lan0"), "{err}");
    // unoffload needs an id or a filter, not both.
    assert!(!d.cli(&["unoffload"]).status.success());
    assert!(!d.cli(&["unoffload", "5", "--filter", "proto=tcp"]).status.success());
}

#[test]
fn events_filter_keeps_only_the_selected_flows_events() {
    let sections = format!(
        r#"{OFFLOAD_AFTER_TWO},
        "timeouts": {{"udp_s": 0.3, "icmp_s": 0.3, "tcp_established_s": 0.3, "tcp_handshake_s": 0.3, "tcp_closing_s": 0.3, "tcp_closed_s": 0.3}},
        "sources": [{{"synthetic": {{"flows": 1000000, "rate_pps": 3000, "concurrency": 50, "seed": 5}}}}]"#
    );
    let d = Daemon::start(&sections);
    let events = |args: &[&str]| -> Vec<Value> {
        let out =
            Command::new(BIN).arg("events").args(args).args(["--json", "--socket"]).arg(&d.socket).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    // Every event is of a flow the filter selects: the protocol is known
    // from `new` (its key) and `expired` (its record) events.
    let proto_of = |e: &Value| match e["event"].as_str().unwrap() {
        "new" => Some(e["key"].as_str().unwrap().split_whitespace().next().unwrap().to_string()),
        "expired" => Some(if e["record"]["proto"] == 17 { "udp".into() } else { format!("{}", e["record"]["proto"]) }),
        _ => None,
    };
    let udp = events(&["--filter", "proto=udp", "--count", "200"]);
    assert_eq!(udp.len(), 200);
    let protos: std::collections::BTreeSet<String> = udp.iter().filter_map(proto_of).collect();
    assert_eq!(protos, ["udp".to_string()].into(), "only UDP flows' events");
    let kinds: std::collections::BTreeSet<&str> = udp.iter().map(|e| e["event"].as_str().unwrap()).collect();
    for k in ["new", "classified", "offloaded", "expired"] {
        assert!(kinds.contains(k), "no {k} event in {kinds:?}");
    }
    let not_udp = events(&["--filter", "not proto=udp", "--count", "100"]);
    assert!(not_udp.iter().filter_map(proto_of).all(|p| p != "udp"), "{not_udp:?}");
    assert!(not_udp.iter().filter_map(proto_of).count() > 0);
    // A quantity, judged on the record for an expiry.
    let big = events(&["--type", "expired", "--filter", "packets >= 3 and age < 1h", "--count", "30"]);
    assert_eq!(big.len(), 30);
    for e in &big {
        let r = &e["record"];
        assert!(r["orig"]["packets"].as_u64().unwrap() + r["reply"]["packets"].as_u64().unwrap() >= 3, "{e}");
    }
}

/// Flushes while packets flow: flows flushed mid-way start again as new
/// flows, and still every packet read is in exactly one record, rules'
/// counts included, and every flush's count is its records'.
#[test]
fn flushing_under_traffic_loses_and_doubles_no_packet() {
    let sections = format!(
        r#"{OFFLOAD_AFTER_TWO}, {LONG_TIMEOUTS},
        "sources": [{{"synthetic": {{"flows": 4000, "rate_pps": 20000, "concurrency": 400, "seed": 11}}}}]"#
    );
    let mut d = Daemon::start(&sections);
    let mut flushed = 0;
    let mut rounds = 0;
    loop {
        let done = d.stats()["sources"].as_array().unwrap().iter().all(|s| s["state"] != "running");
        if done && rounds >= 3 {
            break;
        }
        let filter = if rounds % 2 == 0 { "proto=udp or stage=offloaded" } else { "packets >= 3" };
        let a = d.json(&["flush", "--filter", filter]);
        assert_eq!(a["pending"], 0, "{a}");
        flushed += a["done"].as_u64().unwrap();
        rounds += 1;
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(flushed > 0 && rounds >= 3, "{rounds} flushes, {flushed} flows");
    println!("{rounds} flushes ended {flushed} flows while packets flowed");
    let stats = d.stats();
    d.terminate();
    let records = d.records();
    let evicted = records.iter().filter(|r| r["end_reason"] == "evicted").count() as u64;
    assert_eq!(evicted, flushed, "one record for each flow a flush counted");
    let sum = |k: &str| -> u64 {
        records.iter().map(|r| r["orig"][k].as_u64().unwrap() + r["reply"][k].as_u64().unwrap()).sum()
    };
    let p = &stats["packets"];
    let not_counted: u64 = ["skipped", "untracked"]
        .iter()
        .flat_map(|k| p[*k].as_object().unwrap().values().map(|v| v.as_u64().unwrap()))
        .sum();
    assert!(p["nic"].as_u64().unwrap() > 0, "some packets were the rules': {p}");
    assert_eq!(sum("packets"), p["received"].as_u64().unwrap() - not_counted, "{p}");
    assert_eq!(sum("hw_packets"), p["nic"].as_u64().unwrap(), "{p}");
    let ids: std::collections::BTreeSet<u64> = records.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), records.len(), "one record per flow");
}

/// The cells of one column of a text table: each row's text that ends
/// where the (right-aligned) header ends, back to the gap before it.
fn text_column(table: &str, header: &str) -> Vec<String> {
    let mut lines = table.lines();
    let head = lines.next().unwrap();
    let end = head.find(header).unwrap_or_else(|| panic!("no {header:?} column:\n{table}")) + header.len();
    lines
        .filter(|l| l.len() >= end && l.starts_with(|c: char| c == ' ' || c.is_ascii_digit()))
        .map(|l| l[..end].rsplit("  ").next().unwrap().trim().to_string())
        .collect()
}

/// ICMP flows show their type, code and echo id, not the id as a port;
/// records and listings carry type and code per direction while the key
/// (ports are the echo id) stays; IP-in-IP shows no ports. Replay's table
/// and summary say `1 packet`.
#[test]
fn icmp_shows_type_code_and_id_and_portless_protocols_no_ports() {
    let sources = format!(
        r#""sources": [{{"pcap": {{"path": {:?}, "pace": "fast"}}}}, {{"pcap": {{"path": {:?}, "pace": "fast"}}}}]"#,
        capture("icmp-tunnel.pcap").display().to_string(),
        capture("4in4tunnel.pcap").display().to_string()
    );
    let mut d = Daemon::start(&format!("{LONG_TIMEOUTS}, {sources}"));
    d.wait_sources_done();
    let text = d.ok(&["flows", "--top", "100"]);
    assert!(!text.contains(":65279") && !text.contains(":0 "), "no port where the protocol has none:\n{text}");
    let page = d.all_flows();
    let flows = page["flows"].as_array().unwrap();
    let icmp: Vec<&Value> = flows.iter().filter(|f| f["proto"] == 1).collect();
    let ipip: Vec<&Value> = flows.iter().filter(|f| f["proto"] == 4).collect();
    assert!(!icmp.is_empty() && !ipip.is_empty(), "{page}");
    for f in &icmp {
        // The key keeps the echo identifier in both ports.
        assert_eq!((f["sport"].as_u64(), f["dport"].as_u64()), (Some(65279), Some(65279)), "{f}");
        let (t, c) = (f["icmp_type"].as_u64().unwrap(), f["icmp_code"].as_u64().unwrap());
        assert!(t == 0 || t == 8, "an echo: {f}");
        let want = format!("{}  {} type {t} code {c} id 65279", f["src"].as_str().unwrap(), f["dst"].as_str().unwrap());
        assert!(text.contains(&want), "{want:?} in:\n{text}");
        let id = f["id"].to_string();
        let one = d.ok(&["flow", &id]);
        let head = format!(
            "flow {id}: icmp {} -> {} type {t} code {c} id 65279",
            f["src"].as_str().unwrap(),
            f["dst"].as_str().unwrap()
        );
        assert!(one.starts_with(&head), "{head:?}:\n{one}");
        assert!(one.contains(&format!("first icmp type {t} code {c}")), "{one}");
        let json = d.json(&["flow", &id]);
        assert_eq!(json["orig"]["icmp_type"].as_u64(), Some(t), "{json}");
    }
    for f in &ipip {
        assert!(f.get("icmp_type").is_none(), "{f}");
        let line = text.lines().find(|l| l.contains(" ipip ")).unwrap();
        assert!(line.contains("69.67.35.146  ") && line.contains("41.202.46.110  "), "{line}");
    }
    // Every flow's record carries what the listing showed.
    d.terminate();
    let records = d.records();
    for f in &icmp {
        let r = records.iter().find(|r| r["id"] == f["id"]).unwrap();
        assert_eq!(r["orig"]["icmp_type"], f["icmp_type"], "{r}");
        assert_eq!(r["orig"]["icmp_code"], f["icmp_code"], "{r}");
        if r["reply"]["packets"].as_u64().unwrap() > 0 {
            // The other direction answers: a reply to a request, or the reverse.
            let (o, p) = (r["orig"]["icmp_type"].as_u64().unwrap(), r["reply"]["icmp_type"].as_u64().unwrap());
            assert_eq!(o + p, 8, "{r}");
        }
        assert_eq!(r["sport"], 65279);
    }
    for r in records.iter().filter(|r| r["proto"] == 4) {
        assert!(r["orig"].get("icmp_type").is_none() && r["sport"] == 0, "{r}");
    }

    // Replay: the same fields, and no ICMP field on other protocols' records.
    let (replayed, _) = replay(&capture("icmp-tunnel.pcap"), &d.config);
    assert!(replayed.iter().all(|r| r["proto"] != 1 || r["orig"]["icmp_type"].is_u64()), "{replayed:?}");
    let (tcp, _) = replay(&capture("teams.pcap"), &d.config);
    let others = tcp.iter().filter(|r| r["proto"] != 1);
    assert!(others.clone().count() > 50);
    assert!(others.into_iter().all(|r| r["orig"].get("icmp_type").is_none() && r["reply"].get("icmp_code").is_none()));
    let out = Command::new(BIN).arg("replay").arg(capture("malformed_icmp.pcap")).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [": 1 packet, ", "top 1 flow by bytes", "218.152.179.54 type 165 code 0"] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    assert!(!text.contains("1 packets"), "{text}");
}

/// `flows` shows the mean since start beside the current rate (an idle
/// flow: a mean, and 0 now), time since the last packet, time left before
/// idle expiry and the part the NIC counted, in the text table and in
/// `--json`; each column in one scale; `stats` prints capacities as the
/// integers they are and `1 rule`.
#[test]
fn flows_show_mean_and_current_rates_used_expires_and_the_nic_part() {
    let d = Daemon::start(&format!("{OFFLOAD_AFTER_TWO}, {LONG_TIMEOUTS}, {}", pcap_source("teams.pcap", "fast")));
    d.wait_sources_done();
    // Past two sample windows and counter reads, nothing moves: every flow is idle now.
    std::thread::sleep(Duration::from_millis(2500));
    let page = d.all_flows();
    let flows = page["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 83);
    let mut nic = 0;
    for f in flows {
        let (mean, now) = (f["mean_bits_per_s"].as_f64().unwrap(), f["current_bits_per_s"].as_f64().unwrap());
        assert!(mean > 0.0 && now == 0.0, "idle: a mean, nothing now: {f}");
        assert_eq!(f["current_packets_per_s"].as_f64(), Some(0.0), "{f}");
        let used = f["used_ns"].as_u64().unwrap();
        assert!(used >= 2_000_000_000, "{f}");
        // Idle deadline: the last packet plus the 3600 s timeout.
        assert_eq!(used + f["expires_in_ns"].as_u64().unwrap(), 3_600_000_000_000, "{f}");
        assert_eq!(used, page["now_ns"].as_u64().unwrap() - f["last_ns"].as_u64().unwrap(), "{f}");
        let one = d.json(&["flow", &f["id"].to_string()]);
        let hw = one["orig"]["hw_bytes"].as_u64().unwrap() + one["reply"]["hw_bytes"].as_u64().unwrap();
        assert_eq!(f["hw_bytes"].as_u64(), Some(hw), "{f}");
        assert_eq!(one["current_bits_per_s"].as_f64(), Some(0.0), "{one}");
        assert!(one["used_ns"].as_u64().unwrap() >= used, "{one}");
        nic += hw;
    }
    assert!(nic > 0, "the NIC counted some");

    let text = d.ok(&["flows", "--top", "100"]);
    for h in ["by NIC", "mean rate", "current rate", "used", "expires"] {
        assert!(text.lines().next().unwrap().contains(h), "{h:?}:\n{text}");
    }
    assert!(text.ends_with("83 of 83 flows, by bytes\n"), "{text}");
    // One scale per column: every cell of a column in its largest value's unit.
    for (col, unit_of) in [
        ("bytes", (|c: &str| c.rsplit(' ').next().unwrap().to_string()) as fn(&str) -> String),
        ("mean rate", |c: &str| c.rsplit(' ').next().unwrap().to_string()),
        ("current rate", |c: &str| c.rsplit(' ').next().unwrap().to_string()),
        ("packets", |c: &str| {
            c.trim_start_matches(|ch: char| ch.is_ascii_digit() || ch == '.' || ch == '<').to_string()
        }),
    ] {
        let cells = text_column(&text, col);
        assert_eq!(cells.len(), 83, "{col}:\n{text}");
        let units: std::collections::BTreeSet<String> = cells.iter().map(|c| unit_of(c)).collect();
        assert_eq!(units.len(), 1, "{col} in one unit: {units:?}\n{text}");
    }
    assert!(text_column(&text, "current rate").iter().all(|c| c == "0.0 bit/s"), "{text}");
    let nic_cells = text_column(&text, "by NIC");
    assert!(nic_cells.iter().all(|c| c.ends_with('%')) && nic_cells.iter().any(|c| c != "0.0%"), "{text}");

    let stats = d.ok(&["stats"]);
    for want in ["(1 rule)", " live of 1048576 (", " live of 65536, "] {
        assert!(stats.contains(want), "{want:?} in:\n{stats}");
    }

    // Traffic going on: the busiest flows carry something now.
    let busy = Daemon::start(
        r#""offload": {"poll_interval_ms": 100},
  "sources": [{"synthetic": {"flows": 1000000, "rate_pps": 2000, "concurrency": 50, "seed": 4, "pace": "timestamps"}}]"#,
    );
    std::thread::sleep(Duration::from_millis(3000));
    let top = busy.json(&["flows", "--top", "5"]);
    let now: Vec<f64> =
        top["flows"].as_array().unwrap().iter().map(|f| f["current_bits_per_s"].as_f64().unwrap()).collect();
    assert!(now.iter().any(|r| *r > 0.0), "the top flows by bytes move now: {top}");
}
