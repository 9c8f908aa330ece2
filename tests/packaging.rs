//! What an operator installs: the Debian package built by
//! packaging/build-deb.sh (`cargo deb`), installed with dpkg into a scratch
//! root, its files checked, its binary run, its systemd unit (and the DPDK
//! drop-in) verified by `systemd-analyze verify`, its manual pages rendered;
//! and the daemon's systemd notifications: READY=1 only once the control
//! socket answers, RELOADING=1/READY=1 around a SIGHUP, STOPPING=1 at the stop.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_flowtable");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A tool the test needs (`tool` run with `args` must succeed): absent, the
/// test fails in CI and is skipped with the reason elsewhere (returns false).
fn have(tool: &str, args: &[&str], install: &str) -> bool {
    let found = Command::new(tool).args(args).output().is_ok_and(|o| o.status.success());
    let tool =
        std::iter::once(tool).chain(args.iter().copied().filter(|a| !a.starts_with('-'))).collect::<Vec<_>>().join(" ");
    if !found {
        assert!(!in_ci(), "{tool} is missing in CI: {install}");
        println!("SKIPPED: {tool} is not installed ({install}; tests/run-all.sh does it)");
    }
    found
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The subcommands `flowtable --help` lists (the automatic `help` aside).
fn subcommands(args: &[&str]) -> Vec<String> {
    let help = text(&run(Command::new(BIN).args(args).arg("--help")));
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

/// `dpkg` on the scratch root `root`. Its maintainer scripts run here, not
/// chrooted (the root has no shell), with DPKG_ROOT set, which they honour
/// by leaving this host's systemd alone; the root has no libc6 package for
/// the dependency (which the control file is checked for instead).
fn dpkg(root: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-not-root", "--force-depends"])
        .args(args);
    run(&mut cmd)
}

#[test]
fn the_debian_package_installs_runs_and_its_unit_verifies() {
    if !have("cargo", &["deb", "--version"], "cargo install cargo-deb --locked") {
        return;
    }
    // Built once: the release binary (a no-op after `cargo test --release`),
    // the generated pages, completions and example, the package.
    let started = Instant::now();
    let out = run(Command::new("bash").arg(repo().join("packaging/build-deb.sh")));
    let deb = PathBuf::from(text(&out).lines().last().unwrap_or_default().trim());
    assert!(deb.extension().is_some_and(|e| e == "deb") && deb.is_file(), "no package in: {}", text(&out));
    println!("built {} in {:.1} s", deb.display(), started.elapsed().as_secs_f64());

    // The control file.
    let field = |f: &str| text(&run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f))).trim().to_string();
    assert_eq!(field("Package"), "flowtable");
    assert!(field("Version").starts_with(env!("CARGO_PKG_VERSION")), "Version: {}", field("Version"));
    assert!(field("Depends").contains("libc6"), "Depends: {}", field("Depends"));
    let conffiles = text(&run(Command::new("dpkg-deb").arg("-I").arg(&deb).arg("conffiles")));
    assert_eq!(conffiles.trim(), "/etc/flowtable/flowtable.json");

    // Installed into a clean tree with its own dpkg database.
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    let admin = root.join("var/lib/dpkg");
    for d in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(admin.join(d)).unwrap();
    }
    std::fs::write(admin.join("status"), "").unwrap();
    std::fs::write(admin.join("available"), "").unwrap();
    dpkg(root, &["-i", deb.to_str().unwrap()]);
    let status = text(&run(Command::new("dpkg").arg(format!("--root={}", root.display())).args(["-s", "flowtable"])));
    assert!(status.contains("Status: install ok installed"), "{status}");

    let bin = root.join("usr/bin/flowtable");
    assert!(bin.metadata().unwrap().permissions().mode() & 0o111 != 0, "{} is not executable", bin.display());
    let unit = root.join("usr/lib/systemd/system/flowtable.service");
    assert_eq!(
        std::fs::read_to_string(&unit).unwrap(),
        std::fs::read_to_string(repo().join("packaging/flowtable.service")).unwrap(),
        "the installed unit is the repository's"
    );
    let conf = root.join("etc/flowtable/flowtable.json");
    let example = text(&run(Command::new(BIN).args(["config", "example"])));
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), example, "/etc/flowtable/flowtable.json is the example");
    assert_eq!(std::fs::read_to_string(root.join("usr/share/doc/flowtable/examples/flowtable.json")).unwrap(), example);
    assert!(root.join("usr/share/doc/flowtable/examples/dpdk.conf").is_file());

    // The installed binary runs, and takes the installed configuration.
    let version = text(&run(Command::new(&bin).arg("--version")));
    assert_eq!(version.trim(), format!("flowtable {}", env!("CARGO_PKG_VERSION")));
    let checked = text(&run(Command::new(&bin).arg("config").arg("check").arg(&conf)));
    assert!(checked.contains(": ok ("), "{checked}");
    // Its clients look for the daemon where the unit's RuntimeDirectory= puts
    // the socket.
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    let runtime_dir =
        unit_text.lines().find_map(|l| l.strip_prefix("RuntimeDirectory=")).expect("the unit has RuntimeDirectory=");
    let no_daemon = Command::new(&bin).arg("stats").output().unwrap();
    let said = String::from_utf8_lossy(&no_daemon.stderr);
    assert!(!no_daemon.status.success());
    assert!(said.contains(&format!("/run/{runtime_dir}/flowtable.sock")), "{said}");

    // Completions: one file per shell, where each shell looks.
    let bash = root.join("usr/share/bash-completion/completions/flowtable");
    // What bash offers after `flowtable ` and after `flowtable flows --`.
    let complete = |words: &str, cword: usize| {
        let script = format!(
            "source {:?} && COMP_WORDS=({words}) && COMP_CWORD={cword} && _flowtable flowtable \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            bash
        );
        text(&run(Command::new("bash").arg("-c").arg(script))).lines().map(str::to_string).collect::<Vec<_>>()
    };
    let offered = complete("flowtable ''", 1);
    let flows_options = complete("flowtable flows --", 2);
    for want in ["--filter", "--top", "--json", "--socket"] {
        assert!(flows_options.iter().any(|o| o == want), "bash offers {flows_options:?} after `flowtable flows --`");
    }
    let zsh = std::fs::read_to_string(root.join("usr/share/zsh/vendor-completions/_flowtable")).unwrap();
    assert!(zsh.starts_with("#compdef flowtable"), "{}", &zsh[..zsh.len().min(80)]);
    let fish = std::fs::read_to_string(root.join("usr/share/fish/vendor_completions.d/flowtable.fish")).unwrap();
    for cmd in subcommands(&[]) {
        assert!(offered.contains(&cmd), "bash offers {offered:?} after `flowtable `, not {cmd}");
        assert!(fish.contains(&format!("-a \"{cmd}\"")), "fish misses {cmd}");
        assert!(zsh.contains(&format!("'{cmd}:")), "zsh misses {cmd}");
    }

    // A manual page for flowtable and every command and subcommand.
    let man1 = root.join("usr/share/man/man1");
    let mut want = vec!["flowtable.1.gz".to_string()];
    for cmd in subcommands(&[]) {
        want.push(format!("flowtable-{cmd}.1.gz"));
        for sub in subcommands(&[cmd.as_str()]) {
            want.push(format!("flowtable-{cmd}-{sub}.1.gz"));
        }
    }
    for page in &want {
        assert!(man1.join(page).is_file(), "no manual page {page}");
    }
    let have_man = Command::new("man").arg("--version").output().is_ok_and(|o| o.status.success());
    for (page, must) in [
        (
            "flowtable.1.gz",
            &["SmartNIC flow offload orchestrator", "flowtable-run(1)", "/run/flowtable/flowtable.sock"][..],
        ),
        ("flowtable-run.1.gz", &["--config", "--socket"][..]),
        ("flowtable-bench-replay.1.gz", &["--packets"][..]),
    ] {
        let path = man1.join(page);
        if have_man {
            let out = run(Command::new("man").arg("-l").arg(&path).env("MANWIDTH", "100").env("MANPAGER", "cat"));
            let shown = text(&out);
            assert!(shown.contains("NAME") && shown.contains("SYNOPSIS"), "{page}:\n{shown}");
            for m in must {
                assert!(shown.contains(m), "{page} lacks {m:?}:\n{shown}");
            }
            assert!(out.stderr.is_empty(), "{page}: {}", String::from_utf8_lossy(&out.stderr));
        } else {
            assert!(!in_ci(), "man is missing in CI (apt-get install man-db)");
            let roff = text(&run(Command::new("gzip").arg("-dc").arg(&path)));
            assert!(roff.contains(".TH ") && roff.contains(".SH NAME"), "{page} is not a manual page:\n{roff}");
        }
    }
    if !have_man {
        println!("SKIPPED rendering the pages: man is not installed (apt-get install man-db); their roff was checked");
    }

    // The unit, then the unit with the DPDK drop-in, verified against the
    // scratch root: the targets it names and kill are this host's, copied.
    if have("systemd-analyze", &["--version"], "apt-get install systemd") {
        let units = root.join("usr/lib/systemd/system");
        for e in std::fs::read_dir("/usr/lib/systemd/system").unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "target" || x == "slice") && p.is_file() {
                std::fs::copy(&p, units.join(p.file_name().unwrap())).unwrap();
            }
        }
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        let kill = ["/usr/bin/kill", "/bin/kill"].into_iter().find(|k| Path::new(k).is_file()).expect("kill");
        std::fs::copy(kill, root.join("usr/bin/kill")).unwrap();
        let analyze = || {
            Command::new("systemd-analyze")
                .arg("verify")
                .arg(format!("--root={}", root.display()))
                .arg("flowtable.service")
                .env("MANPATH", root.join("usr/share/man"))
                .output()
                .unwrap()
        };
        let verify = || {
            let out = analyze();
            // verify exits 0 on an unknown key or a bad value, saying so:
            // anything it says is a fault.
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {}\n{said}", out.status);
        };
        verify();
        let dropin = root.join("etc/systemd/system/flowtable.service.d");
        std::fs::create_dir_all(&dropin).unwrap();
        std::fs::copy(root.join("usr/share/doc/flowtable/examples/dpdk.conf"), dropin.join("dpdk.conf")).unwrap();
        verify();
        // A broken line is caught, so the clean verdicts above mean something.
        std::fs::write(dropin.join("typo.conf"), "[Service]\nProtectSystm=strict\n").unwrap();
        let out = analyze();
        assert!(String::from_utf8_lossy(&out.stderr).contains("ProtectSystm"), "{out:?}");
        std::fs::remove_dir_all(&dropin).unwrap();
    }

    // Purged, the package leaves nothing of its own, the records under the
    // unit's logs directory included (a dynamic user's: /var/log/private).
    let records = root.join("var/log/private/flowtable");
    std::fs::create_dir_all(&records).unwrap();
    std::fs::write(records.join("records.jsonl"), "{}\n").unwrap();
    dpkg(root, &["--purge", "flowtable"]);
    for gone in ["usr/bin/flowtable", "etc/flowtable/flowtable.json", "usr/lib/systemd/system/flowtable.service"] {
        assert!(!root.join(gone).exists(), "{gone} left after the purge");
    }
    assert!(!records.exists(), "records left after the purge");
}

/// Receives the next notification within `limit`.
fn next_notification(sock: &UnixDatagram, limit: Duration) -> String {
    sock.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).unwrap_or_else(|e| panic!("no notification within {limit:?}: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Notifications until one with `line`; all of them.
fn notifications_until(sock: &UnixDatagram, line: &str, log: &Path) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while !got.iter().any(|m: &String| m.lines().any(|l| l == line)) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no {line} in {got:?}; log:\n{}", std::fs::read_to_string(log).unwrap_or_default());
        got.push(next_notification(sock, left));
    }
    got
}

#[test]
fn the_daemon_tells_systemd_it_is_ready_only_once_its_socket_answers() {
    let dir = tempfile::tempdir().unwrap();
    let notify = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    // The socket's directory does not exist yet, as /run/flowtable doesn't
    // for a daemon started by hand: the daemon makes it.
    let control = dir.path().join("rt/ft.sock");
    let config = dir.path().join("flowtable.json");
    // Traffic for a while, so the daemon is busy when it says it is ready.
    std::fs::write(
        &config,
        format!(
            r#"{{"control": {{"socket": {:?}}}, "sources": [{{"synthetic": {{"flows": 100000, "rate_pps": 20000, "concurrency": 100, "seed": 3}}}}]}}"#,
            control.display().to_string()
        ),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &notify)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    let first = notifications_until(&sock, "READY=1", &log);
    // Asked straight away, never retried: it must answer now.
    let mut stream = UnixStream::connect(&control)
        .unwrap_or_else(|e| panic!("READY=1 came before the socket listened: {e}; log:\n{}", log_text()));
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(b"{\"v\":1,\"id\":1,\"cmd\":\"ping\"}\n").unwrap();
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    let answer: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("the ping's answer: {e}: {line:?}"));
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["result"]["pong"], true, "{answer}");
    let ready = first.last().unwrap();
    assert!(ready.contains(&format!("STATUS=serving on {}", control.display())), "{ready}");

    // A reload is bracketed, with the time systemd 253 and later ask for.
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    let reload = notifications_until(&sock, "READY=1", &log);
    let reloading = reload.iter().find(|m| m.lines().any(|l| l == "RELOADING=1")).expect("RELOADING=1");
    assert!(reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")), "{reloading}");
    assert!(log_text().contains("configuration reloaded"), "{}", log_text());

    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    notifications_until(&sock, "STOPPING=1", &log);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the daemon did not stop; log:\n{}", log_text());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}; log:\n{}", log_text());
}

/// `flowtable man flows` keeps the filter grammar's lines and columns, as
/// `flows --help` has them, in a section of its own: roff would otherwise
/// fill them into one paragraph ("... rate >= 10Mbit Operators: = ...").
#[test]
fn the_manual_page_keeps_the_filter_grammar_as_it_is_laid_out() {
    let help = text(&run(Command::new(BIN).args(["flows", "--help"])));
    assert!(help.contains("udplite"), "flows --help leaves udplite out:\n{help}");
    let roff = run(Command::new(BIN).args(["man", "flows"])).stdout;
    if !have("groff", &["--version"], "apt-get install groff-base") {
        return;
    }
    let mut groff = Command::new("groff")
        .args(["-man", "-Tutf8", "-rLL=100n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    groff.stdin.take().unwrap().write_all(&roff).unwrap();
    let out = groff.wait_with_output().unwrap();
    // Bold is drawn by overstriking (a character, a backspace, the
    // character again): the words without it.
    let plain: String = {
        let mut s = String::new();
        for c in String::from_utf8_lossy(&out.stdout).chars() {
            if c == '\u{8}' {
                s.pop();
            } else {
                s.push(c);
            }
        }
        s
    };
    let lines: Vec<&str> = plain.lines().map(str::trim).collect();
    assert!(lines.contains(&"FILTER"), "no FILTER section:\n{plain}");
    for want in [
        "ingress=wan0 and rate >= 10Mbit",
        "Fields:",
        "proto      tcp, udp, udplite, sctp, icmp (v4 and v6), icmpv6, gre, esp, ah,",
    ] {
        assert!(lines.contains(&want), "no line {want:?} on the page:\n{plain}");
    }
    assert!(lines.iter().any(|l| l.starts_with("proto=tcp,udp and bytes > 1M ")), "{plain}");
    assert!(!plain.contains("10Mbit Operators"), "the grammar run together:\n{plain}");
}
