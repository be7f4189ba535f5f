#!/usr/bin/env bash
# Peak memory of `skiff sync` on a large tree of empty files, beside an
# rsync daemon, on tmpfs (loopback). Prints a Markdown table on stdout.
#
#   bench/sync_rss.sh [--files N] [--no-build] [--before BIN] [--no-rsync]
#
# --files N    files in the tree (default 100000; the tree is 1000 files per
#              directory)
# --no-build   use $CARGO_TARGET_DIR/release/skiff (or target/) as it is
# --before BIN also run BIN (another skiff build) the same way
# --no-rsync   leave rsync out
#
# For each tool: the first copy (push into an empty destination), then the
# same run again (nothing changed). Wall time, the client's peak RSS
# (VmHWM, from /usr/bin/time) and the server's (skiff serve / rsync
# daemon: a fresh server per run, VmHWM from /proc/PID/status after the
# run; for the forking rsync daemon the largest of its processes). Beside
# each peak, "anon / file": the largest RssAnon and RssFile seen while
# sampling /proc every 20 ms (private memory, and pages of the binary and
# its libraries mapped from the page cache: those are shared and depend on
# how much of the code was touched, not on the tree).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
NFILES=100000
BUILD=1
BEFORE=
RSYNC=1
while [ $# -gt 0 ]; do
    case "$1" in
        --files) NFILES="$2"; shift ;;
        --no-build) BUILD=0 ;;
        --before) BEFORE="$2"; shift ;;
        --no-rsync) RSYNC=0 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "sync_rss.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
for t in rsync python3 /usr/bin/time; do
    command -v "$t" >/dev/null || { echo "sync_rss.sh: $t is needed" >&2; exit 2; }
done
if [ "$BUILD" = 1 ]; then
    (cd "$REPO" && cargo build --release --locked -q -p skiff)
fi
SKIFF="${CARGO_TARGET_DIR:-$REPO/target}/release/skiff"
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
log() { printf '[sync-rss %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

BASE=$(mktemp -d /dev/shm/skiff-sync-rss.XXXXXX)
PIDS=()
cleanup() {
    stop_pids
    rm -rf "$BASE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
wait_port() {
    local i
    for i in $(seq 200); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2; return 1
}
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# The largest VmHWM of PID and all its descendants (the rsync daemon
# forks a child per connection, which forks again for the receiver).
tree_hwm_kib() {
    local best=0 p h c
    for p in $1; do
        h=$(hwm_kib "$p"); [ "${h:-0}" -gt "$best" ] && best=$h
        for c in $(pgrep -P "$p" 2>/dev/null || true); do
            h=$(tree_hwm_kib "$c"); [ "${h:-0}" -gt "$best" ] && best=$h
        done
    done
    echo "$best"
}
mib() { python3 -c "print(f'{$1/1024:.1f}')"; }
# sample_split OUT PID...: until every PID is gone, the largest RssAnon and
# RssFile (KiB) of any of them and of their descendants, written to OUT as
# "anon file".
sample_split() {
    local out="$1"; shift
    local ba=0 bf=0 p a f alive
    while :; do
        alive=0
        for p in "$@" $(for r in "$@"; do pgrep -P "$r" 2>/dev/null; for c in $(pgrep -P "$r" 2>/dev/null); do pgrep -P "$c" 2>/dev/null; done; done); do
            read -r a f < <(awk '/^RssAnon/ {a=$2} /^RssFile/ {f=$2} END {print a+0, f+0}' "/proc/$p/status" 2>/dev/null || echo "0 0")
            [ "${a:-0}" -gt 0 ] && alive=1
            [ "${a:-0}" -gt "$ba" ] && ba=$a
            [ "${f:-0}" -gt "$bf" ] && bf=$f
        done
        echo "$ba $bf" >"$out"
        [ "$alive" = 1 ] || break
        sleep 0.02
    done
}
split() {
    local a f; read -r a f <"$1"
    if [ "$a" = 0 ]; then echo "too short to sample"; else echo "$(mib "$a") / $(mib "$f")"; fi
}

log "making $NFILES empty files"
python3 - "$BASE/src" "$NFILES" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:04d}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    open(os.path.join(d, f"f{i:07d}"), "wb").close()
EOF
mkdir -p "$BASE/home" "$BASE/skiff" "$BASE/rsyncd"
export HOME="$BASE/home"
ROWS=()

run_skiff() {
    local bin="$1" label="$2" what="$3" port pid t0 t1 client cpid s1 s2
    port=$(free_port)
    "$bin" serve --root "$BASE/skiff" --listen "tcp://127.0.0.1:$port" \
        --state-dir "$BASE/home/state" >"$BASE/serve.log" 2>&1 &
    pid=$!; PIDS+=("$pid")
    wait_port "$port"
    sample_split "$BASE/server.split" "$pid" & s1=$!
    t0=$(date +%s.%N)
    /usr/bin/time -f '%M' -o "$BASE/time.out" "$bin" sync -q -p "$port" "$BASE/src" "127.0.0.1:dst" >/dev/null &
    cpid=$!
    sample_split "$BASE/client.split" "$cpid" & s2=$!
    wait "$cpid"
    t1=$(date +%s.%N)
    client=$(tail -1 "$BASE/time.out")
    local server; server=$(hwm_kib "$pid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    wait "$s1" "$s2" 2>/dev/null || true
    log "$label, $what: client $(mib "$client") MiB, server $(mib "$server") MiB"
    ROWS+=("| $label | $what | $(python3 -c "print(round($t1-$t0,2))") s | $(mib "$client") MiB ($(split "$BASE/client.split")) | $(mib "$server") MiB ($(split "$BASE/server.split")) |")
}

run_rsync() {
    local what="$1" port pid t0 t1 client server
    port=$(free_port)
    cat >"$BASE/rsyncd.conf" <<EOF
use chroot = no
pid file = $BASE/rsyncd.pid
[bench]
    path = $BASE/rsyncd
    read only = no
    uid = root
    gid = root
EOF
    rm -f "$BASE/rsyncd.pid"
    rsync --daemon --no-detach --config="$BASE/rsyncd.conf" --port="$port" --address=127.0.0.1 &
    pid=$!; PIDS+=("$pid")
    wait_port "$port"
    # The daemon forks a child per connection; sample its peak while it runs.
    sample_split "$BASE/server.split" "$pid" & local s1=$!
    ( best=0; while kill -0 "$pid" 2>/dev/null; do
          h=$(tree_hwm_kib "$pid"); [ "$h" -gt "$best" ] && best=$h && echo "$best" >"$BASE/rsyncd.hwm"
          sleep 0.05
      done ) &
    local sampler=$!
    t0=$(date +%s.%N)
    /usr/bin/time -f '%M' -o "$BASE/time.out" rsync -a --delete "$BASE/src/" "rsync://127.0.0.1:$port/bench/" &
    local cpid=$!
    sample_split "$BASE/client.split" "$cpid" & local s2=$!
    wait "$cpid"
    t1=$(date +%s.%N)
    sleep 0.2
    client=$(tail -1 "$BASE/time.out")
    server=$(cat "$BASE/rsyncd.hwm" 2>/dev/null || echo 0)
    kill "$pid"; wait "$pid" 2>/dev/null || true
    wait "$sampler" "$s1" "$s2" 2>/dev/null || true
    ROWS+=("| rsync daemon | $what | $(python3 -c "print(round($t1-$t0,2))") s | $(mib "$client") MiB ($(split "$BASE/client.split")) | $(mib "$server") MiB ($(split "$BASE/server.split")) |")
}

log "skiff: first copy"; run_skiff "$SKIFF" "skiff sync" "first copy, $NFILES empty files"
log "skiff: no change"; run_skiff "$SKIFF" "skiff sync" "no change, $NFILES files"
if [ -n "$BEFORE" ]; then
    rm -rf "$BASE/skiff"; mkdir -p "$BASE/skiff"
    log "--before: first copy"; run_skiff "$BEFORE" "skiff --before" "first copy, $NFILES empty files"
    log "--before: no change"; run_skiff "$BEFORE" "skiff --before" "no change, $NFILES files"
fi
if [ "$RSYNC" = 1 ]; then
    # tmpfs has a limit on inodes: a third copy of a large tree may not fit.
    rm -rf "$BASE/skiff"
    log "rsync: first copy"; run_rsync "first copy, $NFILES empty files"
    log "rsync: no change"; run_rsync "no change, $NFILES files"
fi

echo "| tool | run | time | client peak RSS (anon / file) | server peak RSS (anon / file) |"
echo "| --- | --- | --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"
