#!/usr/bin/env bash
# Builds the Debian package: the release binary first, then from it the
# manual pages (one per command), the shell completions and the example
# configuration, which `cargo deb --no-build` then packs with the unit
# (Cargo.toml, [package.metadata.deb]). Generated from the binary, none of
# them can drift from its --help. Arguments go to cargo build and cargo deb
# both (e.g. --features dpdk). Prints the package's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked "$@"
bin="$target/release/flowtable"
out="$target/release/packaging"
rm -rf "$out"
mkdir -p "$out/man" "$out/completions"
"$bin" man --dir "$out/man" >/dev/null
# Compressed as Debian's manual pages are (-n: no name or time inside, so
# the same pages give the same package).
gzip -9n "$out"/man/*.1
"$bin" completions bash >"$out/completions/flowtable.bash"
"$bin" completions zsh >"$out/completions/_flowtable"
"$bin" completions fish >"$out/completions/flowtable.fish"
"$bin" config example >"$out/flowtable.json"
# The example must be one the installed daemon accepts.
"$bin" config check "$out/flowtable.json" >/dev/null
# --strip: the release profile keeps line tables for profiling; the package
# needs none of it.
cargo deb --no-build --locked --strip "$@"
