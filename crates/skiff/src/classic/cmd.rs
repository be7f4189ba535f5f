//! The custom-header command program (自定制报头): the client sends a
//! command, the server runs it with the shell and answers
//! `struct.pack('i', n)` + n bytes: stderr when it is non-empty, else stdout.
//!
//! Where the tutorial's server reads stderr to the end before stdout (and
//! hangs when a command fills the stdout pipe first), skiff reads both at
//! once into [`Spool`]s that move to an unlinked temporary file past
//! [`SPOOL_MEMORY`], so memory per connection stays small whatever the
//! command prints. A command that runs too long or prints too much is
//! killed (with its whole process group) and the reply says why.

use std::ffi::OsStr;
use std::io::{self, BufRead, Read, Write};
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::process::Stdio;
use std::time::Duration;

use skiff_net::{Connection, StreamHandler};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use super::text::{Decoder, Encoding};

/// The tutorial's port for this program.
pub const DEFAULT_PORT: u16 = 8080;
/// The tutorial's `BUFSIZE`: a command is what one `recv(1024)` returns.
pub const COMMAND_MAX: usize = 1024;
/// Output kept in memory before it moves to a temporary file.
pub const SPOOL_MEMORY: usize = 256 * 1024;
/// The largest reply `struct.pack('i')` can announce, less room for a note.
pub const MAX_OUTPUT_LIMIT: u64 = i32::MAX as u64 - 4096;

/// How the server runs commands.
#[derive(Debug, Clone)]
pub struct CmdConfig {
    /// A command still running after this long is killed.
    pub command_timeout: Duration,
    /// A command printing more than this on stdout or stderr is killed.
    pub max_output: u64,
}

/// The server side: one task per connection, commands run one at a time
/// per connection, as the tutorial's loop.
#[derive(Debug, Clone)]
pub struct CmdServer {
    config: CmdConfig,
}

impl CmdServer {
    /// A handler running commands with `config`.
    pub fn new(config: CmdConfig) -> Self {
        CmdServer { config }
    }
}

impl StreamHandler for CmdServer {
    async fn handle(&self, conn: &mut Connection) -> io::Result<()> {
        tracing::info!(peer = %conn.peer(), "客户端 connected");
        let mut cmd = [0u8; COMMAND_MAX];
        loop {
            let n = conn.stream().read(&mut cmd).await?;
            if n == 0 {
                return Ok(());
            }
            tracing::info!(peer = %conn.peer(), cmd = %String::from_utf8_lossy(&cmd[..n]), "cmd");
            let reply = run(&cmd[..n], &self.config).await;
            let stream = conn.stream();
            stream
                .write_all(&super::pack_len(reply.len_usize()?)?)
                .await?;
            reply.send(stream).await?;
        }
    }
}

/// Runs `cmd` with `sh -c` and returns the reply: stderr when it is
/// non-empty, else stdout. Failures to run become the reply's stderr, so
/// the client always gets an answer it can print.
pub async fn run(cmd: &[u8], config: &CmdConfig) -> Spool {
    let mut stderr = Spool::default();
    match run_into(cmd, config, &mut stderr).await {
        Ok(Some(stdout)) if stderr.is_empty() => stdout,
        Ok(_) => stderr,
        Err(note) => {
            // Best effort: a failing temp file must not hide the reason.
            let _ = stderr.push(format!("skiff: {note}\n").as_bytes()).await;
            stderr
        }
    }
}

/// Runs the command, filling `stderr`; returns stdout, or why it failed.
async fn run_into(
    cmd: &[u8],
    config: &CmdConfig,
    stderr: &mut Spool,
) -> Result<Option<Spool>, String> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(OsStr::from_bytes(cmd))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run the command: {e}"))?;
    let pid = child.id();
    let (Some(out_pipe), Some(err_pipe)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("cannot capture the command's output".into());
    };
    let mut stdout = Spool::default();
    let max = config.max_output;
    let collect = async {
        tokio::try_join!(
            stdout.fill(out_pipe, max, "stdout"),
            stderr.fill(err_pipe, max, "stderr")
        )?;
        child.wait().await.map_err(|e| e.to_string())
    };
    let outcome = match tokio::time::timeout(config.command_timeout, collect).await {
        Ok(Ok(_status)) => return Ok(Some(stdout)),
        Ok(Err(why)) => why,
        Err(_) => format!(
            "command still running after {}s: killed",
            config.command_timeout.as_secs_f64()
        ),
    };
    // Timed out or overflowed: kill the command with its background jobs
    // (the group leader is not reaped yet, so its id cannot be reused).
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.wait().await;
    Err(outcome)
}

/// Bytes of one output stream: in memory up to [`SPOOL_MEMORY`], then in an
/// unlinked temporary file (gone as soon as it is closed).
#[derive(Debug, Default)]
pub struct Spool {
    memory: Vec<u8>,
    file: Option<tokio::fs::File>,
    len: u64,
}

impl Spool {
    /// How many bytes it holds.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn len_usize(&self) -> io::Result<usize> {
        usize::try_from(self.len).map_err(io::Error::other)
    }

    /// Appends `bytes`, moving to a temporary file when memory is full.
    async fn push(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.file.is_none() && self.memory.len() + bytes.len() > SPOOL_MEMORY {
            let mut file = tokio::fs::File::from_std(unlinked_temp_file()?);
            file.write_all(&self.memory).await?;
            self.memory = Vec::new();
            self.file = Some(file);
        }
        match &mut self.file {
            Some(f) => f.write_all(bytes).await?,
            None => self.memory.extend_from_slice(bytes),
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Reads `pipe` to its end; more than `max` bytes is an error.
    async fn fill(
        &mut self,
        mut pipe: impl AsyncRead + Unpin,
        max: u64,
        name: &str,
    ) -> Result<(), String> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = pipe
                .read(&mut buf)
                .await
                .map_err(|e| format!("reading the command's {name}: {e}"))?;
            if n == 0 {
                return Ok(());
            }
            if self.len + n as u64 > max {
                return Err(format!(
                    "the command printed more than {max} bytes on {name} (--max-output): killed"
                ));
            }
            self.push(&buf[..n])
                .await
                .map_err(|e| format!("storing the command's {name}: {e}"))?;
        }
    }

    /// Writes everything it holds to `out`.
    async fn send(self, out: &mut (impl AsyncWrite + Unpin)) -> io::Result<()> {
        match self.file {
            None => out.write_all(&self.memory).await,
            Some(mut f) => {
                f.flush().await?;
                f.seek(io::SeekFrom::Start(0)).await?;
                let copied = tokio::io::copy(&mut f.take(self.len), out).await?;
                if copied != self.len {
                    return Err(io::Error::other("spooled output shrank"));
                }
                Ok(())
            }
        }
    }
}

/// A read-write file in the temporary directory that has no name, so
/// nothing is left behind however the server stops.
fn unlinked_temp_file() -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::env::temp_dir();
    let anonymous = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(&dir);
    if let Ok(f) = anonymous {
        return Ok(f);
    }
    // Filesystems without O_TMPFILE: create a random name, then unlink it.
    let path = dir.join(format!(".skiff-cmd-{:016x}", rand::random::<u64>()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

/// The client side: the tutorial's `>>: ` loop.
#[derive(Debug, Clone)]
pub struct CmdClient {
    /// The server.
    pub addr: SocketAddr,
    /// How to decode the server's output.
    pub encoding: Encoding,
    /// How long to wait for the server at each step.
    pub timeout: Duration,
}

impl CmdClient {
    /// Sends each line of `input` as a command and prints each reply on
    /// `out`, until `quit` or end of input.
    pub fn run(&self, input: &mut impl BufRead, out: &mut impl Write) -> io::Result<()> {
        let mut conn = super::connect(self.addr, self.timeout)?;
        super::prompt::each_line(input, out, |cmd, out| {
            if cmd.len() > COMMAND_MAX {
                // The server reads one recv(1024): the rest would run as a
                // second command.
                eprintln!(
                    "skiff: command not sent: {} bytes, but the server reads at most {COMMAND_MAX}",
                    cmd.len()
                );
                return Ok(());
            }
            conn.write_all(cmd)?;
            self.print_reply(&mut conn, out)
        })
    }

    /// Reads one `struct.pack('i', n)` + n bytes reply, decoding as it goes.
    fn print_reply(&self, conn: &mut impl Read, out: &mut dyn Write) -> io::Result<()> {
        let mut head = [0u8; 4];
        conn.read_exact(&mut head)
            .map_err(|e| super::explain_timeout(e, "reply length", self.timeout))?;
        let n = i32::from_le_bytes(head);
        let Ok(mut left) = u64::try_from(n) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the server announced a reply of {n} bytes"),
            ));
        };
        let mut decoder = Decoder::new(self.encoding);
        let mut buf = vec![0u8; 64 * 1024];
        let mut text = String::new();
        let mut last = None;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let got = conn
                .read(&mut buf[..want])
                .map_err(|e| super::explain_timeout(e, "rest of the reply", self.timeout))?;
            if got == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the server closed the connection {left} bytes before the end of the reply"
                    ),
                ));
            }
            left -= got as u64;
            last = Some(buf[got - 1]);
            text.clear();
            decoder.decode(&buf[..got], &mut text);
            out.write_all(text.as_bytes())?;
        }
        text.clear();
        decoder.finish(&mut text);
        out.write_all(text.as_bytes())?;
        // The tutorial's print() ends the output with a newline.
        if last.is_some_and(|b| b != b'\n') {
            out.write_all(b"\n")?;
        }
        Ok(())
    }
}
