#!/usr/bin/env bash
# Writes crates/skiff/link-order.txt: the functions a typical session
# executes, in the order the release link places them first (see
# crates/skiff/build.rs and docs/SYNC.md, "Memory").
#
#   bench/link_order.sh [--bin BIN] [--out FILE]
#
# --bin BIN  an unstripped release build to profile (default: build one with
#            `cargo rustc --release -p skiff --bin skiff -- -C strip=none`;
#            only the final link differs from `cargo build --release`, so
#            the symbol names are the release build's)
# --out FILE where to write the list (default crates/skiff/link-order.txt)
#
# Needs valgrind (callgrind): it records every function that runs at least
# once, which is what decides the pages a process maps, where a sampling
# profiler would miss the code that runs once. Runs an idle `skiff serve`
# and, against it, the client commands of a typical use (sync of a small
# tree and of a changed one, both ways; put/get of a file and of a tree;
# exec; ping; ls; stat), each under callgrind, the server too. The list:
# what a `sync` push ran on the client only, on both sides, on the server
# only (so each side runs one contiguous stretch), then the native variants
# of the crypto code (below), then the same three groups for the other
# commands; each group hottest first (instructions executed).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BIN=
OUT="$REPO/crates/skiff/link-order.txt"
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) BIN="$2"; shift ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "link_order.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
for t in valgrind python3; do
    command -v "$t" >/dev/null || { echo "link_order.sh: $t is needed" >&2; exit 2; }
done
if [ -z "$BIN" ]; then
    (cd "$REPO" && cargo rustc --release --locked -q -p skiff --bin skiff -- -C strip=none)
    BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/skiff"
fi
BIN=$(realpath "$BIN")
nm "$BIN" >/dev/null 2>&1 && [ -n "$(nm "$BIN" 2>/dev/null | head -1)" ] ||
    { echo "link_order.sh: $BIN has no symbols (build it with -C strip=none)" >&2; exit 2; }
# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
log() { printf '[link-order %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

WORK=$(mktemp -d /dev/shm/skiff-link-order.XXXXXX)
PIDS=()
cleanup() {
    stop_pids
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# valgrind 3.19 does not know openat2 (cap-std then takes its fallback):
# its warning about that goes.
CG=(valgrind --tool=callgrind --demangle=no --dump-instr=no --compress-strings=no --compress-pos=no
    --trace-children=no -q --log-file=/dev/null)
export HOME="$WORK/home"
mkdir -p "$WORK/root" "$WORK/state" "$HOME"

log "making the trees"
python3 - "$WORK" <<'EOF'
import os, sys
w = sys.argv[1]
for i in range(3000):  # like bench/sync_rss.sh: empty files, 1000 a directory
    d = os.path.join(w, "empty", f"d{i // 1000}")
    os.makedirs(d, exist_ok=True)
    open(os.path.join(d, f"f{i:07d}"), "wb").close()
for i in range(300):
    d = os.path.join(w, "src", f"d{i // 100}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:04d}"), "wb") as f:
        f.write(os.urandom(4096 if i % 3 else 0))
with open(os.path.join(w, "src", "big"), "wb") as f:
    f.write(os.urandom(6 << 20))
with open(os.path.join(w, "file"), "wb") as f:
    f.write(os.urandom(6 << 20))
EOF

start_server() { # PHASE: a server under callgrind; sets SPID, URL, PORT
    log "server under callgrind ($1)"
    : >"$WORK/serve.out"
    "${CG[@]}" --callgrind-out-file="$WORK/cg.$1-server.%p" "$BIN" serve --root "$WORK/root" \
        --state-dir "$WORK/state" --listen tcp://127.0.0.1:0 >"$WORK/serve.out" 2>"$WORK/serve.err" &
    SPID=$!
    PIDS+=("$SPID")
    for _ in $(seq 600); do grep -q '^listening on tcp://' "$WORK/serve.out" 2>/dev/null && break; sleep 0.1; done
    URL=$(grep -m1 '^listening on tcp://' "$WORK/serve.out" | sed 's/^listening on //') ||
        { echo "link_order.sh: the server did not start" >&2; cat "$WORK/serve.err" >&2; exit 1; }
    for _ in $(seq 100); do [ -s "$HOME/.config/skiff/key" ] && break; sleep 0.1; done
    PORT=${URL##*:}
}
stop_server() {
    kill "$SPID"
    wait "$SPID" 2>/dev/null || true
    PIDS=()
}

PHASE=sync
client() { # ARGS...: one client command under callgrind
    log "client: $*"
    "${CG[@]}" --callgrind-out-file="$WORK/cg.$PHASE-client.%p" "$BIN" "$@" >/dev/null </dev/null
}
# Phase "sync": pushing trees with `sync`, what bench/sync_rss.sh measures;
# phase "other": everything else, with a server of its own.
start_server sync
client sync -q -p "$PORT" "$WORK/empty" 127.0.0.1:empty
client sync -q -p "$PORT" "$WORK/empty" 127.0.0.1:empty
client sync -q -p "$PORT" "$WORK/src" 127.0.0.1:dst
client sync -q -p "$PORT" "$WORK/src" 127.0.0.1:dst
python3 - "$WORK/src" <<'EOF'
import os, sys
src = sys.argv[1]
with open(os.path.join(src, "d0", "f0001"), "wb") as f:
    f.write(os.urandom(4096))
os.remove(os.path.join(src, "d1", "f0101"))
with open(os.path.join(src, "big"), "r+b") as f:
    f.seek(3 << 20)
    f.write(os.urandom(100000))
EOF
client sync -q --delete -p "$PORT" "$WORK/src" 127.0.0.1:dst
stop_server
PHASE=other
start_server other
client sync -q -p "$PORT" 127.0.0.1:dst "$WORK/back"
client put -q "$URL" "$WORK/file" file
client get -q "$URL" file "$WORK/file.back"
client put -q -r "$URL" "$WORK/src" tree
client get -q -r "$URL" tree "$WORK/tree.back"
client exec "$URL" -- echo hello
client exec "$URL" -- head -c 1000000 /dev/zero
client ping -c 3 -i 0 "$URL"
client ls "$URL" /
client stat "$URL" file
cmp -s "$WORK/file" "$WORK/file.back" || log "WARNING: get returned a different file"
diff -r "$WORK/src" "$WORK/back" || log "WARNING: sync back gave a different tree"
stop_server

log "writing $OUT"
python3 - "$BIN" "$OUT" "$WORK"/cg.* <<'EOF'
import collections, os, subprocess, sys

binary, out, files = os.path.realpath(sys.argv[1]), sys.argv[2], sys.argv[3:]
cost = collections.defaultdict(collections.Counter)  # "sync-client" etc.
for path in files:
    tag = os.path.basename(path).split(".")[1]
    ob = None
    fn = None
    skip = False
    with open(path, errors="replace") as f:
        for line in f:
            if skip:  # the inclusive cost of a call: not this function's own
                skip = False
                continue
            if line.startswith("ob="):
                ob = os.path.realpath(line[3:].strip())
            elif line.startswith("fn="):
                fn = line[3:].strip() if ob == binary else None
                if fn:
                    cost[tag][fn] += 0
            elif line.startswith("calls="):
                skip = True
            elif fn and line[:1].isdigit():
                parts = line.split()
                if len(parts) >= 2:
                    cost[tag][fn] += int(parts[1])


def split(server, client):
    """(client only, both, server only): laid out in that order, the client
    runs one stretch and the server the stretch beside it."""
    both = collections.Counter({k: server[k] + client[k] for k in server.keys() & client.keys()})
    return [collections.Counter({k: v for k, v in client.items() if k not in server}), both,
            collections.Counter({k: v for k, v in server.items() if k not in client})]


groups = split(cost["sync-server"], cost["sync-client"])
groups_other = split(cost["other-server"], cost["other-client"])
# Under valgrind the CPU has no AVX-512, VAES or SHA-NI, so ring, the
# x25519 field code, sha2 and blake3 took other variants than they take
# natively: all of those families follow the groups.
families = ("ring_core_", "4ring", "fiat_", "x25519", "4sha2", "blake3")
natively = []
for line in subprocess.run(["nm", "--defined-only", binary], capture_output=True,
                           text=True, check=True).stdout.splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[1] in "tTwW" and any(x in parts[2] for x in families):
        natively.append(parts[2])
seen = set()
with open(out, "w") as f:
    # The entry point (callgrind calls it "(below main)").
    seen.add("_start")
    f.write("_start\n")
    for g in groups + [collections.Counter(dict.fromkeys(natively, 0))] + groups_other:
        for name, _ in sorted(g.items(), key=lambda kv: (-kv[1], kv[0])):
            # callgrind names a function after one symbol at its address;
            # "'2" suffixes mark levels of recursion, not symbols.
            name = name.split("'")[0]
            # "0x..." (code without a symbol) and "(below main)" are not names.
            if name not in seen and not name.startswith(("0x", "(")):
                seen.add(name)
                f.write(name + "\n")
print(f"{len(seen)} functions; sync: {len(groups[0])} client only, {len(groups[1])} both, "
      f"{len(groups[2])} server only", file=sys.stderr)
EOF
