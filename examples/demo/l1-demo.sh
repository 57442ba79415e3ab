# Runs in the nested lab's level 1 (scripts/demo runs it directly on a host
# whose KVM runs Linux): `splitvm up` on examples/vm.toml starts one backend
# process per device (splitvm-blk, splitvm-net, splitvm-input) and then the
# VMM, and supervises them.
. "${LAB_DIR:-/lab}/lib.sh"
D=${L2_WORK:-/tmp/l2}/demo-up
RUN=$D/run
mkdir -p "$D"
# examples/vm.toml names its kernel, initrd and disk relative to itself:
# put them next to a copy, and give it a run directory of its own.
{
	echo "run_dir = \"$RUN\""
	cat "${LAB_DIR:-/lab}/vm.toml"
} >"$D/vm.toml"
ln -sf "$L2_KERNEL" "$D/vmlinux"
ln -sf "$(l2_initrd demo "${LAB_DIR:-/lab}/l2-demo.sh")" "$D/initrd.img"
rm -f "$D/disk.img" "$D/up.out"
truncate -s 16M "$D/disk.img"
: >"$D/up.out"

# wait_line PATTERN SECS: until up's output has a line matching PATTERN.
wait_line() {
	_end=$(($(date +%s) + $2))
	until grep -q "$1" "$D/up.out" 2>/dev/null; do
		[ "$(date +%s)" -ge "$_end" ] && return 1
		sleep 0.2
	done
}
(
	# splitvm-net created the tap splitvm0 before it said it was ready.
	wait_line "VMM pid" 60 || exit 1
	ip addr add 10.77.0.1/24 dev splitvm0
	ip link set splitvm0 up
	for dev in blk0 net1 input2; do
		echo "demo: $dev backend pid $(cat "$RUN/$dev.pid"), socket $RUN/$dev.sock"
	done
	# Type "hi" once the guest reads the keyboard.
	wait_line EVREAD-READY 300 || exit 1
	splitvm-input send --event-socket "$RUN/keyboard.sock" '{"key":"KEY_H"}' '{"key":"KEY_I"}' >/dev/null
) &
echo "demo: splitvm up $D/vm.toml (examples/vm.toml)"
timeout 300 splitvm up "$D/vm.toml" </dev/null 2>&1 | tee -a "$D/up.out"
echo "demo: splitvm up ended; left in its run directory: $(ls -A "$RUN" 2>/dev/null | wc -l) files"
echo "demo: the guest's words, found by level 1 in the image file:"
grep -a -o "hello from the guest[a-z -]*" "$D/disk.img" | head -1
