//! A capture mapped into memory replays exactly as the same capture read:
//! the same records, the same counters, the same errors, both through the
//! library on every shared capture and through the real binary
//! (`flowtable replay --json`, which maps, against
//! `FLOWTABLE_PCAP_MMAP=0 flowtable replay --json`) on a range of them and
//! on cut and corrupted copies; and `flowtable bench walk`, the floor
//! under a replay, walks every frame either way.

mod common;

use common::{captures, ALLOCATIONS, COUNTING};
use flowtable::source::pcap::{PcapFileSource, MMAP_ENV};
use flowtable::source::PacketSource;
use std::path::{Path, PathBuf};
use std::process::Command;

#[global_allocator]
static ALLOCATOR: common::CountingAlloc = common::CountingAlloc;

/// Everything a replay of `source` tells: its records in the order made,
/// the summary without its wall time, the engine's counters, and how the
/// source ended.
fn replay_facts(mut source: PcapFileSource) -> (Vec<String>, String, String, Option<String>) {
    let c = flowtable_config::parse("test", "{}").unwrap();
    let mut records = Vec::new();
    let backend = flowtable::backend::build(&c).unwrap();
    let r = flowtable::replay::replay(&mut source, &c, 1, backend, |r| records.push(serde_json::to_string(r).unwrap()))
        .unwrap();
    let mut summary = r.summary.clone();
    summary.wall_ns = 0;
    (
        records,
        serde_json::to_string(&summary).unwrap(),
        serde_json::to_string(&r.stats).unwrap(),
        r.source_error.map(|e| e.to_string()),
    )
}

#[test]
fn every_shared_capture_replays_the_same_mapped_and_read() {
    let mut mapped_files = 0;
    for path in captures() {
        let mapped = PcapFileSource::open_mapped(&path, 0);
        let read = PcapFileSource::open_read(&path, 0);
        match (mapped, read) {
            (Ok(m), Ok(r)) => {
                mapped_files += usize::from(m.is_mapped());
                assert_eq!(replay_facts(m), replay_facts(r), "{}", path.display());
            }
            (Err(m), Err(r)) => assert_eq!(m.to_string(), r.to_string()),
            (m, r) => panic!("{}: mapped {:?} read {:?}", path.display(), m.err(), r.err()),
        }
    }
    // Regular files: every one of them mapped, not quietly read.
    assert!(mapped_files >= 540, "only {mapped_files} captures were mapped");
}

/// Allocations made inside `next_packet` calls that delivered a packet
/// (a broken capture's error message, allocated once at its end, is not
/// counted), and the packets.
fn allocations_reading(mut src: PcapFileSource) -> (u64, u64) {
    let (mut packets, mut allocations) = (0u64, 0u64);
    loop {
        ALLOCATIONS.with(|n| n.set(0));
        COUNTING.with(|c| c.set(true));
        let next = src.next_packet().map(|p| p.is_some());
        COUNTING.with(|c| c.set(false));
        match next {
            Ok(true) => packets += 1,
            _ => return (allocations, packets),
        }
        allocations += ALLOCATIONS.with(|n| n.get());
    }
}

#[test]
fn reading_a_mapped_capture_allocates_nothing_per_packet() {
    let mut checked = 0;
    for path in captures() {
        let Ok(mapped) = PcapFileSource::open_mapped(&path, 0) else { continue };
        assert!(mapped.is_mapped(), "{}", path.display());
        let pcapng = std::fs::read(&path).unwrap()[..4] == [0x0a, 0x0d, 0x0d, 0x0a];
        let (allocations, packets) = allocations_reading(mapped);
        let (read_allocations, _) = allocations_reading(PcapFileSource::open_read(&path, 0).unwrap());
        // Classic pcap: none at all. pcapng: whatever pcap-file allocates
        // decoding its blocks (65 for the 699 packets of sites.pcapng),
        // no more than when the file is read; mapping adds nothing.
        if pcapng {
            assert!(allocations <= read_allocations, "{}: {allocations} > {read_allocations}", path.display());
        } else {
            assert_eq!(allocations, 0, "{}: {packets} packets", path.display());
        }
        checked += usize::from(packets > 0);
    }
    assert!(checked >= 500, "{checked}");
}

/// `flowtable ARGS FILE`, mapping the file or (not `mapped`) reading it.
fn flowtable_command(args: &[&str], path: &Path, mapped: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowtable"));
    cmd.args(args).arg(path);
    if mapped {
        cmd.env_remove(MMAP_ENV);
    } else {
        cmd.env(MMAP_ENV, "0");
    }
    cmd
}

/// Where each record of a little-endian pcap starts, read off the record
/// headers alone, and last where the records end (the file's length, in
/// a capture whose last record is whole).
fn record_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut records = vec![24usize];
    while let Some(&at) = records.last().filter(|&&at| at + 16 <= bytes.len()) {
        records.push(at + 16 + u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize);
    }
    records
}

/// Whether the file at `path` starts as a little-endian pcap (microsecond
/// timestamps), from its first four bytes.
fn little_endian_pcap(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok()
        && magic == 0xa1b2_c3d4u32.to_le_bytes()
}

/// `flowtable replay --json FILE`: its exit status, stdout with the wall
/// time taken out of the summary line, and stderr.
fn binary_replay(path: &Path, mapped: bool) -> (Option<i32>, Vec<String>, String) {
    let out = flowtable_command(&["replay", "--json"], path, mapped).output().unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
            if let Some(s) = v.get_mut("summary").and_then(|s| s.as_object_mut()) {
                assert!(s.remove("wall_ns").is_some());
            }
            v.to_string()
        })
        .collect();
    (out.status.code(), lines, String::from_utf8(out.stderr).unwrap())
}

#[test]
fn the_binary_replays_mapped_captures_as_read_ones_corrupt_ones_included() {
    let files = captures();
    // The largest captures and every twentieth of the rest.
    let mut by_size = files.clone();
    by_size.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
    let mut picked: Vec<PathBuf> = by_size[..6].to_vec();
    picked.extend(files.iter().step_by(20).cloned());

    // Cut part-way and with a record length that lies: the errors too
    // must be the same, at the same offset.
    let dir = tempfile::tempdir().unwrap();
    let biggest = std::fs::read(&by_size[0]).unwrap();
    let cut = dir.path().join("cut.pcap");
    std::fs::write(&cut, &biggest[..biggest.len() * 2 / 3 + 7]).unwrap();
    // A record half-way claiming 4 GB captured, and the one before it
    // claiming 4 GB on the wire (clamped and counted, not an error).
    assert_eq!(biggest[..4], 0xa1b2_c3d4u32.to_le_bytes(), "{}: a little-endian pcap", by_size[0].display());
    let records = record_offsets(&biggest);
    let (before, half) = (records[records.len() / 2 - 1], records[records.len() / 2]);
    let mut bytes = biggest.clone();
    bytes[before + 12..before + 16].copy_from_slice(&u32::MAX.to_le_bytes());
    bytes[half + 8..half + 12].copy_from_slice(&0xffff_ff00u32.to_le_bytes());
    let lying = dir.path().join("lying.pcap");
    std::fs::write(&lying, &bytes).unwrap();
    picked.push(cut.clone());
    picked.push(lying.clone());

    for path in &picked {
        let mapped = binary_replay(path, true);
        let read = binary_replay(path, false);
        assert!(!read.1.is_empty(), "{}: no output", path.display());
        assert_eq!(mapped, read, "{}", path.display());
    }
    for broken in [&cut, &lying] {
        let (_, _, stderr) = binary_replay(broken, true);
        assert!(stderr.contains(&*broken.to_string_lossy()) && stderr.contains("byte offset"), "{stderr}");
        if broken == &lying {
            assert!(stderr.contains(&format!("byte offset {half}: record length 4294967040 exceeds")), "{stderr}");
        }
    }
}

/// `flowtable bench walk`, the floor `bench replay --process-only` times,
/// walks every frame of a capture, mapped or read: as many frames and
/// captured bytes as the file's own record headers add up to.
#[test]
fn bench_walk_walks_every_frame_mapped_and_read() {
    let mut by_size: Vec<PathBuf> = captures().into_iter().filter(|p| little_endian_pcap(p)).collect();
    by_size.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).unwrap().len()));
    assert!(by_size.len() >= 4, "only {} little-endian pcap captures among the shared ones", by_size.len());
    for path in &by_size[..4] {
        let bytes = std::fs::read(path).unwrap();
        let records = record_offsets(&bytes);
        assert_eq!(records.last(), Some(&bytes.len()), "{}: ends inside a record", path.display());
        let frames = records.len() - 1;
        let captured: usize = records.windows(2).map(|r| r[1] - r[0] - 16).sum();
        let expected = format!("{}: {frames} frames, {captured} bytes captured\n", path.display());
        for mapped in [true, false] {
            let out = flowtable_command(&["bench", "walk"], path, mapped).output().unwrap();
            assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
            assert_eq!(String::from_utf8(out.stdout).unwrap(), expected, "mapped: {mapped}");
        }
    }
}
