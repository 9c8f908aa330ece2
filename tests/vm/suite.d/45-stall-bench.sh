#!/usr/bin/env bash
# The packet path against the real tc backend: `flowtable bench stall` with
# 20,000 flows offloaded as software flower filters (40,000 rules) on a
# dummy device, one thread doing everything against workers and an offload
# thread, same traffic, same run. Runs only with FT_VM_BENCH=1 (minutes
# under emulation); the report goes to $FT_RESULTS/stall-bench.txt.
set -euo pipefail
if [ "${FT_VM_BENCH:-0}" != 1 ]; then
    echo "skipped: stall benchmark (set FT_VM_BENCH=1)"
    exit 0
fi
: "${FT_BIN_FLOWTABLE:?flowtable not built}"
dev=ftstall0
ip link del "$dev" 2>/dev/null || true
ip link add "$dev" type dummy
ip link set "$dev" up
trap 'ip link del "$dev" 2>/dev/null || true' EXIT
cfg=/tmp/ft-stall.json
cat > "$cfg" <<JSON
{
  "instance_id": 4545,
  "ports": [{ "name": "$dev" }],
  "classifier": { "rules": [{ "name": "all", "match": {}, "trigger": { "after_packets": 2 },
                              "result": { "offload": { "type": "drop" } } }] },
  "offload": { "poll_interval_ms": 1000, "batch_size": 256, "max_queued": 1000000, "placement": "software" },
  "timeouts": { "udp_s": 600 },
  "table": { "max_flows": 100000 },
  "backend": { "kind": "tc" }
}
JSON
echo "kernel $(uname -r), $(nproc) cpus"
"$FT_BIN_FLOWTABLE" bench stall --config "$cfg" --flows "${FT_STALL_FLOWS:-20000}" --rate 50000 \
    --seconds "${FT_STALL_SECONDS:-40}" | tee "$FT_RESULTS/stall-bench.txt"
