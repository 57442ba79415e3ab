# Runs in the nested lab's level 1: one backend process per device, then
# the VMM. (scripts/demo mirrors this directly on a host whose KVM runs Linux.)
. "${LAB_DIR:-/lab}/lib.sh"
truncate -s 16M /tmp/demo-disk.img
splitvm-blk --socket-path /tmp/demo-blk.sock --image /tmp/demo-disk.img >/tmp/blk.log 2>&1 &
echo "demo: splitvm-blk   pid $! serves /tmp/demo-disk.img on /tmp/demo-blk.sock"
splitvm-net --socket-path /tmp/demo-net.sock --tap demotap0 --mac 52:54:00:de:e0:01 >/tmp/net.log 2>&1 &
echo "demo: splitvm-net   pid $! serves tap demotap0 (10.77.0.1) on /tmp/demo-net.sock"
# splitvm-net creates the tap; give it an address once it exists.
while [ ! -e /sys/class/net/demotap0 ]; do sleep 0.1; done
ip addr add 10.77.0.1/24 dev demotap0
ip link set demotap0 up
splitvm-input --socket-path /tmp/demo-input.sock --profile keyboard --event-socket /tmp/demo-events.sock >/tmp/input.log 2>&1 &
echo "demo: splitvm-input pid $! serves a keyboard fed from /tmp/demo-events.sock"
# Type "hi" once the guest listens.
(
	while ! grep -q DEMO-INPUT-READY /tmp/demo-l2.out 2>/dev/null; do sleep 0.2; done
	sleep 1
	splitvm-input send --event-socket /tmp/demo-events.sock '{"key":"KEY_H"}' '{"key":"KEY_I"}' >/dev/null
) &
run_l2 demo --scenario "${LAB_DIR:-/lab}/l2-demo.sh" --timeout 300 -- --cpus 2 --memory 512M \
	--disk socket=/tmp/demo-blk.sock --net socket=/tmp/demo-net.sock \
	--input socket=/tmp/demo-input.sock | tee /tmp/demo-l2.out
echo "demo: the guest's words, found by level 1 in the image file:"
grep -a -o "hello from the guest[a-z -]*" /tmp/demo-disk.img | head -1
