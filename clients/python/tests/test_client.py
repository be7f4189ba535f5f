"""End-to-end tests of skiff_client.py against real ``skiff serve``
processes (and a scripted fake server for hostile cases).

Run: ``python3 -m unittest discover -s clients/python/tests -v`` after
``cargo build`` (or with ``SKIFF_BIN`` pointing at a skiff binary).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from support import (
    REPO,
    USER,
    FakeServer,
    Server,
    recv_frame,
    send_frame,
    skiff_bin,
    write_key_file,
)

import skiff_client as sc


def vector(name: str) -> bytes:
    with open(os.path.join(REPO, "docs", "vectors", name)) as f:
        return bytes.fromhex(f.read().strip())


def digest(data: bytes) -> str:
    if sc.hash_name() == "blake3":
        import blake3  # type: ignore

        return blake3.blake3(data).hexdigest()
    return hashlib.sha256(data).hexdigest()


class Vectors(unittest.TestCase):
    """The published handshake vectors (docs/HANDSHAKE-VECTORS.md)."""

    def test_proofs_match_published_vectors(self) -> None:
        k = bytes(range(32))
        cb = bytes(range(0x40, 0x60))
        cn, sn = b"\x11" * 32, b"\x22" * 32
        self.assertEqual(sc.server_proof(k, cb, cn, sn), vector("server_proof.hex"))
        self.assertEqual(sc.client_proof(k, cb, cn, sn), vector("client_proof.hex"))
        zero = bytes(32)
        self.assertEqual(sc.server_proof(k, zero, cn, sn), vector("server_proof_nobinding.hex"))
        self.assertEqual(sc.client_proof(k, zero, cn, sn), vector("client_proof_nobinding.hex"))

    def test_frame_encoding(self) -> None:
        self.assertEqual(
            sc.encode_frame({"op": "pong"}, b"hello"),
            b'\x00\x00\x00\x15{"op":"pong","len":5}hello',
        )
        for bad, code in [
            (b"[1]", "bad_frame"),
            (b'{"op":1}', "bad_frame"),
            (b'{"op":"x","op":"y"}', "bad_frame"),
            (b'{"op":"x","len":4.0}', "bad_frame"),
            (b'{"op":"x","len":-1}', "bad_frame"),
            (b'{"op":"x","len":NaN}', "bad_frame"),
            (b'{"op":"x","len":8388609}', "too_large"),
            (b'\xff{"op":"x"}', "bad_frame"),
        ]:
            with self.assertRaises(sc.ProtocolError) as cm:
                sc.decode_header(bad)
            self.assertEqual(cm.exception.code, code, bad)

    def test_source_is_python_3_9(self) -> None:
        import ast

        with open(sc.__file__, encoding="utf-8") as f:
            ast.parse(f.read(), feature_version=(3, 9))

    def test_targets(self) -> None:
        t = sc.Target.parse("bob@[::1]:9")
        self.assertEqual((t.scheme, t.host, t.port, t.user, t.host_port), ("tcp", "::1", 9, "bob", "[::1]:9"))
        self.assertEqual(sc.Target.parse("h").port, 7878)
        self.assertEqual(sc.Target.parse("unix:///x/y").path, "/x/y")
        self.assertEqual(sc.Target.parse("tcp+plain://127.0.0.1:5").scheme, "tcp+plain")
        for bad in ("ftp://x", "h:99999", "unix://", "tcp://:5"):
            with self.assertRaises(ValueError):
                sc.Target.parse(bad)


class Shared(unittest.TestCase):
    """Against one server listening on TLS, plain TCP and a Unix socket."""

    server: Server

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = Server()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    def session(self, scheme: str = "tcp") -> sc.Session:
        s = self.server.connect(scheme)
        self.addCleanup(s.close)
        return s

    def root(self, *parts: str) -> str:
        return os.path.join(self.server.root, *parts)

    def tmp(self) -> str:
        d = tempfile.mkdtemp(prefix="skiff-py-local-")
        self.addCleanup(subprocess.run, ["rm", "-rf", d])
        return d


class Connect(Shared):
    def test_every_transport_authenticates(self) -> None:
        for scheme in ("tcp", "tcp+plain", "unix"):
            with self.server.connect(scheme) as s:
                self.assertIn("ping", s.services)
                self.assertGreater(s.ping(b"abc"), 0)
                self.assertEqual(s.exec("echo hi").stdout, b"hi\n")

    def test_tcp_nodelay_is_set(self) -> None:
        s = self.session("tcp+plain")
        self.assertEqual(s._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)

    def test_one_write_per_frame(self) -> None:
        s = self.session("tcp+plain")
        writes = []
        real = s._sock

        class Counting:
            def sendall(self, data: bytes) -> None:
                writes.append(len(data))
                real.sendall(data)

            def __getattr__(self, name: str) -> object:
                return getattr(real, name)

        s._sock = Counting()  # type: ignore[assignment]
        s.ping(b"x" * 1000)
        s.put_bytes("one-write.bin", os.urandom(3 * sc.CHUNK + 5), force=True)
        # ping, put, 4 data chunks, end: one write each.
        self.assertEqual(len(writes), 7)
        self.assertEqual(writes[0], 4 + len(b'{"op":"ping","len":1000}') + 1000)

    def test_pins_on_first_use_and_refuses_a_changed_certificate(self) -> None:
        known = os.path.join(self.tmp(), "known_servers")
        with self.server.connect(known_servers=known):
            pass
        with open(known) as f:
            line = f.read().strip()
        self.assertEqual(line, f"{self.server.tls} {self.server.fingerprint}")
        self.assertEqual(os.stat(known).st_mode & 0o777, 0o600)
        with self.server.connect(known_servers=known):
            pass  # the pin matches
        with open(known, "w") as f:
            f.write(f"{self.server.tls} SHA256:{'00' * 32}\n")
        with self.assertRaises(sc.CertificateChangedError) as cm:
            self.server.connect(known_servers=known)
        self.assertIn("server certificate changed", str(cm.exception))
        self.assertIn(known, str(cm.exception))

    def test_shares_the_known_servers_file_with_the_rust_client(self) -> None:
        home_known = self.server.known_servers
        if os.path.exists(home_known):
            os.unlink(home_known)
        r = self.server.cli("ping", "-c", "1", self.server.tls)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(home_known) as f:
            self.assertIn(self.server.fingerprint, f.read())
        with self.server.connect():  # reads the Rust client's pin
            pass
        with open(home_known, "a") as f:
            pass
        with open(home_known, "w") as f:
            f.write(f"{self.server.tls} SHA256:{'ab' * 32}\n")
        r = self.server.cli("ping", "-c", "1", self.server.tls)
        self.assertEqual(r.returncode, 255)
        with self.assertRaises(sc.CertificateChangedError):
            self.server.connect()
        os.unlink(home_known)

    def test_explicit_fingerprint(self) -> None:
        fp = self.server.fingerprint
        with self.server.connect(fingerprint=fp.lower(), known_servers=None):
            pass
        with self.server.connect(fingerprint=fp[len("SHA256:"):].upper(), known_servers=None):
            pass
        with self.assertRaises(sc.CertificateChangedError):
            self.server.connect(fingerprint="SHA256:" + "11" * 32, known_servers=None)

    def test_connection_refused_is_a_connect_error(self) -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        with self.assertRaises(sc.ConnectError):
            sc.connect(f"127.0.0.1:{port}", key_file=self.server.key_file, known_servers=None)

    def test_key_file_permissions_and_format(self) -> None:
        d = self.tmp()
        path = write_key_file(d)
        os.chmod(path, 0o644)
        with self.assertRaises(sc.SkiffError) as cm:
            sc.load_key(path)
        self.assertIn("too open", str(cm.exception))
        os.chmod(path, 0o600)
        self.assertEqual(sc.load_key(path)[0], USER)
        with self.assertRaises(sc.SkiffError):
            sc.load_key(path, "nobody")
        with open(path, "w") as f:
            f.write("alice notbase64!\n")
        with self.assertRaises(sc.SkiffError):
            sc.load_key(path)


class Auth(unittest.TestCase):
    """Failed logins, on a server of their own (failures are rate limited
    per source address)."""

    def test_wrong_key_and_unknown_user(self) -> None:
        server = Server(schemes=("tcp",))
        self.addCleanup(server.stop)
        d = tempfile.mkdtemp()
        user = sc.load_key(server.key_file)[0]
        wrong = write_key_file(d, user=user, key=os.urandom(32))
        with self.assertRaises(sc.AuthenticationError) as cm:
            server.connect(key_file=wrong)
        self.assertEqual(cm.exception.code, "auth_failed")
        unknown = write_key_file(d, user="nobody", key=os.urandom(32))
        with self.assertRaises(sc.AuthenticationError):
            server.connect(key_file=unknown)
        # Not pinned: the server never proved it knows our key.
        self.assertFalse(os.path.exists(server.known_servers))
        # The CLI reports it with status 255.
        r = server.pycli("exec", "--key", wrong, server.tls, "--", "true")
        self.assertEqual(r.returncode, 255)
        self.assertIn(b"authentication failed", r.stderr)

    def test_busy_server(self) -> None:
        server = Server(extra=["--max-connections", "1"], schemes=("tcp+plain",))
        self.addCleanup(server.stop)
        with server.connect("tcp+plain") as s:
            with self.assertRaises(sc.SkiffError) as cm:
                server.connect("tcp+plain")
            self.assertEqual(cm.exception.code, "busy")
            s.ping()


class Exec(Shared):
    def test_exit_codes_stdout_stderr(self) -> None:
        s = self.session()
        code, out, err = s.exec("echo out; echo err >&2; exit 3")
        self.assertEqual((code, out, err), (3, b"out\n", b"err\n"))
        r = s.exec(["sh", "-c", 'printf "%s" "$1"', "x", "a b"])
        self.assertEqual((r.code, r.stdout), (0, b"a b"))
        self.assertEqual(s.exec(["/nonexistent/program"]).code, 127)
        r = s.exec("kill -9 $$")
        self.assertEqual((r.code, r.signal), (137, 9))

    def test_binary_output_is_unchanged(self) -> None:
        s = self.session()
        data = bytes(range(256)) * 1000
        self.assertEqual(s.exec("cat", stdin=data).stdout, data)

    def test_stdin_beyond_the_credit_window(self) -> None:
        s = self.session("unix")
        data = os.urandom(5 * sc.STDIN_WINDOW + 17)
        r = s.exec("sha256sum", stdin=data)
        self.assertEqual(r.stdout.split()[0].decode(), hashlib.sha256(data).hexdigest())
        # A command that never reads its input still ends.
        r = s.exec("exit 4", stdin=os.urandom(3 * sc.STDIN_WINDOW))
        self.assertEqual(r.code, 4)

    def test_stdin_from_a_file_object(self) -> None:
        s = self.session()
        r, w = os.pipe()

        def writer() -> None:
            with os.fdopen(w, "wb") as f:
                for i in range(100):
                    f.write(b"line %d\n" % i)

        threading.Thread(target=writer).start()
        with os.fdopen(r, "rb") as f:
            res = s.exec("wc -l", stdin=f)
        self.assertEqual(res.stdout.strip(), b"100")
        self.assertEqual(s.exec("cat", stdin=io.BytesIO(b"abc")).stdout, b"abc")

    def test_env_and_cwd(self) -> None:
        s = self.session()
        os.makedirs(self.root("sub", "dir"), exist_ok=True)
        r = s.exec("echo $GREETING; pwd", env={"GREETING": "hello world"}, cwd="sub/dir")
        lines = r.stdout.decode().splitlines()
        self.assertEqual(lines[0], "hello world")
        self.assertEqual(os.path.realpath(lines[1]), os.path.realpath(self.root("sub", "dir")))
        with self.assertRaises(sc.RemoteError) as cm:
            s.exec("pwd", cwd="../..")
        self.assertEqual(cm.exception.code, "path_escape")
        with self.assertRaises(sc.RemoteError) as cm:
            s.exec("pwd", cwd="no/such/dir")
        self.assertEqual(cm.exception.code, "not_found")
        self.assertEqual(s.exec("echo still usable").code, 0)

    def test_timeout_kills_the_command(self) -> None:
        s = self.session()
        start = time.monotonic()
        r = s.exec("sleep 30", timeout=0.5)
        self.assertLess(time.monotonic() - start, 10)
        self.assertTrue(r.timed_out)
        self.assertIsNotNone(r.signal)
        self.assertEqual(s.exec("echo after").stdout, b"after\n")

    def test_streaming_yields_output_as_it_comes(self) -> None:
        s = self.session()
        start = time.monotonic()
        seen = []
        with s.exec_stream("echo first; sleep 2; echo second >&2") as stream:
            for name, chunk in stream:
                seen.append((name, chunk, time.monotonic() - start))
        self.assertEqual([(n, c) for n, c, _ in seen], [("stdout", b"first\n"), ("stderr", b"second\n")])
        self.assertLess(seen[0][2], seen[1][2] - 1.0)  # the first chunk came before the sleep ended
        self.assertEqual(stream.result.code, 0)

    def test_leaving_a_stream_early_kills_the_command(self) -> None:
        s = self.session()
        marker = self.root("stream-marker")
        with s.exec_stream(f"echo started; sleep 5; touch {marker}") as stream:
            for _name, chunk in stream:
                self.assertEqual(chunk, b"started\n")
                break
        self.assertEqual(stream.result.signal, 9)
        self.assertEqual(s.exec("echo next").stdout, b"next\n")
        time.sleep(0.2)
        self.assertFalse(os.path.exists(marker))

    def test_no_exec_server_says_unsupported(self) -> None:
        server = Server(extra=["--no-exec"], schemes=("unix",))
        self.addCleanup(server.stop)
        with server.connect("unix") as s:
            self.assertNotIn("exec", s.services)
            with self.assertRaises(sc.RemoteError) as cm:
                s.exec("true")
            self.assertEqual(cm.exception.code, "unsupported")
            s.ping()

    def test_cli_exec(self) -> None:
        r = self.server.pycli("exec", self.server.tls, "--", "echo", "a", "|", "tr", "a", "b")
        self.assertEqual((r.returncode, r.stdout), (0, b"b\n"))
        r = self.server.pycli("exec", self.server.tls, "--", "cat; exit 7", input=b"piped")
        self.assertEqual((r.returncode, r.stdout), (7, b"piped"))
        r = self.server.pycli("exec", "-n", self.server.tls, "--", "kill -TERM $$")
        self.assertEqual(r.returncode, 128 + 15)


class Files(Shared):
    def test_sizes_round_trip_with_checksums(self) -> None:
        s = self.session()
        d = self.tmp()
        for size in (0, 1, 4095, 12345, sc.CHUNK - 1, sc.CHUNK + 1, 64 << 20):
            data = os.urandom(size)
            src = os.path.join(d, f"in-{size}")
            with open(src, "wb") as f:
                f.write(data)
            t = s.put(src, f"sizes/{size}.bin") if s.exists("sizes") else None
            if t is None:
                s.mkdir("sizes", parents=True, exist_ok=True)
                t = s.put(src, f"sizes/{size}.bin")
            self.assertEqual((t.size, t.digest), (size, digest(data)))
            with open(self.root("sizes", f"{size}.bin"), "rb") as f:
                self.assertEqual(f.read(), data)
            back = os.path.join(d, f"out-{size}")
            g = s.get(f"sizes/{size}.bin", back)
            self.assertEqual((g.size, g.digest), (size, digest(data)))
            with open(back, "rb") as f:
                self.assertEqual(f.read(), data)

    def test_mode_mtime_and_directory_destinations(self) -> None:
        s = self.session()
        d = self.tmp()
        src = os.path.join(d, "script.sh")
        with open(src, "wb") as f:
            f.write(b"#!/bin/sh\necho hi\n")
        os.chmod(src, 0o750)
        os.utime(src, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
        s.mkdir("meta", exist_ok=True)
        s.put(src, "meta/")
        st = os.stat(self.root("meta", "script.sh"))
        self.assertEqual(st.st_mode & 0o777, 0o750)
        self.assertEqual(st.st_mtime_ns, 1_600_000_000_123_456_789)
        e = s.stat("meta/script.sh")
        self.assertEqual((e.kind, e.size, e.mode & 0o777), ("file", 18, 0o750))
        out = os.path.join(d, "down")
        os.mkdir(out)
        s.get("meta/script.sh", out)
        st = os.stat(os.path.join(out, "script.sh"))
        self.assertEqual((st.st_mode & 0o777, st.st_mtime_ns), (0o750, 1_600_000_000_123_456_789))

    def test_management_operations(self) -> None:
        s = self.session("unix")
        s.mkdir("m/a/b", parents=True)
        s.put_bytes("m/a/b/f.txt", b"x")
        s.symlink("m/link", "a/b/f.txt")
        names = [(e.path, e.kind) for e in s.ls("m", recursive=True)]
        self.assertEqual(
            sorted(names),
            [("a", "dir"), ("a/b", "dir"), ("a/b/f.txt", "file"), ("link", "symlink")],
        )
        self.assertEqual(s.stat("m/link").target, "a/b/f.txt")
        s.mv("m/a/b/f.txt", "m/g.txt")
        self.assertEqual(s.get_bytes("m/g.txt"), b"x")
        with self.assertRaises(sc.RemoteError) as cm:
            s.rm("m")
        self.assertEqual(cm.exception.code, "exists")
        s.rm("m", recursive=True)
        self.assertFalse(s.exists("m"))

    def test_error_codes(self) -> None:
        s = self.session()
        d = self.tmp()

        def code(fn, *args, **kw) -> str:  # type: ignore[no-untyped-def]
            with self.assertRaises(sc.RemoteError) as cm:
                fn(*args, **kw)
            return cm.exception.code

        self.assertEqual(code(s.stat, "no/such/file"), "not_found")
        self.assertEqual(code(s.get, "no/such/file", os.path.join(d, "x")), "not_found")
        self.assertEqual(code(s.rm, "nothing-here"), "not_found")
        s.put_bytes("exists.txt", b"1", force=True)
        self.assertEqual(code(s.put_bytes, "exists.txt", b"2"), "exists")
        self.assertEqual(s.get_bytes("exists.txt"), b"1")
        s.put_bytes("exists.txt", b"2", force=True)
        self.assertEqual(s.get_bytes("exists.txt"), b"2")
        self.assertEqual(code(s.mkdir, "exists.txt"), "exists")
        for p in ("../outside", "a/../../etc/passwd", "x\0y"):
            self.assertEqual(code(s.stat, p), "path_escape", p)
            self.assertEqual(code(s.put_bytes, p, b"data"), "path_escape", p)
        os.symlink("/etc", self.root("escape-link"))
        self.assertEqual(code(s.get, "escape-link/passwd", os.path.join(d, "p")), "path_escape")
        self.assertEqual(code(s.symlink, "bad-link", "/etc/passwd"), "path_escape")
        self.assertEqual(code(s.get, "/", os.path.join(d, "r")), "exists")  # a directory
        # More data than announced.
        s._send({"op": "put", "path": "liar.bin", "size": 1, "hash": sc.hash_name()})
        s._send({"op": "data"}, b"too much")
        s._send({"op": "end", "size": 1, "digest": "00"})
        s._answer("ready")
        with self.assertRaises(sc.RemoteError) as cm:
            s._answer("done")
        self.assertEqual(cm.exception.code, "too_large")
        # A wrong digest: nothing lands.
        s._send({"op": "put", "path": "wrong.bin", "size": 3, "hash": "sha256"})
        s._send({"op": "data"}, b"abc")
        s._send({"op": "end", "size": 3, "digest": "00" * 32})
        s._answer("ready")
        with self.assertRaises(sc.RemoteError) as cm:
            s._answer("done")
        self.assertEqual(cm.exception.code, "checksum_mismatch")
        self.assertFalse(os.path.exists(self.root("wrong.bin")))
        # The session survived all of it.
        s.ping()

    def test_more_error_codes_and_the_session_survives(self) -> None:
        s = self.session("unix")

        def code(fn, *args, **kw) -> str:  # type: ignore[no-untyped-def]
            with self.assertRaises(sc.RemoteError) as cm:
                fn(*args, **kw)
            return cm.exception.code

        # A component longer than the file system allows.
        self.assertEqual(code(s.put_bytes, "n" * 300, b"x"), "name_too_long")
        self.assertEqual(code(s.mkdir, "n" * 300), "name_too_long")
        # Well formed but impossible: a directory moved into itself.
        s.mkdir("inv/a", parents=True, exist_ok=True)
        self.assertEqual(code(s.mv, "inv", "inv/a/b"), "invalid")
        self.assertTrue(s.exists("inv/a"))
        # The server's own variables cannot be set by a client.
        self.assertEqual(code(s.exec, "true", env={"SKIFF_USER": "root"}), "permission")
        # An operation the server does not know, and a known one with bad
        # fields: refused, the session goes on.
        s._send({"op": "no_such_operation"})
        self.assertEqual(code(s._answer, "pong"), "unsupported")
        s._send({"op": "stat"})
        self.assertEqual(code(s._answer, "entry"), "bad_frame")
        self.assertFalse(s.closed)
        s.ping()

    def test_concurrent_upload_of_one_path_is_a_conflict(self) -> None:
        first, second = self.session(), self.session("unix")
        first.put_bytes("race.bin", b"old", force=True)
        data = b"from the first upload"
        first._send({"op": "put", "path": "race.bin", "size": len(data), "hash": sc.hash_name(), "force": True})
        first._answer("ready")
        first._send({"op": "data"}, data)
        # The second upload of the same path commits while the first is
        # open: the file the first one was to replace is gone.
        second.put_bytes("race.bin", b"second wins", force=True)
        h = sc._new_hasher(sc.hash_name())
        h.update(data)
        first._send({"op": "end", "size": len(data), "digest": h.hexdigest()})
        with self.assertRaises(sc.RemoteError) as cm:
            first._answer("done")
        self.assertEqual(cm.exception.code, "conflict")
        self.assertEqual(second.get_bytes("race.bin"), b"second wins")
        first.ping()

    def test_read_only_user_gets_permission(self) -> None:
        home = tempfile.mkdtemp(prefix="skiff-py-ro-")
        self.addCleanup(subprocess.run, ["rm", "-rf", home])
        line = subprocess.run(
            [skiff_bin(), "keygen", "--user", "viewer"], capture_output=True, check=True, timeout=30
        ).stdout.strip()
        users = os.path.join(home, "users")
        key = os.path.join(home, "key")
        for path, text in ((users, line + b" read-only\n"), (key, line + b"\n")):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(text)
        server = Server(extra=["--users", users], schemes=("unix",))
        self.addCleanup(server.stop)
        with open(os.path.join(server.root, "readable.txt"), "wb") as f:
            f.write(b"yes")
        with server.connect("unix", key_file=key) as s:
            for fn, args in (
                (s.put_bytes, ("new.txt", b"x")),
                (s.mkdir, ("d",)),
                (s.rm, ("readable.txt",)),
                (s.mv, ("readable.txt", "moved.txt")),
                (s.exec, ("true",)),
            ):
                with self.assertRaises(sc.RemoteError) as cm:
                    fn(*args)
                self.assertEqual(cm.exception.code, "permission", fn.__name__)
            self.assertEqual(s.get_bytes("readable.txt"), b"yes")
        self.assertEqual(os.listdir(server.root), ["readable.txt"])

    def test_stopping_server_says_shutting_down(self) -> None:
        server = Server(schemes=("unix",))
        self.addCleanup(server.stop)
        s = server.connect("unix")
        self.addCleanup(s.close)
        with s.exec_stream("echo started; sleep 30") as stream:
            for _name, chunk in stream:
                self.assertEqual(chunk, b"started\n")
                server.proc.send_signal(signal.SIGTERM)
        # The command was stopped and its exit sent as usual ...
        self.assertIsNotNone(stream.result.signal)
        # ... then the server's last frame: the session is over.
        with self.assertRaises(sc.RemoteError) as cm:
            s._answer("pong")
        self.assertEqual(cm.exception.code, "shutting_down")
        self.assertTrue(s.closed)
        self.assertEqual(server.proc.wait(timeout=30), 0)

    def test_no_space(self) -> None:
        server = Server(schemes=("unix",), fsize_limit=1 << 20)
        self.addCleanup(server.stop)
        with server.connect("unix") as s:
            with self.assertRaises(sc.RemoteError) as cm:
                s.put_bytes("big.bin", os.urandom(3 << 20))
            self.assertEqual(cm.exception.code, "no_space")
            self.assertEqual(os.listdir(server.root), [])  # the partial file is gone
            s.put_bytes("small.bin", b"fits")

    def test_local_disk_full_during_get_keeps_the_session(self) -> None:
        with open(self.root("three-mib.bin"), "wb") as f:
            f.write(os.urandom(3 << 20))
        d = self.tmp()
        script = f"""
import resource, signal, sys
sys.path.insert(0, {os.path.dirname(sc.__file__)!r})
import skiff_client as sc
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
with sc.connect({self.server.urls["unix"]!r}, key_file={self.server.key_file!r}) as s:
    try:
        s.get("three-mib.bin", {d!r} + "/out.bin")
    except sc.SkiffError as e:
        print(e.code)
    s.ping()
    print(s.exec("echo in step").stdout.decode().strip())
"""
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
        self.assertEqual(r.stdout.decode().split(), ["no_space", "in", "step"], r.stderr)
        self.assertFalse(os.path.exists(os.path.join(d, "out.bin")))

    def test_put_resume(self) -> None:
        s = self.session()
        d = self.tmp()
        data = os.urandom(3 * sc.CHUNK + 123)
        src = os.path.join(d, "big.bin")
        with open(src, "wb") as f:
            f.write(data)
        # Nothing was left by an earlier upload: resume starts at 0.
        t = s.put(src, "resumed.bin", resume=True)
        self.assertEqual((t.offset, t.size, t.digest), (0, len(data), digest(data)))
        with open(self.root("resumed.bin"), "rb") as f:
            self.assertEqual(f.read(), data)
        # A file in the root that looks like an old partial name is only a
        # file: the server keeps partial uploads out of the root.
        with open(self.root(".bad.bin.skiff-part"), "wb") as f:
            f.write(b"X" * 1000)
        t = s.put(src, "bad.bin", resume=True)
        self.assertEqual(t.offset, 0)
        with open(self.root("bad.bin"), "rb") as f:
            self.assertEqual(f.read(), data)

    def test_interrupted_upload_resumes(self) -> None:
        d = self.tmp()
        data = os.urandom(8 * sc.CHUNK)
        src = os.path.join(d, "cut.bin")
        with open(src, "wb") as f:
            f.write(data)
        s = self.server.connect()
        peer = "%s:%d" % s._sock.getsockname()[:2]
        with open(src, "rb") as f:
            try:
                s.put_fileobj(f, "cut.bin", len(data), progress=lambda done, total: done > 3 * sc.CHUNK and s.close())
            except sc.SkiffError:
                pass
        # The server keeps the partial upload once it is done with the
        # dropped connection; it is kept out of sight, nothing appears in
        # the root.
        self.server.wait_session_end(peer)
        self.assertFalse(os.path.exists(self.root("cut.bin")))
        self.assertEqual([n for n in os.listdir(self.root("")) if "skiff-part" in n], [])
        s = self.session()
        t = s.put(src, "cut.bin", resume=True)
        self.assertGreater(t.offset, 0)
        with open(self.root("cut.bin"), "rb") as f:
            self.assertEqual(f.read(), data)

    def test_get_resume(self) -> None:
        s = self.session()
        d = self.tmp()
        data = os.urandom(2 * sc.CHUNK + 99)
        with open(self.root("dl.bin"), "wb") as f:
            f.write(data)
        dest = os.path.join(d, "dl.bin")
        with open(os.path.join(d, ".dl.bin.skiff-part"), "wb") as f:
            f.write(data[:5000])
        t = s.get("dl.bin", dest, resume=True)
        self.assertEqual((t.offset, t.digest), (5000, digest(data)))
        with open(dest, "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertFalse(os.path.exists(os.path.join(d, ".dl.bin.skiff-part")))
        # A corrupt local prefix: ChecksumError, destination untouched.
        with open(os.path.join(d, ".dl.bin.skiff-part"), "wb") as f:
            f.write(b"\0" * 5000)
        with open(dest, "wb") as f:
            f.write(b"old")
        with self.assertRaises(sc.ChecksumError):
            s.get("dl.bin", dest, resume=True)
        with open(dest, "rb") as f:
            self.assertEqual(f.read(), b"old")
        with self.assertRaises(sc.SkiffError) as cm:
            s.get("dl.bin", dest, force=False)
        self.assertEqual(cm.exception.code, "exists")


class Interop(Shared):
    """Files written by the Python client read by the Rust client, and the
    reverse (the Rust client checks BLAKE3, this one SHA-256 or BLAKE3)."""

    def test_python_writes_rust_reads(self) -> None:
        s = self.session()
        d = self.tmp()
        data = os.urandom(5 * sc.CHUNK + 3)
        src = os.path.join(d, "py.bin")
        with open(src, "wb") as f:
            f.write(data)
        s.put(src, "interop/py.bin") if s.exists("interop") else (s.mkdir("interop"), s.put(src, "interop/py.bin"))
        out = os.path.join(d, "rust-got.bin")
        r = self.server.cli("get", self.server.tls, "interop/py.bin", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), data)

    def test_rust_writes_python_reads(self) -> None:
        d = self.tmp()
        data = os.urandom(3 * sc.CHUNK + 77)
        src = os.path.join(d, "rust.bin")
        with open(src, "wb") as f:
            f.write(data)
        r = self.server.cli("put", self.server.tls, src, "rust.bin")
        self.assertEqual(r.returncode, 0, r.stderr)
        out = os.path.join(d, "py-got.bin")
        self.session().get("rust.bin", out)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), data)

    def test_cli_put_get(self) -> None:
        d = self.tmp()
        src = os.path.join(d, "c.txt")
        with open(src, "wb") as f:
            f.write(b"via the command line\n")
        r = self.server.pycli("put", "-f", self.server.tls, src, "/")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.server.pycli("get", self.server.tls, "c.txt", os.path.join(d, "back.txt"))
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(d, "back.txt"), "rb") as f:
            self.assertEqual(f.read(), b"via the command line\n")
        r = self.server.pycli("get", self.server.tls, "missing.txt", d)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"not_found", r.stderr)


class HostileServer(unittest.TestCase):
    """A scripted server: what a real one never sends."""

    def run_fake(self, script, handshake: bool = True) -> FakeServer:  # type: ignore[no-untyped-def]
        fake = FakeServer(script, handshake)
        self.addCleanup(fake.join)
        return fake

    def test_bad_server_proof_stops_before_auth(self) -> None:
        def script(conn: socket.socket) -> None:
            hello, _ = recv_frame(conn)
            send_frame(conn, {"op": "challenge", "nonce": base64.b64encode(os.urandom(32)).decode(),
                              "proof": base64.b64encode(os.urandom(32)).decode()})
            conn.settimeout(5)
            rest = conn.recv(100)  # the client closes without sending auth
            assert rest == b"", rest

        fake = self.run_fake(script, handshake=False)
        with self.assertRaises(sc.AuthenticationError):
            sc.connect(fake.url, key_file=fake.key_file)
        fake.join()
        self.assertIsNone(fake.error)

    def test_unknown_error_code_is_a_generic_failure(self) -> None:
        def script(conn: socket.socket) -> None:
            recv_frame(conn)
            send_frame(conn, {"op": "error", "code": "name_too_long", "message": "name is too long"})
            recv_frame(conn)
            send_frame(conn, {"op": "pong"})

        fake = self.run_fake(script)
        with sc.connect(fake.url, key_file=fake.key_file) as s:
            with self.assertRaises(sc.RemoteError) as cm:
                s.stat("x" * 300)
            self.assertEqual(cm.exception.code, "name_too_long")
            s.ping()

    def test_oversized_announcements_are_refused_before_allocation(self) -> None:
        big = b'{"op":"pong","len":999999999}'
        for frame, code in [
            (b"\xff\xff\xff\xff", "too_large"),
            (b"\x00\x00\x00\x00", "bad_frame"),
            (struct.pack(">I", len(big)) + big, "too_large"),
        ]:
            def script(conn: socket.socket, frame: bytes = frame) -> None:
                recv_frame(conn)
                conn.sendall(frame)

            fake = self.run_fake(script)
            with sc.connect(fake.url, key_file=fake.key_file) as s:
                with self.assertRaises(sc.ProtocolError) as cm:
                    s.ping()
                self.assertEqual(cm.exception.code, code)
                self.assertTrue(s.closed)

    def test_download_longer_than_announced(self) -> None:
        def script(conn: socket.socket) -> None:
            recv_frame(conn)
            send_frame(conn, {"op": "file", "size": 2, "mode": 420, "mtime_ns": 0, "offset": 0})
            send_frame(conn, {"op": "data"}, b"12345")

        fake = self.run_fake(script)
        d = tempfile.mkdtemp()
        with sc.connect(fake.url, key_file=fake.key_file) as s:
            with self.assertRaises(sc.ProtocolError) as cm:
                s.get("f", os.path.join(d, "f"))
            self.assertEqual(cm.exception.code, "too_large")
        self.assertFalse(os.path.exists(os.path.join(d, "f")))

    def test_server_that_never_reads_times_out(self) -> None:
        def script(conn: socket.socket) -> None:
            time.sleep(4)  # reads nothing after the handshake

        fake = self.run_fake(script)
        with sc.connect(fake.url, key_file=fake.key_file) as s:
            s.io_timeout = 1
            start = time.monotonic()
            with self.assertRaises(sc.ProtocolError) as cm:
                s.put_bytes("f", os.urandom(32 << 20))
            self.assertEqual(cm.exception.code, "timeout")
            self.assertLess(time.monotonic() - start, 3.5)
            self.assertTrue(s.closed)

    def test_silent_server_times_out(self) -> None:
        def script(conn: socket.socket) -> None:
            recv_frame(conn)
            time.sleep(3)

        fake = self.run_fake(script, handshake=False)
        start = time.monotonic()
        with self.assertRaises(sc.SkiffError) as cm:
            sc.connect(fake.url, key_file=fake.key_file, timeout=1)
        self.assertEqual(cm.exception.code, "timeout")
        self.assertLess(time.monotonic() - start, 2.5)


if __name__ == "__main__":
    unittest.main()
