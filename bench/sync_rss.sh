#!/usr/bin/env bash
# Peak memory of `skiff sync` on a large tree of empty files, beside an
# rsync daemon, on tmpfs (loopback). Prints a Markdown table on stdout.
#
#   bench/sync_rss.sh [--files N] [--no-build]
#
# --files N   files in the tree (default 100000; the tree is 1000 files per
#             directory)
# --no-build  use target/release/skiff as it is
#
# For each tool: the first copy (push into an empty destination), then the
# same run again (nothing changed). Wall time, the client's peak RSS
# (VmHWM, from /usr/bin/time) and the server's (skiff serve / rsync
# daemon: a fresh server per run, VmHWM from /proc/PID/status after the
# run; for the forking rsync daemon the largest of its processes).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
NFILES=100000
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --files) NFILES="$2"; shift ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
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
SKIFF="$REPO/target/release/skiff"
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
    local what="$1" port pid out t0 t1 client
    port=$(free_port)
    "$SKIFF" serve --root "$BASE/skiff" --listen "tcp://127.0.0.1:$port" \
        --state-dir "$BASE/home/state" >"$BASE/serve.log" 2>&1 &
    pid=$!; PIDS+=("$pid")
    wait_port "$port"
    t0=$(date +%s.%N)
    /usr/bin/time -f '%M' -o "$BASE/time.out" "$SKIFF" sync -q -p "$port" "$BASE/src" "127.0.0.1:dst" >/dev/null
    t1=$(date +%s.%N)
    client=$(tail -1 "$BASE/time.out")
    ROWS+=("| skiff sync | $what | $(python3 -c "print(round($t1-$t0,2))") s | $(mib "$client") MiB | $(mib "$(hwm_kib "$pid")") MiB |")
    kill "$pid"; wait "$pid" 2>/dev/null || true
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
    ( best=0; while kill -0 "$pid" 2>/dev/null; do
          h=$(tree_hwm_kib "$pid"); [ "$h" -gt "$best" ] && best=$h && echo "$best" >"$BASE/rsyncd.hwm"
          sleep 0.05
      done ) &
    local sampler=$!
    t0=$(date +%s.%N)
    /usr/bin/time -f '%M' -o "$BASE/time.out" rsync -a --delete "$BASE/src/" "rsync://127.0.0.1:$port/bench/"
    t1=$(date +%s.%N)
    sleep 0.2
    client=$(tail -1 "$BASE/time.out")
    server=$(cat "$BASE/rsyncd.hwm" 2>/dev/null || echo 0)
    kill "$pid"; wait "$pid" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    ROWS+=("| rsync daemon | $what | $(python3 -c "print(round($t1-$t0,2))") s | $(mib "$client") MiB | $(mib "$server") MiB |")
}

log "skiff: first copy"; run_skiff "first copy, $NFILES empty files"
log "skiff: no change"; run_skiff "no change, $NFILES files"
log "rsync: first copy"; run_rsync "first copy, $NFILES empty files"
log "rsync: no change"; run_rsync "no change, $NFILES files"

echo "| tool | run | time | client peak RSS | server peak RSS |"
echo "| --- | --- | --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"
