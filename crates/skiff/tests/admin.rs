//! End-to-end: running a server for other people. Per-user policy
//! (`read-only`, `no-exec`, `exec-allow`, `from=`, `root=`) enforced for
//! every kind of operation, the clean exec environment with `accept-env`,
//! and the audit log, all through the real `skiff serve` and real clients
//! (the `skiff` binary, or the library's client where a test must send a
//! request the CLI never would).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use skiff::keys::UserKey;
use skiff_wire::message::exec::{Exec, Exit};
use skiff_wire::message::files::{EntryKind, Put};

use common::{stderr, text, write_private, TestServer};

/// A server with a users file of our own, an audit log, and one key file
/// per user.
struct Site {
    server: TestServer,
    audit: PathBuf,
    keys: BTreeMap<String, (UserKey, PathBuf)>,
    dir: tempfile::TempDir,
}

/// A secret in the server's own environment that no command may see.
const SECRET: (&str, &str) = ("SKIFF_TEST_SECRET", "hunter2-do-not-leak");

impl Site {
    /// `users`: (name, options as written after the key). `listen`: the
    /// listeners (TLS first: the CLI tests use the first one).
    fn start_on(listen: &[&str], users: &[(&str, &str)], extra: &[&str]) -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let users_file = dir.join("users");
        let audit = dir.join("audit.log");
        let mut keys = BTreeMap::new();
        let mut text = String::from("# users of this test\n");
        for (name, options) in users {
            let (uk, key_file) = new_key(&dir, name);
            text.push_str(&format!("{} {options}\n", uk.to_line()));
            keys.insert(name.to_string(), (uk, key_file));
        }
        write_private(&users_file, &text);
        let mut args = vec![
            "--users".to_string(),
            users_file.to_string_lossy().into_owned(),
            "--audit-log".to_string(),
            audit.to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = TestServer::start_with_env(listen, &args, &[SECRET, ("LANG", "C.UTF-8")]);
        Site {
            server,
            audit,
            keys,
            dir: tmp,
        }
    }

    fn start(users: &[(&str, &str)]) -> Site {
        Site::start_on(&["tcp://127.0.0.1:0"], users, &[])
    }

    /// A key for `name` that the users file does not list.
    fn add_stranger(&mut self, name: &str) {
        let made = new_key(self.dir.path(), name);
        self.keys.insert(name.to_string(), made);
    }

    fn key_file(&self, user: &str) -> &Path {
        &self.keys[user].1
    }

    /// `USER@HOST:PORT` of the listener at `index`.
    fn target(&self, user: &str, index: usize) -> String {
        let url = &self.server.urls[index];
        let hp = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        format!("{user}@{hp}")
    }

    /// `skiff SUB --key USER.key USER@HOST:PORT ARGS...` against the first
    /// listener, with no stdin.
    fn skiff(&self, user: &str, sub: &str, args: &[&str]) -> Output {
        self.skiff_at(0, user, sub, args)
    }

    fn skiff_at(&self, listener: usize, user: &str, sub: &str, args: &[&str]) -> Output {
        self.skiff_with(listener, user, sub, &[], args)
    }

    /// `skiff SUB OPTIONS --key USER.key USER@HOST:PORT ARGS...`.
    fn skiff_with(
        &self,
        listener: usize,
        user: &str,
        sub: &str,
        options: &[&str],
        args: &[&str],
    ) -> Output {
        let mut cmd = self.server.client();
        cmd.arg(sub)
            .args(options)
            .arg("--key")
            .arg(self.key_file(user))
            .arg(self.target(user, listener))
            .args(args)
            .stdin(Stdio::null());
        cmd.output().unwrap()
    }

    fn root(&self) -> &Path {
        &self.server.root
    }

    /// The audit log's events once `pred` holds for them (the log is
    /// written off the request path, a moment later).
    fn audit_until(&self, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events: Vec<Value> = fs::read_to_string(&self.audit)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            if pred(&events) || Instant::now() > deadline {
                return events;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A session of `user` through the library's client over the plain
    /// listener at `index`.
    async fn connect(&self, user: &str, index: usize) -> skiff::client::Client {
        let target: skiff::target::Target = self.server.urls[index].parse().unwrap();
        let opts = skiff::client::ConnectOptions {
            known_servers: None,
            ..Default::default()
        };
        match skiff::client::connect(&target, &self.keys[user].0, &opts).await {
            Ok(c) => c,
            Err(e) => panic!("connect as {user}: {e}"),
        }
    }
}

/// A new key for `name` and its client key file in `dir`.
fn new_key(dir: &Path, name: &str) -> (UserKey, PathBuf) {
    let uk = UserKey::generate(name);
    let key_file = dir.join(format!("{name}.key"));
    write_private(&key_file, &format!("{}\n", uk.to_line()));
    (uk, key_file)
}

/// A file operation refused by the policy: exit 1, "permission denied"
/// and `why` in the message.
fn refused(o: &Output, why: &str) {
    refused_with(o, 1, why);
}

/// An exec refused by the policy: as every exec the server does not run,
/// exit 255 (ssh's convention), with the reason.
fn refused_exec(o: &Output, why: &str) {
    refused_with(o, 255, why);
}

fn refused_with(o: &Output, code: i32, why: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(
        err.contains("permission denied"),
        "expected permission: {err}"
    );
    assert!(err.contains(why), "expected {why:?}: {err}");
    assert!(o.stdout.is_empty(), "{}", text(&o.stdout));
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", stderr(o));
    text(&o.stdout)
}

/// What the server answers one request: the frames up to and including
/// the final one (`exit`, `error`, `ok`, `done`), as JSON headers, and the
/// output bytes of an exec.
async fn exchange(
    session: &mut skiff::session::Session<'_>,
    first: impl FnOnce(&mut skiff::session::Session<'_>) -> Result<(), skiff::session::SessionError>,
) -> (Value, Vec<u8>) {
    first(session).unwrap();
    session.flush().await.unwrap();
    let mut out = Vec::new();
    loop {
        let frame = session.recv_required().await.unwrap();
        let header: Value = serde_json::from_slice(frame.header()).unwrap();
        match frame.op() {
            "stdout" | "stderr" => out.extend_from_slice(frame.body()),
            "stdin_credit" => {}
            _ => return (header, out),
        }
    }
}

async fn exec_argv(session: &mut skiff::session::Session<'_>, req: Exec) -> (Value, Vec<u8>) {
    exchange(session, |s| s.queue(&req, &[])).await
}

// ---------------------------------------------------------------------
// read-only

#[test]
fn read_only_user_reads_everything_and_changes_nothing() {
    let site = Site::start_on(
        &["tcp://127.0.0.1:0", "tcp+plain://127.0.0.1:0"],
        &[("reader", "read-only")],
        &[],
    );
    let root = site.root();
    fs::write(root.join("notes.txt"), b"keep me\n").unwrap();
    fs::create_dir(root.join("dir")).unwrap();
    let local = site.server.home.path().join("upload.txt");
    fs::write(&local, b"new\n").unwrap();
    let got = site.server.home.path().join("got.txt");

    // Reads work.
    assert!(ok(&site.skiff("reader", "ls", &["/"])).contains("notes.txt"));
    ok(&site.skiff("reader", "stat", &["notes.txt"]));
    ok(&site.skiff("reader", "get", &["notes.txt", got.to_str().unwrap()]));
    assert_eq!(fs::read(&got).unwrap(), b"keep me\n");

    // Every change is refused with the reason.
    refused(
        &site.skiff("reader", "put", &[local.to_str().unwrap(), "up.txt"]),
        "read-only",
    );
    refused(&site.skiff("reader", "rm", &["notes.txt"]), "read-only");
    refused(&site.skiff("reader", "rm", &["-r", "dir"]), "read-only");
    refused(&site.skiff("reader", "mkdir", &["new"]), "read-only");
    refused(
        &site.skiff("reader", "mv", &["notes.txt", "moved.txt"]),
        "read-only",
    );
    // A command could change anything, so it is refused too.
    refused_exec(
        &site.skiff("reader", "exec", &["--", "touch pwned"]),
        "read-only",
    );
    // A tree upload (directories, files, symlinks) lands nothing.
    let tree = site.server.home.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("f"), b"f").unwrap();
    std::os::unix::fs::symlink("f", tree.join("link")).unwrap();
    let o = site.skiff_with(0, "reader", "put", &["-r"], &[tree.to_str().unwrap(), "/"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));

    // A symlink request straight on the wire (the CLI sends one only
    // inside a tree) is refused as well, and the session goes on.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = site.connect("reader", 1).await;
        let put = Put {
            path: "link".into(),
            kind: EntryKind::Symlink,
            target: Some("notes.txt".into()),
            ..Put::default()
        };
        let (answer, _) = exchange(&mut c.session, |s| s.queue(&put, &[])).await;
        assert_eq!(answer["code"], "permission", "{answer}");
        // A file upload whose data follows at once is drained, not
        // misread as requests.
        let put = Put {
            path: "up.bin".into(),
            size: 5,
            ..Put::default()
        };
        let (answer, _) = exchange(&mut c.session, |s| {
            s.queue(&put, &[])?;
            s.queue(&skiff_wire::message::files::Data {}, b"hello")?;
            s.queue(
                &skiff_wire::message::files::End {
                    size: 5,
                    digest: blake3::hash(b"hello").to_hex().to_string(),
                    ..Default::default()
                },
                &[],
            )
        })
        .await;
        assert_eq!(answer["code"], "permission", "{answer}");
        let (pong, _) = exchange(&mut c.session, |s| {
            s.queue(&skiff_wire::message::ping::Ping {}, b"still here")
        })
        .await;
        assert_eq!(pong["op"], "pong", "{pong}");
    });

    // Nothing changed.
    let mut names: Vec<String> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["dir", "notes.txt"]);
    assert_eq!(fs::read(root.join("notes.txt")).unwrap(), b"keep me\n");

    // Each refusal is in the audit log.
    let events = site.audit_until(|ev| {
        ev.iter()
            .filter(|e| e["event"] == "file" && e["result"] == "permission")
            .count()
            >= 7
    });
    let refused_ops: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "file" && e["result"] == "permission")
        .map(|e| e["op"].as_str().unwrap())
        .collect();
    for op in ["put", "rm", "mkdir", "mv", "symlink"] {
        assert!(refused_ops.contains(&op), "{op} not in {refused_ops:?}");
    }
    assert!(events
        .iter()
        .any(|e| e["event"] == "exec" && e["result"] == "permission"));
}

// ---------------------------------------------------------------------
// no-exec

#[test]
fn no_exec_user_transfers_files_but_runs_nothing() {
    let site = Site::start_on(
        &["tcp://127.0.0.1:0", "tcp+plain://127.0.0.1:0"],
        &[("files", "no-exec")],
        &[],
    );
    let local = site.server.home.path().join("a.txt");
    fs::write(&local, b"data").unwrap();
    ok(&site.skiff("files", "put", &[local.to_str().unwrap(), "a.txt"]));
    assert_eq!(fs::read(site.root().join("a.txt")).unwrap(), b"data");
    ok(&site.skiff("files", "mkdir", &["d"]));
    ok(&site.skiff("files", "mv", &["a.txt", "d/"]));
    ok(&site.skiff("files", "rm", &["-r", "d"]));

    refused_exec(&site.skiff("files", "exec", &["--", "true"]), "no-exec");
    refused_exec(&site.skiff("files", "exec", &["-t", "--", "id"]), "no-exec");
    let o = site.skiff("files", "shell", &[]);
    refused_exec(&o, "no-exec");
    // Not even through a request the CLI does not make.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = site.connect("files", 1).await;
        assert!(
            !c.welcome.services.iter().any(|s| s == "exec"),
            "{:?}",
            c.welcome.services
        );
        let (answer, out) = exec_argv(
            &mut c.session,
            Exec {
                argv: Some(vec!["/bin/sh".into(), "-c".into(), "id".into()]),
                ..Exec::default()
            },
        )
        .await;
        assert_eq!(answer["code"], "permission", "{answer}");
        assert!(out.is_empty());
    });
}

// ---------------------------------------------------------------------
// exec-allow

#[test]
fn exec_allow_runs_exactly_the_matching_commands_without_a_shell() {
    // Even with every client variable accepted, exec-allow cannot be
    // widened through the environment.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.toml");
    fs::write(&config, "accept-env = [\"*\"]\n").unwrap();
    let site = Site::start_on(
        &["tcp://127.0.0.1:0", "tcp+plain://127.0.0.1:0"],
        &[
            ("ops", r#"exec-allow=uptime exec-allow="echo *""#),
            ("viewer", "read-only exec-allow=uptime"),
        ],
        &["--config", config.to_str().unwrap()],
    );
    // Allowed commands run (echo is /bin/echo: no shell is involved).
    assert_eq!(
        ok(&site.skiff("ops", "exec", &["--", "echo", "hello", "world"])),
        "hello world\n"
    );
    ok(&site.skiff("ops", "exec", &["--", "uptime"]));
    // read-only with exec-allow: the allowed command runs, nothing else.
    ok(&site.skiff("viewer", "exec", &["--", "uptime"]));
    refused_exec(&site.skiff("viewer", "exec", &["--", "id"]), "not allowed");

    // Everything that would take a shell, or another command, is refused
    // before anything runs.
    for bad in [
        "echo hi; touch pwned",
        "echo hi && touch pwned",
        "echo hi || touch pwned",
        "echo hi | touch pwned",
        "echo $(touch pwned)",
        "echo `touch pwned`",
        "echo hi > pwned",
        "echo 'a' ; touch pwned",
        "echo \"$HOME\"",
        "echo hi\ntouch pwned",
        "echo hi\ttouch",
        "uptime --x; touch pwned",
        "touch pwned",
        "./uptime",
        "/tmp/uptime",
        "uptimex",
        "env uptime",
        "PATH=/tmp uptime",
    ] {
        let o = site.skiff("ops", "exec", &["--", bad]);
        assert_eq!(o.status.code(), Some(255), "{bad:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("permission denied"),
            "{bad:?}: {}",
            stderr(&o)
        );
    }
    // --cwd, -e and a pty cannot widen it.
    fs::create_dir(site.root().join("sub")).unwrap();
    refused_exec(
        &site.skiff("ops", "exec", &["--cwd", "sub", "--", "uptime"]),
        "--cwd",
    );
    for var in ["PATH=/tmp", "LD_PRELOAD=/tmp/x.so", "FOO=1", "GIT_DIR=/"] {
        let o = site.skiff("ops", "exec", &["-e", var, "--", "uptime"]);
        refused_exec(&o, "cannot be set for allowed commands");
    }
    refused_exec(
        &site.skiff("ops", "exec", &["-t", "--", "sh"]),
        "not allowed",
    );
    assert_eq!(
        ok(&site.skiff("ops", "exec", &["-e", "LC_ALL=C", "--", "echo", "x"])),
        "x\n"
    );
    // A program of the same name in the user's root is not what runs:
    // PATH is the system's, never the root.
    let fake = site.root().join("uptime");
    fs::write(&fake, "#!/bin/sh\necho PWNED\n").unwrap();
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(!ok(&site.skiff("ops", "exec", &["--", "uptime"])).contains("PWNED"));

    // argv straight on the wire: each word is checked, and the program is
    // run as given, never through sh.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = site.connect("ops", 1).await;
        for argv in [
            vec!["sh", "-c", "echo hi"],
            vec!["echo", "a;touch pwned"],
            vec!["echo", "a b"],
            vec!["echo", ""],
            vec!["/bin/echo", "x"],
        ] {
            let (answer, _) = exec_argv(
                &mut c.session,
                Exec {
                    argv: Some(argv.iter().map(|s| s.to_string()).collect()),
                    ..Exec::default()
                },
            )
            .await;
            assert_eq!(answer["code"], "permission", "{argv:?}: {answer}");
        }
        let (answer, out) = exec_argv(
            &mut c.session,
            Exec {
                argv: Some(vec!["echo".into(), "$HOME".into()]),
                ..Exec::default()
            },
        )
        .await;
        // `$` is outside the safe set, so this is refused rather than
        // printed literally or expanded.
        assert_eq!(answer["code"], "permission", "{answer}");
        assert!(out.is_empty());
        let (answer, out) = exec_argv(
            &mut c.session,
            Exec {
                argv: Some(vec!["echo".into(), "plain".into()]),
                ..Exec::default()
            },
        )
        .await;
        let exit: Exit = serde_json::from_value(answer.clone()).unwrap();
        assert_eq!(exit.code, Some(0), "{answer}");
        assert_eq!(out, b"plain\n");
    });
    assert!(!site.root().join("pwned").exists());
}

// ---------------------------------------------------------------------
// from=

#[test]
fn from_decides_where_a_user_may_log_in_without_telling_strangers() {
    let mut site = Site::start_on(
        &["tcp://127.0.0.1:0", "tcp://[::1]:0"],
        &[
            ("six", "from=::1"),
            ("four", "from=127.0.0.0/8,from=10.0.0.0/8"),
        ],
        &[],
    );
    site.server.pin_known();
    assert_eq!(
        ok(&site.skiff_at(1, "six", "exec", &["--", "echo in"])),
        "in\n"
    );
    assert_eq!(
        ok(&site.skiff_at(0, "four", "exec", &["--", "echo in"])),
        "in\n"
    );
    let v4 = site.skiff_at(0, "six", "exec", &["--", "echo in"]);
    let v6 = site.skiff_at(1, "four", "ls", &["/"]);
    // Refused exactly like a user the server has never heard of.
    site.add_stranger("nobody");
    let stranger = site.skiff("nobody", "exec", &["--", "echo in"]);
    for o in [&v4, &v6, &stranger] {
        assert_eq!(o.status.code(), Some(255), "{}", stderr(o));
        assert!(o.stdout.is_empty());
    }
    let scrub = |o: &Output, user: &str| {
        stderr(o)
            .replace(user, "USER")
            .replace(&site.server.urls[1].replace("tcp://", ""), "ADDR")
            .replace(&site.server.urls[0].replace("tcp://", ""), "ADDR")
    };
    assert_eq!(scrub(&v4, "six"), scrub(&stranger, "nobody"));
    assert!(!stderr(&v4).contains("::1") && !stderr(&v4).contains("from"));
    // The administrator sees why.
    let events =
        site.audit_until(|ev| ev.iter().filter(|e| e["event"] == "auth_failed").count() >= 3);
    let reason = |user: &str| {
        events
            .iter()
            .find(|e| e["event"] == "auth_failed" && e["user"] == user)
            .map(|e| e["reason"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert!(reason("six").contains("127.0.0.1"), "{events:?}");
    assert!(reason("four").contains("::1"), "{events:?}");
    assert!(reason("nobody").starts_with("unknown user"), "{events:?}");
}

// ---------------------------------------------------------------------
// root=

#[test]
fn root_option_confines_files_and_commands() {
    let site = Site::start(&[("boxed", "root=boxes/b1")]);
    fs::create_dir_all(site.root().join("boxes/b1")).unwrap();
    fs::write(site.root().join("secret.txt"), b"server root only").unwrap();
    let local = site.server.home.path().join("f.txt");
    fs::write(&local, b"mine").unwrap();
    ok(&site.skiff("boxed", "put", &[local.to_str().unwrap(), "/f.txt"]));
    assert_eq!(
        fs::read(site.root().join("boxes/b1/f.txt")).unwrap(),
        b"mine"
    );
    let listing = ok(&site.skiff("boxed", "ls", &["/"]));
    assert!(
        listing.contains("f.txt") && !listing.contains("secret"),
        "{listing}"
    );
    let o = site.skiff("boxed", "get", &["../../secret.txt", "/dev/null"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let pwd = ok(&site.skiff("boxed", "exec", &["--", "pwd"]));
    assert_eq!(
        Path::new(pwd.trim()),
        site.root().join("boxes/b1").canonicalize().unwrap()
    );
    let o = site.skiff("boxed", "exec", &["--cwd", "../..", "--", "pwd"]);
    assert_eq!(o.status.code(), Some(255), "{}", stderr(&o));
    assert!(stderr(&o).contains("outside"), "{}", stderr(&o));
}

// ---------------------------------------------------------------------
// the exec environment

/// The environment a command saw, from `env -0` output.
fn parse_env(out: &str) -> BTreeMap<String, String> {
    out.split('\0')
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn exec_environment_is_small_and_holds_nothing_of_the_servers() {
    let site = Site::start(&[("admin", ""), ("limited", "root=.")]);
    let env = parse_env(&ok(&site.skiff("admin", "exec", &["--", "env -0"])));
    assert!(!env.contains_key(SECRET.0), "{env:?}");
    assert!(!env.values().any(|v| v.contains(SECRET.1)), "{env:?}");
    assert_eq!(env["SKIFF_USER"], "admin");
    let client = &env["SKIFF_CLIENT"];
    assert!(client.starts_with("127.0.0.1 "), "{client}");
    assert!(client[10..].parse::<u16>().is_ok(), "{client}");
    for k in ["PATH", "HOME", "USER", "LOGNAME", "SHELL"] {
        assert!(env.contains_key(k), "{k} missing: {env:?}");
    }
    assert_eq!(env["LANG"], "C.UTF-8", "the server's LANG is passed on");
    // What sh itself adds (PWD, SHLVL, _) is all there is beyond the set.
    for k in env.keys() {
        let allowed = [
            "PATH",
            "HOME",
            "USER",
            "LOGNAME",
            "SHELL",
            "LANG",
            "SKIFF_USER",
            "SKIFF_CLIENT",
            "PWD",
            "OLDPWD",
            "SHLVL",
            "_",
        ];
        assert!(
            allowed.contains(&k.as_str()) || k.starts_with("LC_"),
            "unexpected {k} in {env:?}"
        );
    }
    // A pty adds TERM.
    let o = site.skiff("admin", "exec", &["-t", "--", "echo TERM=$TERM"]);
    assert!(ok(&o).contains("TERM="), "{}", text(&o.stdout));

    // An unrestricted user may set anything but SKIFF_*.
    let env = parse_env(&ok(&site.skiff(
        "admin",
        "exec",
        &["-e", "FOO=bar", "--", "env -0"],
    )));
    assert_eq!(env["FOO"], "bar");
    refused_exec(
        &site.skiff("admin", "exec", &["-e", "SKIFF_USER=root", "--", "true"]),
        "set by the server",
    );
    // A restricted user only what accept-env allows (default LANG LC_*).
    refused_exec(
        &site.skiff("limited", "exec", &["-e", "FOO=bar", "--", "true"]),
        "accept-env",
    );
    let env = parse_env(&ok(&site.skiff(
        "limited",
        "exec",
        &["-e", "LC_ALL=C", "--", "env -0"],
    )));
    assert_eq!(env["LC_ALL"], "C");
    assert_eq!(env["SKIFF_USER"], "limited");
}

#[test]
fn accept_env_from_the_config_file_widens_what_restricted_users_may_set() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.toml");
    fs::write(&config, "accept-env = [\"LANG\", \"APP_*\"]\n").unwrap();
    let site = Site::start_on(
        &["tcp://127.0.0.1:0"],
        &[("limited", "no-exec,root=."), ("dev", "root=.")],
        &["--config", config.to_str().unwrap()],
    );
    let env = parse_env(&ok(&site.skiff(
        "dev",
        "exec",
        &["-e", "APP_MODE=test", "--", "env -0"],
    )));
    assert_eq!(env["APP_MODE"], "test");
    refused_exec(
        &site.skiff("dev", "exec", &["-e", "LC_ALL=C", "--", "true"]),
        "accept-env: LANG APP_*",
    );
}

// ---------------------------------------------------------------------
// the audit log

#[test]
fn audit_log_has_one_json_line_per_event_of_a_session() {
    let mut site = Site::start(&[("alice", "")]);
    let local = site.server.home.path().join("report.txt");
    fs::write(&local, b"quarterly numbers\n").unwrap();
    let digest = blake3::hash(b"quarterly numbers\n").to_hex().to_string();

    assert_eq!(ok(&site.skiff("alice", "exec", &["--", "echo hi"])), "hi\n");
    let o = site.skiff("alice", "exec", &["--", "exit 3"]);
    assert_eq!(o.status.code(), Some(3));
    ok(&site.skiff("alice", "put", &[local.to_str().unwrap(), "report.txt"]));
    ok(&site.skiff("alice", "mkdir", &["archive"]));
    ok(&site.skiff("alice", "mv", &["report.txt", "archive/"]));
    let o = site.skiff("alice", "rm", &["missing.txt"]);
    assert_eq!(o.status.code(), Some(1));
    ok(&site.skiff("alice", "rm", &["-r", "archive"]));
    site.add_stranger("mallory");
    let o = site.skiff("mallory", "ls", &["/"]);
    assert_eq!(o.status.code(), Some(255));

    // 7 sessions of alice: login, what it did, end; one failed login.
    let events = site.audit_until(|ev| {
        ev.iter().filter(|e| e["event"] == "session_end").count() >= 7
            && ev.iter().any(|e| e["event"] == "auth_failed")
    });
    for e in &events {
        assert!(e["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
    }
    let of = |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["event"] == kind).collect() };
    assert_eq!(of("auth_ok").len(), 7, "{events:#?}");
    assert!(of("auth_ok")
        .iter()
        .all(|e| e["user"] == "alice" && e["peer"].as_str().unwrap().starts_with("127.0.0.1:")));
    let failed = of("auth_failed");
    assert_eq!(failed.len(), 1, "{events:#?}");
    assert_eq!(failed[0]["user"], "mallory");
    assert!(failed[0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("unknown user"));

    let execs = of("exec");
    assert_eq!(execs.len(), 2, "{events:#?}");
    assert_eq!(execs[0]["command"], "echo hi");
    assert_eq!(execs[0]["exit"], 0);
    assert_eq!(execs[0]["result"], "ok");
    assert_eq!(execs[0]["bytes_out"], 3);
    assert_eq!(execs[0]["user"], "alice");
    assert!(execs[0]["duration_ms"].is_u64());
    assert!(execs[0]["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(execs[1]["command"], "exit 3");
    assert_eq!(execs[1]["exit"], 3);

    let files: Vec<(String, String, String)> = of("file")
        .iter()
        .map(|e| {
            (
                e["op"].as_str().unwrap().to_string(),
                e["path"].as_str().unwrap().to_string(),
                e["result"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expect: Vec<(String, String, String)> = [
        ("put", "report.txt", "ok"),
        ("mkdir", "archive", "ok"),
        ("mv", "report.txt", "ok"),
        ("rm", "missing.txt", "not_found"),
        ("rm", "archive", "ok"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(files, expect);
    let put = of("file")[0];
    assert_eq!(put["bytes"], 18);
    assert_eq!(put["digest"], digest);
    assert_eq!(of("file")[2]["to"], "archive/");
    // Reads (ls) are not file changes.
    assert!(of("file").iter().all(|e| e["op"] != "ls"));
}

/// Execs in one session (the library client over plain TCP): every one
/// gets its line, none is dropped. `SKIFF_LONG_TESTS=1` runs 10,000.
#[test]
fn audit_log_keeps_up_with_a_thousand_execs() {
    let n: usize = if std::env::var_os("SKIFF_LONG_TESTS").is_some() {
        10_000
    } else {
        1_000
    };
    let site = Site::start_on(
        &["tcp://127.0.0.1:0", "tcp+plain://127.0.0.1:0"],
        &[("batch", "")],
        &[],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = site.connect("batch", 1).await;
        for i in 0..n {
            let (answer, _) = exec_argv(
                &mut c.session,
                Exec {
                    argv: Some(vec!["true".into(), i.to_string()]),
                    ..Exec::default()
                },
            )
            .await;
            assert_eq!(answer["code"], 0, "{answer}");
        }
    });
    let events = site.audit_until(|ev| ev.iter().filter(|e| e["event"] == "exec").count() >= n);
    let execs: Vec<&Value> = events.iter().filter(|e| e["event"] == "exec").collect();
    assert_eq!(execs.len(), n);
    for (i, e) in execs.iter().enumerate() {
        assert_eq!(e["command"], format!("true {i}"), "in order, none lost");
    }
    assert!(!events.iter().any(|e| e["event"] == "audit_dropped"));
}

// ---------------------------------------------------------------------
// the service unit

/// `systemd-analyze verify` accepts contrib/skiff.service (with ExecStart
/// pointed at the binary under test), where the tool exists.
#[test]
fn systemd_unit_passes_verify() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/skiff.service");
    let unit_text = fs::read_to_string(&unit).unwrap();
    for needed in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "ReadWritePaths=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=skiff",
    ] {
        assert!(unit_text.contains(needed), "{needed} missing from the unit");
    }
    let Ok(which) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("systemd-analyze not installed: only the unit's text was checked");
        return;
    };
    assert!(which.status.success());
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("skiff.service");
    fs::write(
        &copy,
        unit_text.replace("/usr/local/bin/skiff", common::skiff_bin()),
    )
    .unwrap();
    let o = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}{}", text(&o.stdout), stderr(&o));
}

// ---------------------------------------------------------------------
// live users, SIGHUP, the configuration

impl Site {
    /// Rewrites the users file with these lines (mode stays 0600).
    fn write_users(&self, lines: &[String]) {
        write_private(&self.dir.path().join("users"), &(lines.join("\n") + "\n"));
    }

    fn line(&self, user: &str) -> String {
        self.keys[user].0.to_line()
    }

    fn hangup(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.server.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    }
}

#[test]
fn users_file_edits_apply_on_the_next_connection_and_bad_edits_change_nothing() {
    let mut site = Site::start(&[("alice", "")]);
    let hello = |site: &Site, user: &str| site.skiff(user, "exec", &["--", "echo hello"]);
    site.add_stranger("bob");
    assert_eq!(hello(&site, "bob").status.code(), Some(255));
    // Appended while the server runs: bob is in on his next connection.
    site.write_users(&[site.line("alice"), site.line("bob")]);
    assert_eq!(ok(&hello(&site, "bob")), "hello\n");
    // Removed: refused on the next connection.
    site.write_users(&[site.line("alice")]);
    assert_eq!(hello(&site, "bob").status.code(), Some(255));
    // A bad edit (bob back, but with a duplicate, an unknown option and a
    // malformed line) is refused as a whole: the last good set stays.
    for bad in [
        vec![site.line("alice"), site.line("bob"), site.line("alice")],
        vec![site.line("alice"), format!("{} fly", site.line("bob"))],
        vec![site.line("alice"), site.line("bob"), "carol".to_string()],
    ] {
        site.write_users(&bad);
        assert_eq!(hello(&site, "bob").status.code(), Some(255), "{bad:?}");
        assert_eq!(ok(&hello(&site, "alice")), "hello\n");
    }
    // An edit that adds a policy applies to the next connection too.
    site.write_users(&[format!("{} read-only", site.line("alice"))]);
    let o = site.skiff("alice", "mkdir", &["x"]);
    refused(&o, "read-only");
    // SIGHUP reloads and the server keeps serving.
    site.write_users(&[site.line("alice"), site.line("bob")]);
    site.hangup();
    assert_eq!(ok(&hello(&site, "bob")), "hello\n");
    assert_eq!(ok(&hello(&site, "alice")), "hello\n");
}

#[test]
fn sighup_reopens_the_audit_log_for_logrotate() {
    let site = Site::start(&[("alice", "")]);
    ok(&site.skiff("alice", "exec", &["--", "echo one"]));
    site.audit_until(|ev| ev.iter().any(|e| e["event"] == "session_end"));
    let rotated = site.dir.path().join("audit.log.1");
    fs::rename(&site.audit, &rotated).unwrap();
    site.hangup();
    // The reopen happens before the writer's next batch; give the signal
    // a moment to arrive, then make an event.
    std::thread::sleep(Duration::from_millis(400));
    ok(&site.skiff("alice", "exec", &["--", "echo two"]));
    let events = site.audit_until(|ev| ev.iter().any(|e| e["event"] == "exec"));
    let commands: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "exec")
        .map(|e| e["command"].as_str().unwrap())
        .collect();
    assert_eq!(commands, ["echo two"], "{events:?}");
    let old = fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("echo one") && !old.contains("echo two"));
}

#[test]
fn print_config_round_trips_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("serve.toml");
    fs::write(
        &first,
        "listen = [\"tcp://127.0.0.1:7999\"]\nroot = \"data\"\naudit-log = \"audit.log\"\naccept-env = [\"LANG\", \"APP_*\"]\nmax-connections = 7\n",
    )
    .unwrap();
    let print = |config: &Path, extra: &[&str]| {
        let o = std::process::Command::new(common::skiff_bin())
            .args(["serve", "--print-config", "--config"])
            .arg(config)
            .args(extra)
            .env("HOME", dir.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        text(&o.stdout)
    };
    let printed = print(&first, &[]);
    assert!(printed.contains("max-connections = 7"), "{printed}");
    assert!(printed.contains("APP_*"), "{printed}");
    let second = dir.path().join("again.toml");
    fs::write(&second, &printed).unwrap();
    let strip = |t: &str| -> String { t.lines().filter(|l| !l.starts_with('#')).collect() };
    assert_eq!(strip(&print(&second, &[])), strip(&printed));
    let flagged = print(&second, &["--max-connections", "9"]);
    assert!(flagged.contains("max-connections = 9"), "{flagged}");
    // Unknown keys are errors naming the line.
    fs::write(&second, "listen = []\nmax-conections = 3\n").unwrap();
    let o = std::process::Command::new(common::skiff_bin())
        .args(["serve", "--print-config", "--config"])
        .arg(&second)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("max-conections") && stderr(&o).contains('2'));
}

#[test]
fn a_bad_users_file_at_start_is_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    let (alice, _) = new_key(dir.path(), "alice");
    write_private(
        &users,
        &format!(
            "{0}\n{0} read-only\nbob {1} no-shell\n",
            alice.to_line(),
            "AAAA"
        ),
    );
    let mut cmd = common::env_for(std::process::Command::new(common::skiff_bin()), dir.path());
    cmd.args(["serve", "--listen", "tcp://127.0.0.1:0", "--users"])
        .arg(&users)
        .arg("--root")
        .arg(dir.path());
    let o = common::probe::run_bounded(cmd, Duration::from_secs(10));
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let file = users.display().to_string();
    assert!(
        err.contains(&format!(
            "{file}:2: user alice is already defined on line 1"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("{file}:3:")), "{err}");
    assert!(!text(&o.stdout).contains("listening on"));
}
