#!/usr/bin/env bash
# Boots the nested lab's level 1 and runs a lab script in it.
#
#   run-l1.sh --bin-dir DIR --script L1SCRIPT [--file SRC:DEST]... [--with-qemu] [--with-qsd]
#             [--with-dpdk] [--timeout SECS] [--memory MB] [--verbose]
#
# Level 1 is Debian's kernel under `qemu-system-x86_64 -M microvm -accel tcg
# -cpu max` with nested SVM (kvm-amd), so it has a real /dev/kvm. Its
# initramfs is the base image from scripts/guest-assets plus an overlay built
# here: the project's binaries from DIR (splitvm, splitvm-blk, splitvm-net,
# splitvm-input, whichever exist) in /opt/splitvm/bin with their shared
# libraries, lab-timer, /lab/run.sh (= L1SCRIPT), /lab/lib.sh, extra files,
# with --with-qemu QEMU itself (binary, libraries, firmware), with
# --with-qsd qemu-storage-daemon, and with --with-dpdk DPDK's dpdk-testpmd
# with the drivers a vhost-user/tap forwarder needs (vdev bus, ring
# mempool, vhost and tap PMDs) in DPDK's plugin directory, which its EAL
# loads at start.
#
# The level-1 serial console is streamed to stdout, each line prefixed with
# "[l1] ". Exit status: the rc of "SPLITVM-L1-DONE rc=N", or 1 if that line
# never came (the boot failed or --timeout, default 900 s, expired).
#
# Level 1 boots the ELF vmlinux through PVH (3 s faster than the bzImage under
# TCG); SPLITVM_L1_KERNEL=PATH overrides it.
#
# Environment: SPLITVM_CACHE (see scripts/guest-assets), SPLITVM_TSC_KHZ
# (overrides the host TSC frequency detection).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BINARIES=(splitvm splitvm-blk splitvm-net splitvm-input)

log() { echo "run-l1: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

bin_dir=
script=
files=()
with_qemu=0
with_qsd=0
with_dpdk=0
timeout=900
memory=2048
verbose=0
while [[ $# -gt 0 ]]; do
	case $1 in
	--bin-dir)
		bin_dir=$2
		shift 2
		;;
	--script)
		script=$2
		shift 2
		;;
	--file)
		files+=("$2")
		shift 2
		;;
	--with-qemu)
		with_qemu=1
		shift
		;;
	--with-qsd)
		with_qsd=1
		shift
		;;
	--with-dpdk)
		with_dpdk=1
		shift
		;;
	--timeout)
		timeout=$2
		shift 2
		;;
	--memory)
		memory=$2
		shift 2
		;;
	--verbose)
		verbose=1
		shift
		;;
	*) die "unknown argument $1 (see the header of $0)" ;;
	esac
done
[[ -n $script && -f $script ]] || die "--script FILE is required"
[[ -z $bin_dir || -d $bin_dir ]] || die "--bin-dir $bin_dir is not a directory"

# Host TSC frequency in kHz: microvm under TCG stalls at "Marking TSC
# unstable" unless the guest is told the frequency (tsc_early_khz).
tsc_khz() {
	if [[ -n ${SPLITVM_TSC_KHZ:-} ]]; then
		echo "$SPLITVM_TSC_KHZ"
		return
	fi
	local mhz kernel_log
	kernel_log=$({ dmesg 2>/dev/null || journalctl -k -b --no-pager 2>/dev/null || true; })
	mhz=$(sed -n 's/.*tsc: Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' <<<"$kernel_log" | tail -n 1)
	[[ -n $mhz ]] || mhz=$(sed -n 's/.*tsc: Detected \([0-9.]*\) MHz processor.*/\1/p' <<<"$kernel_log" | tail -n 1)
	[[ -n $mhz ]] || mhz=$(awk -F: '/^cpu MHz/ { gsub(/ /, "", $2); print $2; exit }' /proc/cpuinfo)
	[[ -n $mhz ]] || die "cannot find the host TSC frequency; set SPLITVM_TSC_KHZ"
	awk -v m="$mhz" 'BEGIN { printf "%d\n", m * 1000 + 0.5 }'
}

# copy_with_libs STAGE FILE DEST: FILE to STAGE/DEST plus every library ldd
# reports, at the path ldd names (the ELF interpreter path is fixed).
copy_with_libs() {
	local stage=$1 file=$2 dest=$3 lib
	mkdir -p "$stage/$(dirname "$dest")"
	cp "$file" "$stage/$dest"
	while read -r lib; do
		[[ -e $stage/$lib ]] && continue
		mkdir -p "$stage/$(dirname "$lib")"
		cp -L "$lib" "$stage/$lib"
	done < <(ldd "$file" 2>/dev/null | awk '/=> \// { print $3 } /^\t\// { print $1 }')
}

# lab_timer: the static timing helper, built once per source version.
lab_timer() {
	local src="$HERE/tools/lab-timer.rs" out hash
	hash=$(sha256sum "$src" | cut -c1-16)
	out="${SPLITVM_CACHE:-$HOME/.cache/splitvm}/tools/lab-timer-$hash"
	if [[ ! -x $out ]]; then
		mkdir -p "$(dirname "$out")"
		rustc --edition 2021 -O -C target-feature=+crt-static -C strip=symbols \
			-o "$out.tmp" "$src" >&2
		mv "$out.tmp" "$out"
	fi
	echo "$out"
}

assets=$("$ROOT/scripts/guest-assets")
# shellcheck source=/dev/null
. "$assets/assets.env"

work=$(mktemp -d "${TMPDIR:-/tmp}/splitvm-l1.XXXXXX")
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
	# QEMU (through its `timeout`) must not outlive this script.
	if [[ -f $work/qemu.pid ]]; then kill "$(cat "$work/qemu.pid")" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT
stage="$work/overlay"
mkdir -p "$stage/opt/splitvm/bin" "$stage/opt/splitvm/lib" "$stage/lab"

if [[ -n $bin_dir ]]; then
	for b in "${BINARIES[@]}"; do
		if [[ -x $bin_dir/$b ]]; then
			copy_with_libs "$stage" "$bin_dir/$b" "/opt/splitvm/bin/$b"
			log "packed $b"
		fi
	done
fi
cp "$(lab_timer)" "$stage/opt/splitvm/bin/lab-timer"
cp "$script" "$stage/lab/run.sh"
cp "$HERE/lib.sh" "$stage/lab/lib.sh"
for spec in "${files[@]}"; do
	src=${spec%%:*}
	dest=${spec#*:}
	[[ -e $src && $dest == /* ]] || die "--file $spec: need SRC:/ABSOLUTE/DEST with an existing SRC"
	mkdir -p "$stage/$(dirname "$dest")"
	cp -a "$src" "$stage/$dest"
done
if [[ $with_qemu == 1 ]]; then
	qemu=$(command -v qemu-system-x86_64) || die "--with-qemu: qemu-system-x86_64 not installed"
	copy_with_libs "$stage" "$qemu" /usr/bin/qemu-system-x86_64
	mkdir -p "$stage/usr/share/qemu"
	for fw in qboot.rom bios-microvm.bin linuxboot_dma.bin pvh.bin; do
		[[ -e /usr/share/qemu/$fw ]] && cp -L "/usr/share/qemu/$fw" "$stage/usr/share/qemu/"
	done
	[[ -d /usr/share/seabios ]] && cp -rL /usr/share/seabios "$stage/usr/share/"
	log "packed QEMU"
fi
if [[ $with_qsd == 1 ]]; then
	qsd=$(command -v qemu-storage-daemon) || die "--with-qsd: qemu-storage-daemon not installed"
	copy_with_libs "$stage" "$qsd" /usr/bin/qemu-storage-daemon
	log "packed qemu-storage-daemon"
fi
if [[ $with_dpdk == 1 ]]; then
	testpmd=$(command -v dpdk-testpmd) || die "--with-dpdk: dpdk-testpmd not installed (package dpdk-dev)"
	copy_with_libs "$stage" "$testpmd" /usr/bin/dpdk-testpmd
	# The EAL loads every driver in the plugin directory it was built
	# with (DPDK_PLUGIN_PATH in librte_eal); only the drivers needed here
	# go in, so the others (and their libraries: verbs, pcap, ...) stay out.
	# A driver testpmd links already (the vdev bus) stays out too: without
	# the host's symlinks and ld.so.cache, level 1 would hold two copies of
	# it, the EAL would load the second one as well, and the --vdev devices
	# would land on a second vdev bus that has no drivers.
	linked=$(ldd "$testpmd")
	eal=$(awk '/librte_eal\.so/ { print $3 }' <<<"$linked")
	pmds=$(grep -a -o 'DPDK_PLUGIN_PATH=[[:graph:]]*' "$eal" | sed -n '1s/^DPDK_PLUGIN_PATH=//p')
	[[ -n $pmds && -d $pmds ]] || die "--with-dpdk: no DPDK plugin directory named in $eal"
	for d in bus_vdev mempool_ring net_vhost net_tap; do
		[[ $linked == *"librte_$d.so"* ]] && continue
		found=0
		for f in "$pmds"/librte_"$d".so.*; do
			[[ -f $f && ! -L $f ]] || continue
			copy_with_libs "$stage" "$f" "$f"
			found=1
		done
		((found)) || die "--with-dpdk: no $d driver in $pmds"
	done
	log "packed dpdk-testpmd ($pmds)"
fi
(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$work/overlay.cpio"
cat "$L1_INITRAMFS" "$work/overlay.cpio" >"$work/initrd.cpio"

khz=$(tsc_khz)
append="console=ttyS0 tsc_early_khz=$khz panic=-1"
[[ $verbose == 1 ]] || append+=" quiet"
log "booting level 1: kernel $KVER, tsc_early_khz=$khz, initrd $(($(stat -c %s "$work/initrd.cpio") / 1048576)) MiB"

t0=$EPOCHREALTIME
rc=
qemu_rc=
elapsed() { awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
# The level-1 console goes through a pipe; QEMU's status arrives as its last
# line. QEMU's stdin is a FIFO held open here, so the watchdog can send the
# level-1 serial port a byte.
mkfifo "$work/stdin"
exec 7<>"$work/stdin"
stall_poke=${SPLITVM_L1_STALL_SECS:-15}
stall_kill=120
silent=0
last_poke=0
poked=0
partial=
while :; do
	IFS= read -r -t 5 line && st=0 || st=$?
	if ((st != 0)); then
		# read: 0 line, 1 EOF, >128 timeout (keeping a partial line).
		((st > 128)) || break
		partial+=$line
		silent=$((silent + 5))
		# Level 1 prints SPLITVM-L1-TICK every 5 s. Under TCG it occasionally
		# stops waking up from idle (a lost timer interrupt: after a wake-up
		# it logs "soft lockup - CPU#0 stuck for 30s! [swapper/0:0]"); an
		# interrupt from the serial port revives it.
		if ((silent >= stall_kill)); then
			log "level 1 stalled (silent for $silent s): stopping QEMU"
			kill "$(cat "$work/qemu.pid")" 2>/dev/null || true
			silent=0
			last_poke=0
		elif ((silent - last_poke >= stall_poke)); then
			last_poke=$silent
			log "level 1 silent for $silent s at $(elapsed) s: poking its serial port"
			printf '\n' >&7
			poked=1
		fi
		continue
	fi
	line=$partial$line
	partial=
	silent=0
	last_poke=0
	if ((poked)); then
		log "level 1 is alive again at $(elapsed) s"
		poked=0
	fi
	line=${line%$'\r'}
	case $line in
	RUN-L1-QEMU-EXIT=*)
		qemu_rc=${line#RUN-L1-QEMU-EXIT=}
		continue
		;;
	SPLITVM-L1-TICK) continue ;;
	esac
	printf '[l1] %s\n' "$line"
	case $line in
	SPLITVM-L1-INIT*) log "level-1 /init at $(elapsed) s" ;;
	SPLITVM-L1-KVM*) log "level-1 kvm modules loaded at $(elapsed) s" ;;
	*SPLITVM-L2-INIT*) log "level-2 init at $(elapsed) s" ;;
	L2-EXIT*) log "$line at $(elapsed) s" ;;
	SPLITVM-L1-DONE\ rc=*)
		rc=${line#SPLITVM-L1-DONE rc=}
		log "level-1 done (rc=$rc) at $(elapsed) s"
		;;
	esac
done < <(
	st=0
	timeout -k 10 "$timeout" qemu-system-x86_64 -M microvm -accel tcg -cpu max -m "$memory" -smp 1 \
		-nodefaults -no-user-config -display none -no-reboot -serial stdio \
		-kernel "${SPLITVM_L1_KERNEL:-$VMLINUX}" -initrd "$work/initrd.cpio" -append "$append" \
		<"$work/stdin" &
	echo $! >"$work/qemu.pid"
	wait $! || st=$?
	echo "RUN-L1-QEMU-EXIT=$st"
)
exec 7>&-
log "QEMU exited (status ${qemu_rc:-unknown}) at $(elapsed) s"
if [[ -z $rc ]]; then
	[[ $qemu_rc == 124 ]] && log "level 1 timed out after $timeout s"
	log "no SPLITVM-L1-DONE line: level 1 failed"
	exit 1
fi
[[ $rc =~ ^[0-9]+$ ]] || exit 1
exit "$rc"
