//! One host's output during a fan-out: printed live as `host: line`, or
//! kept for `--group-output` and `--json`.
//!
//! Live lines are buffered per host and stream until their newline, then
//! written with one `write_all` under the stdout (or stderr) lock, so two
//! hosts never interleave inside a line. Kept output is bounded per host
//! ([`KEEP_LIMIT`]); what is cut is flagged, never silently lost.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

/// How much of each stream is kept per host for grouping and JSON.
pub const KEEP_LIMIT: usize = 1 << 20;

/// The longest partial line held before it is printed anyway (a host that
/// never prints a newline must not grow memory without bound).
const LINE_LIMIT: usize = 64 * 1024;

/// Which remote stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The command's stdout (printed on our stdout).
    Stdout,
    /// The command's stderr (printed on our stderr).
    Stderr,
}

/// What one host printed, as kept (bounded by [`KEEP_LIMIT`] per stream).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// Kept stdout.
    pub stdout: Vec<u8>,
    /// Kept stderr.
    pub stderr: Vec<u8>,
    /// Some output was cut at [`KEEP_LIMIT`].
    pub truncated: bool,
}

#[derive(Debug, Default)]
struct State {
    captured: Captured,
    partial: [Vec<u8>; 2],
    started: bool,
}

/// A cheap handle on one host's output, shared by the task that runs the
/// host and the runner that reports it (so a timed-out or interrupted
/// host still shows what it printed).
#[derive(Debug, Clone)]
pub struct HostOutput {
    prefix: Arc<str>,
    live: bool,
    keep: bool,
    state: Arc<Mutex<State>>,
}

impl HostOutput {
    /// Output for host `name`: printed live when `live`, kept when `keep`.
    pub fn new(name: &str, live: bool, keep: bool) -> HostOutput {
        HostOutput {
            prefix: format!("{name}: ").into(),
            live,
            keep,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the command was handed to the server (the host was
    /// reached): decides between "unreachable" and "failed".
    pub fn mark_started(&self) {
        self.lock().started = true;
    }

    /// Whether [`mark_started`](Self::mark_started) was called.
    pub fn started(&self) -> bool {
        self.lock().started
    }

    /// Takes one chunk of remote output.
    pub fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut st = self.lock();
        if self.keep {
            let c = &mut st.captured;
            let buf = match stream {
                Stream::Stdout => &mut c.stdout,
                Stream::Stderr => &mut c.stderr,
            };
            let room = KEEP_LIMIT.saturating_sub(buf.len());
            buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
            if bytes.len() > room {
                c.truncated = true;
            }
        }
        if self.live {
            let idx = stream as usize;
            let partial = &mut st.partial[idx];
            partial.extend_from_slice(bytes);
            let cut = match partial.iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                None if partial.len() >= LINE_LIMIT => partial.len(),
                None => 0,
            };
            if cut > 0 {
                let ready: Vec<u8> = partial.drain(..cut).collect();
                print_prefixed(&self.prefix, stream, &ready);
            }
        }
    }

    /// Prints what is left of unfinished lines (with a newline) and
    /// returns what was kept.
    pub fn finish(&self) -> Captured {
        let mut st = self.lock();
        for (idx, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
            let rest = std::mem::take(&mut st.partial[idx]);
            if !rest.is_empty() {
                print_prefixed(&self.prefix, stream, &rest);
            }
        }
        std::mem::take(&mut st.captured)
    }
}

/// Writes `text` (whole lines, the last perhaps unterminated) with `prefix`
/// on every line, in one write under the stream's lock.
fn print_prefixed(prefix: &str, stream: Stream, text: &[u8]) {
    let out = prefix_lines(prefix, text);
    // A closed stdout (`| head`) must not kill the other hosts' runs.
    let _ = match stream {
        Stream::Stdout => std::io::stdout().lock().write_all(&out),
        Stream::Stderr => std::io::stderr().lock().write_all(&out),
    };
}

/// `prefix` before every line of `text`, each ending in a newline.
pub fn prefix_lines(prefix: &str, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + prefix.len() * 4);
    for line in text.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_every_line() {
        assert_eq!(prefix_lines("h: ", b"a\nb\n"), b"h: a\nh: b\n");
        assert_eq!(prefix_lines("h: ", b"a\nb"), b"h: a\nh: b\n");
    }

    #[test]
    fn keeps_output_bounded_and_flags_the_cut() {
        let o = HostOutput::new("h", false, true);
        o.write(Stream::Stdout, &vec![b'x'; KEEP_LIMIT - 1]);
        o.write(Stream::Stdout, b"yz");
        o.write(Stream::Stderr, b"e");
        let c = o.finish();
        assert_eq!(c.stdout.len(), KEEP_LIMIT);
        assert_eq!(c.stdout.last(), Some(&b'y'));
        assert_eq!(c.stderr, b"e");
        assert!(c.truncated);
    }

    #[test]
    fn holds_partial_lines_until_their_newline() {
        let o = HostOutput::new("h", true, false);
        o.write(Stream::Stdout, b"par");
        assert_eq!(o.lock().partial[0], b"par");
        o.write(Stream::Stdout, b"tial\nnext");
        assert_eq!(o.lock().partial[0], b"next");
        o.finish();
        assert!(o.lock().partial[0].is_empty());
    }
}
