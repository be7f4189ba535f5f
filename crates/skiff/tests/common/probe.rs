//! Raw probes for the availability tests: a hand-made frame client, process
//! figures read from /proc, bounded commands.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::Value;

// Where the availability tests have always found them (each test binary
// uses a different part of `common`, hence the allowance).
#[allow(unused_imports)]
pub use super::{run_bounded, text};

/// Resident memory of process `pid` in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Raises this process's soft fd limit to at least `need`.
pub fn raise_fd_limit(need: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < need {
        assert!(
            hard >= need,
            "need {need} file descriptors, hard limit {hard}"
        );
        setrlimit(Resource::RLIMIT_NOFILE, need, hard).expect("setrlimit");
    }
}

/// `HOST:PORT` of a `tcp://` or `tcp+plain://` URL.
pub fn host_port(url: &str) -> String {
    url.split_once("://").map_or(url, |(_, r)| r).to_string()
}

/// The socket of a [`RawConn`]: plain TCP or a Unix socket.
pub enum RawSock {
    /// A `tcp+plain://` listener.
    Tcp(TcpStream),
    /// A `unix://` listener.
    Unix(UnixStream),
}

impl RawSock {
    /// Bounds each read (the peer may never answer).
    #[allow(dead_code)] // Not every test binary changes the default.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            RawSock::Tcp(s) => s.set_read_timeout(t),
            RawSock::Unix(s) => s.set_read_timeout(t),
        }
    }

    /// Bounds each write (the peer may never read).
    #[allow(dead_code)] // Not every test binary changes the default.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            RawSock::Tcp(s) => s.set_write_timeout(t),
            RawSock::Unix(s) => s.set_write_timeout(t),
        }
    }
}

impl Read for RawSock {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            RawSock::Tcp(s) => s.read(buf),
            RawSock::Unix(s) => s.read(buf),
        }
    }
}

impl Write for RawSock {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            RawSock::Tcp(s) => s.write(buf),
            RawSock::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            RawSock::Tcp(s) => s.flush(),
            RawSock::Unix(s) => s.flush(),
        }
    }
}

/// A frame client without TLS that writes what it is told, however
/// wrong, and reads frame headers back: it speaks frames to the real
/// server by hand.
pub struct RawConn {
    /// The socket.
    pub sock: RawSock,
}

impl RawConn {
    /// Connects to a `tcp+plain://` URL with a 10 s read timeout.
    pub fn connect(url: &str) -> RawConn {
        let sock = TcpStream::connect(host_port(url)).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        RawConn {
            sock: RawSock::Tcp(sock),
        }
    }

    /// Connects to a `unix://` URL with a 10 s read timeout.
    #[allow(dead_code)] // Only some test binaries use Unix sockets.
    pub fn unix(url: &str) -> RawConn {
        let path = url.strip_prefix("unix://").expect("a unix:// URL");
        let sock = UnixStream::connect(path).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        RawConn {
            sock: RawSock::Unix(sock),
        }
    }

    /// Writes one frame with the given header text and body; write errors
    /// (the server already closed) are returned, not fatal.
    pub fn send_raw(&mut self, header: &[u8], body: &[u8]) -> std::io::Result<()> {
        let mut buf = (header.len() as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(header);
        buf.extend_from_slice(body);
        self.sock.write_all(&buf)
    }

    /// Writes one frame with the header `v` and no body.
    pub fn send(&mut self, v: &Value) -> std::io::Result<()> {
        self.send_raw(v.to_string().as_bytes(), b"")
    }

    /// The next frame's header (its body skipped); `None` on close.
    pub fn recv(&mut self) -> Option<Value> {
        let mut len = [0u8; 4];
        self.sock.read_exact(&mut len).ok()?;
        let mut h = vec![0u8; u32::from_be_bytes(len) as usize];
        self.sock.read_exact(&mut h).ok()?;
        let v: Value = serde_json::from_slice(&h).ok()?;
        if let Some(n) = v.get("len").and_then(Value::as_u64) {
            let mut body = vec![0u8; n as usize];
            self.sock.read_exact(&mut body).ok()?;
        }
        Some(v)
    }

    /// Whether the server has closed the connection (EOF or reset).
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.sock.read(&mut b), Ok(0) | Err(_))
    }
}

impl RawConn {
    /// Connects to a `tcp+plain://` URL and logs in with the first key of
    /// `key_file` (the channel binding is 32 zero bytes without TLS), so a
    /// test can send authenticated frames by hand. Panics unless the
    /// server answers `welcome`.
    pub fn login(url: &str, key_file: &std::path::Path) -> RawConn {
        use base64::engine::general_purpose::STANDARD as B64;
        use base64::Engine;
        use hmac::{Hmac, Mac};
        let text = std::fs::read_to_string(key_file).expect("key file");
        let line = text
            .lines()
            .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .expect("a key line");
        let (user, key) = line.split_once(' ').expect("NAME KEY");
        let key = B64.decode(key.trim()).expect("base64 key");
        let proof = |label: &[u8], cn: &[u8], sn: &[u8]| {
            let mut m = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
            for part in [label, &[0u8; 32][..], cn, sn] {
                m.update(part);
            }
            B64.encode(m.finalize().into_bytes())
        };
        let mut conn = RawConn::connect(url);
        let cn: [u8; 32] = rand::random();
        let challenge = conn.hello(user, &cn);
        let sn = B64
            .decode(challenge["nonce"].as_str().expect("server nonce"))
            .expect("base64 nonce");
        conn.send(&serde_json::json!({"op":"auth","proof":proof(b"skiff/1 client", &cn, &sn)}))
            .expect("send auth");
        let welcome = conn.recv().expect("welcome");
        assert_eq!(welcome["op"], "welcome", "{welcome}");
        conn
    }

    /// Sends `hello` with the client nonce `cn` and returns the server's
    /// answer (a challenge, or an error).
    pub fn hello(&mut self, user: &str, cn: &[u8; 32]) -> Value {
        use base64::engine::general_purpose::STANDARD as B64;
        use base64::Engine;
        self.send(&serde_json::json!({"op":"hello","v":1,"user":user,"nonce":B64.encode(cn)}))
            .expect("send hello");
        self.recv().expect("an answer to hello")
    }
}
