#!/usr/bin/env bash
# Runs the real-kernel suite: builds the host binaries, boots the Debian
# kernel once under QEMU (virtme-ng), runs tests/vm/guest.sh inside, and
# reports the per-script results the guest left in the results directory.
# Exit status: 0 only when every suite script passed.
#
# Environment:
#   CARGO_TARGET_DIR   where cargo builds (default: <repo>/target)
#   FT_VM_ONLY         space-separated suite script names to run (e.g. "10-tc")
#   FT_VM_BENCH=1      also run the benchmarks (suite scripts check it)
#   FT_VM_TESTS        a test-name filter the cargo-test scripts pass on
#   FT_VM_TIMEOUT      seconds before the VM is given up on (default 1200)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="$here/.cache"
results="$cache/results"
target="${CARGO_TARGET_DIR:-$repo/target}"
mkdir -p "$target"
target="$(cd "$target" && pwd)"

log() { echo "vm-run: $*" >&2; }

[ -f "$cache/kver" ] || { log "run tests/vm/setup.sh first"; exit 2; }
kver="$(cat "$cache/kver")"
ko="$cache/netdevsim-$kver/netdevsim.ko"
[ -f "$ko" ] || { log "netdevsim.ko missing: run tests/vm/setup.sh"; exit 2; }
command -v vng >/dev/null || { log "vng missing: run tests/vm/setup.sh"; exit 2; }

rm -rf "$results"
mkdir -p "$results"
bins="$results/bins.env"
: > "$bins"

# Host build: every test executable of the workspace (release, so the
# benchmarks mean something) and the binaries. The guest runs them in place
# through the read-only view of the host's file system.
log "building test executables (release)"
(cd "$repo" && CARGO_TARGET_DIR="$target" cargo test --workspace --release --no-run --message-format=json) \
    > "$cache/build.json" 2> "$cache/build.log" || { cat "$cache/build.log" >&2; exit 1; }
python3 - "$cache/build.json" >> "$bins" <<'PY'
# One variable per integration-test executable: FT_TEST_<TARGET_NAME>.
import json, sys, re
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    if m["target"]["kind"] != ["test"]:
        continue
    name = re.sub(r"[^A-Za-z0-9]", "_", m["target"]["name"]).upper()
    print(f"FT_TEST_{name}={m['executable']}")
PY
log "building binaries (release)"
(cd "$repo" && CARGO_TARGET_DIR="$target" cargo build --workspace --release --bins) 2>> "$cache/build.log" \
    || { cat "$cache/build.log" >&2; exit 1; }
for b in "$target"/release/*; do
    [ -f "$b" ] && [ -x "$b" ] || continue
    name="$(basename "$b")"
    case "$name" in *.d|*.so|build-script-*) continue;; esac
    echo "FT_BIN_$(echo "$name" | tr 'a-z-' 'A-Z_')=$b" >> "$bins"
done
# Extra host-side build steps a suite needs (e.g. a DPDK build).
for hook in "$here"/build.d/*.sh; do
    [ -f "$hook" ] || continue
    log "build hook $(basename "$hook")"
    FT_RESULTS="$results" FT_REPO="$repo" CARGO_TARGET_DIR="$target" bash "$hook" >> "$bins"
done
{
    echo "FT_REPO=$repo"
    echo "FT_KVER=$kver"
    echo "FT_NETDEVSIM_KO=$ko"
    echo "FT_VM_BENCH=${FT_VM_BENCH:-0}"
    echo "FT_VM_ONLY=\"${FT_VM_ONLY:-}\""
    echo "FT_VM_TESTS=\"${FT_VM_TESTS:-}\""
    # Other FT_* settings of the caller reach the guest too (e.g. FT_TC_BENCH_COUNTS).
    env | grep -E '^FT_[A-Z0-9_]+=' | grep -vE '^FT_(VM_BENCH|VM_ONLY|REPO|KVER|NETDEVSIM_KO)=' \
        | sed -E 's/^([^=]+)=(.*)$/\1="\2"/' || true
} >> "$bins"
log "executables for the guest:"
sed 's/^/  /' "$bins" >&2

log "booting $kver (one boot for the whole suite)"
start=$(date +%s)
set +e
timeout "${FT_VM_TIMEOUT:-1200}" vng --disable-kvm --cpus 2 --memory 1G \
    --run "/boot/vmlinuz-$kver" --rwdir "$results" \
    -- bash "$here/guest.sh" "$results" > "$cache/console.log" 2>&1 < /dev/null
vng_rc=$?
set -e
log "vm finished in $(( $(date +%s) - start ))s (vng exit $vng_rc; the guest's own results follow)"

fail=0
if [ ! -f "$results/guest.done" ]; then
    log "the guest did not finish; console tail:"
    tail -n 60 "$cache/console.log" >&2
    fail=1
fi
if [ -f "$results/status" ]; then
    while read -r name rc secs; do
        echo "===== $name: exit $rc (${secs}s) ====="
        cat "$results/$name.log" 2>/dev/null || echo "(no log)"
        [ "$rc" = 0 ] || fail=1
    done < "$results/status"
    echo "===== summary ====="
    while read -r name rc secs; do
        if [ "$rc" = 0 ]; then echo "PASS $name (${secs}s)"; else echo "FAIL $name (exit $rc)"; fi
    done < "$results/status"
else
    log "no status file from the guest"
    fail=1
fi
exit $fail
