"""Real Ansible modules over the skiff connection plugin, against real
``skiff serve`` processes on loopback.

Needs ansible-core: ``ANSIBLE_BIN`` is the directory holding ``ansible``
and ``ansible-playbook`` (``.ci/run`` installs ansible-core from PyPI into
a virtual environment and sets it). Each server serves ``/`` (as a managed
host would) and has its own certificate; all share one users file.

Run: ``ANSIBLE_BIN=venv/bin python3 -m unittest discover -s clients/ansible/tests -v``
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python", "tests"))

from support import Server, skiff_bin  # noqa: E402

PLUGINS = os.path.abspath(os.path.join(HERE, "..", "connection_plugins"))
PYTHON_CLIENT = os.path.abspath(os.path.join(HERE, "..", "..", "python"))
HOSTS = 3


def ansible_bin(name: str) -> str:
    d = os.environ.get("ANSIBLE_BIN")
    path = os.path.join(d, name) if d else shutil.which(name)
    if not path or not os.access(path, os.X_OK):
        raise RuntimeError(f"{name} not found: set ANSIBLE_BIN to a directory holding ansible-core")
    return path


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Fleet(unittest.TestCase):
    """Three skiff servers as three managed hosts."""

    work: str
    servers: List[Server]
    key_file: str

    @classmethod
    def setUpClass(cls) -> None:
        cls.work = tempfile.mkdtemp(prefix="skiff-ansible-")
        keyline = subprocess.run(
            [skiff_bin(), "keygen", "--user", "ansible"], capture_output=True, check=True
        ).stdout
        cls.key_file = cls._private("key", keyline)
        users = cls._private("users", keyline)
        cls.servers = []
        try:
            for _ in range(HOSTS):
                s = Server(extra=["--users", users], schemes=("tcp",), root="/")
                cls.servers.append(s)
        except BaseException:
            cls.tearDownClass()
            raise
        hosts = [
            f"host{i} ansible_host=127.0.0.1 ansible_port={s.tls.rsplit(':', 1)[1]} "
            f"skiff_root=/"
            for i, s in enumerate(cls.servers)
        ]
        wrong_key = cls._private("wrong-key", b"ansible AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n")
        cls.inventory = os.path.join(cls.work, "inventory.ini")
        with open(cls.inventory, "w") as f:
            f.write("[fleet]\n" + "\n".join(hosts) + "\n\n")
            f.write(f"[down]\nnowhere ansible_host=127.0.0.1 ansible_port={free_port()}\n\n")
            p = cls.servers[0].tls.rsplit(":", 1)[1]
            f.write(f"[badkey]\nintruder ansible_host=127.0.0.1 ansible_port={p} skiff_key_file={wrong_key}\n\n")
            f.write(
                "[all:vars]\nansible_connection=skiff\n"
                f"skiff_key_file={cls.key_file}\n"
                f"skiff_known_servers={os.path.join(cls.work, 'known_servers')}\n"
                "ansible_python_interpreter=/usr/bin/python3\n"
            )

    @classmethod
    def _private(cls, name: str, content: bytes) -> str:
        path = os.path.join(cls.work, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        return path

    @classmethod
    def tearDownClass(cls) -> None:
        for s in getattr(cls, "servers", []):
            s.stop()
        shutil.rmtree(cls.work, ignore_errors=True)

    def env(self, pipelining: bool = False, plugins_from_env: bool = True) -> Dict[str, str]:
        env = dict(os.environ)
        env.pop("ANSIBLE_CONNECTION_PLUGINS", None)
        if plugins_from_env:
            env["ANSIBLE_CONNECTION_PLUGINS"] = PLUGINS
        env.update(
            ANSIBLE_CALLBACK_PLUGINS=os.path.join(HERE, "callback_plugins"),
            ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
            ANSIBLE_STDOUT_CALLBACK="json_results",
            ANSIBLE_HOST_KEY_CHECKING="False",
            ANSIBLE_RETRY_FILES_ENABLED="False",
            ANSIBLE_PIPELINING=str(pipelining),
            ANSIBLE_LOCAL_TEMP=os.path.join(self.work, "local-tmp"),
            ANSIBLE_HOME=os.path.join(self.work, "ansible-home"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_DEPRECATION_WARNINGS="False",
        )
        return env

    def run_ansible(
        self, args: Sequence[str], pipelining: bool = False, tool: str = "ansible", plugins_from_env: bool = True
    ) -> Dict[str, Any]:
        proc = subprocess.run(
            [ansible_bin(tool), "-i", self.inventory, *args],
            env=self.env(pipelining, plugins_from_env),
            capture_output=True,
            timeout=300,
        )
        text = proc.stdout.decode("utf-8", "replace")
        try:
            out = json.loads(text[text.index("{"):])
        except ValueError:
            self.fail(f"{tool} {args} printed no JSON (rc {proc.returncode}):\n{text}\n{proc.stderr.decode()}")
        out["rc"] = proc.returncode
        out["stderr"] = proc.stderr.decode("utf-8", "replace")
        return out

    def adhoc(self, pattern: str, module: str, args: Optional[str] = None, *extra: str, **kw: Any) -> Dict[str, Any]:
        """Per-host results of one ad-hoc module run."""
        cmd = [pattern, "-m", module] + (["-a", args] if args is not None else []) + list(extra)
        out = self.run_ansible(cmd, **kw)
        hosts: Dict[str, Any] = out["plays"][0]["tasks"][0]["hosts"]
        hosts["rc"] = out["rc"]
        return hosts

    def fleet(self) -> List[str]:
        return [f"host{i}" for i in range(HOSTS)]

    def module_uploads(self, host: int) -> int:
        """How many module files (``AnsiballZ_*``) were uploaded to a host:
        none when pipelining sends them on stdin."""
        return sum(1 for e in self.servers[host].audit() if e.get("op") == "put" and "AnsiballZ_" in str(e.get("path")))

    def logins(self, host: int) -> int:
        """How many sessions a host's server has accepted."""
        return sum(1 for e in self.servers[host].audit() if e.get("event") == "auth_ok")

    def tmpdir(self) -> str:
        d = tempfile.mkdtemp(dir=self.work)
        os.chmod(d, 0o755)
        return d


class AdHoc(Fleet):
    def test_ping(self) -> None:
        # Without pipelining here; shell, template and the playbook's host0
        # pipeline.
        r = self.adhoc("fleet", "ping")
        self.assertEqual(r["rc"], 0, r)
        for h in self.fleet():
            self.assertEqual(r[h]["ping"], "pong", r[h])

    def test_command_and_shell_with_a_pipe(self) -> None:
        r = self.adhoc("fleet", "command", "uname -s")
        for h in self.fleet():
            self.assertEqual(r[h]["stdout"], "Linux")
        r = self.adhoc("host0", "shell", "printf 'a\\nb\\nc\\n' | grep -v b | tr a-c x-z", pipelining=True)
        self.assertEqual(r["host0"]["stdout_lines"], ["x", "z"])

    def test_failing_command_is_failed(self) -> None:
        r = self.adhoc("host1", "shell", "echo oops >&2; exit 3")
        self.assertNotEqual(r["rc"], 0)
        self.assertTrue(r["host1"]["failed"])
        self.assertEqual((r["host1"]["rc"], r["host1"]["stderr"]), (3, "oops"))

    def test_unreachable_host_and_wrong_key_are_unreachable_with_a_clear_message(self) -> None:
        r = self.adhoc("down:badkey", "ping")
        self.assertEqual(r["rc"], 4)
        self.assertTrue(r["nowhere"]["unreachable"])
        self.assertIn("cannot connect", r["nowhere"]["msg"])
        self.assertTrue(r["intruder"]["unreachable"])
        self.assertIn("authentication failed", r["intruder"]["msg"])

    def test_copy_content_and_file_then_fetch(self) -> None:
        d = self.tmpdir()
        r = self.adhoc("host0", "copy", f"content='hello from ansible\n' dest={d}/content.txt mode=0640")
        self.assertTrue(r["host0"]["changed"], r)
        with open(f"{d}/content.txt", "rb") as f:
            self.assertEqual(f.read(), b"hello from ansible\n")
        self.assertEqual(os.stat(f"{d}/content.txt").st_mode & 0o777, 0o640)
        data = os.urandom(3 << 20)
        src = os.path.join(d, "payload.src")
        with open(src, "wb") as f:
            f.write(data)
        r = self.adhoc("host0", "copy", f"src={src} dest={d}/payload.bin")
        self.assertEqual(r["host0"]["checksum"], hashlib.sha1(data).hexdigest())
        with open(f"{d}/payload.bin", "rb") as f:
            self.assertEqual(f.read(), data)
        r = self.adhoc("host0", "fetch", f"src={d}/payload.bin dest={d}/fetched.bin flat=yes")
        self.assertFalse(r["host0"].get("failed"), r)
        with open(f"{d}/fetched.bin", "rb") as f:
            self.assertEqual(f.read(), data)

    def test_file_stat_and_template(self) -> None:
        d = self.tmpdir()
        r = self.adhoc("host1", "file", f"path={d}/made state=directory mode=0750")
        self.assertTrue(r["host1"]["changed"], r)
        self.assertEqual(os.stat(f"{d}/made").st_mode & 0o777, 0o750)
        r = self.adhoc("host1", "stat", f"path={d}/made")
        st = r["host1"]["stat"]
        self.assertEqual((st["exists"], st["isdir"], st["mode"]), (True, True, "0750"), st)
        with open(os.path.join(d, "t.j2"), "w") as f:
            f.write("{{ inventory_hostname }} of {{ groups['fleet'] | length }}\n")
        r = self.adhoc("host1", "template", f"src={d}/t.j2 dest={d}/made/rendered", pipelining=True)
        self.assertTrue(r["host1"]["changed"], r)
        with open(f"{d}/made/rendered") as f:
            self.assertEqual(f.read(), f"host1 of {HOSTS}\n")

    def test_setup_gathers_facts(self) -> None:
        r = self.adhoc("host2", "setup", "gather_subset=min")
        facts = r["host2"]["ansible_facts"]
        self.assertEqual(facts["ansible_system"], "Linux")
        self.assertIn("ansible_hostname", facts)

    def test_become_sudo(self) -> None:
        if not shutil.which("sudo"):
            self.fail("sudo is not installed (.ci/run installs it)")
        r = self.adhoc("host0", "command", "id -un", "--become", "--become-user", "nobody", pipelining=True)
        self.assertEqual(r["host0"]["stdout"], "nobody", r)
        r = self.adhoc("host0", "command", "id -un", "--become")
        self.assertEqual(r["host0"]["stdout"], "root", r)


class Playbook(Fleet):
    def test_playbook_over_the_fleet_with_forks(self) -> None:
        d = self.tmpdir()
        with open(os.path.join(d, "motd.j2"), "w") as f:
            f.write("host {{ inventory_hostname }} has {{ items | length }} items\n")
        with open(os.path.join(d, "local.txt"), "w") as f:
            f.write("a local file\n")
        play = os.path.join(d, "play.yml")
        with open(play, "w") as f:
            f.write(textwrap.dedent(f"""\
                - hosts: fleet
                  gather_facts: true
                  vars:
                    items: [a, b, c]
                    base: "{d}/{{{{ inventory_hostname }}}}"
                  tasks:
                    - name: make a directory
                      file: {{path: "{{{{ base }}}}", state: directory, mode: "0755"}}
                    - name: render a template
                      template: {{src: "{d}/motd.j2", dest: "{{{{ base }}}}/motd"}}
                    - name: copy a file
                      copy: {{src: "{d}/local.txt", dest: "{{{{ base }}}}/copied.txt"}}
                    - name: copy content
                      copy: {{content: "x=1\\n", dest: "{{{{ base }}}}/conf"}}
                    - name: stat it
                      stat: {{path: "{{{{ base }}}}/motd"}}
                      register: st
                    - name: check the stat
                      assert: {{that: ["st.stat.exists", "st.stat.size > 10"]}}
                    - name: run a command
                      command: cat {{{{ base }}}}/motd
                      register: motd
                    - name: shell with a pipe
                      shell: cat {{{{ base }}}}/conf | cut -d= -f2
                      register: conf
                    - assert: {{that: ["conf.stdout == '1'", "'has 3 items' in motd.stdout"]}}
                    - name: fetch it back
                      fetch: {{src: "{{{{ base }}}}/motd", dest: "{d}/fetched/"}}
                """))
        # One run covers both ways of sending modules: host0 pipelines
        # (the module on stdin), the others upload each module file.
        pipelined = os.path.join(d, "pipelined.ini")
        with open(pipelined, "w") as f:
            f.write("[fleet]\nhost0 ansible_pipelining=true\n")
        # The plugin found in a connection_plugins/ folder beside the
        # playbook, with skiff_client.py beside it (no
        # ANSIBLE_CONNECTION_PLUGINS for this run).
        os.mkdir(os.path.join(d, "connection_plugins"))
        for src in (os.path.join(PLUGINS, "skiff.py"), os.path.join(PYTHON_CLIENT, "skiff_client.py")):
            shutil.copy(src, os.path.join(d, "connection_plugins"))
        before = [self.module_uploads(i) for i in range(HOSTS)]
        logins_before = [self.logins(i) for i in range(HOSTS)]
        out = self.run_ansible(
            ["-i", pipelined, "--forks", str(HOSTS), play], tool="ansible-playbook", plugins_from_env=False
        )
        self.assertEqual(out["rc"], 0, json.dumps(out, indent=1)[:4000])
        for h in self.fleet():
            stats = out["stats"][h]
            self.assertEqual((stats["failures"], stats["unreachable"]), (0, 0), stats)
            self.assertGreaterEqual(stats["ok"], 11)
            with open(f"{d}/{h}/motd") as f:
                self.assertEqual(f.read(), f"host {h} has 3 items\n")
            with open(f"{d}/fetched/{h}/{d.lstrip('/')}/{h}/motd") as f:
                self.assertEqual(f.read(), f"host {h} has 3 items\n")
        # The audit log is written off the request path: wait (bounded)
        # for the uploads of the hosts that do not pipeline.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(
            self.module_uploads(i) - before[i] < 8 for i in range(1, HOSTS)
        ):
            time.sleep(0.1)
        uploads = [self.module_uploads(i) - before[i] for i in range(HOSTS)]
        self.assertEqual(uploads[0], 0, uploads)
        for i in range(1, HOSTS):
            self.assertGreaterEqual(uploads[i], 8, uploads)
            # One session per task, not one per operation: a task that
            # uploads its module also makes a directory, runs it and
            # removes it, all over the session of its upload.
            logins = self.logins(i) - logins_before[i]
            self.assertTrue(0 < logins <= uploads[i], (logins, uploads))


if __name__ == "__main__":
    unittest.main()
