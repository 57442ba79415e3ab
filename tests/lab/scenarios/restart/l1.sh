# Level-1 side of the restart scenario: splitvm-blk serves the level-2 guest
# while this script kills it with SIGKILL at random moments (100-600 ms
# apart) for as long as the guest's workload runs, restarting it on the same
# socket each time. splitvm reconnects, hands the new backend the inflight
# region, and the guest must notice nothing.
. /lab/lib.sh
truncate -s 16M /tmp/restart.img
start_blk() {
	RUST_LOG=info splitvm-blk --socket-path /tmp/restart.sock --image /tmp/restart.img >>/tmp/restart-blk.log 2>&1 &
	echo $! >/tmp/restart.pid
}
start_blk
# The VMM logs each restart's figures ("... first request completed after
# N ms", counted from reaching the new backend's socket).
export RUST_LOG=warn,vmm_core::vhost_user::monitor=info
run_l2 restart --scenario /lab/scenarios/restart/l2.sh --timeout 400 -- --memory 512M \
	--disk socket=/tmp/restart.sock | tee /tmp/restart-l2.out &
l2=$!
# Start killing once the workload runs (kills during boot are fine too, but
# they would not exercise requests in flight).
while ! grep -q RESTART-WORKLOAD-START /tmp/restart-l2.out 2>/dev/null; do
	kill -0 $l2 2>/dev/null || break
	sleep 0.2
done
kills=0
while kill -0 $l2 2>/dev/null && ! grep -q RESTART-WORKLOAD-DONE /tmp/restart-l2.out; do
	sleep "0.$(awk -v s="$kills" 'BEGIN { srand(s + 7); printf "%d", 1 + rand() * 5 }')"
	grep -q RESTART-WORKLOAD-DONE /tmp/restart-l2.out && break
	kill -KILL "$(cat /tmp/restart.pid)" 2>/dev/null
	wait "$(cat /tmp/restart.pid)" 2>/dev/null
	start_blk
	kills=$((kills + 1))
done
wait $l2
l1_result restart_kills "$kills"
for s in 0 1 2 3; do
	l1_result "restart_img_stream${s}_md5" "$(dd if=/tmp/restart.img bs=64k skip=$((s * 16)) count=16 2>/dev/null | md5sum | cut -d' ' -f1)"
done
# Measured, not asserted: new backend reached -> first completed request.
grep -o 'first request completed after [0-9.]* ms' /tmp/restart-l2.out | awk '{ print $5 }' |
	sort -n >/tmp/restart-first.ms
n=$(wc -l </tmp/restart-first.ms)
l1_result restart_first_completion_n "$n"
if [ "$n" -gt 0 ]; then
	l1_result restart_first_completion_ms_p50 "$(sed -n "$(((n + 1) / 2))p" /tmp/restart-first.ms)"
	l1_result restart_first_completion_ms_p99 "$(sed -n "$(((n * 99 + 99) / 100))p" /tmp/restart-first.ms)"
	l1_result restart_first_completion_ms_max "$(tail -1 /tmp/restart-first.ms)"
fi
l1_result restart_resubmitted "$(grep -c 'resubmitting' /tmp/restart-blk.log)"
kill -TERM "$(cat /tmp/restart.pid)" 2>/dev/null
