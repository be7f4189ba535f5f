//! The `exec` service: runs one command and streams it until it exits.
//!
//! The request takes over the session until its `exit` frame: output
//! chunks go out as they are produced, while `stdin`, `stdin_eof`,
//! `signal` and `resize` frames come in. One `select!` loop drives it all,
//! so nothing waits on anything else:
//!
//! - child output is read only while the session's write buffer is below
//!   its high-water mark ([`crate::session::WRITE_HIGH_WATER`]); a slow client therefore stalls the command
//!   through its pipe instead of growing our memory;
//! - stdin the command does not read is held back by the client's credit
//!   window ([`STDIN_WINDOW`]), so frames are always read and a signal or a
//!   vanished client is noticed at once;
//! - the command runs in its own process group, which is killed (SIGTERM,
//!   then SIGKILL after [`KILL_GRACE`]) when the client disappears or the
//!   timeout passes, and with SIGKILL whenever the request is abandoned
//!   (the `GroupGuard` of the private `child` module). The direct child is always reaped.
//!
//! The wire protocol is in docs/PROTOCOL.md section 5; the design notes in
//! docs/EXEC.md.

mod child;
mod pty;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use nix::sys::signal::{killpg, Signal};
use skiff_wire::message::exec::{
    Exec, ExecInput, Exit, Stderr, StdinCredit, Stdout, MAX_CHUNK, STDIN_WINDOW,
};
use skiff_wire::{ErrorCode, ErrorMsg, Frame, MessageError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::child::{GroupGuard, SpawnError, Started, Streams};
use self::pty::PtyMaster;
use super::ServiceContext;
use crate::audit::Event;
use crate::maybe::{or_pending, sleep_until};
use crate::session::{Session, SessionError, SessionReader, SessionWriter};

/// How long a group gets between SIGTERM and SIGKILL when the client is
/// gone or the timeout passed (well inside the 2 s promise).
pub const KILL_GRACE: Duration = Duration::from_millis(500);

/// After a pty command exits, output still arriving is forwarded until the
/// terminal has been quiet this long (a background job may hold it open).
const PTY_DRAIN_QUIET: Duration = Duration::from_millis(100);

/// Handles one `exec` request: the user's policy decides first (a refusal
/// is a `permission` error), then the command runs in a clean environment
/// ([`crate::policy::env`]), and one audit event records how it went.
pub async fn handle(
    session: &mut Session<'_>,
    ctx: &ServiceContext,
    req: Exec,
) -> Result<(), SessionError> {
    let record = ExecRecord::new(ctx, &req);
    if !ctx.exec_enabled {
        let msg = "this server does not run commands (started with --no-exec)";
        let e = ErrorMsg::new(ErrorCode::Unsupported, msg);
        record.refused(&e);
        return session.queue(&e, &[]);
    }
    let allowed = match ctx.policy.authorize_exec(&req, &ctx.accept_env) {
        Ok(r) => r,
        Err(refusal) => {
            tracing::info!(user = %ctx.user, peer = %ctx.peer, "exec refused: {refusal}");
            let e = ErrorMsg::from(refusal);
            record.refused(&e);
            return session.queue(&e, &[]);
        }
    };
    let cwd = match child::resolve_cwd(&ctx.root, allowed.cwd.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            record.refused(&e);
            return session.queue(&e, &[]);
        }
    };
    let term = allowed
        .pty
        .as_ref()
        .map(|p| p.term.as_deref().unwrap_or("xterm-256color"));
    let env = ctx
        .base_env
        .for_command(&ctx.user, ctx.client, term, &allowed.env);
    let started = match child::spawn(&allowed, &cwd, &env) {
        Ok(s) => s,
        Err(SpawnError::Refused(e)) => {
            record.refused(&e);
            return session.queue(&e, &[]);
        }
        Err(SpawnError::Exit(code, msg)) => {
            session.queue(&Stderr {}, msg.as_bytes())?;
            let exit = exit_code(code);
            record.finished(Ok(&exit), msg.len() as u64);
            return session.queue(&exit, &[]);
        }
    };
    tracing::debug!(user = %ctx.user, pid = started.group.pgid().as_raw(), "exec started");
    let mut bytes_out = 0;
    let result = run(
        session,
        started,
        allowed.timeout_ms.map(Duration::from_millis),
        ctx.shutdown.clone(),
        &mut bytes_out,
    )
    .await;
    record.finished(result.as_ref(), bytes_out);
    result.map(|_| ())
}

/// The audit event of one `exec`, filled in as it goes.
struct ExecRecord<'c> {
    ctx: &'c ServiceContext,
    command: String,
    cwd: Option<String>,
    pty: bool,
    started: Instant,
}

impl<'c> ExecRecord<'c> {
    fn new(ctx: &'c ServiceContext, req: &Exec) -> ExecRecord<'c> {
        let command = match (&req.cmd, &req.argv) {
            (Some(c), _) => c.clone(),
            (None, Some(argv)) => argv.join(" "),
            (None, None) => String::new(),
        };
        ExecRecord {
            ctx,
            command,
            cwd: req.cwd.clone(),
            pty: req.pty.is_some(),
            started: Instant::now(),
        }
    }

    fn event(&self, exit: Option<&Exit>, result: String, bytes_out: u64) -> Event {
        Event::Exec {
            user: self.ctx.user.clone(),
            peer: self.ctx.peer.clone(),
            command: self.command.clone(),
            cwd: self.cwd.clone(),
            pty: self.pty,
            exit: exit.and_then(|e| e.code),
            signal: exit.and_then(|e| e.signal),
            result,
            duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            bytes_out,
        }
    }

    /// Refused before it ran.
    fn refused(&self, e: &ErrorMsg) {
        self.ctx
            .audit
            .record(self.event(None, e.code.as_str().to_string(), 0));
    }

    /// Ran: how it ended (an error: the client went away first).
    fn finished(&self, r: Result<&Exit, &SessionError>, bytes_out: u64) {
        let (exit, result) = match r {
            Ok(exit) if exit.timed_out => (Some(exit), "timeout".to_string()),
            Ok(exit) => (Some(exit), "ok".to_string()),
            Err(e) => (None, format!("client gone: {e}")),
        };
        self.ctx.audit.record(self.event(exit, result, bytes_out));
    }
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
    /// Reads at most [`MAX_CHUNK`] bytes and returns them as a chunk of
    /// their own, cut from `buf` (whose spare room the next read fills).
    /// The chunk goes to the session by handle: a pipe's output is read
    /// straight into the memory it is sent from, never copied in between.
    async fn read_chunk(&mut self, buf: &mut BytesMut) -> io::Result<Bytes> {
        if buf.capacity() - buf.len() < MIN_READ {
            // Reuses the allocation once every chunk cut from it was sent.
            buf.reserve(MAX_CHUNK);
        }
        match self {
            Source::Stdout(p) => p.read_buf(&mut (&mut *buf).limit(MAX_CHUNK)).await?,
            Source::Stderr(p) => p.read_buf(&mut (&mut *buf).limit(MAX_CHUNK)).await?,
            Source::Pty(m) => {
                let start = buf.len();
                buf.resize(start + MAX_CHUNK.min(PTY_READ), 0);
                let n = m.read(&mut buf[start..]).await;
                buf.truncate(start + *n.as_ref().unwrap_or(&0));
                n?
            }
        };
        Ok(buf.split().freeze())
    }
}

/// Below this much spare room, the output buffer is renewed before a read
/// (so reads stay large).
const MIN_READ: usize = 64 * 1024;

/// One read from a terminal: interactive output comes in small pieces.
const PTY_READ: usize = 64 * 1024;

/// Which of the command's output streams a read came from.
#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
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

    /// The command read `n` bytes of the front chunk.
    fn consumed(&mut self, n: usize) {
        self.len -= n as u64;
        self.uncredited += n as u64;
        if let Some(front) = self.chunks.front_mut() {
            let _ = front.split_to(n);
            if front.is_empty() {
                self.chunks.pop_front();
            }
        }
    }

    /// Drops what is waiting (the command no longer reads stdin); it is
    /// credited back all the same.
    fn discard(&mut self) {
        self.uncredited += self.len;
        self.len = 0;
        self.chunks.clear();
    }
}

/// The running command's loop; returns once `exit` is queued.
/// `bytes_out` counts the output sent, whatever the outcome.
async fn run(
    session: &mut Session<'_>,
    started: Started,
    timeout: Option<Duration>,
    shutdown: CancellationToken,
    bytes_out: &mut u64,
) -> Result<Exit, SessionError> {
    let Started {
        child,
        group,
        streams,
    } = started;
    let master;
    let (out, err, sink) = match streams {
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
    let mut running = Running {
        child,
        group,
        is_pty: err.is_none(),
        out,
        err,
        sink,
        stdin: StdinQueue::default(),
        status: None,
        deadline: timeout.map(|t| Instant::now() + t),
        timed_out: false,
        kill_at: None,
        quiet_at: None,
        shutdown,
        stopping: false,
        bytes_out: 0,
    };
    let (reader, writer) = session.split();
    let driven = running.drive(reader, writer).await;
    *bytes_out = running.bytes_out;
    match driven {
        Ok(exit) => {
            writer.queue(&exit, &[])?;
            Ok(exit)
        }
        Err(e) => {
            running.abandon().await;
            Err(e)
        }
    }
}

/// One running command: its streams, its timers and the stdin the client
/// sent. [`Running::drive`] waits on all of them at once and hands each
/// event to its own method.
struct Running<'m> {
    child: Child,
    group: GroupGuard,
    is_pty: bool,
    out: Option<Source<'m>>,
    err: Option<Source<'m>>,
    sink: Option<Sink<'m>>,
    stdin: StdinQueue,
    status: Option<ExitStatus>,
    /// When `timeout_ms` passes.
    deadline: Option<Instant>,
    timed_out: bool,
    /// When the SIGTERMed group gets SIGKILL.
    kill_at: Option<Instant>,
    /// When a pty that stayed quiet after the exit is closed.
    quiet_at: Option<Instant>,
    /// Cancelled when the server starts shutting down.
    shutdown: CancellationToken,
    /// The group has been told the server is stopping.
    stopping: bool,
    /// Output bytes queued for the client so far.
    bytes_out: u64,
}

impl Running<'_> {
    /// Runs until the command has exited and its output is drained; the
    /// `exit` to send. On an error the caller abandons the command.
    async fn drive(
        &mut self,
        reader: &mut SessionReader<'_>,
        writer: &mut SessionWriter<'_>,
    ) -> Result<Exit, SessionError> {
        let mut out_buf = BytesMut::new();
        let mut err_buf = BytesMut::new();
        while self.status.is_none() || self.out.is_some() || self.err.is_some() {
            let room = writer.has_room();
            tokio::select! {
                r = or_pending(self.out.as_mut().map(|s| s.read_chunk(&mut out_buf))), if room && self.out.is_some() => {
                    self.on_output(writer, Stream::Stdout, r)?;
                }
                r = or_pending(self.err.as_mut().map(|s| s.read_chunk(&mut err_buf))), if room && self.err.is_some() => {
                    self.on_output(writer, Stream::Stderr, r)?;
                }
                r = writer.flush(), if writer.buffered() > 0 => r?,
                r = or_pending(self.sink.as_mut().zip(self.stdin.chunks.front()).map(|(s, b)| s.write(b))),
                    if self.sink.is_some() && !self.stdin.chunks.is_empty() => {
                    self.on_stdin_written(writer, r).await?;
                }
                s = self.child.wait(), if self.status.is_none() => self.on_exit(s?),
                _ = sleep_until(self.quiet_at) => self.on_quiet(),
                _ = sleep_until(self.deadline) => self.on_deadline(),
                _ = sleep_until(self.kill_at) => self.on_kill_grace_over(),
                _ = self.shutdown.cancelled(), if !self.stopping => self.on_shutdown(),
                f = reader.recv() => self.on_frame(writer, f).await?,
            }
        }
        // The command ended on its own (or by our timeout kill): whatever of
        // its group still lives detached from our pipes is left alone.
        self.group.disarm();
        let status = self.status.ok_or(SessionError::Closed)?;
        Ok(Exit {
            code: status.code(),
            signal: status.signal(),
            timed_out: self.timed_out,
        })
    }

    /// A read from stdout or stderr: a chunk goes out, an end (or error)
    /// closes that stream. A pty draining after the exit stays open while
    /// output still arrives.
    fn on_output(
        &mut self,
        writer: &mut SessionWriter<'_>,
        stream: Stream,
        read: io::Result<Bytes>,
    ) -> Result<(), SessionError> {
        let chunk = match read {
            Ok(chunk) if !chunk.is_empty() => chunk,
            _ => {
                match stream {
                    Stream::Stdout => self.out = None,
                    Stream::Stderr => self.err = None,
                }
                return Ok(());
            }
        };
        let n = chunk.len();
        match stream {
            Stream::Stdout => writer.queue_shared(&Stdout {}, chunk)?,
            Stream::Stderr => writer.queue_shared(&Stderr {}, chunk)?,
        }
        self.bytes_out += n as u64;
        if self.quiet_at.is_some() {
            self.quiet_at = Some(Instant::now() + PTY_DRAIN_QUIET);
        }
        Ok(())
    }

    async fn on_stdin_written(
        &mut self,
        writer: &mut SessionWriter<'_>,
        written: io::Result<usize>,
    ) -> Result<(), SessionError> {
        match written {
            Ok(n) => self.stdin.consumed(n),
            // The command closed its stdin: the rest is discarded.
            Err(_) => {
                self.sink = None;
                self.stdin.discard();
            }
        }
        if self.stdin.chunks.is_empty() && self.stdin.eof {
            close_stdin(&mut self.sink).await;
        }
        self.stdin.credit(writer)
    }

    fn on_exit(&mut self, status: ExitStatus) {
        self.status = Some(status);
        if self.is_pty {
            self.quiet_at = Some(Instant::now() + PTY_DRAIN_QUIET);
        }
    }

    fn on_quiet(&mut self) {
        self.out = None;
        self.quiet_at = None;
    }

    fn on_deadline(&mut self) {
        self.deadline = None;
        self.timed_out = true;
        self.group.signal(Signal::SIGTERM);
        self.kill_at = Some(Instant::now() + KILL_GRACE);
    }

    /// The server is stopping: the group gets SIGHUP (an interactive shell
    /// ignores SIGTERM) and SIGTERM, then SIGKILL after [`KILL_GRACE`]; its
    /// exit is delivered as usual.
    fn on_shutdown(&mut self) {
        self.stopping = true;
        self.group.signal(Signal::SIGHUP);
        self.group.signal(Signal::SIGTERM);
        self.kill_at = Some(Instant::now() + KILL_GRACE);
    }

    fn on_kill_grace_over(&mut self) {
        self.kill_at = None;
        self.group.signal(Signal::SIGKILL);
    }

    /// A frame from the client: stdin, its end, a signal or a resize.
    /// Anything else is refused and ends the session.
    async fn on_frame(
        &mut self,
        writer: &mut SessionWriter<'_>,
        received: Result<Option<Frame>, SessionError>,
    ) -> Result<(), SessionError> {
        let frame = match received {
            Ok(Some(f)) => f,
            Ok(None) | Err(SessionError::Io(_)) => return Err(SessionError::Closed),
            Err(e) => {
                let _ = writer.send_error(e.code(), e.to_string()).await;
                return Err(e);
            }
        };
        let master = master_of(&self.out);
        let applied = ExecInput::from_frame(frame)
            .map_err(|e| input_refusal(&e))
            .and_then(|input| on_input(input, &mut self.stdin, &self.group, master));
        if let Err(refusal) = applied {
            let _ = writer.send(&refusal, &[]).await;
            return Err(SessionError::Remote(refusal));
        }
        if self.sink.is_none() || self.stdin.chunks.is_empty() {
            if self.sink.is_none() {
                self.stdin.discard();
            }
            if self.stdin.eof {
                close_stdin(&mut self.sink).await;
            }
            self.stdin.credit(writer)?;
        }
        Ok(())
    }

    /// The client is gone (or broke the protocol): SIGTERM the group, give
    /// it [`KILL_GRACE`], then SIGKILL whatever is left and reap the child.
    async fn abandon(&mut self) {
        self.group.signal(Signal::SIGTERM);
        let _ = tokio::time::timeout(KILL_GRACE, self.child.wait()).await;
        self.group.signal(Signal::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.child.wait()).await;
    }
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
