//! Transfers with an end that is not a local file: remote files to a
//! writer (`cp HOST:f -`), and remote to remote through this client
//! (`cp h1:a h2:b`, as `scp -3`). Data passes one chunk at a time, so
//! memory stays bounded whatever the size. Every file's digest is checked
//! against the sender's; in a relay the receiving server checks the same
//! digest again before it commits, so neither hop can corrupt silently.

use bytes::Bytes;
use skiff_wire::message::files::{
    Data, Done, DownloadData, End, EntryKind, FileHead, FilesReply, Get, Mkdir, Put, Ready,
};
use skiff_wire::{ErrorCode, Message};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::progress::Progress;
use super::sources::labelled;
use super::{
    dest, failure_or_protocol, recv_msg, remote, remote_glob, remote_join, Failure, Options,
    Summary,
};
use crate::client::ClientError;
use crate::session::Session;
use crate::transfer::checksum::{digests_match, Checksum};
use crate::transfer::names::{base_name, split_entry};

/// Streams remote files (globs expanded by the server), in order, into
/// `out`, concatenated as cat(1) does. A file whose digest does not match
/// is reported (its bytes are already written: the command exits 1).
pub async fn get_to_writer<W: AsyncWrite + Unpin>(
    session: &mut Session<'_>,
    sources: &[String],
    out: &mut W,
    opts: &Options,
) -> Result<Summary, ClientError> {
    let mut summary = Summary::default();
    for path in expand_all(session, sources, &mut summary).await? {
        let head = match start_get(session, &path, opts).await? {
            Ok(h) => h,
            Err(f) => {
                summary.failures.push(f);
                continue;
            }
        };
        let progress = Progress::new(head.size, &labelled(opts, &path));
        let mut sum = Checksum::new(opts.hash);
        let mut size = 0u64;
        let verdict = loop {
            match next_chunk(session).await? {
                Chunk::Data(b) => {
                    sum.update(&b);
                    size += b.len() as u64;
                    progress.add(b.len() as u64);
                    out.write_all(&b)
                        .await
                        .map_err(|e| ClientError::Local(format!("writing stdout: {e}")))?;
                }
                Chunk::End(end) => break verify(&path, size, sum, &end),
                Chunk::Failed(f) => break Err(f),
            }
        };
        progress.file_done(&path);
        progress.finish();
        match verdict {
            Ok(_) => {
                summary.files += 1;
                summary.bytes += size;
            }
            Err(f) => summary.failures.push(f),
        }
    }
    out.flush()
        .await
        .map_err(|e| ClientError::Local(format!("writing stdout: {e}")))?;
    Ok(summary)
}

/// Copies remote `sources` on `src` to `dest` on `dst`, through this
/// client, with the same destination rules as `put` (a directory
/// destination is entered, trees need `-r`).
pub async fn relay_all(
    src: &mut Session<'_>,
    sources: &[String],
    dst: &mut Session<'_>,
    dest: &str,
    opts: &Options,
) -> Result<Summary, ClientError> {
    let mut summary = Summary::default();
    let paths = expand_all(src, sources, &mut summary).await?;
    if paths.is_empty() {
        return Ok(summary);
    }
    let several = paths.len() > 1 || sources.len() > 1;
    let dest_is_dir = dest::remote_destination(dst, dest, several).await?;
    for path in paths {
        let place = dest::remote_place(dest, dest_is_dir, Some(base_name(&path)));
        let entry = match remote::stat(src, &path).await {
            Ok(e) => e,
            Err(e) => {
                summary.fail(e)?;
                continue;
            }
        };
        let opts = labelled(opts, &path);
        match entry.kind {
            EntryKind::Dir if !opts.recursive => summary.failures.push(Failure {
                code: ErrorCode::Exists,
                message: format!("{path}: is a directory; use -r to copy a tree"),
            }),
            EntryKind::Dir => relay_tree(src, &path, dst, &place, &opts, &mut summary).await?,
            EntryKind::Symlink => {
                let target = entry.target.unwrap_or_default();
                if let Err(e) = remote::symlink(dst, &place, &target, opts.force).await {
                    summary.fail(e)?;
                }
            }
            _ => {
                let progress = Progress::new(entry.size, &opts);
                let r = relay_file(src, &path, dst, &place, &opts, &progress).await?;
                progress.file_done(&place);
                progress.finish();
                summary.count(r);
            }
        }
    }
    Ok(summary)
}

/// Copies the tree `path` on `src` as `place` on `dst`: directories
/// first, then files and links, directory modes and times last.
async fn relay_tree(
    src: &mut Session<'_>,
    path: &str,
    dst: &mut Session<'_>,
    place: &str,
    opts: &Options,
    summary: &mut Summary,
) -> Result<(), ClientError> {
    let top = remote::stat(src, path).await?;
    let entries = remote::ls(src, path, true).await?;
    let total: u64 = entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .map(|e| e.size)
        .sum();
    let progress = Progress::new(total, opts);
    progress.set_files(entries.iter().filter(|e| e.kind == EntryKind::File).count() as u64);
    let mkdir = |path: String, e: Option<(u32, i64)>| Mkdir {
        path,
        exist_ok: true,
        mode: e.map(|m| m.0),
        mtime_ns: e.map(|m| m.1),
        ..Default::default()
    };
    if let Err(e) = remote::mkdir_with(dst, &mkdir(place.to_string(), None)).await {
        summary.fail(e)?;
        return Ok(());
    }
    let mut dirs = vec![(place.to_string(), top.mode, top.mtime_ns)];
    for e in &entries {
        // The source server's names are untrusted; the destination server
        // confines them too, but a bad name is refused here first.
        if split_entry(&e.path).is_err() {
            summary.failures.push(Failure {
                code: ErrorCode::PathEscape,
                message: format!("{}: unsafe name sent by the source server", e.path),
            });
            continue;
        }
        let to = remote_join(place, &e.path);
        match e.kind {
            EntryKind::Dir => match remote::mkdir_with(dst, &mkdir(to.clone(), None)).await {
                Ok(()) => dirs.push((to, e.mode, e.mtime_ns)),
                Err(err) => summary.fail(err)?,
            },
            EntryKind::Symlink => {
                let target = e.target.clone().unwrap_or_default();
                if let Err(err) = remote::symlink(dst, &to, &target, opts.force).await {
                    summary.fail(err)?;
                }
            }
            EntryKind::File => {
                let from = remote_join(path, &e.path);
                let r = relay_file(src, &from, dst, &to, opts, &progress).await?;
                progress.file_done(&to);
                summary.count(r);
            }
            EntryKind::Other => summary.failures.push(Failure {
                code: ErrorCode::Unsupported,
                message: format!("{}: not a file, directory or symlink; skipped", e.path),
            }),
        }
    }
    progress.finish();
    for (to, mode, mtime) in dirs.into_iter().rev() {
        if let Err(err) = remote::mkdir_with(dst, &mkdir(to, Some((mode, mtime)))).await {
            summary.fail(err)?;
        }
    }
    Ok(())
}

/// Relays one file: `get` on `src`, `put` on `dst` once it is ready, the
/// chunks across as they come, and the sender's digest checked before the
/// receiver is told to commit.
async fn relay_file(
    src: &mut Session<'_>,
    from: &str,
    dst: &mut Session<'_>,
    to: &str,
    opts: &Options,
    progress: &Progress,
) -> Result<Result<u64, Failure>, ClientError> {
    let head = match start_get(src, from, opts).await? {
        Ok(h) => h,
        Err(f) => return Ok(Err(f)),
    };
    let put = Put {
        path: to.to_string(),
        kind: EntryKind::File,
        size: head.size,
        mode: Some(head.mode),
        mtime_ns: Some(head.mtime_ns),
        hash: opts.hash,
        force: opts.force,
        resume: false,
        target: None,
    };
    dst.send(&put, &[]).await?;
    let aborted = End {
        abort: true,
        ..Default::default()
    };
    let (reader, _) = dst.split();
    match recv_msg::<FilesReply>(reader).await? {
        FilesReply::Ready(_) => {}
        other => {
            // Refused: the receiver discards up to an `end`; the sender's
            // data is read and dropped.
            let f = failure_or_protocol(other, Ready::OP)?;
            dst.send(&aborted, &[]).await?;
            drain(src).await?;
            return Ok(Err(f));
        }
    }
    let mut sum = Checksum::new(opts.hash);
    let mut size = 0u64;
    let verdict = loop {
        match next_chunk(src).await? {
            Chunk::Data(b) => {
                sum.update(&b);
                size += b.len() as u64;
                progress.add(b.len() as u64);
                dst.write_shared(&Data {}, b).await?;
            }
            Chunk::End(end) => {
                break verify(from, size, sum, &end).map(|size| End {
                    size,
                    digest: end.digest,
                    abort: false,
                })
            }
            Chunk::Failed(f) => break Err(f),
        }
    };
    match verdict {
        Ok(end) => {
            dst.send(&end, &[]).await?;
            let (reader, _) = dst.split();
            match recv_msg::<FilesReply>(reader).await? {
                FilesReply::Done(d) => Ok(Ok(d.size)),
                other => Ok(Err(failure_or_protocol(other, Done::OP)?)),
            }
        }
        Err(f) => {
            dst.send(&aborted, &[]).await?;
            let (reader, _) = dst.split();
            // The receiver answers an aborted upload with an error.
            let _ = recv_msg::<FilesReply>(reader).await?;
            Ok(Err(f))
        }
    }
}

/// Expands every source's glob on `session`; a source that fails is
/// recorded in `summary`.
async fn expand_all(
    session: &mut Session<'_>,
    sources: &[String],
    summary: &mut Summary,
) -> Result<Vec<String>, ClientError> {
    let mut out = Vec::new();
    for s in sources {
        match remote_glob::expand(session, s).await {
            Ok(p) => out.extend(p),
            Err(e) => summary.fail(e)?,
        }
    }
    Ok(out)
}

/// Sends `get` for a whole file and reads its `file` head (or refusal).
async fn start_get(
    session: &mut Session<'_>,
    path: &str,
    opts: &Options,
) -> Result<Result<FileHead, Failure>, ClientError> {
    let req = Get {
        path: path.to_string(),
        offset: 0,
        hash: opts.hash,
    };
    session.send(&req, &[]).await?;
    let (reader, _) = session.split();
    match recv_msg::<FilesReply>(reader).await? {
        FilesReply::File(h) => Ok(Ok(h)),
        other => Ok(Err(failure_or_protocol(other, FileHead::OP)?)),
    }
}

/// One frame of a download.
enum Chunk {
    Data(Bytes),
    End(End),
    Failed(Failure),
}

async fn next_chunk(session: &mut Session<'_>) -> Result<Chunk, ClientError> {
    let (reader, _) = session.split();
    Ok(match recv_msg::<DownloadData>(reader).await? {
        DownloadData::Data(b) => Chunk::Data(b),
        DownloadData::End(e) => Chunk::End(e),
        DownloadData::Error(m) => Chunk::Failed(m.into()),
    })
}

/// Reads a download to its end, dropping the data.
async fn drain(session: &mut Session<'_>) -> Result<(), ClientError> {
    while let Chunk::Data(_) = next_chunk(session).await? {}
    Ok(())
}

/// The sender's `end` against what arrived.
fn verify(path: &str, size: u64, sum: Checksum, end: &End) -> Result<u64, Failure> {
    let digest = sum.finish_hex();
    if size == end.size && digests_match(&digest, &end.digest) {
        Ok(size)
    } else {
        Err(Failure {
            code: ErrorCode::ChecksumMismatch,
            message: format!(
                "{path}: checksum mismatch (received {size} bytes with digest {digest}, the server sent {} bytes with digest {}); nothing was committed from it",
                end.size, end.digest
            ),
        })
    }
}
