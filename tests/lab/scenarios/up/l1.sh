# Level-1 half of the up scenario (busybox ash; `. /lab/lib.sh` first).
# Needs run-l1.sh --file for this directory at /lab/scenarios/up and
# examples/ at /lab/examples. Runs `splitvm up` on examples/vm.toml (with
# the level-2 kernel, initrd and a disk image next to it, and a run
# directory of its own): blk, net and input each in a backend process.
# Kills splitvm-blk while the guest writes, checks that `up` restarted it
# and the VMM reconnected, types "hi" into the keyboard, and once the guest
# is done runs `splitvm down`, then looks for leftover processes and
# sockets. Guest lines appear as "[l2:up] ..." like a run_l2 run.
#
# L1-RESULT keys:
#   up_started            the three backends and the VMM came up (yes/no)
#   up_blk_restarted      a new splitvm-blk pid after the kill (yes/no)
#   up_blk_reconnects     blk0's reconnect count the API reports afterwards
#   up_down_rc            `splitvm down`'s exit status
#   up_rc                 `splitvm up`'s exit status
#   up_pids_seen          pids in the run directory before down (up, VMM,
#                         three backends: 5)
#   up_procs_left         how many of them still run after down
#   up_files_left         files left in the run directory (a count; it
#                         should be gone)
#   up_tap_left           the tap splitvm-net created is gone (no/yes)

. /lab/lib.sh
D=/tmp/up
RUN=$D/run
mkdir -p "$D"
rm -f "$D/up.rc"

# wait_file_line FILE PATTERN SECS: fails at once once `up` has exited
# (nothing more will be written) after a last look.
wait_file_line() {
	_end=$(($(date +%s) + $3))
	until grep -q "$2" "$1" 2>/dev/null; do
		if [ -e "$D/up.rc" ]; then
			grep -q "$2" "$1" 2>/dev/null
			return
		fi
		[ "$(date +%s)" -ge "$_end" ] && return 1
		usleep 50000
	done
	return 0
}

{
	echo "run_dir = \"$RUN\""
	cat /lab/examples/vm.toml
} >"$D/vm.toml"
ln -sf "$L2_KERNEL" "$D/vmlinux"
ln -sf "$(l2_initrd up /lab/scenarios/up/l2.sh)" "$D/initrd.img"
truncate -s 64M "$D/disk.img"

t0=$(lab_now)
echo "L2-START name=up vmm=splitvm-up t=$t0"
(
	splitvm up "$D/vm.toml" </dev/null >"$D/up.out" 2>&1
	echo $? >"$D/up.rc"
) &
upjob=$!

# splitvm-net created the tap: give level 1 its address.
if wait_file_line "$D/up.out" "VMM pid" 60; then
	l1_result up_started yes
	ip addr add 10.99.0.1/24 dev splitvm0
	ip link set splitvm0 up
else
	l1_result up_started no
fi

blk1=$(cat "$RUN/blk0.pid" 2>/dev/null)
if wait_file_line "$D/up.out" "UP-KILL-NOW" 400; then
	kill -KILL "$blk1"
	wait_file_line "$D/up.out" "blk0: restarted as pid" 60
	blk2=$(cat "$RUN/blk0.pid" 2>/dev/null)
	if [ -n "$blk2" ] && [ "$blk2" != "$blk1" ] && [ -d "/proc/$blk2" ]; then
		l1_result up_blk_restarted yes
	else
		l1_result up_blk_restarted no
	fi
	# The VMM reconnects to the new backend (the guest's writes resume).
	_end=$(($(date +%s) + 60))
	until splitvm ctl --api-socket "$RUN/api.sock" devices 2>/dev/null |
		awk '$1 == "blk0" && $3 == "connected" && $5 >= 1 { f = 1 } END { exit !f }'; do
		[ "$(date +%s)" -ge "$_end" ] && break
		[ -e "$D/up.rc" ] && break
		usleep 100000
	done
	splitvm ctl --api-socket "$RUN/api.sock" devices
	l1_result up_blk_reconnects "$(splitvm ctl --api-socket "$RUN/api.sock" devices |
		awk '$1 == "blk0" { print $5 }')"
	if wait_file_line "$D/up.out" "EVREAD-READY" 200; then
		splitvm-input send --event-socket "$RUN/keyboard.sock" '{"key":"KEY_H"}' '{"key":"KEY_I"}' >/dev/null
	fi
fi

wait_file_line "$D/up.out" "UP-GUEST-DONE" 300
# Every process of this VM: up, the VMM, the backends.
pids=$(cat "$RUN"/*.pid 2>/dev/null)
splitvm down "$D/vm.toml"
l1_result up_down_rc $?
wait $upjob
rc=$(cat "$D/up.rc" 2>/dev/null || echo 255)
t1=$(lab_now)
# The guest's console (and up's own lines) as "[l2:up] ...".
_l2_tag up <"$D/up.out"
echo "L2-EXIT name=up rc=$rc ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) * 1000 }')"
l1_result up_rc "$rc"
left=0
for p in $pids; do
	[ -d "/proc/$p" ] && left=$((left + 1))
done
l1_result up_pids_seen "$(echo $pids | wc -w)"
l1_result up_procs_left "$left"
l1_result up_files_left "$(ls -A "$RUN" 2>/dev/null | wc -l)"
[ -e /sys/class/net/splitvm0 ] && l1_result up_tap_left yes || l1_result up_tap_left no
[ "$rc" = 0 ]
