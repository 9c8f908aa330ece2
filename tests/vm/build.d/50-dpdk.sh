#!/usr/bin/env bash
# Host side of the DPDK suite: builds the tap-PMD test with the `dpdk`
# feature (needs libdpdk-dev, pkg-config, libclang-dev) and prints its path
# as FT_TEST_VM_DPDK for the guest. Cargo's chatter goes to stderr; stdout
# carries only NAME=value lines.
set -euo pipefail
cd "$FT_REPO"
json="$(mktemp)"
trap 'rm -f "$json"' EXIT
if ! cargo test -p flowtable-hw --features dpdk --release --no-run --test vm_dpdk \
        --message-format=json > "$json" 2> "$FT_RESULTS/50-dpdk-build.log"; then
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
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "vm_dpdk":
        print(f"FT_TEST_VM_DPDK={m['executable']}")
PY
