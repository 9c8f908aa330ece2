#!/usr/bin/env bash
# The bounded fuzzing step of tests/run-all.sh: installs cargo-afl if it is
# missing, builds every target with AFL++ instrumentation and runs each from
# its seed corpus for FUZZ_SECONDS (60 by default), all five at once (the
# step's wall time is one run's, whatever the number of cores). Fails if the
# build fails, a run fails to start, or any run saved a crash
# (out/TARGET/default/crashes/id:*). Long campaigns are run by hand: see
# README.md.
set -u
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-60}
targets=(parse pcap tc control config)

# cargo-afl builds AFL++ from the sources it ships (make and a C compiler,
# both on Debian by default); the version matches the `afl` crate in Cargo.lock.
if ! cargo afl --version >/dev/null 2>&1; then
    echo "installing cargo-afl"
    cargo install --locked cargo-afl --version 0.18.2 || exit 1
fi
# Builds AFL++ for this toolchain if it isn't yet; says so and fails when it already is, which is fine.
cargo afl config --build >/dev/null 2>&1 || true

# Outside the clone by default, so that the next run (CI clones afresh each
# time) rebuilds only this project's crates, not every instrumented
# dependency: cold, the build is most of the step's time.
export CARGO_TARGET_DIR=${AFL_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/flowtable-fuzz/target}
# Not --locked: fuzz/Cargo.lock is this project's own, and a dependency the
# main workspace adds must not fail the step until someone refreshes it.
# An explicit --target keeps AFL's flags (instrumentation, one codegen unit,
# opt-level 3) off build scripts and proc macros, which then build as the
# profile's build-override says (unoptimised, in parallel): a third of the
# cold build's CPU time went to instrumenting syn and the derive macros.
triple=$(rustc -vV | sed -n 's/^host: //p')
cargo afl build --release --target "$triple" || { echo "cargo afl build failed"; exit 1; }
bin=$CARGO_TARGET_DIR/$triple/release

export AFL_SKIP_CPUFREQ=1 AFL_NO_UI=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1
rm -rf out && mkdir -p out
run() {
    cargo afl fuzz -i "corpus/$1" -o "out/$1" -V "$secs" "$bin/$1" >"out/$1.log" 2>&1
}
status=0
pids=()
for t in "${targets[@]}"; do
    run "$t" &
    pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
for t in "${targets[@]}"; do
    stats=out/$t/default/fuzzer_stats
    if [ ! -f "$stats" ]; then
        echo "$t: did not run (see fuzz/out/$t.log):"; tail -n 20 "out/$t.log"; status=1; continue
    fi
    crashes=$(find "out/$t/default/crashes" -name 'id:*' 2>/dev/null | wc -l)
    echo "$t: $(grep -E '^(execs_done|execs_per_sec|corpus_count|bitmap_cvg|saved_crashes)' "$stats" | tr -s ' ' | tr '\n' ' ')"
    if [ "$crashes" -gt 0 ]; then
        echo "$t: $crashes crash(es) in fuzz/out/$t/default/crashes/; reproduce with: $bin/replay $t FILE"
        status=1
    fi
done
exit $status
