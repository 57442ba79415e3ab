# Level-2 guest side of the dpdk scenario (busybox sh, run as /scenario.sh).
# eth0 is splitvm's virtio-net device served by dpdk-testpmd's vhost PMD;
# 10.89.0.1 is testpmd's tap in level 1 (l1.sh): port 5101 takes what we
# send, 5102 sends a file. Prints "RESULT key=value" lines.
# Keep kernel messages off the console: they would split RESULT lines.
dmesg -n 1
HOST=10.89.0.1
ME=10.89.0.2
now() { cut -d' ' -f1 /proc/uptime; }
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000 }'; }

dev=$(basename "$(readlink /sys/class/net/eth0/device)")
# The negotiated feature bits, bit 0 first.
echo "RESULT dpdk_guest_features=$(cat /sys/bus/virtio/devices/"$dev"/features)"
ip link set eth0 up
ip addr add $ME/24 dev eth0
ip addr show eth0
echo "RESULT dpdk_mtu=$(cat /sys/class/net/eth0/mtu)"
echo "RESULT dpdk_carrier=$(cat /sys/class/net/eth0/carrier)"
ok=fail
for _ in $(seq 1 30); do
	if ping -c 1 -W 1 $HOST >/dev/null 2>&1; then ok=ok; break; fi
done
echo "RESULT dpdk_ping_first=$ok"
if ping -c 3 -W 2 $HOST >/tmp/ping 2>&1; then
	echo "RESULT dpdk_ping=ok"
else
	echo "RESULT dpdk_ping=fail"
	cat /tmp/ping
fi
echo "RESULT dpdk_arp=$(ip neigh show $HOST | awk '{ for (i = 1; i < NF; i++) if ($i == "lladdr") print $(i + 1) }')"

dd if=/dev/urandom of=/tmp/out bs=65536 count=64 2>/dev/null
echo "RESULT dpdk_tx_md5=$(md5sum /tmp/out | cut -d' ' -f1)"
t0=$(now)
nc $HOST 5101 </tmp/out
t1=$(now)
echo "RESULT dpdk_tx_ms=$(ms "$t0" "$t1")"
t0=$(now)
nc $HOST 5102 >/tmp/in
t1=$(now)
echo "RESULT dpdk_rx_ms=$(ms "$t0" "$t1")"
echo "RESULT dpdk_rx_bytes=$(wc -c </tmp/in)"
echo "RESULT dpdk_rx_md5=$(md5sum /tmp/in | cut -d' ' -f1)"
