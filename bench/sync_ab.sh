#!/usr/bin/env bash
# Two skiff builds side by side on a tree of small files: the first
# `skiff sync` push of 10,000 x 4 KiB (100 directories) into a fresh
# destination, then its pull into an empty local directory, alternating
# the builds round by round (each with its own server, root and state),
# and `put -r` of the same tree with the second build beside them. Every
# timed run starts after a `sync`. For comparing two commits in the same
# minutes on a disk whose flush time swings between runs.
#
#   bench/sync_ab.sh BIN_A BIN_B [ROUNDS] [DIR]
#
# DIR is where everything lives (default /var/tmp: disk); prints one line
# of files/s per round.
set -euo pipefail
B=$(mktemp -d ${4:-/var/tmp}/sab.XXXXXX); PIDS=(); trap 'kill ${PIDS[@]} 2>/dev/null; rm -rf $B' EXIT
python3 - $B/src <<'PY'
import os,sys
r=sys.argv[1]
for d in range(100):
    os.makedirs(f"{r}/d{d}",exist_ok=True)
    for f in range(100):
        open(f"{r}/d{d}/f{f}","wb").write(os.urandom(4096))
PY
i=0; PORTS=()
for BIN in "$1" "$2"; do
  mkdir -p $B/r$i $B/h$i
  P=$(python3 -c "import socket;s=socket.socket();s.bind(('127.0.0.1',0));print(s.getsockname()[1])")
  HOME=$B/h$i $BIN serve --root $B/r$i --listen tcp://127.0.0.1:$P --state-dir $B/h$i/state >$B/s$i.log 2>&1 & PIDS+=($!)
  PORTS+=($P); i=$((i+1))
done
sleep 1.5
fps() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>$B/err || { cat $B/err >&2; }; t1=$(date +%s.%N); python3 -c "print(int(10000/($t1-$t0)))"; }
for r in $(seq ${3:-4}); do
  line=""
  for i in 0 1; do
    BIN=$([ $i = 0 ] && echo $1 || echo $2); export HOME=$B/h$i
    rm -rf $B/r$i/t; sync
    pu=$(fps $BIN sync -p ${PORTS[$i]} $B/src 127.0.0.1:t)
    rm -rf $B/g$i; sync
    ge=$(fps $BIN sync -p ${PORTS[$i]} 127.0.0.1:t $B/g$i)
    diff -r $B/src $B/g$i >/dev/null || echo "DIFF $i"
    line+="$(basename $BIN): push $pu pull $ge | "
  done
  rm -rf $B/r1/p; sync
  pr=$(HOME=$B/h1 fps $2 put -r -q tcp://127.0.0.1:${PORTS[1]} $B/src p)
  echo "$line put -r $pr files/s"
done
