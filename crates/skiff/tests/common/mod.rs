//! Shared by the end-to-end tests: start a real `skiff serve` in a private
//! home directory and run the real `skiff` client against it.
#![allow(dead_code)]

pub mod probe;

use std::fs;
use std::io::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Path of the `skiff` binary under test.
pub fn skiff_bin() -> &'static str {
    env!("CARGO_BIN_EXE_skiff")
}

/// A running server with its own HOME (keys, state, known servers) and root.
pub struct TestServer {
    pub child: Child,
    pub home: tempfile::TempDir,
    /// The served directory.
    pub root: PathBuf,
    /// The client key file for the server's user.
    pub key_file: PathBuf,
    /// Every `listening on URL` line, in order.
    pub urls: Vec<String>,
    /// Everything else the server printed on stdout before it was ready.
    pub banner: Vec<String>,
}

impl TestServer {
    /// `skiff serve --listen tcp://127.0.0.1:0` plus `extra` arguments.
    pub fn start(extra: &[&str]) -> TestServer {
        Self::start_listening(&["tcp://127.0.0.1:0"], extra)
    }

    /// `skiff serve` with the given `--listen` URLs (use port 0) and extra
    /// arguments. A `{home}` in any argument is replaced by the home dir.
    pub fn start_listening(listen: &[&str], extra: &[&str]) -> TestServer {
        Self::start_with_env(listen, extra, &[])
    }

    /// [`start_listening`](Self::start_listening) with extra environment
    /// variables for the server process.
    pub fn start_with_env(listen: &[&str], extra: &[&str], env: &[(&str, &str)]) -> TestServer {
        let home = tempfile::tempdir().expect("tempdir");
        let root = home.path().join("root");
        std::fs::create_dir(&root).expect("mkdir root");
        let h = home.path().to_string_lossy().to_string();
        let mut args: Vec<String> = Vec::new();
        for l in listen {
            args.extend(["--listen".to_string(), l.replace("{home}", &h)]);
        }
        args.extend(extra.iter().map(|a| a.replace("{home}", &h)));
        let (child, rx) = spawn_serve(&root, home.path(), &args, env);
        let mut banner = Vec::new();
        let (urls, child) = wait_listening(&rx, listen.len(), &mut banner, child);
        let key_file = home.path().join(".config/skiff/key");
        let server = TestServer {
            child,
            home,
            root,
            key_file,
            urls,
            banner,
        };
        server.pin_known();
        server
    }

    /// The certificate fingerprint the server printed at start.
    pub fn fingerprint(&self) -> Option<String> {
        self.banner.iter().find_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("SHA256:"))
                .map(str::to_string)
        })
    }

    /// Pins the server's certificate for its TLS listeners in the client's
    /// known-servers file, as after an earlier connection: the clients the
    /// tests run then print nothing about trust on stderr. Tests of first
    /// use remove the file.
    pub fn pin_known(&self) {
        let Some(fp) = self.fingerprint() else { return };
        let file = self.home.path().join(".config/skiff/known_servers");
        let mut lines = std::fs::read_to_string(&file).unwrap_or_default();
        for url in &self.urls {
            if let Some(hp) = url.strip_prefix("tcp://") {
                lines.push_str(&format!("{hp} {fp}\n"));
            }
        }
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir config");
        std::fs::write(&file, lines).expect("write known_servers");
    }

    /// The client's known-servers file.
    pub fn known_file(&self) -> PathBuf {
        self.home.path().join(".config/skiff/known_servers")
    }

    /// The first listener's URL.
    pub fn url(&self) -> &str {
        &self.urls[0]
    }

    /// A `skiff` client command in the server's environment (same HOME,
    /// so it finds the key and the pinned certificate).
    pub fn client(&self) -> Command {
        env_for(Command::new(skiff_bin()), self.home.path())
    }

    /// The server's staging directory for interrupted uploads.
    pub fn staging_dir(&self) -> PathBuf {
        self.home.path().join(".local/state/skiff/partial")
    }

    /// Every staged (partial) upload file, with its length.
    pub fn staged_files(&self) -> Vec<(PathBuf, u64)> {
        let mut out = Vec::new();
        let Ok(users) = std::fs::read_dir(self.staging_dir()) else {
            return out;
        };
        for u in users.flatten() {
            for f in std::fs::read_dir(u.path()).into_iter().flatten().flatten() {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                out.push((f.path(), len));
            }
        }
        out
    }

    /// Waits (up to 10 s) until no live transfer holds any staged file:
    /// after a client is killed the server notices the closed connection
    /// a moment later, and only then can `--resume` take the file over.
    pub fn wait_staged_released(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let busy = self.staged_files().iter().any(|(path, _)| {
                let Ok(f) = fs::File::open(path) else {
                    return false;
                };
                let held = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock);
                held.is_err()
            });
            if !busy {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "a staged file is still held by the server"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Points HOME and the XDG directories at `home`, so nothing touches the
/// real user's files.
pub fn env_for(mut cmd: Command, home: &Path) -> Command {
    cmd.env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_STATE_HOME")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("SKIFF_KEY_FILE")
        .env_remove("SKIFF_KNOWN_SERVERS")
        .env_remove("SKIFF_CONFIG")
        .env("RUST_LOG", "warn");
    cmd
}

impl TestServer {
    /// Kills the server with SIGKILL and starts it again on the same home
    /// and root (same users, key and certificate) on a fresh TLS port, as
    /// after a crash and restart. `urls` then holds the new address.
    pub fn restart(&mut self) {
        self.restart_with_env(&[]);
    }

    /// [`restart`](Self::restart) with extra environment variables for the
    /// new server process; `banner` then holds what it printed before
    /// listening.
    pub fn restart_with_env(&mut self, env: &[(&str, &str)]) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let args = ["--listen".to_string(), "tcp://127.0.0.1:0".to_string()];
        let (child, rx) = spawn_serve(&self.root, self.home.path(), &args, env);
        self.banner.clear();
        let (urls, child) = wait_listening(&rx, 1, &mut self.banner, child);
        self.child = child;
        self.urls = urls;
        self.pin_known();
    }
}

/// Starts `skiff serve --root ROOT ARGS` in `home`'s environment (plus
/// `env`); its stdout lines arrive on the returned channel (drained for
/// as long as the server runs, so it never blocks on stdout).
fn spawn_serve(
    root: &Path,
    home: &Path,
    args: &[String],
    env: &[(&str, &str)],
) -> (Child, mpsc::Receiver<String>) {
    let mut cmd = Command::new(skiff_bin());
    cmd.envs(env.iter().copied());
    cmd.arg("serve").arg("--root").arg(root).args(args);
    let mut child = env_for(cmd, home)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn skiff serve");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // Keep draining after the receiver is gone.
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Reads the server's stdout until `n` `listening on URL` lines came (20 s
/// at most; the server is killed and the test fails past that); the other
/// lines go to `banner`. Returns the URLs and the child.
fn wait_listening(
    rx: &mpsc::Receiver<String>,
    n: usize,
    banner: &mut Vec<String>,
    mut child: Child,
) -> (Vec<String>, Child) {
    let mut urls = Vec::new();
    while urls.len() < n {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => match line.strip_prefix("listening on ") {
                Some(url) => urls.push(url.to_string()),
                None => banner.push(line),
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("server did not start; printed {banner:?}");
            }
        }
    }
    (urls, child)
}

/// Writes `size` bytes of incompressible, position-dependent data quickly:
/// one pseudo-random 1 MiB block, stamped with its index each time.
pub fn make_file(path: &Path, size: u64, seed: u64) {
    let mut block = random_bytes(1 << 20, seed);
    let mut f = fs::File::create(path).unwrap();
    let mut left = size;
    let mut i = 0u64;
    while left > 0 {
        block[..8].copy_from_slice(&i.to_le_bytes());
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).unwrap();
        left -= n as u64;
        i += 1;
    }
}

/// `n` deterministic pseudo-random bytes (xorshift64; no extra crate).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x = xorshift(x);
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

/// One step of xorshift64, for tests that want their own stream of
/// numbers.
pub fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// BLAKE3 of a file, in hex.
pub fn hash(path: &Path) -> String {
    let mut h = blake3::Hasher::new();
    h.update_reader(fs::File::open(path).unwrap()).unwrap();
    h.finalize().to_hex().to_string()
}

/// Lossy UTF-8 of a command's output.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `cmd` (no stdin) and kills it if it takes longer than `limit`, so
/// every test stays bounded even if something hangs.
pub fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let start = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("command did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

/// Writes a file only its owner may read (keys, users files).
pub fn write_private(path: &Path, contents: &str) {
    fs::write(path, contents).expect("write");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// Runs the client in the server's environment with `args`.
pub fn run(server: &TestServer, args: &[&str]) -> Output {
    server.client().args(args).output().unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn ok(o: &Output) {
    assert!(o.status.success(), "failed: {}", stderr(o));
}

/// Exit code 1 and the protocol error code in the message.
pub fn fails_with(o: &Output, code: &str) {
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(o));
    assert!(stderr(o).contains(code), "expected {code}: {}", stderr(o));
}

/// Every `.skiff-part` file under `dir`.
pub fn leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".skiff-part") {
                out.push(p);
            }
        }
    }
    out
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Runs `skiff sync -p PORT ARGS...` against `server`.
pub fn sync(server: &TestServer, args: &[&str]) -> Output {
    let port = server.url().rsplit(':').next().unwrap().to_string();
    let mut all = vec!["sync", "-p", &port];
    all.extend_from_slice(args);
    run(server, &all)
}

/// Runs a sync that must succeed and returns its `--json` summary.
pub fn sync_json(server: &TestServer, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let o = sync(server, &all);
    ok(&o);
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// `dirs` directories of `per_dir` small files (sizes vary, some empty).
pub fn small_tree(top: &Path, dirs: usize, per_dir: usize) {
    for d in 0..dirs {
        let dir = top.join(format!("d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for i in 0..per_dir {
            let size = ((d * per_dir + i) * 37 % 5000) as u64;
            make_file(&dir.join(format!("f{i:03}")), size, (d * 1000 + i) as u64);
        }
    }
}

/// Every regular file under `top`, relative.
pub fn files_under(top: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![top.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(
                    e.path()
                        .strip_prefix(top)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}
