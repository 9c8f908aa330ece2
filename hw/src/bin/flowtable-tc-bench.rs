//! flowtable-tc-bench: installs, dumps with stats and deletes N software
//! flower filters (skip_hw) with the tc backend, then does the same with
//! iproute2 (`tc -batch`, `tc -s filter show`) on identical filters, and
//! prints the rates side by side. Needs root and a disposable network
//! namespace or VM: it creates (and removes) a dummy interface.
//!
//!     flowtable-tc-bench [--counts 10000,50000] [--dev ftbench0] [--out FILE]

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Instant;

use flowtable_hw::tc::{TcBackend, TcConfig};
use flowtable_hw::{Action, Backend, Cookie, InstallOutcome, MatchFields, PlacementPolicy, RuleSpec};
use flowtable_sw::FlowKey;

const OWNER: u32 = 0xBE4C;

struct Args {
    counts: Vec<usize>,
    dev: String,
    out: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args { counts: vec![10_000, 50_000], dev: "ftbench0".into(), out: None };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--counts" => {
                a.counts = val()?
                    .split(',')
                    .map(|s| s.trim().parse().map_err(|_| format!("--counts: '{s}' is not a number")))
                    .collect::<Result<_, _>>()?
            }
            "--dev" => a.dev = val()?,
            "--out" => a.out = Some(val()?),
            "-h" | "--help" => {
                println!("usage: flowtable-tc-bench [--counts 10000,50000] [--dev ftbench0] [--out FILE]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    Ok(a)
}

fn sh(cmd: &str) -> Result<(), String> {
    let st = Command::new("sh").arg("-c").arg(cmd).stdout(Stdio::null()).status().map_err(|e| e.to_string())?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("`{cmd}` failed ({st})"))
    }
}

/// Filter i: a TCP flow from 10.x.y.z (distinct per i) to 10.255.0.1:443.
fn flow(i: usize) -> (Ipv4Addr, u16) {
    let src = Ipv4Addr::from(0x0a00_0000u32 + i as u32 + 1);
    (src, 1024 + (i % 50_000) as u16)
}

const DST: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);

fn rules(n: usize) -> Vec<RuleSpec> {
    (0..n)
        .map(|i| {
            let (src, sport) = flow(i);
            let (key, dir) = FlowKey::from_v4(src, DST, sport, 443, 6);
            RuleSpec {
                cookie: Cookie::new(OWNER, i as u64, dir),
                matches: MatchFields { key, dir, port: key.zone },
                action: Action::Drop,
                policy: PlacementPolicy::Software,
            }
        })
        .collect()
}

struct Row {
    what: &'static str,
    n: usize,
    secs: f64,
}

fn timed<T>(f: impl FnOnce() -> Result<T, String>) -> Result<(T, f64), String> {
    let t = Instant::now();
    let v = f()?;
    Ok((v, t.elapsed().as_secs_f64()))
}

fn run_ours(dev: &str, n: usize, rows: &mut Vec<Row>) -> Result<(), String> {
    let mut be = TcBackend::open(TcConfig::new(vec![dev.to_string()], OWNER)).map_err(|e| e.to_string())?;
    let rs = rules(n);
    let (out, secs) = timed(|| Ok(be.install(&rs)))?;
    let ok = out.iter().filter(|o| matches!(o, InstallOutcome::Installed { .. })).count();
    if ok != n {
        let first = out.iter().find(|o| !matches!(o, InstallOutcome::Installed { .. }));
        return Err(format!("flowtable installed {ok} of {n}: {first:?}"));
    }
    rows.push(Row { what: "install", n, secs });
    let mut counters = Vec::with_capacity(n);
    let (_, secs) = timed(|| be.read_counters(&mut counters).map_err(|e| e.to_string()))?;
    if counters.len() != n {
        return Err(format!("flowtable dump read {} of {n} rules", counters.len()));
    }
    rows.push(Row { what: "dump with stats", n, secs });
    let cookies: Vec<Cookie> = rs.iter().map(|r| r.cookie).collect();
    let (res, secs) = timed(|| Ok(be.remove(&cookies)))?;
    let removed = res.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
    if removed != n {
        return Err(format!("flowtable removed {removed} of {n} with final counters"));
    }
    rows.push(Row { what: "delete", n, secs });
    be.shutdown().map_err(|e| e.to_string())?;

    // Deletion without the echo that carries the final counters: what the
    // echo costs.
    let mut cfg = TcConfig::new(vec![dev.to_string()], OWNER);
    cfg.final_counters = false;
    let mut be = TcBackend::open(cfg).map_err(|e| e.to_string())?;
    let out = be.install(&rs);
    if out.iter().any(|o| !matches!(o, InstallOutcome::Installed { .. })) {
        return Err("flowtable reinstall failed".into());
    }
    let (res, secs) = timed(|| Ok(be.remove(&cookies)))?;
    if res.iter().any(|r| r.is_err()) {
        return Err("flowtable delete without echo failed".into());
    }
    rows.push(Row { what: "delete, no final counters", n, secs });
    be.shutdown().map_err(|e| e.to_string())?;
    Ok(())
}

fn run_iproute2(dev: &str, n: usize, rows: &mut Vec<Row>) -> Result<(), String> {
    let dir = std::env::temp_dir();
    let add = dir.join("ft-bench-add.batch");
    let del = dir.join("ft-bench-del.batch");
    {
        let mut a = std::io::BufWriter::new(std::fs::File::create(&add).map_err(|e| e.to_string())?);
        let mut d = std::io::BufWriter::new(std::fs::File::create(&del).map_err(|e| e.to_string())?);
        for (i, r) in rules(n).iter().enumerate() {
            let (src, sport) = flow(i);
            let cookie: String = r.cookie.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
            let h = i + 1;
            writeln!(
                a,
                "filter add dev {dev} ingress prio 512 protocol ip handle {h} flower skip_hw src_ip {src} dst_ip {DST} \
                 ip_proto tcp src_port {sport} dst_port 443 action gact drop cookie {cookie}"
            )
            .map_err(|e| e.to_string())?;
            writeln!(d, "filter del dev {dev} ingress prio 512 protocol ip handle {h} flower")
                .map_err(|e| e.to_string())?;
        }
    }
    let (_, secs) = timed(|| sh(&format!("tc -batch {}", add.display())))?;
    rows.push(Row { what: "install", n, secs });
    let (_, secs) = timed(|| sh(&format!("tc -s filter show dev {dev} ingress > /dev/null")))?;
    rows.push(Row { what: "dump with stats", n, secs });
    let (_, secs) = timed(|| sh(&format!("tc -batch {}", del.display())))?;
    rows.push(Row { what: "delete", n, secs });
    // iproute2 has no final counters to give: its plain delete is the
    // reference for both rows.
    rows.push(Row { what: "delete", n, secs });
    let _ = std::fs::remove_file(add);
    let _ = std::fs::remove_file(del);
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("flowtable-tc-bench: {e}");
            std::process::exit(2);
        }
    };
    let dev = &args.dev;
    let _ = sh(&format!("ip link del {dev} 2>/dev/null"));
    if let Err(e) =
        sh(&format!("ip link add {dev} type dummy && ip link set {dev} up && tc qdisc add dev {dev} clsact"))
    {
        eprintln!("flowtable-tc-bench: creating {dev}: {e}");
        std::process::exit(1);
    }
    let mut report = String::new();
    report.push_str("| filters | operation | flowtable (filters/s) | iproute2 (filters/s) | speed-up |\n");
    report.push_str("|---:|---|---:|---:|---:|\n");
    let mut failed = false;
    for &n in &args.counts {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        if let Err(e) = run_ours(dev, n, &mut ours).and_then(|()| run_iproute2(dev, n, &mut theirs)) {
            eprintln!("flowtable-tc-bench: {n} filters: {e}");
            failed = true;
            continue;
        }
        for (o, t) in ours.iter().zip(&theirs) {
            let (ro, rt) = (o.n as f64 / o.secs, t.n as f64 / t.secs);
            let line = format!(
                "| {} | {} | {:.0} ({:.2} s) | {:.0} ({:.2} s) | {:.1}x |\n",
                o.n,
                o.what,
                ro,
                o.secs,
                rt,
                t.secs,
                ro / rt
            );
            print!("{line}");
            report.push_str(&line);
        }
    }
    let _ = sh(&format!("ip link del {dev}"));
    println!("\n{report}");
    if let Some(path) = &args.out {
        if let Err(e) = std::fs::write(path, &report) {
            eprintln!("flowtable-tc-bench: writing {path}: {e}");
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}
