#!/bin/sh
# The scenario, run in dom0 inside this machine's own root (see dom0-init): start Xen's
# daemons, capture with xvtrace while a guest does its I/O, leave the bundle in /tmp/out.
#   dom0-run.sh REPO SCENARIO KERNEL GUEST_INITRAMFS
REPO=$1 SCENARIO=$2 KERNEL=$3 GUEST=$4
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/xen-4.17/bin
LOGS=""
mkdir -p /var/run/xen /var/run/xenstored /var/lib/xen /var/lib/xenstored /var/log/xen/console /tmp/work/console
xenstored --pid-file /var/run/xenstored.pid || { echo "XVT-HOST xenstored failed"; exit 1; }
xen-init-dom0 >/dev/null || echo "XVT-HOST xen-init-dom0 failed"
xenconsoled --log=guest --log-dir=/tmp/work/console &
xl info > /tmp/out/xl-info.txt 2>&1
echo "XVT-HOST xl info: $(grep -E '^(xen_version|cpu_mhz|virt_caps)' /tmp/out/xl-info.txt | tr -s ' ' | tr '\n' ';')"

# the guest's disk: a loop device on tmpfs (blk-mq, so dom0's block layer traces each
# request: block_rq_insert/issue/complete)
truncate -s 64M /tmp/work/disk.img
DISK=$(losetup -f --show /tmp/work/disk.img) || { echo "XVT-HOST losetup failed"; exit 1; }
case $SCENARIO in
pv)
  cat > /tmp/work/guest.cfg <<CFG
name = "pvguest"
type = "pv"
kernel = "$KERNEL"
ramdisk = "$GUEST"
extra = "console=hvc0 rdinit=/init"
memory = 256
vcpus = 1
disk = [ 'format=raw,vdev=xvda,access=rw,script=$REPO/tests/xen/block-simple,target=$DISK' ]
on_poweroff = "destroy"
on_crash = "destroy"
CFG
  ;;
hvm-virtio)
  # WORK IN PROGRESS (not offered by build_host.py yet): an HVM guest whose virtio-blk-pci
  # disk the qemu-xen device model serves over IOREQs (the VirtIO-GSOC HVM path), with the
  # device model's trace events in a log. In the first attempt the guest had not finished
  # after 10 minutes; its serial log now goes straight to the out share to see why.
  truncate -s 64M /tmp/work/vdisk.img
  cat > /tmp/work/guest.cfg <<CFG
name = "hvmguest"
type = "hvm"
kernel = "$KERNEL"
ramdisk = "$REPO/.cache/guest/initramfs.cpio.gz"
cmdline = "console=ttyS0 xen_nopv"
memory = 256
vcpus = 1
xen_platform_pci = 0
vga = "none"
serial = "file:/tmp/out/hvmguest-serial.log"
device_model_version = "qemu-xen"
device_model_args_hvm = [ "-drive", "if=none,id=vd0,file=/tmp/work/vdisk.img,format=raw",
  "-device", "virtio-blk-pci,drive=vd0", "-msg", "timestamp=on", "-D", "/tmp/work/qemu-dm.log",
  "-trace", "virtio_*", "-trace", "virtqueue_*", "-trace", "handle_ioreq*", "-trace", "cpu_ioreq_*",
  "-trace", "xen_map_cache*" ]
on_poweroff = "destroy"
on_crash = "destroy"
CFG
  LOGS="--log /tmp/work/qemu-dm.log"
  ;;
*) echo "XVT-HOST unknown scenario $SCENARIO"; exit 1 ;;
esac
NAME=$(sed -n 's/^name = "\(.*\)"/\1/p' /tmp/work/guest.cfg)

# xvtrace in dom0, as installed on this machine (the repository's venv); the capture
# command alone, which needs neither polars nor numpy (this CPU has no SSE4/AVX). The bundle
# is written to tmpfs (xentrace writes straight from Xen's trace pages, which 9p cannot
# take) and copied out at the end.
# every trace class but PV and shadow (dom0's own PV hypercalls, mostly page-table updates,
# would be 90 % of the trace)
"$REPO/.venv/bin/python" -m xvtrace.capture -o "/tmp/work/$SCENARIO" --xentrace --xentrace-mask 0x009ff000 \
  --block-trace --duration 600 $LOGS \
  --no-ingest --no-progress > /tmp/out/capture.log 2>&1 &
CAP=$!
sleep 5  # the capture's sources are up (xentrace, tracefs)
cp /tmp/work/guest.cfg /tmp/out/guest.cfg
xl create /tmp/work/guest.cfg > /tmp/out/xl-create.log 2>&1 || echo "XVT-HOST xl create failed: $(tail -3 /tmp/out/xl-create.log)"
echo "XVT-HOST guest started"
i=0
while xl list "$NAME" >/dev/null 2>&1 && [ $i -lt 480 ]; do sleep 5; i=$((i + 5)); done
echo "XVT-HOST guest gone after ${i} s"
kill -INT $CAP
wait $CAP
echo "XVT-HOST capture exit $?: $(tail -1 /tmp/out/capture.log)"
xl dmesg > /tmp/out/xl-dmesg.txt 2>&1
cp -r "/tmp/work/$SCENARIO" /tmp/work/console /tmp/out/ && echo "XVT-HOST bundle copied: $(du -sk "/tmp/work/$SCENARIO" | cut -f1) KiB"
