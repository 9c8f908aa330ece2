#!/usr/bin/env bash
# The DPDK rte_flow backend and packet source against the tap PMD
# and `flowtable run` on both (hw/tests/vm_dpdk.rs, tests/vm_dpdk_source.rs,
# tests/vm_dpdk_daemon.rs): EAL
# with --no-huge --no-pci and a net_tap vdev; the PMD writes its rules as
# flower filters on the tap netdevice, which the test reads back with tc.
set -euo pipefail
if [ "${FT_DPDK_BUILD_FAILED:-0}" = 1 ]; then
    echo "FAIL: the dpdk feature build failed on the host (install libdpdk-dev pkg-config libclang-dev); see 50-dpdk-build.log"
    exit 1
fi
: "${FT_TEST_VM_DPDK:?vm_dpdk test executable not built (tests/vm/build.d/50-dpdk.sh)}"
: "${FT_TEST_VM_DPDK_SOURCE:?vm_dpdk_source test executable not built (tests/vm/build.d/50-dpdk.sh)}"
: "${FT_TEST_VM_DPDK_DAEMON:?vm_dpdk_daemon test executable not built (tests/vm/build.d/50-dpdk.sh)}"
# The tap PMD needs the tun device and puts a multiq qdisc and flower
# filters with gact actions on its netdevice.
for m in tun sch_multiq cls_flower act_gact act_mirred act_skbedit sch_ingress; do
    modprobe "$m" || echo "modprobe $m failed"
done
if [ ! -e /dev/net/tun ]; then
    mkdir -p /dev/net
    mknod /dev/net/tun c 10 200
fi
export FLOWTABLE_VM=1 RUST_BACKTRACE=1
# One process per executable: the EAL starts once per process.
"$FT_TEST_VM_DPDK" --test-threads=1 --nocapture
"$FT_TEST_VM_DPDK_SOURCE" --test-threads=1 --nocapture
"$FT_TEST_VM_DPDK_DAEMON" --test-threads=1 --nocapture
