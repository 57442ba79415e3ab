# Level-2 guest of the up scenario (busybox sh, /scenario.sh): its disk,
# NIC and keyboard are served by the three backends `splitvm up` started
# from examples/vm.toml. Level 1 kills splitvm-blk while round 2 writes
# (after "UP-KILL-NOW"), `up` restarts it, and level 1 types "hi" once the
# new backend runs. Prints "RESULT key=value"; ends with "UP-GUEST-DONE"
# and then waits: level 1 stops the VM with `splitvm down`.
dmesg -n 1
echo "RESULT up_virtio_devices=$(ls /sys/bus/virtio/devices | wc -l)"

# blk: a file system, round 1.
mkdir -p /mnt
if mke2fs -q /dev/vda && mount -t ext2 /dev/vda /mnt; then
	dd if=/dev/urandom of=/mnt/one bs=65536 count=64 2>/dev/null
	sync
	echo "RESULT up_blk_round1=ok"
else
	echo "RESULT up_blk_round1=fail"
fi
one=$(md5sum /mnt/one | cut -d' ' -f1)

# net: the tap's address in level 1 (examples/vm.toml: tap splitvm0).
ip link set eth0 up
ip addr add 10.99.0.2/24 dev eth0
ok=fail
for i in $(seq 1 60); do
	if ping -c 1 -W 1 10.99.0.1 >/dev/null 2>&1; then ok=ok; break; fi
done
echo "RESULT up_net_ping=$ok"

# Round 2 writes while level 1 kills splitvm-blk.
dd if=/dev/urandom of=/tmp/two bs=65536 count=128 2>/dev/null
two=$(md5sum /tmp/two | cut -d' ' -f1)
echo "UP-KILL-NOW"
cp /tmp/two /mnt/two && sync && echo "RESULT up_blk_round2_write=ok"

# input: level 1 types "hi" once the new splitvm-blk runs.
name=$(cat /sys/class/input/*/name 2>/dev/null | grep splitvm | head -1)
echo "RESULT up_input_name=$(echo "$name" | tr ' ' '_')"
if evread --name "$name" --no-syn --ready --until 1:23:0 --timeout 180 >/tmp/keys; then
	grep -q "1 35 1" /tmp/keys && grep -q "1 23 1" /tmp/keys && echo "RESULT up_input=ok"
else
	echo "RESULT up_input=fail"
	cat /tmp/keys
fi

# Both rounds read back from the disk, not the page cache.
umount /mnt
mount -t ext2 /dev/vda /mnt
[ "$(md5sum /mnt/one | cut -d' ' -f1)" = "$one" ] && [ "$(md5sum /mnt/two | cut -d' ' -f1)" = "$two" ] &&
	echo "RESULT up_blk_verify=ok" || echo "RESULT up_blk_verify=fail"
umount /mnt
echo "UP-GUEST-DONE"
sleep 600
