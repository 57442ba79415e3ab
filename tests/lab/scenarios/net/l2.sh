# Level-2 guest side of the net scenario (busybox sh, run as /scenario.sh by
# the L2 init). The level-1 side (l1.sh) serves 10.88.0.1 on the tap behind
# splitvm-net: port 5001 takes what we send, 5002 sends a file, 5003 takes
# the link down on request and brings it up once we report the carrier
# change on the console (level 1 watches it). Prints "RESULT key=value" lines.
# Keep kernel messages off the console: they would split RESULT lines.
dmesg -n 1
HOST=10.88.0.1
ME=10.88.0.2
now() { cut -d' ' -f1 /proc/uptime; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000 }'; }
# wait_carrier VALUE TENTHS: until eth0's carrier reads VALUE.
wait_carrier() {
	_n=0
	while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != "$1" ]; do
		_n=$((_n + 1))
		[ "$_n" -gt "$2" ] && return 1
		usleep 100000
	done
	return 0
}

ip link set eth0 up
ip addr add $ME/24 dev eth0
echo "RESULT net_mac=$(cat /sys/class/net/eth0/address)"
echo "RESULT net_mtu=$(cat /sys/class/net/eth0/mtu)"
wait_carrier 1 100
echo "RESULT net_carrier=$(cat /sys/class/net/eth0/carrier)"
ok=fail
for i in $(seq 1 30); do
	if ping -c 1 -W 1 $HOST >/dev/null 2>&1; then ok=ok; break; fi
done
echo "RESULT net_ping_first=$ok"
ping -c 3 -W 2 $HOST >/tmp/ping 2>&1 && echo "RESULT net_ping=ok" || { echo "RESULT net_ping=fail"; cat /tmp/ping; }
echo "RESULT net_arp=$(ip neigh show $HOST | awk '{ for (i = 1; i < NF; i++) if ($i == "lladdr") print $(i + 1) }')"

dd if=/dev/urandom of=/tmp/out bs=65536 count=64 2>/dev/null
echo "RESULT net_tx_md5=$(md5sum /tmp/out | cut -d' ' -f1)"
t0=$(now)
nc $HOST 5001 </tmp/out
t1=$(now)
echo "RESULT net_tx_ms=$(ms $t0 $t1)"
t0=$(now)
nc $HOST 5002 >/tmp/in
t1=$(now)
echo "RESULT net_rx_ms=$(ms $t0 $t1)"
echo "RESULT net_rx_bytes=$(wc -c </tmp/in)"
echo "RESULT net_rx_md5=$(md5sum /tmp/in | cut -d' ' -f1)"

# Link down and up, driven by level 1, seen as carrier changes.
echo down | nc $HOST 5003
if wait_carrier 0 300; then echo "RESULT net_link_down_seen=yes"; else echo "RESULT net_link_down_seen=no"; fi
if wait_carrier 1 600; then echo "RESULT net_link_up_seen=yes"; else echo "RESULT net_link_up_seen=no"; fi
ok=fail
for i in $(seq 1 10); do
	if ping -c 1 -W 1 $HOST >/dev/null 2>&1; then ok=ok; break; fi
done
echo "RESULT net_ping_after_up=$ok"

# Level 1 kills splitvm-net with SIGKILL and starts a new one on the same
# socket: after a pause, the same eth0 carries traffic again.
echo restart | nc $HOST 5004
# The new tap has a new MAC: forget the old one.
ip neigh flush dev eth0
ok=fail
for i in $(seq 1 60); do
	if ping -c 1 -W 1 $HOST >/dev/null 2>&1; then ok=ok; break; fi
done
echo "RESULT net_ping_after_restart=$ok"
