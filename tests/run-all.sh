#!/usr/bin/env bash
# Runs every test of the project: installs what the tests need (idempotent),
# then the workspace tests, the DPDK feature tests and the real-kernel suite
# in a VM. Exits non-zero if any part failed; every part runs regardless.
set -u
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never DEBIAN_FRONTEND=noninteractive

need_apt=()
for pkg in tshark tmux pkg-config libdpdk-dev libclang-dev clang softflowd; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "== installing: ${need_apt[*]}"
    apt-get update -qq && apt-get install -y -qq "${need_apt[@]}" >/dev/null || { echo "apt-get install failed"; exit 1; }
fi

failed=()
step() {
    local name=$1; shift
    echo "== $name: $*"
    if "$@"; then echo "== $name: ok"; else echo "== $name: FAILED"; failed+=("$name"); fi
}

step format cargo fmt --all --check
step workspace cargo test --workspace --release
# The DPDK backend's host tests (bindings, pattern and action layouts).
step dpdk-host cargo test --release -p flowtable-hw --features dpdk --lib
# Kernel-facing code against a real kernel: tc-flower on netdevsim and veth,
# AF_PACKET, the daemon with the tc backend, DPDK's tap PMD. One boot.
step kernel-vm bash -c 'bash tests/vm/setup.sh && bash tests/vm/run.sh'

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all test suites passed"
