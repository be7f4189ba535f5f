//! Running a command on the server: the client's half of the `exec`
//! protocol (docs/PROTOCOL.md section 5).
//!
//! [`run`] sends the request and then drives one `select!` loop (a
//! `RemoteExec`, one method per event) until the `exit` frame: remote
//! output is written to our stdout/stderr as it comes (blocking on a slow
//! local reader, so the server in turn stalls the command), local stdin is forwarded within the server's credit window,
//! SIGINT/SIGTERM are forwarded as `signal`, and on a pty SIGWINCH becomes
//! `resize`.

pub mod local;
pub mod terminal;

use bytes::Bytes;
use skiff_wire::message::exec::{
    Exec, ExecOutput, Exit, Resize, Signal, SignalSpec, Stdin, StdinEof, STDIN_WINDOW,
};
use tokio::signal::unix::{signal, Signal as UnixSignal, SignalKind};

use super::ClientError;
use crate::maybe::or_pending;
use crate::session::{Session, SessionError, SessionReader, SessionWriter};

pub use local::{stdin_reader, StdinChunks};

/// How an exec ended, from the client's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The server reported the command's end.
    Exited(Exit),
    /// A second Ctrl-C (or SIGTERM), or SIGHUP: we disconnected without
    /// waiting (the server then kills the command).
    Interrupted,
    /// Our stdout was closed (`| head`): we disconnected.
    StdoutClosed,
}

impl Outcome {
    /// The exit status `skiff exec` returns: the remote code, 128+N for
    /// signal N, 130 after a second Ctrl-C, 141 (as SIGPIPE) when our
    /// stdout went away.
    pub fn exit_status(&self) -> i32 {
        match self {
            Outcome::Exited(Exit {
                code: Some(code), ..
            }) => *code,
            Outcome::Exited(Exit {
                signal: Some(sig), ..
            }) => 128 + sig,
            Outcome::Exited(_) => 255,
            Outcome::Interrupted => 128 + libc::SIGINT,
            Outcome::StdoutClosed => 128 + libc::SIGPIPE,
        }
    }
}

/// What the local side contributes besides the request.
pub struct LocalSide<'a> {
    /// Local stdin to forward; `None` sends `stdin_eof` at once (`-n`).
    pub stdin: Option<&'a mut StdinChunks>,
    /// Forward SIGINT and SIGTERM to the remote command (a second one
    /// disconnects, as does SIGHUP).
    pub forward_signals: bool,
}

/// Runs `req` over `session` until it exits; output goes to our fd 1
/// and 2.
pub async fn run(
    session: &mut Session<'_>,
    req: &Exec,
    local: LocalSide<'_>,
) -> Result<Outcome, ClientError> {
    let (reader, writer) = session.split();
    writer.queue(req, &[])?;
    if local.stdin.is_none() {
        writer.queue(&StdinEof {}, &[])?;
    }
    let mut exec = RemoteExec {
        signals: LocalSignals::new(local.forward_signals, req.pty.is_some()),
        stdin: local.stdin,
        credit: STDIN_WINDOW,
        held: None,
        stdin_ended: false,
        interrupts: 0,
    };
    exec.drive(reader, writer).await
}

/// The local signals an exec listens to (each absent when not wanted).
struct LocalSignals {
    int: Option<UnixSignal>,
    term: Option<UnixSignal>,
    hup: Option<UnixSignal>,
    winch: Option<UnixSignal>,
}

impl LocalSignals {
    fn new(forward: bool, pty: bool) -> LocalSignals {
        let listen = |on: bool, kind: SignalKind| on.then(|| signal(kind).ok()).flatten();
        LocalSignals {
            int: listen(forward, SignalKind::interrupt()),
            term: listen(forward, SignalKind::terminate()),
            hup: listen(forward, SignalKind::hangup()),
            winch: listen(pty, SignalKind::window_change()),
        }
    }
}

/// The client's side of one running command: local stdin forwarded within
/// the server's credit, remote output written out, local signals passed
/// on. [`RemoteExec::drive`] waits on all of it and hands each event to
/// its own method.
struct RemoteExec<'a> {
    signals: LocalSignals,
    /// Local stdin still to read; `None` once `stdin_eof` is queued.
    stdin: Option<&'a mut StdinChunks>,
    /// Bytes of stdin the server will still take.
    credit: u64,
    /// Stdin read but not yet sent (waiting for credit).
    held: Option<Bytes>,
    stdin_ended: bool,
    interrupts: u32,
}

impl RemoteExec<'_> {
    async fn drive(
        &mut self,
        reader: &mut SessionReader<'_>,
        writer: &mut SessionWriter<'_>,
    ) -> Result<Outcome, ClientError> {
        loop {
            self.forward_stdin(writer)?;
            let want_stdin = self.stdin.is_some()
                && !self.stdin_ended
                && self.held.is_none()
                && writer.has_room();
            let s = &mut self.signals;
            let ended = tokio::select! {
                m = reader.recv_msg::<ExecOutput>() => self.on_output(m?)?,
                c = or_pending(self.stdin.as_mut().map(|rx| rx.recv())), if want_stdin => {
                    self.on_stdin(c);
                    None
                }
                r = writer.flush(), if writer.buffered() > 0 => {
                    r?;
                    None
                }
                _ = or_pending(s.int.as_mut().map(|s| s.recv())) => self.on_interrupt(writer, "INT")?,
                _ = or_pending(s.term.as_mut().map(|s| s.recv())) => self.on_interrupt(writer, "TERM")?,
                // Our terminal went away: nobody is left to see the output.
                _ = or_pending(s.hup.as_mut().map(|s| s.recv())) => Some(Outcome::Interrupted),
                _ = or_pending(s.winch.as_mut().map(|s| s.recv())) => {
                    let (rows, cols) = terminal::window_size();
                    writer.queue(&Resize { rows, cols }, &[])?;
                    None
                }
            };
            if let Some(outcome) = ended {
                return Ok(outcome);
            }
        }
    }

    /// Sends stdin read earlier as far as the credit allows, and
    /// `stdin_eof` once all of it is out.
    fn forward_stdin(&mut self, writer: &mut SessionWriter<'_>) -> Result<(), SessionError> {
        if let Some(chunk) = self.held.as_mut() {
            let n = chunk
                .len()
                .min(usize::try_from(self.credit).unwrap_or(usize::MAX));
            if n > 0 {
                writer.queue(&Stdin {}, &chunk.split_to(n))?;
                self.credit -= n as u64;
            }
            if chunk.is_empty() {
                self.held = None;
            }
        }
        if self.stdin_ended && self.held.is_none() && self.stdin.is_some() {
            writer.queue(&StdinEof {}, &[])?;
            self.stdin = None;
        }
        Ok(())
    }

    /// A frame from the server; the outcome when the exec is over.
    fn on_output(&mut self, output: ExecOutput) -> Result<Option<Outcome>, ClientError> {
        match output {
            ExecOutput::Stdout(body) => {
                if local::write_out(1, &body).is_err() {
                    return Ok(Some(Outcome::StdoutClosed));
                }
            }
            ExecOutput::Stderr(body) => {
                let _ = local::write_out(2, &body);
            }
            ExecOutput::StdinCredit(c) => {
                self.credit = self.credit.saturating_add(c.bytes).min(STDIN_WINDOW);
            }
            ExecOutput::Exit(exit) => return Ok(Some(Outcome::Exited(exit))),
            ExecOutput::Error(e) => return Err(SessionError::Remote(e).into()),
        }
        Ok(None)
    }

    /// A chunk of local stdin, or its end.
    fn on_stdin(&mut self, chunk: Option<Bytes>) {
        match chunk {
            Some(chunk) => self.held = Some(chunk),
            None => self.stdin_ended = true,
        }
    }

    /// SIGINT or SIGTERM: forwarded the first time, a disconnect the second.
    fn on_interrupt(
        &mut self,
        writer: &mut SessionWriter<'_>,
        name: &str,
    ) -> Result<Option<Outcome>, ClientError> {
        self.interrupts += 1;
        if self.interrupts >= 2 {
            return Ok(Some(Outcome::Interrupted));
        }
        writer.queue(&signal_msg(name), &[])?;
        Ok(None)
    }
}

fn signal_msg(name: &str) -> Signal {
    Signal {
        signal: SignalSpec::Name(name.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_follows_the_shell_convention() {
        let code = |c| {
            Outcome::Exited(Exit {
                code: Some(c),
                ..Exit::default()
            })
        };
        assert_eq!(code(0).exit_status(), 0);
        assert_eq!(code(42).exit_status(), 42);
        let sig = Outcome::Exited(Exit {
            signal: Some(9),
            ..Exit::default()
        });
        assert_eq!(sig.exit_status(), 137);
        assert_eq!(Outcome::Interrupted.exit_status(), 130);
    }
}
