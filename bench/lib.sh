# Shared by the bench/ scripts (sourced, not run).

# A free loopback TCP port.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# private_sshd_config DIR PORT... : a private OpenSSH server set-up in DIR
# (host key, client key DIR/client_key, its own authorized_keys, never the
# user's ~/.ssh) listening on 127.0.0.1 at each PORT, written to
# DIR/sshd_config. Callers append their own extra lines to that file.
private_sshd_config() {
    local dir="$1"; shift
    mkdir -p "$dir" /run/sshd 2>/dev/null || mkdir -p "$dir"
    chmod 700 "$dir"
    ssh-keygen -q -t ed25519 -N '' -f "$dir/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$dir/client_key"
    cp "$dir/client_key.pub" "$dir/authorized_keys"
    {
        local port
        for port in "$@"; do echo "Port $port"; done
        cat <<CONF
ListenAddress 127.0.0.1
HostKey $dir/host_key
AuthorizedKeysFile $dir/authorized_keys
PidFile $dir/sshd.pid
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
CONF
    } >"$dir/sshd_config"
}

# Stops every process whose pid is in the caller's PIDS array and waits for
# it (the scripts' exit trap).
stop_pids() {
    local p
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
}

wait_line() { # FILE PATTERN: waits (20 s at most) for a line matching PATTERN
    local i
    for i in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
    echo "$(basename "$0"): timed out waiting for '$2' in $1" >&2; cat "$1" >&2; return 1
}
