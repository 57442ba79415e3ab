#!/bin/sh
# Runs inside the level-2 guest that splitvm boots: shows the machine and
# uses the disk that splitvm-blk serves from its own process.
echo "=== guest: $(uname -sr), $(nproc) vCPU(s), $(awk '/MemTotal/ {print $2/1024 " MiB"}' /proc/meminfo)"
echo "=== virtio devices the guest found:"
for d in /sys/bus/virtio/devices/*; do
	[ -e "$d" ] && echo "  $(basename "$d"): device id $(cat "$d/device"), driver $(basename "$(readlink "$d/driver")")"
done
echo "=== /dev/vda: $(($(cat /sys/block/vda/size) / 2048)) MiB, served by splitvm-blk"
mke2fs /dev/vda >/dev/null && mkdir -p /mnt && mount -t ext2 /dev/vda /mnt
echo "hello from the guest, written through splitvm-blk" >/mnt/hello.txt
sync
echo "=== wrote /mnt/hello.txt:"
cat /mnt/hello.txt
df -h /mnt | tail -1
umount /mnt
echo "RESULT demo=ok"
