# An Ansible connection plugin that runs modules over skiff instead of ssh.
# MIT OR Apache-2.0, as the rest of skiff.

from __future__ import annotations

DOCUMENTATION = """
    name: skiff
    short_description: run tasks over a skiff server (authenticated exec and verified transfers)
    description:
        - Runs commands and moves files over one skiff session per task, using
          the standard-library skiff client (skiff_client.py). No sshd is needed
          on the managed host, only C(skiff serve).
        - Remote absolute paths are taken relative to the server's root, so the
          server should run with C(--root /) (or set O(skiff_root) to the
          directory it serves).
    author: skiff developers
    version_added: "2.16"
    extends_documentation_fragment:
        - connection_pipelining
    options:
      remote_addr:
        description: Host name or address of the skiff server.
        default: inventory_hostname
        type: string
        vars:
          - name: inventory_hostname
          - name: ansible_host
          - name: ansible_skiff_host
      port:
        description: TCP port of the skiff server.
        type: int
        default: 7878
        ini:
          - section: skiff_connection
            key: port
        env:
          - name: ANSIBLE_SKIFF_PORT
        vars:
          - name: ansible_port
          - name: ansible_skiff_port
      skiff_user:
        description: The skiff user name (a line of the key file); default the key file's first line.
        type: string
        ini:
          - section: skiff_connection
            key: user
        env:
          - name: ANSIBLE_SKIFF_USER
        vars:
          - name: skiff_user
          - name: ansible_skiff_user
      skiff_key_file:
        description: Key file (C(NAME BASE64KEY) lines, mode 0600); default C($SKIFF_KEY_FILE), then C(~/.config/skiff/key).
        type: path
        ini:
          - section: skiff_connection
            key: key_file
        env:
          - name: ANSIBLE_SKIFF_KEY_FILE
        vars:
          - name: skiff_key_file
          - name: ansible_skiff_key_file
      skiff_fingerprint:
        description:
          - The server certificate's C(SHA256:HEX) fingerprint (printed by C(skiff serve)).
          - Without it the known-servers file is used, as by the skiff binary (trust on first use).
        type: string
        vars:
          - name: skiff_fingerprint
          - name: ansible_skiff_fingerprint
      skiff_known_servers:
        description: The known-servers file; default C($SKIFF_KNOWN_SERVERS), then C(~/.config/skiff/known_servers).
        type: path
        ini:
          - section: skiff_connection
            key: known_servers
        env:
          - name: ANSIBLE_SKIFF_KNOWN_SERVERS
        vars:
          - name: skiff_known_servers
      skiff_url:
        description:
          - A full target URL instead of host and port, e.g. C(unix:///run/skiff.sock) or
            C(tcp+plain://127.0.0.1:7000) (no TLS, loopback servers only).
        type: string
        vars:
          - name: skiff_url
          - name: ansible_skiff_url
      skiff_root:
        description: The directory the server serves (its C(--root)), as an absolute path on the managed host.
        type: string
        default: /
        ini:
          - section: skiff_connection
            key: root
        vars:
          - name: skiff_root
          - name: ansible_skiff_root
      timeout:
        description: Seconds allowed for TCP connect, TLS and the handshake.
        type: int
        default: 10
        ini:
          - section: defaults
            key: timeout
        env:
          - name: ANSIBLE_TIMEOUT
        vars:
          - name: ansible_timeout
"""

EXAMPLES = """
# inventory.ini
# [web]
# web1 ansible_host=10.0.0.5
# web2 ansible_host=10.0.0.6 skiff_fingerprint=SHA256:9f86d0...
# [web:vars]
# ansible_connection=skiff
# skiff_key_file=~/.config/skiff/key
#
# ANSIBLE_CONNECTION_PLUGINS=clients/ansible/connection_plugins ansible -i inventory.ini web -m ping
"""

import os
import sys
import typing as t

from ansible.errors import (
    AnsibleAuthenticationFailure,
    AnsibleConnectionFailure,
    AnsibleError,
    AnsibleFileNotFound,
)
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

display = Display()


def _import_client() -> t.Any:
    """skiff_client.py from the import path, beside this plugin, or from
    the skiff source tree this plugin lives in."""
    try:
        import skiff_client  # type: ignore

        return skiff_client
    except ImportError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (here, os.path.join(here, "..", "..", "python")):
        if os.path.exists(os.path.join(candidate, "skiff_client.py")):
            sys.path.insert(0, os.path.abspath(candidate))
            import skiff_client  # type: ignore

            return skiff_client
    raise AnsibleError(
        "the skiff connection plugin needs skiff_client.py: put it beside the plugin or on PYTHONPATH"
    )


sc = _import_client()


class Connection(ConnectionBase):
    """Runs tasks over one skiff session (opened on first use, reused by
    every command and transfer of the task, closed by close())."""

    transport = "skiff"
    has_pipelining = True
    # sudo -S reads the password from stdin, before the module: no tty needed.
    has_tty = False

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._session: t.Any = None

    # --------------------------------------------------------------- session

    def _target(self) -> str:
        url = self.get_option("skiff_url")
        if url:
            return str(url)
        host = str(self.get_option("remote_addr") or self._play_context.remote_addr)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{host}:{self.get_option('port') or sc.DEFAULT_PORT}"

    def _connect(self) -> "Connection":
        if self._session is not None and not self._session.closed:
            return self
        target = self._target()
        known = self.get_option("skiff_known_servers")
        display.vvv(f"ESTABLISH SKIFF CONNECTION TO {target}", host=self._play_context.remote_addr)
        try:
            self._session = sc.connect(
                target,
                key_file=self.get_option("skiff_key_file"),
                user=self.get_option("skiff_user"),
                fingerprint=self.get_option("skiff_fingerprint"),
                timeout=float(self.get_option("timeout") or sc.CONNECT_TIMEOUT),
                known_servers=os.path.expanduser(known) if known else "",
            )
        except sc.AuthenticationError as e:
            raise AnsibleAuthenticationFailure(
                f"skiff: {e} (target {target}, key file "
                f"{self.get_option('skiff_key_file') or sc.default_key_file()})"
            )
        except (sc.ConnectError, sc.CertificateChangedError, sc.ProtocolError) as e:
            raise AnsibleConnectionFailure(f"skiff: {e}")
        except sc.SkiffError as e:
            # A busy server, or a key file that cannot be used.
            raise AnsibleConnectionFailure(f"skiff: cannot use {target}: {e}")
        except ValueError as e:
            raise AnsibleConnectionFailure(f"skiff: bad target {target!r}: {e}")
        self._connected = True
        return self

    def _live_session(self) -> t.Any:
        if self._session is None or self._session.closed:
            self._connected = False
            self._connect()
        return self._session

    def _remote_path(self, path: str) -> str:
        """A managed-host path as the server names it (relative to its root)."""
        root = str(self.get_option("skiff_root") or "/").rstrip("/")
        if not root or not os.path.isabs(path):
            return path
        norm = os.path.normpath(path)
        if norm == root:
            return "/"
        if norm.startswith(root + "/"):
            return norm[len(root):]
        raise AnsibleError(f"skiff: {path} is outside the server's root {root}/ (see skiff_root)")

    # ------------------------------------------------------------- commands

    def exec_command(self, cmd: str, in_data: t.Optional[bytes] = None, sudoable: bool = True) -> t.Tuple[int, bytes, bytes]:
        """Runs ``cmd`` with ``sh -c`` on the server, feeding ``in_data``
        (the module, when pipelining) to its stdin."""
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        session = self._live_session()
        stdin = in_data
        become_pass = None
        if sudoable and self.become and self.become.expect_prompt():
            # sudo -S / su read the password from stdin before the command
            # does; it goes first, on a line of its own.
            become_pass = self.become.get_option("become_pass", playcontext=self._play_context)
            if become_pass:
                stdin = to_bytes(become_pass, errors="surrogate_or_strict") + b"\n" + (in_data or b"")
        display.vvv(f"EXEC {to_text(cmd)}", host=self._play_context.remote_addr)
        try:
            result = session.exec(to_text(cmd, errors="surrogate_or_strict"), stdin=stdin)
        except sc.RemoteError as e:
            if session.closed:
                raise AnsibleConnectionFailure(f"skiff: {e}")
            raise AnsibleError(f"skiff: the server refused the command: {e}")
        except sc.SkiffError as e:
            raise AnsibleConnectionFailure(f"skiff: lost the connection while running a command: {e}")
        stderr = result.stderr
        if become_pass and self.become.prompt:
            stderr = self._strip_prompt(stderr)
        return result.code, result.stdout, stderr

    def _strip_prompt(self, stderr: bytes) -> bytes:
        prompt = to_bytes(self.become.prompt)
        return stderr.replace(prompt, b"", 1).lstrip(b"\n") if prompt else stderr

    # ------------------------------------------------------------ transfers

    def put_file(self, in_path: str, out_path: str) -> None:
        """Uploads a file: verified by the whole-file digest and renamed into
        place by the server only when complete."""
        super().put_file(in_path, out_path)
        display.vvv(f"PUT {in_path} TO {out_path}", host=self._play_context.remote_addr)
        if not os.path.exists(to_bytes(in_path, errors="surrogate_or_strict")):
            raise AnsibleFileNotFound(f"file or module does not exist: {in_path}")
        self._transfer(lambda s: s.put(in_path, self._remote_path(out_path), force=True), out_path, False)

    def fetch_file(self, in_path: str, out_path: str) -> None:
        """Downloads a file, checking it against the server's digest before
        it replaces ``out_path``."""
        super().fetch_file(in_path, out_path)
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self._play_context.remote_addr)
        self._transfer(lambda s: s.get(self._remote_path(in_path), out_path, force=True), in_path, True)

    def _transfer(self, op: t.Callable[[t.Any], t.Any], path: str, download: bool) -> None:
        session = self._live_session()
        try:
            op(session)
        except sc.RemoteError as e:
            if e.code == "not_found" and download:
                raise AnsibleFileNotFound(f"skiff: {path}: {e}")
            if session.closed:
                raise AnsibleConnectionFailure(f"skiff: {path}: {e}")
            raise AnsibleError(f"skiff: {path}: {e}")
        except sc.ProtocolError as e:
            raise AnsibleConnectionFailure(f"skiff: lost the connection during a transfer of {path}: {e}")
        except sc.SkiffError as e:
            raise AnsibleError(f"skiff: {path}: {e}")
        except OSError as e:
            raise AnsibleError(f"skiff: {path}: {e}")

    # ------------------------------------------------------------------ end

    def reset(self) -> None:
        """Drops the session; the next command opens a new one."""
        self.close()

    def close(self) -> None:
        """Closes the session."""
        if self._session is not None:
            self._session.close()
            self._session = None
        self._connected = False
