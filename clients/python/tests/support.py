"""Shared by the Python client's tests: real ``skiff serve`` processes in
private home directories, and a scripted fake server for the cases a real
server never produces (malicious or broken servers)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import queue
import resource
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.dirname(HERE))

import skiff_client  # noqa: E402


def skiff_bin() -> str:
    """The ``skiff`` binary under test: ``$SKIFF_BIN``, else the debug
    build of this checkout."""
    path = os.environ.get("SKIFF_BIN") or os.path.join(REPO, "target", "debug", "skiff")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"no skiff binary at {path}: build it (cargo build) or set SKIFF_BIN")
    return path


def private_env(home: str) -> Dict[str, str]:
    """The environment of a process living in ``home`` (keys, state and
    known servers there, nothing of the real user's)."""
    env = dict(os.environ)
    for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "SKIFF_KEY_FILE", "SKIFF_KNOWN_SERVERS"):
        env.pop(var, None)
    env["HOME"] = home
    env["RUST_LOG"] = "warn"
    return env


class Server:
    """A running ``skiff serve`` with its own home, root and key.

    ``urls`` maps scheme (``tcp``, ``tcp+plain``, ``unix``) to the listening
    URL the server printed.
    """

    def __init__(
        self,
        extra: Sequence[str] = (),
        schemes: Sequence[str] = ("tcp", "tcp+plain", "unix"),
        fsize_limit: Optional[int] = None,
        root: Optional[str] = None,
    ) -> None:
        self.home = tempfile.mkdtemp(prefix="skiff-py-")
        self.root = root or os.path.join(self.home, "root")
        if root is None:
            os.mkdir(self.root)
        self.env = private_env(self.home)
        args = [skiff_bin(), "serve", "--root", self.root]
        for scheme in schemes:
            url = {
                "tcp": "tcp://127.0.0.1:0",
                "tcp+plain": "tcp+plain://127.0.0.1:0",
                "unix": f"unix://{self.home}/skiff.sock",
            }[scheme]
            args += ["--listen", url]
        args += list(extra)
        self.audit_log = os.path.join(self.home, "audit.log")
        if "--audit-log" not in extra:
            args += ["--audit-log", self.audit_log]

        def limits() -> None:
            if fsize_limit is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

        self.proc = subprocess.Popen(
            args,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            preexec_fn=limits,
        )
        self.urls: Dict[str, str] = {}
        self.fingerprint = ""
        lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._drain, args=(lines,), daemon=True).start()
        while len(self.urls) < len(schemes):
            try:
                line = lines.get(timeout=30)
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise RuntimeError("skiff serve did not start")
            if line.startswith("listening on "):
                url = line[len("listening on "):].strip()
                self.urls[url.split("://", 1)[0]] = url
            elif "fingerprint" in line:
                self.fingerprint = line.split()[-1]
        self.key_file = os.path.join(self.home, ".config", "skiff", "key")
        self.known_servers = os.path.join(self.home, ".config", "skiff", "known_servers")

    def _drain(self, lines: "queue.Queue[Optional[str]]") -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            lines.put(raw.decode("utf-8", "replace"))
        lines.put(None)

    @property
    def tls(self) -> str:
        """The TLS target as ``HOST:PORT``."""
        return self.urls["tcp"][len("tcp://"):]

    def connect(self, scheme: str = "tcp", **kw: Any) -> skiff_client.Session:
        """A Python client session to this server, pinning into its home."""
        kw.setdefault("key_file", self.key_file)
        kw.setdefault("known_servers", self.known_servers)
        return skiff_client.connect(self.urls[scheme], **kw)

    def cli(self, *args: str, input: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess:
        """Runs the Rust ``skiff`` client in this server's home."""
        return subprocess.run(
            [skiff_bin(), *args], env=self.env, input=input, capture_output=True, timeout=timeout
        )

    def pycli(self, *args: str, input: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess:
        """Runs ``skiff_client.py`` as a command in this server's home."""
        env = dict(self.env, SKIFF_KEY_FILE=self.key_file)
        return subprocess.run(
            [sys.executable, skiff_client.__file__, *args],
            env=env,
            input=input,
            capture_output=True,
            timeout=timeout,
        )

    def audit(self) -> List[Dict[str, Any]]:
        """The complete lines of the server's audit log so far."""
        try:
            with open(self.audit_log) as f:
                return [json.loads(line) for line in f if line.endswith("\n")]
        except FileNotFoundError:
            return []

    def wait_session_end(self, peer: str, timeout: float = 20) -> None:
        """Waits (bounded) until the server has logged the end of the
        session from ``peer`` (``HOST:PORT`` of a TCP client), i.e. it is
        done with that connection."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("event") == "session_end" and e.get("peer") == peer for e in self.audit()):
                return
            time.sleep(0.05)
        raise AssertionError(f"the server did not log the end of the session from {peer}")

    def stop(self) -> None:
        """Kills the server and removes its home."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.home, ignore_errors=True)


# ------------------------------------------------------------ fake servers

KEY = bytes(range(32))
USER = "alice"


def write_key_file(directory: str, user: str = USER, key: bytes = KEY) -> str:
    """A mode-0600 key file holding ``user``'s line."""
    path = os.path.join(directory, "key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# test key\n{user} {base64.b64encode(key).decode()}\n")
    return path


def send_frame(sock: socket.socket, header: Dict[str, Any], body: bytes = b"") -> None:
    """Writes one frame (the fake server's side)."""
    if body:
        header = dict(header, len=len(body))
    raw = json.dumps(header).encode()
    sock.sendall(struct.pack(">I", len(raw)) + raw + body)


def recv_frame(sock: socket.socket) -> Tuple[Dict[str, Any], bytes]:
    """Reads one frame (the fake server's side)."""

    def exact(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    (n,) = struct.unpack(">I", exact(4))
    h = json.loads(exact(n))
    body = exact(h.get("len", 0)) if h.get("len") else b""
    return h, body


class FakeServer:
    """A Unix-socket server that runs ``script(sock, hello)`` for one
    connection. ``handshake`` makes it answer the handshake correctly with
    :data:`KEY` first (no TLS: ``cb`` is 32 zero bytes). Frames it received
    are recorded in ``received``."""

    def __init__(self, script: Callable[[socket.socket], None], handshake: bool = True) -> None:
        self.dir = tempfile.mkdtemp(prefix="skiff-fake-")
        self.path = os.path.join(self.dir, "fake.sock")
        self.key_file = write_key_file(self.dir)
        self.received: List[Dict[str, Any]] = []
        self.error: Optional[BaseException] = None
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(1)
        self._script = script
        self._handshake = handshake
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def _run(self) -> None:
        self._listener.settimeout(20)
        try:
            conn, _ = self._listener.accept()
        except OSError as e:
            self.error = e
            return
        conn.settimeout(20)
        with conn:
            try:
                if self._handshake:
                    hello, _ = recv_frame(conn)
                    self.received.append(hello)
                    cn = base64.b64decode(hello["nonce"])
                    sn = os.urandom(32)
                    sp = hmac.new(KEY, b"skiff/1 server" + bytes(32) + cn + sn, hashlib.sha256).digest()
                    send_frame(conn, {"op": "challenge", "nonce": base64.b64encode(sn).decode(),
                                      "proof": base64.b64encode(sp).decode()})
                    auth, _ = recv_frame(conn)
                    self.received.append(auth)
                    send_frame(conn, {"op": "welcome", "server": "fake", "services": ["ping", "stat"]})
                self._script(conn)
            except (EOFError, OSError) as e:
                self.error = e

    def join(self) -> None:
        self._thread.join(timeout=20)
        self._listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)
