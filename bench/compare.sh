#!/usr/bin/env bash
# skiff beside the tools people would otherwise use, in one run on one
# machine, all on loopback. Writes docs/BENCHMARKS.md.
#
#   bench/compare.sh [--quick] [--bulk MIB] [--no-install] [--no-build]
#                    [--out FILE]
#
# --quick      small sizes and short durations, for iterating (about 2 min)
# --bulk MIB   size of the bulk file (default 2048, --quick 256); also adds
#              bench/tree.sh's rows for one file of that size on tmpfs
# --no-install do not apt-get anything (fail if a tool is missing)
# --no-build   use target/release/skiff as it is
# --out FILE   where to write the report (default docs/BENCHMARKS.md)
#
# Everything it starts (sshd, rsync daemon, redis-server, iperf3, socat,
# the Python echo server, skiff serve) is started by PID and stopped on
# exit; its temporary directory, with the large files, is removed.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
INSTALL=1
BUILD=1
BULK_MIB=""
OUT="$REPO/docs/BENCHMARKS.md"
ARGS_GIVEN="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --bulk) BULK_MIB="$2"; shift ;;
        --no-install) INSTALL=0 ;;
        --no-build) BUILD=0 ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

if [ "$QUICK" = 1 ]; then
    BIG=$((256 << 20))          # bulk file
    OUTPUT=$((256 << 20))       # exec output volume
    SECS=3                      # ping / iperf3 duration
    EXEC_RUNS=20
    SSH_RUNS=5
    REDIS_N=50000
else
    BIG=$((2 << 30))
    OUTPUT=$((1 << 30))
    SECS=10
    EXEC_RUNS=50
    SSH_RUNS=10
    REDIS_N=200000
fi
[ -z "$BULK_MIB" ] || BIG=$((BULK_MIB << 20))
CONNS_LIST="50 16"

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- install
need_tools() {
    local missing=()
    for t in socat iperf3 sshd rsync redis-server redis-benchmark hyperfine python3 ssh scp sftp; do
        command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || missing+=("$t")
    done
    echo "${missing[@]:-}"
}
if [ -n "$(need_tools)" ]; then
    if [ "$INSTALL" = 1 ]; then
        log "installing: $(need_tools)"
        export DEBIAN_FRONTEND=noninteractive
        SUDO=""
        [ "$(id -u)" = 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq socat iperf3 openssh-server openssh-client rsync \
            redis-server redis-tools hyperfine python3 >/dev/null
    fi
    if [ -n "$(need_tools)" ]; then
        echo "compare.sh: missing tools: $(need_tools)" >&2
        exit 1
    fi
fi
SSHD=$(command -v sshd || echo /usr/sbin/sshd)

# ------------------------------------------------------------------ build
SKIFF="$REPO/target/release/skiff"
if [ "$BUILD" = 1 ]; then
    log "building skiff (release)"
    (cd "$REPO" && cargo build --release -q -p skiff)
fi
[ -x "$SKIFF" ] || { echo "compare.sh: $SKIFF not built" >&2; exit 1; }

# --------------------------------------------------------- work dir, trap
WORK=$(mktemp -d /var/tmp/skiff-bench.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && wait "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
# Waits until something listens on 127.0.0.1:$1 (at most 20 s).
wait_port() {
    local i
    for i in $(seq 200); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "compare.sh: nothing listens on port $1" >&2
    return 1
}
now() { date +%s.%N; }
# rate BYTES SECONDS -> GB/s (10^9 bytes per second)
rate() { python3 -c "print(f'{$1/$2/1e9:.3f}')"; }
# ratio A B -> "A/B" as "1.23x", or "n/a"
ratio() {
    python3 -c "
a, b = '$1', '$2'
try:
    a, b = float(a), float(b)
    print(f'{a/b:.2f}x' if b > 0 else 'n/a')
except ValueError:
    print('n/a')"
}
# json FILE EXPR: evaluates EXPR on the parsed JSON `d`.
json() { python3 -c "import json,sys; d=json.load(open('$1')); print($2)"; }
# Runs a command in the background, records its PID.
start_bg() {
    "$@" &
    PIDS+=("$!")
}
stop_pid() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
# timed CMD...: wall seconds of CMD (its stdout is discarded).
timed() {
    local t0 t1
    t0=$(now)
    "$@" >/dev/null
    t1=$(now)
    python3 -c "print($t1 - $t0)"
}

# CPU seconds (user + system) a process has used so far.
proc_cpu() {
    python3 -c "
import os
f = open('/proc/$1/stat').read().rsplit(')', 1)[1].split()
print((int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK'))"
}
# cpu_run FILE CMD...: runs CMD (stdout passes through), writes the CPU
# seconds it and its children used to FILE.
cpu_run() {
    local f=$1
    shift
    python3 -c "
import resource, subprocess, sys
rc = subprocess.call(sys.argv[2:])
r = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], 'w').write(str(r.ru_utime + r.ru_stime))
sys.exit(rc)" "$f" "$@"
}
# us_per REQUESTS SERVER_CPU_BEFORE SERVER_CPU_AFTER CLIENT_CPU_FILE
us_per() {
    python3 -c "
n, a, b, c = float('$1'), float('$2'), float('$3'), float(open('$4').read())
print(f'{(b - a) * 1e6 / n:.1f} / {c * 1e6 / n:.1f}' if n > 0 else 'n/a')"
}

RESULTS="$WORK/results"
mkdir -p "$RESULTS"
# Report rows collected per table: "name|value|ratio..."
declare -a T_WIRE T_BULK T_EXEC T_PING
NA="not available"

# ------------------------------------------------------------ skiff serve
log "starting skiff serve"
export SKIFF_HOME="$WORK/home"
mkdir -p "$SKIFF_HOME" "$WORK/root"
SKIFF_OUT="$WORK/skiff-serve.out"
HOME="$SKIFF_HOME" start_bg "$SKIFF" serve --root "$WORK/root" \
    --listen tcp://127.0.0.1:0 --listen tcp+plain://127.0.0.1:0 --listen "unix://$WORK/skiff.sock" \
    >"$SKIFF_OUT" 2>"$WORK/skiff-serve.err"
SKIFF_PID=${PIDS[-1]}
for i in $(seq 200); do
    [ "$(grep -c '^listening on' "$SKIFF_OUT" 2>/dev/null)" -ge 3 ] && break
    sleep 0.1
done
SKIFF_TLS=$(grep -m1 '^listening on tcp://' "$SKIFF_OUT" | sed 's/^listening on //')
SKIFF_UNIX=$(grep -m1 '^listening on unix://' "$SKIFF_OUT" | sed 's/^listening on //')
SKIFF_PLAIN=$(grep -m1 '^listening on tcp+plain://' "$SKIFF_OUT" | sed 's/^listening on //')
[ -n "$SKIFF_TLS" ] || { echo "compare.sh: skiff serve did not start:"; cat "$SKIFF_OUT" "$WORK/skiff-serve.err"; exit 1; } >&2
sk() { HOME="$SKIFF_HOME" "$SKIFF" "$@"; }
# Which services this build has (a subcommand not built yet says so).
has_exec=0; has_files=0
if sk exec -n "$SKIFF_TLS" -- true </dev/null >/dev/null 2>"$WORK/probe.err"; then has_exec=1; fi
echo probe >"$WORK/probe.txt"
if sk put "$SKIFF_TLS" "$WORK/probe.txt" probe.txt >/dev/null 2>"$WORK/probe-files.err"; then has_files=1; fi
FILES_WHY=$(head -c 300 "$WORK/probe-files.err" | head -n 1)
log "skiff at $SKIFF_TLS and $SKIFF_UNIX (exec: $has_exec, files: $has_files)"

# ------------------------------------------------------------------- sshd
log "starting sshd"
SSHDIR="$WORK/ssh"
SSH_PORT=$(free_port)
private_sshd_config "$SSHDIR" "$SSH_PORT"
echo "Subsystem sftp internal-sftp" >>"$SSHDIR/sshd_config"
start_bg "$SSHD" -D -e -f "$SSHDIR/sshd_config" 2>"$WORK/sshd.log"
wait_port "$SSH_PORT"
SSH_OPTS=(-F /dev/null -i "$SSHDIR/client_key" -o StrictHostKeyChecking=no
    -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR)
ssh_cmd() { ssh "${SSH_OPTS[@]}" -p "$SSH_PORT" 127.0.0.1 "$@"; }

# ----------------------------------------------------------- the big file
log "creating a $((BIG >> 20)) MiB test file"
BIGFILE="$WORK/big.bin"
head -c "$BIG" /dev/urandom >"$BIGFILE"

# ============================================================ wire limits
log "iperf3"
IPERF_PORT=$(free_port)
start_bg iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT" >"$WORK/iperf3-server.log" 2>&1
IPERF_PID=${PIDS[-1]}
wait_port "$IPERF_PORT"
iperf3 -c 127.0.0.1 -p "$IPERF_PORT" -t "$SECS" -J >"$RESULTS/iperf.json"
IPERF=$(json "$RESULTS/iperf.json" "f\"{d['end']['sum_received']['bits_per_second']/8/1e9:.3f}\"")
stop_pid "$IPERF_PID"

log "socat"
# socat_to DEST: moves BIGFILE over loopback TCP into DEST; prints seconds
# (for a file, the fsync that makes it durable is included). No wait_port
# here: socat's listener would take that probe as the transfer; the sender
# retries until the listener is up instead.
socat_to() {
    local port dest=$1 t0 t1 pid i
    port=$(free_port)
    socat -b131072 -u "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr" "CREATE:$dest" &
    pid=$!
    PIDS+=("$pid")
    t0=$(now)
    for i in $(seq 100); do
        socat -b131072 -u "OPEN:$BIGFILE" "TCP:127.0.0.1:$port" 2>/dev/null && break
        sleep 0.05
        t0=$(now)
    done
    wait "$pid"
    [ "$dest" = /dev/null ] || sync "$dest"
    t1=$(now)
    python3 -c "print($t1 - $t0)"
}
S=$(socat_to /dev/null); SOCAT_NULL=$(rate "$BIG" "$S")
S=$(socat_to "$WORK/socat.out"); SOCAT_FILE=$(rate "$BIG" "$S")
rm -f "$WORK/socat.out"
T_WIRE+=("iperf3, one stream|$IPERF GB/s")
T_WIRE+=("socat 128 KiB blocks -> /dev/null|$SOCAT_NULL GB/s")
T_WIRE+=("socat 128 KiB blocks -> file (+fsync)|$SOCAT_FILE GB/s")

# =================================================================== bulk
log "bulk transfers"
RSYNC_PORT=$(free_port)
mkdir -p "$WORK/rsync"
cat >"$WORK/rsyncd.conf" <<EOF
use chroot = no
pid file = $WORK/rsyncd.pid
[bench]
    path = $WORK/rsync
    read only = no
    uid = $(id -u)
    gid = $(id -g)
EOF
start_bg rsync --daemon --no-detach --config="$WORK/rsyncd.conf" --port="$RSYNC_PORT" --address=127.0.0.1
wait_port "$RSYNC_PORT"

declare -A BULK
S=$(timed scp -q "${SSH_OPTS[@]}" -P "$SSH_PORT" "$BIGFILE" "127.0.0.1:$WORK/scp.up"); BULK[scp_put]=$(rate "$BIG" "$S")
S=$(timed scp -q "${SSH_OPTS[@]}" -P "$SSH_PORT" "127.0.0.1:$WORK/scp.up" "$WORK/scp.down"); BULK[scp_get]=$(rate "$BIG" "$S")
rm -f "$WORK/scp.up" "$WORK/scp.down"
printf 'put %s %s\n' "$BIGFILE" "$WORK/sftp.up" >"$WORK/sftp.put"
printf 'get %s %s\n' "$WORK/sftp.up" "$WORK/sftp.down" >"$WORK/sftp.get"
S=$(timed sftp -q "${SSH_OPTS[@]}" -P "$SSH_PORT" -b "$WORK/sftp.put" 127.0.0.1); BULK[sftp_put]=$(rate "$BIG" "$S")
S=$(timed sftp -q "${SSH_OPTS[@]}" -P "$SSH_PORT" -b "$WORK/sftp.get" 127.0.0.1); BULK[sftp_get]=$(rate "$BIG" "$S")
rm -f "$WORK/sftp.up" "$WORK/sftp.down"
S=$(timed rsync -q "$BIGFILE" "rsync://127.0.0.1:$RSYNC_PORT/bench/big.bin"); BULK[rsync_put]=$(rate "$BIG" "$S")
S=$(timed rsync -q "rsync://127.0.0.1:$RSYNC_PORT/bench/big.bin" "$WORK/rsync.down"); BULK[rsync_get]=$(rate "$BIG" "$S")
rm -f "$WORK/rsync/big.bin" "$WORK/rsync.down"

BULK[skiff_put]=$NA; BULK[skiff_get]=$NA; BULK[skiff_put_unix]=$NA; BULK[skiff_get_unix]=$NA
RSS_NOTE=""
if [ "$has_files" = 1 ]; then
    S=$(timed sk put "$SKIFF_TLS" "$BIGFILE" big.bin); BULK[skiff_put]=$(rate "$BIG" "$S")
    S=$(timed sk get "$SKIFF_TLS" big.bin "$WORK/skiff.down"); BULK[skiff_get]=$(rate "$BIG" "$S")
    cmp -s "$BIGFILE" "$WORK/skiff.down" || log "WARNING: skiff get returned different bytes"
    rm -f "$WORK/skiff.down" "$WORK/root/big.bin"
    if [ -n "$SKIFF_UNIX" ]; then
        S=$(timed sk put "$SKIFF_UNIX" "$BIGFILE" big.bin); BULK[skiff_put_unix]=$(rate "$BIG" "$S")
        S=$(timed sk get "$SKIFF_UNIX" big.bin "$WORK/skiff.down"); BULK[skiff_get_unix]=$(rate "$BIG" "$S")
        rm -f "$WORK/skiff.down" "$WORK/root/big.bin"
    fi
    if sk bench put "$SKIFF_TLS" --size "$BIG" --json >"$RESULTS/bput.json" 2>/dev/null; then
        RSS_NOTE="client peak RSS: put $(json "$RESULTS/bput.json" "d.get('client_peak_rss_mib','?')") MiB"
        if sk bench get "$SKIFF_TLS" --size "$BIG" --json >"$RESULTS/bget.json" 2>/dev/null; then
            RSS_NOTE="$RSS_NOTE, get $(json "$RESULTS/bget.json" "d.get('client_peak_rss_mib','?')") MiB"
        fi
    fi
    SRV_RSS=$(awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$SKIFF_PID/status")
    RSS_NOTE="${RSS_NOTE:+$RSS_NOTE; }server peak RSS (whole run so far): $SRV_RSS MiB"
fi
for dir in put get; do
    T_BULK+=("skiff $dir (TLS)|${BULK[skiff_$dir]}|$(ratio "${BULK[skiff_$dir]}" "${BULK[scp_$dir]}")|$(ratio "${BULK[skiff_$dir]}" "${BULK[sftp_$dir]}")|$(ratio "${BULK[skiff_$dir]}" "${BULK[rsync_$dir]}")|$(ratio "${BULK[skiff_$dir]}" "$SOCAT_FILE")")
    T_BULK+=("skiff $dir (unix://)|${BULK[skiff_${dir}_unix]}|$(ratio "${BULK[skiff_${dir}_unix]}" "${BULK[scp_$dir]}")|$(ratio "${BULK[skiff_${dir}_unix]}" "${BULK[sftp_$dir]}")|$(ratio "${BULK[skiff_${dir}_unix]}" "${BULK[rsync_$dir]}")|$(ratio "${BULK[skiff_${dir}_unix]}" "$SOCAT_FILE")")
    T_BULK+=("scp $dir|${BULK[scp_$dir]}||||")
    T_BULK+=("sftp $dir|${BULK[sftp_$dir]}||||")
    T_BULK+=("rsync daemon $dir|${BULK[rsync_$dir]}||||")
done
rm -f "$BIGFILE"

# =================================================================== exec
log "exec latency"
CTL="$WORK/ssh-ctl"
ssh "${SSH_OPTS[@]}" -p "$SSH_PORT" -o ControlMaster=yes -o ControlPath="$CTL" -N 127.0.0.1 &
PIDS+=("$!")
for i in $(seq 100); do [ -S "$CTL" ] && break; sleep 0.1; done
# hyperfine_ms NAME RUNS CMD: median milliseconds.
hyperfine_ms() {
    local name=$1 runs=$2
    shift 2
    hyperfine -N --style none --warmup 2 --runs "$runs" --export-json "$RESULTS/$name.json" "$*" >/dev/null 2>&1 || { echo "$NA"; return; }
    json "$RESULTS/$name.json" "f\"{d['results'][0]['median']*1000:.2f}\""
}
SSH_NEW=$(hyperfine_ms ssh_new "$SSH_RUNS" ssh "${SSH_OPTS[@]}" -p "$SSH_PORT" 127.0.0.1 true)
SSH_MUX=$(hyperfine_ms ssh_mux "$EXEC_RUNS" ssh "${SSH_OPTS[@]}" -o ControlPath="$CTL" -p "$SSH_PORT" 127.0.0.1 true)
SKIFF_EXEC=$NA; SKIFF_EXEC_P99=""
if [ "$has_exec" = 1 ]; then
    SKIFF_EXEC=$(HOME="$SKIFF_HOME" hyperfine_ms skiff_exec "$EXEC_RUNS" "$SKIFF" exec -n "$SKIFF_TLS" -- true)
    if sk bench exec "$SKIFF_TLS" -n "$EXEC_RUNS" --json >"$RESULTS/bexec.json" 2>/dev/null; then
        SKIFF_EXEC_P99=$(json "$RESULTS/bexec.json" "f\"in-process p50 {d['latency']['p50_ms']:.2f} ms, p99 {d['latency']['p99_ms']:.2f} ms\"")
    fi
fi
# "lower is better": the ratio is other/skiff (how many times faster skiff is).
T_EXEC+=("skiff exec -- true (new connection)|$SKIFF_EXEC ms|$(ratio "$SSH_NEW" "$SKIFF_EXEC")|$(ratio "$SSH_MUX" "$SKIFF_EXEC")")
T_EXEC+=("ssh true (new connection)|$SSH_NEW ms||")
T_EXEC+=("ssh true (open ControlMaster)|$SSH_MUX ms||")

log "exec output streaming"
S=$(timed sh -c "ssh ${SSH_OPTS[*]} -p $SSH_PORT 127.0.0.1 'head -c $OUTPUT /dev/zero' >/dev/null"); OUT_SSH=$(rate "$OUTPUT" "$S")
S=$(timed sh -c "ssh ${SSH_OPTS[*]} -o ControlPath=$CTL -p $SSH_PORT 127.0.0.1 'head -c $OUTPUT /dev/zero' >/dev/null"); OUT_SSH_MUX=$(rate "$OUTPUT" "$S")
OUT_SKIFF=$NA
if [ "$has_exec" = 1 ]; then
    S=$(timed sh -c "HOME='$SKIFF_HOME' '$SKIFF' exec -n '$SKIFF_TLS' -- head -c $OUTPUT /dev/zero >/dev/null"); OUT_SKIFF=$(rate "$OUTPUT" "$S")
fi
T_EXEC+=("$((OUTPUT >> 20)) MiB of output: skiff exec|$OUT_SKIFF GB/s|$(ratio "$OUT_SKIFF" "$OUT_SSH")|$(ratio "$OUT_SKIFF" "$OUT_SSH_MUX")")
T_EXEC+=("$((OUTPUT >> 20)) MiB of output: ssh|$OUT_SSH GB/s||")
T_EXEC+=("$((OUTPUT >> 20)) MiB of output: ssh (ControlMaster)|$OUT_SSH_MUX GB/s||")

# =================================================================== ping
log "small requests"
REDIS_PORT=$(free_port)
start_bg redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$WORK" --logfile "$WORK/redis.log" --daemonize no
wait_port "$REDIS_PORT"
PY_OUT="$WORK/py-echo.out"
start_bg python3 "$REPO/bench/py_echo_server.py" --port 0 >"$PY_OUT"
for i in $(seq 200); do grep -q '^listening' "$PY_OUT" && break; sleep 0.1; done
PY_PORT=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$PY_OUT")

PY_PID=${PIDS[-1]}
REDIS_PID=${PIDS[-2]}
# Each run also records CPU microseconds per request, server / client: on a
# busy machine throughput swings with the scheduler, CPU per request much less.
skiff_ping() { # CONNS PIPELINE [URL] -> json file; sets SK, SKLAT, SKCPU
    local url=${3:-$SKIFF_TLS}
    local f="$RESULTS/ping_$1_$2_${url%%:*}.json" c0 c1
    c0=$(proc_cpu "$SKIFF_PID")
    cpu_run "$RESULTS/cpu" env HOME="$SKIFF_HOME" "$SKIFF" bench ping "$url" -c "$1" -d "$SECS" --pipeline "$2" --json >"$f"
    c1=$(proc_cpu "$SKIFF_PID")
    SK=$(json "$f" "f\"{d['requests_per_sec']:.0f}\"")
    SKLAT=$(json "$f" "f\"{d['latency']['p50_ms']:.3f} / {d['latency']['p99_ms']:.3f} / {d['latency']['p999_ms']:.3f}\"")
    SKCPU=$(us_per "$(json "$f" "d['requests']")" "$c0" "$c1" "$RESULTS/cpu")
}
redis_ping() { # CONNS PIPELINE; sets RD, RDCPU
    local c0 c1 n=$REDIS_N
    c0=$(proc_cpu "$REDIS_PID")
    RD=$(cpu_run "$RESULTS/cpu" redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$1" -P "$2" -n "$n" -t ping_mbulk --csv 2>/dev/null \
        | python3 -c "
import csv, sys
rows = [r for r in csv.reader(sys.stdin) if r and r[0].startswith('PING')]
print(max(float(r[1]) for r in rows) if rows else 'n/a')")
    c1=$(proc_cpu "$REDIS_PID")
    RDCPU=$(us_per "$n" "$c0" "$c1" "$RESULTS/cpu")
}
py_ping() { # CONNS; sets PY, PYLAT, PYCPU
    local f="$RESULTS/py_$1.json" c0 c1
    c0=$(proc_cpu "$PY_PID")
    cpu_run "$RESULTS/cpu" python3 "$REPO/bench/py_echo_client.py" --port "$PY_PORT" -c "$1" -d "$SECS" --json >"$f"
    c1=$(proc_cpu "$PY_PID")
    PY=$(json "$f" "f\"{d['requests_per_sec']:.0f}\"")
    PYLAT=$(json "$f" "f\"{d['latency']['p50_ms']:.3f} / {d['latency']['p99_ms']:.3f} / {d['latency']['p999_ms']:.3f}\"")
    PYCPU=$(us_per "$(json "$f" "d['requests']")" "$c0" "$c1" "$RESULTS/cpu")
}
for c in $CONNS_LIST; do
    skiff_ping "$c" 1
    redis_ping "$c" 1
    py_ping "$c"
    T_PING+=("skiff bench ping -c $c (TLS, authenticated)|$SK|$SKLAT|$SKCPU|$(ratio "$SK" "$RD")|$(ratio "$SK" "$PY")")
    T_PING+=("redis-benchmark PING -c $c|$RD||$RDCPU||")
    T_PING+=("Python ThreadingTCPServer echo -c $c|$PY|$PYLAT|$PYCPU||")
    if [ "$c" = 50 ]; then RD50=$RD; PY50=$PY; fi
done
# Without encryption, as redis and the Python server run: the same
# authenticated sessions over plain TCP and over a Unix socket, against
# the redis and Python figures above at 50 connections.
for url in "$SKIFF_PLAIN" "$SKIFF_UNIX"; do
    [ -n "$url" ] || continue
    skiff_ping 50 1 "$url"
    T_PING+=("skiff bench ping -c 50 (${url%%:*}, authenticated)|$SK|$SKLAT|$SKCPU|$(ratio "$SK" "${RD50:-}")|$(ratio "$SK" "${PY50:-}")")
done
skiff_ping 50 16
redis_ping 50 16
T_PING+=("skiff bench ping -c 50 --pipeline 16|$SK|$SKLAT|$SKCPU|$(ratio "$SK" "$RD")|")
T_PING+=("redis-benchmark PING -c 50 -P 16|$RD||$RDCPU||")

# ============================================== small files, latency
log "small files and the delay relay (bench/tree.sh)"
TREE_ARGS=(--no-build --out "$RESULTS/tree.md")
[ "$QUICK" = 1 ] && TREE_ARGS+=(--files 2000 --runs 1)
[ -z "$BULK_MIB" ] || TREE_ARGS+=(--bulk "$BULK_MIB")
"$REPO/bench/tree.sh" "${TREE_ARGS[@]}" || echo "bench/tree.sh failed" >"$RESULTS/tree.md"

# ================================================================= report
log "writing $OUT"
table() { # header-line, separator, rows...
    local h=$1 sep=$2
    shift 2
    echo "$h"
    echo "$sep"
    local r
    for r in "$@"; do echo "| ${r//|/ | } |"; done
    echo
}
NOTES=""
MARK='<!-- hand-written notes below: compare.sh keeps everything after this line -->'
if [ -f "$OUT" ] && grep -qF "$MARK" "$OUT"; then
    NOTES=$(sed -n "/$(printf '%s' "$MARK" | sed 's/[^a-zA-Z0-9 ]/./g')/,\$p" "$OUT" | tail -n +2)
fi
CPU=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
MODE=full
[ "$QUICK" = 1 ] && MODE="quick (--quick: smaller sizes, shorter runs)"
{
    echo "# skiff benchmarks"
    echo
    echo "Written by \`bench/compare.sh\`; do not edit the tables by hand."
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "- machine: $(nproc) CPUs, $CPU; kernel $(uname -r); $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo)"
    echo "- load average at the start: $LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine makes figures noisy; compare ratios within one run)"
    echo "- skiff: $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown), release build; mode: $MODE"
    echo "- reproduce: \`bench/compare.sh${ARGS_GIVEN:+ $ARGS_GIVEN}\` from the repository root"
    echo "- everything on loopback; ratios are skiff's figure divided by the other's (higher is better for skiff), except for latency, where they are the other's time divided by skiff's"
    echo
    echo "## The wire's limit"
    echo
    table "| what | throughput |" "| --- | --- |" "${T_WIRE[@]}"
    echo "## Bulk transfer ($((BIG >> 20)) MiB file)"
    echo
    echo "skiff put/get are verified (BLAKE3) and fsynced; scp/sftp use OpenSSH defaults; the rsync daemon is unencrypted. \"not available\": this build has no files service yet."
    echo
    table "| what | GB/s | vs scp | vs sftp | vs rsync daemon | vs socat -> file |" "| --- | --- | --- | --- | --- | --- |" "${T_BULK[@]}"
    [ -n "$RSS_NOTE" ] && { echo "Memory: $RSS_NOTE."; echo; }
    [ "$has_files" = 1 ] || { echo "skiff put/get not measured: the probe \`skiff put\` of a small file failed with: \`$FILES_WHY\`"; echo; }
    echo "## Remote execution"
    echo
    echo "Median wall time of the whole client command (hyperfine, $EXEC_RUNS runs for skiff and ssh over ControlMaster, $SSH_RUNS for new ssh connections). \"not available\": this build has no exec service yet."
    echo
    table "| what | figure | skiff ratio vs ssh (new) | skiff ratio vs ssh (ControlMaster) |" "| --- | --- | --- | --- |" "${T_EXEC[@]}"
    [ -n "$SKIFF_EXEC_P99" ] && { echo "\`skiff bench exec -n $EXEC_RUNS\`: $SKIFF_EXEC_P99."; echo; }
    echo "## Small requests (requests/s, ${SECS} s runs)"
    echo
    echo "skiff: \`skiff bench ping\` over TLS unless the row says \`tcp+plain\` or \`unix\`, authenticated sessions, empty ping bodies (the plain and unix rows are compared with the 50-connection redis and Python rows); redis-benchmark PING (PING_MBULK, $REDIS_N requests) against redis-server; Python: \`bench/py_echo_server.py\` (socketserver.ThreadingTCPServer, 4-byte length frames, upper-case echo) driven by \`bench/py_echo_client.py\`. Latency is p50 / p99 / p999 in ms."
    echo
    table "| what | requests/s | latency ms | CPU us/request (server / client) | skiff vs redis | skiff vs Python |" "| --- | --- | --- | --- | --- | --- |" "${T_PING[@]}"
    echo "## Small files and latency"
    echo
    cat "$RESULTS/tree.md"
    echo
    echo "$MARK"
    [ -n "$NOTES" ] && echo "$NOTES"
} >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
log "done: $OUT"
