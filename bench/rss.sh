#!/usr/bin/env bash
# Peak memory of both sides of a file transfer: the client and a fresh
# `skiff serve` per row, for put -r / get -r of a tree of small files and
# put / get of one large file, on tmpfs over TLS on loopback. Every row is
# verified (diff -r for trees, cmp for the file). Prints a Markdown table.
#
#   bench/rss.sh [--files N] [--size BYTES] [--bulk MIB] [--no-build]
#                [--out FILE]
#
# Defaults: 10000 files of 4096 bytes in 100 directories, a 1024 MiB file.
# SKIFF_BIN=PATH uses that skiff binary instead of building one.
# Client: VmHWM from /proc/PID/status polled every 20 ms while it runs,
# and its ru_maxrss from wait4 at exit (the same high-water counter, so a
# peak in the last 20 ms is not missed); the larger is reported. Server:
# VmHWM from /proc/PID/status after the client exited, before it is
# stopped. Every server is stopped by PID and the directories removed.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
FILES=10000
SIZE=4096
BULK=1024
BUILD=1
OUT=/dev/stdout
ARGS_GIVEN="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --files) FILES=$2; shift ;;
        --size) SIZE=$2; shift ;;
        --bulk) BULK=$2; shift ;;
        --no-build) BUILD=0 ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "rss.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
command -v python3 >/dev/null || { echo "rss.sh: needs python3" >&2; exit 1; }
log() { printf '[rss %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# SKIFF_BIN: another skiff binary (no build then).
SKIFF="${SKIFF_BIN:-$REPO/target/release/skiff}"
[ -n "${SKIFF_BIN:-}" ] && BUILD=0
if [ "$BUILD" = 1 ]; then
    log "building skiff (release)"
    (cd "$REPO" && cargo build --release --locked -q -p skiff)
fi
[ -x "$SKIFF" ] || { echo "rss.sh: $SKIFF not built" >&2; exit 1; }

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

WORK=$(mktemp -d /dev/shm/skiff-rss.XXXXXX)
PIDS=()
cleanup() {
    stop_pids
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
mib() { python3 -c "print(f'{$1/1024:.1f}')"; }

# run_measured CMD...: runs CMD, polling its VmHWM every 20 ms; prints
# "SECONDS PEAK_KIB EXIT_CODE" (peak: the larger of the last VmHWM seen and
# ru_maxrss at exit). Gives up (kills it) after 600 s.
run_measured() {
    python3 - "$@" <<'PY'
import os, subprocess, sys, time
t0 = time.monotonic()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=open(os.environ["RSS_ERR"], "wb"))
peak = 0
while True:
    try:
        with open(f"/proc/{p.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass
    pid, status, ru = os.wait4(p.pid, os.WNOHANG)
    if pid:
        break
    if time.monotonic() - t0 > 600:
        p.kill()
        pid, status, ru = os.wait4(p.pid, 0)
        break
    time.sleep(0.02)
secs = time.monotonic() - t0
peak = max(peak, ru.ru_maxrss)  # KiB on Linux
print(f"{secs:.2f} {peak} {os.waitstatus_to_exitcode(status)}")
PY
}

# start_server: a fresh `skiff serve` with its root WORK/root; sets SK_PID, SK_URL
start_server() {
    mkdir -p "$WORK/root" "$WORK/state" "$WORK/home"
    HOME="$WORK/home" "$SKIFF" serve --root "$WORK/root" --state-dir "$WORK/state" \
        --listen tcp://127.0.0.1:0 >"$WORK/serve.out" 2>"$WORK/serve.err" &
    SK_PID=$!
    PIDS+=("$SK_PID")
    wait_line "$WORK/serve.out" '^listening on tcp://'
    SK_URL=$(grep -m1 '^listening on tcp://' "$WORK/serve.out" | sed 's/^listening on //')
    local i
    for i in $(seq 100); do [ -s "$WORK/home/.config/skiff/key" ] && break; sleep 0.1; done
}
stop_server() {
    kill "$SK_PID" 2>/dev/null || true
    wait "$SK_PID" 2>/dev/null || true
}

ROWS=()
# row LABEL VERIFY_CMD CLIENT_ARGS...: one measured transfer against a fresh
# server (@URL@ in CLIENT_ARGS becomes its address); VERIFY_CMD (a shell
# snippet) must succeed afterwards.
row() {
    local label=$1 verify=$2 out secs peak rc server
    shift 2
    start_server
    export RSS_ERR="$WORK/client.err"
    local args=() a
    for a in "$@"; do args+=("${a//@URL@/$SK_URL}"); done
    out=$(run_measured env HOME="$WORK/home" "$SKIFF" "${args[@]}")
    read -r secs peak rc <<<"$out"
    server=$(hwm_kib "$SK_PID")
    stop_server
    [ "$rc" = 0 ] || { echo "rss.sh: $label failed (exit $rc): $(head -c 500 "$RSS_ERR")" >&2; exit 1; }
    eval "$verify" || { echo "rss.sh: $label: the copy differs from the source" >&2; exit 1; }
    log "$label: $secs s, client $(mib "$peak") MiB, server $(mib "$server") MiB"
    ROWS+=("| $label | $secs s | $(mib "$peak") MiB | $(mib "$server") MiB |")
}

log "making $FILES files of $SIZE bytes and a $BULK MiB file in $WORK"
python3 - "$WORK/tree" "$FILES" "$SIZE" <<'PY'
import os, sys
top, files, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for d in range(100):
    os.makedirs(os.path.join(top, f"d{d:03}"), exist_ok=True)
for i in range(files):
    with open(os.path.join(top, f"d{i % 100:03}", f"f{i:05}.bin"), "wb") as f:
        f.write(os.urandom(size))
PY
head -c $((BULK << 20)) /dev/urandom >"$WORK/big.bin"
KIB=$((SIZE / 1024))

rm -rf "$WORK/root"
row "put -r $FILES x $KIB KiB" "diff -r -q '$WORK/tree' '$WORK/root/t' >/dev/null" \
    put -r @URL@ "$WORK/tree" t
row "get -r $FILES x $KIB KiB" "diff -r -q '$WORK/tree' '$WORK/got' >/dev/null" \
    get -r @URL@ t "$WORK/got"
rm -rf "$WORK/got" "$WORK/root/t"
row "put $BULK MiB" "cmp '$WORK/big.bin' '$WORK/root/big.bin'" \
    put @URL@ "$WORK/big.bin" big.bin
row "get $BULK MiB" "cmp '$WORK/big.bin' '$WORK/big.got'" \
    get @URL@ big.bin "$WORK/big.got"

{
    echo "| transfer | time | client VmHWM | server VmHWM |"
    echo "| --- | --- | --- | --- |"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs; load average at the end $(cut -d' ' -f1-3 /proc/loadavg); skiff $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown), binary $SKIFF, TLS on loopback, tmpfs (/dev/shm); reproduce: \`bench/rss.sh${ARGS_GIVEN:+ $ARGS_GIVEN}\`"
} >"$OUT"
log "done"
