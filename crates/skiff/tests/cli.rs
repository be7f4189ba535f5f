//! End-to-end: the client's command-line behaviour through the real binary:
//! hosts and users, the client config, trust on first use and explicit
//! pins, `skiff known`, exit codes, advice messages and help.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{text, TestServer};

/// Runs `cmd` with no stdin and returns its output.
fn output(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run skiff")
}

/// The port of the server's first listener.
fn port(server: &TestServer) -> String {
    server.url().rsplit(':').next().unwrap().to_string()
}

/// A key line `NAME BASE64KEY` made by `skiff keygen`.
fn keygen(user: &str) -> String {
    let out = Command::new(common::skiff_bin())
        .args(["keygen", "--user", user])
        .output()
        .unwrap();
    assert!(out.status.success());
    text(&out.stdout).trim().to_string()
}

fn write_private(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// The server's certificate fingerprint from its start-up banner.
fn server_fingerprint(server: &TestServer) -> String {
    server.fingerprint().expect("fingerprint in banner")
}

#[test]
fn user_at_host_selects_the_key_line() {
    let (alice, bob) = (keygen("alice"), keygen("bob"));
    let users_dir = tempfile::tempdir().unwrap();
    let users = users_dir.path().join("users");
    write_private(&users, &format!("{bob}\n"));
    let server = TestServer::start(&["--users", users.to_str().unwrap()]);
    let keys = server.home.path().join("two-keys");
    write_private(&keys, &format!("# two users\n{alice}\n{bob}\n"));
    let key = keys.to_str().unwrap();
    let p = port(&server);

    let exec = |target: &str| {
        let mut cmd = server.client();
        cmd.args(["exec", "--key", key, "-p", &p, target, "--", "echo ok"]);
        output(cmd)
    };
    // Without USER@ the first line (alice) is used: the server does not know her.
    let out = exec("127.0.0.1");
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("authentication failed"));
    // bob@ selects bob's line.
    let out = exec("bob@127.0.0.1");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ok\n");
    // A user with no line in the key file is a local error that says what to do.
    let out = exec("carol@127.0.0.1");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("no key for user \"carol\"") && err.contains("alice, bob"),
        "{err}"
    );
    assert!(err.contains("skiff keygen --user carol"), "{err}");
}

#[test]
fn config_aliases_set_address_port_user_key_and_fingerprint() {
    let server = TestServer::start(&[]);
    fs::remove_file(server.known_file()).unwrap();
    let home = server.home.path();
    let fp = server_fingerprint(&server);
    let wrong = format!("SHA256:{}", "0".repeat(64));
    let config = home.join("aliases.toml");
    fs::write(
        &config,
        format!(
            r#"
[hosts.box]
address = "127.0.0.1"
port = {port}
key = "{key}"
fingerprint = "{fp}"

[hosts.evil]
address = "127.0.0.1:{port}"
fingerprint = "{wrong}"

[groups]
all = ["box", "evil"]
"#,
            port = port(&server),
            key = server.key_file.display(),
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut cmd = server.client();
        cmd.env("SKIFF_CONFIG", &config).args(args);
        output(cmd)
    };
    let out = run(&["exec", "box", "--", "echo via-alias"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "via-alias\n");
    assert!(
        text(&out.stderr).contains("as given by --fingerprint or the host alias"),
        "{}",
        text(&out.stderr)
    );
    // The wrong fingerprint is refused even though the certificate is now pinned.
    let out = run(&["exec", "evil", "--", "echo never"]);
    assert_eq!(out.status.code(), Some(255));
    let err = text(&out.stderr);
    assert!(err.contains("not the expected"), "{err}");
    assert!(text(&out.stdout).is_empty());
    // Every command resolves aliases: ls, put, ping.
    fs::write(server.root.join("seen.txt"), "x").unwrap();
    let out = run(&["ls", "box"]);
    assert!(text(&out.stdout).contains("seen.txt"), "{out:?}");
    let out = run(&["ping", "-c", "1", "box"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // --fingerprint on the command line wins over the alias.
    let out = run(&["exec", "--fingerprint", &fp, "evil", "--", "true"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // A broken config is a local validation error.
    fs::write(&config, "[hosts.box]\nadress = \"typo\"\n").unwrap();
    let out = run(&["exec", "box", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("adress"),
        "{}",
        text(&out.stderr)
    );
    // $SKIFF_CONFIG naming a missing file is an error too.
    fs::remove_file(&config).unwrap();
    let out = run(&["exec", "box", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn first_use_pins_visibly_and_known_lists_and_removes() {
    let server = TestServer::start(&[]);
    fs::remove_file(server.known_file()).unwrap();
    let fp = server_fingerprint(&server);
    let run = |args: &[&str]| {
        let mut cmd = server.client();
        cmd.args(args);
        output(cmd)
    };
    let out = run(&["exec", server.url(), "--", "true"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("permanently added") && err.contains(&fp),
        "{err}"
    );
    // Known now: nothing said.
    let out = run(&["exec", server.url(), "--", "true"]);
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));

    let out = run(&["known", "list"]);
    let listed = text(&out.stdout);
    assert!(
        listed.contains(&format!("127.0.0.1:{} {fp}", port(&server))),
        "{listed}"
    );
    let out = run(&["known", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["fingerprint"], fp.as_str());

    // A bare host removes every port of it.
    let out = run(&["known", "remove", "127.0.0.1"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(text(&out.stderr).contains("removed"));
    assert!(text(&run(&["known", "list"]).stdout).is_empty());
    let out = run(&["known", "remove", "127.0.0.1"]);
    assert_eq!(out.status.code(), Some(1));
    // Pinned afresh on the next connection.
    let out = run(&["ping", "-c", "1", server.url()]);
    assert!(text(&out.stderr).contains("permanently added"));
    let exact = format!("127.0.0.1:{}", port(&server));
    assert_eq!(run(&["known", "remove", &exact]).status.code(), Some(0));
}

#[test]
fn a_pin_file_that_cannot_be_written_is_reported() {
    let server = TestServer::start(&[]);
    let blocker = server.home.path().join("not-a-dir");
    fs::write(&blocker, "x").unwrap();
    let mut cmd = server.client();
    cmd.env("SKIFF_KNOWN_SERVERS", blocker.join("known")).args([
        "exec",
        server.url(),
        "--",
        "echo still-works",
    ]);
    let out = output(cmd);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "still-works\n");
    let err = text(&out.stderr);
    assert!(
        err.contains("could not record") && err.contains("not pinned"),
        "{err}"
    );
}

#[test]
fn exit_codes_follow_the_table() {
    let server = TestServer::start(&[]);
    let run = |args: &[&str]| {
        let mut cmd = server.client();
        cmd.args(args);
        output(cmd)
    };
    let code = |args: &[&str]| run(args).status.code();
    // 0 success, 1 operation failed.
    assert_eq!(code(&["stat", server.url(), "/"]), Some(0));
    assert_eq!(code(&["stat", server.url(), "missing"]), Some(1));
    assert_eq!(code(&["rm", server.url(), "missing"]), Some(1));
    // 2 usage and local validation.
    assert_eq!(code(&["stat"]), Some(2));
    assert_eq!(code(&["ls", "-p", "notaport", server.url()]), Some(2));
    assert_eq!(
        code(&["exec", "--timeout", "-1", server.url(), "--", "true"]),
        Some(2)
    );
    assert_eq!(code(&["ping", "-i", "-1", server.url()]), Some(2));
    let open_key = server.home.path().join("open-key");
    fs::write(&open_key, format!("{}\n", keygen("x"))).unwrap();
    fs::set_permissions(&open_key, fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["ls", "--key", open_key.to_str().unwrap(), server.url()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("chmod 600"));
    let missing = server.home.path().join("no-such-key");
    let out = run(&["ls", "--key", missing.to_str().unwrap(), server.url()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("skiff keygen --user") && err.contains("users file"),
        "{err}"
    );
    // 255 connection, trust, authentication.
    let wrong = server.home.path().join("wrong-key");
    write_private(&wrong, &format!("{}\n", keygen("nobody")));
    assert_eq!(
        code(&["ls", "--key", wrong.to_str().unwrap(), server.url()]),
        Some(255)
    );
    let out = run(&["ls", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(255));
    assert!(text(&out.stderr).contains("connection refused"));
    let bad_fp = format!("SHA256:{}", "a".repeat(64));
    assert_eq!(
        code(&["ls", "--fingerprint", &bad_fp, server.url()]),
        Some(255)
    );
    assert_eq!(
        code(&["ls", "--fingerprint", "SHA256:zz", server.url()]),
        Some(2)
    );
    // exec keeps the remote status.
    assert_eq!(code(&["exec", server.url(), "--", "exit 7"]), Some(7));
    assert_eq!(
        code(&["exec", server.url(), "--", "kill -TERM $$"]),
        Some(143)
    );
}

#[test]
fn serve_accepts_a_bare_host_port_and_ping_udp_explains_silence() {
    let server = TestServer::start_listening(&["127.0.0.1:0"], &[]);
    assert!(
        server.url().starts_with("tcp://127.0.0.1:"),
        "{}",
        server.url()
    );
    // No udp:// listener: the UDP ping gets no answer and says why.
    let mut cmd = server.client();
    cmd.args(["ping", "--udp", "-c", "1", "-W", "0.3", server.url()]);
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--listen udp://"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn every_subcommand_help_ends_with_examples_and_top_help_has_exit_codes() {
    let top = Command::new(common::skiff_bin())
        .arg("--help")
        .output()
        .unwrap();
    let top = text(&top.stdout);
    assert!(top.contains("Exit status:") && top.contains("255"), "{top}");
    for sub in [
        "keygen", "serve", "exec", "shell", "put", "get", "ls", "stat", "rm", "mkdir", "mv",
        "ping", "known", "bench", "classic",
    ] {
        let out = Command::new(common::skiff_bin())
            .args([sub, "--help"])
            .output()
            .unwrap();
        let help = text(&out.stdout);
        let tail = help.rsplit("Examples:").next().unwrap_or("");
        assert!(help.contains("Examples:"), "{sub}: {help}");
        assert!(
            tail.lines()
                .filter(|l| l.trim_start().starts_with("skiff "))
                .count()
                >= 2,
            "{sub}: {tail}"
        );
    }
}
