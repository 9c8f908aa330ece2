//! Fuzz target `config`: configuration loading (input: a configuration file's text).
//! The body and its invariants are [`flowtable_fuzz::config`]; this wraps it
//! for AFL++ (`cargo afl build --release`, then `cargo afl fuzz`).

fn main() {
    afl::fuzz!(|data: &[u8]| flowtable_fuzz::config(data));
}
