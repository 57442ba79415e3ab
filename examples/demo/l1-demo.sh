# Runs in the nested lab's level 1 (or is mirrored by scripts/demo on a
# host whose KVM runs Linux): one backend process per device, then the VMM.
. /lab/lib.sh
truncate -s 16M /tmp/demo-disk.img
splitvm-blk --socket-path /tmp/demo-blk.sock --image /tmp/demo-disk.img >/tmp/blk.log 2>&1 &
echo "demo: splitvm-blk running as pid $! on /tmp/demo-blk.sock"
run_l2 demo --scenario /lab/l2-demo.sh --timeout 300 -- --cpus 2 --memory 512M \
	--disk socket=/tmp/demo-blk.sock
echo "demo: the guest's words, found by level 1 in the image file:"
grep -a -o "hello from the guest[a-z -]*" /tmp/demo-disk.img | head -1
