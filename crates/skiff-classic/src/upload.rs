//! The file upload with a custom header (自定制报头): `struct.pack('i',
//! len(header))`, the JSON header `{"file_size", "file_name", "md5"}`, then
//! `file_size` bytes. The server answers nothing, as the tutorial.
//!
//! Nothing from the header is trusted: the name is cut to its base name, the
//! header is at most [`MAX_HEADER`] bytes, the size must be a whole number
//! of bytes, the data streams into a temporary file in the root that only
//! becomes the real file once its md5 matches, and an existing file is
//! never replaced unless the server was started to allow it
//! ([`UploadServer::overwrite`]). A refused upload
//! leaves nothing behind and the connection is reset, which is the only
//! "no" this protocol can say; a clean close means the file was stored.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest as _, Md5};
use skiff_net::{Connection, StreamHandler};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The port of the tutorial's socketserver file server (`FtpServer` on
/// 8080); the upload snippet itself names none.
pub const DEFAULT_PORT: u16 = 8080;
/// The largest header accepted (64 KiB): the three fields need ~300 bytes.
pub const MAX_HEADER: usize = 64 * 1024;
/// The longest file name most filesystems accept.
const MAX_NAME: usize = 255;
/// Receive buffer size.
const CHUNK: usize = 64 * 1024;

/// What the header announced, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The base name the file is stored under.
    pub name: String,
    /// How many bytes follow.
    pub size: u64,
    /// The md5 the bytes must have.
    pub md5: [u8; 16],
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The header length was negative or over [`MAX_HEADER`].
    #[error("header length {0} is not in 0..={max}", max = MAX_HEADER)]
    HeaderLength(i32),
    /// The header was not the JSON object the tutorial sends.
    #[error("bad header: {0}")]
    BadHeader(String),
    /// A file of that name exists and overwriting was not allowed.
    #[error("{0} exists; the server does not overwrite files (start it with --overwrite)")]
    Exists(String),
    /// The data did not have the announced md5.
    #[error("md5 mismatch for {name}: header said {expected}, data has {actual}")]
    Checksum {
        /// The file.
        name: String,
        /// From the header.
        expected: String,
        /// Of the data received.
        actual: String,
    },
    /// The file could not be written.
    #[error("cannot store {name}: {source}")]
    Store {
        /// The file.
        name: String,
        /// Why.
        source: io::Error,
    },
}

impl Header {
    /// Parses and checks the JSON header.
    pub fn parse(json: &[u8]) -> Result<Header, Refusal> {
        let bad = |m: &str| Refusal::BadHeader(m.to_string());
        let value: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| Refusal::BadHeader(e.to_string()))?;
        let name = value
            .get("file_name")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("file_name is missing or not a string"))?;
        let size = value
            .get("file_size")
            .ok_or_else(|| bad("file_size is missing"))?;
        let size = match (size.as_u64(), size.as_i64()) {
            (Some(n), _) => n,
            (None, Some(n)) => return Err(Refusal::BadHeader(format!("negative file_size {n}"))),
            _ => return Err(bad("file_size is not a whole number")),
        };
        let md5 = value
            .get("md5")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("md5 is missing or not a string"))?;
        let md5: [u8; 16] = hex::decode(md5)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad("md5 is not 32 hex digits"))?;
        Ok(Header {
            name: base_name(name)?,
            size,
            md5,
        })
    }
}

/// The last path component of `name`, whichever separator the sender's
/// system uses: the tutorial sends `/a/b/c/d/e/a.txt`, a Windows client
/// `C:\a.txt`. Names that would not be a plain file in the root are refused.
pub fn base_name(name: &str) -> Result<String, Refusal> {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    if base.is_empty()
        || base == "."
        || base == ".."
        || base.contains('\0')
        || base.len() > MAX_NAME
    {
        return Err(Refusal::BadHeader(format!(
            "file_name {name:?} has no usable base name"
        )));
    }
    Ok(base.to_string())
}

/// The server side: stores uploads under its root.
#[derive(Debug, Clone)]
pub struct UploadServer {
    root: PathBuf,
    overwrite: bool,
}

impl UploadServer {
    /// A handler storing files in `root` (which must be a directory),
    /// refusing any name that already exists there.
    pub fn new(root: PathBuf) -> Self {
        UploadServer {
            root,
            overwrite: false,
        }
    }

    /// Lets an upload replace an existing file of its name (the file, or
    /// a symlink itself, is replaced, never followed). Off by default: the
    /// protocol has no authentication, so anyone who can connect could
    /// otherwise replace any file in the root (`.bashrc` in a home
    /// directory, say).
    pub fn overwrite(mut self, yes: bool) -> Self {
        self.overwrite = yes;
        self
    }

    /// Refuses early (before any data is received) a name that exists; the
    /// commit checks again, atomically, since a file may appear meanwhile.
    fn check_free(&self, header: &Header) -> Result<(), Refusal> {
        let exists = std::fs::symlink_metadata(self.root.join(&header.name)).is_ok();
        if exists && !self.overwrite {
            return Err(Refusal::Exists(header.name.clone()));
        }
        Ok(())
    }

    /// Receives one announced file into a temporary file, checks its md5,
    /// then renames it into place. On any failure the temporary file goes.
    async fn receive(
        &self,
        conn: &mut Connection,
        header: &Header,
    ) -> io::Result<Result<(), Refusal>> {
        let store = |source| Refusal::Store {
            name: header.name.clone(),
            source,
        };
        let mut temp = match TempFile::create(&self.root).await {
            Ok(t) => t,
            Err(e) => return Ok(Err(store(e))),
        };
        let mut md5 = Md5::new();
        let mut buf = vec![0u8; CHUNK];
        let mut left = header.size;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = conn.stream().read(&mut buf[..want]).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("client left {left} bytes before the end of {}", header.name),
                ));
            }
            md5.update(&buf[..n]);
            if let Err(e) = temp.file.write_all(&buf[..n]).await {
                return Ok(Err(store(e)));
            }
            left -= n as u64;
        }
        let actual: [u8; 16] = md5.finalize().into();
        if actual != header.md5 {
            return Ok(Err(Refusal::Checksum {
                name: header.name.clone(),
                expected: hex::encode(header.md5),
                actual: hex::encode(actual),
            }));
        }
        if let Err(e) = temp.file.sync_all().await {
            return Ok(Err(store(e)));
        }
        let dest = self.root.join(&header.name);
        if self.overwrite {
            return Ok(temp.commit_replacing(&dest).await.map_err(store));
        }
        Ok(match temp.commit_new(&dest).await {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                Err(Refusal::Exists(header.name.clone()))
            }
            r => r.map_err(store),
        })
    }
}

impl StreamHandler for UploadServer {
    async fn handle(&self, conn: &mut Connection) -> io::Result<()> {
        loop {
            let mut len = [0u8; 4];
            match conn.stream().read_exact(&mut len).await {
                Ok(_) => {}
                // The client closed between files: done.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let header = match read_header(conn, i32::from_le_bytes(len)).await? {
                Ok(h) => h,
                Err(refusal) => return refuse(conn, refusal),
            };
            if let Err(refusal) = self.check_free(&header) {
                return refuse(conn, refusal);
            }
            let received = match self.receive(conn, &header).await {
                Ok(r) => r,
                Err(e) => {
                    // Cut short or stalled: the temporary file is gone.
                    reset(conn);
                    return Err(e);
                }
            };
            match received {
                Ok(()) => tracing::info!(
                    peer = %conn.peer(), name = %header.name, size = header.size, "stored, md5 ok"
                ),
                Err(refusal) => return refuse(conn, refusal),
            }
        }
    }

    /// Over the connection limit: the protocol's only "no", a reset.
    async fn reject_busy(&self, mut conn: Connection) {
        reset(&mut conn);
    }
}

/// Reads and checks the header after its 4-byte length.
async fn read_header(conn: &mut Connection, len: i32) -> io::Result<Result<Header, Refusal>> {
    let Some(len) = usize::try_from(len).ok().filter(|&n| n <= MAX_HEADER) else {
        return Ok(Err(Refusal::HeaderLength(len)));
    };
    let mut json = vec![0u8; len];
    conn.stream().read_exact(&mut json).await?;
    Ok(Header::parse(&json))
}

/// Logs the refusal and resets the connection: the protocol has no answer,
/// and a reset (unlike a clean close) tells the client it failed.
fn refuse(conn: &mut Connection, refusal: Refusal) -> io::Result<()> {
    tracing::warn!(peer = %conn.peer(), "upload refused: {refusal}");
    reset(conn);
    Ok(())
}

/// Makes the coming close send a TCP reset instead of a clean end.
fn reset(conn: &mut Connection) {
    if let Some(tcp) = conn.stream().as_tcp() {
        let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
    }
}

/// A temporary file in the root, removed on drop unless committed.
struct TempFile {
    path: PathBuf,
    file: tokio::fs::File,
    committed: bool,
}

impl TempFile {
    async fn create(root: &Path) -> io::Result<TempFile> {
        let path = root.join(format!(".skiff-upload-{:016x}.tmp", rand::random::<u64>()));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .await?;
        Ok(TempFile {
            path,
            file,
            committed: false,
        })
    }

    /// Renames the file to `dest`, replacing what was there (a symlink
    /// there is replaced, not followed).
    async fn commit_replacing(mut self, dest: &Path) -> io::Result<()> {
        tokio::fs::rename(&self.path, dest).await?;
        self.committed = true;
        Ok(())
    }

    /// Renames the file to `dest` only if nothing has that name
    /// (`renameat2(RENAME_NOREPLACE)` fails with `AlreadyExists`
    /// atomically, whatever is there, a dangling symlink included), so the
    /// temporary name and the final one are never both visible.
    async fn commit_new(mut self, dest: &Path) -> io::Result<()> {
        let (from, to) = (self.path.clone(), dest.to_path_buf());
        tokio::task::spawn_blocking(move || {
            use nix::fcntl::{renameat2, RenameFlags};
            renameat2(None, &from, None, &to, RenameFlags::RENAME_NOREPLACE)
                .map_err(io::Error::from)
        })
        .await
        .map_err(io::Error::other)??;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `json.dumps(header)` byte for byte: Python's `", "` and `": "`
/// separators, its key order, and `\uXXXX` for anything not ASCII.
pub fn python_json_header(name: &str, size: u64, md5_hex: &str) -> String {
    format!(
        "{{\"file_size\": {size}, \"file_name\": {}, \"md5\": {}}}",
        python_json_string(name),
        python_json_string(md5_hex)
    )
}

/// A JSON string as Python's `json.dumps` (with `ensure_ascii`) writes it.
fn python_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

/// The client side: one connection per file.
#[derive(Debug, Clone)]
pub struct UploadClient {
    /// The server.
    pub addr: SocketAddr,
    /// How long to wait for the server at each step.
    pub timeout: Duration,
}

impl UploadClient {
    /// Sends `path` (its base name, size and md5 in the header) and waits
    /// for the server's verdict: a clean close is success, a reset a
    /// refusal.
    pub fn upload(&self, path: &Path) -> io::Result<u64> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: no file name in UTF-8", path.display()),
                )
            })?
            .to_string();
        let mut file = std::fs::File::open(path)?;
        let mut md5 = Md5::new();
        let size = io::copy(&mut file, &mut Md5Writer(&mut md5))?;
        let md5_hex = hex::encode(md5.finalize());
        let header = python_json_header(&name, size, &md5_hex);

        let mut conn = crate::connect(self.addr, self.timeout)?;
        let refused = |e: io::Error| match e.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected => io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the server refused {name} (it reset the connection)"),
            ),
            _ => e,
        };
        conn.write_all(&crate::pack_len(header.len())?)
            .map_err(refused)?;
        conn.write_all(header.as_bytes()).map_err(refused)?;
        let mut file = std::fs::File::open(path)?;
        let sent = io::copy(&mut (&mut file).take(size), &mut conn).map_err(refused)?;
        if sent != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} shrank while being sent", path.display()),
            ));
        }
        conn.shutdown(Shutdown::Write).map_err(refused)?;
        let mut rest = [0u8; 1];
        match conn.read(&mut rest) {
            Ok(0) => Ok(size),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the server answered something; the tutorial's server answers nothing",
            )),
            Err(e) => Err(crate::explain_timeout(refused(e), "verdict", self.timeout)),
        }
    }
}

/// Feeds `io::copy` into an md5.
struct Md5Writer<'a>(&'a mut Md5);

impl Write for Md5Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_json_dumps_byte_for_byte() {
        // python3 -c 'import json; print(json.dumps({"file_size": 5,
        //   "file_name": "a\"b\\ é😀.txt", "md5": "x"}))'
        assert_eq!(
            python_json_header("a\"b\\ é😀.txt", 5, "x"),
            r#"{"file_size": 5, "file_name": "a\"b\\ \u00e9\ud83d\ude00.txt", "md5": "x"}"#
        );
    }

    #[test]
    fn names_are_cut_to_their_base() {
        assert_eq!(base_name("/a/b/c/d/e/a.txt").unwrap(), "a.txt");
        assert_eq!(base_name("C:\\x\\b.txt").unwrap(), "b.txt");
        assert_eq!(base_name("../../etc/passwd").unwrap(), "passwd");
        for bad in ["", "/", "a/..", "..", ".", "x/", "a\0b"] {
            assert!(base_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn headers_are_checked() {
        let md5 = "8f6fbf8347faa4924a76856701edb0f3";
        let ok = format!(
            r#"{{"file_size": 1073741824000, "file_name": "/a/b/c/d/e/a.txt", "md5": "{md5}"}}"#
        );
        let h = Header::parse(ok.as_bytes()).unwrap();
        assert_eq!((h.name.as_str(), h.size), ("a.txt", 1073741824000));
        for bad in [
            format!(r#"{{"file_size": -1, "file_name": "a", "md5": "{md5}"}}"#),
            format!(r#"{{"file_size": 1.5, "file_name": "a", "md5": "{md5}"}}"#),
            r#"{"file_size": 1, "file_name": "a", "md5": "abc"}"#.to_string(),
            format!(r#"{{"file_size": 1, "file_name": 7, "md5": "{md5}"}}"#),
            format!(r#"{{"file_name": "a", "md5": "{md5}"}}"#),
            "[]".to_string(),
            "".to_string(),
        ] {
            assert!(Header::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
