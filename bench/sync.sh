#!/usr/bin/env bash
# skiff sync beside rsync (to an rsync daemon, and over ssh) in one run, on
# tmpfs and on disk, all on loopback. Prints a Markdown table on stdout.
#
#   bench/sync.sh [--full] [--tree] [--no-build] [--fs tmpfs|disk|both] [--before BIN]
#
# --full      10,000 files and a 1 GiB file on tmpfs (default: 2,000 files
#             and a 256 MiB file; the disk always uses 64 MiB)
# --tree      only the tree of small files (first copy, no change, 1 %
#             modified), plus `skiff put -r` of the same tree for comparison
# --no-build  use the release binary as it is ($CARGO_TARGET_DIR or
#             target/, release/skiff)
# --fs        where the trees live (default both: /dev/shm and $TMPDIR)
# --before    also run BIN (another skiff build, e.g. of an earlier
#             commit): its own server (`BIN serve`, its own root and state)
#             and its client, into its own destination, and add its time
#             and the ratio BIN / skiff to the table
#
# Scenarios, each run by skiff and by both rsyncs into their own
# destination: first copy of a tree of small files (4 KiB each), the same
# run again (nothing changed), 1 % of the files modified, a large file
# with 10 scattered 1 MiB regions rewritten, and the same file with 1 MiB
# inserted in the middle, and a plain `cp` of that file as the floor under
# the last two (replacing a file writes a new copy). Wall time and bytes on the wire (skiff:
# `--json` bytes_sent + bytes_received; rsync: `--stats` totals).
#
# Everything it starts (skiff serve, rsync daemon, sshd) is started by PID
# and stopped on exit; its temporary directories are removed.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
FULL=0
TREE_ONLY=0
BUILD=1
BEFORE=
FSES="tmpfs disk"
while [ $# -gt 0 ]; do
    case "$1" in
        --full) FULL=1 ;;
        --tree) TREE_ONLY=1 ;;
        --no-build) BUILD=0 ;;
        --fs) FSES="$2"; [ "$FSES" = both ] && FSES="tmpfs disk"; shift ;;
        --before) BEFORE="$2"; shift ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "sync.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [ "$FULL" = 1 ]; then NFILES=10000; BIG_TMPFS=$((1 << 30)); else NFILES=2000; BIG_TMPFS=$((256 << 20)); fi
BIG_DISK=$((64 << 20))
NMOD=$((NFILES / 100))

log() { printf '[sync-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
for t in rsync python3 ssh; do
    command -v "$t" >/dev/null || { echo "sync.sh: $t is needed" >&2; exit 2; }
done
SSHD=$(command -v sshd || echo /usr/sbin/sshd)
[ -x "$SSHD" ] || { echo "sync.sh: sshd is needed (openssh-server)" >&2; exit 2; }

if [ "$BUILD" = 1 ]; then
    log "building skiff (release)"
    (cd "$REPO" && cargo build --release --locked -q -p skiff)
fi
SKIFF="${CARGO_TARGET_DIR:-$REPO/target}/release/skiff"

PIDS=()
DIRS=()
cleanup() {
    stop_pids
    for p in "${DIRS[@]:-}"; do [ -n "$p" ] && rm -rf "$p"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM
start_bg() { "$@" & PIDS+=("$!"); }
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
wait_port() {
    local i
    for i in $(seq 200); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2; return 1
}
now() { date +%s.%N; }

CTL=$(mktemp -d); DIRS+=("$CTL")
# The private sshd (never the user's ~/.ssh).
SSH_PORT=$(free_port)
private_sshd_config "$CTL/ssh" "$SSH_PORT"
start_bg "$SSHD" -D -e -f "$CTL/ssh/sshd_config" 2>"$CTL/sshd.log"
wait_port "$SSH_PORT"
RSH="ssh -F /dev/null -i $CTL/ssh/client_key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR -p $SSH_PORT"

ROWS=()
# rsync_bytes OUTPUT: total bytes sent + received from `rsync --stats`.
rsync_bytes() {
    python3 -c "
import re,sys
t=sys.stdin.read()
s=int(re.search(r'Total bytes sent: ([\d,]+)',t).group(1).replace(',',''))
r=int(re.search(r'Total bytes received: ([\d,]+)',t).group(1).replace(',',''))
print(s+r)"
}
skiff_bytes() { python3 -c "import json,sys; j=json.load(sys.stdin); print(j['bytes_sent']+j['bytes_received'])"; }

# measure FS SCENARIO: runs the three tools on $SRC into their destinations.
# Every timed run starts with nothing dirty in the page cache (`sync`):
# skiff makes what it received durable with `syncfs`, which would otherwise
# also wait for what the tool before it left unwritten.
measure() {
    local fs="$1" what="$2" t0 t1 out ts tr te bs br be
    sync; t0=$(now); out=$("$SKIFF" sync --json -p "$SKIFF_PORT" "$SRC" "127.0.0.1:dst" 2>/dev/null); t1=$(now)
    ts=$(python3 -c "print(round($t1-$t0,3))"); bs=$(skiff_bytes <<<"$out")
    sync; t0=$(now); out=$(rsync -a --delete --stats "$SRC/" "rsync://127.0.0.1:$RSYNC_PORT/bench/"); t1=$(now)
    tr=$(python3 -c "print(round($t1-$t0,3))"); br=$(rsync_bytes <<<"$out")
    sync; t0=$(now); out=$(rsync -a --delete --stats -e "$RSH" "$SRC/" "127.0.0.1:$ROOT/ssh/"); t1=$(now)
    te=$(python3 -c "print(round($t1-$t0,3))"); be=$(rsync_bytes <<<"$out")
    diff -r "$SRC" "$ROOT/skiff/dst" >/dev/null || { echo "skiff's copy differs after: $what" >&2; exit 1; }
    local r1 r2 extra=""
    r1=$(python3 -c "print(f'{$tr/max($ts,1e-6):.2f}x')"); r2=$(python3 -c "print(f'{$te/max($ts,1e-6):.2f}x')")
    if [ -n "$BEFORE" ]; then
        local tb bb
        sync; t0=$(now); out=$(HOME="$BASE/home-before" "$BEFORE" sync --json -p "$BEFORE_PORT" "$SRC" "127.0.0.1:dst" 2>/dev/null); t1=$(now)
        tb=$(python3 -c "print(round($t1-$t0,3))"); bb=$(skiff_bytes <<<"$out")
        diff -r "$SRC" "$ROOT/before/dst" >/dev/null || { echo "--before's copy differs after: $what" >&2; exit 1; }
        extra=" $tb s | $(python3 -c "print(f'{$tb/max($ts,1e-6):.2f}x')") | $bb |"
        log "$fs / $what: --before ${tb}s ${bb}B"
    fi
    ROWS+=("| $fs | $what | $ts s | $tr s | $te s | $r1 | $r2 | $bs | $br | $be |$extra")
    log "$fs / $what: skiff ${ts}s ${bs}B, rsync daemon ${tr}s ${br}B, rsync ssh ${te}s ${be}B"
}

# measure_put FS: `skiff put -r` of the tree (the first copy's yardstick),
# by skiff and by --before, each to its own server, into a new directory.
measure_put() {
    local fs="$1" t0 t1 ts extra=""
    sync; t0=$(now); "$SKIFF" put -r -q -p "$SKIFF_PORT" 127.0.0.1 "$SRC/tree" putr >/dev/null 2>&1; t1=$(now)
    ts=$(python3 -c "print(round($t1-$t0,3))")
    diff -r "$SRC/tree" "$ROOT/skiff/putr" >/dev/null || { echo "skiff put -r's copy differs" >&2; exit 1; }
    rm -rf "$ROOT/skiff/putr"
    if [ -n "$BEFORE" ]; then
        local tb
        sync; t0=$(now); HOME="$BASE/home-before" "$BEFORE" put -r -q -p "$BEFORE_PORT" 127.0.0.1 "$SRC/tree" putr >/dev/null 2>&1; t1=$(now)
        tb=$(python3 -c "print(round($t1-$t0,3))")
        rm -rf "$ROOT/before/putr"
        extra=" $tb s | $(python3 -c "print(f'{$tb/max($ts,1e-6):.2f}x')") | |"
    fi
    ROWS+=("| $fs | put -r (not sync), $NFILES x 4 KiB | $ts s | | | | | | | |$extra")
    log "$fs / put -r: skiff ${ts}s"
}

# measure_cp FS: a plain local copy of the large file on the same file
# system (`cp --reflink=never`, copy_file_range). A sync that replaces the
# file atomically writes a whole new copy, so this is the floor under the
# delta rows, for any tool: what rsync's figure leaves room for.
measure_cp() {
    local fs="$1" t0 t1 ts
    sync "$SRC/big.bin"
    t0=$(now); cp --reflink=never "$SRC/big.bin" "$BASE/cp-floor.bin"; t1=$(now)
    ts=$(python3 -c "print(round($t1-$t0,3))")
    rm -f "$BASE/cp-floor.bin"
    ROWS+=("| $fs | floor: \`cp --reflink=never\` of the $((BIG >> 20)) MiB file (not sync) | $ts s | | | | | | | |")
    log "$fs / cp floor: ${ts}s"
}

for fs in $FSES; do
    case "$fs" in
        tmpfs) BASE=$(mktemp -d /dev/shm/skiff-sync-bench.XXXXXX); BIG=$BIG_TMPFS ;;
        disk) BASE=$(mktemp -d "${TMPDIR:-/var/tmp}/skiff-sync-bench.XXXXXX"); BIG=$BIG_DISK ;;
        *) echo "sync.sh: --fs tmpfs|disk|both" >&2; exit 2 ;;
    esac
    DIRS+=("$BASE")
    ROOT="$BASE/dst"; SRC="$BASE/src"
    mkdir -p "$ROOT/skiff" "$ROOT/rsyncd" "$ROOT/ssh" "$SRC" "$BASE/home"
    # skiff serve with its own HOME (keys, state on the same file system).
    SKIFF_PORT=$(free_port)
    HOME="$BASE/home" start_bg "$SKIFF" serve --root "$ROOT/skiff" --listen "tcp://127.0.0.1:$SKIFF_PORT" \
        --state-dir "$BASE/home/state" >"$BASE/serve.log" 2>&1
    SKIFF_PID=${PIDS[-1]}
    wait_port "$SKIFF_PORT"
    BEFORE_PID=
    if [ -n "$BEFORE" ]; then
        # The earlier build's own server, root and state.
        mkdir -p "$ROOT/before" "$BASE/home-before"
        BEFORE_PORT=$(free_port)
        HOME="$BASE/home-before" start_bg "$BEFORE" serve --root "$ROOT/before" \
            --listen "tcp://127.0.0.1:$BEFORE_PORT" --state-dir "$BASE/home-before/state" >"$BASE/serve-before.log" 2>&1
        BEFORE_PID=${PIDS[-1]}
        wait_port "$BEFORE_PORT"
    fi
    export HOME="$BASE/home"
    # rsync daemon.
    RSYNC_PORT=$(free_port)
    cat >"$BASE/rsyncd.conf" <<EOF
use chroot = no
pid file = $BASE/rsyncd.pid
[bench]
    path = $ROOT/rsyncd
    read only = no
    uid = root
    gid = root
EOF
    start_bg rsync --daemon --no-detach --config="$BASE/rsyncd.conf" --port="$RSYNC_PORT" --address=127.0.0.1
    RSYNC_PID=${PIDS[-1]}
    wait_port "$RSYNC_PORT"

    log "$fs: $NFILES files of 4 KiB"
    python3 - "$SRC/tree" "$NFILES" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 100:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(os.urandom(4096))
EOF
    measure "$fs" "first copy, $NFILES x 4 KiB"
    measure "$fs" "no change, $NFILES files"
    python3 - "$SRC/tree" "$NFILES" "$NMOD" <<'EOF'
import os, sys
root, n, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(0, n, n // m):
    p = os.path.join(root, f"d{i // 100:03d}", f"f{i:05d}")
    with open(p, "r+b") as f:
        f.seek(1000); f.write(os.urandom(100))
EOF
    measure "$fs" "$NMOD of $NFILES files modified"
    if [ "$TREE_ONLY" = 1 ]; then
        measure_put "$fs"
        kill "$SKIFF_PID" "$RSYNC_PID" $BEFORE_PID 2>/dev/null || true
        wait "$SKIFF_PID" "$RSYNC_PID" $BEFORE_PID 2>/dev/null || true
        rm -rf "$BASE"
        continue
    fi

    log "$fs: a $((BIG >> 20)) MiB file"
    head -c "$BIG" /dev/urandom >"$SRC/big.bin"
    measure "$fs" "first copy, $((BIG >> 20)) MiB file"
    python3 - "$SRC/big.bin" <<'EOF'
import os, sys
p = sys.argv[1]; size = os.path.getsize(p)
with open(p, "r+b") as f:
    for i in range(10):
        f.seek(size * (2 * i + 1) // 20); f.write(os.urandom(1 << 20))
EOF
    measure "$fs" "10 x 1 MiB rewritten in the $((BIG >> 20)) MiB file"
    python3 - "$SRC/big.bin" <<'EOF'
import os, sys
p = sys.argv[1]; d = open(p, "rb").read(); m = len(d) // 2
open(p + ".new", "wb").write(d[:m] + os.urandom(1 << 20) + d[m:]); os.replace(p + ".new", p)
EOF
    measure "$fs" "1 MiB inserted in the $((BIG >> 20)) MiB file"
    measure_cp "$fs"

    kill "$SKIFF_PID" "$RSYNC_PID" $BEFORE_PID 2>/dev/null || true
    wait "$SKIFF_PID" "$RSYNC_PID" $BEFORE_PID 2>/dev/null || true
    rm -rf "$BASE"
done

if [ -n "$BEFORE" ]; then
    echo "| fs | scenario | skiff | rsync daemon | rsync -e ssh | rsync daemon / skiff | rsync ssh / skiff | skiff wire bytes | rsync daemon wire bytes | rsync ssh wire bytes | skiff --before | --before / skiff | --before wire bytes |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
else
    echo "| fs | scenario | skiff | rsync daemon | rsync -e ssh | rsync daemon / skiff | rsync ssh / skiff | skiff wire bytes | rsync daemon wire bytes | rsync ssh wire bytes |"
    echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
fi
printf '%s\n' "${ROWS[@]}"
