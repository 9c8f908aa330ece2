#!/usr/bin/env bash
# Runs inside the VM as root: loads the modules the suite needs, inserts
# netdevsim, then runs every tests/vm/suite.d/*.sh in order. Each script's
# output goes to <results>/<name>.log and a line "<name> <exit> <seconds>"
# to <results>/status; <results>/guest.done marks a complete run.
# The host file system is read-only here except <results>; /tmp is the
# guest's own.
set -u
results="$1"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
set -a
# shellcheck disable=SC1091
. "$results/bins.env"
set +a
export FT_RESULTS="$results"

{
    echo "kernel $(uname -r)"
    for m in cls_flower act_gact act_mirred act_skbedit sch_ingress psample tun veth; do
        modprobe "$m" || echo "modprobe $m failed"
    done
    insmod "$FT_NETDEVSIM_KO" || echo "insmod netdevsim failed"
    ip link set lo up
    lsmod | grep -E 'netdevsim|cls_flower|act_mirred' || true
} > "$results/guest-setup.log" 2>&1

: > "$results/status"
for script in "$here"/suite.d/*.sh; do
    name="$(basename "$script" .sh)"
    if [ -n "${FT_VM_ONLY:-}" ] && ! grep -qw -- "$name" <<< "$FT_VM_ONLY"; then
        continue
    fi
    start=$(date +%s)
    (cd /tmp && bash "$script") > "$results/$name.log" 2>&1 < /dev/null
    rc=$?
    echo "$name $rc $(( $(date +%s) - start ))" >> "$results/status"
done
sync
echo ok > "$results/guest.done"
