#!/usr/bin/env bash
# Live capture (AF_PACKET) and the daemon against the real kernel (tests/vm_live.rs).
set -euo pipefail
: "${FT_TEST_VM_LIVE:?vm_live test executable not built}"
export FLOWTABLE_VM=1 RUST_BACKTRACE=1
"$FT_TEST_VM_LIVE" --test-threads=1 --nocapture ${FT_VM_TESTS:-}
