#!/usr/bin/env bash
# Installs what the real-kernel suite needs, idempotently: QEMU, a Debian
# kernel with its headers, the kernel source (for netdevsim, which Debian
# doesn't ship as a module), the traffic tools and virtme-ng; then builds
# netdevsim.ko out of tree into tests/vm/.cache/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="$here/.cache"
mkdir -p "$cache"

log() { echo "vm-setup: $*" >&2; }

apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    local try
    for try in 1 2 3 4 5 6 7 8 9 10; do
        if apt-get install -y --no-install-recommends "${missing[@]}"; then
            return 0
        fi
        # Another install may hold the dpkg lock; refresh lists once and retry.
        [ "$try" -eq 1 ] && apt-get update -q || true
        sleep 15
    done
    log "apt-get install failed: ${missing[*]}"
    return 1
}

# busybox-static: virtme-ng builds the guest's initramfs around a static
# busybox (Debian's kernel has 9p and virtio as modules, so it needs one).
apt_install linux-image-amd64 qemu-system-x86 iproute2 ethtool iperf3 netcat-openbsd \
    linux-source-6.1 python3-pip kmod xz-utils make gcc iputils-ping procps diffutils \
    libdpdk-dev pkg-config libclang-dev clang busybox-static

# The kernel the guest boots: the newest Debian kernel in /boot (the host
# may run a kernel Debian doesn't ship).
kver="$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sed 's|/boot/vmlinuz-||' | sort -V | tail -n1)"
[ -n "$kver" ] || { log "no Debian kernel in /boot"; exit 1; }
log "guest kernel $kver"
apt_install "linux-headers-$kver"
echo "$kver" > "$cache/kver"

if ! command -v vng >/dev/null 2>&1; then
    log "pip install virtme-ng"
    # The version the suite was last verified with.
    pip install virtme-ng==1.42 2>/dev/null || pip install --break-system-packages virtme-ng==1.42
fi

# netdevsim: Debian builds it off, so build it from the matching source.
ko="$cache/netdevsim-$kver/netdevsim.ko"
if [ ! -f "$ko" ]; then
    src="$(ls /usr/src/linux-source-*.tar.xz | sort -V | tail -n1)"
    top="$(basename "$src" .tar.xz)"
    build="$cache/netdevsim-$kver"
    rm -rf "$build" && mkdir -p "$build"
    log "extracting netdevsim from $src"
    tar -xJf "$src" -C "$build" --strip-components=4 "$top/drivers/net/netdevsim/"
    make -s -C "/lib/modules/$kver/build" M="$build" CONFIG_NETDEVSIM=m modules
fi
test -f "$ko"
log "netdevsim: $ko"
log "ready"
