#!/bin/sh
# Level-2 side of the restart scenario: four dd streams write random 1 MiB
# blocks to their own regions of /dev/vda (direct I/O), read them back and
# compare, round after round, for DURATION seconds, while level 1 kills
# splitvm-blk with SIGKILL again and again. Every mismatch, failed dd and
# guest I/O error is counted.
dmesg -n 1
dev=/dev/vda
DURATION=${DURATION:-60}
md5() { md5sum | cut -d' ' -f1; }
echo "RESTART-WORKLOAD-START"
end=$(($(date +%s) + DURATION))
rounds=0
bad=0
failed=0
while [ "$(date +%s)" -lt "$end" ]; do
	for s in 0 1 2 3; do
		dd if=/dev/urandom of=/tmp/w$s bs=64k count=16 2>/dev/null
		(dd if=/tmp/w$s of=$dev bs=64k seek=$((s * 16)) oflag=direct conv=notrunc 2>/dev/null || touch /tmp/fail$s) &
	done
	wait
	for s in 0 1 2 3; do
		[ -e /tmp/fail$s ] && failed=$((failed + 1)) && rm -f /tmp/fail$s
		want=$(md5 </tmp/w$s)
		got=$(dd if=$dev bs=64k skip=$((s * 16)) count=16 iflag=direct 2>/dev/null | md5)
		[ "$want" = "$got" ] || bad=$((bad + 1))
	done
	rounds=$((rounds + 1))
	echo "RESTART-ROUND $rounds"
done
echo "RESTART-WORKLOAD-DONE"
sync
for s in 0 1 2 3; do
	echo "RESULT stream${s}_md5=$(md5 </tmp/w$s)"
done
echo "RESULT rounds=$rounds"
echo "RESULT mismatches=$bad"
echo "RESULT failed_writes=$failed"
echo "RESULT io_errors=$(dmesg | grep -c -i 'I/O error')"
