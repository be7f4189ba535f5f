//! `get`: downloads a file or a tree, pipelined, into partial files that
//! are renamed into place only after the whole-file digest matches.
//!
//! Everything the server names is untrusted: each relative path is checked
//! component by component (no absolute paths, no `..`, no empty or `.`
//! parts), directories are entered without following symlinks, and links
//! are checked by resolution against what has been created so far
//! (`transfer::links`, the server's own rule), so no chain of links can
//! lead out of the local tree. All writes go
//! through a `cap_std` directory capability on the LOCAL target.

use std::path::Path;

use cap_fs_ext::DirExt;
use cap_std::ambient_authority;
use cap_std::fs::Dir;
use skiff_wire::message::files::{DownloadData, Entry, EntryKind, FileHead, FilesReply, Get};
use skiff_wire::{ErrorCode, ErrorMsg, Message};
use tokio::sync::mpsc;

use super::progress::Progress;
use super::tree_get;
use super::tree_put::Start;
use super::{
    failure_or_protocol, hand_to_reader, recv_msg, remote, remote_join, Failure, Options, Summary,
};
use crate::client::ClientError;
use crate::session::{Session, SessionReader};
use crate::transfer::checksum::digests_match;
use crate::transfer::names::split_entry;
use crate::transfer::partfile::PartFile;
use crate::transfer::pipeline::Sink;
use crate::transfer::{errors, fault, links, meta};

/// Get requests sent but not yet answered, at most.
const PIPELINE_DEPTH: usize = 32;

/// One file to fetch.
struct FileJob {
    remote: String,
    dest: PartFile,
    size: u64,
}

/// Downloads `remote` as exactly `dest` (a file, or with `-r` a tree whose
/// top becomes `dest`); [`super::sources`] decides where that is.
pub async fn get_as(
    session: &mut Session<'_>,
    remote: &str,
    dest: &Path,
    opts: &Options,
) -> Result<Summary, ClientError> {
    let entry = remote::stat(session, remote).await?;
    let local_err =
        |e: std::io::Error, p: &Path| ClientError::Local(format!("{}: {e}", p.display()));
    let mut summary = Summary::default();
    if entry.kind == EntryKind::Dir {
        if !opts.recursive {
            return Err(ClientError::Local(format!(
                "{remote}: is a directory; use -r to copy a tree"
            )));
        }
        match std::fs::create_dir(dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dest.is_dir() => {}
            Err(e) => return Err(local_err(e, dest)),
        }
        let top =
            Dir::open_ambient_dir(dest, ambient_authority()).map_err(|e| local_err(e, dest))?;
        if !opts.resume {
            // One stream for the whole tree, when the server offers it.
            match tree_get::start(session, remote, opts).await? {
                Start::Ready(_) => {
                    let progress = Progress::new(0, opts);
                    tree_get::receive(session, &top, opts, &progress, &mut summary).await?;
                    progress.finish();
                    let _ = meta::apply_dir(&top, Some(entry.mode), Some(entry.mtime_ns));
                    return Ok(summary);
                }
                Start::Refused(f) => {
                    summary.failures.push(f);
                    return Ok(summary);
                }
                Start::Unsupported => {}
            }
        }
        let entries = remote::ls(session, remote, true).await?;
        let (jobs, dirs, total) = plan_tree(&top, remote, &entries, opts, &mut summary.failures);
        let progress = Progress::new(total, opts);
        progress.set_files(jobs.len() as u64);
        run(session, jobs, opts, &progress, &mut summary).await?;
        progress.finish();
        // Directory times last: creating files changed them.
        for (comps, e) in dirs.iter().rev() {
            let refs: Vec<&str> = comps.iter().map(String::as_str).collect();
            if let Ok(d) = open_nofollow(&top, &refs) {
                let _ = meta::apply_dir(&d, Some(e.mode), Some(e.mtime_ns));
            }
        }
        let _ = meta::apply_dir(&top, Some(entry.mode), Some(entry.mtime_ns));
        return Ok(summary);
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ClientError::Local(format!("{}: not a usable file name", dest.display())))?;
    let dir =
        Dir::open_ambient_dir(&parent, ambient_authority()).map_err(|e| local_err(e, &parent))?;
    let job = FileJob {
        remote: remote.to_string(),
        dest: PartFile::new(dir, file_name),
        size: entry.size,
    };
    let progress = Progress::new(entry.size, opts);
    run(session, vec![job], opts, &progress, &mut summary).await?;
    progress.finish();
    Ok(summary)
}

/// Opens the directory `comps` beneath `top`, one component at a time,
/// never following a symlink.
pub(super) fn open_nofollow(top: &Dir, comps: &[&str]) -> std::io::Result<Dir> {
    let mut d = top.try_clone()?;
    for c in comps {
        d = d.open_dir_nofollow(c)?;
    }
    Ok(d)
}

type DirList = Vec<(Vec<String>, Entry)>;

/// Creates directories and links, and lists the files to fetch. Every
/// name from the server is validated first; a bad one is a `path_escape`
/// failure and nothing is created for it.
fn plan_tree(
    top: &Dir,
    remote: &str,
    entries: &[Entry],
    opts: &Options,
    failures: &mut Vec<Failure>,
) -> (Vec<FileJob>, DirList, u64) {
    let mut jobs = Vec::new();
    let mut dirs = Vec::new();
    let mut total = 0;
    for e in entries {
        let fail = |code: ErrorCode, detail: &str| Failure {
            code,
            message: errors::explain(code, &e.path, detail),
        };
        let Ok(comps) = split_entry(&e.path) else {
            failures.push(fail(
                ErrorCode::PathEscape,
                "unsafe name sent by the server",
            ));
            continue;
        };
        let Some((name, parents)) = comps.split_last() else {
            continue;
        };
        let parent = match open_nofollow(top, parents) {
            Ok(d) => d,
            Err(err) => {
                failures.push(Failure::from(errors::to_msg(&err, &e.path)));
                continue;
            }
        };
        match e.kind {
            EntryKind::Dir => match make_dir(&parent, name, &e.path) {
                Ok(()) => dirs.push((comps.iter().map(|s| s.to_string()).collect(), e.clone())),
                Err(m) => failures.push(m.into()),
            },
            EntryKind::Symlink => {
                let target = e.target.as_deref().unwrap_or_default();
                if let Err(m) = make_link(top, &parent, parents, name, target, &e.path, opts.force)
                {
                    failures.push(m.into());
                }
            }
            EntryKind::File => {
                total += e.size;
                jobs.push(FileJob {
                    remote: remote_join(remote, &e.path),
                    dest: PartFile::new(parent, name),
                    size: e.size,
                });
            }
            EntryKind::Other => failures.push(fail(
                ErrorCode::Unsupported,
                "not a file, directory or symlink; skipped",
            )),
        }
    }
    (jobs, dirs, total)
}

/// Creates directory `name` in `parent` (LOCAL's `path`); an existing
/// directory is fine, anything else in the way is `exists`.
pub(super) fn make_dir(parent: &Dir, name: &str, path: &str) -> Result<(), ErrorMsg> {
    match parent.create_dir(name) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            match parent.symlink_metadata(name) {
                Ok(m) if m.is_dir() => Ok(()),
                _ => Err(errors::msg(
                    ErrorCode::Exists,
                    path,
                    "something other than a directory is in the way",
                )),
            }
        }
        Err(err) => Err(errors::to_msg(&err, path)),
    }
}

/// Creates the link `name -> target` in `parent`, the directory at
/// `parents` beneath `top` (opened without following links, so that is
/// its physical position, from which the kernel resolves the target),
/// after checking by resolution against what this download has created
/// so far that it cannot lead out (`transfer::links`).
pub(super) fn make_link(
    top: &Dir,
    parent: &Dir,
    parents: &[&str],
    name: &str,
    target: &str,
    path: &str,
    force: bool,
) -> Result<(), ErrorMsg> {
    let physical: Vec<String> = parents.iter().map(|c| c.to_string()).collect();
    if let Err(refused) = links::check(top, &physical, target) {
        return Err(ErrorMsg::new(
            ErrorCode::PathEscape,
            format!("{path}: {refused} (LOCAL); the link was not created"),
        ));
    }
    let dest = PartFile::new(
        parent.try_clone().map_err(|e| errors::to_msg(&e, path))?,
        name,
    );
    dest.check_destination(force)
        .and_then(|()| {
            match dest.dir.remove_file(name) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            dest.dir.symlink(target, name)
        })
        .map_err(|e| errors::to_msg(&e, path))
}

/// Sends `get` requests (a bounded window ahead) while receiving the
/// answers in order.
async fn run(
    session: &mut Session<'_>,
    jobs: Vec<FileJob>,
    opts: &Options,
    progress: &Progress,
    summary: &mut Summary,
) -> Result<(), ClientError> {
    let (reader, writer) = session.split();
    let (tx, mut rx) = mpsc::channel::<FileJob>(PIPELINE_DEPTH);
    let mut refused = Vec::new();
    let send = async {
        for job in jobs {
            if let Err(e) = job.dest.check_destination(opts.force) {
                refused.push(Failure::from(errors::to_msg(&e, &job.dest.name)));
                progress.skip(job.size);
                continue;
            }
            let offset = if opts.resume {
                job.dest.resumable_len()
            } else {
                0
            };
            let req = Get {
                path: job.remote.clone(),
                offset,
                hash: opts.hash,
            };
            writer.queue(&req, &[])?;
            hand_to_reader(writer, &tx, job).await?;
        }
        drop(tx);
        writer.flush().await?;
        Ok::<_, ClientError>(())
    };
    let receive = async {
        let mut out = Summary::default();
        while let Some(job) = rx.recv().await {
            let r = receive_file(reader, &job, opts, progress).await?;
            progress.file_done(&job.remote);
            match r {
                Ok(size) => {
                    out.files += 1;
                    out.bytes += size;
                }
                Err(f) => out.failures.push(f),
            }
        }
        Ok::<_, ClientError>(out)
    };
    let ((), got) = tokio::try_join!(send, receive)?;
    summary.files += got.files;
    summary.bytes += got.bytes;
    summary.failures.extend(refused);
    summary.failures.extend(got.failures);
    Ok(())
}

/// Receives one file's answer: `file`, `data`*, `end` (or `error`). The
/// outer error ends the session; the inner one is this file's failure.
async fn receive_file(
    reader: &mut SessionReader<'_>,
    job: &FileJob,
    opts: &Options,
    progress: &Progress,
) -> Result<Result<u64, Failure>, ClientError> {
    let label = |code: ErrorCode, detail: &str| Failure {
        code,
        message: errors::explain(code, &job.remote, detail),
    };
    let head = match recv_msg(reader).await? {
        FilesReply::File(head) => head,
        other => {
            let f = failure_or_protocol(other, FileHead::OP)?;
            progress.skip(job.size);
            return Ok(Err(f));
        }
    };
    let mut sink = match job.dest.open(opts.resume, head.size) {
        Ok((file, have)) if have >= head.offset => Some(Sink::spawn(file, head.offset, opts.hash)),
        Ok(_) => None,
        Err(_) => None,
    };
    if head.offset > 0 {
        tracing::info!(path = %job.remote, offset = head.offset, "resuming download");
    }
    progress.skip(head.offset);
    let mut index = 0u64;
    let mut received = head.offset;
    let end = loop {
        let chunk = match recv_msg(reader).await? {
            DownloadData::Data(body) => body,
            DownloadData::End(end) => break end,
            DownloadData::Error(m) => {
                if let Some(s) = sink {
                    // Keep what arrived for --resume.
                    let _ = s.finish().await;
                }
                return Ok(Err(m.into()));
            }
        };
        received += chunk.len() as u64;
        if received > head.size {
            // A server that sends past the size it announced is broken or
            // hostile: stop before it fills the local disk.
            if let Some(s) = sink {
                let _ = s.finish().await;
            }
            job.dest.discard();
            return Err(ClientError::Remote(ErrorMsg::new(
                ErrorCode::TooLarge,
                format!(
                    "{}: the server sent more than the {} bytes it announced; \
                     the partial file was removed",
                    job.remote, head.size
                ),
            )));
        }
        fault::maybe_delay().await;
        let chunk = fault::maybe_corrupt(index, chunk);
        index += 1;
        progress.add(chunk.len() as u64);
        if let Some(s) = sink.as_mut() {
            if !s.write(chunk).await {
                // Keep reading this file's frames; the error is reported at the end.
            }
        }
    };
    let Some(sink) = sink else {
        return Ok(Err(label(
            ErrorCode::Internal,
            "could not open the local partial file",
        )));
    };
    let done = match sink.finish().await {
        Ok(d) => d,
        Err(e) => {
            let m: ErrorMsg = errors::to_msg(&e, &job.dest.name);
            if m.code == ErrorCode::NoSpace {
                job.dest.discard();
            }
            return Ok(Err(m.into()));
        }
    };
    if done.size != end.size || !digests_match(&done.digest, &end.digest) {
        job.dest.discard();
        return Ok(Err(label(
            ErrorCode::ChecksumMismatch,
            &format!(
                "received {} bytes with digest {}, server sent {} bytes with digest {}",
                done.size, done.digest, end.size, end.digest
            ),
        )));
    }
    if let Err(e) = job
        .dest
        .commit(&done.file, Some(head.mode), Some(head.mtime_ns), opts.force)
    {
        job.dest.discard();
        return Ok(Err(errors::to_msg(&e, &job.dest.name).into()));
    }
    Ok(Ok(done.size))
}
