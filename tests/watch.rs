//! `flowtable watch` in a real terminal: a tmux session runs it against a
//! daemon fed paced synthetic traffic; the captured screen shows the flows
//! and their counters moving, `s` changes the sort, and `q` quits. At
//! 80x24 and 200x50, against the flows of a capture, every row shows its
//! whole id, both ends, bytes, rate and placement as `flows --json` has
//! them, and the wider screen adds the other columns.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_flowtable");

struct Tmux {
    server: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.server, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("tmux must be installed (apt-get install tmux)")
    }

    fn screen(&self) -> String {
        String::from_utf8(self.run(&["capture-pane", "-p", "-t", "watch"]).stdout).unwrap()
    }

    /// Waits until the screen satisfies `want`; returns it.
    fn wait_for(&self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.screen();
            if want(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "screen never showed {what}:\n{s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn alive(&self) -> bool {
        self.run(&["has-session", "-t", "watch"]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_daemon(dir: &Path) -> (Daemon, PathBuf) {
    start_daemon_with(
        dir,
        r#""classifier": {"rules": [{"name": "bypass", "match": {}, "trigger": {"after_packets": 8}, "result": {"offload": {"type": "pass"}}}]},
  "offload": {"poll_interval_ms": 100},
  "sources": [{"synthetic": {"flows": 1000000, "rate_pps": 2000, "concurrency": 100, "seed": 4, "pace": "timestamps"}}]"#,
    )
}

/// A daemon with the configuration's `sections` (JSON members) and a
/// control socket in `dir`.
fn start_daemon_with(dir: &Path, sections: &str) -> (Daemon, PathBuf) {
    let socket = dir.join("ft.sock");
    let config = dir.join("flowtable.json");
    std::fs::write(&config, format!(r#"{{"control": {{"socket": {:?}}}, {sections}}}"#, socket.display().to_string()))
        .unwrap();
    let child = Command::new(BIN).args(["run", "--config"]).arg(&config).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Daemon(child), socket)
}

/// The number after `label` on the screen's summary lines.
fn figure(screen: &str, label: &str) -> u64 {
    let at = screen.find(label).unwrap_or_else(|| panic!("no {label:?} on screen:\n{screen}")) + label.len();
    let digits: String = screen[at..].trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or_else(|_| panic!("no number after {label:?}:\n{screen}"))
}

#[test]
fn watch_shows_flows_updating_changes_sort_and_quits_on_q() {
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, socket) = start_daemon(dir.path());
    let tmux = Tmux { server: format!("flowtable-watch-{}", std::process::id()) };
    let cmd = format!("{BIN} watch --socket {} --interval-ms 300", socket.display());
    let out = tmux.run(&["new-session", "-d", "-s", "watch", "-x", "200", "-y", "30", &cmd]);
    assert!(out.status.success(), "tmux: {}", String::from_utf8_lossy(&out.stderr));

    let first = tmux
        .wait_for("a refresh with flows", |s| s.contains("refresh #") && s.contains("offloaded") && s.contains("top "));
    for want in ["flowtable watch", "packets", "bit/s", "now", "mean", "client", "server", "bypass", "sort: bytes"] {
        assert!(first.contains(want), "screen lacks {want:?}:\n{first}");
    }
    let (refresh, packets) = (figure(&first, "refresh #"), figure(&first, "\npackets"));
    // Counters move as traffic flows and the screen refreshes by itself.
    let later = tmux.wait_for("updated counters", |s| {
        s.contains("refresh #") && figure(s, "refresh #") > refresh + 2 && figure(s, "\npackets") > packets
    });
    assert!(figure(&later, "flows") > 0, "{later}");

    // `s` cycles the sort.
    tmux.run(&["send-keys", "-t", "watch", "s"]);
    tmux.wait_for("sort by packets", |s| s.contains("sort: packets"));

    // `q` quits: the program ends and with it the tmux session.
    tmux.run(&["send-keys", "-t", "watch", "q"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tmux.alive() {
        assert!(Instant::now() < deadline, "watch did not quit on q:\n{}", tmux.screen());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn watch_without_a_daemon_says_so_before_taking_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.sock");
    let out = Command::new(BIN).args(["watch", "--socket"]).arg(&socket).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not running") && err.contains(&*socket.to_string_lossy()), "{err}");
}

/// `flowtable flows --json` of every flow.
fn flows_json(socket: &Path) -> serde_json::Value {
    let out = Command::new(BIN).args(["flows", "--top", "1000", "--json", "--socket"]).arg(socket).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn endpoint(addr: &str, port: u64) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// `n` bytes in the unit a column header names, as its cells show them.
fn in_unit(n: u64, unit: &str) -> String {
    let div = match unit {
        "bytes" => return n.to_string(),
        "KiB" => 1024f64,
        "MiB" => 1024f64 * 1024.0,
        "GiB" => 1024f64 * 1024.0 * 1024.0,
        other => panic!("unexpected bytes unit {other:?}"),
    };
    let x = n as f64 / div;
    if n == 0 {
        "0".into()
    } else if x < 0.05 {
        "<0.1".into()
    } else {
        format!("{x:.1}")
    }
}

/// The table on a watch screen as drawn: its header cells (a unit joined
/// to the word before it: `now Mbit/s`) and each row's cells.
fn cells_of(screen: &str) -> Option<(Vec<String>, Vec<Vec<String>>)> {
    let inner = |l: &str| l.trim().trim_start_matches('│').trim_end_matches('│').to_string();
    let head = screen.lines().find(|l| l.starts_with('│') && l.contains(" client "))?;
    let mut header: Vec<String> = Vec::new();
    for t in inner(head).split_whitespace() {
        match header.last_mut() {
            Some(last) if (last == "now" || last == "mean") && t.ends_with("bit/s") => *last = format!("{last} {t}"),
            _ => header.push(t.to_string()),
        }
    }
    let rows = screen
        .lines()
        .filter(|l| l.starts_with('│'))
        .map(inner)
        .filter(|l| l.split_whitespace().next().is_some_and(|t| t.chars().all(|c| c.is_ascii_digit())))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    Some((header, rows))
}

/// Whether the screen holds a whole frame of `rows` rows: tmux can be read
/// while the terminal is still being drawn, a row cut after its first cells.
fn drawn_whole(screen: &str, rows: usize) -> bool {
    cells_of(screen).is_some_and(|(header, cells)| cells.len() == rows && cells.iter().all(|c| c.len() == header.len()))
}

/// The table on a watch screen: its header cells and each row's cells,
/// keyed by header.
fn table_of(screen: &str) -> (Vec<String>, Vec<std::collections::HashMap<String, String>>) {
    let (header, cells) = cells_of(screen).expect("a table header");
    let rows = cells
        .into_iter()
        .map(|cells| {
            assert_eq!(cells.len(), header.len(), "a row with a cell per column:\n{cells:?}\nheader {header:?}");
            header.iter().cloned().zip(cells).collect()
        })
        .collect();
    (header, rows)
}

#[test]
fn watch_at_80x24_shows_whole_ids_ends_bytes_rate_and_placement_and_200x50_adds_columns() {
    let dir = tempfile::tempdir().unwrap();
    let capture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/pcaps/teams.pcap");
    assert!(capture.is_file(), "the shared captures must be at {}", capture.display());
    // Offloaded from the second packet; nothing expires while the test looks.
    let (_daemon, socket) = start_daemon_with(
        dir.path(),
        &format!(
            r#""classifier": {{"rules": [{{"name": "rest", "match": {{}}, "trigger": {{"after_packets": 2}}, "result": {{"offload": {{"type": "pass"}}}}}}]}},
  "offload": {{"poll_interval_ms": 50}},
  "timeouts": {{"tcp_handshake_s": 3600, "tcp_established_s": 3600, "tcp_closing_s": 3600, "tcp_closed_s": 3600, "udp_s": 3600, "icmp_s": 3600, "other_s": 3600}},
  "sources": [{{"pcap": {{"path": {:?}, "pace": "fast"}}}}]"#,
            capture.display().to_string()
        ),
    );
    // The capture read and every counter in: the flows no longer change.
    let deadline = Instant::now() + Duration::from_secs(20);
    // What a row shows of a flow; its times go on changing.
    let shown_of = |page: &serde_json::Value| -> Vec<String> {
        page["flows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| format!("{} {} {} {} {}", f["id"], f["packets"], f["bytes"], f["stage"], f["placement"]))
            .collect()
    };
    let mut last = flows_json(&socket);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = flows_json(&socket);
        if now["total"] == 83 && shown_of(&now) == shown_of(&last) {
            break;
        }
        assert!(Instant::now() < deadline, "flows never settled: {} flows", now["total"]);
        last = now;
    }
    let flows: std::collections::HashMap<String, serde_json::Value> =
        last["flows"].as_array().unwrap().iter().map(|f| (f["id"].to_string(), f.clone())).collect();

    for (width, height, shown) in [(80usize, 24usize, 17usize), (200, 50, 43)] {
        let tmux = Tmux { server: format!("flowtable-watch-{}-{width}", std::process::id()) };
        let cmd = format!("{BIN} watch --socket {} --interval-ms 300", socket.display());
        let out =
            tmux.run(&["new-session", "-d", "-s", "watch", "-x", &width.to_string(), "-y", &height.to_string(), &cmd]);
        assert!(out.status.success(), "tmux: {}", String::from_utf8_lossy(&out.stderr));
        let screen = tmux.wait_for("the table", |s| {
            s.contains(&format!("top {shown} of 83 flows")) && s.contains(" client ") && drawn_whole(s, shown)
        });
        assert!(screen.lines().all(|l| l.chars().count() <= width), "a line wider than the screen:\n{screen}");
        let (header, rows) = table_of(&screen);
        assert_eq!(rows.len(), shown, "{width}x{height}: a row per line the screen has:\n{screen}");
        let unit =
            header.iter().find(|h| ["bytes", "KiB", "MiB", "GiB"].contains(&h.as_str())).expect("a bytes column");
        let rate = header.iter().find(|h| h.starts_with("now ")).expect("a current rate column");
        for want in ["id", "client", "server", "where"] {
            assert!(header.iter().any(|h| h == want), "{width} columns: no {want} in {header:?}\n{screen}");
        }
        for row in &rows {
            let f = flows
                .get(&row["id"])
                .unwrap_or_else(|| panic!("row id {} is not a flow's (cut?):\n{screen}", row["id"]));
            assert_eq!(row["client"], endpoint(f["src"].as_str().unwrap(), f["sport"].as_u64().unwrap()), "{screen}");
            assert_eq!(row["server"], endpoint(f["dst"].as_str().unwrap(), f["dport"].as_u64().unwrap()), "{screen}");
            let placement = match (f["stage"].as_str().unwrap(), f["placement"].as_str().unwrap()) {
                ("offloaded", p) => p.to_string(),
                _ => "software".to_string(),
            };
            assert_eq!(row["where"], placement, "{screen}");
            assert_eq!(row[unit.as_str()], in_unit(f["bytes"].as_u64().unwrap(), unit), "{screen}");
            let r = row[rate.as_str()].trim_start_matches('<');
            assert!(r.parse::<f64>().is_ok(), "rate cell {r:?} is a number:\n{screen}");
        }
        if width == 200 {
            for want in ["proto", "stage", "action", "rule/label", "packets", "NIC", "used", "expires", "age"] {
                assert!(header.iter().any(|h| h == want), "200 columns: no {want} in {header:?}\n{screen}");
            }
            assert!(header.iter().any(|h| h.starts_with("mean ")), "{header:?}");
            for row in &rows {
                let f = &flows[&row["id"]];
                let proto = match f["proto"].as_u64() {
                    Some(6) => "tcp",
                    Some(17) => "udp",
                    _ => "?",
                };
                assert_eq!(row["proto"], proto, "{screen}");
                match row["packets"].parse::<u64>() {
                    Ok(n) => assert_eq!(Some(n), f["packets"].as_u64(), "{screen}"),
                    Err(_) => assert!(row["packets"].ends_with('k'), "{screen}"),
                }
            }
        } else {
            assert!(
                !header.iter().any(|h| h == "age" || h == "expires"),
                "80 columns have no room for these: {header:?}"
            );
        }
        tmux.run(&["send-keys", "-t", "watch", "q"]);
    }
}

/// A cell that shows `full` whole, or cut visibly on its one line: the
/// start of it, a `…`, and its port kept.
fn shows(cell: &str, full: &str) -> bool {
    if cell == full {
        return true;
    }
    match cell.split_once('…') {
        Some((head, port)) => {
            full.starts_with(head)
                && full.ends_with(port)
                && port.starts_with("]:")
                && head.len() + port.len() < full.len()
        }
        None => false,
    }
}

#[test]
fn watch_at_80x24_keeps_ipv6_ends_on_one_line_and_counts_the_rows_it_shows() {
    let dir = tempfile::tempdir().unwrap();
    // IPv6 and IPv4 flows (no ICMP: its ends are no address and port);
    // nothing expires while the test looks.
    let (_daemon, socket) = start_daemon_with(
        dir.path(),
        r#""classifier": {"rules": [{"name": "rest", "match": {}, "trigger": {"after_packets": 2}, "result": {"offload": {"type": "pass"}}}]},
  "offload": {"poll_interval_ms": 50},
  "timeouts": {"tcp_handshake_s": 3600, "tcp_established_s": 3600, "tcp_closing_s": 3600, "tcp_closed_s": 3600, "udp_s": 3600, "icmp_s": 3600, "other_s": 3600},
  "sources": [{"synthetic": {"flows": 400, "concurrency": 400, "seed": 9, "ipv6_share": 0.5, "pace": "fast",
    "mix": {"tcp_short": 1, "tcp_elephant": 0, "udp_dns": 1, "udp_stream": 0.2, "icmp_echo": 0}}}]"#,
    );
    let filter = "addr=2001:db8::/32";
    let selected = |socket: &Path| -> serde_json::Value {
        let out = Command::new(BIN)
            .args(["flows", "--top", "1000", "--json", "--filter", filter, "--socket"])
            .arg(socket)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let shown_of = |page: &serde_json::Value| -> Vec<String> {
        page["flows"].as_array().unwrap().iter().map(|f| format!("{} {} {}", f["id"], f["bytes"], f["stage"])).collect()
    };
    let mut last = selected(&socket);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = selected(&socket);
        if now["total"].as_u64().unwrap() > 100 && shown_of(&now) == shown_of(&last) {
            break;
        }
        assert!(Instant::now() < deadline, "flows never settled: {} flows", now["total"]);
        last = now;
    }
    let total = last["total"].as_u64().unwrap();
    let flows: std::collections::HashMap<String, serde_json::Value> =
        last["flows"].as_array().unwrap().iter().map(|f| (f["id"].to_string(), f.clone())).collect();

    for (width, height) in [(80usize, 24usize), (60, 15)] {
        let tmux = Tmux { server: format!("flowtable-watch6-{}-{width}", std::process::id()) };
        let cmd = format!("{BIN} watch --socket {} --interval-ms 300 --filter '{filter}'", socket.display());
        let out =
            tmux.run(&["new-session", "-d", "-s", "watch", "-x", &width.to_string(), "-y", &height.to_string(), &cmd]);
        assert!(out.status.success(), "tmux: {}", String::from_utf8_lossy(&out.stderr));
        // Four summary lines, two borders and the header: a row on each other line.
        let rows_fit = height - 7;
        // Read once the bottom border is drawn: tmux can be read mid-draw,
        // a row cut after its first cells, which would pass for an end
        // wrapped onto a line of its own.
        let screen = tmux.wait_for("the table", |s| {
            s.contains(&format!(" of {total} flows")) && s.contains(" client ") && s.lines().any(|l| l.starts_with('└'))
        });
        assert!(screen.lines().all(|l| l.chars().count() <= width), "a line wider than the screen:\n{screen}");
        assert!(
            screen.contains(&format!("top {rows_fit} of {total} flows")),
            "{width}x{height}: the title counts the rows shown:\n{screen}"
        );
        // No line of the table but the header, rows and borders: no end wrapped onto a line of its own.
        let body: Vec<&str> = screen.lines().filter(|l| l.starts_with('│') && !l.contains(" client ")).collect();
        assert_eq!(body.len(), rows_fit, "{width}x{height}: one line a flow:\n{screen}");
        let (_, rows) = table_of(&screen);
        assert_eq!(rows.len(), rows_fit, "{screen}");
        for row in &rows {
            let f = flows.get(&row["id"]).unwrap_or_else(|| panic!("row id {} is not a flow's:\n{screen}", row["id"]));
            let (src, dst) = (f["src"].as_str().unwrap(), f["dst"].as_str().unwrap());
            assert!(src.starts_with("2001:db8") || dst.starts_with("2001:db8"), "{f}");
            assert!(shows(&row["client"], &endpoint(src, f["sport"].as_u64().unwrap())), "{row:?}\n{screen}");
            assert!(shows(&row["server"], &endpoint(dst, f["dport"].as_u64().unwrap())), "{row:?}\n{screen}");
        }
        if width == 80 {
            // The server ends fit whole beside a cut client.
            assert!(rows.iter().all(|r| !r["server"].contains('…')), "{screen}");
        }
        tmux.run(&["send-keys", "-t", "watch", "q"]);
    }
}
