# Level-1 half of the net scenario (busybox ash; `. /lab/lib.sh` first).
# Needs run-l1.sh --file for this directory at /lab/scenarios/net. Starts
# splitvm-net on a tap it creates (10.88.0.1/24 on the level-1 side; no
# traffic leaves level 1), serves the guest's TCP transfers with busybox nc,
# takes the link down when the guest asks (SIGUSR1) and up again (SIGUSR2)
# once the guest reported the carrier change, then boots the
# level-2 guest (l2.sh) under splitvm with --net socket=...
# Prints "L1-RESULT key=value" lines; the guest prints "RESULT ..." lines.
#
#   net_pat_md5 / net_rx_md5   what level 1 sent / received (compare with the
#                              guest's net_rx_md5 / net_tx_md5)
#   net_link_down_read         the frontend read the down state (yes/no)
#   net_counters               splitvm-net's drop counters at exit

. /lab/lib.sh
D=/tmp/net
TAP=svnet0
mkdir -p "$D"

# wait_file_line FILE PATTERN SECS: until FILE has a line matching PATTERN.
wait_file_line() {
	_end=$(($(date +%s) + $3))
	until grep -q "$2" "$1" 2>/dev/null; do
		[ "$(date +%s)" -ge "$_end" ] && return 1
		usleep 50000
	done
	return 0
}

splitvm-net --socket-path "$D/net.sock" --tap $TAP --mac 52:54:00:12:34:58 --mtu 1400 >"$D/net.log" 2>&1 &
net_pid=$!
if ! wait_file_line "$D/net.log" "listening on" 10; then
	l1_result net_backend_started no
	cat "$D/net.log"
fi
ip addr add 10.88.0.1/24 dev $TAP
ip link set $TAP up
l1_result net_tap_mac "$(cat /sys/class/net/$TAP/address)"

dd if=/dev/urandom of="$D/pat.bin" bs=65536 count=64 2>/dev/null
l1_result net_pat_md5 "$(md5sum <"$D/pat.bin" | cut -d' ' -f1)"
# A background job's stdin is /dev/null, and busybox nc ends the
# connection at EOF on stdin: give the receiver a FIFO that never ends.
mkfifo "$D/hold"
exec 8<>"$D/hold"
nc -l -p 5001 <"$D/hold" >"$D/rx.bin" &
rx_pid=$!
nc -l -p 5002 <"$D/pat.bin" &
tx_pid=$!
(
	nc -l -p 5003 >"$D/ctl.txt"
	kill -USR1 $net_pid
	# Up again once the guest has seen the carrier go (its console is
	# teed to l2.log below).
	wait_file_line "$D/l2.log" "net_link_down_seen=" 60
	if grep -q "frontend read the link state: down" "$D/net.log"; then
		echo yes >"$D/down_read"
	else
		echo no >"$D/down_read"
	fi
	kill -USR2 $net_pid
) &
ctl_pid=$!

# kill -9 when the guest asks (port 5004), then a new backend on the same
# socket and tap: splitvm reconnects, the guest's ping resumes.
(
	nc -l -p 5004 >/dev/null
	kill -KILL $net_pid
	splitvm-net --socket-path "$D/net.sock" --tap $TAP --mac 52:54:00:12:34:58 --mtu 1400 >>"$D/net.log" 2>&1 &
	echo $! >"$D/net2.pid"
	until [ "$(grep -c 'listening on' "$D/net.log")" -ge 2 ]; do usleep 50000; done
	ip addr add 10.88.0.1/24 dev $TAP 2>/dev/null
	ip link set $TAP up
	echo yes >"$D/restarted"
	wait_file_line "$D/l2.log" "net_ping_after_restart=" 300
	kill -TERM "$(cat "$D/net2.pid")"
	wait "$(cat "$D/net2.pid")"
	echo $? >"$D/term_rc"
) &
restart_pid=$!

run_l2 net --scenario /lab/scenarios/net/l2.sh -- --memory 512M --net socket="$D/net.sock" |
	tee "$D/l2.log"

l1_result net_rx_bytes "$(wc -c <"$D/rx.bin")"
l1_result net_rx_md5 "$(md5sum <"$D/rx.bin" | cut -d' ' -f1)"
l1_result net_link_down_read "$(cat "$D/down_read" 2>/dev/null || echo no)"
kill $rx_pid $tx_pid $ctl_pid 2>/dev/null
exec 8>&-
if grep -q "net_ping_after_restart=" "$D/l2.log"; then
	wait $restart_pid
	l1_result net_restarted "$(cat "$D/restarted" 2>/dev/null || echo no)"
	l1_result net_term_rc "$(cat "$D/term_rc" 2>/dev/null || echo none)"
else
	kill $restart_pid 2>/dev/null
	kill -TERM $net_pid
	wait $net_pid
	l1_result net_term_rc "$?"
fi
l1_result net_counters "$(grep 'counters:' "$D/net.log" | tail -n 1 | sed 's/.*counters: //; s/ /,/g')"
grep -E 'WARN|ERROR' "$D/net.log" | head -n 20
