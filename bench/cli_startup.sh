#!/bin/sh
# CLI start-up: `qumran list --all` against `virsh list --all`, measured with hyperfine.
#
# A private qumrand (fake driver: no hypervisor needed) is started in a temporary folder
# and given $VMS defined VMs (default 100, as in the libvirt comparison), unless
# QUMRAN_SOCKET names a running daemon to measure against instead. virsh is measured
# against $VIRSH_URI (default qemu:///system) when virsh is installed and answers.
#
# Usage: bench/cli_startup.sh            environment: VMS, VIRSH_URI, QUMRAN_SOCKET,
#                                                      RUNS, OUT (results folder)
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
qumran=${QUMRAN:-$repo/.venv/bin/qumran}
vms=${VMS:-100}
runs=${RUNS:-50}
out=${OUT:-$repo/artifacts/bench}
uri=${VIRSH_URI:-qemu:///system}

command -v hyperfine >/dev/null || { echo "cli_startup: hyperfine is not installed" >&2; exit 1; }
mkdir -p "$out"

# Measure what an installed tool does: byte-compiled modules, written once.
unset PYTHONDONTWRITEBYTECODE
"$py" -m compileall -q "$repo/src/qumran" >/dev/null

daemon_pid=
tmp=
cleanup() {
    [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    [ -n "$tmp" ] && rm -rf "$tmp"
    return 0
}
trap cleanup EXIT INT TERM

if [ -z "${QUMRAN_SOCKET:-}" ]; then
    tmp=$(mktemp -d /tmp/qbench.XXXXXX)  # short: UNIX socket paths are limited to 108 bytes
    export QUMRAN_SOCKET="$tmp/qumrand.sock"
    "$py" -m qumran.daemon.main --socket "$QUMRAN_SOCKET" --state-dir "$tmp/state" \
        --run-dir "$tmp/run" --driver fake --log-level warning 2>"$tmp/qumrand.log" &
    daemon_pid=$!
    i=0
    until "$qumran" host >/dev/null 2>&1; do
        i=$((i + 1))
        [ $i -gt 200 ] && { echo "cli_startup: qumrand did not start:" >&2; cat "$tmp/qumrand.log" >&2; exit 1; }
        sleep 0.05
    done
    : >"$tmp/vmlinuz"
    n=0
    while [ $n -lt "$vms" ]; do
        name=$(printf 'bench%03d' $n)
        printf 'name: %s\nmemory: 64M\nboot:\n  kernel: vmlinuz\n' "$name" >"$tmp/$name.yaml"
        "$qumran" define "$tmp/$name.yaml" >/dev/null
        n=$((n + 1))
    done
fi
first=$("$qumran" --json list --all | "$py" -c 'import json,sys; v=json.load(sys.stdin); print(v[0]["name"] if v else "")')
echo "qumran: $("$qumran" list --all | tail -n +3 | wc -l) VMs defined on $QUMRAN_SOCKET"

set -- -N --warmup 5 --runs "$runs" \
    --export-markdown "$out/cli_startup.md" --export-json "$out/cli_startup.json" \
    -n "python -c pass" "$py -c pass" \
    -n "qumran list --all" "$qumran list --all"
[ -n "$first" ] && set -- "$@" -n "qumran dominfo" "$qumran dominfo $first"

if command -v virsh >/dev/null && virsh -c "$uri" list --all >/dev/null 2>&1; then
    echo "virsh: $(virsh -c "$uri" list --all --name | grep -c .) domains defined on $uri"
    set -- "$@" -n "virsh list --all" "virsh -c $uri list --all"
    dom=$(virsh -c "$uri" list --all --name | head -n 1)
    [ -n "$dom" ] && set -- "$@" -n "virsh dominfo" "virsh -c $uri dominfo $dom"
else
    echo "virsh: not installed or $uri does not answer; measuring qumran alone"
fi

hyperfine "$@"
echo "results: $out/cli_startup.md, $out/cli_startup.json"
