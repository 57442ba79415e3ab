#!/bin/sh
# Runs inside the guest that splitvm boots: every device below is served
# by its own backend process outside the VMM.
dmesg -n 1
echo "=== guest: $(uname -sr), $(nproc) vCPU(s), $(awk '/MemTotal/ {print $2/1024 " MiB"}' /proc/meminfo)"
echo "=== virtio devices the guest found:"
for d in /sys/bus/virtio/devices/*; do
	[ -e "$d" ] && echo "  $(basename "$d"): device id $(cat "$d/device"), driver $(basename "$(readlink "$d/driver")")"
done

echo "=== disk /dev/vda: $(($(cat /sys/block/vda/size) / 2048)) MiB, served by splitvm-blk"
mke2fs /dev/vda >/dev/null 2>&1 && mkdir -p /mnt && mount -t ext2 /dev/vda /mnt
echo "hello from the guest, written through splitvm-blk" >/mnt/hello.txt
sync
cat /mnt/hello.txt
umount /mnt

echo "=== network eth0, served by splitvm-net: $(cat /sys/class/net/eth0/address), mtu $(cat /sys/class/net/eth0/mtu)"
ip link set eth0 up
ip addr add 10.77.0.2/24 dev eth0
ping -c 3 -W 2 10.77.0.1 | tail -2

name=$(cat /sys/class/input/*/name 2>/dev/null | grep splitvm | head -1)
echo "=== keyboard \"$name\", served by splitvm-input; level 1 types \"hi\" (KEY_H=35, KEY_I=23; press 1, release 0):"
evread --name "$name" --no-syn --ready --until 1:23:0 --timeout 60
echo "RESULT demo=ok"
