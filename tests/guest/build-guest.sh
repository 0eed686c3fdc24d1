#!/bin/sh
# Build a tiny virtio test guest from Debian packages: Debian's kernel (linux-image-amd64)
# and an initramfs of busybox-static, the virtio modules and tests/guest/init.
#
#   tests/guest/build-guest.sh [--no-fetch] [OUT_DIR]   (default .cache/guest; idempotent)
#   tests/guest/build-guest.sh --kernel-version [OUT_DIR]
#
# Writes OUT_DIR/vmlinuz and OUT_DIR/initramfs.cpio.gz. The kernel package is downloaded
# (apt-get download) and unpacked, never installed on this machine; with --no-fetch (what
# the tests use) a kernel not yet unpacked is an error instead: `make test-assets` fetches
# it before pytest. Installs nothing: busybox-static, cpio and qemu-system-x86 come from
# `make apt`, which asks --kernel-version for the kernel (the one unpacked, else the one
# linux-image-amd64 depends on) whose linux-headers tests/xen builds its guest module with.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
MODE=build
case "${1:-}" in
  --no-fetch) MODE=no-fetch; shift ;;
  --kernel-version) MODE=kernel-version; shift ;;
esac
OUT=${1:-.cache/guest}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
latest() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}'; }

if [ "$MODE" = kernel-version ]; then
  if [ -s "$OUT/vmlinuz" ]; then ls "$OUT/kpkg/root/lib/modules"; else latest | sed 's/^linux-image-//'; fi
  exit 0
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

need=""
command -v busybox >/dev/null 2>&1 && [ -e /bin/busybox ] || need="$need busybox-static"
command -v cpio >/dev/null 2>&1 || need="$need cpio"
command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$need qemu-system-x86"
if [ -n "$need" ]; then
  echo "build-guest: missing Debian packages:$need (make apt, or: sudo apt-get install --no-install-recommends$need)" >&2
  exit 1
fi

if [ ! -s "$OUT/vmlinuz" ] && [ "$MODE" = no-fetch ]; then
  echo "build-guest: no Debian kernel unpacked in $OUT (make test-assets, or: sh tests/guest/build-guest.sh $OUT)" >&2
  exit 1
fi
if [ ! -s "$OUT/vmlinuz" ]; then
  pkg=$(latest)
  [ -n "$pkg" ] || { echo "build-guest: cannot resolve linux-image-amd64" >&2; exit 1; }
  rm -rf "$OUT/kpkg" && mkdir -p "$OUT/kpkg"
  (cd "$OUT/kpkg" && apt-get download "$pkg" 2>/dev/null || $SUDO apt-get download "$pkg")
  dpkg-deb -x "$OUT"/kpkg/*.deb "$OUT/kpkg/root"
  cp "$OUT"/kpkg/root/boot/vmlinuz-* "$OUT/vmlinuz.tmp" && mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
  rm -f "$OUT"/kpkg/*.deb
fi

KVER=$(ls "$OUT/kpkg/root/lib/modules")
MODS="$OUT/kpkg/root/lib/modules/$KVER/kernel"
ROOT="$OUT/initramfs"
rm -rf "$ROOT" && mkdir -p "$ROOT/bin" "$ROOT/lib/modules" "$ROOT/dev" "$ROOT/proc" "$ROOT/sys" "$ROOT/tmp"
cp /bin/busybox "$ROOT/bin/busybox"
for m in drivers/virtio/virtio.ko drivers/virtio/virtio_ring.ko \
         drivers/virtio/virtio_pci_legacy_dev.ko drivers/virtio/virtio_pci_modern_dev.ko \
         drivers/virtio/virtio_pci.ko drivers/virtio/virtio_mmio.ko drivers/block/virtio_blk.ko \
         net/core/failover.ko drivers/net/net_failover.ko drivers/net/virtio_net.ko; do
  cp "$MODS/$m" "$ROOT/lib/modules/"
done
cp "$HERE/init" "$ROOT/init" && chmod +x "$ROOT/init"
(cd "$ROOT" && find . | cpio -o -H newc --quiet | gzip -1 > "$OUT/initramfs.cpio.gz.tmp")
mv "$OUT/initramfs.cpio.gz.tmp" "$OUT/initramfs.cpio.gz"
echo "$OUT/vmlinuz $OUT/initramfs.cpio.gz"
