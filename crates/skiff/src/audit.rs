//! The audit log: one JSON object per line for each event that matters to
//! an administrator (logins and failed logins, penalties, commands, file
//! changes, session ends), to a file or stderr.
//!
//! Recording never blocks a request: [`Audit::record`] puts the event on a
//! bounded channel and returns; a writer thread formats and writes it. If
//! the writer falls behind (a stalled disk) and the channel is full, the
//! event is dropped and counted, and the next line written is an
//! `audit_dropped` event with the count, so a gap is never silent. The
//! file is reopened on [`Audit::reopen`] (SIGHUP), which is what logrotate
//! needs.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

/// Events waiting for the writer before new ones are dropped.
pub const QUEUE: usize = 8192;

/// One audit event. Serialized with its kind in `"event"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A user logged in.
    AuthOk {
        /// The user.
        user: String,
        /// The client's address (`unix` for a Unix socket).
        peer: String,
    },
    /// A handshake failed.
    AuthFailed {
        /// The user the client claimed to be, when it got that far.
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// The client's address.
        peer: String,
        /// Why.
        reason: String,
    },
    /// A source's failures started a penalty: its new connections are
    /// delayed for a while (logged once per penalty).
    Penalty {
        /// The user the client claimed to be, when known.
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// The client's address.
        peer: String,
        /// Why.
        reason: String,
    },
    /// A command ran (or was refused).
    Exec {
        /// The user.
        user: String,
        /// The client's address.
        peer: String,
        /// The command line (`cmd`, or `argv` joined by spaces).
        command: String,
        /// Working directory relative to the user's root.
        #[serde(skip_serializing_if = "Option::is_none")]
        cwd: Option<String>,
        /// Whether it ran on a pty.
        pty: bool,
        /// Exit code, when it exited.
        #[serde(skip_serializing_if = "Option::is_none")]
        exit: Option<i32>,
        /// Signal, when one killed it.
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        /// `ok`, or the error code it was answered with.
        result: String,
        /// Run time in milliseconds.
        duration_ms: u64,
        /// Output bytes sent to the client (stdout and stderr).
        bytes_out: u64,
    },
    /// A file operation that changes something (put, symlink, rm, mkdir,
    /// mv), whether it succeeded or was refused.
    File {
        /// The user.
        user: String,
        /// The client's address.
        peer: String,
        /// The operation.
        op: String,
        /// The path, relative to the user's root.
        path: String,
        /// The destination of `mv`.
        #[serde(skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        /// Bytes written, for `put`.
        #[serde(skip_serializing_if = "Option::is_none")]
        bytes: Option<u64>,
        /// Hex whole-file digest of what `put` committed (BLAKE3 unless
        /// the client asked for another hash).
        #[serde(skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
        /// `ok`, or the error code it was answered with.
        result: String,
    },
    /// A session ended.
    SessionEnd {
        /// The user.
        user: String,
        /// The client's address.
        peer: String,
        /// How long it lasted, in milliseconds.
        duration_ms: u64,
        /// `closed`, or why it ended otherwise.
        reason: String,
    },
    /// Events were lost because the writer fell behind.
    AuditDropped {
        /// Events lost since the previous such line.
        count: u64,
    },
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    #[serde(flatten)]
    event: &'a Event,
}

/// Where the audit log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Appended to this file (created with mode 0600).
    File(PathBuf),
    /// Standard error.
    Stderr,
}

impl Destination {
    /// `-` is stderr, anything else a file.
    pub fn parse(s: &str) -> Destination {
        if s == "-" {
            Destination::Stderr
        } else {
            Destination::File(PathBuf::from(s))
        }
    }
}

struct Shared {
    dropped: AtomicU64,
    reopen: AtomicBool,
}

/// A handle for recording events; cheap to clone. A disabled handle
/// records nothing.
#[derive(Clone)]
pub struct Audit {
    inner: Option<(SyncSender<Event>, Arc<Shared>)>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.inner.is_some() {
            "Audit(on)"
        } else {
            "Audit(off)"
        })
    }
}

impl Audit {
    /// No audit log.
    pub fn disabled() -> Audit {
        Audit { inner: None }
    }

    /// Opens `dest` and starts the writer thread.
    pub fn open(dest: Destination) -> io::Result<Audit> {
        let out = Output::open(&dest)?;
        let (audit, rx) = Audit::channel(QUEUE);
        let shared = audit.shared().cloned();
        std::thread::Builder::new()
            .name("skiff-audit".into())
            .spawn(move || {
                if let Some(shared) = shared {
                    write_loop(out, rx, &shared, &dest);
                }
            })?;
        Ok(audit)
    }

    fn channel(capacity: usize) -> (Audit, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let shared = Arc::new(Shared {
            dropped: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
        });
        (
            Audit {
                inner: Some((tx, shared)),
            },
            rx,
        )
    }

    fn shared(&self) -> Option<&Arc<Shared>> {
        self.inner.as_ref().map(|(_, s)| s)
    }

    /// Whether events are recorded at all.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Records `event` without waiting; drops (and counts) it when the
    /// writer is too far behind.
    pub fn record(&self, event: Event) {
        let Some((tx, shared)) = &self.inner else {
            return;
        };
        match tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Asks the writer to reopen its file (after logrotate moved it).
    pub fn reopen(&self) {
        if let Some(s) = self.shared() {
            s.reopen.store(true, Ordering::Relaxed);
        }
    }

    /// Events dropped so far and not yet reported in the log.
    pub fn pending_drops(&self) -> u64 {
        self.shared()
            .map(|s| s.dropped.load(Ordering::Relaxed))
            .unwrap_or(0)
    }
}

enum Output {
    File(io::BufWriter<File>),
    Stderr(io::Stderr),
}

impl Output {
    fn open(dest: &Destination) -> io::Result<Output> {
        match dest {
            Destination::Stderr => Ok(Output::Stderr(io::stderr())),
            Destination::File(p) => Ok(Output::File(io::BufWriter::new(open_append(p)?))),
        }
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Output::File(f) => f,
            Output::Stderr(e) => e,
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("audit log {}: {e}", path.display())))
}

/// Writes one line for `event`, stamped now.
fn write_event(out: &mut dyn Write, event: &Event) -> io::Result<()> {
    let line = Line {
        ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        event,
    };
    let mut bytes = serde_json::to_vec(&line).map_err(io::Error::other)?;
    bytes.push(b'\n');
    out.write_all(&bytes)
}

fn write_loop(mut out: Output, rx: mpsc::Receiver<Event>, shared: &Shared, dest: &Destination) {
    let mut failing = false;
    loop {
        let first = match rx.recv_timeout(Duration::from_millis(250)) {
            Ok(e) => Some(e),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if shared.reopen.swap(false, Ordering::Relaxed) {
            let _ = out.writer().flush();
            match Output::open(dest) {
                Ok(o) => {
                    out = o;
                    tracing::info!("audit log reopened");
                }
                Err(e) => {
                    tracing::error!("cannot reopen the audit log, still writing the old one: {e}")
                }
            }
        }
        let dropped = shared.dropped.swap(0, Ordering::Relaxed);
        let mut result = Ok(());
        if dropped > 0 {
            tracing::warn!("audit log fell behind: {dropped} events dropped");
            result = write_event(out.writer(), &Event::AuditDropped { count: dropped });
        }
        // Everything queued goes out in one batch, then one flush.
        for event in first.into_iter().chain(rx.try_iter()) {
            if result.is_ok() {
                result = write_event(out.writer(), &event);
            }
        }
        let result = result.and_then(|()| out.writer().flush());
        match result {
            Err(e) if !failing => {
                tracing::error!("cannot write the audit log: {e}");
                failing = true;
            }
            Ok(()) => failing = false,
            Err(_) => {}
        }
    }
    let _ = out.writer().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(n: u64) -> Event {
        Event::SessionEnd {
            user: "u".into(),
            peer: "127.0.0.1:1".into(),
            duration_ms: n,
            reason: "closed".into(),
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn wait_for(path: &Path, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..200 {
            let v = lines(path);
            if v.len() >= n {
                return v;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        lines(path)
    }

    #[test]
    fn writes_json_lines_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let audit = Audit::open(Destination::File(path.clone())).unwrap();
        audit.record(end(1));
        audit.record(Event::AuthFailed {
            user: None,
            peer: "[::1]:5".into(),
            reason: "wrong key".into(),
        });
        let v = wait_for(&path, 2);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0]["event"], "session_end");
        assert_eq!(v[0]["duration_ms"], 1);
        assert!(v[0]["ts"].as_str().unwrap().ends_with('Z'));
        assert_eq!(v[1]["event"], "auth_failed");
        assert!(v[1].get("user").is_none());

        let rotated = dir.path().join("audit.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        audit.reopen();
        // The reopen happens before the next batch is written.
        std::thread::sleep(Duration::from_millis(300));
        audit.record(end(2));
        let v = wait_for(&path, 1);
        assert_eq!(v.len(), 1, "new file gets new events");
        assert_eq!(lines(&rotated).len(), 2);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let (audit, rx) = Audit::channel(4);
        let started = std::time::Instant::now();
        for i in 0..100 {
            audit.record(end(i));
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(audit.pending_drops(), 96);
        assert_eq!(rx.try_iter().count(), 4);
        // The writer reports the gap as a line of its own.
        let mut out = Vec::new();
        write_event(&mut out, &Event::AuditDropped { count: 96 }).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["event"], "audit_dropped");
        assert_eq!(v["count"], 96);
    }

    #[test]
    fn disabled_records_nothing() {
        let a = Audit::disabled();
        a.record(end(0));
        assert!(!a.is_enabled());
        assert_eq!(a.pending_drops(), 0);
    }
}
