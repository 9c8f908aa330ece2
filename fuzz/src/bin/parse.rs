//! Fuzz target `parse`: the packet parser, every link type (first byte picks it).
//! The body and its invariants are [`flowtable_fuzz::parse`]; this wraps it
//! for AFL++ (`cargo afl build --release`, then `cargo afl fuzz`).

fn main() {
    afl::fuzz!(|data: &[u8]| flowtable_fuzz::parse(data));
}
