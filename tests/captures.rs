//! Every capture of the shared corpus read and parsed: each file opens and
//! reads to its end (except the listed broken ones, which fail the listed
//! way), every packet is either parsed or counted under one skip reason,
//! nothing panics, and parsing allocates nothing.

mod common;

use common::{ALLOCATIONS, COUNTING};
use flowtable::source::pcap::PcapFileSource;
use flowtable::source::{PacketSource, SourceError};
use flowtable_sw::{Fragment, PacketInfo, PortMap, SkipCounters, SkipReason};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const CAPTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/pcaps");

/// Files in the corpus directory that are not captures.
const NOT_CAPTURES: &[&str] = &["README.md", "README.txt"];

/// Captures that can't be read to the end: file name, packets read before
/// the error, and a piece of the error message.
const BROKEN: &[(&str, u64, &str)] = &[
    // A fuzzer's output: the only record claims 524 501 bytes in a file of
    // 239 (tshark: "cut short in the middle of a packet").
    ("fuzz-2021-10-13.pcap", 0, "at byte offset 24: record length 524501 exceeds the maximum"),
];

#[global_allocator]
static ALLOCATOR: common::CountingAlloc = common::CountingAlloc;

/// What one capture gave.
#[derive(Default)]
struct Tally {
    packets: u64,
    parsed: u64,
    skipped: SkipCounters,
    fragments: u64,
    ipv6: u64,
    vlan: u64,
    /// Packets cut by the snap length (wire length above captured length).
    snapped: u64,
    /// Packets by LINKTYPE_ value.
    by_linktype: BTreeMap<u32, u64>,
    error: Option<SourceError>,
}

fn read_capture(path: &Path) -> Result<Tally, SourceError> {
    let mut source = PcapFileSource::open(path, 0)?;
    let mut tally = Tally::default();
    loop {
        let packet = match source.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => {
                tally.error = Some(e);
                break;
            }
        };
        tally.packets += 1;
        tally.snapped += u64::from(packet.wire_len as usize > packet.data.len());
        *tally.by_linktype.entry(packet.linktype).or_default() += 1;
        COUNTING.with(|c| c.set(true));
        let result = packet.parse(&PortMap::unpaired());
        COUNTING.with(|c| c.set(false));
        match result {
            Ok(info) => {
                tally.parsed += 1;
                check(&info, packet.data.len());
                if info.fragment != Fragment::Whole {
                    tally.fragments += 1;
                }
                tally.ipv6 += u64::from(info.key.is_ipv6());
                tally.vlan += u64::from(info.key.vlan_outer != 0);
            }
            Err(reason) => tally.skipped.add(reason),
        }
    }
    assert_eq!(source.packets_read(), tally.packets);
    Ok(tally)
}

fn check(info: &PacketInfo, captured: usize) {
    assert!(usize::from(info.payload_offset) <= captured);
    if matches!(info.fragment, Fragment::Later { .. }) {
        assert_eq!((info.key.port_lo, info.key.port_hi), (0, 0));
    }
}

fn linktype_name(linktype: u32) -> String {
    match linktype {
        0 => "null".into(),
        1 => "ethernet".into(),
        9 => "ppp".into(),
        101 => "raw-ip".into(),
        104 => "chdlc".into(),
        108 => "loop".into(),
        113 => "linux-sll".into(),
        192 => "ppi".into(),
        228 => "raw-ipv4".into(),
        229 => "raw-ipv6".into(),
        276 => "linux-sll2".into(),
        other => format!("linktype-{other}"),
    }
}

fn corpus() -> Vec<PathBuf> {
    let dir = Path::new(CAPTURES);
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| {
        panic!(
            "the capture corpus is missing: {} ({e}); the repository must be checked out \
             next to shared/ with shared/pcaps in it",
            dir.display()
        )
    });
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

#[test]
fn every_capture_reads_and_every_packet_is_parsed_or_counted() {
    let files = corpus();
    let captures: Vec<&PathBuf> = files.iter().filter(|p| !NOT_CAPTURES.contains(&file_name(p))).collect();
    assert!(captures.len() >= 500, "only {} captures in {CAPTURES}", captures.len());

    let mut tallies = BTreeMap::new();
    let mut failures = Vec::new();
    for path in &captures {
        let name = file_name(path).to_string();
        match read_capture(path) {
            Ok(tally) => {
                let broken = BROKEN.iter().find(|(n, ..)| *n == name);
                match (&tally.error, broken) {
                    (None, None) => {}
                    (Some(e), Some((_, packets, message))) => {
                        let text = e.to_string();
                        if !text.contains(message) || tally.packets != *packets {
                            failures.push(format!(
                                "{name}: expected \"{message}\" after {packets} packets, got \
                                 \"{text}\" after {}",
                                tally.packets
                            ));
                        }
                        assert!(text.contains(&name), "error doesn't name the file: {text}");
                    }
                    (Some(e), None) => failures.push(format!("{name}: {e}")),
                    (None, Some(_)) => failures.push(format!("{name}: listed broken but reads")),
                }
                assert_eq!(
                    tally.parsed + tally.skipped.total(),
                    tally.packets,
                    "{name}: packets lost between parsed and skipped"
                );
                tallies.insert(name, tally);
            }
            Err(e) => failures.push(format!("{name}: does not open: {e}")),
        }
    }
    assert!(failures.is_empty(), "captures that failed:\n{}", failures.join("\n"));

    // Summary per link type.
    #[derive(Default)]
    struct Sum {
        files: u64,
        packets: u64,
        parsed: u64,
        skipped: SkipCounters,
    }
    let mut by_link: BTreeMap<String, Sum> = BTreeMap::new();
    for tally in tallies.values() {
        for (&linktype, &packets) in &tally.by_linktype {
            let sum = by_link.entry(linktype_name(linktype)).or_default();
            sum.files += 1;
            sum.packets += packets;
        }
        // Parse results are per file; a file's results go to its main link
        // type (only a handful of pcapng files mix link types).
        if let Some((&main, _)) = tally.by_linktype.iter().max_by_key(|(_, n)| **n) {
            let sum = by_link.entry(linktype_name(main)).or_default();
            sum.parsed += tally.parsed;
            for (reason, n) in tally.skipped.iter() {
                for _ in 0..n {
                    sum.skipped.add(reason);
                }
            }
        }
    }
    println!("{:<12} {:>6} {:>9} {:>9}  skipped", "link", "files", "packets", "parsed");
    for (link, sum) in &by_link {
        let skipped: Vec<String> =
            sum.skipped.iter().filter(|(_, n)| *n > 0).map(|(r, n)| format!("{}={n}", r.as_str())).collect();
        println!("{link:<12} {:>6} {:>9} {:>9}  {}", sum.files, sum.packets, sum.parsed, skipped.join(" "));
    }
    for (name, tally) in &tallies {
        let odd: Vec<String> = tally
            .skipped
            .iter()
            .filter(|(r, n)| *n > 0 && !matches!(r, SkipReason::NonIp | SkipReason::UnsupportedLinkType))
            .map(|(r, n)| format!("{}={n}", r.as_str()))
            .collect();
        if !odd.is_empty() {
            println!("  {name}: {}", odd.join(" "));
        }
    }
    let total = |f: fn(&Tally) -> u64| tallies.values().map(f).sum::<u64>();
    println!(
        "{} captures, {} packets, {} parsed ({} IPv6, {} VLAN-tagged, {} fragments), {} skipped",
        tallies.len(),
        total(|t| t.packets),
        total(|t| t.parsed),
        total(|t| t.ipv6),
        total(|t| t.vlan),
        total(|t| t.fragments),
        total(|t| t.skipped.total()),
    );

    // Parsing allocated nothing, over every packet of the corpus.
    assert_eq!(ALLOCATIONS.with(|n| n.get()), 0, "parse_packet allocated");
    // ... and the counter does see allocations when there are some.
    COUNTING.with(|c| c.set(true));
    let probe = std::hint::black_box(vec![0u8; 16]);
    COUNTING.with(|c| c.set(false));
    drop(probe);
    assert_eq!(ALLOCATIONS.with(|n| n.get()), 1, "the allocation counter is blind");

    // Facts about particular captures, each checked with tshark.
    let get = |name: &str| tallies.get(name).unwrap_or_else(|| panic!("{name} missing from the corpus"));
    // PPP, Cisco HDLC stored as PPP, Cisco HDLC with MPLS, and PPI before
    // Ethernet: every packet is IP (tshark: 1, 14, 2 and 6 of them).
    for (name, packets) in
        [("dlt_ppp.pcap", 1), ("BGP_Cisco_hdlc_slarp.pcap", 14), ("BGP_redist.pcap", 2), ("someip_sd_sample.pcap", 6)]
    {
        let t = get(name);
        assert_eq!((t.packets, t.parsed), (packets, packets), "{name}");
    }
    // PPPoE behind two VLAN tags (dns.pcap: 2 of 5; discord_mid_flow.pcap:
    // all 40) and FabricPath (ajp.pcap: 12 of 38) parse like the rest.
    for (name, packets) in [("dns.pcap", 5), ("discord_mid_flow.pcap", 40), ("ajp.pcap", 38)] {
        let t = get(name);
        assert_eq!((t.packets, t.parsed), (packets, packets), "{name}");
    }
    // badpackets.pcap: DNS responses cut by a 43-59 byte snap length; the
    // DNS is broken, the Ethernet/IP/UDP headers are whole (tshark decodes
    // all 93), so every packet makes a flow, with its wire length.
    let bad = get("badpackets.pcap");
    assert_eq!((bad.packets, bad.parsed), (93, 93));
    assert!(bad.snapped > 0);
    // The corpus covers every framing the parser knows, and each of them
    // yields flows.
    for link in ["ethernet", "raw-ip", "raw-ipv4", "linux-sll", "null", "ppp", "chdlc", "ppi"] {
        let sum = &by_link[link];
        assert!(sum.parsed > 0 && sum.parsed * 2 > sum.packets, "{link}: {} of {} parsed", sum.parsed, sum.packets);
    }
    assert!(total(|t| t.ipv6) > 0 && total(|t| t.vlan) > 0 && total(|t| t.fragments) > 0);
}
