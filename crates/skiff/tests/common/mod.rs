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
        let mut cmd = Command::new(skiff_bin());
        cmd.envs(env.iter().copied());
        cmd.arg("serve").arg("--root").arg(&root);
        for l in listen {
            cmd.arg("--listen").arg(l.replace("{home}", &h));
        }
        for a in extra {
            cmd.arg(a.replace("{home}", &h));
        }
        let mut child = env_for(cmd, home.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn skiff serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Keep draining so the server never blocks on stdout.
                    continue;
                }
            }
        });
        let mut urls = Vec::new();
        let mut banner = Vec::new();
        while urls.len() < listen.len() {
            match rx.recv_timeout(Duration::from_secs(20)) {
                Ok(line) => match line.strip_prefix("listening on ") {
                    Some(url) => urls.push(url.to_string()),
                    None => banner.push(line),
                },
                Err(_) => {
                    let _ = child.kill();
                    panic!("server did not start; printed {banner:?}");
                }
            }
        }
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
        let mut cmd = Command::new(skiff_bin());
        cmd.envs(env.iter().copied());
        cmd.arg("serve")
            .arg("--root")
            .arg(&self.root)
            .arg("--listen")
            .arg("tcp://127.0.0.1:0");
        let mut child = env_for(cmd, self.home.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("respawn skiff serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        self.child = child;
        self.banner.clear();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("restarted server did not start");
            if let Some(url) = line.strip_prefix("listening on ") {
                self.urls = vec![url.to_string()];
                self.pin_known();
                return;
            }
            self.banner.push(line);
        }
    }
}

/// Writes `size` bytes of incompressible, position-dependent data quickly:
/// one pseudo-random 1 MiB block, stamped with its index each time.
pub fn make_file(path: &Path, size: u64, seed: u64) {
    let mut block = vec![0u8; 1 << 20];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for b in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
    }
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

pub fn hash(path: &Path) -> String {
    let mut h = blake3::Hasher::new();
    h.update_reader(fs::File::open(path).unwrap()).unwrap();
    h.finalize().to_hex().to_string()
}

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
