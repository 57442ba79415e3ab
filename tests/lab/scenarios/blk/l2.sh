#!/bin/sh
# Level-2 guest side of the blk scenario: three virtio-blk disks served by
# backends in level 1, found by their serial numbers:
#   lab-rw  64 MiB, raw checks: direct and buffered writes at known offsets,
#           discard and write-zeroes over patterned ranges
#   lab-ro  read-only image: writes must fail
#   lab-fs  ext2: mke2fs, mount, write, remount, read
# Level 1 then checks the image files hold what this script reports.
# With a single disk and no serials (qemu-storage-daemon's export), only the
# raw checks run, on /dev/vda.

# Keep kernel messages off the console: they would split RESULT lines.
dmesg -n 1

disk() {
	for d in /sys/block/vd*; do
		[ "$(cat "$d/serial" 2>/dev/null)" = "$1" ] && { echo "/dev/${d##*/}"; return; }
	done
}
md5() { md5sum | cut -d' ' -f1; }
# Bytes that are not zero in LEN 4-KiB blocks from block SKIP of DEV.
nonzero() { dd if="$1" bs=4096 skip="$2" count="$3" iflag=direct 2>/dev/null | tr -d '\000' | wc -c; }

rw=$(disk lab-rw)
ro=$(disk lab-ro)
fs=$(disk lab-fs)
[ -n "$rw" ] || rw=/dev/vda
echo "RESULT disks=$rw,$ro,$fs"
echo "RESULT rw_sectors=$(cat /sys/block/${rw#/dev/}/size)"

dd if=/dev/urandom of=/tmp/a bs=4096 count=16 2>/dev/null
dd if=/dev/urandom of=/tmp/b bs=4096 count=16 2>/dev/null
echo "RESULT a_md5=$(md5 </tmp/a)"
echo "RESULT b_md5=$(md5 </tmp/b)"

# Direct at 1 MiB, buffered (then sync) at 5 MiB, and at the last 64 KiB.
dd if=/tmp/a of="$rw" bs=4096 seek=256 oflag=direct conv=notrunc 2>/dev/null
echo "RESULT direct_rc=$?"
dd if=/tmp/b of="$rw" bs=4096 seek=1280 conv=notrunc 2>/dev/null && sync
echo "RESULT buffered_rc=$?"
dd if=/tmp/a of="$rw" bs=4096 seek=16368 oflag=direct conv=notrunc 2>/dev/null
echo "RESULT tail_rc=$?"
echo 3 >/proc/sys/vm/drop_caches
echo "RESULT direct_back_md5=$(dd if="$rw" bs=4096 skip=256 count=16 iflag=direct 2>/dev/null | md5)"
echo "RESULT buffered_back_md5=$(dd if="$rw" bs=4096 skip=1280 count=16 2>/dev/null | md5)"
echo "RESULT tail_back_md5=$(dd if="$rw" bs=4096 skip=16368 count=16 iflag=direct 2>/dev/null | md5)"
# Past the end: the kernel refuses before the device sees it.
dd if=/tmp/a of="$rw" bs=4096 seek=16384 count=1 oflag=direct 2>/dev/null
echo "RESULT past_end_rc=$?"

# Discard 2..3 MiB after filling it.
dd if=/dev/urandom of="$rw" bs=4096 seek=512 count=256 oflag=direct 2>/dev/null
echo "RESULT discard_before=$(nonzero "$rw" 512 256)"
blkdiscard -o 2097152 -l 1048576 "$rw"
echo "RESULT discard_rc=$?"
echo "RESULT discard_after=$(nonzero "$rw" 512 256)"

# Write zeroes (BLKZEROOUT) over 3..4 MiB after filling it.
dd if=/dev/urandom of="$rw" bs=4096 seek=768 count=256 oflag=direct 2>/dev/null
echo "RESULT zeroout_before=$(nonzero "$rw" 768 256)"
blkzeroout "$rw" 3145728 1048576
echo "RESULT zeroout_rc=$?"
echo "RESULT zeroout_after=$(nonzero "$rw" 768 256)"

echo "RESULT io_errors=$(dmesg | grep -c -i 'I/O error')"
[ -n "$ro" ] && [ -n "$fs" ] || exit 0

# Read-only disk.
echo "RESULT ro_sysfs=$(cat /sys/block/${ro#/dev/}/ro)"
dd if=/tmp/a of="$ro" bs=4096 count=1 oflag=direct 2>/dev/null
echo "RESULT ro_write_rc=$?"
echo "RESULT ro_marker=$(dd if="$ro" bs=16 count=1 2>/dev/null)"

# A file system.
mke2fs "$fs" >/dev/null 2>&1
echo "RESULT mkfs_rc=$?"
mkdir -p /mnt
mount -t ext2 "$fs" /mnt && echo "splitvm-fs-check-$(md5 </tmp/a)" >/mnt/check.txt && umount /mnt
echo "RESULT fs_write_rc=$?"
mount -t ext2 -o ro "$fs" /mnt && back=$(cat /mnt/check.txt) && umount /mnt
echo "RESULT fs_readback=$back"
