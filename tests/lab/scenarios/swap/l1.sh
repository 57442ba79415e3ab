# Level-1 side of the swap scenario: the guest's disk moves between two
# splitvm-blk processes serving the same image while the guest writes and
# verifies (the restart scenario's workload), through the management API:
#   A -> B, a swap to a socket nobody serves (refused; B keeps the disk),
#   B -> A. The guest must see no error; the backend left behind sees its
# frontend go, and SIGTERM ends it cleanly.
. /lab/lib.sh
truncate -s 16M /tmp/swap.img
for b in a b; do
	RUST_LOG=info splitvm-blk --socket-path /tmp/swap-$b.sock --image /tmp/swap.img >/tmp/swap-$b.log 2>&1 &
	echo $! >/tmp/swap-$b.pid
done
api=/tmp/swap-api.sock
# DURATION for the guest workload comes first in the scenario file.
{ echo "DURATION=90"; cat /lab/scenarios/restart/l2.sh; } >/tmp/swap-l2.sh
RUST_LOG=vmm_core=info run_l2 swap --scenario /tmp/swap-l2.sh --timeout 400 -- --memory 512M --api-socket "$api" \
	--disk socket=/tmp/swap-a.sock | tee /tmp/swap-l2.out &
l2=$!
while ! grep -q RESTART-WORKLOAD-START /tmp/swap-l2.out 2>/dev/null; do
	kill -0 $l2 2>/dev/null || break
	sleep 0.2
done
# wait_rounds: until the guest has finished two more workload rounds (so
# every backend serves real I/O before the next swap).
wait_rounds() {
	_want=$(($(grep -c RESTART-ROUND /tmp/swap-l2.out) + 2))
	while [ "$(grep -c RESTART-ROUND /tmp/swap-l2.out)" -lt "$_want" ]; do
		kill -0 $l2 2>/dev/null || return 1
		sleep 0.2
	done
}
pid_of_backend() { splitvm ctl --api-socket "$api" --json devices | tr ',' '\n' | grep '"backend_pid"' | head -1 | tr -dc 0-9; }
l1_result swap_pid_before "$(pid_of_backend)"
l1_result swap_a_pid "$(cat /tmp/swap-a.pid)"
l1_result swap_b_pid "$(cat /tmp/swap-b.pid)"
wait_rounds
splitvm ctl --api-socket "$api" swap blk0 --socket /tmp/swap-b.sock
l1_result swap_to_b_rc "$?"
l1_result swap_pid_after_b "$(pid_of_backend)"
wait_rounds
splitvm ctl --api-socket "$api" swap blk0 --socket /tmp/nobody.sock >/tmp/swap-bad.out 2>&1
l1_result swap_to_nowhere_rc "$?"
l1_result swap_pid_after_nowhere "$(pid_of_backend)"
wait_rounds
splitvm ctl --api-socket "$api" swap blk0 --socket /tmp/swap-a.sock
l1_result swap_back_to_a_rc "$?"
l1_result swap_pid_after_a "$(pid_of_backend)"
wait_rounds
l1_result swap_rounds_after_last_swap_ok "$?"
wait $l2
l1_result swap_b_saw_disconnect "$(grep -c 'frontend disconnected' /tmp/swap-b.log)"
kill -TERM "$(cat /tmp/swap-b.pid)"
wait "$(cat /tmp/swap-b.pid)"
l1_result swap_b_term_rc "$?"
for s in 0 1 2 3; do
	l1_result "swap_img_stream${s}_md5" "$(dd if=/tmp/swap.img bs=64k skip=$((s * 16)) count=16 2>/dev/null | md5sum | cut -d' ' -f1)"
done
kill -TERM "$(cat /tmp/swap-a.pid)" 2>/dev/null
for b in a b; do sed "s/^/[swap-$b] /" /tmp/swap-$b.log | grep -v "DEBUG.*vring|kick" | tail -40; done
