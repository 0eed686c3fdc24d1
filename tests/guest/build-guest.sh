#!/bin/sh
# Build a tiny virtio test guest from Debian packages: Debian's kernel (linux-image-amd64)
# and an initramfs of busybox-static, the virtio modules and tests/guest/init.
#
#   tests/guest/build-guest.sh [OUT_DIR]      (default .cache/guest; idempotent)
#
# Writes OUT_DIR/vmlinuz and OUT_DIR/initramfs.cpio.gz. Needs apt (as root, or sudo) once for
# busybox-static, cpio and qemu-system-x86; the kernel package is only downloaded and
# unpacked, never installed on this machine.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-.cache/guest}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)

need=""
command -v busybox >/dev/null 2>&1 && [ -e /bin/busybox ] || need="$need busybox-static"
command -v cpio >/dev/null 2>&1 || need="$need cpio"
command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$need qemu-system-x86"
if [ -n "$need" ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need
fi

if [ ! -s "$OUT/vmlinuz" ]; then
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')
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
