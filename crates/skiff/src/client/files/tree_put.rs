//! `put -r` as one stream (`put_tree`, PROTOCOL.md section 7).
//!
//! The planned jobs feed the shared tree sender (`transfer::tree_send`):
//! one blocking thread reads, hashes and packs the files, the session
//! task writes them under the window the server granted while the
//! server's `tree_ack`s are read, which answer files in batches,
//! asynchronously, and give the window back.

use std::os::unix::fs::OpenOptionsExt;

use skiff_wire::message::tree::{PutTree, TreeDir, TreeFailure, TreeLink, TreeOutput};
use skiff_wire::{ErrorCode, ErrorMsg};
use tokio::sync::mpsc;

use super::progress::Progress;
use super::upload::{local_failure, FileJob, Job};
use super::{recv_msg, Failure, Options, Summary};
use crate::client::ClientError;
use crate::session::{Session, SessionError};
use crate::transfer::idle_timeout;
use crate::transfer::tree_send::{self, Answered, Outgoing, Packer, SendFile, Window};

/// How the server answered `put_tree`.
pub(super) enum Start {
    /// Go ahead, with this window in bytes.
    Ready(u64),
    /// The server refused the tree as a whole.
    Refused(Failure),
    /// The server does not know `put_tree`: use one `put` per file.
    Unsupported,
}

/// Asks the server for a tree upload.
pub(super) async fn start(session: &mut Session<'_>, opts: &Options) -> Result<Start, ClientError> {
    let req = PutTree {
        force: opts.force,
        hash: opts.hash,
    };
    session.send(&req, &[]).await?;
    answer(session).await
}

/// Reads the server's answer to a tree request (`put_tree` or `get_tree`):
/// the window it grants, a refusal, or an old server's `unsupported`.
pub(super) async fn answer(session: &mut Session<'_>) -> Result<Start, ClientError> {
    let (reader, _) = session.split();
    match recv_msg::<TreeOutput>(reader).await? {
        TreeOutput::Ready(r) => Ok(Start::Ready(r.window)),
        TreeOutput::Error(m) if m.code == ErrorCode::Unsupported => Ok(Start::Unsupported),
        TreeOutput::Error(m) => Ok(Start::Refused(m.into())),
        other => Err(unexpected("tree_ready", other.op())),
    }
}

/// Streams every job; returns once the server answered them all.
pub(super) async fn stream(
    session: &mut Session<'_>,
    jobs: Vec<Job>,
    window: u64,
    opts: &Options,
    progress: &Progress,
    summary: &mut Summary,
) -> Result<(), ClientError> {
    let (reader, writer) = session.split();
    let window = Window::new(window, Some(idle_timeout()));
    let (tx, mut rx) = mpsc::channel::<Outgoing>(tree_send::QUEUE);
    let packer = Packer::new(tx, opts.hash, window.head_cost());
    let producer = tokio::task::spawn_blocking(move || produce(jobs, packer));
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut failures = Vec::new();
    let on_answer = |a: Answered| {
        for s in a.done.into_iter().filter(|s| s.is_file) {
            files += 1;
            bytes += s.size;
            progress.file_done(&s.label);
        }
        for (sent, f) in a.failed {
            if let Some(s) = sent.as_ref().filter(|s| s.is_file) {
                progress.file_done(&s.label);
            }
            failures.push(labelled(sent.map(|s| s.label), f));
        }
    };
    let result = tree_send::exchange(
        reader,
        writer,
        &mut rx,
        &window,
        |n| progress.add(n),
        on_answer,
    )
    .await;
    // On an error the channel is gone and the reading thread stops.
    drop(rx);
    let _ = producer.await;
    result?;
    summary.files += files;
    summary.bytes += bytes;
    summary.failures.extend(failures);
    Ok(())
}

/// A failure the peer reported for an entry, named as the user knows it.
pub(super) fn labelled(label: Option<String>, f: TreeFailure) -> Failure {
    let label = label.unwrap_or_default();
    let message = if label.is_empty() || f.message.contains(&label) {
        f.message
    } else {
        format!("{label}: {}", f.message)
    };
    Failure {
        code: f.code,
        message,
    }
}

fn unexpected(expected: &'static str, got: &str) -> ClientError {
    ClientError::Session(SessionError::Unexpected {
        expected,
        got: got.to_string(),
    })
}

/// Walks the jobs on a blocking thread, in order; stops early when the
/// network side is gone.
fn produce(jobs: Vec<Job>, mut p: Packer) {
    for (id, job) in (0u64..).zip(jobs) {
        let more = match job {
            Job::Mkdir(m) => p.dir(TreeDir {
                id,
                path: m.path,
                mode: m.mode,
                mtime_ns: m.mtime_ns,
            }),
            Job::Symlink { remote, target } => p.link(TreeLink {
                id,
                path: remote,
                target,
            }),
            Job::File(f) => match open(&f) {
                Ok(file) => p.file(SendFile {
                    id,
                    label: f.remote.clone(),
                    path: f.remote,
                    file,
                }),
                Err(e) => {
                    let m = local_failure(&f.local, &e);
                    let m = ErrorMsg::new(m.code, m.message);
                    p.failure(id, &f.remote, true, m)
                }
            },
        };
        if !more {
            return;
        }
    }
    p.finish();
}

fn open(f: &FileJob) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&f.local)
}
