#!/usr/bin/env bash
# Ansible over skiff, over ssh (ControlPersist + pipelining) and with
# ansible_connection=local, on the same playbook of 20 small tasks over an
# inventory of N hosts (each host is its own server process on loopback);
# and the Python client's put/get throughput beside the Rust client's.
# Writes its section of docs/BENCHMARKS.md (between its own markers, after
# compare.sh's hand-written-notes marker, so neither script erases the other).
#
#   bench/ansible.sh [--runs N] [--hosts N] [--size MIB] [--no-install]
#                    [--no-build] [--out FILE]
#
# --runs N     rounds; each round runs every mode cold, then warm (default 3)
# --hosts N    inventory size (default 10; forks = hosts)
# --size MIB   file size for the put/get throughput (default 512)
# --no-install do not apt-get / pip anything
# --no-build   use target/release/skiff as it is
# --out FILE   report file (default docs/BENCHMARKS.md)
# SKIFF_BIN=PATH uses that skiff binary instead of building one
#
# cold: ssh starts without a ControlMaster (every host's master is closed
# before the run); warm: the masters of the previous run are still up. skiff
# and local have nothing to keep between runs, so their cold and warm runs
# differ only by the machine's caches.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
RUNS=3
HOSTS=10
SIZE_MIB=512
INSTALL=1
BUILD=1
OUT="$REPO/docs/BENCHMARKS.md"
ARGS_GIVEN="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS="$2"; shift ;;
        --hosts) HOSTS="$2"; shift ;;
        --size) SIZE_MIB="$2"; shift ;;
        --no-install) INSTALL=0 ;;
        --no-build) BUILD=0 ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
        *) echo "ansible.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

log() { printf '[ansible-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }

# ---------------------------------------------------------------- install
VENV="${SKIFF_CI_CACHE:-$HOME/.cache/skiff-ci}/ansible-venv"
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
if [ "$INSTALL" = 1 ]; then
    if [ ! -x "$SSHD" ] || ! command -v ssh >/dev/null; then
        log "installing openssh"
        apt-get update -qq && apt-get install -y -qq openssh-server openssh-client >/dev/null
    fi
    if ! "$VENV/bin/ansible" --version 2>/dev/null | sed -n 1p | grep -q 'core 2\.1[6-7]'; then
        log "installing ansible-core into $VENV"
        rm -rf "$VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q 'ansible-core>=2.16,<2.18'
    fi
fi
[ -x "$SSHD" ] || { echo "ansible.sh: no sshd (drop --no-install)" >&2; exit 1; }
[ -x "$VENV/bin/ansible-playbook" ] || { echo "ansible.sh: no ansible-core in $VENV" >&2; exit 1; }
ANSIBLE_VERSION=$("$VENV/bin/ansible" --version 2>/dev/null | sed -n 1p)

# SKIFF_BIN: another skiff binary (no build then).
SKIFF="${SKIFF_BIN:-$REPO/target/release/skiff}"
[ -n "${SKIFF_BIN:-}" ] && BUILD=0
if [ "$BUILD" = 1 ]; then
    log "building skiff (release)"
    (cd "$REPO" && cargo build --release --locked -q -p skiff --bin skiff)
fi
[ -x "$SKIFF" ] || { echo "ansible.sh: $SKIFF not built" >&2; exit 1; }
BUILD_KIND=release
[ -n "${SKIFF_BIN:-}" ] && BUILD_KIND="binary $SKIFF_BIN"

WORK=$(mktemp -d /tmp/skiff-ansible-bench.XXXXXX)
PIDS=()
cleanup() {
    stop_pids
    rm -rf "$WORK"
}
trap cleanup EXIT
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

# ----------------------------------------------------------- skiff hosts
log "starting $HOSTS skiff servers"
"$SKIFF" keygen --user bench >"$WORK/key"
cp "$WORK/key" "$WORK/users"
chmod 600 "$WORK/key" "$WORK/users"
SKIFF_PORTS=()
for i in $(seq "$HOSTS"); do
    mkdir -p "$WORK/skiff$i"
    HOME="$WORK/skiff$i" "$SKIFF" serve --root / --users "$WORK/users" \
        --state-dir "$WORK/skiff$i/state" --listen tcp://127.0.0.1:0 \
        >"$WORK/skiff$i/out" 2>"$WORK/skiff$i/err" </dev/null &
    PIDS+=("$!")
done
for i in $(seq "$HOSTS"); do
    for _ in $(seq 200); do grep -q '^listening on' "$WORK/skiff$i/out" && break; sleep 0.1; done
    url=$(grep -m1 '^listening on tcp://' "$WORK/skiff$i/out" | sed 's/^listening on //')
    [ -n "$url" ] || { echo "ansible.sh: skiff server $i did not start" >&2; cat "$WORK/skiff$i/err" >&2; exit 1; }
    SKIFF_PORTS+=("${url##*:}")
done

# ------------------------------------------------------------- ssh hosts
log "starting sshd on $HOSTS ports"
SSHDIR="$WORK/ssh"
SSH_PORTS=()
for i in $(seq "$HOSTS"); do SSH_PORTS+=("$(free_port)"); done
private_sshd_config "$SSHDIR" "${SSH_PORTS[@]}"
echo "MaxStartups 100" >>"$SSHDIR/sshd_config"
"$SSHD" -D -e -f "$SSHDIR/sshd_config" 2>"$WORK/sshd.log" &
PIDS+=("$!")
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',${SSH_PORTS[0]}),0.2)" 2>/dev/null && break
    sleep 0.1
done

# ------------------------------------------------------ inventories, play
PLAYDIR="$WORK/play"
mkdir -p "$PLAYDIR" "$WORK/cp" "$WORK/data"
echo "{{ inventory_hostname }} run {{ run_id }}: {{ items | join(',') }}" >"$PLAYDIR/t.j2"
echo "a local file" >"$PLAYDIR/local.txt"
{
    echo "- hosts: all"
    echo "  gather_facts: false"
    echo "  vars: {items: [a, b, c], base: \"$WORK/data/{{ inventory_hostname }}\"}"
    echo "  tasks:"
    for r in 1 2 3 4; do
        echo "    - command: echo round $r"
        echo "    - copy: {content: \"round $r\\n\", dest: \"{{ base }}-c$r\"}"
        echo "    - file: {path: \"{{ base }}-d$r\", state: directory, mode: \"0755\"}"
        echo "    - stat: {path: \"{{ base }}-c$r\"}"
        echo "    - template: {src: \"$PLAYDIR/t.j2\", dest: \"{{ base }}-t$r\"}"
    done
} >"$PLAYDIR/play.yml"
PY=/usr/bin/python3
for mode in local skiff ssh; do
    inv="$WORK/inventory-$mode.ini"
    {
        echo "[all]"
        for i in $(seq "$HOSTS"); do
            idx=$((i - 1))
            case $mode in
                local) echo "host$i ansible_connection=local" ;;
                skiff) echo "host$i ansible_host=127.0.0.1 ansible_port=${SKIFF_PORTS[$idx]} ansible_connection=skiff" ;;
                ssh) echo "host$i ansible_host=127.0.0.1 ansible_port=${SSH_PORTS[$idx]} ansible_connection=ssh ansible_user=root" ;;
            esac
        done
        echo
        echo "[all:vars]"
        echo "ansible_python_interpreter=$PY"
        echo "skiff_key_file=$WORK/key"
        echo "skiff_known_servers=$WORK/known_servers"
        echo "ansible_ssh_private_key_file=$SSHDIR/client_key"
    } >"$inv"
    cat >"$WORK/ansible-$mode.cfg" <<EOF
[defaults]
forks = $HOSTS
host_key_checking = False
retry_files_enabled = False
interpreter_python = $PY
connection_plugins = $REPO/clients/ansible/connection_plugins
local_tmp = $WORK/ansible-local-tmp
deprecation_warnings = False
[connection]
pipelining = True
[ssh_connection]
pipelining = True
ssh_args = -F /dev/null -o ControlMaster=auto -o ControlPersist=300s -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
control_path_dir = $WORK/cp
EOF
done

# play MODE RUN_ID: wall seconds of one ansible-playbook run (fails loudly).
play() {
    local mode=$1 t0 t1
    t0=$(now)
    if ! ANSIBLE_CONFIG="$WORK/ansible-$mode.cfg" ANSIBLE_HOME="$WORK/ansible-home" \
        "$VENV/bin/ansible-playbook" -i "$WORK/inventory-$mode.ini" -e "run_id=$2" \
        "$PLAYDIR/play.yml" >"$WORK/last-$mode.log" 2>&1; then
        echo "ansible.sh: the $mode run failed:" >&2
        tail -30 "$WORK/last-$mode.log" >&2
        exit 1
    fi
    t1=$(now)
    grep -q "failed=0" "$WORK/last-$mode.log"
    python3 -c "print(f'{$t1 - $t0:.2f}')"
}
# Closes every ControlMaster Ansible left (its sockets are in cp/).
close_masters() {
    local s
    for s in "$WORK"/cp/*; do
        [ -S "$s" ] || continue
        ssh -F /dev/null -o ControlPath="$s" -O exit 127.0.0.1 >/dev/null 2>&1 || true
    done
}

log "warming up (one untimed run per mode)"
for mode in local skiff ssh; do play "$mode" 0 >/dev/null; done

declare -A COLD WARM
for r in $(seq "$RUNS"); do
    for mode in local skiff ssh; do
        [ "$mode" = ssh ] && close_masters
        c=$(play "$mode" "c$r")
        w=$(play "$mode" "w$r")
        COLD[$mode]+="$c "
        WARM[$mode]+="$w "
        log "round $r $mode: cold ${c}s warm ${w}s"
    done
done

# ------------------------------------------------ Python client throughput
log "put/get throughput: Python client vs Rust client ($SIZE_MIB MiB, TLS)"
BIG="$WORK/big.bin"
head -c $((SIZE_MIB << 20)) /dev/urandom >"$BIG"
T1="127.0.0.1:${SKIFF_PORTS[0]}"
export SKIFF_KEY_FILE="$WORK/key" SKIFF_KNOWN_SERVERS="$WORK/known_servers"
PYCLI="$REPO/clients/python/skiff_client.py"
secs() { local t0 t1; t0=$(now); "$@" >/dev/null; t1=$(now); python3 -c "print(f'{$t1 - $t0:.3f}')"; }
THR=()
for i in 1 2; do
    rm -f "$WORK/data/py-put.bin" "$WORK/data/rs-put.bin" "$WORK/py-got.bin" "$WORK/rs-got.bin"
    THR+=("py_put $(secs python3 "$PYCLI" put "$T1" "$BIG" "$WORK/data/py-put.bin")")
    THR+=("rs_put $(secs "$SKIFF" put "$T1" "$BIG" "$WORK/data/rs-put.bin")")
    THR+=("py_get $(secs python3 "$PYCLI" get "$T1" "$BIG" "$WORK/py-got.bin")")
    THR+=("rs_get $(secs "$SKIFF" get "$T1" "$BIG" "$WORK/rs-got.bin")")
    cmp -s "$BIG" "$WORK/py-got.bin" && cmp -s "$BIG" "$WORK/data/py-put.bin" || { echo "ansible.sh: python copies differ" >&2; exit 1; }
done
PY_HASH=$(python3 -c "import sys; sys.path.insert(0, '$REPO/clients/python'); import skiff_client; print(skiff_client.hash_name())")

# ------------------------------------------------------------------ report
log "writing $OUT"
SECTION=$(python3 - "$RUNS" "$HOSTS" "$SIZE_MIB" "$PY_HASH" <<PYEOF
import statistics, sys
runs, hosts, size, pyhash = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
cold = {m: [float(x) for x in v.split()] for m, v in [("local", "${COLD[local]}"), ("skiff", "${COLD[skiff]}"), ("ssh", "${COLD[ssh]}")]}
warm = {m: [float(x) for x in v.split()] for m, v in [("local", "${WARM[local]}"), ("skiff", "${WARM[skiff]}"), ("ssh", "${WARM[ssh]}")]}
def spread(xs): return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"
print("| transport | cold run, s | warm run, s | overhead over local, cold, s | overhead over local, warm, s |")
print("| --- | --- | --- | --- | --- |")
for m in ("local", "skiff", "ssh"):
    if m == "local":
        oc = ow = "-"
    else:
        # Paired by round: each mode's run minus local's run of the same round.
        oc = spread([a - b for a, b in zip(cold[m], cold["local"])])
        ow = spread([a - b for a, b in zip(warm[m], warm["local"])])
    print(f"| {m} | {spread(cold[m])} | {spread(warm[m])} | {oc} | {ow} |")
print()
thr = {}
for item in """$(printf '%s\n' "${THR[@]}")""".splitlines():
    name, s = item.split()
    thr.setdefault(name, []).append(size / float(s))
print(f"| client | put MB/s | get MB/s |")
print("| --- | --- | --- |")
print(f"| skiff_client.py (Python, {pyhash}) | {max(thr['py_put']):.0f} | {max(thr['py_get']):.0f} |")
print(f"| skiff (Rust, blake3) | {max(thr['rs_put']):.0f} | {max(thr['rs_get']):.0f} |")
PYEOF
)
START='<!-- bench/ansible.sh: start -->'
END='<!-- bench/ansible.sh: end -->'
{
    echo "$START"
    echo
    echo "## Ansible over skiff, ssh and local"
    echo
    echo "Written by \`bench/ansible.sh${ARGS_GIVEN:+ $ARGS_GIVEN}\`: $(date -u '+%Y-%m-%d %H:%M UTC'), skiff $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown) ($BUILD_KIND), $ANSIBLE_VERSION, load average at the end $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs."
    echo
    echo "One playbook of 20 small tasks (4 x command, copy, file, stat, template; no fact gathering) over $HOSTS hosts, forks $HOSTS, pipelining on, each host its own server process on 127.0.0.1: $HOSTS \`skiff serve --root /\`, one sshd on $HOSTS ports (ssh with ControlMaster=auto, ControlPersist=300s), or \`ansible_connection=local\`. $RUNS rounds, each running every mode cold then warm; figures are the median with min-max; overheads are paired per round (that round's run minus local's). Cold: ssh's masters were closed before the run; warm: they were left up by the cold run."
    echo
    echo "$SECTION" | sed -n '1,/^$/p'
    echo "Python client put/get of a $SIZE_MIB MiB file over TLS to one of those servers (best of 2, the whole command including interpreter start, verified; the Python client uses $PY_HASH because the \`blake3\` module is not installed here):"
    echo
    echo "$SECTION" | sed -n '/^| client/,$p'
    echo
    echo "$END"
} >"$WORK/section.md"
if [ -f "$OUT" ] && grep -qF "$START" "$OUT"; then
    python3 - "$OUT" "$WORK/section.md" "$START" "$END" <<'PYEOF'
import sys
path, section, start, end = sys.argv[1:5]
text = open(path).read()
a = text.index(start)
b = text.index(end, a) + len(end)
new = open(section).read().rstrip("\n")
open(path, "w").write(text[:a] + new + text[b:])
PYEOF
else
    { echo; cat "$WORK/section.md"; } >>"$OUT"
fi
log "done"
