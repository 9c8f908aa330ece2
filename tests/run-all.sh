#!/usr/bin/env bash
# Runs every test of the project: installs what the tests need (idempotent),
# then the workspace tests, the DPDK feature tests and the real-kernel suite
# in a VM. Exits non-zero if any part failed; every part runs regardless.
set -u
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never DEBIAN_FRONTEND=noninteractive

need_apt=()
for pkg in tshark tmux pkg-config libdpdk-dev libclang-dev clang softflowd nfdump argus-server prometheus systemd man-db; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing: ${need_apt[*]}"
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null || { echo "apt-get install failed"; exit 1; }
fi

# The Debian package test (tests/packaging.rs) builds with cargo-deb; about a
# minute and a half the first time, nothing once it is there.
if ! cargo deb --version >/dev/null 2>&1; then
    echo "== installing cargo-deb"
    cargo install --locked cargo-deb || { echo "cargo install cargo-deb failed"; exit 1; }
fi

failed=()
log=$(mktemp)
trap 'rm -f "$log"' EXIT
step() {
    local name=$1; shift
    echo "== $name: $*"
    # Output goes on to the terminal and into a log the closing tally reads.
    if "$@" 2>&1 | tee -a "$log"; [ "${PIPESTATUS[0]}" -eq 0 ]; then
        echo "== $name: ok"
    else
        echo "== $name: FAILED"; failed+=("$name")
    fi
}

step format cargo fmt --all --check
step workspace cargo test --workspace --release
# The DPDK backend's host tests (bindings, pattern and action layouts).
step dpdk-host cargo test --release -p flowtable-hw --features dpdk --lib
# Coverage-guided fuzzing with cargo afl (installed if missing): every target
# for 60 s from its seed corpus, failing on any crash (fuzz/README.md).
step fuzz bash fuzz/run-ci.sh
# Kernel-facing code against a real kernel: tc-flower on netdevsim and veth,
# AF_PACKET, the daemon with the tc backend, DPDK's tap PMD. One boot.
step kernel-vm bash -c 'bash tests/vm/setup.sh && bash tests/vm/run.sh'

# Every cargo test binary, on the host and in the VM, closes with
# "test result: ... N passed; M failed": the tally of them all.
tally=$(grep -ho 'test result: [A-Za-z]*\. [0-9]* passed; [0-9]* failed' "$log" \
    | awk '{p += $4; f += $6} END {printf "%d passed, %d failed", p, f}')
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    echo "tests: $tally"
    exit 1
fi
echo "all test suites passed"
echo "tests: $tally"
