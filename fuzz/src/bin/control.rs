//! Fuzz target `control`: the control protocol's request decoding (input: one request line).
//! The body and its invariants are [`flowtable_fuzz::control`]; this wraps it
//! for AFL++ (`cargo afl build --release`, then `cargo afl fuzz`).

fn main() {
    afl::fuzz!(|data: &[u8]| flowtable_fuzz::control(data));
}
