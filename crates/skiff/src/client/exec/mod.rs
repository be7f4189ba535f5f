//! Running a command on the server: the client's half of the `exec`
//! protocol (docs/PROTOCOL.md section 5).
//!
//! [`run`] sends the request and then drives one `select!` loop until the
//! `exit` frame: remote output is written to our stdout/stderr as it comes
//! (blocking on a slow local reader, so the server in turn stalls the
//! command), local stdin is forwarded within the server's credit window,
//! SIGINT/SIGTERM are forwarded as `signal`, and on a pty SIGWINCH becomes
//! `resize`.

pub mod local;
pub mod terminal;

use bytes::Bytes;
use skiff_wire::message::exec::{
    Exec, ExecOutput, Exit, Resize, Signal, SignalSpec, Stdin, StdinEof, STDIN_WINDOW,
};
use tokio::signal::unix::{signal, SignalKind};

use super::ClientError;
use crate::session::{Session, SessionError, WRITE_HIGH_WATER};

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
    let pty = req.pty.is_some();
    let mut sigint = local
        .forward_signals
        .then(|| signal(SignalKind::interrupt()).ok())
        .flatten();
    let mut sigterm = local
        .forward_signals
        .then(|| signal(SignalKind::terminate()).ok())
        .flatten();
    let mut sighup = local
        .forward_signals
        .then(|| signal(SignalKind::hangup()).ok())
        .flatten();
    let mut sigwinch = pty
        .then(|| signal(SignalKind::window_change()).ok())
        .flatten();
    let mut interrupts = 0;

    let (reader, writer) = session.split();
    writer.queue(req, &[])?;
    let mut stdin = local.stdin;
    if stdin.is_none() {
        writer.queue(&StdinEof {}, &[])?;
    }
    let mut credit = STDIN_WINDOW;
    let mut held: Option<Bytes> = None;
    let mut stdin_ended = false;

    loop {
        // Stdin read earlier goes out as far as the credit allows.
        if let Some(chunk) = held.as_mut() {
            let n = chunk
                .len()
                .min(usize::try_from(credit).unwrap_or(usize::MAX));
            if n > 0 {
                writer.queue(&Stdin {}, &chunk.split_to(n))?;
                credit -= n as u64;
            }
            if chunk.is_empty() {
                held = None;
            }
        }
        if stdin_ended && held.is_none() && stdin.is_some() {
            writer.queue(&StdinEof {}, &[])?;
            stdin = None;
        }
        let want_stdin = stdin.is_some()
            && !stdin_ended
            && held.is_none()
            && writer.buffered() < WRITE_HIGH_WATER;
        tokio::select! {
            m = reader.recv_msg::<ExecOutput>() => match m? {
                ExecOutput::Stdout(body) => {
                    if local::write_out(1, &body).is_err() {
                        return Ok(Outcome::StdoutClosed);
                    }
                }
                ExecOutput::Stderr(body) => {
                    let _ = local::write_out(2, &body);
                }
                ExecOutput::StdinCredit(c) => {
                    credit = credit.saturating_add(c.bytes).min(STDIN_WINDOW);
                }
                ExecOutput::Exit(exit) => return Ok(Outcome::Exited(exit)),
                ExecOutput::Error(e) => return Err(SessionError::Remote(e).into()),
            },
            c = next_chunk(&mut stdin), if want_stdin => match c {
                Some(chunk) => held = Some(chunk),
                None => stdin_ended = true,
            },
            r = writer.flush(), if writer.buffered() > 0 => r?,
            _ = next_signal(&mut sigint) => {
                interrupts += 1;
                if interrupts >= 2 {
                    return Ok(Outcome::Interrupted);
                }
                writer.queue(&signal_msg("INT"), &[])?;
            }
            _ = next_signal(&mut sigterm) => {
                interrupts += 1;
                if interrupts >= 2 {
                    return Ok(Outcome::Interrupted);
                }
                writer.queue(&signal_msg("TERM"), &[])?;
            }
            // Our terminal went away: nobody is left to see the output.
            _ = next_signal(&mut sighup) => return Ok(Outcome::Interrupted),
            _ = next_signal(&mut sigwinch) => {
                let (rows, cols) = terminal::window_size();
                writer.queue(&Resize { rows, cols }, &[])?;
            }
        }
    }
}

fn signal_msg(name: &str) -> Signal {
    Signal {
        signal: SignalSpec::Name(name.to_string()),
    }
}

async fn next_chunk(stdin: &mut Option<&mut StdinChunks>) -> Option<Bytes> {
    match stdin {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_signal(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
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
