#!/usr/bin/env bash
# The tc-flower backend against the real kernel: netdevsim and veth pairs
# between network namespaces (hw/tests/vm_tc.rs).
set -euo pipefail
: "${FT_TEST_VM_TC:?vm_tc test executable not built}"
export FLOWTABLE_VM=1 RUST_BACKTRACE=1
"$FT_TEST_VM_TC" --test-threads=1 --nocapture
