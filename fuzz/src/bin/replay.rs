//! Runs one fuzz target's body over files, without AFL: to reproduce a
//! crash under a debugger or with a backtrace, and to check that every
//! seed of a corpus runs clean.
//!
//! Usage: `replay TARGET FILE|DIR...` (directories: every file in them).

use std::path::{Path, PathBuf};

fn files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> =
            std::fs::read_dir(path).expect("readable directory").flatten().map(|e| e.path()).collect();
        entries.sort();
        for e in entries {
            files(&e, out);
        }
    } else {
        out.push(path.to_path_buf());
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args.next().unwrap_or_default();
    let body: fn(&[u8]) = match target.as_str() {
        "parse" => flowtable_fuzz::parse,
        "pcap" => flowtable_fuzz::pcap,
        "tc" => flowtable_fuzz::tc,
        "control" => flowtable_fuzz::control,
        "config" => flowtable_fuzz::config,
        _ => {
            eprintln!("usage: replay parse|pcap|tc|control|config FILE|DIR...");
            std::process::exit(2);
        }
    };
    let mut all = Vec::new();
    for a in args {
        files(Path::new(&a), &mut all);
    }
    for f in &all {
        eprintln!("{}", f.display());
        body(&std::fs::read(f).expect("readable file"));
    }
    eprintln!("{target}: {} inputs, no crash", all.len());
}
