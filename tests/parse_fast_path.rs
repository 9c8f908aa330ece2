//! The parser's plain-Ethernet fast path against its full walk, on every
//! frame of the shared captures and on mutations of them: wherever the
//! fast path takes a frame, the two say the same, and `parse_packet` always
//! says what the walk says.

mod common;

use flowtable::source::pcap::PcapFileSource;
use flowtable::source::PacketSource;
use flowtable_sw::parse::{parse_any, parse_packet, plain_ethernet};
use flowtable_sw::{Ingress, LinkType};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// Neither port 0 nor its own zone, so a path that dropped either differs.
const INGRESS: Ingress = Ingress { port: 3, zone: 2 };

#[test]
fn the_fast_path_says_what_the_walk_says_on_every_shared_frame() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0x6d5a);
    let (mut ethernet, mut fast, mut mutated, mut mutated_fast) = (0u64, 0u64, 0u64, 0u64);
    for path in common::captures() {
        let Ok(mut src) = PcapFileSource::open(&path, 0) else { continue };
        let mut frame = Vec::new();
        while let Ok(Some(pkt)) = src.next_packet() {
            if pkt.link != Some(LinkType::Ethernet) {
                continue;
            }
            ethernet += 1;
            let walk = parse_any(LinkType::Ethernet, pkt.data, pkt.wire_len, INGRESS);
            if let Some(info) = plain_ethernet(pkt.data, pkt.wire_len, INGRESS) {
                fast += 1;
                assert_eq!(Ok(info), walk, "{}: frame {ethernet}", path.display());
            }
            assert_eq!(parse_packet(LinkType::Ethernet, pkt.data, pkt.wire_len, INGRESS), walk);
            // One frame in eight again with a few of its header bytes
            // changed and maybe cut short: lengths, flags, versions and
            // types the captures don't hold.
            if ethernet % 8 != 0 {
                continue;
            }
            frame.clear();
            frame.extend_from_slice(pkt.data);
            let head = frame.len().min(80);
            for _ in 0..rng.gen_range(1..=3) {
                if head > 0 {
                    let at = rng.gen_range(0..head);
                    frame[at] = rng.gen();
                }
            }
            if rng.gen_bool(0.25) {
                frame.truncate(rng.gen_range(0..=frame.len()));
            }
            let wire_len = pkt.wire_len.max(frame.len() as u32);
            let walk = parse_any(LinkType::Ethernet, &frame, wire_len, INGRESS);
            if let Some(info) = plain_ethernet(&frame, wire_len, INGRESS) {
                mutated_fast += 1;
                assert_eq!(Ok(info), walk, "{}: frame {ethernet}, mutated {frame:02x?}", path.display());
            }
            assert_eq!(parse_packet(LinkType::Ethernet, &frame, wire_len, INGRESS), walk);
            mutated += 1;
        }
    }
    eprintln!("fast path: {fast} of {ethernet} Ethernet frames, {mutated_fast} of {mutated} mutated ones");
    // Most of the corpus is plain Ethernet, IPv4 or IPv6, TCP or UDP: a
    // fast path that stopped taking frames would pass the checks above.
    assert!(ethernet > 100_000, "{ethernet} Ethernet frames");
    assert!(fast * 2 > ethernet, "the fast path took {fast} of {ethernet} Ethernet frames");
    assert!(mutated_fast * 10 > mutated, "the fast path took {mutated_fast} of {mutated} mutated frames");
}
