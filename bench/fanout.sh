#!/usr/bin/env bash
# Fan-out benchmark: `true` on N hosts at --parallel P with skiff, pdsh -R ssh
# and parallel-ssh. All three reach one local server (one `skiff serve`, one
# private sshd on loopback) through N host aliases, so the figures measure
# the tools' own fan-out cost. Not run in CI.
#
#   bench/fanout.sh [--hosts N] [--parallel P] [--no-install] [--no-build]
#
# Environment: SKIFF_BIN (default target/release/skiff, built unless
# --no-build). Prints a Markdown table on stdout.
set -euo pipefail

HOSTS=200
PAR=50
INSTALL=1
BUILD=1
while [ $# -gt 0 ]; do
    case "$1" in
        --hosts) HOSTS="$2"; shift ;;
        --parallel) PAR="$2"; shift ;;
        --no-install) INSTALL=0 ;;
        --no-build) BUILD=0 ;;
        *) echo "usage: $0 [--hosts N] [--parallel P] [--no-install] [--no-build]" >&2; exit 2 ;;
    esac
    shift
done

REPO="$(cd "$(dirname "$0")/.." && pwd)"
SKIFF="${SKIFF_BIN:-$REPO/target/release/skiff}"
if [ "$BUILD" = 1 ] && [ -z "${SKIFF_BIN:-}" ]; then
    (cd "$REPO" && cargo build --release -q -p skiff)
fi

if [ "$INSTALL" = 1 ]; then
    need=()
    command -v pdsh >/dev/null || need+=(pdsh)
    command -v parallel-ssh >/dev/null || need+=(pssh)
    [ -x /usr/sbin/sshd ] || need+=(openssh-server)
    command -v ssh >/dev/null || need+=(openssh-client)
    if [ ${#need[@]} -gt 0 ]; then
        SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
        $SUDO apt-get install -y -q "${need[@]}" >/dev/null || {
            $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${need[@]}" >/dev/null
        }
    fi
fi

W="$(mktemp -d)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$W"
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# --- skiff: one server, N aliases --------------------------------------------
export HOME="$W/home"
mkdir -p "$HOME/.config/skiff" "$W/root"
"$SKIFF" keygen --user bench --out "$HOME/.config/skiff/key" >/dev/null
cp "$HOME/.config/skiff/key" "$W/users"
# Every alias is the same server and one source, so the handshake caps are
# raised as the sshd's MaxStartups is below: P handshakes at once from one
# address is the benchmark here, not an attack.
"$SKIFF" serve --root "$W/root" --users "$W/users" --state-dir "$W/state" \
    --max-startups 1000:30:1000 --per-source-max-startups 1000 \
    --listen tcp://127.0.0.1:0 > "$W/serve.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q '^listening on' "$W/serve.out" && break; sleep 0.1; done
SPORT="$(sed -n 's/^listening on tcp:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$W/serve.out" | head -1)"
FP="$(grep -o 'SHA256:[0-9a-f]*' "$W/serve.out" | head -1)"
{
    for i in $(seq -f '%03g' 1 "$HOSTS"); do
        printf '[hosts.node%s]\naddress = "127.0.0.1"\nport = %s\nfingerprint = "%s"\n\n' "$i" "$SPORT" "$FP"
    done
} > "$HOME/.config/skiff/config.toml"

# --- sshd: one private server, N aliases -------------------------------------
PORT="$(free_port)"
SSHDIR="$W/ssh"
private_sshd_config "$SSHDIR" "$PORT"
printf 'MaxStartups 1000\nMaxSessions 1000\n' >>"$SSHDIR/sshd_config"
/usr/sbin/sshd -f "$SSHDIR/sshd_config" -D -e 2> "$W/sshd.log" &
PIDS+=($!)
{
    for i in $(seq -f '%03g' 1 "$HOSTS"); do
        printf 'Host node%s\n  HostName 127.0.0.1\n' "$i"
    done
    printf 'Host *\n  Port %s\n  IdentityFile %s\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n' "$PORT" "$SSHDIR/client_key"
} > "$W/ssh_config"
seq -f 'node%03g' 1 "$HOSTS" > "$W/hosts.txt"
for _ in $(seq 50); do ssh -F "$W/ssh_config" node001 true 2>/dev/null && break; sleep 0.1; done

# --- runs ----------------------------------------------------------------------
declare -A T OK
run() {
    local name="$1"; shift
    local t0 t1 rc=0
    t0="$(now)"
    "$@" > "$W/$name.out" 2> "$W/$name.err" || rc=$?
    t1="$(now)"
    T[$name]="$(secs "$t0" "$t1")"
    OK[$name]="exit $rc"
}
RANGE="node[001-$(printf '%03d' "$HOSTS")]"
run skiff "$SKIFF" exec -H "$RANGE" --parallel "$PAR" --no-summary -- true
run pdsh env PDSH_SSH_ARGS="-F $W/ssh_config %h" pdsh -R ssh -f "$PAR" -w "$RANGE" true
run pssh parallel-ssh -h "$W/hosts.txt" -p "$PAR" -x "-F $W/ssh_config" -t 120 true

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", a / b }'; }
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs; load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- \`true\` on $HOSTS host aliases of one local server, parallel $PAR; reproduce: \`bench/fanout.sh --hosts $HOSTS --parallel $PAR\`"
echo
echo "| tool | wall s | result | skiff faster by |"
echo "| --- | --- | --- | --- |"
echo "| skiff exec -H | ${T[skiff]} | ${OK[skiff]} | |"
echo "| pdsh -R ssh | ${T[pdsh]} | ${OK[pdsh]} | $(ratio "${T[pdsh]}" "${T[skiff]}") |"
echo "| parallel-ssh | ${T[pssh]} | ${OK[pssh]} | $(ratio "${T[pssh]}" "${T[skiff]}") |"
