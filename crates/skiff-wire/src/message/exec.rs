//! Remote execution: the `exec` request and the frames that flow while the
//! command runs (output and stdin chunks, signals, window size, the exit).
//!
//! Chunks carry their bytes in the frame body, so output of any encoding
//! (binary, GBK, broken UTF-8) travels unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::phase;
use crate::ErrorMsg;

/// Bytes of `stdin` a client may have sent that the server has not yet
/// acknowledged with [`StdinCredit`]. Bounds the server's stdin buffer
/// while a command does not read its input, without ever stalling the
/// server's reading of frames (so signals and disconnects are still seen).
pub const STDIN_WINDOW: u64 = 1024 * 1024;

/// Largest body a peer should put in one `stdout`/`stderr`/`stdin` chunk.
/// Receivers accept anything up to the frame limit.
pub const MAX_CHUNK: usize = 256 * 1024;

/// Client to server: run a command. Exactly one of `argv` (run directly)
/// and `cmd` (run by `sh -c`) is given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exec {
    /// Program and arguments, executed without a shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// A shell command line, executed by `sh -c`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// Working directory relative to the server root (a leading `/` means
    /// the root itself); it must stay inside the root. Default: the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Variables added to the command's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Kill the command's process group after this many milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Run on a pseudo-terminal of this size instead of pipes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pty: Option<PtyRequest>,
}

/// The terminal a pty command gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PtyRequest {
    /// Rows of the window.
    pub rows: u16,
    /// Columns of the window.
    pub cols: u16,
    /// `TERM` for the command (the client's own, typically).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
}

/// Server to client: a chunk of the command's standard output (on a pty:
/// everything the terminal shows). The bytes are the body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stdout {}

/// Server to client: a chunk of the command's standard error.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stderr {}

/// Client to server: a chunk of the command's standard input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stdin {}

/// Client to server: no more standard input (the command sees EOF).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StdinEof {}

/// Server to client: the command consumed this many more stdin bytes; the
/// client may send that many more beyond [`STDIN_WINDOW`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StdinCredit {
    /// Bytes consumed since the previous credit.
    pub bytes: u64,
}

/// A signal by name (`"INT"`, `"SIGINT"`) or by number (`2`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SignalSpec {
    /// Linux signal number.
    Number(i32),
    /// Name, with or without the `SIG` prefix.
    Name(String),
}

/// Client to server: deliver a signal to the command's process group (on
/// a pty: to the terminal's foreground process group).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    /// Which signal.
    pub signal: SignalSpec,
}

/// Client to server: the local terminal changed size (pty commands only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resize {
    /// Rows of the window.
    pub rows: u16,
    /// Columns of the window.
    pub cols: u16,
}

/// Server to client: the command ended; the last frame of an exec. Exactly
/// one of `code` and `signal` is present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    /// Exit code, when the command exited normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Number of the signal that killed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Whether the server killed it because `timeout_ms` passed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
}

crate::messages!(
    Exec => "exec",
    Stdout => "stdout",
    Stderr => "stderr",
    Stdin => "stdin",
    StdinEof => "stdin_eof",
    StdinCredit => "stdin_credit",
    Signal => "signal",
    Resize => "resize",
    Exit => "exit",
);

phase! {
    /// Client to server while a command runs (until its `exit`).
    pub enum ExecInput {
        /// Bytes for the command's standard input.
        Stdin(Stdin, body),
        /// The command's standard input ends.
        StdinEof(StdinEof),
        /// Deliver a signal.
        Signal(Signal),
        /// The terminal changed size.
        Resize(Resize),
    }
}

phase! {
    /// Server to client while a command runs: its output, stdin credit,
    /// and finally its `exit` (or an `error` in place of any of them).
    pub enum ExecOutput {
        /// Bytes the command wrote to standard output.
        Stdout(Stdout, body),
        /// Bytes the command wrote to standard error.
        Stderr(Stderr, body),
        /// More stdin may be sent.
        StdinCredit(StdinCredit),
        /// The command ended; the exec is over.
        Exit(Exit),
        /// The exec failed or was refused; it is over.
        Error(ErrorMsg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Frame;

    #[test]
    fn signal_by_name_or_number() {
        let f = Frame::from_message(
            &Signal {
                signal: SignalSpec::Name("INT".into()),
            },
            Default::default(),
        )
        .unwrap();
        assert_eq!(&f.header()[..], br#"{"op":"signal","signal":"INT"}"#);
        let n: Signal = serde_json::from_str(r#"{"signal":9}"#).unwrap();
        assert_eq!(n.signal, SignalSpec::Number(9));
    }

    #[test]
    fn exec_minimal_header() {
        let f = Frame::from_message(
            &Exec {
                cmd: Some("true".into()),
                ..Default::default()
            },
            Default::default(),
        )
        .unwrap();
        assert_eq!(&f.header()[..], br#"{"op":"exec","cmd":"true"}"#);
        let e: Exec =
            serde_json::from_str(r#"{"argv":["ls","-l"],"pty":{"rows":24,"cols":80}}"#).unwrap();
        assert_eq!(e.pty.unwrap().cols, 80);
    }
}
