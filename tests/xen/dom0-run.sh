#!/bin/sh
# The scenario, run in dom0 inside this machine's own root (see dom0-init): start Xen's
# daemons, capture with xvtrace while a guest does its I/O, leave the bundle in /tmp/out.
#   dom0-run.sh REPO SCENARIO KERNEL GUEST_INITRAMFS
REPO=$1 SCENARIO=$2 KERNEL=$3 GUEST=$4
# SCENARIO-w2: the same host and transport, the guest running workload W2 (tests/xen/guest-init)
WORKLOAD="" JOBS="--workload W1 --jobs 1 --iodepth 1"
case $SCENARIO in *-w2) WORKLOAD=xvt_w2 JOBS="--workload W2 --jobs 4 --iodepth 1" ;; esac
BASE=${SCENARIO%-w2}
VCPUS=1
[ "$SCENARIO" = hvm-epam-smp ] && VCPUS=2  # the EPAM path with a guest of two vCPUs
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin
mkdir -p /var/run/xen /var/run/xenstored /var/lib/xen /var/lib/xenstored /var/log/xen/console /tmp/work/console
xenstored --pid-file /var/run/xenstored.pid || { echo "XVT-HOST xenstored failed"; exit 1; }
xen-init-dom0 >/dev/null || echo "XVT-HOST xen-init-dom0 failed"
xenconsoled --log=guest --log-dir=/tmp/work/console &
xl info > /tmp/out/xl-info.txt 2>&1
echo "XVT-HOST xl info: $(grep -E '^(xen_version|cpu_mhz|virt_caps)' /tmp/out/xl-info.txt | tr -s ' ' | tr '\n' ';')"

# the guest's disk image, on tmpfs; a PV guest's is a loop device over it (blk-mq, so dom0's
# block layer traces each request: block_rq_insert/issue/complete)
truncate -s 64M /tmp/work/disk.img
# HVM guests: Debian's kernel without PV drivers (xen_nopv, no platform device), so every
# disk access is a trap to the qemu-xen device model over an IOREQ. They boot untraced (the
# firmware loads the kernel through fw_cfg, millions of IOREQs) and wait for dom0's go,
# written into their disk once the capture runs; the device model is traced through our own
# QMP socket, and its log stamps with -msg timestamp=on.
QMP=/tmp/work/dm-qmp.sock
guest_cfg() {  # guest_cfg NAME TYPE: what every guest's config has; the caller appends the rest
  cat > /tmp/work/guest.cfg <<CFG
name = "$1"
type = "$2"
kernel = "$KERNEL"
ramdisk = "$GUEST"
memory = 256
vcpus = $VCPUS
on_poweroff = "destroy"
on_crash = "destroy"
CFG
}
PVHVM=0  # 1: the guest's PV-on-HVM drivers on (the grant table needs the platform device)
hvm_cfg() {  # hvm_cfg DEVICE_MODEL_ARGS [EXTRA_KERNEL_ARGS]
  guest_cfg hvmguest hvm
  # Debian's kernel boots quiet (errors still shown): its console is the device model's
  # UART, a trap per byte, and its 20 KB boot log took a minute of each boot. Our kernel
  # (PV-on-HVM) says what the grant tests read at its info level
  NOPV="xen_nopv quiet"
  [ "$PVHVM" = 1 ] && NOPV=""
  cat >> /tmp/work/guest.cfg <<CFG
cmdline = "console=ttyS0 $NOPV xvt_wait $WORKLOAD $2"
xen_platform_pci = $PVHVM
vga = "none"
serial = "file:/tmp/out/guest-serial.log"  # live on the out share, to watch a slow boot
device_model_version = "qemu-xen"
device_model_args_hvm = [ "-qmp", "unix:$QMP,server=on,wait=off", "-msg", "timestamp=on"${1:+, $1} ]
CFG
}
TRACE=""
case $BASE in
pv)
  DISK=$(losetup -f --show /tmp/work/disk.img) || { echo "XVT-HOST losetup failed"; exit 1; }
  guest_cfg pvguest pv
  cat >> /tmp/work/guest.cfg <<CFG
extra = "console=hvc0 rdinit=/init $WORKLOAD"
disk = [ 'format=raw,vdev=xvda,access=rw,script=$REPO/tests/xen/block-simple,target=$DISK' ]
CFG
  ;;
hvm-virtio)
  # the VirtIO-GSOC HVM path: a virtio-blk-pci disk the device model serves over IOREQs
  # (QEMU's default cache: see hvm-ide)
  hvm_cfg '"-drive", "if=none,id=vd0,file=/tmp/work/disk.img,format=raw", "-device", "virtio-blk-pci,drive=vd0"'
  TRACE="--transport qemu-virtio-pci --trace handle_ioreq* --trace cpu_ioreq_* --trace virtio_* --trace virtqueue_* --trace xen_map_cache*"
  ;;
hvm-ide)
  # an emulated IDE disk (PIIX, bus-master DMA). QEMU's default cache: with O_DIRECT
  # (cache=none) every DMA fails, as the kernel cannot pin the foreign-mapped guest pages
  # QEMU reads into, so dom0's block layer sees page-cache traffic, not the guest's
  # requests; the device model's IDE events are the per-request record
  hvm_cfg '"-drive", "if=none,id=hd0,file=/tmp/work/disk.img,format=raw", "-device", "ide-hd,drive=hd0,bus=ide.0,unit=0"'
  TRACE="--trace handle_ioreq* --trace cpu_ioreq_* --trace ide_exec_cmd --trace ide_dma_cb --trace ide_ioport_* --trace ide_status_read --trace bmdma_cmd_writeb --trace dma_blk_io --trace dma_complete"
  ;;
hvm-epam|hvm-epam-smp)
  # VirtIO-EPAM: a virtio-mmio block device at 0xfe000000 (IRQ 5) that no QEMU serves: an
  # IOREQ server of its own in dom0 (tests/xen/epam/backend.py) claims the window and reaches
  # the guest's memory through foreign mappings; the guest's stock virtio_mmio driver finds
  # it through the platform device its module registers (xvt_epam)
  hvm_cfg "" xvt_epam
  ;;
hvm-stratos)
  # Linaro Stratos: hvm-epam's guest and device window, but the IOREQ server is a
  # vhost-user front-end (tests/xen/stratos/frontend.py) that hands the queue to a
  # vhost-user-blk back-end process (tests/xen/stratos/backend.py) over a unix socket: the
  # kick and call as eventfds, the guest's memory mapped by the back-end itself
  hvm_cfg "" xvt_epam
  ;;
hvm-epam-pvhvm)
  # VirtIO-EPAM on hvm-suse-grant's guest: the same kernel built without FORCE_GRANT, the
  # PV-on-HVM guest too, so against hvm-suse-grant only the grants differ
  PVHVM=1
  hvm_cfg "" "virtio_mmio.device=512@0xfe000000:5"
  ;;
hvm-suse-grant)
  # VirtIO-SuSE: the same device and backend, but the guest is Linux with grant DMA for
  # virtio (tests/xen/grant: XEN_VIRTIO_FORCE_GRANT, dom0 as the backend), which puts grant
  # references in every address it gives the device; the backend maps them through gntdev
  # per request (--grants). The kernel instantiates the device from its command line.
  PVHVM=1
  hvm_cfg "" "virtio_mmio.device=512@0xfe000000:5"
  ;;
hvm-suse-grant-persistent)
  # VirtIO-SuSE with persistent grants: the same kernel with its pool on (1024 pages granted
  # once, every buffer copied through them: tests/xen/grant/persistent-grants.patch), the
  # backend keeping each pool grant mapped after its first use (--persistent)
  PVHVM=1
  hvm_cfg "" "virtio_mmio.device=512@0xfe000000:5 grant_dma_ops.persistent=1024"
  ;;
*) echo "XVT-HOST unknown scenario $SCENARIO"; exit 1 ;;
esac
NAME=$(sed -n 's/^name = "\(.*\)"/\1/p' /tmp/work/guest.cfg)
cp /tmp/work/guest.cfg /tmp/out/guest.cfg
capture() {  # xvtrace in dom0 as installed on this machine (its venv): the capture command
  # alone, which needs neither polars nor numpy (this CPU has no SSE4/AVX). The bundle goes
  # to tmpfs (xentrace writes straight from Xen's trace pages, which 9p cannot take) and is
  # copied out at the end. Every trace class but PV and shadow (dom0's own PV hypercalls,
  # mostly page-table updates, would be 90 % of the trace).
  "$REPO/.venv/bin/python" -m xvtrace.capture -o "/tmp/work/$SCENARIO" --xentrace \
    --xentrace-mask 0x009ff000 --block-trace --duration 600 $JOBS "$@" \
    --no-ingest --no-progress > /tmp/out/capture.log 2>&1 &
  CAP=$!
  # at least 5 s (the scenarios' request counts were set with that), and until the capture
  # says every source records: on a loaded host dom0's Python alone can take longer
  sleep 5
  wait_for 300 capture_recording || echo "XVT-HOST capture not recording: $(tail -3 /tmp/out/capture.log)"
}
capture_recording() {  # its "capturing:" line (printed once every source started), or it is gone
  grep -qs "^capturing:" /tmp/out/capture.log || ! kill -0 "$CAP" 2>/dev/null
}
guest_ready() {  # the guest said so, or is gone (then there is nothing to wait for)
  grep -qs "XVT-GUEST ready" /tmp/out/guest-serial.log || ! xl list "$NAME" >/dev/null 2>&1
}
wait_for() {  # wait_for SECONDS COMMAND...: poll until COMMAND succeeds
  t=$1; shift; i=0
  while ! "$@" && [ $i -lt $t ]; do sleep 1; i=$((i + 1)); done
  "$@"
}
case $BASE in
pv)
  capture --transport pv-blkif
  xl create /tmp/work/guest.cfg > /tmp/out/xl-create.log 2>&1 || echo "XVT-HOST xl create failed: $(tail -3 /tmp/out/xl-create.log)"
  echo "XVT-HOST guest started"
  ;;
hvm-*)
  case $BASE in
  hvm-epam*|hvm-suse*)  # the backend attaches to the paused guest
    GRANTS="" TRANSPORT=epam-mmio
    [ "$BASE" = hvm-suse-grant ] && GRANTS=--grants TRANSPORT=suse-grant
    [ "$BASE" = hvm-suse-grant-persistent ] && GRANTS="--grants --persistent" TRANSPORT=suse-grant-persistent
    xl create -p /tmp/work/guest.cfg > /tmp/out/xl-create.log 2>&1 || echo "XVT-HOST xl create failed: $(tail -3 /tmp/out/xl-create.log)"
    "$REPO/.venv/bin/python" "$REPO/tests/xen/epam/backend.py" --domid "$(xl domid "$NAME")" \
      --disk /tmp/work/disk.img --log /tmp/work/epam.log --vcpus "${VCPUS:-1}" $GRANTS > /tmp/out/backend.log 2>&1 &
    BACKEND=$!
    wait_for 60 grep -qs "ioreq server" /tmp/out/backend.log || echo "XVT-HOST backend not up: $(tail -3 /tmp/out/backend.log)"
    xl unpause "$NAME"
    TRACE="--transport $TRANSPORT --log /tmp/work/epam.log --log /tmp/work/epam.log.trace-events"
    ;;
  hvm-stratos)  # the back-end listens first; the front-end attaches to the paused guest
    "$REPO/.venv/bin/python" "$REPO/tests/xen/stratos/backend.py" --socket /tmp/work/vu.sock \
      --disk /tmp/work/disk.img --log /tmp/work/backend.log > /tmp/out/vu-backend.log 2>&1 &
    VUBACKEND=$!
    wait_for 60 grep -qs "listening" /tmp/out/vu-backend.log || echo "XVT-HOST vhost-user back-end not up: $(tail -3 /tmp/out/vu-backend.log)"
    xl create -p /tmp/work/guest.cfg > /tmp/out/xl-create.log 2>&1 || echo "XVT-HOST xl create failed: $(tail -3 /tmp/out/xl-create.log)"
    "$REPO/.venv/bin/python" "$REPO/tests/xen/stratos/frontend.py" --domid "$(xl domid "$NAME")" \
      --socket /tmp/work/vu.sock --log /tmp/work/frontend.log --vcpus "${VCPUS:-1}" \
      --memory-mb "$(sed -n 's/^memory = //p' /tmp/work/guest.cfg)" > /tmp/out/backend.log 2>&1 &
    BACKEND=$!
    wait_for 60 grep -qs "ioreq server" /tmp/out/backend.log || echo "XVT-HOST front-end not up: $(tail -3 /tmp/out/backend.log)"
    xl unpause "$NAME"
    TRACE="--transport stratos-vhost-user --log /tmp/work/frontend.log --log /tmp/work/frontend.log.trace-events"
    TRACE="$TRACE --log /tmp/work/backend.log --log /tmp/work/backend.log.trace-events"
    ;;
  *) xl create /tmp/work/guest.cfg > /tmp/out/xl-create.log 2>&1 || echo "XVT-HOST xl create failed: $(tail -3 /tmp/out/xl-create.log)" ;;
  esac
  echo "XVT-HOST guest started"
  if wait_for 600 guest_ready && grep -qs "XVT-GUEST ready" /tmp/out/guest-serial.log; then
    echo "XVT-HOST guest ready"
    # shellcheck disable=SC2086
    if [ -n "$BACKEND" ]; then capture $TRACE; else capture --qmp $QMP $TRACE; fi
    # into the image file's page cache, which QEMU reads
    printf XVTGO | dd of=/tmp/work/disk.img conv=notrunc 2>/dev/null
    echo "XVT-HOST go"
  else
    echo "XVT-HOST guest not ready: $(tail -c 300 /tmp/out/guest-serial.log)"
    if [ -n "$BACKEND" ]; then  # what the backend saw, for the post-mortem
      kill -TERM $BACKEND; wait $BACKEND; BACKEND=""
      cp /tmp/work/epam.log /tmp/work/frontend.log /tmp/work/backend.log /tmp/out/ 2>/dev/null
    fi
  fi
  ;;
esac
i=0
while xl list "$NAME" >/dev/null 2>&1 && [ $i -lt 480 ]; do sleep 5; i=$((i + 5)); done
echo "XVT-HOST guest gone after ${i} s"
if [ -n "$BACKEND" ]; then  # its log is complete before the capture copies it
  kill -TERM $BACKEND; wait $BACKEND
  echo "XVT-HOST backend: $(tail -1 /tmp/out/backend.log)"
fi
if [ -n "$VUBACKEND" ]; then  # the front-end's hang-up ends it; its totals are its last line
  wait_for 30 sh -c "! kill -0 $VUBACKEND 2>/dev/null" || kill -TERM $VUBACKEND
  wait $VUBACKEND
  echo "XVT-HOST vhost-user back-end: $(tail -1 /tmp/out/vu-backend.log)"
fi
[ -n "$CAP" ] && kill -INT $CAP
wait $CAP
echo "XVT-HOST capture exit $?: $(tail -1 /tmp/out/capture.log)"
xl dmesg > /tmp/out/xl-dmesg.txt 2>&1
[ -n "$BACKEND" ] && cp /tmp/out/backend.log "/tmp/work/$SCENARIO/meta/backend.log"  # its totals
[ -n "$VUBACKEND" ] && cp /tmp/out/vu-backend.log "/tmp/work/$SCENARIO/meta/vu-backend.log"
[ -f /tmp/out/guest-serial.log ] && cp /tmp/out/guest-serial.log /tmp/work/console/guest-hvmguest.log
cp -r "/tmp/work/$SCENARIO" /tmp/work/console /tmp/out/ && echo "XVT-HOST bundle copied: $(du -sk "/tmp/work/$SCENARIO" | cut -f1) KiB"
