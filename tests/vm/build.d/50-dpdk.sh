#!/usr/bin/env bash
# Host side of the DPDK suite: builds the tap-PMD tests with the `dpdk`
# feature (needs libdpdk-dev, pkg-config, libclang-dev) and prints their
# paths as FT_TEST_VM_DPDK, FT_TEST_VM_DPDK_SOURCE and FT_TEST_VM_DPDK_DAEMON
# for the guest (the daemon test runs the flowtable binary built with them).
# Cargo's chatter goes to a log; stdout carries only NAME=value lines.
set -euo pipefail
cd "$FT_REPO"
json="$(mktemp)"
trap 'rm -f "$json"' EXIT
if ! { cargo test -p flowtable-hw --features dpdk --release --no-run --test vm_dpdk --message-format=json-render-diagnostics \
        && cargo test -p flowtable --features dpdk --release --no-run --test vm_dpdk_source --test vm_dpdk_daemon --message-format=json-render-diagnostics; } \
        > "$json" 2> "$FT_RESULTS/50-dpdk-build.log"; then
    echo "50-dpdk build hook: building with --features dpdk failed, see $FT_RESULTS/50-dpdk-build.log" >&2
    tail -5 "$FT_RESULTS/50-dpdk-build.log" >&2
    echo "FT_DPDK_BUILD_FAILED=1"
    exit 0
fi
python3 - "$json" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    name = m.get("target", {}).get("name")
    if m.get("reason") == "compiler-artifact" and m.get("executable") and name in ("vm_dpdk", "vm_dpdk_source", "vm_dpdk_daemon"):
        print(f"FT_TEST_{name.upper()}={m['executable']}")
PY
