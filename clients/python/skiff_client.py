#!/usr/bin/env python3
"""A client of the skiff protocol using only Python's standard library.

skiff is an authenticated remote-exec and file-transfer server (``skiff
serve``). This module speaks its wire protocol (docs/PROTOCOL.md in the
skiff repository) directly: frames of ``u32 big-endian length | JSON header
| body``, TLS 1.3 with certificate pinning, and the mutual HMAC handshake
bound to the TLS certificate.

Quick start::

    import skiff_client
    with skiff_client.connect("127.0.0.1:7878") as s:
        code, out, err = s.exec("uname -a")
        s.put("report.csv", "inbox/")          # verified, atomic on the server
        s.get("inbox/report.csv", "/tmp/copy.csv")

Python 3.9 or later; no third-party module is needed. When the optional
``blake3`` module is importable, transfers are checked with BLAKE3 (the
protocol's default); otherwise with SHA-256, which every skiff server also
verifies. Either way the whole file is checked before it is put in place.

It is also a small command line (exit codes as the ``skiff`` binary's)::

    python3 skiff_client.py exec HOST -- uname -a
    python3 skiff_client.py put HOST local.txt remote/dir/
    python3 skiff_client.py get HOST remote/file.txt ./
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import hmac
import json
import os
import queue
import select
import socket
import ssl
import stat as stat_module
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import (
    IO,
    Any,
    BinaryIO,
    Callable,
    Dict,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

try:  # Optional: the protocol's default checksum, when installed.
    import blake3 as _blake3  # type: ignore
except ImportError:  # pragma: no cover - depends on the environment
    _blake3 = None

__all__ = [
    "connect",
    "Session",
    "Entry",
    "ExecResult",
    "ExecStream",
    "Transfer",
    "SkiffError",
    "ConnectError",
    "AuthenticationError",
    "CertificateChangedError",
    "ProtocolError",
    "RemoteError",
    "ChecksumError",
    "DEFAULT_PORT",
]

#: The default TCP port of ``skiff serve``.
DEFAULT_PORT = 7878
#: Protocol version sent in ``hello``.
PROTOCOL_VERSION = 1
#: Largest JSON header a frame may carry (PROTOCOL.md 2.1).
MAX_HEADER = 64 * 1024
#: Largest body a frame may carry.
MAX_BODY = 8 * 1024 * 1024
#: Size of the ``data`` chunks this client sends (as the Rust client).
CHUNK = 1024 * 1024
#: Size of ``stdin`` chunks.
STDIN_CHUNK = 64 * 1024
#: The exec stdin credit window (PROTOCOL.md 5.2).
STDIN_WINDOW = 1024 * 1024
#: Connect + TLS + handshake budget, as the Rust client's.
CONNECT_TIMEOUT = 10.0
#: How long to wait for a server that should be answering a file operation.
IO_TIMEOUT = 300.0

_SERVER_LABEL = b"skiff/1 server"
_CLIENT_LABEL = b"skiff/1 client"
_NO_BINDING = bytes(32)
_RECV_SIZE = 256 * 1024


# --------------------------------------------------------------------- errors


class SkiffError(Exception):
    """Base of every error this module raises.

    ``code`` is the protocol's error code (``not_found``, ``auth_failed``,
    ...) when there is one, else ``None``. Codes this module does not know
    are kept as they came: treat them as a generic failure.
    """

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} [{self.code}]" if self.code else self.message


class ConnectError(SkiffError):
    """No connection could be made (refused, unreachable, DNS, timeout)."""


class AuthenticationError(SkiffError):
    """The handshake failed: wrong key, unknown user, rate limit, or a man
    in the middle (the server's proof did not verify)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "auth_failed")


class CertificateChangedError(SkiffError):
    """The server's certificate differs from the pinned or given one."""


class ProtocolError(SkiffError):
    """The server sent something that breaks the protocol, or the
    connection broke; the session cannot be used any more."""


class RemoteError(SkiffError):
    """The server refused or failed an operation (an ``error`` frame). The
    session stays usable unless the server closed it."""


class ChecksumError(SkiffError):
    """Downloaded data does not match the whole-file digest the server
    sent; the local destination was not touched."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "checksum_mismatch")


# ---------------------------------------------------------------- checksums


def hash_name() -> str:
    """The whole-file checksum this client uses: ``blake3`` when the
    ``blake3`` module is importable, else ``sha256``."""
    return "blake3" if _blake3 is not None else "sha256"


def _new_hasher(alg: str) -> Any:
    if alg == "blake3":
        if _blake3 is None:
            raise SkiffError("blake3 requested but the blake3 module is not installed")
        return _blake3.blake3()
    return hashlib.sha256()


# ------------------------------------------------------------------- frames


def encode_frame(header: Dict[str, Any], body: bytes = b"") -> bytes:
    """One frame as bytes: length, JSON header (``op`` first), body."""
    h = dict(header)
    if body:
        h["len"] = len(body)
    raw = json.dumps(h, separators=(",", ":"), ensure_ascii=False).encode()
    if not 1 <= len(raw) <= MAX_HEADER:
        raise ValueError(f"frame header of {len(raw)} bytes is over the limit")
    if len(body) > MAX_BODY:
        raise ValueError(f"frame body of {len(body)} bytes is over the limit")
    return struct.pack(">I", len(raw)) + raw + bytes(body)


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out and k in ("op", "len"):
            raise ValueError(f"duplicate {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_header(raw: bytes) -> Tuple[Dict[str, Any], int]:
    """Parses and checks a frame header; returns it and its body length.

    Raises :class:`ProtocolError` (code ``bad_frame`` / ``too_large``) for
    anything PROTOCOL.md section 2.1 forbids.
    """
    try:
        text = raw.decode("utf-8")
        if text.startswith("\ufeff"):
            raise ValueError("BOM")
        obj = json.loads(
            text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
        )
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"server sent an invalid frame header: {e}", "bad_frame")
    if not isinstance(obj, dict) or not isinstance(obj.get("op"), str):
        raise ProtocolError("server sent a frame without a string \"op\"", "bad_frame")
    length = obj.get("len", 0)
    if "len" in obj and (type(length) is not int or length < 0):
        raise ProtocolError("server sent a frame with an invalid \"len\"", "bad_frame")
    if length > MAX_BODY:
        raise ProtocolError(f"server announced a body of {length} bytes", "too_large")
    return obj, length


class _FrameReader:
    """Reads whole frames from a socket, with limits checked before any
    memory is reserved."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def buffered(self) -> bool:
        """Whether bytes are waiting that ``select`` on the socket would not
        report (our buffer, or TLS records already decrypted)."""
        if self._buf:
            return True
        pending = getattr(self._sock, "pending", None)
        return bool(pending and pending() > 0)

    def _read_exact(self, n: int, started: bool) -> bytes:
        if n > _RECV_SIZE and len(self._buf) < n:
            return self._read_large(n)
        while len(self._buf) < n:
            self._buf += self._recv_some(_RECV_SIZE, started)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _read_large(self, n: int) -> bytes:
        """A large body, received straight into its own buffer."""
        out = bytearray(n)
        have = len(self._buf)
        out[:have] = self._buf
        self._buf.clear()
        view = memoryview(out)
        while have < n:
            try:
                got = self._sock.recv_into(view[have:], n - have)
            except socket.timeout:
                raise ProtocolError("the server stopped answering", "timeout")
            except (OSError, ssl.SSLError) as e:
                raise ProtocolError(f"connection lost: {e}")
            if not got:
                raise ProtocolError("the server closed the connection inside a frame")
            have += got
        return bytes(out)

    def _recv_some(self, size: int, started: bool) -> bytes:
        try:
            chunk = self._sock.recv(size)
        except socket.timeout:
            raise ProtocolError("the server stopped answering", "timeout")
        except (OSError, ssl.SSLError) as e:
            raise ProtocolError(f"connection lost: {e}")
        if not chunk:
            if started or self._buf:
                raise ProtocolError("the server closed the connection inside a frame")
            raise ProtocolError("the server closed the connection")
        return chunk

    def read(self) -> Tuple[Dict[str, Any], bytes]:
        """The next frame's header and body."""
        (hlen,) = struct.unpack(">I", self._read_exact(4, False))
        if hlen == 0:
            raise ProtocolError("server sent an empty frame header", "bad_frame")
        if hlen > MAX_HEADER:
            raise ProtocolError(f"server announced a header of {hlen} bytes", "too_large")
        header, blen = decode_header(self._read_exact(hlen, True))
        body = self._read_exact(blen, True) if blen else b""
        return header, body


# ----------------------------------------------------------------- settings


def config_dir() -> str:
    """``$XDG_CONFIG_HOME/skiff`` (when absolute) or ``~/.config/skiff``,
    as the Rust client."""
    xdg = os.environ.get("XDG_CONFIG_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "skiff")


def default_key_file() -> str:
    """``$SKIFF_KEY_FILE``, else ``~/.config/skiff/key``."""
    return os.environ.get("SKIFF_KEY_FILE") or os.path.join(config_dir(), "key")


def default_known_servers() -> str:
    """``$SKIFF_KNOWN_SERVERS``, else ``~/.config/skiff/known_servers``."""
    return os.environ.get("SKIFF_KNOWN_SERVERS") or os.path.join(config_dir(), "known_servers")


def load_key(path: str, user: Optional[str] = None) -> Tuple[str, bytes]:
    """Reads a key file of ``NAME BASE64KEY`` lines (``#`` comments) and
    returns ``(user, key)``: the line for ``user``, else the first.

    Like the Rust client (and ssh), a file that group or others may access
    is refused.
    """
    try:
        st = os.stat(path)
        if st.st_mode & 0o077:
            raise SkiffError(
                f"{path}: permissions {stat_module.S_IMODE(st.st_mode):04o} are too open; "
                f"run chmod 600 {path}"
            )
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise SkiffError(f"cannot read key file {path}: {e.strerror or e}")
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("expected `NAME BASE64KEY`")
            key = base64.b64decode(parts[1], validate=True)
            if len(key) != 32:
                raise ValueError(f"key is {len(key)} bytes, expected 32")
        except ValueError as e:
            raise SkiffError(f"{path} line {number}: {e}")
        lines.append((parts[0], key))
    for name, key in lines:
        if user is None or name == user:
            return name, key
    if not lines:
        raise SkiffError(f"{path}: no key line")
    raise SkiffError(f"{path}: no key for user {user!r}")


@dataclass
class Target:
    """Where to connect, parsed from ``HOST[:PORT]``, ``[V6]:PORT``,
    ``USER@HOST``, ``tcp://``, ``tcp+plain://`` or ``unix:///PATH``."""

    scheme: str  #: ``tcp`` (TLS), ``tcp+plain`` or ``unix``
    host: str = ""
    port: int = DEFAULT_PORT
    path: str = ""  #: the socket path, for ``unix``
    user: Optional[str] = None

    @classmethod
    def parse(cls, text: str, default_port: int = DEFAULT_PORT) -> "Target":
        """Parses a target as the ``skiff`` binary does."""
        user = None
        scheme, sep, rest = text.partition("://")
        if not sep:
            scheme, rest = "tcp", text
        if scheme == "unix":
            if not rest:
                raise ValueError(f"no socket path in {text!r}")
            return cls("unix", path=rest)
        if scheme not in ("tcp", "tcp+plain"):
            raise ValueError(f"unknown scheme {scheme!r} (use tcp://, tcp+plain:// or unix://)")
        if "@" in rest:
            user, rest = rest.rsplit("@", 1)
        host, port = rest, default_port
        if rest.startswith("["):
            host, _, after = rest[1:].partition("]")
            if after:
                if not after.startswith(":"):
                    raise ValueError(f"expected ':PORT' after ']' in {text!r}")
                port = _port(after[1:], text)
        elif rest.count(":") == 1:
            host, p = rest.split(":")
            port = _port(p, text)
        if not host:
            raise ValueError(f"no host in {text!r}")
        return cls(scheme, host=host, port=port, user=user or None)

    @property
    def host_port(self) -> str:
        """``HOST:PORT`` with IPv6 in brackets: the known-servers name."""
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{h}:{self.port}"

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        return f"{self.scheme}://{self.host_port}"


def _port(text: str, target: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"invalid port {text!r} in {target!r}")
    return int(text)


def fingerprint_of(cert_der: bytes) -> str:
    """The certificate fingerprint as skiff prints it: ``SHA256:<hex>``."""
    return "SHA256:" + hashlib.sha256(cert_der).hexdigest()


def _normalize_fingerprint(fp: str) -> str:
    hexpart = fp.strip()
    if hexpart.upper().startswith("SHA256:"):
        hexpart = hexpart[7:]
    return "SHA256:" + hexpart.replace(":", "").lower()


def _pinned(known_servers: str, name: str) -> Optional[str]:
    try:
        with open(known_servers, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == name:
                    return parts[1]
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SkiffError(f"{known_servers}: {e.strerror or e}")
    return None


def _pin(known_servers: str, name: str, fp: str) -> None:
    # Pinning is a convenience on top of the proofs: failure to write the
    # file does not stop the connection (as in the Rust client).
    try:
        os.makedirs(os.path.dirname(known_servers) or ".", exist_ok=True)
        fd = os.open(known_servers, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(f"{name} {fp}\n")
    except OSError:
        pass


# ------------------------------------------------------------------ results


@dataclass
class Entry:
    """One filesystem object on the server, as ``ls`` and ``stat`` give it."""

    path: str
    kind: str  #: ``file``, ``dir``, ``symlink`` or ``other``
    size: int = 0
    mode: int = 0
    mtime_ns: int = 0
    target: Optional[str] = None  #: a symlink's target

    @classmethod
    def from_json(cls, obj: Dict[str, Any]) -> "Entry":
        """An entry from its protocol form (unknown fields ignored)."""
        return cls(
            path=str(obj.get("path", "")),
            kind=str(obj.get("kind", "other")),
            size=int(obj.get("size", 0)),
            mode=int(obj.get("mode", 0)),
            mtime_ns=int(obj.get("mtime_ns", 0)),
            target=obj.get("target"),
        )


@dataclass
class ExecResult:
    """How a command ended, with all of its output.

    Unpacks as ``code, stdout, stderr``. ``code`` is the exit code, or
    128+N when the command was killed by signal N (as a shell reports it).
    """

    code: int
    stdout: bytes = b""
    stderr: bytes = b""
    signal: Optional[int] = None
    timed_out: bool = False

    def __iter__(self) -> Iterator[Any]:
        return iter((self.code, self.stdout, self.stderr))


@dataclass
class Transfer:
    """What a verified ``put`` or ``get`` moved."""

    size: int  #: the file's size
    digest: str  #: its whole-file digest (hex)
    hash: str  #: ``blake3`` or ``sha256``
    offset: int = 0  #: bytes already there when resuming


StdinType = Union[None, bytes, bytearray, memoryview, str, BinaryIO, IO[bytes]]


# ------------------------------------------------------------------ session

_F = TypeVar("_F", bound=Callable[..., Any])


def _in_step(method: _F) -> _F:
    """Marks an operation that must leave the session in step: if it stops
    half way for a reason it did not handle (Ctrl-C, a local I/O error, a
    bug), the rest of its frames are unaccounted for, so the session is
    closed rather than left out of step with the server."""

    @functools.wraps(method)
    def wrapper(self: "Session", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except SkiffError:
            raise  # raised after the session was brought back in step, or closed
        except BaseException as e:
            self._fail(f"interrupted: {e!r}")
            raise

    return wrapper  # type: ignore[return-value]



def connect(
    target: str,
    key_file: Optional[str] = None,
    user: Optional[str] = None,
    fingerprint: Optional[str] = None,
    timeout: float = CONNECT_TIMEOUT,
    known_servers: Optional[str] = "",
    port: int = DEFAULT_PORT,
    key: Optional[bytes] = None,
) -> "Session":
    """Connects to ``target`` and authenticates; returns a :class:`Session`.

    - ``target``: ``HOST[:PORT]`` / ``[V6]:PORT`` / ``USER@HOST`` (TLS),
      ``tcp://``, ``tcp+plain://HOST:PORT`` (no TLS, loopback servers) or
      ``unix:///PATH``.
    - ``key_file``: default ``$SKIFF_KEY_FILE``, then ``~/.config/skiff/key``;
      ``user`` (or ``USER@`` in the target) selects a line, else the first.
      ``key`` (32 raw bytes, with ``user``) bypasses the file.
    - ``fingerprint``: ``SHA256:<hex>`` the server's certificate must have.
      Without it the known-servers file is used as by the Rust client
      (``known_servers``: default ``$SKIFF_KNOWN_SERVERS``, then
      ``~/.config/skiff/known_servers``; ``None`` disables pinning): a
      changed certificate is refused before anything is sent, and a new one
      is pinned only after the server proved it knows the key.
    - ``timeout``: seconds for TCP connect + TLS + handshake together.
    """
    t = Target.parse(target, port)
    if key is None:
        name, key = load_key(key_file or default_key_file(), user or t.user)
    else:
        name = user or t.user or ""
        if len(key) != 32 or not name:
            raise SkiffError("a raw key must be 32 bytes and come with a user name")
    if known_servers == "":
        known_servers = default_known_servers()
    return Session._open(t, name, key, fingerprint, timeout, known_servers)


class Session:
    """An authenticated connection to a skiff server.

    Operations are answered in order; one session runs one operation at a
    time (use one session per thread). Use it as a context manager, or call
    :meth:`close`. After a :class:`ProtocolError` the session is closed.
    """

    def __init__(self, sock: socket.socket, welcome: Dict[str, Any], target: Target) -> None:
        self._sock = sock
        self._reader = _FrameReader(sock)
        self._broken: Optional[str] = None
        self.welcome = welcome  #: the server's ``welcome`` message
        self.target = target  #: where this session is connected
        self._io_timeout: Optional[float] = IO_TIMEOUT

    @property
    def io_timeout(self) -> Optional[float]:
        """Seconds any single wait for the server (an answer, or room to
        send) may take before the session is given up with a
        ``ProtocolError`` of code ``timeout``; ``None`` waits forever."""
        return self._io_timeout

    @io_timeout.setter
    def io_timeout(self, seconds: Optional[float]) -> None:
        self._io_timeout = seconds
        if self._broken is None:
            self._sock.settimeout(seconds)

    # ---------------------------------------------------------- connecting

    @classmethod
    def _open(
        cls,
        t: Target,
        user: str,
        key: bytes,
        fingerprint: Optional[str],
        timeout: float,
        known_servers: Optional[str],
    ) -> "Session":
        deadline = time.monotonic() + timeout
        raw = _dial(t, timeout)
        sock: socket.socket = raw
        cb = _NO_BINDING
        to_pin: Optional[str] = None
        try:
            if t.scheme == "tcp":
                sock, cert = _tls_wrap(raw, t.host, deadline)
                cb = hashlib.sha256(cert).digest()
                seen = fingerprint_of(cert)
                to_pin = _check_trust(t, seen, fingerprint, known_servers)
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            session = cls(sock, {}, t)
            session.welcome = session._handshake(user, key, cb)
        except BaseException:
            _close_quietly(sock)
            raise
        if to_pin is not None and known_servers:
            _pin(known_servers, t.host_port, to_pin)
        sock.settimeout(session.io_timeout)
        return session

    def _handshake(self, user: str, key: bytes, cb: bytes) -> Dict[str, Any]:
        cn = os.urandom(32)
        self._send({"op": "hello", "v": PROTOCOL_VERSION, "user": user, "nonce": _b64(cn)})
        try:
            h, _ = self._reader.read()
        except ProtocolError as e:
            if e.code == "timeout":
                raise SkiffError("the server did not answer the handshake in time", "timeout")
            raise
        if h["op"] == "error":
            raise _handshake_error(h)
        if h["op"] != "challenge":
            raise ProtocolError(f"expected \"challenge\", got {h['op']!r}", "bad_frame")
        try:
            sn = base64.b64decode(str(h.get("nonce", "")), validate=True)
            proof = base64.b64decode(str(h.get("proof", "")), validate=True)
        except ValueError:
            raise ProtocolError("the server's challenge is not valid base64", "bad_frame")
        if len(sn) != 32:
            raise ProtocolError("the server's nonce is not 32 bytes", "bad_frame")
        expected = server_proof(key, cb, cn, sn)
        if not hmac.compare_digest(expected, proof):
            # Wrong key, unknown user, or a relay with another certificate:
            # stop without sending our proof.
            raise AuthenticationError(
                "authentication failed: the server's proof is wrong (wrong key, "
                "unknown user, or a man in the middle)"
            )
        self._send({"op": "auth", "proof": _b64(client_proof(key, cb, cn, sn))})
        h, _ = self._reader.read()
        if h["op"] == "error":
            raise _handshake_error(h)
        if h["op"] != "welcome":
            raise ProtocolError(f"expected \"welcome\", got {h['op']!r}", "bad_frame")
        return h

    # ------------------------------------------------------------- framing

    def _send(self, header: Dict[str, Any], body: bytes = b"") -> None:
        self._check_usable()
        data = encode_frame(header, body)
        try:
            self._sock.sendall(data)  # one write per frame
        except socket.timeout:
            self._fail("the server stopped reading")
            raise ProtocolError("the server stopped reading", "timeout")
        except (OSError, ssl.SSLError) as e:
            self._fail(str(e))
            raise ProtocolError(f"connection lost: {e}")

    def _recv(self) -> Tuple[Dict[str, Any], bytes]:
        self._check_usable()
        try:
            return self._reader.read()
        except ProtocolError as e:
            self._fail(e.message)
            raise

    def _answer(self, *expected: str) -> Tuple[Dict[str, Any], bytes]:
        """The next frame, which must be one of ``expected`` or an error."""
        h, body = self._recv()
        op = h["op"]
        if op == "error":
            raise self._remote_error(h)
        if op not in expected:
            self._fail(f"unexpected {op!r}")
            raise ProtocolError(f"expected {' or '.join(expected)}, got {op!r}", "bad_frame")
        return h, body

    def _remote_error(self, h: Dict[str, Any]) -> RemoteError:
        code = str(h.get("code", "internal"))
        if code in ("busy", "shutting_down"):
            # The server closes the connection right after this one.
            self._fail(f"server {code.replace('_', ' ')}")
        return RemoteError(str(h.get("message", code)), code)

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise ProtocolError(f"the session is closed ({self._broken})")

    def _fail(self, why: str) -> None:
        if self._broken is None:
            self._broken = why
            _close_quietly(self._sock)

    def _readable(self, timeout: Optional[float], extra: Sequence[int] = ()) -> List[int]:
        """File descriptors ready within ``timeout``: ``-1`` stands for the
        session (a frame has at least begun to arrive)."""
        if self._reader.buffered():
            return [-1]
        fd = self._sock.fileno()
        try:
            ready, _, _ = select.select([fd, *extra], [], [], timeout)
        except (OSError, ValueError) as e:
            self._fail(str(e))
            raise ProtocolError(f"connection lost: {e}")
        return [-1 if r == fd else r for r in ready]

    # ---------------------------------------------------------------- life

    @property
    def closed(self) -> bool:
        """Whether the session can no longer be used."""
        return self._broken is not None

    def close(self) -> None:
        """Closes the connection (idempotent)."""
        self._fail("closed by the client")

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def services(self) -> List[str]:
        """The operations the server offers (``exec`` is absent under
        ``--no-exec``)."""
        return list(self.welcome.get("services", []))

    # ---------------------------------------------------------------- ping

    @_in_step
    def ping(self, payload: bytes = b"") -> float:
        """One round trip; returns its duration in seconds. The server
        echoes ``payload`` and the echo is checked."""
        start = time.monotonic()
        self._send({"op": "ping"}, payload)
        _, body = self._answer("pong")
        if body != payload:
            raise ProtocolError("the pong does not carry the ping's payload", "bad_frame")
        return time.monotonic() - start

    # ---------------------------------------------------------------- exec

    @_in_step
    def exec_stream(
        self,
        cmd: Union[str, Sequence[str]],
        stdin: StdinType = None,
        timeout: Optional[float] = None,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
    ) -> "ExecStream":
        """Starts a command and returns an :class:`ExecStream` that yields
        ``("stdout" | "stderr", bytes)`` chunks as the server sends them.

        ``cmd`` is a string run by ``sh -c`` on the server, or an argv list
        run directly. ``stdin`` is bytes, a text string (UTF-8), a binary
        file object (read on a helper thread, so a terminal works), or
        ``None`` (no input). ``timeout`` (seconds) is enforced by the
        server, which kills the command's whole process group. ``env`` adds
        variables; ``cwd`` is relative to the server's root.
        """
        req: Dict[str, Any] = {"op": "exec"}
        if isinstance(cmd, str):
            req["cmd"] = cmd
        else:
            argv = [str(a) for a in cmd]
            if not argv:
                raise ValueError("argv must not be empty")
            req["argv"] = argv
        if cwd is not None:
            req["cwd"] = cwd
        if env:
            req["env"] = {str(k): str(v) for k, v in env.items()}
        if timeout is not None:
            req["timeout_ms"] = max(1, int(timeout * 1000))
        self._send(req)
        return ExecStream(self, _StdinSource.of(stdin), timeout)

    def exec(
        self,
        cmd: Union[str, Sequence[str]],
        stdin: StdinType = None,
        timeout: Optional[float] = None,
        env: Optional[Dict[str, str]] = None,
        cwd: Optional[str] = None,
    ) -> ExecResult:
        """Runs a command and returns its :class:`ExecResult`, which unpacks
        as ``(code, stdout, stderr)``. Arguments as :meth:`exec_stream`."""
        out: List[bytes] = []
        err: List[bytes] = []
        with self.exec_stream(cmd, stdin, timeout, env, cwd) as stream:
            for name, chunk in stream:
                (out if name == "stdout" else err).append(chunk)
        result = stream.result
        assert result is not None
        result.stdout = b"".join(out)
        result.stderr = b"".join(err)
        return result

    # --------------------------------------------------------------- files

    @_in_step
    def ls(self, path: str = "/", recursive: bool = False) -> List[Entry]:
        """Lists a directory (or describes a file); with ``recursive`` the
        whole tree, parents before their contents. Symlinks are not followed."""
        self._send({"op": "ls", "path": path, "recursive": recursive})
        entries: List[Entry] = []
        while True:
            h, body = self._answer("entries")
            try:
                batch = json.loads(body.decode("utf-8")) if body else []
            except (UnicodeDecodeError, ValueError):
                self._fail("bad entries")
                raise ProtocolError("the server sent an unreadable listing", "bad_frame")
            entries.extend(Entry.from_json(e) for e in batch if isinstance(e, dict))
            if not h.get("more", False):
                return entries

    @_in_step
    def stat(self, path: str) -> Entry:
        """Describes one path (a final symlink is described, not followed)."""
        self._send({"op": "stat", "path": path})
        h, _ = self._answer("stat_ok")
        return Entry.from_json(h.get("entry") or {})

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists on the server."""
        try:
            self.stat(path)
            return True
        except RemoteError as e:
            if e.code == "not_found":
                return False
            raise

    def rm(self, path: str, recursive: bool = False) -> None:
        """Removes a file or symlink; a directory needs ``recursive``."""
        self._simple({"op": "rm", "path": path, "recursive": recursive})

    def mkdir(
        self,
        path: str,
        parents: bool = False,
        exist_ok: bool = False,
        mode: Optional[int] = None,
    ) -> None:
        """Creates a directory (with ``parents``, also missing parents)."""
        req: Dict[str, Any] = {"op": "mkdir", "path": path, "parents": parents, "exist_ok": exist_ok}
        if mode is not None:
            req["mode"] = mode
        self._simple(req)

    def mv(self, src: str, dst: str, force: bool = False) -> None:
        """Renames ``src`` to ``dst`` (into ``dst`` when it is a directory)."""
        self._simple({"op": "mv", "from": src, "to": dst, "force": force})

    def symlink(self, path: str, target: str, force: bool = False) -> None:
        """Creates a symlink at ``path`` pointing to ``target`` (relative,
        and staying inside the server's root)."""
        self._simple({"op": "put", "path": path, "kind": "symlink", "target": target, "force": force})

    @_in_step
    def _simple(self, req: Dict[str, Any]) -> None:
        self._send(req)
        self._answer("ok")

    def put(
        self,
        local: str,
        remote: str,
        force: bool = False,
        resume: bool = False,
        mode: Optional[int] = None,
        progress: Optional[Callable[[int, int], None]] = None,
    ) -> Transfer:
        """Uploads the file ``local`` to ``remote`` (into it when ``remote``
        ends with ``/``), keeping mode and mtime.

        The server writes a hidden partial file, checks the whole-file
        digest, fsyncs and renames it into place: readers never see half a
        file. An existing destination needs ``force``. With ``resume`` an
        interrupted upload continues from the server's partial file; the
        digest still covers the whole file. ``progress(done, total)`` is
        called after each chunk.
        """
        if remote.endswith("/") or remote == "":
            remote = remote + os.path.basename(local)
        with open(local, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat_module.S_ISREG(st.st_mode):
                raise SkiffError(f"{local}: not a regular file")
            return self.put_fileobj(
                f,
                remote,
                st.st_size,
                force=force,
                resume=resume,
                mode=stat_module.S_IMODE(st.st_mode) if mode is None else mode,
                mtime_ns=st.st_mtime_ns,
                progress=progress,
            )

    def put_bytes(self, remote: str, data: bytes, force: bool = False, mode: Optional[int] = None) -> Transfer:
        """Uploads ``data`` as the file ``remote`` (verified, atomic)."""
        import io

        return self.put_fileobj(io.BytesIO(data), remote, len(data), force=force, mode=mode)

    @_in_step
    def put_fileobj(
        self,
        f: BinaryIO,
        remote: str,
        size: int,
        force: bool = False,
        resume: bool = False,
        mode: Optional[int] = None,
        mtime_ns: Optional[int] = None,
        progress: Optional[Callable[[int, int], None]] = None,
    ) -> Transfer:
        """Uploads ``size`` bytes read from the seekable binary file ``f``.
        See :meth:`put`."""
        alg = hash_name()
        req: Dict[str, Any] = {"op": "put", "path": remote, "size": size, "hash": alg, "force": force}
        if resume:
            req["resume"] = True
        if mode is not None:
            req["mode"] = mode & 0o7777
        if mtime_ns is not None:
            req["mtime_ns"] = mtime_ns
        self._send(req)
        hasher = _new_hasher(alg)
        offset = 0
        ready = False
        if resume:
            # A resume must wait for the server's offset.
            h, _ = self._answer("ready")
            offset = _int_field(h, "offset")
            if offset > size:
                self._fail("bad offset")
                raise ProtocolError(f"server asked to resume at {offset} of {size} bytes")
            ready = True
            _hash_prefix(f, hasher, offset)
        sent = offset
        while sent < size:
            try:
                chunk = f.read(min(CHUNK, size - sent))
            except OSError as e:
                self._send({"op": "end", "abort": True})
                self._drain_put(ready)
                raise SkiffError(f"{remote}: reading the local file failed: {e}", _errno_code(e))
            if not chunk:
                self._send({"op": "end", "abort": True})
                self._drain_put(ready)
                raise SkiffError(f"{remote}: the local file shrank while it was read")
            hasher.update(chunk)
            self._send({"op": "data"}, chunk)
            sent += len(chunk)
            if progress:
                progress(sent, size)
            if not ready and self._readable(0):
                # The server answered early: `ready` (read it now) or a
                # refusal (stop sending; it discards up to our `end`).
                h, _ = self._recv()
                if h["op"] == "error":
                    self._send({"op": "end", "abort": True})
                    raise self._remote_error(h)
                if h["op"] != "ready":
                    self._fail("unexpected frame")
                    raise ProtocolError(f"expected ready, got {h['op']!r}", "bad_frame")
                ready = True
        if f.read(1):
            self._send({"op": "end", "abort": True})
            self._drain_put(ready)
            raise SkiffError(f"{remote}: the local file grew while it was read")
        digest = hasher.hexdigest()
        self._send({"op": "end", "size": size, "digest": digest})
        if not ready:
            self._answer("ready")
        h, _ = self._answer("done")
        if _int_field(h, "size") != size or not hmac.compare_digest(str(h.get("digest", "")), digest):
            raise ChecksumError(f"{remote}: the server stored something else than was sent")
        return Transfer(size, digest, alg, offset)

    def _drain_put(self, ready: bool) -> None:
        """After our own abort: read the upload's answers (the server
        answers an abort with an error)."""
        try:
            if not ready:
                self._answer("ready")
            self._answer("done")
        except RemoteError:
            pass

    @_in_step
    def get(
        self,
        remote: str,
        local: str,
        force: bool = True,
        resume: bool = False,
        progress: Optional[Callable[[int, int], None]] = None,
    ) -> Transfer:
        """Downloads ``remote`` to ``local`` (into it when it is a
        directory), keeping mode and mtime.

        Data goes to ``.NAME.skiff-part`` beside the destination (the same
        name as the Rust client's, so either can resume the other's
        download), is checked against the whole-file digest, fsynced and
        renamed into place. A mismatch raises :class:`ChecksumError` and
        leaves the destination untouched. With ``resume`` an existing
        partial file is continued. Without ``force`` an existing
        destination is an error (code ``exists``).
        """
        if local.endswith("/") or os.path.isdir(local):
            local = os.path.join(local, remote.rstrip("/").rsplit("/", 1)[-1])
        if not force and os.path.lexists(local):
            raise SkiffError(f"{local}: file exists (use force=True to overwrite)", "exists")
        directory, name = os.path.split(os.path.abspath(local))
        part = os.path.join(directory, part_name(name))
        offset = 0
        if resume:
            try:
                st = os.lstat(part)
                if stat_module.S_ISREG(st.st_mode):
                    offset = st.st_size
            except FileNotFoundError:
                pass
        alg = hash_name()
        self._send({"op": "get", "path": remote, "offset": offset, "hash": alg})
        head, _ = self._answer("file")
        size = _int_field(head, "size")
        start = _int_field(head, "offset")
        if start not in (0, offset):
            self._fail("bad offset")
            raise ProtocolError(f"server sent offset {start}, asked {offset}", "bad_frame")
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        if start == 0:
            flags |= os.O_TRUNC
        try:
            fd = os.open(part, flags, 0o600)
        except OSError as e:
            self._skip_download()
            raise SkiffError(f"{part}: {e.strerror or e}", _errno_code(e))
        with os.fdopen(fd, "r+b") as f:
            hasher = _new_hasher(alg)
            if start:
                _hash_prefix(f, hasher, start)
                f.seek(start)
                f.truncate()
            received = start
            while True:
                h, body = self._recv()
                op = h["op"]
                if op == "data":
                    received += len(body)
                    if received > size:
                        self._fail("too much data")
                        raise ProtocolError(f"{remote}: the server sent more than {size} bytes", "too_large")
                    hasher.update(body)
                    try:
                        f.write(body)
                    except OSError as e:
                        self._skip_download()
                        raise SkiffError(f"{part}: {e.strerror or e}", _errno_code(e))
                    if progress:
                        progress(received, size)
                elif op == "end":
                    break
                elif op == "error":
                    f.flush()
                    raise self._remote_error(h)  # partial data kept for resume
                else:
                    self._fail("unexpected frame")
                    raise ProtocolError(f"expected data or end, got {op!r}", "bad_frame")
            digest = hasher.hexdigest()
            if (
                _int_field(h, "size") != received
                or not hmac.compare_digest(str(h.get("digest", "")), digest)
            ):
                f.close()
                _unlink_quietly(part)
                raise ChecksumError(
                    f"{remote}: received {received} bytes with digest {digest}, the server "
                    f"announced {h.get('size')} bytes with {h.get('digest')}"
                )
            f.flush()
            os.fchmod(f.fileno(), _int_field(head, "mode", 0o644) & 0o777)
            if "mtime_ns" in head:
                t = _int_field(head, "mtime_ns")
                os.utime(f.fileno(), ns=(t, t))
            os.fsync(f.fileno())
        os.rename(part, local)
        _fsync_dir(directory)
        return Transfer(received, digest, alg, start)

    def _skip_download(self) -> None:
        """Reads and discards a download we cannot store."""
        while True:
            h, _ = self._recv()
            if h["op"] in ("end", "error"):
                return

    @_in_step
    def get_bytes(self, remote: str, limit: int = 64 * 1024 * 1024) -> bytes:
        """Downloads ``remote`` into memory (at most ``limit`` bytes) and
        checks its digest."""
        alg = hash_name()
        self._send({"op": "get", "path": remote, "hash": alg})
        h, _ = self._answer("file")
        size = _int_field(h, "size")
        if size > limit:
            self._skip_download()
            raise SkiffError(f"{remote}: {size} bytes is more than the limit of {limit}", "too_large")
        hasher = _new_hasher(alg)
        parts: List[bytes] = []
        received = 0
        while True:
            h, body = self._answer("data", "end")
            if h["op"] == "end":
                break
            received += len(body)
            if received > size:
                self._fail("too much data")
                raise ProtocolError(f"{remote}: the server sent more than {size} bytes", "too_large")
            hasher.update(body)
            parts.append(body)
        digest = hasher.hexdigest()
        if _int_field(h, "size") != received or not hmac.compare_digest(str(h.get("digest", "")), digest):
            raise ChecksumError(f"{remote}: the data does not match the server's digest")
        return b"".join(parts)


# --------------------------------------------------------------------- exec


class ExecStream:
    """A running command: iterate for ``(name, bytes)`` output chunks, where
    ``name`` is ``"stdout"`` or ``"stderr"``; :attr:`result` is set once the
    command has ended. Input is sent as the server grants credit, while
    output is read, so neither side can block the other.

    Leaving the ``with`` block (or :meth:`close`) before the end kills the
    command (SIGKILL to its process group) and waits for its ``exit``, so
    the session can run the next operation.
    """

    def __init__(self, session: Session, stdin: "_StdinSource", timeout: Optional[float]) -> None:
        self._session = session
        self._stdin = stdin
        self._window = STDIN_WINDOW
        self._eof_sent = False
        # The server enforces the timeout; we allow it time to report.
        self._deadline = time.monotonic() + timeout + 30.0 if timeout is not None else None
        self.result: Optional[ExecResult] = None  #: how the command ended

    def __iter__(self) -> "ExecStream":
        return self

    def __next__(self) -> Tuple[str, bytes]:
        s = self._session
        while self.result is None:
            self._feed()
            wait = None if self._deadline is None else max(0.0, self._deadline - time.monotonic())
            ready = s._readable(wait, self._stdin.wait_fds() if not self._eof_sent else ())
            if not ready:
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    s._fail("exec deadline")
                    self._finish()
                    raise ProtocolError("the server did not end the command after its timeout", "timeout")
                continue
            if -1 not in ready:
                continue  # only our stdin reader woke us
            h, body = s._recv()
            op = h["op"]
            if op in ("stdout", "stderr"):
                if body:
                    return op, body
            elif op == "stdin_credit":
                self._window = min(STDIN_WINDOW, self._window + _int_field(h, "bytes"))
            elif op == "exit":
                self._finish()
                sig = h.get("signal")
                if isinstance(sig, int) and not isinstance(sig, bool):
                    self.result = ExecResult(128 + sig, signal=sig, timed_out=bool(h.get("timed_out")))
                else:
                    self.result = ExecResult(_int_field(h, "code"), timed_out=bool(h.get("timed_out")))
            elif op == "error":
                self._finish()
                self.result = ExecResult(255)
                raise s._remote_error(h)
            else:
                s._fail("unexpected frame during exec")
                self._finish()
                raise ProtocolError(f"unexpected {op!r} while a command runs", "bad_frame")
        raise StopIteration

    def _feed(self) -> None:
        """Sends what stdin has ready, within the credit window."""
        while not self._eof_sent and self._window > 0:
            chunk = self._stdin.take(min(self._window, STDIN_CHUNK))
            if chunk is None:
                self._session._send({"op": "stdin_eof"})
                self._eof_sent = True
            elif not chunk:
                return
            else:
                self._session._send({"op": "stdin"}, chunk)
                self._window -= len(chunk)

    def signal(self, sig: Union[str, int]) -> None:
        """Delivers a signal (``"INT"``, ``"TERM"``, 9, ...) to the
        command's process group."""
        self._session._send({"op": "signal", "signal": sig})

    def _finish(self) -> None:
        self._stdin.close()

    def close(self) -> None:
        """Kills a command that is still running and waits for its end."""
        if self.result is not None or self._session.closed:
            self._finish()
            return
        try:
            self.signal("KILL")
            for _ in self:
                pass
        except SkiffError:
            self._session._fail("could not end the command")
        finally:
            self._finish()

    def __enter__(self) -> "ExecStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _StdinSource:
    """Input for a command: everything at once (bytes), nothing, or a file
    read on a helper thread that wakes the session's ``select`` through a
    pipe (a read from a terminal cannot be interrupted, so it must not run
    on the thread that relays output)."""

    def __init__(self, data: Optional[bytes] = None) -> None:
        self._data = memoryview(data or b"")

    @staticmethod
    def of(stdin: StdinType) -> "_StdinSource":
        if stdin is None:
            return _StdinSource()
        if isinstance(stdin, str):
            return _StdinSource(stdin.encode("utf-8"))
        if isinstance(stdin, (bytes, bytearray, memoryview)):
            return _StdinSource(bytes(stdin))
        return _ThreadedStdin(stdin)

    def take(self, limit: int) -> Optional[bytes]:
        """Up to ``limit`` bytes ready now; ``b""`` when none are ready yet;
        ``None`` at end of input."""
        if not self._data:
            return None
        out = bytes(self._data[:limit])
        self._data = self._data[limit:]
        return out

    def wait_fds(self) -> Sequence[int]:
        """Descriptors that become readable when more input is ready."""
        return ()

    def close(self) -> None:
        """Stops reading input."""


class _ThreadedStdin(_StdinSource):
    def __init__(self, f: Any) -> None:
        super().__init__()
        self._queue: "queue.Queue[Optional[bytes]]" = queue.Queue(maxsize=4)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._pending = b""
        self._done = False
        self._stop = threading.Event()
        read = getattr(f, "read1", None) or f.read
        self._thread = threading.Thread(target=self._run, args=(read,), daemon=True)
        self._thread.start()

    def _run(self, read: Callable[[int], bytes]) -> None:
        while not self._stop.is_set():
            try:
                chunk = read(STDIN_CHUNK)
            except (OSError, ValueError):
                chunk = b""
            item = chunk if chunk else None
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.5)
                    break
                except queue.Full:
                    continue
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                return
            if item is None:
                return

    def take(self, limit: int) -> Optional[bytes]:
        if self._done:
            return None
        if not self._pending:
            try:
                os.read(self._wake_r, 4096)
            except (BlockingIOError, OSError):
                pass
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return b""
            if item is None:
                self._done = True
                return None
            self._pending = item
        out, self._pending = self._pending[:limit], self._pending[limit:]
        return out

    def wait_fds(self) -> Sequence[int]:
        return () if self._done or self._pending else (self._wake_r,)

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass


# ------------------------------------------------------------------ helpers


def server_proof(key: bytes, cb: bytes, cn: bytes, sn: bytes) -> bytes:
    """``HMAC-SHA256(K, "skiff/1 server" | cb | cn | sn)`` (PROTOCOL.md 3.4)."""
    return hmac.new(key, _SERVER_LABEL + cb + cn + sn, hashlib.sha256).digest()


def client_proof(key: bytes, cb: bytes, cn: bytes, sn: bytes) -> bytes:
    """``HMAC-SHA256(K, "skiff/1 client" | cb | cn | sn)`` (PROTOCOL.md 3.4)."""
    return hmac.new(key, _CLIENT_LABEL + cb + cn + sn, hashlib.sha256).digest()


def part_name(name: str) -> str:
    """The hidden partial-file name a download is written under, as the
    Rust client's (a hashed stand-in when it would exceed NAME_MAX)."""
    n = f".{name}.skiff-part"
    if len(n.encode()) <= 255:
        return n
    digest = (
        _blake3.blake3(name.encode()).hexdigest()
        if _blake3 is not None
        else hashlib.sha256(name.encode()).hexdigest()
    )
    return f".{digest[:32]}.skiff-part"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _int_field(h: Dict[str, Any], name: str, default: Optional[int] = None) -> int:
    v = h.get(name, default)
    if type(v) is not int or (v < 0 and name != "mtime_ns"):
        raise ProtocolError(f"the server's {h.get('op')!r} has an invalid {name!r}", "bad_frame")
    return v


def _hash_prefix(f: BinaryIO, hasher: Any, length: int) -> None:
    """Hashes the first ``length`` bytes of ``f`` and leaves it there."""
    f.seek(0)
    left = length
    while left:
        chunk = f.read(min(CHUNK, left))
        if not chunk:
            raise SkiffError("the local file is shorter than the part to resume from")
        hasher.update(chunk)
        left -= len(chunk)


def _errno_code(e: OSError) -> Optional[str]:
    import errno

    return {
        errno.ENOENT: "not_found",
        errno.EEXIST: "exists",
        errno.EACCES: "permission",
        errno.EPERM: "permission",
        errno.ENOSPC: "no_space",
        errno.EDQUOT: "no_space",
        errno.EFBIG: "no_space",
        errno.ELOOP: "path_escape",
    }.get(e.errno or 0)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _close_quietly(sock: Optional[socket.socket]) -> None:
    if sock is None:
        return
    try:
        sock.close()
    except OSError:
        pass


def _dial(t: Target, timeout: float) -> socket.socket:
    try:
        if t.scheme == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            try:
                s.connect(t.path)
            except BaseException:
                s.close()
                raise
            return s
        s = socket.create_connection((t.host, t.port), timeout=timeout)
    except socket.timeout:
        raise ConnectError(f"cannot connect to {t}: timed out", "timeout")
    except OSError as e:
        raise ConnectError(f"cannot connect to {t}: {e.strerror or e}")
    # Small frames leave at once: without this, every request/answer pair
    # pays a delayed-ACK stall (about 40 ms on Linux).
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # A dead peer is noticed within about a minute even while we wait for a
    # silent command.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, val in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, opt):
            s.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), val)
    return s


_TLS_CONTEXT: Optional[ssl.SSLContext] = None


def _tls_context() -> ssl.SSLContext:
    global _TLS_CONTEXT
    if _TLS_CONTEXT is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        # The certificate is self-signed: trust comes from the pin and the
        # key proofs bound to it. TLS still checks the handshake signature
        # made with the certificate's key.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        _TLS_CONTEXT = ctx
    return _TLS_CONTEXT


def _tls_wrap(raw: socket.socket, host: str, deadline: float) -> Tuple[ssl.SSLSocket, bytes]:
    raw.settimeout(max(0.1, deadline - time.monotonic()))
    try:
        tls = _tls_context().wrap_socket(raw, server_hostname=host)
    except socket.timeout:
        raise ConnectError(f"TLS handshake with {host} timed out", "timeout")
    except (ssl.SSLError, OSError) as e:
        raise ConnectError(f"TLS handshake with {host} failed: {e}")
    cert = tls.getpeercert(binary_form=True)
    if not cert:
        _close_quietly(tls)
        raise AuthenticationError("authentication failed: the server sent no certificate")
    return tls, cert


def _check_trust(
    t: Target, seen: str, fingerprint: Optional[str], known_servers: Optional[str]
) -> Optional[str]:
    """Checks the certificate; returns the fingerprint to pin after
    ``welcome`` (a server not seen before), else ``None``."""
    if fingerprint:
        want = _normalize_fingerprint(fingerprint)
        if not hmac.compare_digest(want, seen):
            raise CertificateChangedError(
                f"server certificate of {t.host_port} is {seen}, expected {want}"
            )
        return None
    if not known_servers:
        return None
    pinned = _pinned(known_servers, t.host_port)
    if pinned is None:
        return seen
    if pinned != seen:
        raise CertificateChangedError(
            f"server certificate changed for {t.host_port}: was {pinned}, now {seen}. "
            f"If the server was reinstalled, remove its line from {known_servers} and "
            f"try again; otherwise someone may be intercepting the connection"
        )
    return None


def _handshake_error(h: Dict[str, Any]) -> SkiffError:
    code = str(h.get("code", "internal"))
    message = str(h.get("message", code))
    if code == "auth_failed":
        reason = message
        if reason.startswith("authentication failed"):
            reason = reason[len("authentication failed"):].lstrip(": ")
        return AuthenticationError(
            "authentication failed: " + (reason or "the server rejected our proof")
        )
    return RemoteError(message, code)


# --------------------------------------------------------------------- CLI


def _cli_connect(args: argparse.Namespace) -> Session:
    return connect(
        args.target,
        key_file=args.key,
        fingerprint=args.fingerprint,
        port=args.port,
    )


def _cli_exec(args: argparse.Namespace) -> int:
    cmd = list(args.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("skiff_client: exec needs a command", file=sys.stderr)
        return 2
    env = {}
    for item in args.env or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"skiff_client: -e expects NAME=VALUE, got {item!r}", file=sys.stderr)
            return 2
        env[name] = value
    stdin: StdinType = None if args.n else sys.stdin.buffer
    out = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    with _cli_connect(args) as s:
        # ssh's rule: the words are joined with spaces and run by sh -c.
        with s.exec_stream(" ".join(cmd), stdin, args.timeout, env or None, args.cwd) as stream:
            for name, chunk in stream:
                out[name].write(chunk)
                out[name].flush()
        result = stream.result
    assert result is not None
    if result.timed_out:
        print("skiff_client: the remote command timed out and was killed", file=sys.stderr)
    return result.code


def _cli_files(args: argparse.Namespace) -> int:
    failed = 0
    with _cli_connect(args) as s:
        if args.op in ("put", "get"):
            *sources, dest = args.paths
            if not sources:
                print(f"skiff_client: {args.op} needs SOURCE... DEST", file=sys.stderr)
                return 2
            if len(sources) > 1 and not dest.endswith("/"):
                dest += "/"
            for src in sources:
                try:
                    if args.op == "put":
                        t = s.put(src, dest, force=args.force, resume=args.resume)
                    else:
                        t = s.get(src, dest, force=True, resume=args.resume)
                    if args.verbose:
                        print(f"{src}: {t.size} bytes, {t.hash} {t.digest}")
                except (RemoteError, ChecksumError) as e:
                    print(f"skiff_client: {args.op}: {src}: {e}", file=sys.stderr)
                    failed = 1
            return failed
        path = args.paths[0] if args.paths else "/"
        if args.op == "ls":
            for entry in s.ls(path, recursive=args.recursive):
                name = entry.path + (f" -> {entry.target}" if entry.target else "")
                print(f"{entry.kind[0]}{entry.mode & 0o7777:04o} {entry.size:>12} {name}")
        elif args.op == "stat":
            print(json.dumps(s.stat(path).__dict__))
        elif args.op == "rm":
            s.rm(path, recursive=args.recursive)
        elif args.op == "mkdir":
            s.mkdir(path, parents=args.parents, exist_ok=args.parents)
        elif args.op == "mv":
            if len(args.paths) != 2:
                print("skiff_client: mv needs FROM TO", file=sys.stderr)
                return 2
            s.mv(args.paths[0], args.paths[1], force=args.force)
    return 0


def _cli_ping(args: argparse.Namespace) -> int:
    with _cli_connect(args) as s:
        for i in range(args.count):
            rtt = s.ping()
            print(f"pong from {s.target}: seq={i} time={rtt * 1000:.3f} ms")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit status (as the ``skiff`` binary:
    exec gives the remote status, 128+N for signal N; others 0 on success,
    1 when the operation failed; 2 for usage errors; 255 for connection,
    trust, authentication or protocol errors)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--key", help="key file (default $SKIFF_KEY_FILE, ~/.config/skiff/key)")
    common.add_argument("-p", "--port", type=int, default=DEFAULT_PORT, help="default port")
    common.add_argument("--fingerprint", help="SHA256:HEX the server certificate must have")
    parser = argparse.ArgumentParser(prog="skiff_client.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="op", required=True)
    e = sub.add_parser("exec", parents=[common], help="run a command (sh -c)")
    e.add_argument("-n", action="store_true", help="do not forward stdin")
    e.add_argument("--timeout", type=float, help="kill the command after SECS")
    e.add_argument("--cwd", help="working directory, relative to the server root")
    e.add_argument("-e", "--env", action="append", metavar="NAME=VALUE")
    e.add_argument("target")
    e.add_argument("command", nargs=argparse.REMAINDER)
    e.set_defaults(run=_cli_exec)
    for op, help_text in (
        ("put", "upload: TARGET LOCAL... REMOTE"),
        ("get", "download: TARGET REMOTE... LOCAL"),
        ("ls", "list: TARGET [PATH]"),
        ("stat", "describe: TARGET PATH"),
        ("rm", "remove: TARGET PATH"),
        ("mkdir", "make a directory: TARGET PATH"),
        ("mv", "rename: TARGET FROM TO"),
    ):
        f = sub.add_parser(op, parents=[common], help=help_text)
        f.add_argument("-f", "--force", action="store_true", help="replace an existing file")
        f.add_argument("--resume", action="store_true", help="continue an interrupted transfer")
        f.add_argument("-r", "--recursive", action="store_true", help="(ls, rm) the whole tree")
        f.add_argument("--parents", "-P", action="store_true", help="(mkdir) make parents too")
        f.add_argument("-v", "--verbose", action="store_true", help="print sizes and digests")
        f.add_argument("target")
        f.add_argument("paths", nargs="*")
        f.set_defaults(run=_cli_files)
    p = sub.add_parser("ping", parents=[common], help="session round trips")
    p.add_argument("-c", "--count", type=int, default=4)
    p.add_argument("target")
    p.set_defaults(run=_cli_ping)
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except ValueError as err:  # a malformed target
        print(f"skiff_client: {err}", file=sys.stderr)
        return 2
    except (ConnectError, AuthenticationError, CertificateChangedError, ProtocolError) as err:
        print(f"skiff_client: {err}", file=sys.stderr)
        return 255
    except RemoteError as err:
        print(f"skiff_client: {args.op}: {err}", file=sys.stderr)
        return 255 if args.op == "exec" or err.code in ("busy", "shutting_down", "bad_frame") else 1
    except SkiffError as err:
        print(f"skiff_client: {args.op}: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 141
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
