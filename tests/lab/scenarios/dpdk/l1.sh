# Level-1 half of the dpdk scenario (busybox ash; `. /lab/lib.sh` first;
# run-l1.sh --with-dpdk). splitvm's vhost-user frontend against a backend
# nobody here wrote: DPDK's dpdk-testpmd with its vhost PMD (the vhost-user
# server on $D/vhu.sock) io-forwarding to its tap PMD (tap dtap0, with
# 10.89.0.1/24 in level 1; no traffic leaves level 1). busybox nc serves the
# guest's TCP transfers; the level-2 guest (l2.sh) runs under splitvm with
# --net socket=$D/vhu.sock.
#
# testpmd runs without hugepages (--no-huge, anonymous memory; the vhost
# PMD maps the guest memory from the fds splitvm sends), with two lcores on
# level 1's one CPU (the forwarding lcore busy-polls, so it runs at nice 19
# and the guest's vCPU comes first) and a long stats period, which keeps it
# running with stdin at EOF; SIGTERM ends it with its forwarding statistics.
#
# Prints "L1-RESULT key=value" lines; the guest prints "RESULT ..." lines.
#   dpdk_started            testpmd's socket and tap appeared (yes/no)
#   dpdk_start_ms           testpmd start until its socket and tap exist
#   dpdk_tap_mac            the tap's MAC (the guest's ARP entry for 10.89.0.1)
#   dpdk_features           what the vhost PMD logged as negotiated (hex)
#   dpdk_pat_md5 / dpdk_rx_md5 / dpdk_rx_bytes   what level 1 sent / received
#   dpdk_port0_rx / _tx     testpmd's forwarding statistics of the vhost port
#   dpdk_term_rc            testpmd's exit status after SIGTERM

. /lab/lib.sh
D=/tmp/dpdk
TAP=dtap0
mkdir -p "$D" /var/run

# wait_until SECS CMD...: until CMD succeeds.
wait_until() {
	_end=$(($(date +%s) + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		[ "$(date +%s)" -ge "$_end" ] && return 1
		usleep 50000
	done
	return 0
}

# The EAL refuses a plugin directory with a world-writable parent, and the
# initramfs root is one.
pmds=$(find /usr/lib -maxdepth 3 -type d -name 'pmds-*' | head -n 1)
d=$pmds
while [ -n "$d" ] && [ "$d" != / ]; do
	chmod go-w "$d"
	d=$(dirname "$d")
done
chmod go-w /

t0=$(lab_now)
# busybox has renice but no nice: the shell lowers itself, then becomes
# testpmd (its threads inherit the priority).
# shellcheck disable=SC2016 # $$ and $@ belong to the inner shell
sh -c 'renice -n 19 -p $$ >/dev/null && exec dpdk-testpmd "$@"' testpmd \
	--no-shconf --no-huge -m 128 --no-pci --lcores '0@0,1@0' \
	--vdev "net_vhost0,iface=$D/vhu.sock,queues=1" --vdev "net_tap0,iface=$TAP" -- \
	--forward-mode=io --auto-start --total-num-mbufs 8192 --stats-period 3600 \
	</dev/null >"$D/testpmd.log" 2>&1 &
pmd_pid=$!
if wait_until 120 test -S "$D/vhu.sock" && wait_until 60 ip link show $TAP; then
	l1_result dpdk_started yes
else
	l1_result dpdk_started no
	cat "$D/testpmd.log"
	kill $pmd_pid 2>/dev/null
	echo "--- plugin directory $pmds; testpmd again with the EAL's debug log ---"
	ls -la "$pmds"
	timeout 60 dpdk-testpmd --log-level=lib.eal:debug --log-level='pmd.net.*:debug' \
		--log-level='lib.vhost.*:debug' --no-shconf --no-huge -m 128 --no-pci \
		--vdev "net_vhost0,iface=$D/vhu2.sock,queues=1" -- --total-num-mbufs 8192 </dev/null 2>&1 |
		grep -v '^ \|^$' | head -n 60
	exit 1
fi
l1_result dpdk_start_ms "$(awk -v a="$t0" -v b="$(lab_now)" 'BEGIN { printf "%d", (b - a) * 1000 }')"
ip addr add 10.89.0.1/24 dev $TAP
ip link set $TAP up
l1_result dpdk_tap_mac "$(cat /sys/class/net/$TAP/address)"

dd if=/dev/urandom of="$D/pat.bin" bs=65536 count=64 2>/dev/null
l1_result dpdk_pat_md5 "$(md5sum <"$D/pat.bin" | cut -d' ' -f1)"
# busybox nc ends the connection at EOF on stdin: the receiver reads a FIFO
# that never ends.
mkfifo "$D/hold"
exec 8<>"$D/hold"
nc -l -p 5101 <"$D/hold" >"$D/rx.bin" &
rx_pid=$!
nc -l -p 5102 <"$D/pat.bin" &
tx_pid=$!

# splitvm logs what it negotiated with the backend at info level.
export RUST_LOG="${RUST_LOG:-info}"
run_l2 dpdk --scenario /lab/scenarios/dpdk/l2.sh -- \
	--memory 512M --net socket="$D/vhu.sock"
l2_rc=$?

l1_result dpdk_features "$(sed -n 's/.*negotiated Virtio features: \(0x[0-9a-f]*\).*/\1/p' "$D/testpmd.log" | tail -n 1)"
l1_result dpdk_rx_bytes "$(wc -c <"$D/rx.bin")"
l1_result dpdk_rx_md5 "$(md5sum <"$D/rx.bin" | cut -d' ' -f1)"
kill $rx_pid $tx_pid 2>/dev/null
exec 8>&-
kill -TERM $pmd_pid
wait $pmd_pid
l1_result dpdk_term_rc $?
# "Forward statistics for port 0" is followed by its RX and TX lines.
port0=$(grep -A2 'Forward statistics for port 0 ' "$D/testpmd.log")
l1_result dpdk_port0_rx "$(echo "$port0" | sed -n 's/.*RX-packets: *\([0-9]*\).*/\1/p')"
l1_result dpdk_port0_tx "$(echo "$port0" | sed -n 's/.*TX-packets: *\([0-9]*\).*/\1/p')"
echo "--- testpmd log (without statistics) ---"
grep -v '^ \|^$\|^\s*#' "$D/testpmd.log" | grep -v 'Port statistics' | head -n 80
exit $l2_rc
