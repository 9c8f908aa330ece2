#!/usr/bin/env bash
# tc backend vs iproute2 on 10k and 50k software flower filters: install,
# dump with stats, delete. Runs only with FT_VM_BENCH=1 (it takes minutes
# under emulation); the table goes to $FT_RESULTS/tc-bench.md.
set -euo pipefail
if [ "${FT_VM_BENCH:-0}" != 1 ]; then
    echo "skipped: tc benchmark (set FT_VM_BENCH=1)"
    exit 0
fi
: "${FT_BIN_FLOWTABLE_TC_BENCH:?flowtable-tc-bench not built}"
echo "kernel $(uname -r), $(nproc) cpus, $(tc -V)"
"$FT_BIN_FLOWTABLE_TC_BENCH" --counts "${FT_TC_BENCH_COUNTS:-10000,50000}" --out "$FT_RESULTS/tc-bench.md"
