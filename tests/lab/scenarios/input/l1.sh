# Level-1 half of the input scenarios (busybox ash; `. /lab/lib.sh` first).
# Needs run-l1.sh --file for this directory at /lab/scenarios/input and the
# static guest tools (scripts/build-guest-tools) at /lab/tools, and
# (until the level-1 image loads it) the kernel's evdev.ko at
# /lab/modules/evdev.ko, without which uinput devices get no /dev/input
# node; QEMU runs need --with-qemu (QEMU 7.2's vhost-user-input needs KVM,
# so it runs here, not on the host). tests/it/input_qemu.rs runs it:
#   tests/lab/run-l1.sh --bin-dir target/release --script $S/l1.sh \
#     --file $S:/lab/scenarios/input --file GUEST_TOOLS_DIR:/lab/tools \
#     --file $CACHE/modules/kernel/drivers/input/evdev.ko:/lab/modules/evdev.ko \
#     --with-qemu
# Each level-2 run prints "[l2:NAME] ..." lines; this
# script adds "L1-RESULT input_key=value" lines and "INPUT-LAT vmm=... PING-RTT
# n=... median_us=... p99_us=..." (round trips timed in the level-2 guest:
# LED out through the statusq to an event-socket client in level 1, which
# answers with a key tap through the eventq).
#
#   input-evdev   a uinput keyboard/mouse/tablet passed through with --evdev
#                 --grab; unplugged and plugged again between two batches
#   input-profile keyboard + touch profiles fed with `splitvm-input send`
#   input-qemu    the same backends under QEMU (-enable-kvm) as frontend

. /lab/lib.sh
S=/lab/scenarios/input
TOOLS=/lab/tools
D=/tmp/input
LAT=${INPUT_LAT:-200}
mkdir -p "$D"
export PATH="$TOOLS:$PATH"
rc=0
# uinput needs evdev for its /dev/input node; the level-1 image may lack it.
if [ ! -d /sys/module/evdev ]; then
	insmod /lab/modules/evdev.ko 2>/dev/null || l1_result input_evdev_module missing
fi

# say KEY=VALUE: a level-1 result ("L1-RESULT input_KEY=VALUE").
say() { l1_result "input_${1%%=*}" "${1#*=}"; }

# wait_count FILE PATTERN N SECS: until FILE holds N lines matching PATTERN.
wait_count() {
	_end=$(($(date +%s) + $4))
	while :; do
		_n=$(grep -c "$2" "$1" 2>/dev/null)
		[ "${_n:-0}" -ge "$3" ] && return 0
		[ "$(date +%s)" -ge "$_end" ] && return 1
		sleep 0.05
	done
}

# wait_path PATH SECS
wait_path() {
	_end=$(($(date +%s) + $2))
	while [ ! -e "$1" ]; do
		[ "$(date +%s)" -ge "$_end" ] && return 1
		sleep 0.05
	done
}

# scenario OUT SETTINGS...: l2.sh with settings in front.
scenario() {
	_out=$1
	shift
	{
		for s in "$@"; do echo "$s"; done
		cat "$S/l2.sh"
	} >"$_out"
}

# taps FIFO CODE...: key taps into a uinput-dev.
taps() {
	_f=$1
	shift
	for c in "$@"; do printf '1 %s 1\n0 0 0\n1 %s 0\n0 0 0\n' "$c" "$c"; done >"$_f"
}

# ---------------------------------------------------------------- evdev
NAME="splitvm-lab uinput"
mkfifo "$D/ui1" "$D/ui2"
uinput-dev "$NAME" <"$D/ui1" >"$D/ui1.out" 2>&1 &
UI1=$!
exec 3>"$D/ui1"
if wait_count "$D/ui1.out" UINPUT-READY 1 10; then
	NODE=$(awk '/UINPUT-READY/ { print $2 }' "$D/ui1.out")
	say "uinput_node=$NODE"
	splitvm-input --socket-path "$D/evdev.sock" --evdev "$NODE" --grab >"$D/evdev.log" 2>&1 &
	BE=$!
	wait_path "$D/evdev.sock" 10 || say "evdev_socket=missing"
	scenario "$D/evdev.sh" "KBD='$NAME'" MODE=evdev
	(
		log=$D/l2-evdev.log
		wait_count "$log" EVREAD-READY 1 400 || exit 1
		taps "$D/ui1" 30 48 46
		# Hot-unplug once the guest has the keys: the host device goes away
		# and comes back.
		wait_count "$log" "RESULT keys1=" 1 60 || exit 1
		kill "$UI1"
		wait_count "$D/evdev.log" "device gone" 1 10 && say "unplug_seen=yes"
		uinput-dev "$NAME" <"$D/ui2" >"$D/ui2.out" 2>&1 &
		exec 4>"$D/ui2"
		wait_count "$D/evdev.log" "device is back" 1 20 && say "replug_seen=yes"
		wait_count "$log" EVREAD-READY 2 60 || exit 1
		taps "$D/ui2" 32
		wait_count "$log" SPLITVM-L2-DONE 1 120
	) &
	FEED=$!
	run_l2 input-evdev --scenario "$D/evdev.sh" --timeout 420 -- --memory 512M \
		--input "socket=$D/evdev.sock" | tee "$D/l2-evdev.log"
	grep -q "L2-EXIT name=input-evdev rc=0" "$D/l2-evdev.log" || rc=1
	wait "$FEED"
	exec 3>&-
	say "evdev_led=$(grep -c '^LED 1 1' "$D/ui1.out")"
	kill "$BE"
	wait "$BE"
	say "evdev_backend_exit=$?"
	sed 's/^/[evdev-backend] /' "$D/evdev.log"
else
	say "uinput=failed"
	cat "$D/ui1.out"
	rc=1
fi

# -------------------------------------------------------------- profiles
# The keyboard backend runs under a wrapper that records its exit status,
# since the splitvm run replaces it (kill -9, restart) from a subshell.
start_kbd() {
	(
		splitvm-input --socket-path "$D/kbd.sock" --profile keyboard --event-socket "$D/kbd.ev" \
			>>"$D/kbd.log" 2>&1 &
		echo $! >"$D/kbd.pid"
		wait $!
		echo $? >"$D/kbd.rc"
	) &
	while [ ! -s "$D/kbd.pid" ]; do sleep 0.05; done
}
rm -f "$D/kbd.pid" "$D/kbd.rc"
start_kbd
splitvm-input --socket-path "$D/touch.sock" --profile touch --event-socket "$D/touch.ev" \
	>"$D/touch.log" 2>&1 &
TB=$!
splitvm-input --socket-path "$D/mouse.sock" --profile mouse --event-socket "$D/mouse.ev" \
	>"$D/mouse.log" 2>&1 &
MB=$!
splitvm-input --socket-path "$D/tablet.sock" --profile tablet --event-socket "$D/tablet.ev" \
	>"$D/tablet.log" 2>&1 &
AB=$!
for ev in kbd touch mouse tablet; do
	wait_path "$D/$ev.ev" 10 || say "profile_sockets=missing"
done

# profile_run NAME VMM RUNNER ARGS...: one level-2 boot with both devices.
profile_run() {
	_name=$1
	_vmm=$2
	shift 2
	_log=$D/l2-$_name.log
	scenario "$D/$_name.sh" "KBD='splitvm keyboard'" "TOUCH='splitvm touch'" \
		"MOUSE='splitvm mouse'" "TABLET='splitvm tablet'" "LAT=$LAT"
	splitvm-input send --event-socket "$D/kbd.ev" --follow --until LED_CAPSL --timeout 200 '{"ping":0}' \
		>"$D/$_name.led" 2>&1 &
	_led=$!
	(
		wait_count "$_log" EVREAD-READY 1 400 || exit 1
		splitvm-input send --event-socket "$D/kbd.ev" \
			'{"key":"KEY_A"}' '{"key":"KEY_B"}' '{"key":"KEY_C"}'
		wait_count "$_log" EVREAD-READY 2 60 || exit 1
		splitvm-input send --event-socket "$D/touch.ev" \
			'{"touch":[{"slot":0,"x":100,"y":200}]}' \
			'{"touch":[{"slot":0,"x":150,"y":250}]}' \
			'{"touch":[{"slot":0,"up":true}]}'
		wait_count "$_log" EVREAD-READY 3 60 || exit 1
		splitvm-input send --event-socket "$D/mouse.ev" '{"move":[5,-3]}'
		wait_count "$_log" EVREAD-READY 4 60 || exit 1
		splitvm-input send --event-socket "$D/tablet.ev" '{"abs":[1000,2000]}'
		wait_count "$_log" EVREAD-READY 5 60 || exit 1
		if [ "$_vmm" = splitvm ]; then
			# kill -9 the keyboard's backend and start a new one on the same
			# socket: the round trips below (LED out, keys back) go through it.
			kill -KILL "$(cat "$D/kbd.pid")"
			while [ ! -e "$D/kbd.rc" ]; do sleep 0.05; done
			rm -f "$D/kbd.pid" "$D/kbd.rc" "$D/kbd.ev"
			start_kbd
			wait_path "$D/kbd.ev" 10 || say "kbd_restart=no_socket"
			wait_count "$_log" "took over" 1 30 && say "kbd_restart=ok"
		fi
		splitvm-input send --event-socket "$D/kbd.ev" --echo "$LAT" --timeout 30 \
			'{"key":"KEY_A"}' >"$D/$_name.echo" 2>&1 || tail -3 "$D/$_name.echo"
	) &
	_feed=$!
	# The VMM's reconnect lines ("took over") tell when the new keyboard
	# backend has the device.
	[ "$_vmm" = splitvm ] && export RUST_LOG=warn,vmm_core::vhost_user::monitor=info
	"$@" | tee "$_log"
	unset RUST_LOG
	grep -q "L2-EXIT name=$_name rc=0" "$_log" || rc=1
	echo "INPUT-LAT vmm=$_vmm $(grep -o 'PING-RTT.*' "$_log")"
	wait "$_feed"
	kill "$_led" 2>/dev/null
	say "${_vmm}_led=$(grep -c LED_CAPSL "$D/$_name.led")"
	say "${_vmm}_latency=$(grep -o 'PING-RTT.*' "$_log" | sed 's/^PING-RTT //; s/ /,/g')"
}

profile_run input-profile splitvm \
	run_l2 input-profile --scenario "$D/input-profile.sh" --timeout 420 -- --memory 512M \
	--input "socket=$D/kbd.sock" --input "socket=$D/touch.sock" \
	--input "socket=$D/mouse.sock" --input "socket=$D/tablet.sock"

if command -v qemu-system-x86_64 >/dev/null; then
	profile_run input-qemu qemu \
		run_l2_qemu input-qemu --scenario "$D/input-qemu.sh" --timeout 420 -- --memory 512M \
		-global virtio-mmio.force-legacy=false \
		-object memory-backend-memfd,id=mem,size=512M,share=on -machine memory-backend=mem \
		-chardev "socket,id=k,path=$D/kbd.sock" -device vhost-user-input,chardev=k \
		-chardev "socket,id=t,path=$D/touch.sock" -device vhost-user-input,chardev=t \
		-chardev "socket,id=m,path=$D/mouse.sock" -device vhost-user-input,chardev=m \
		-chardev "socket,id=a,path=$D/tablet.sock" -device vhost-user-input,chardev=a
fi

kill "$TB" "$MB" "$AB" "$(cat "$D/kbd.pid")"
while [ ! -e "$D/kbd.rc" ]; do sleep 0.05; done
say "kbd_backend_exit=$(cat "$D/kbd.rc")"
wait "$TB"
say "touch_backend_exit=$?"
wait "$MB"
say "mouse_backend_exit=$?"
wait "$AB"
say "tablet_backend_exit=$?"
sed 's/^/[kbd-backend] /' "$D/kbd.log"
if [ -e "$D/kbd.sock" ] || [ -e "$D/kbd.ev" ]; then say "sockets_left=yes"; else say "sockets_left=no"; fi
exit $rc
