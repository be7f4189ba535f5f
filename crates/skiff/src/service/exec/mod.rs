//! The `exec` service: runs one command and streams it until it exits.
//!
//! The request takes over the session until its `exit` frame: output
//! chunks go out as they are produced, while `stdin`, `stdin_eof`,
//! `signal` and `resize` frames come in. One `select!` loop drives it all,
//! so nothing waits on anything else:
//!
//! - child output is read only while the session's write buffer is below
//!   [`WRITE_HIGH_WATER`]; a slow client therefore stalls the command
//!   through its pipe instead of growing our memory;
//! - stdin the command does not read is held back by the client's credit
//!   window ([`STDIN_WINDOW`]), so frames are always read and a signal or a
//!   vanished client is noticed at once;
//! - the command runs in its own process group, which is killed (SIGTERM,
//!   then SIGKILL after [`KILL_GRACE`]) when the client disappears or the
//!   timeout passes, and with SIGKILL whenever the request is abandoned
//!   (the [`child::GroupGuard`]). The direct child is always reaped.
//!
//! The wire protocol is in docs/PROTOCOL.md section 5; the design notes in
//! docs/EXEC.md.

mod child;
mod pty;

use std::collections::VecDeque;
use std::future::pending;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::{killpg, Signal};
use skiff_wire::message::exec::{
    Exec, ExecInput, Exit, Stderr, StdinCredit, Stdout, MAX_CHUNK, STDIN_WINDOW,
};
use skiff_wire::{ErrorCode, ErrorMsg, MessageError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::time::Instant;

use self::child::{GroupGuard, SpawnError, Started, Streams};
use self::pty::PtyMaster;
use super::ServiceContext;
use crate::session::{Session, SessionError, SessionWriter, WRITE_HIGH_WATER};

/// How long a group gets between SIGTERM and SIGKILL when the client is
/// gone or the timeout passed (well inside the 2 s promise).
pub const KILL_GRACE: Duration = Duration::from_millis(500);

/// After a pty command exits, output still arriving is forwarded until the
/// terminal has been quiet this long (a background job may hold it open).
const PTY_DRAIN_QUIET: Duration = Duration::from_millis(100);

/// Handles one `exec` request.
pub async fn handle(
    session: &mut Session<'_>,
    ctx: &ServiceContext,
    req: Exec,
) -> Result<(), SessionError> {
    if !ctx.exec_enabled {
        let msg = "this server does not run commands (started with --no-exec)";
        return session.queue(&ErrorMsg::new(ErrorCode::Unsupported, msg), &[]);
    }
    let cwd = match child::resolve_cwd(&ctx.root, req.cwd.as_deref()) {
        Ok(c) => c,
        Err(e) => return session.queue(&e, &[]),
    };
    let started = match child::spawn(&req, &cwd) {
        Ok(s) => s,
        Err(SpawnError::Refused(e)) => return session.queue(&e, &[]),
        Err(SpawnError::Exit(code, msg)) => {
            session.queue(&Stderr {}, msg.as_bytes())?;
            return session.queue(&exit_code(code), &[]);
        }
    };
    tracing::debug!(user = %ctx.user, pid = started.group.pgid().as_raw(), "exec started");
    run(session, started, req.timeout_ms.map(Duration::from_millis)).await
}

fn exit_code(code: i32) -> Exit {
    Exit {
        code: Some(code),
        ..Exit::default()
    }
}

/// Where output comes from.
enum Source<'m> {
    Stdout(ChildStdout),
    Stderr(ChildStderr),
    Pty(&'m PtyMaster),
}

impl Source<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Stdout(p) => p.read(buf).await,
            Source::Stderr(p) => p.read(buf).await,
            Source::Pty(m) => m.read(buf).await,
        }
    }
}

/// Where stdin goes.
enum Sink<'m> {
    Pipe(ChildStdin),
    Pty(&'m PtyMaster),
}

impl Sink<'_> {
    async fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Pipe(p) => p.write(buf).await,
            Sink::Pty(m) => m.write(buf).await,
        }
    }
}

async fn read_from(src: &mut Option<Source<'_>>, buf: &mut [u8]) -> io::Result<usize> {
    match src {
        Some(s) => s.read(buf).await,
        None => pending().await,
    }
}

async fn write_to(sink: &mut Option<Sink<'_>>, buf: Option<&Bytes>) -> io::Result<usize> {
    match (sink, buf) {
        (Some(s), Some(b)) => s.write(b).await,
        _ => pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => pending().await,
    }
}

/// Stdin waiting for the command to read it, bounded by the client's
/// credit window.
#[derive(Default)]
struct StdinQueue {
    chunks: VecDeque<Bytes>,
    len: u64,
    /// Bytes consumed (or discarded) but not yet credited to the client.
    uncredited: u64,
    eof: bool,
}

impl StdinQueue {
    /// Credits consumed bytes back when enough accumulated or when the
    /// queue ran dry (so an interactive client never waits on us).
    fn credit(&mut self, w: &mut SessionWriter<'_>) -> Result<(), SessionError> {
        if self.uncredited > 0 && (self.chunks.is_empty() || self.uncredited >= STDIN_WINDOW / 4) {
            w.queue(
                &StdinCredit {
                    bytes: self.uncredited,
                },
                &[],
            )?;
            self.uncredited = 0;
        }
        Ok(())
    }
}

/// The running command's loop; returns once `exit` is queued.
async fn run(
    session: &mut Session<'_>,
    started: Started,
    timeout: Option<Duration>,
) -> Result<(), SessionError> {
    let Started {
        mut child,
        mut group,
        streams,
    } = started;
    let master;
    let (mut out, mut err, mut sink) = match streams {
        Streams::Pipes {
            stdin,
            stdout,
            stderr,
        } => (
            Some(Source::Stdout(stdout)),
            Some(Source::Stderr(stderr)),
            Some(Sink::Pipe(stdin)),
        ),
        Streams::Pty(m) => {
            master = m;
            (Some(Source::Pty(&master)), None, Some(Sink::Pty(&master)))
        }
    };
    let is_pty = err.is_none();
    let mut out_buf = vec![0u8; MAX_CHUNK];
    let mut err_buf = vec![0u8; 64 * 1024];
    let mut stdin = StdinQueue::default();
    let mut status: Option<ExitStatus> = None;
    let mut deadline = timeout.map(|t| Instant::now() + t);
    let mut timed_out = false;
    let mut kill_at: Option<Instant> = None;
    let mut quiet_at: Option<Instant> = None;
    let (reader, writer) = session.split();

    loop {
        if status.is_some() && out.is_none() && err.is_none() {
            break;
        }
        let room = writer.buffered() < WRITE_HIGH_WATER;
        tokio::select! {
            r = read_from(&mut out, &mut out_buf), if room && out.is_some() => match r {
                Ok(n) if n > 0 => {
                    writer.queue(&Stdout {}, &out_buf[..n])?;
                    if quiet_at.is_some() {
                        quiet_at = Some(Instant::now() + PTY_DRAIN_QUIET);
                    }
                }
                _ => out = None,
            },
            r = read_from(&mut err, &mut err_buf), if room && err.is_some() => match r {
                Ok(n) if n > 0 => writer.queue(&Stderr {}, &err_buf[..n])?,
                _ => err = None,
            },
            r = writer.flush(), if writer.buffered() > 0 => {
                if let Err(e) = r {
                    abandon(&mut child, &group).await;
                    return Err(e);
                }
            }
            r = write_to(&mut sink, stdin.chunks.front()), if sink.is_some() && !stdin.chunks.is_empty() => {
                match r {
                    Ok(n) => {
                        stdin.len -= n as u64;
                        stdin.uncredited += n as u64;
                        if let Some(front) = stdin.chunks.front_mut() {
                            let _ = front.split_to(n);
                            if front.is_empty() {
                                stdin.chunks.pop_front();
                            }
                        }
                    }
                    // The command closed its stdin: the rest is discarded.
                    Err(_) => {
                        sink = None;
                        stdin.uncredited += stdin.len;
                        stdin.len = 0;
                        stdin.chunks.clear();
                    }
                }
                if stdin.chunks.is_empty() && stdin.eof {
                    close_stdin(&mut sink).await;
                }
                stdin.credit(writer)?;
            }
            s = child.wait(), if status.is_none() => {
                let s = s.map_err(SessionError::Io)?;
                status = Some(s);
                if is_pty {
                    quiet_at = Some(Instant::now() + PTY_DRAIN_QUIET);
                }
            }
            _ = sleep_until(quiet_at) => {
                out = None;
                quiet_at = None;
            }
            _ = sleep_until(deadline) => {
                deadline = None;
                timed_out = true;
                group.signal(Signal::SIGTERM);
                kill_at = Some(Instant::now() + KILL_GRACE);
            }
            _ = sleep_until(kill_at) => {
                kill_at = None;
                group.signal(Signal::SIGKILL);
            }
            f = reader.recv() => {
                let frame = match f {
                    Ok(Some(f)) => f,
                    Ok(None) | Err(SessionError::Io(_)) => {
                        abandon(&mut child, &group).await;
                        return Err(SessionError::Closed);
                    }
                    Err(e) => {
                        let _ = writer.send_error(e.code(), e.to_string()).await;
                        abandon(&mut child, &group).await;
                        return Err(e);
                    }
                };
                let applied = ExecInput::from_frame(frame)
                    .map_err(|e| input_refusal(&e))
                    .and_then(|input| on_input(input, &mut stdin, &group, master_of(&out)));
                if let Err(refusal) = applied {
                    let _ = writer.send(&refusal, &[]).await;
                    abandon(&mut child, &group).await;
                    return Err(SessionError::Remote(refusal));
                }
                if sink.is_none() || stdin.chunks.is_empty() {
                    if sink.is_none() {
                        stdin.uncredited += stdin.len;
                        stdin.len = 0;
                        stdin.chunks.clear();
                    }
                    if stdin.eof {
                        close_stdin(&mut sink).await;
                    }
                    stdin.credit(writer)?;
                }
            }
        }
    }
    // The command ended on its own (or by our timeout kill): whatever of
    // its group still lives detached from our pipes is left alone.
    group.disarm();
    let Some(status) = status else {
        return Err(SessionError::Closed);
    };
    let exit = Exit {
        code: status.code(),
        signal: status.signal(),
        timed_out,
    };
    writer.queue(&exit, &[])
}

fn master_of<'a>(out: &'a Option<Source<'_>>) -> Option<&'a PtyMaster> {
    match out {
        Some(Source::Pty(m)) => Some(m),
        _ => None,
    }
}

/// Closes the command's stdin: the pipe is closed; on a pty, EOF is typed
/// (Ctrl-D), as a user at a terminal would.
async fn close_stdin(sink: &mut Option<Sink<'_>>) {
    if let Some(Sink::Pty(m)) = sink {
        let _ = m.write(b"\x04").await;
    }
    *sink = None;
}

/// The refusal of a frame that is not exec input while a command runs.
fn input_refusal(e: &MessageError) -> ErrorMsg {
    match e {
        MessageError::UnknownOp { op, expected } => ErrorMsg::new(
            ErrorCode::BadFrame,
            format!(
                "{op:?} while a command runs: only {} are allowed until its exit",
                expected.join(", ")
            ),
        ),
        MessageError::BadFields { .. } => ErrorMsg::new(ErrorCode::BadFrame, e.to_string()),
    }
}

/// Applies one client message; an error is the refusal to send before the
/// session ends.
fn on_input(
    input: ExecInput,
    stdin: &mut StdinQueue,
    group: &GroupGuard,
    master: Option<&PtyMaster>,
) -> Result<(), ErrorMsg> {
    match input {
        ExecInput::Stdin(body) => {
            if stdin.len + body.len() as u64 > STDIN_WINDOW {
                return Err(ErrorMsg::new(
                    ErrorCode::TooLarge,
                    format!("stdin beyond the credit window of {STDIN_WINDOW} bytes"),
                ));
            }
            if !body.is_empty() {
                stdin.len += body.len() as u64;
                stdin.chunks.push_back(body);
            }
        }
        ExecInput::StdinEof(_) => stdin.eof = true,
        ExecInput::Signal(msg) => {
            let Some(sig) = child::parse_signal(&msg.signal) else {
                return Err(ErrorMsg::new(
                    ErrorCode::BadFrame,
                    format!("unknown signal {:?}", msg.signal),
                ));
            };
            let target = master
                .and_then(PtyMaster::foreground_group)
                .unwrap_or(group.pgid());
            let _ = killpg(target, sig);
        }
        ExecInput::Resize(msg) => {
            if let Some(m) = master {
                let _ = m.resize(msg.rows, msg.cols);
            }
        }
    }
    Ok(())
}

/// The client is gone (or broke the protocol): SIGTERM the group, give it
/// [`KILL_GRACE`], then SIGKILL whatever is left and reap the child.
async fn abandon(child: &mut Child, group: &GroupGuard) {
    group.signal(Signal::SIGTERM);
    let _ = tokio::time::timeout(KILL_GRACE, child.wait()).await;
    group.signal(Signal::SIGKILL);
    let _ = tokio::time::timeout(Duration::from_secs(1), child.wait()).await;
}
