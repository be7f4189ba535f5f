#!/usr/bin/env bash
# Small files and latency: skiff put -r / get -r beside the rsync daemon
# and local cp -r, on tmpfs and on disk, and through a delay relay that adds
# a fixed round-trip time on loopback. Optionally (--bulk) one large file on
# tmpfs beside the rsync daemon, socat and scp. Prints a Markdown report.
#
#   bench/tree.sh [--files N] [--dirs D] [--size BYTES] [--runs R]
#                 [--rtt-ms MS] [--bulk MIB] [--bulk-only] [--no-build]
#                 [--out FILE]
#
# Defaults: 10000 files of 4096 bytes in 100 directories, 3 runs (the
# median is reported, for the bulk rows too), 50 ms round trip, no bulk
# rows. --bulk-only: only the bulk rows (needs --bulk). Every server it
# starts is stopped by PID on exit and its directories are removed.
# SKIFF_BIN=PATH uses that skiff binary instead of building one.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
FILES=10000
DIRS=100
SIZE=4096
RUNS=3
RTT=50
BULK=0
BULK_ONLY=0
BUILD=1
OUT=/dev/stdout
ARGS_GIVEN="$*"
while [ $# -gt 0 ]; do
    case "$1" in
        --files) FILES=$2; shift ;;
        --dirs) DIRS=$2; shift ;;
        --size) SIZE=$2; shift ;;
        --runs) RUNS=$2; shift ;;
        --rtt-ms) RTT=$2; shift ;;
        --bulk) BULK=$2; shift ;;
        --bulk-only) BULK_ONLY=1 ;;
        --no-build) BUILD=0 ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "tree.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
log() { printf '[tree %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
for t in rsync python3; do
    command -v "$t" >/dev/null || { echo "tree.sh: needs $t (apt-get install rsync python3)" >&2; exit 1; }
done
[ "$BULK_ONLY" = 0 ] || [ "$BULK" != 0 ] || { echo "tree.sh: --bulk-only needs --bulk MIB" >&2; exit 2; }
[ "$BULK" = 0 ] || command -v socat >/dev/null || { echo "tree.sh: --bulk needs socat" >&2; exit 1; }

# SKIFF_BIN: another skiff binary (no build then).
SKIFF="${SKIFF_BIN:-$REPO/target/release/skiff}"
[ -n "${SKIFF_BIN:-}" ] && BUILD=0
if [ "$BUILD" = 1 ]; then
    log "building skiff (release)"
    (cd "$REPO" && cargo build --release -q -p skiff)
fi
[ -x "$SKIFF" ] || { echo "tree.sh: $SKIFF not built" >&2; exit 1; }

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

TMPFS_BASE=/dev/shm
DISK_BASE=/var/tmp
WORK_T=$(mktemp -d "$TMPFS_BASE/skiff-tree.XXXXXX")
WORK_D=$(mktemp -d "$DISK_BASE/skiff-tree.XXXXXX")
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK_T" "$WORK_D"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
# median of the arguments
median() { python3 -c "import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))" "$@"; }
# ratio A B -> "1.23x"
ratio() {
    python3 -c "
try:
    a, b = float('$1'), float('$2'); print(f'{a/b:.2f}x' if b > 0 else 'n/a')
except ValueError:
    print('n/a')"
}

# make_tree DIR: FILES files of SIZE random bytes spread over DIRS directories.
make_tree() {
    python3 - "$1" "$FILES" "$DIRS" "$SIZE" <<'PY'
import os, sys
top, files, dirs, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for d in range(dirs):
    os.makedirs(os.path.join(top, f"d{d:03}"), exist_ok=True)
for i in range(files):
    with open(os.path.join(top, f"d{i % dirs:03}", f"f{i:05}.bin"), "wb") as f:
        f.write(os.urandom(size))
PY
}
# same_tree A B: fails unless both trees hold the same files with the same bytes
same_tree() { diff -r -q "$1" "$2" >/dev/null; }

# start_skiff BASE: a server whose root and state directory are under BASE;
# sets SK_URL and SK_HOME.
start_skiff() {
    local base=$1 out
    mkdir -p "$base/root" "$base/state" "$base/home"
    out="$base/serve.out"
    HOME="$base/home" "$SKIFF" serve --root "$base/root" --state-dir "$base/state" \
        --listen tcp://127.0.0.1:0 >"$out" 2>"$base/serve.err" &
    PIDS+=("$!")
    SK_PID=$!
    wait_line "$out" '^listening on tcp://'
    SK_URL=$(grep -m1 '^listening on tcp://' "$out" | sed 's/^listening on //')
    SK_HOME="$base/home"
    # the client key the server wrote on first start
    for i in $(seq 100); do [ -s "$SK_HOME/.config/skiff/key" ] && break; sleep 0.1; done
}
# start_rsyncd BASE: sets RS_PORT; module "bench" is BASE/rsync
start_rsyncd() {
    local base=$1
    mkdir -p "$base/rsync"
    cat >"$base/rsyncd.conf" <<EOF
use chroot = no
pid file = $base/rsyncd.pid
[bench]
    path = $base/rsync
    read only = no
    uid = $(id -u)
    gid = $(id -g)
EOF
    RS_PORT=$(free_port)
    rsync --daemon --no-detach --config="$base/rsyncd.conf" --port="$RS_PORT" --address=127.0.0.1 &
    PIDS+=("$!")
    for i in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$RS_PORT),0.2)" 2>/dev/null && break; sleep 0.1; done
}
# start_relay TARGET_PORT [RTT_MS]: sets RELAY_PORT (RTT_MS, default RTT,
# of added round trip)
start_relay() {
    local out
    out=$(mktemp "$WORK_T/relay.XXXXXX")
    python3 "$REPO/bench/delay_relay.py" --listen 0 --to "127.0.0.1:$1" --rtt-ms "${2:-$RTT}" >"$out" &
    PIDS+=("$!")
    wait_line "$out" '^listening on'
    RELAY_PORT=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$out")
}

# run_rate NAME SETUP CMD...: runs SETUP (a shell snippet clearing the
# destination), then times CMD, RUNS times; prints the median files/s.
# Every timed run starts with nothing dirty in the page cache (`sync`,
# untimed): otherwise whichever tool syncs first also pays for writing out
# the tree the previous row left behind, and for the removal in SETUP.
run_rate() {
    local name=$1 setup=$2 t0 t1 r secs=()
    shift 2
    for r in $(seq "$RUNS"); do
        eval "$setup"
        sync
        t0=$(now)
        "$@" >/dev/null 2>"$WORK_T/last.err" || { log "$name failed: $(head -c 300 "$WORK_T/last.err")"; echo "failed"; return; }
        t1=$(now)
        secs+=("$(python3 -c "print($t1 - $t0)")")
    done
    python3 -c "print(f'{$FILES / $(median "${secs[@]}"):.0f}')"
}

REPORT=()
# tree_rows LABEL BASE: every tree row for one location
tree_rows() {
    local label=$1 base=$2 src sk_put sk_get rs_put rs_get cp_r
    log "$label: creating $FILES files of $SIZE bytes in $DIRS directories"
    src="$base/src"
    make_tree "$src"
    start_skiff "$base/skiff"
    start_rsyncd "$base"
    local sk=(env HOME="$SK_HOME" "$SKIFF")
    log "$label: skiff put -r"
    sk_put=$(run_rate "skiff put -r" "rm -rf '$base/skiff/root/t'" "${sk[@]}" put -r "$SK_URL" "$src" t)
    same_tree "$src" "$base/skiff/root/t" || log "WARNING: skiff put -r tree differs"
    log "$label: skiff get -r"
    sk_get=$(run_rate "skiff get -r" "rm -rf '$base/got'" "${sk[@]}" get -r "$SK_URL" t "$base/got")
    same_tree "$src" "$base/got" || log "WARNING: skiff get -r tree differs"
    log "$label: rsync daemon"
    rs_put=$(run_rate "rsync put" "rm -rf '$base/rsync/t'" rsync -a "$src/" "rsync://127.0.0.1:$RS_PORT/bench/t/")
    rs_get=$(run_rate "rsync get" "rm -rf '$base/rgot'" rsync -a "rsync://127.0.0.1:$RS_PORT/bench/t/" "$base/rgot/")
    log "$label: cp -r"
    cp_r=$(run_rate "cp -r" "rm -rf '$base/cp'" cp -r "$src" "$base/cp")
    REPORT+=("$label: skiff put -r|$sk_put|$(ratio "$sk_put" "$rs_put")|$(ratio "$sk_put" "$cp_r")")
    REPORT+=("$label: skiff get -r|$sk_get|$(ratio "$sk_get" "$rs_get")|$(ratio "$sk_get" "$cp_r")")
    REPORT+=("$label: rsync daemon put|$rs_put||")
    REPORT+=("$label: rsync daemon get|$rs_get||")
    REPORT+=("$label: cp -r|$cp_r||")
    if [ "$label" = tmpfs ]; then
        log "$label: through the delay relay ($RTT ms round trip)"
        start_relay "${SK_URL##*:}"
        local sk_relay="tcp://127.0.0.1:$RELAY_PORT" d_put d_get d_rs
        # The relay is a different address: trust the same server there too.
        d_put=$(run_rate "skiff put -r (relay)" "rm -rf '$base/skiff/root/t'" "${sk[@]}" put -r "$sk_relay" "$src" t)
        d_get=$(run_rate "skiff get -r (relay)" "rm -rf '$base/got'" "${sk[@]}" get -r "$sk_relay" t "$base/got")
        start_relay "$RS_PORT"
        d_rs=$(run_rate "rsync put (relay)" "rm -rf '$base/rsync/t'" rsync -a "$src/" "rsync://127.0.0.1:$RELAY_PORT/bench/t/")
        REPORT+=("$label, +$RTT ms RTT: skiff put -r|$d_put|$(ratio "$d_put" "$d_rs")|")
        REPORT+=("$label, +$RTT ms RTT: skiff get -r|$d_get|$(ratio "$d_get" "$d_rs")|")
        REPORT+=("$label, +$RTT ms RTT: rsync daemon put|$d_rs||")
    fi
    rm -rf "$src" "$base/got" "$base/rgot" "$base/cp" "$base/rsync/t" "$base/skiff/root/t"
}

# bulk_rows BASE: one BULK MiB file on tmpfs; sets BULK_REPORT
BULK_REPORT=()
bulk_rows() {
    local base=$1 big="$1/big.bin" bytes=$((BULK << 20)) p_put p_get r_put r_get so d_put
    log "bulk: $BULK MiB on tmpfs"
    head -c "$bytes" /dev/urandom >"$big"
    if [ -z "${SK_URL:-}" ]; then
        start_skiff "$base/skiff"
        start_rsyncd "$base"
    fi
    local sk=(env HOME="$SK_HOME" "$SKIFF")
    secs_of() { local t0 t1; t0=$(now); "$@" >/dev/null 2>&1; t1=$(now); python3 -c "print($t1 - $t0)"; }
    gbps() { python3 -c "print(f'{$bytes / $1 / 1e9:.3f}')"; }
    # med_secs SETUP CMD...: the median of RUNS timed runs of CMD, each
    # after the shell snippet SETUP (which removes the previous copy)
    med_secs() {
        local setup=$1 r s=()
        shift
        for r in $(seq "$RUNS"); do eval "$setup"; s+=("$(secs_of "$@")"); done
        median "${s[@]}"
    }
    p_put=$(gbps "$(med_secs "rm -f '$base/skiff/root/big.bin'" "${sk[@]}" put "$SK_URL" "$big" big.bin)")
    cmp -s "$big" "$base/skiff/root/big.bin" || log "WARNING: skiff put: the copy differs"
    p_get=$(gbps "$(med_secs "rm -f '$base/big.got'" "${sk[@]}" get "$SK_URL" big.bin "$base/big.got")")
    cmp -s "$big" "$base/big.got" || log "WARNING: skiff get: the copy differs"
    rm -f "$base/big.got"
    r_put=$(gbps "$(med_secs "rm -f '$base/rsync/big.bin'" rsync "$big" "rsync://127.0.0.1:$RS_PORT/bench/big.bin")")
    cmp -s "$big" "$base/rsync/big.bin" || log "WARNING: rsync put: the copy differs"
    r_get=$(gbps "$(med_secs "rm -f '$base/big.rgot'" rsync "rsync://127.0.0.1:$RS_PORT/bench/big.bin" "$base/big.rgot")")
    rm -f "$base/big.rgot" "$base/rsync/big.bin"
    # socat_secs: one raw TCP copy of the file into a tmpfs file
    socat_secs() {
        local port pid t0 t1 i
        port=$(free_port)
        socat -b131072 -u "TCP-LISTEN:$port,bind=127.0.0.1,reuseaddr" "CREATE:$base/big.socat" &
        pid=$!
        PIDS+=("$pid")
        t0=$(now)
        for i in $(seq 100); do socat -b131072 -u "OPEN:$big" "TCP:127.0.0.1:$port" 2>/dev/null && break; sleep 0.05; t0=$(now); done
        wait "$pid" || true
        t1=$(now)
        rm -f "$base/big.socat"
        python3 -c "print($t1 - $t0)"
    }
    local r s=()
    for r in $(seq "$RUNS"); do s+=("$(socat_secs)"); done
    so=$(gbps "$(median "${s[@]}")")
    # scp to and from a private sshd, the file on the same tmpfs (OpenSSH
    # defaults: encrypted, as skiff over TLS).
    local sc_put="" sc_get=""
    local sshd_bin
    sshd_bin=$(command -v sshd || echo /usr/sbin/sshd)
    if command -v scp >/dev/null && [ -x "$sshd_bin" ]; then
        local ssh_port ssh_dir="$base/ssh"
        ssh_port=$(free_port)
        private_sshd_config "$ssh_dir" "$ssh_port"
        echo "Subsystem sftp internal-sftp" >>"$ssh_dir/sshd_config"
        "$sshd_bin" -D -e -f "$ssh_dir/sshd_config" 2>"$base/sshd.log" &
        PIDS+=("$!")
        for i in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$ssh_port),0.2)" 2>/dev/null && break; sleep 0.1; done
        local scp_cmd=(scp -q -F /dev/null -i "$ssh_dir/client_key" -o StrictHostKeyChecking=no
            -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR -P "$ssh_port")
        sc_put=$(gbps "$(med_secs "rm -f '$base/big.scp'" "${scp_cmd[@]}" "$big" "127.0.0.1:$base/big.scp")")
        cmp -s "$big" "$base/big.scp" || log "WARNING: scp put: the copy differs"
        sc_get=$(gbps "$(med_secs "rm -f '$base/big.scpgot'" "${scp_cmd[@]}" "127.0.0.1:$base/big.scp" "$base/big.scpgot")")
        cmp -s "$big" "$base/big.scpgot" || log "WARNING: scp get: the copy differs"
        rm -f "$base/big.scp" "$base/big.scpgot"
    else
        log "no scp or sshd: the scp rows are left out"
    fi
    # The relay is a userspace copy on the same two cores: a run through
    # it with no delay says what the relay itself costs, so that the
    # delayed run can be judged against the same path without the delay.
    local z_put
    start_relay "${SK_URL##*:}" 0
    z_put=$(gbps "$(med_secs "rm -f '$base/skiff/root/big.bin'" "${sk[@]}" put "tcp://127.0.0.1:$RELAY_PORT" "$big" big.bin)")
    start_relay "${SK_URL##*:}"
    d_put=$(gbps "$(med_secs "rm -f '$base/skiff/root/big.bin'" "${sk[@]}" put "tcp://127.0.0.1:$RELAY_PORT" "$big" big.bin)")
    BULK_REPORT+=("skiff put|$p_put|$(ratio "$p_put" "$r_put")|$(ratio "$p_put" "$so")|${sc_put:+$(ratio "$p_put" "$sc_put")}")
    BULK_REPORT+=("skiff get|$p_get|$(ratio "$p_get" "$r_get")|$(ratio "$p_get" "$so")|${sc_get:+$(ratio "$p_get" "$sc_get")}")
    # Without TLS, as the rsync daemon and socat run: a second server on
    # the same root and users, listening on tcp+plain:// and unix://.
    local pl_out="$base/skiff/plain.out" pl_url pl_sock="$base/skiff/plain.sock" u x_put x_get
    mkdir -p "$base/skiff/state-plain"
    HOME="$SK_HOME" "$SKIFF" serve --root "$base/skiff/root" --state-dir "$base/skiff/state-plain" \
        --users "$base/skiff/state/users" --listen tcp+plain://127.0.0.1:0 \
        --listen "unix://$pl_sock" >"$pl_out" 2>"$base/skiff/plain.err" &
    PIDS+=("$!")
    wait_line "$pl_out" '^listening on tcp+plain://'
    pl_url=$(grep -m1 '^listening on tcp+plain://' "$pl_out" | sed 's/^listening on //')
    for u in "$pl_url" "unix://$pl_sock"; do
        x_put=$(gbps "$(med_secs "rm -f '$base/skiff/root/big.bin'" "${sk[@]}" put "$u" "$big" big.bin)")
        cmp -s "$big" "$base/skiff/root/big.bin" || log "WARNING: skiff put ($u): the copy differs"
        x_get=$(gbps "$(med_secs "rm -f '$base/big.got'" "${sk[@]}" get "$u" big.bin "$base/big.got")")
        cmp -s "$big" "$base/big.got" || log "WARNING: skiff get ($u): the copy differs"
        rm -f "$base/big.got"
        BULK_REPORT+=("skiff put, ${u%%:*}://|$x_put|$(ratio "$x_put" "$r_put")|$(ratio "$x_put" "$so")")
        BULK_REPORT+=("skiff get, ${u%%:*}://|$x_get|$(ratio "$x_get" "$r_get")|$(ratio "$x_get" "$so")")
    done
    BULK_REPORT+=("rsync daemon put|$r_put||")
    BULK_REPORT+=("rsync daemon get|$r_get||")
    BULK_REPORT+=("socat raw TCP -> tmpfs file|$so||")
    [ -z "$sc_put" ] || BULK_REPORT+=("scp put|$sc_put||" "scp get|$sc_get||")
    BULK_REPORT+=("skiff put, through the relay at 0 ms|$z_put|$(ratio "$z_put" "$p_put") of direct|")
    BULK_REPORT+=("skiff put, +$RTT ms RTT|$d_put|$(ratio "$d_put" "$p_put") of no delay, $(ratio "$d_put" "$z_put") of the relay at 0 ms|")
    # One file over several connections (put --streams N), without and
    # through the same relay; the relay rows are medians of RUNS runs.
    local sn s_put s_dput
    for sn in 4 8; do
        s_put=$(gbps "$(med_secs "rm -f '$base/skiff/root/big.bin'" "${sk[@]}" put --streams "$sn" "$SK_URL" "$big" big.bin)")
        cmp -s "$big" "$base/skiff/root/big.bin" || log "WARNING: skiff put --streams $sn: the copy differs"
        s_dput=$(gbps "$(med_secs "rm -f '$base/skiff/root/big.bin'" "${sk[@]}" put --streams "$sn" "tcp://127.0.0.1:$RELAY_PORT" "$big" big.bin)")
        cmp -s "$big" "$base/skiff/root/big.bin" || log "WARNING: skiff put --streams $sn (relay): the copy differs"
        BULK_REPORT+=("skiff put --streams $sn|$s_put|$(ratio "$s_put" "$r_put")|$(ratio "$s_put" "$so")")
        BULK_REPORT+=("skiff put --streams $sn, +$RTT ms RTT|$s_dput|$(ratio "$s_dput" "$p_put") of single-stream no delay|")
    done
    rm -f "$big" "$base/skiff/root/big.bin"
}

[ "$BULK_ONLY" = 1 ] || tree_rows tmpfs "$WORK_T"
[ "$BULK" = 0 ] || bulk_rows "$WORK_T"
[ "$BULK_ONLY" = 1 ] || tree_rows disk "$WORK_D"

{
    echo "- $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs; load average at the end $(cut -d' ' -f1-3 /proc/loadavg); skiff $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- reproduce: \`bench/tree.sh${ARGS_GIVEN:+ $ARGS_GIVEN}\`; medians of $RUNS runs; tmpfs is $TMPFS_BASE, disk is $DISK_BASE; skiff over TLS with its state directory on the same file system as its root"
    if [ "$BULK_ONLY" = 0 ]; then
        echo
        echo "### Small files: $FILES × $SIZE bytes in $DIRS directories"
        echo
        echo "| what | files/s | vs rsync daemon | vs cp -r |"
        echo "| --- | --- | --- | --- |"
        for r in "${REPORT[@]}"; do echo "| ${r//|/ | } |"; done
    fi
    if [ "$BULK" != 0 ]; then
        echo
        echo "### One $BULK MiB file on tmpfs"
        echo
        echo "| what | GB/s | vs rsync daemon | vs socat | vs scp |"
        echo "| --- | --- | --- | --- | --- |"
        for r in "${BULK_REPORT[@]}"; do
            while [ "$(tr -dc '|' <<<"$r" | wc -c)" -lt 4 ]; do r+="|"; done
            echo "| ${r//|/ | } |"
        done
    fi
} >"$OUT"
log "done"
