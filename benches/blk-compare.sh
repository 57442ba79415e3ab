#!/usr/bin/env bash
# First blk comparison: 4 KiB random read at QD 32 (and whatever blkgen
# arguments follow) against splitvm-blk and qemu-storage-daemon serving the
# same raw image, one after the other in one run, through the same
# vhost-user frontend (benches/blkgen, the blkio crate).
#
#   cargo build --release -p splitvm-blk -p blkgen
#   benches/blk-compare.sh [--image FILE] [--size MiB] [-- BLKGEN_ARGS...]
#
# Needs qemu-storage-daemon (Debian package qemu-system-common).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${SPLITVM_BIN_DIR:-$root/target/release}
size_mib=1024
image=
while [[ $# -gt 0 ]]; do
	case $1 in
	--image) image=$2; shift 2 ;;
	--size) size_mib=$2; shift 2 ;;
	--) shift; break ;;
	*) echo "blk-compare: unknown argument $1" >&2; exit 2 ;;
	esac
done
gen_args=("$@")
[[ ${#gen_args[@]} -gt 0 ]] || gen_args=(--rw randread --bs 4096 --qd 32 --seconds 5)

work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

if [[ -z $image ]]; then
	image=$work/disk.img
	# Written, not sparse: reads must hit real blocks (page cache) on both.
	dd if=/dev/urandom of="$image" bs=1M count="$size_mib" status=none
fi

wait_socket() {
	local i
	for ((i = 0; i < 500; i++)); do
		[[ -S $1 ]] && return 0
		kill -0 "$2" 2>/dev/null || { echo "blk-compare: backend died" >&2; return 1; }
		sleep 0.01 # poll tick
	done
	echo "blk-compare: no socket $1 after 5 s" >&2
	return 1
}

run_one() {
	local label=$1 sock=$2 pid=$3
	wait_socket "$sock" "$pid"
	"$bin/blkgen" --socket "$sock" --label "$label" "${gen_args[@]}"
	kill "$pid"
	wait "$pid" 2>/dev/null || true
}

echo "host: $(nproc) CPUs, $(uname -r); image $image ($(du -h --apparent-size "$image" | cut -f1))"

sock=$work/splitvm.sock
RUST_LOG=warn "$bin/splitvm-blk" --socket-path "$sock" --image "$image" &
pids+=($!)
run_one splitvm-blk "$sock" $!

# qsd as documented (aio=threads, its default), then with aio=io_uring.
for aio in threads io_uring; do
	sock=$work/qsd-$aio.sock
	qemu-storage-daemon \
		--blockdev "driver=file,node-name=f,filename=$image,aio=$aio" \
		--blockdev driver=raw,node-name=d,file=f \
		--export "type=vhost-user-blk,id=e,addr.type=unix,addr.path=$sock,node-name=d,writable=on" &
	pids+=($!)
	run_one "qemu-storage-daemon(aio=$aio)" "$sock" $!
done
