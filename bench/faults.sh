#!/usr/bin/env bash
# Page faults, CPU and speed of one large put and get, for one or more
# skiff binaries side by side (before / after a change), on tmpfs over
# loopback. Each round runs every binary once, in turn, so load from other
# work on the machine falls on all of them alike. Prints a Markdown table
# of medians.
#
#   bench/faults.sh [--bulk MIB] [--runs N] [--url-scheme tcp|tcp+plain]
#                   [--out FILE] BINARY...
#
# Defaults: a 1024 MiB file, 3 rounds, TLS (tcp://). Client figures come
# from /usr/bin/time (minor faults, user + system CPU), the server's from
# /proc/PID/stat of a `skiff serve` started per binary (the difference
# across one transfer). Every copy is verified with cmp. Every server is
# stopped by PID and the directory removed.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BULK=1024
RUNS=3
SCHEME=tcp
OUT=/dev/stdout
ARGS_GIVEN="$*"
BINS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --bulk) BULK=$2; shift ;;
        --runs) RUNS=$2; shift ;;
        --url-scheme) SCHEME=$2; shift ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        -*) echo "faults.sh: unknown argument $1" >&2; exit 2 ;;
        *) BINS+=("$1") ;;
    esac
    shift
done
[ "${#BINS[@]}" -gt 0 ] || { echo "faults.sh: name at least one skiff binary" >&2; exit 2; }
[ -x /usr/bin/time ] || { echo "faults.sh: needs /usr/bin/time (GNU time)" >&2; exit 1; }
case "$SCHEME" in tcp|tcp+plain) ;; *) echo "faults.sh: --url-scheme tcp or tcp+plain" >&2; exit 2 ;; esac
log() { printf '[faults %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

WORK=$(mktemp -d /dev/shm/skiff-faults.XXXXXX)
PIDS=()
cleanup() {
    stop_pids
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# server_stat PID: "MINFLT CPU_SECONDS" of a running process
server_stat() {
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print $8, ($12 + $13) / hz }' "/proc/$1/stat"
}

log "making a $BULK MiB file in $WORK"
head -c $((BULK << 20)) /dev/urandom >"$WORK/big.bin"

# One server per binary, each with its own root, state and client key.
URLS=()
SPIDS=()
for i in "${!BINS[@]}"; do
    d="$WORK/s$i"
    mkdir -p "$d/root" "$d/state" "$d/home"
    HOME="$d/home" "${BINS[$i]}" serve --root "$d/root" --state-dir "$d/state" \
        --listen "$SCHEME://127.0.0.1:0" >"$d/serve.out" 2>"$d/serve.err" &
    SPIDS+=("$!")
    PIDS+=("$!")
    wait_line "$d/serve.out" "^listening on $SCHEME://"
    URLS+=("$(grep -m1 "^listening on $SCHEME://" "$d/serve.out" | sed 's/^listening on //')")
    for _ in $(seq 100); do [ -s "$d/home/.config/skiff/key" ] && break; sleep 0.1; done
done

# measure I DIRECTION: one transfer with binary I; appends
# "MBPS CLIENT_FAULTS CLIENT_CPU SERVER_FAULTS SERVER_CPU" to $WORK/rI.DIRECTION
measure() {
    local i=$1 dir=$2 d="$WORK/s$1" before after t args
    if [ "$dir" = put ]; then
        rm -f "$d/root/big.bin"
        args=(put "${URLS[$i]}" "$WORK/big.bin" big.bin)
    else
        rm -f "$d/got.bin"
        args=(get "${URLS[$i]}" big.bin "$d/got.bin")
    fi
    before=$(server_stat "${SPIDS[$i]}")
    HOME="$d/home" /usr/bin/time -f '%e %R %U %S' -o "$d/time" "${BINS[$i]}" "${args[@]}" \
        >/dev/null 2>"$d/client.err" || { echo "faults.sh: ${BINS[$i]} $dir failed: $(head -c 500 "$d/client.err")" >&2; exit 1; }
    after=$(server_stat "${SPIDS[$i]}")
    if [ "$dir" = put ]; then t="$d/root/big.bin"; else t="$d/got.bin"; fi
    cmp -s "$WORK/big.bin" "$t" || { echo "faults.sh: ${BINS[$i]} $dir: the copy differs" >&2; exit 1; }
    read -r secs cflt cu cs <"$d/time"
    python3 - "$BULK" "$secs" "$cflt" "$cu" "$cs" $before $after >>"$WORK/r$i.$dir" <<'PY'
import sys
mib, secs, cflt, cu, cs, f0, c0, f1, c1 = sys.argv[1:]
print(f"{int(mib) * 1048576 / float(secs) / 1e6:.0f} {cflt} {float(cu) + float(cs):.2f} {int(f1) - int(f0)} {float(c1) - float(c0):.2f}")
PY
}

for r in $(seq "$RUNS"); do
    for dir in put get; do
        for i in "${!BINS[@]}"; do
            measure "$i" "$dir"
            log "round $r, $dir, ${BINS[$i]}: $(tail -n1 "$WORK/r$i.$dir")"
        done
    done
done
# The first put seeds each server's root for the gets; no copy is left over.

{
    echo "| binary | transfer | MB/s | client minor faults | client CPU s | server minor faults | server CPU s |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
    for dir in put get; do
        for i in "${!BINS[@]}"; do
            python3 - "${BINS[$i]}" "$dir" "$WORK/r$i.$dir" <<'PY'
import statistics, sys
name, direction, path = sys.argv[1:]
rows = [line.split() for line in open(path)]
med = [statistics.median(float(r[k]) for r in rows) for k in range(5)]
print(f"| {name} | {direction} | {med[0]:.0f} | {med[1]:.0f} | {med[2]:.2f} | {med[3]:.0f} | {med[4]:.2f} |")
PY
        done
    done
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs; load average at the end $(cut -d' ' -f1-3 /proc/loadavg); $SCHEME:// on loopback, tmpfs (/dev/shm), medians of $RUNS rounds; reproduce: \`bench/faults.sh${ARGS_GIVEN:+ $ARGS_GIVEN}\`"
} >"$OUT"
log "done"
