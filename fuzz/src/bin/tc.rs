//! Fuzz target `tc`: the tc backend's netlink reply decoders (dump entries, batch ACKs and errors with extack).
//! The body and its invariants are [`flowtable_fuzz::tc`]; this wraps it
//! for AFL++ (`cargo afl build --release`, then `cargo afl fuzz`).

fn main() {
    afl::fuzz!(|data: &[u8]| flowtable_fuzz::tc(data));
}
