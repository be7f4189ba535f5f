//! End-to-end: `skiff exec` and `skiff shell` through the real binary.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;

/// `skiff exec URL -- words...` in the server's environment.
fn exec(server: &TestServer, words: &[&str]) -> Command {
    let mut cmd = server.client();
    cmd.arg("exec").arg(server.url()).arg("--").args(words);
    cmd
}

fn run(mut cmd: Command, stdin: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut w = child.stdin.take().unwrap();
    let input = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = w.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

/// Peak resident memory (VmHWM) of a live process, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Pids whose command line contains `marker`.
fn pids_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(marker) {
            found.push(pid);
        }
    }
    found
}

/// Zombie children of `parent`.
fn zombies_of(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        if field("PPid:").as_deref() == Some(&parent.to_string())
            && field("State:").is_some_and(|s| s.starts_with('Z'))
        {
            found.push(pid);
        }
    }
    found
}

#[test]
fn exit_codes_are_the_remote_ones() {
    let server = TestServer::start(&[]);
    for (cmd, want) in [
        ("true", 0),
        ("false", 1),
        ("exit 42", 42),
        ("kill -9 $$", 137),
        ("kill -TERM $$", 143),
    ] {
        let out = run(exec(&server, &[cmd]), b"");
        assert_eq!(out.status.code(), Some(want), "{cmd}: {out:?}");
    }
    // Words are joined with spaces and run by sh -c in the server root.
    std::fs::write(server.root.join("here.txt"), "x").unwrap();
    let out = run(exec(&server, &["ls", "|", "grep", "-c", "here"]), b"");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
    assert!(zombies_of(server.pid()).is_empty());
}

#[test]
fn output_streams_as_it_is_produced() {
    let server = TestServer::start(&[]);
    let mut child = exec(
        &server,
        &["echo first; sleep 2; echo second >&2; echo third"],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let t_first = Instant::now();
    assert_eq!(first, "first");
    let third = lines.next().unwrap().unwrap();
    let gap = t_first.elapsed();
    assert_eq!(third, "third");
    assert!(
        gap >= Duration::from_millis(1500),
        "the first line arrived only {gap:?} before the last: not streamed"
    );
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(err, "second\n");
    assert!(child.wait().unwrap().success());
}

#[test]
fn stdin_is_forwarded_with_eof() {
    let server = TestServer::start(&[]);
    let out = run(exec(&server, &["sort", "-r"]), b"a\nb\n");
    assert_eq!(out.stdout, b"b\na\n", "{out:?}");
    assert!(out.status.success());
    // More than the credit window, to a command that reads it slowly.
    let big = vec![b'z'; 5 * 1024 * 1024 + 7];
    let out = run(exec(&server, &["sleep 0.5; wc -c"]), &big);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5242887");
    // A command that never reads its stdin still ends (input is dropped).
    let out = run(exec(&server, &["echo done"]), &big);
    assert_eq!(out.stdout, b"done\n");
    assert!(out.status.success());
}

#[test]
fn no_stdin_flag_sends_eof_at_once() {
    let server = TestServer::start(&[]);
    let mut cmd = server.client();
    cmd.args(["exec", "-n", server.url(), "--", "cat"]);
    // Our stdin stays open and silent: without -n, cat would wait forever.
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success());
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "-n did not close stdin"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn binary_and_gbk_bytes_are_unchanged() {
    let server = TestServer::start(&[]);
    let mut data: Vec<u8> = (0..=255u8).collect();
    data.extend_from_slice(&[0xc4, 0xe3, 0xba, 0xc3]); // "你好" in GBK
    data.extend_from_slice(&[0xff, 0xfe, 0x00, b'\r', b'\n']);
    std::fs::write(server.root.join("bin.dat"), &data).unwrap();
    let out = run(exec(&server, &["cat bin.dat; cat bin.dat >&2"]), b"");
    assert!(out.status.success());
    assert_eq!(out.stdout, data);
    assert_eq!(out.stderr, data);
    // And the other way, through stdin.
    let out = run(exec(&server, &["cat"]), &data);
    assert_eq!(out.stdout, data);
}

#[test]
fn killed_client_takes_the_remote_group_with_it() {
    let server = TestServer::start(&[]);
    let marker = format!("1000.{}", std::process::id());
    let script = format!("sleep {marker}1 & sleep {marker}2; wait");
    let mut client = exec(&server, &[&script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while pids_with(&marker).len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "remote sleeps never started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    client.kill().unwrap(); // SIGKILL: no goodbye
    client.wait().unwrap();
    let killed = Instant::now();
    while !pids_with(&marker).is_empty() {
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "remote processes still alive 2 s after the client died: {:?}",
            pids_with(&marker)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(zombies_of(server.pid()).is_empty(), "zombies left");
    // The server goes on serving.
    assert_eq!(run(exec(&server, &["exit 7"]), b"").status.code(), Some(7));
}

#[test]
fn signals_are_forwarded_to_the_remote_command() {
    let server = TestServer::start(&[]);
    let mut client = exec(
        &server,
        &["trap 'echo got-int; exit 3' INT; echo ready; sleep 30 & wait"],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let pid = nix::unistd::Pid::from_raw(client.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    assert_eq!(lines.next().unwrap().unwrap(), "got-int");
    assert_eq!(client.wait().unwrap().code(), Some(3));
}

#[test]
fn timeout_kills_the_command() {
    let server = TestServer::start(&[]);
    let start = Instant::now();
    let mut cmd = server.client();
    cmd.args([
        "exec",
        "--timeout",
        "0.5",
        server.url(),
        "--",
        "sleep 30; echo late",
    ]);
    let out = run(cmd, b"");
    assert!(start.elapsed() < Duration::from_secs(15));
    assert_eq!(out.status.code(), Some(128 + 15), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("timed out"));
}

#[test]
fn refusals_exit_255_with_a_message() {
    let server = TestServer::start(&["--no-exec"]);
    let out = run(exec(&server, &["true"]), b"");
    assert_eq!(out.status.code(), Some(255));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--no-exec"),
        "{out:?}"
    );

    let server = TestServer::start(&[]);
    let mut cmd = server.client();
    cmd.args(["exec", "--cwd", "../..", server.url(), "--", "pwd"]);
    let out = run(cmd, b"");
    assert_eq!(out.status.code(), Some(255));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("outside"),
        "{out:?}"
    );
    std::fs::create_dir(server.root.join("sub")).unwrap();
    let mut cmd = server.client();
    cmd.args([
        "exec",
        "--cwd",
        "sub",
        "-e",
        "GREETING=hi",
        server.url(),
        "--",
        "basename $PWD; echo $GREETING",
    ]);
    let out = run(cmd, b"");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "sub\nhi\n");
}

#[test]
fn one_gib_of_output_in_bounded_memory() {
    let server = TestServer::start(&[]);
    let mut client = exec(&server, &["head -c 1073741824 /dev/zero"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let client_pid = client.id();
    let mut stdout = client.stdout.take().unwrap();
    let counter = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let (mut total, mut nonzero) = (0u64, 0u64);
        let mut client_hwm = 0;
        loop {
            let n = stdout.read(&mut buf).unwrap();
            if n == 0 {
                return (total, nonzero, client_hwm);
            }
            nonzero += buf[..n].iter().filter(|b| **b != 0).count() as u64;
            total += n as u64;
            if total % (64 << 20) < n as u64 {
                client_hwm = client_hwm.max(vm_hwm_kib(client_pid).unwrap_or(0));
            }
        }
    });
    let (total, nonzero, client_hwm) = counter.join().unwrap();
    assert!(client.wait().unwrap().success());
    let server_hwm = vm_hwm_kib(server.pid()).unwrap();
    assert_eq!(total, 1 << 30);
    assert_eq!(nonzero, 0);
    eprintln!("peak RSS: client {client_hwm} KiB, server {server_hwm} KiB");
    assert!(
        client_hwm > 0 && client_hwm < 64 * 1024,
        "client {client_hwm} KiB"
    );
    assert!(server_hwm < 64 * 1024, "server {server_hwm} KiB");
}

#[test]
fn shell_runs_stdin_as_one_script_so_cd_persists() {
    let server = TestServer::start(&[]);
    std::fs::create_dir(server.root.join("sub")).unwrap();
    let mut cmd = server.client();
    cmd.args(["shell", server.url()]);
    let out = run(
        cmd,
        b"echo hi\ncd sub\nX=kept\nls nope\nprintf '%s %s' \"$(basename \"$PWD\")\" $X\nexit 5\necho never\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert_eq!(stdout, "hi\nsub kept", "{stderr}");
    assert!(stderr.contains("nope"), "{stderr}");
    // -T on a non-terminal is the same; an empty script exits 0.
    let mut cmd = server.client();
    cmd.args(["shell", "-T", server.url()]);
    let out = run(cmd, b"");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// Runs the client on a local pty of `rows`x`cols`, as a user at a
/// terminal would; returns everything the terminal showed.
fn on_local_pty(mut cmd: Command, rows: u16, cols: u16, typed: &[u8]) -> (String, i32) {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let ws = nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).unwrap();
    let slave: OwnedFd = pty.slave;
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY as _, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(slave);
    drop(cmd);
    let master = std::fs::File::from(pty.master);
    let mut writer = master.try_clone().unwrap();
    let typed = typed.to_vec();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let _ = writer.write_all(&typed);
    });
    let _ = master.as_raw_fd();
    let mut shown = Vec::new();
    let mut reader = master;
    let mut buf = [0u8; 4096];
    // EIO once the client (the last slave holder) exits.
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        shown.extend_from_slice(&buf[..n]);
    }
    let code = child.wait().unwrap().code().unwrap_or(-1);
    (String::from_utf8_lossy(&shown).to_string(), code)
}

#[test]
fn pty_exec_and_shell() {
    let server = TestServer::start(&[]);
    let mut cmd = server.client();
    cmd.args(["exec", "-t", server.url(), "--", "tty; stty size; exit 4"]);
    let (shown, code) = on_local_pty(cmd, 33, 101, b"");
    assert!(shown.contains("/dev/pts/"), "{shown}");
    assert!(shown.contains("33 101"), "{shown}");
    assert_eq!(code, 4, "{shown}");

    let mut cmd = server.client();
    cmd.args(["shell", server.url()]);
    let (shown, code) = on_local_pty(
        cmd,
        40,
        120,
        b"stty size; test -t 0 && echo is-a-tty; exit 6\r",
    );
    assert!(shown.contains("40 120"), "{shown}");
    assert!(shown.contains("is-a-tty"), "{shown}");
    assert_eq!(code, 6, "{shown}");
}
