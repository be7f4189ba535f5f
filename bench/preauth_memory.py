#!/usr/bin/env python3
"""Server memory per connection that has not authenticated yet.

Starts `skiff serve` (the binary given, or target/release/skiff) with the
startup caps lifted, opens N connections from this process and measures the
server's resident memory before and after. Modes:

  raw    TCP only (the server waits in the TLS handshake)
  tls    TLS completed, then silence (the server waits for `hello`)
  worst  TLS, then all but the last byte of the largest header allowed
         before authentication (4 KiB)

  bench/preauth_memory.py [SKIFF_BIN] [N] [raw|tls|worst]

Needs `ulimit -n` above N + 100 in the calling shell.
"""
import os, re, shutil, socket, ssl, subprocess, sys, time
import tempfile
args = sys.argv[1:]
skiff = args[0] if len(args) > 0 else "target/release/skiff"
n = int(args[1]) if len(args) > 1 else 1000
mode = args[2] if len(args) > 2 else "worst"
home = tempfile.mkdtemp(prefix="skiff-mem-"); os.makedirs(home + "/root", exist_ok=True)
env = dict(os.environ, HOME=home, RUST_LOG="error")
p = subprocess.Popen([skiff, "serve", "--root", home + "/root", "--listen", "tcp://127.0.0.1:0", "--handshake-timeout", "120", "--max-startups", "5000", "--per-source-max-startups", "5000"], stdout=subprocess.PIPE, env=env, text=True)
url = None
for line in p.stdout:
    if line.startswith("listening on"):
        url = line.split()[-1]; break
host, port = url.split("//")[1].rsplit(":", 1); port = int(port)
def rss():
    return int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{p.pid}/status").read()).group(1))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
# warm up
for _ in range(20):
    s = socket.create_connection((host, port)); t = ctx.wrap_socket(s, server_hostname="x"); t.close()
time.sleep(1); before = rss()
conns = []
for i in range(n):
    s = socket.create_connection((host, port))
    if mode in ("tls", "worst"):
        s = ctx.wrap_socket(s, server_hostname="x")
    if mode == "worst":
        s.sendall((4096).to_bytes(4, "big") + b'{"op":"hello","pad":"' + b"p" * 4000)
    conns.append(s)
time.sleep(2); during = rss()
print(f"{n} {mode} connections: RSS {before} KiB -> {during} KiB: {(during-before)/n:.1f} KiB per connection")
p.kill()
p.wait()
shutil.rmtree(home, ignore_errors=True)
