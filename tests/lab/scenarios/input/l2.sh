# Level-2 guest half of the input scenarios (busybox ash, run as
# /scenario.sh; evread comes from the guest tools the lab puts in /bin).
# l1.sh prepends the settings:
#   KBD=NAME      input device to find in /sys/class/input (required)
#   MODE=evdev    also read a second batch of keys (after the host device
#                 was unplugged and plugged again)
#   TOUCH=NAME    a touch screen to check and read
#   MOUSE=NAME    a relative mouse to check and read (one move)
#   TABLET=NAME   an absolute tablet to check and read (one position)
#   LAT=N         then time N round trips: LED out, key tap back (latency)
# Prints RESULT lines, the events read as "KEYS1 t c v" / "KEYS2" / "TOUCH",
# and "EVREAD-READY" (from evread, on the console) whenever l1.sh may inject.

# Keep kernel messages off the console: one written into the middle of
# "TABLET 3 0 1000" hides that event from the test, which parses these lines.
dmesg -n 1

command -v evread >/dev/null || {
	echo "RESULT evread_found=no"
	exit 1
}
sysdir() {
	for d in /sys/class/input/input*; do
		[ "$(cat "$d/name" 2>/dev/null)" = "$1" ] && {
			echo "$d"
			return
		}
	done
}
K=$(sysdir "$KBD")
if [ -z "$K" ]; then
	echo "RESULT kbd_found=no"
	cat /sys/class/input/*/name
	exit 1
fi
echo "RESULT kbd_found=yes"
echo "RESULT kbd_ev=$(cat "$K/capabilities/ev")"
echo "RESULT kbd_led=$(cat "$K/capabilities/led")"
echo "RESULT kbd_ids=$(cat "$K/id/bustype"):$(cat "$K/id/vendor"):$(cat "$K/id/product")"
rc=0
evread --name "$KBD" --led 1=1 -n 0 --timeout 10
echo "RESULT led_write=$?"
evread --name "$KBD" --ready -n 12 --timeout 90 >/tmp/k1 || rc=1
echo "RESULT keys1=$(wc -l </tmp/k1)"
sed 's/^/KEYS1 /' /tmp/k1
if [ "$MODE" = evdev ]; then
	evread --name "$KBD" --ready -n 4 --timeout 90 >/tmp/k2 || rc=1
	echo "RESULT keys2=$(wc -l </tmp/k2)"
	sed 's/^/KEYS2 /' /tmp/k2
fi
if [ -n "$TOUCH" ]; then
	T=$(sysdir "$TOUCH")
	echo "RESULT touch_props=$(cat "$T/properties")"
	echo "RESULT touch_abs=$(cat "$T/capabilities/abs")"
	evread --name "$TOUCH" --ready --until 1:330:0 --timeout 90 >/tmp/t || rc=1
	echo "RESULT touch_events=$(wc -l </tmp/t)"
	sed 's/^/TOUCH /' /tmp/t
fi
# One report each from the mouse and the tablet: "MOUSE t c v" / "TABLET t c v".
for dev in MOUSE TABLET; do
	eval "n=\${$dev:-}"
	[ -n "$n" ] || continue
	DIR=$(sysdir "$n")
	lc=$(echo "$dev" | tr A-Z a-z)
	echo "RESULT ${lc}_found=$([ -n "$DIR" ] && echo yes || echo no)"
	echo "RESULT ${lc}_rel=$(cat "$DIR/capabilities/rel")"
	echo "RESULT ${lc}_abs=$(cat "$DIR/capabilities/abs")"
	evread --name "$n" --ready --until 0:0:0 --timeout 90 >/tmp/$lc || rc=1
	sed "s/^/$dev /" /tmp/$lc
done
if [ "${LAT:-0}" -gt 0 ]; then
	# Round trips timed here (kvm-clock): LED out, key tap back. The host
	# side starts with one tap once it listens.
	evread --name "$KBD" --led 1=0 -n 0 --timeout 10
	evread --name "$KBD" --ready --ping-led "$LAT" --timeout 120 >/tmp/ping || rc=1
	cat /tmp/ping
	echo "RESULT latency=$(sed 's/^PING-RTT //; s/ /,/g' /tmp/ping)"
fi
exit $rc
