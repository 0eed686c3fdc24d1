#!/bin/sh
# The grant-DMA guest kernel (issue 26): Debian's Linux 6.1 source (linux-source-6.1) on
# `make tinyconfig` plus CONFIG (guest.config), bzImage only, no modules, with PATCH
# (persistent-grants.patch: grant-dma-ops.c gains persistent grants, off unless the
# command line says grant_dma_ops.persistent=PAGES, so the kernel is otherwise stock); then the same kernel
# without XEN_VIRTIO_FORCE_GRANT (kbuild recompiles only what reads that option: seconds),
# the EPAM guest on the same kernel, for a comparison in which only the grants differ.
#   build-kernel.sh TARBALL CONFIG PATCH OUT  -> OUT/bzImage, OUT/config, OUT/bzImage-nogrant
# tests/xen/build_host.py caches OUT by the hash of CONFIG, PATCH, this script and the tarball.
set -eu
TARBALL=$1 CONFIG=$2 PATCH=$3 OUT=$4
WORK=$OUT.build
rm -rf "$WORK" "$OUT"
mkdir -p "$WORK"
tar -xf "$TARBALL" -C "$WORK" --strip-components=1
cd "$WORK"
patch -p1 --quiet < "$PATCH"
make ARCH=x86_64 tinyconfig > kconfig.log 2>&1
scripts/kconfig/merge_config.sh -m .config "$CONFIG" >> kconfig.log 2>&1
make ARCH=x86_64 olddefconfig >> kconfig.log 2>&1
# every option asked for is set: Kconfig drops one whose dependencies are missing, silently
missing=$(grep -E '^CONFIG_[A-Z0-9_]+=y$' "$CONFIG" | while read -r opt; do grep -qx "$opt" .config || echo "$opt"; done)
[ -z "$missing" ] || { echo "build-kernel: not set after olddefconfig: $missing" >&2; exit 1; }
make ARCH=x86_64 -j"$(nproc)" bzImage > build.log 2>&1 || { tail -30 build.log >&2; exit 1; }
mkdir -p "$OUT.part"
cp arch/x86/boot/bzImage "$OUT.part/bzImage"
cp .config "$OUT.part/config"
scripts/config --disable XEN_VIRTIO_FORCE_GRANT
make ARCH=x86_64 olddefconfig >> kconfig.log 2>&1
! grep -q '^CONFIG_XEN_VIRTIO_FORCE_GRANT=y' .config || { echo "build-kernel: FORCE_GRANT still set" >&2; exit 1; }
make ARCH=x86_64 -j"$(nproc)" bzImage >> build.log 2>&1 || { tail -30 build.log >&2; exit 1; }
cp arch/x86/boot/bzImage "$OUT.part/bzImage-nogrant"
mv "$OUT.part" "$OUT"  # complete or absent
cd /
rm -rf "$WORK"
