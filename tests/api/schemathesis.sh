#!/usr/bin/env bash
# Fuzzes the management API with schemathesis against docs/api.yaml and a
# real `splitvm run --api-socket` (a micro-guest that halts, one splitvm-blk
# disk). Fails on any 5xx, any answer that breaks the spec, or a VMM that
# is not alive afterwards. shutdown and kill are left out of the fuzzing and
# called once at the end: the VMM must then exit with status 0.
#
# Env: ST_VENV (default target/schemathesis-venv, made on first use),
# SPLITVM, SPLITVM_BLK (binaries; default target/release, else
# target/debug), ST_MAX_EXAMPLES (per operation, default 20), ST_MAX_TIME
# (seconds for the whole fuzzing run, default 35), ST_SEED (default fixed).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/tests/api"
ST_VERSION=4.32.5
VENV=${ST_VENV:-"$ROOT/target/schemathesis-venv"}
MAX_EXAMPLES=${ST_MAX_EXAMPLES:-20}
MAX_TIME=${ST_MAX_TIME:-35}
SEED=${ST_SEED:-20261130}

pick() { # first existing binary named $1
    for d in "$ROOT/target/release" "$ROOT/target/debug"; do
        [ -x "$d/$1" ] && { echo "$d/$1"; return; }
    done
    echo "schemathesis.sh: $1 not built (cargo build --workspace --bins)" >&2
    exit 1
}
SPLITVM=${SPLITVM:-$(pick splitvm)}
SPLITVM_BLK=${SPLITVM_BLK:-$(dirname "$SPLITVM")/splitvm-blk}

if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$ST_VERSION"; then
    echo "schemathesis.sh: installing schemathesis $ST_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "schemathesis==$ST_VERSION"
fi

WORK=$(mktemp -d /tmp/splitvm-st.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# Polls `$2` (a command) every 50 ms until it succeeds or $1 seconds pass.
wait_until() {
    local limit=$1; shift
    local end=$((SECONDS + limit))
    until "$@"; do
        if [ $SECONDS -ge $end ]; then
            echo "schemathesis.sh: timed out after ${limit}s waiting for: $*" >&2
            return 1
        fi
        sleep 0.05 # poll tick, not the wait
    done
}
alive() { kill -0 "$VMM" 2>/dev/null; }
vmm_up() {
    alive || { echo "schemathesis.sh: splitvm exited early:" >&2; cat "$WORK/vmm.log" >&2; exit 1; }
    [ -S "$WORK/api.sock" ]
}

python3 "$HERE/microguest.py" "$WORK/guest.elf" API-READY
truncate -s 1M "$WORK/disk.img"
"$SPLITVM_BLK" --socket-path "$WORK/blk0.sock" --image "$WORK/disk.img" >"$WORK/blk.log" 2>&1 &
PIDS+=($!)
wait_until 20 test -S "$WORK/blk0.sock"
"$SPLITVM" run --kernel "$WORK/guest.elf" --memory 64M --serial "file:$WORK/serial.log" \
    --disk "socket=$WORK/blk0.sock" --api-socket "$WORK/api.sock" >"$WORK/vmm.log" 2>&1 &
VMM=$!
PIDS+=("$VMM")
wait_until 30 vmm_up
python3 "$HERE/uds_bridge.py" "$WORK/api.sock" "$WORK/port" 2>"$WORK/bridge.log" &
PIDS+=($!)
wait_until 10 test -s "$WORK/port"
PORT=$(cat "$WORK/port")

status=0
"$VENV/bin/st" run "$ROOT/docs/api.yaml" --url "http://127.0.0.1:$PORT" \
    --checks all --exclude-checks ignored_auth,positive_data_acceptance \
    --exclude-path /vm/shutdown --exclude-path /vm/kill \
    --max-examples "$MAX_EXAMPLES" --max-time "$MAX_TIME" --seed "$SEED" \
    --phases examples,coverage,fuzzing,stateful --workers 1 --request-timeout 15 \
    --generation-database none --no-color --report junit \
    --report-junit-path "$WORK/junit.xml" || status=$?

if ! alive; then
    echo "schemathesis.sh: splitvm died during the run:" >&2
    cat "$WORK/vmm.log" >&2
    exit 1
fi
# The operations left out: shutdown ends the VMM with status 0.
code=$(python3 - "$WORK/api.sock" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
try:
    s.connect(sys.argv[1])
    s.sendall(b"PUT /vm/shutdown HTTP/1.1\r\nHost: x\r\n\r\n")
    print(s.recv(64).split(b" ")[1].decode())
except (OSError, IndexError) as e:
    print(f"no answer ({e})")
PY
)
if [ "$code" != 204 ]; then
    echo "schemathesis.sh: PUT /vm/shutdown answered $code" >&2
    status=1
fi
end=$((SECONDS + 20))
while alive && [ $SECONDS -lt $end ]; do sleep 0.05; done
if alive; then
    echo "schemathesis.sh: splitvm still running 20 s after shutdown" >&2
    status=1
else
    wait "$VMM" && rc=0 || rc=$?
    if [ "$rc" != 0 ]; then
        echo "schemathesis.sh: splitvm exited with status $rc after shutdown:" >&2
        cat "$WORK/vmm.log" >&2
        status=1
    fi
fi
[ "$status" = 0 ] && echo "schemathesis.sh: OK (no 5xx, answers match docs/api.yaml, VMM alive, shutdown clean)"
exit "$status"
