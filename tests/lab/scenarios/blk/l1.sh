. /lab/lib.sh
# Level-1 side of the blk scenario (busybox ash, sourced by the lab script
# after /lab/lib.sh): three splitvm-blk backends, one level-2 boot, then the
# images are checked here. Results: "L1-RESULT key=value".

truncate -s 64M /tmp/blk-rw.img
truncate -s 16M /tmp/blk-ro.img
printf 'read-only-marker' | dd of=/tmp/blk-ro.img conv=notrunc 2>/dev/null
truncate -s 32M /tmp/blk-fs.img
splitvm-blk --socket-path /tmp/blk-rw.sock --image /tmp/blk-rw.img --serial lab-rw >/tmp/blk-rw.log 2>&1 &
rw_pid=$!
splitvm-blk --socket-path /tmp/blk-ro.sock --image /tmp/blk-ro.img --readonly --serial lab-ro >/tmp/blk-ro.log 2>&1 &
ro_pid=$!
splitvm-blk --socket-path /tmp/blk-fs.sock --image /tmp/blk-fs.img --serial lab-fs >/tmp/blk-fs.log 2>&1 &
fs_pid=$!

run_l2 blk --scenario /lab/scenarios/blk/l2.sh -- --cpus 2 --memory 512M \
	--disk socket=/tmp/blk-rw.sock --disk socket=/tmp/blk-ro.sock --disk socket=/tmp/blk-fs.sock

md5_at() { dd if="$1" bs=4096 skip="$2" count="$3" 2>/dev/null | md5sum | cut -d' ' -f1; }
nonzero_at() { dd if="$1" bs=4096 skip="$2" count="$3" 2>/dev/null | tr -d '\000' | wc -c; }
l1_result blk_img_direct_md5 "$(md5_at /tmp/blk-rw.img 256 16)"
l1_result blk_img_buffered_md5 "$(md5_at /tmp/blk-rw.img 1280 16)"
l1_result blk_img_tail_md5 "$(md5_at /tmp/blk-rw.img 16368 16)"
l1_result blk_img_discard_nonzero "$(nonzero_at /tmp/blk-rw.img 512 256)"
l1_result blk_img_zeroout_nonzero "$(nonzero_at /tmp/blk-rw.img 768 256)"
l1_result blk_img_ro_md5 "$(md5sum </tmp/blk-ro.img | cut -d' ' -f1)"
l1_result blk_img_ro_expected_md5 "$( (printf 'read-only-marker'; dd if=/dev/zero bs=16 count=1048575 2>/dev/null) | md5sum | cut -d' ' -f1)"
l1_result blk_img_fs_has_file "$(grep -a -c 'splitvm-fs-check-' /tmp/blk-fs.img)"

# SIGTERM ends a backend cleanly and removes its socket.
kill -TERM "$rw_pid"
wait "$rw_pid"
l1_result blk_term_rc "$?"
l1_result blk_term_socket_left "$([ -e /tmp/blk-rw.sock ] && echo yes || echo no)"
kill -TERM "$ro_pid" "$fs_pid" 2>/dev/null

# Our frontend against a backend nobody here wrote: qemu-storage-daemon.
if command -v qemu-storage-daemon >/dev/null; then
	truncate -s 64M /tmp/qsd.img
	qemu-storage-daemon --blockdev driver=file,node-name=f,filename=/tmp/qsd.img,discard=unmap \
		--blockdev driver=raw,node-name=d,file=f,discard=unmap \
		--export type=vhost-user-blk,id=e,addr.type=unix,addr.path=/tmp/qsd.sock,node-name=d,writable=on \
		>/tmp/qsd.log 2>&1 &
	qsd_pid=$!
	run_l2 qsd --scenario /lab/scenarios/blk/l2.sh -- --memory 512M --disk socket=/tmp/qsd.sock
	l1_result qsd_img_direct_md5 "$(md5_at /tmp/qsd.img 256 16)"
	l1_result qsd_img_buffered_md5 "$(md5_at /tmp/qsd.img 1280 16)"
	l1_result qsd_img_tail_md5 "$(md5_at /tmp/qsd.img 16368 16)"
	l1_result qsd_img_discard_nonzero "$(nonzero_at /tmp/qsd.img 512 256)"
	l1_result qsd_img_zeroout_nonzero "$(nonzero_at /tmp/qsd.img 768 256)"
	kill -TERM "$qsd_pid"
fi
