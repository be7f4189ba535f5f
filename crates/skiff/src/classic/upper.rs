//! The HMAC program (认证客户端的链接合法性): the server sends 32 random
//! bytes, the client answers `HMAC(secret, bytes)`, the server compares in
//! constant time and then echoes every message upper-cased. A wrong answer
//! closes the link.

use std::io::{self, BufRead, Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use skiff_net::{Connection, StreamHandler};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The tutorial's port for this program.
pub const DEFAULT_PORT: u16 = 9999;
/// The tutorial's `secret_key`.
pub const DEFAULT_SECRET: &str = "linhaifeng bang bang bang";
/// The size of the server's challenge (`os.urandom(32)`).
pub const CHALLENGE_LEN: usize = 32;
/// The tutorial's `bufsize`: one message is what one `recv(1024)` returns.
pub const BUFSIZE: usize = 1024;

/// The HMAC's hash (`hmac.new(key, msg, 'md5')` in the tutorial).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Digest {
    /// HMAC-MD5, Python 2's `hmac.new` default that the tutorial relied on.
    Md5,
    /// HMAC-SHA256.
    Sha256,
}

impl Digest {
    /// The length of the answer: `len(digest)`.
    pub fn output_len(self) -> usize {
        match self {
            Digest::Md5 => 16,
            Digest::Sha256 => 32,
        }
    }

    /// `hmac.new(key, msg, digest).digest()`.
    pub fn mac(self, key: &[u8], msg: &[u8]) -> Vec<u8> {
        match self {
            Digest::Md5 => keyed::<Hmac<md5::Md5>>(key, msg)
                .finalize()
                .into_bytes()
                .to_vec(),
            Digest::Sha256 => keyed::<Hmac<sha2::Sha256>>(key, msg)
                .finalize()
                .into_bytes()
                .to_vec(),
        }
    }

    /// `hmac.compare_digest(answer, digest)`: constant time.
    pub fn verify(self, key: &[u8], msg: &[u8], answer: &[u8]) -> bool {
        match self {
            Digest::Md5 => keyed::<Hmac<md5::Md5>>(key, msg)
                .verify_slice(answer)
                .is_ok(),
            Digest::Sha256 => keyed::<Hmac<sha2::Sha256>>(key, msg)
                .verify_slice(answer)
                .is_ok(),
        }
    }
}

fn keyed<M: Mac + hmac::digest::KeyInit>(key: &[u8], msg: &[u8]) -> M {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(msg);
    mac
}

/// The server side: challenge, check, then upper-case echo.
#[derive(Debug, Clone)]
pub struct UpperServer {
    secret: Vec<u8>,
    digest: Digest,
    auth_timeout: Duration,
}

impl UpperServer {
    /// A handler accepting clients that know `secret`; a client gets
    /// `auth_timeout` to answer the challenge.
    pub fn new(secret: Vec<u8>, digest: Digest, auth_timeout: Duration) -> Self {
        UpperServer {
            secret,
            digest,
            auth_timeout,
        }
    }

    /// The tutorial's `conn_auth`.
    async fn authenticate(&self, conn: &mut Connection) -> io::Result<bool> {
        let mut challenge = [0u8; CHALLENGE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut challenge);
        conn.stream().write_all(&challenge).await?;
        let mut answer = vec![0u8; self.digest.output_len()];
        match tokio::time::timeout(self.auth_timeout, conn.stream().read_exact(&mut answer)).await {
            Ok(Ok(_)) => Ok(self.digest.verify(&self.secret, &challenge, &answer)),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                tracing::info!(peer = %conn.peer(), "no answer to the challenge in time");
                Ok(false)
            }
        }
    }
}

impl StreamHandler for UpperServer {
    async fn handle(&self, conn: &mut Connection) -> io::Result<()> {
        tracing::info!(peer = %conn.peer(), "新连接: checking the new link");
        if !self.authenticate(conn).await? {
            tracing::info!(peer = %conn.peer(), "该链接不合法,关闭: wrong answer, closing");
            return Ok(());
        }
        tracing::info!(peer = %conn.peer(), "链接合法: authenticated");
        let mut buf = [0u8; BUFSIZE];
        loop {
            let n = conn.stream().read(&mut buf).await?;
            if n == 0 {
                return Ok(());
            }
            // Python's bytes.upper(): ASCII letters only, length unchanged.
            buf[..n].make_ascii_uppercase();
            conn.stream().write_all(&buf[..n]).await?;
        }
    }
}

/// The client side: answer the challenge, then the `>>: ` loop.
#[derive(Debug, Clone)]
pub struct UpperClient {
    /// The server.
    pub addr: SocketAddr,
    /// The shared secret.
    pub secret: Vec<u8>,
    /// The HMAC's hash.
    pub digest: Digest,
    /// How long to wait for the server at each step.
    pub timeout: Duration,
}

impl UpperClient {
    /// Authenticates, then sends each line of `input` and prints the echo.
    pub fn run(&self, input: &mut impl BufRead, out: &mut impl Write) -> io::Result<()> {
        let mut conn = super::connect(self.addr, self.timeout)?;
        let mut challenge = [0u8; CHALLENGE_LEN];
        conn.read_exact(&mut challenge)
            .map_err(|e| super::explain_timeout(e, "challenge", self.timeout))?;
        conn.write_all(&self.digest.mac(&self.secret, &challenge))?;
        super::prompt::each_line(input, out, |msg, out| {
            conn.write_all(msg)?;
            // The echo has exactly as many bytes as the message, so read
            // them all (the tutorial's single recv(1024) may get a part).
            let mut echo = vec![0u8; msg.len()];
            conn.read_exact(&mut echo).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the server closed the connection: wrong secret or --digest?",
                ),
                _ => super::explain_timeout(e, "echo", self.timeout),
            })?;
            out.write_all(String::from_utf8_lossy(&echo).as_bytes())?;
            out.write_all(b"\n")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_md5_matches_rfc_2104_vector() {
        // RFC 2104 test case 2.
        let mac = Digest::Md5.mac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex::encode(&mac), "750c783e6ab0b503eaa86e310a5db738");
        assert!(Digest::Md5.verify(b"Jefe", b"what do ya want for nothing?", &mac));
        assert!(!Digest::Md5.verify(b"jefe", b"what do ya want for nothing?", &mac));
        assert!(!Digest::Sha256.verify(b"Jefe", b"what do ya want for nothing?", &mac));
    }
}
