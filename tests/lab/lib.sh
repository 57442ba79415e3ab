# Shell library for level-1 lab scripts (busybox ash). run-l1.sh packs it as
# /lab/lib.sh; a lab script starts with `. /lab/lib.sh`.
#
#   run_l2 NAME [--scenario FILE] [--timeout SECS] -- VMM_ARGS...
#       boots the level-2 guest under splitvm:
#       splitvm run --kernel /l2/vmlinux --initrd <L2 base + FILE as /scenario.sh> VMM_ARGS...
#       console lines are printed as "[l2:NAME] ...", then
#       "L2-EXIT name=NAME rc=N ms=T" (rc of the VMM; 124 on timeout).
#   run_l2_qemu NAME [--scenario FILE] [--timeout SECS] -- [--cpus N] [--memory SIZE]
#           [--cmdline STR] [QEMU_ARGS...]
#       the same guest under qemu-system-x86_64 -M microvm -enable-kvm -cpu host
#       (needs run-l1.sh --with-qemu); splitvm's --cpus/--memory/--cmdline are
#       translated, anything else goes to QEMU as is.
#   l2_initrd NAME [FILE]   prints the path of an L2 initramfs with FILE as /scenario.sh
#                           (and the static guest tools from /lab/tools in /bin)
#   l1_result KEY VALUE     prints "L1-RESULT KEY=VALUE" (a level-1 check for the tests)
#   lab_now                 wall clock in seconds with microseconds
#
# Every scenario's /scenario.sh runs in the L2 guest after its modules are
# loaded; lines it prints as "RESULT key=value" are collected by the tests.

L2_KERNEL=${L2_KERNEL:-/l2/vmlinux}
L2_BASE_INITRD=${L2_BASE_INITRD:-/l2/initramfs.cpio}
LAB_TOOLS=${LAB_TOOLS:-/lab/tools}
L2_WORK=${L2_WORK:-/tmp/l2}
L2_TIMEOUT=${L2_TIMEOUT:-300}

lab_now() {
	lab-timer now
}

# l2_initrd NAME [SCENARIO]: the L2 base initramfs with an appended overlay.
l2_initrd() {
	_dir=$L2_WORK/$1
	rm -rf "$_dir"
	mkdir -p "$_dir/overlay"
	if [ -n "$2" ]; then
		cp "$2" "$_dir/overlay/scenario.sh"
		chmod 755 "$_dir/overlay/scenario.sh"
	fi
	if [ -d "$LAB_TOOLS" ]; then
		mkdir -p "$_dir/overlay/bin"
		cp "$LAB_TOOLS"/* "$_dir/overlay/bin/"
	fi
	(cd "$_dir/overlay" && find . | cpio -o -H newc 2>/dev/null) >"$_dir/overlay.cpio"
	cat "$L2_BASE_INITRD" "$_dir/overlay.cpio" >"$_dir/initrd.cpio"
	echo "$_dir/initrd.cpio"
}

l1_result() {
	echo "L1-RESULT $1=$2"
}

# _l2_parse NAME ARGS...: sets _scenario, _timeout; the rest after "--" is
# left in _rest (newline-free words are passed through "$@" by the caller).
# _l2_tag NAME: prefixes each line with "[l2:NAME] ", a whole line per write.
_l2_tag() {
	awk -v p="[l2:$1] " '{ sub(/\r$/, ""); print p $0; fflush() }'
}

_l2_run() {
	_vmm=$1
	_name=$2
	shift 2
	_scenario=
	_timeout=$L2_TIMEOUT
	while [ $# -gt 0 ]; do
		case $1 in
		--scenario)
			_scenario=$2
			shift 2
			;;
		--timeout)
			_timeout=$2
			shift 2
			;;
		--)
			shift
			break
			;;
		*)
			echo "run_l2: unknown option $1" >&2
			return 2
			;;
		esac
	done
	_initrd=$(l2_initrd "$_name" "$_scenario")
	_rcfile=$L2_WORK/$_name/rc
	_t0=$(lab_now)
	echo "L2-START name=$_name vmm=$_vmm t=$_t0"
	if [ "$_vmm" = splitvm ]; then
		# The console (stdout) and the VMM's log (stderr) are assembled into
		# lines apart: the console arrives a byte per write, and a log line
		# written into the middle of "RESULT k=v" would hide that result.
		{ { {
			timeout "$_timeout" splitvm run --kernel "$L2_KERNEL" --initrd "$_initrd" "$@" </dev/null
			echo $? >"$_rcfile"
		} | _l2_tag "$_name"; } 2>&1 1>&3 3>&- | _l2_tag "$_name"; } 3>&1
	else
		_mem=256M
		_cpus=1
		_cmdline=
		_extra=
		while [ $# -gt 0 ]; do
			case $1 in
			--memory)
				_mem=$2
				shift 2
				;;
			--cpus)
				_cpus=$2
				shift 2
				;;
			--cmdline)
				_cmdline=$2
				shift 2
				;;
			*) break ;;
			esac
		done
		{ { {
			timeout "$_timeout" qemu-system-x86_64 -M microvm -enable-kvm -cpu host \
				-m "$_mem" -smp "$_cpus" -kernel "$L2_KERNEL" -initrd "$_initrd" \
				-append "console=ttyS0 reboot=t panic=1 $_cmdline" \
				-nodefaults -no-user-config -display none -serial stdio -no-reboot \
				"$@" </dev/null
			echo $? >"$_rcfile"
		} | _l2_tag "$_name"; } 2>&1 1>&3 3>&- | _l2_tag "$_name"; } 3>&1
	fi
	_rc=$(cat "$_rcfile" 2>/dev/null || echo 255)
	_t1=$(lab_now)
	echo "L2-EXIT name=$_name rc=$_rc ms=$(awk -v a="$_t0" -v b="$_t1" 'BEGIN { printf "%.1f", (b - a) * 1000 }')"
	return "$_rc"
}

run_l2() {
	_l2_run splitvm "$@"
}

run_l2_qemu() {
	_l2_run qemu "$@"
}
