//! `flowtable watch` in a real terminal: a tmux session runs it against a
//! daemon fed paced synthetic traffic; the captured screen shows the flows
//! and their counters moving, `s` changes the sort, and `q` quits.

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
    let socket = dir.join("ft.sock");
    let config = dir.join("flowtable.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"control": {{"socket": {:?}}},
  "classifier": {{"rules": [{{"name": "bypass", "match": {{}}, "trigger": {{"after_packets": 8}}, "result": {{"offload": {{"type": "pass"}}}}}}]}},
  "offload": {{"poll_interval_ms": 100}},
  "sources": [{{"synthetic": {{"flows": 1000000, "rate_pps": 2000, "concurrency": 100, "seed": 4, "pace": "timestamps"}}}}]}}"#,
            socket.display().to_string()
        ),
    )
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
    for want in ["flowtable watch", "packets", "bytes", "rate", "client", "server", "bypass", "sort: bytes"] {
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
