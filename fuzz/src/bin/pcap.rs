//! Fuzz target `pcap`: the pcap/pcapng capture reader (input: a whole capture file).
//! The body and its invariants are [`flowtable_fuzz::pcap`]; this wraps it
//! for AFL++ (`cargo afl build --release`, then `cargo afl fuzz`).

fn main() {
    afl::fuzz!(|data: &[u8]| flowtable_fuzz::pcap(data));
}
