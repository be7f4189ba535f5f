//! `put`: uploads a file or a tree, pipelined.
//!
//! One task sends requests and data while another reads the answers, so
//! a tree of small files costs no round trip per file: the server answers
//! in order and the reader matches answers to what was sent. Only
//! `--resume` waits for each file's `ready` (it needs the offset).

use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use skiff_wire::message::files::{
    Data, Done, End, EntryKind, FilesReply, Mkdir, OkReply, Put, Ready,
};
use skiff_wire::{ErrorCode, Message};
use tokio::sync::{mpsc, oneshot};

use super::progress::Progress;
use super::{
    failure_or_protocol, hand_to_reader, recv_msg, remote_join, Failure, Options, Summary,
};
use super::{streams, tree_put};
use crate::client::ClientError;
use crate::session::{Session, SessionWriter};
use crate::transfer::meta;
use crate::transfer::pipeline::Source;

/// Requests sent but not yet answered, at most.
const PIPELINE_DEPTH: usize = 64;

/// One thing to create on the server.
#[derive(Debug)]
pub(super) enum Job {
    Mkdir(Mkdir),
    File(FileJob),
    Symlink { remote: String, target: String },
}

/// A local file to upload to `remote`, with the metadata to give it.
#[derive(Debug)]
pub(super) struct FileJob {
    pub(super) local: PathBuf,
    pub(super) remote: String,
    pub(super) size: u64,
    pub(super) mode: u32,
    pub(super) mtime_ns: i64,
}

/// What the reader should expect for a request the writer sent.
enum Pending {
    /// `ok` or `error` (mkdir, symlink).
    Simple { label: String },
    /// `ready` then `done`, or `error` in place of either.
    Upload {
        index: usize,
        label: String,
        offset_tx: Option<oneshot::Sender<u64>>,
    },
}

/// Uploads `local` as exactly `dest` (a file, or with `-r` a tree whose
/// top becomes `dest`); [`super::sources`] decides where that is.
pub async fn put_as(
    session: &mut Session<'_>,
    local: &Path,
    dest: &str,
    opts: &Options,
) -> Result<Summary, ClientError> {
    let md = std::fs::metadata(local)
        .map_err(|e| ClientError::Local(format!("{}: {e}", local.display())))?;
    let mut summary = Summary::default();
    let (jobs, total) = if md.is_dir() {
        if !opts.recursive {
            return Err(ClientError::Local(format!(
                "{}: is a directory; use -r to copy a tree",
                local.display()
            )));
        }
        plan_tree(local, dest, &mut summary.failures)
    } else {
        let job = FileJob {
            local: local.to_path_buf(),
            remote: dest.to_string(),
            size: md.len(),
            mode: md.mode(),
            mtime_ns: meta::mtime_ns(&md),
        };
        if let Some(s) = opts.streams.as_ref().filter(|_| !opts.resume) {
            let ranges = streams::ranges(job.size, s.count);
            if ranges.len() > 1 {
                let progress = Progress::new(job.size, opts);
                progress.set_files(1);
                let r = streams::put(session, s, &job, &ranges, opts, &progress).await?;
                progress.file_done(&job.remote);
                progress.finish();
                summary.count(r);
                return Ok(summary);
            }
        }
        (vec![Job::File(job)], md.len())
    };
    let progress = Progress::new(total, opts);
    progress.set_files(jobs.iter().filter(|j| matches!(j, Job::File(_))).count() as u64);
    if md.is_dir() && !opts.resume {
        // One stream for the whole tree, when the server offers it.
        match tree_put::start(session, opts).await? {
            tree_put::Start::Ready(window) => {
                tree_put::stream(session, jobs, window, opts, &progress, &mut summary).await?;
                progress.finish();
                return Ok(summary);
            }
            tree_put::Start::Refused(f) => {
                summary.failures.push(f);
                return Ok(summary);
            }
            tree_put::Start::Unsupported => {}
        }
    }
    run(session, &jobs, opts, &progress, &mut summary).await?;
    progress.finish();
    Ok(summary)
}

/// Walks a local tree (never following symlinks) into jobs: directories
/// first (parents before children), files and links, then directory modes
/// and mtimes last (writing into a directory changes its mtime).
fn plan_tree(top: &Path, dest: &str, failures: &mut Vec<Failure>) -> (Vec<Job>, u64) {
    let mut jobs = Vec::new();
    let mut dir_meta = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![(top.to_path_buf(), dest.to_string())];
    let local_fail = |p: &Path, what: String| Failure {
        code: ErrorCode::Internal,
        message: format!("{}: {what}", p.display()),
    };
    while let Some((dir, rdir)) = stack.pop() {
        let md = match std::fs::symlink_metadata(&dir) {
            Ok(m) => m,
            Err(e) => {
                failures.push(local_fail(&dir, e.to_string()));
                continue;
            }
        };
        jobs.push(Job::Mkdir(Mkdir {
            path: rdir.clone(),
            exist_ok: true,
            ..Default::default()
        }));
        dir_meta.push(Job::Mkdir(Mkdir {
            path: rdir.clone(),
            exist_ok: true,
            mode: Some(md.mode()),
            mtime_ns: Some(meta::mtime_ns(&md)),
            ..Default::default()
        }));
        let mut entries = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(rd) => entries.extend(rd.flatten().map(|e| (e.file_name(), e))),
            Err(e) => failures.push(local_fail(&dir, e.to_string())),
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut subdirs = Vec::new();
        for (os_name, ent) in entries {
            let path = dir.join(&os_name);
            let Some(name) = os_name.to_str() else {
                failures.push(local_fail(&path, "name is not UTF-8; skipped".into()));
                continue;
            };
            let rpath = remote_join(&rdir, name);
            // `fstatat` beside the open directory (never following a
            // link), not a walk of the whole path for every entry.
            let md = match ent.metadata() {
                Ok(m) => m,
                Err(e) => {
                    failures.push(local_fail(&path, e.to_string()));
                    continue;
                }
            };
            let ft = md.file_type();
            if ft.is_dir() {
                subdirs.push((path, rpath));
            } else if ft.is_symlink() {
                match std::fs::read_link(&path).map(|t| t.to_str().map(str::to_string)) {
                    Ok(Some(target)) => jobs.push(Job::Symlink {
                        remote: rpath,
                        target,
                    }),
                    Ok(None) => failures.push(local_fail(&path, "link target is not UTF-8".into())),
                    Err(e) => failures.push(local_fail(&path, e.to_string())),
                }
            } else if ft.is_file() {
                total += md.len();
                jobs.push(Job::File(FileJob {
                    local: path,
                    remote: rpath,
                    size: md.len(),
                    mode: md.mode(),
                    mtime_ns: meta::mtime_ns(&md),
                }));
            } else {
                failures.push(local_fail(
                    &path,
                    "not a regular file, directory or symlink; skipped".into(),
                ));
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    dir_meta.reverse();
    jobs.extend(dir_meta);
    (jobs, total)
}

/// Sends every job and reads every answer, concurrently.
async fn run(
    session: &mut Session<'_>,
    jobs: &[Job],
    opts: &Options,
    progress: &Progress,
    summary: &mut Summary,
) -> Result<(), ClientError> {
    let (reader, writer) = session.split();
    let (tx, mut rx) = mpsc::channel::<Pending>(PIPELINE_DEPTH);
    // Index + 1 of an upload the server refused while we were sending it.
    let abort = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::<Failure>::new());
    let fail = |f: Failure| {
        if let Ok(mut v) = failures.lock() {
            v.push(f);
        }
    };
    let send = async {
        let mut sender = Sender {
            writer,
            tx,
            opts,
            progress,
            abort: &abort,
            fail: &fail,
        };
        for (index, job) in jobs.iter().enumerate() {
            sender.send(index, job).await?;
        }
        let Sender { writer, tx, .. } = sender;
        drop(tx);
        writer.flush().await?;
        Ok::<_, ClientError>(())
    };
    let receive = async {
        let mut done = (0u64, 0u64);
        while let Some(p) = rx.recv().await {
            match p {
                Pending::Simple { label } => match recv_msg(reader).await? {
                    FilesReply::Ok(_) => {}
                    other => fail(labelled(&label, failure_or_protocol(other, OkReply::OP)?)),
                },
                Pending::Upload {
                    index,
                    label,
                    offset_tx,
                } => {
                    let refusal = match recv_msg(reader).await? {
                        FilesReply::Ready(ready) => {
                            if let Some(tx) = offset_tx {
                                let _ = tx.send(ready.offset);
                            }
                            match recv_msg(reader).await? {
                                FilesReply::Done(d) => {
                                    done.0 += 1;
                                    done.1 += d.size;
                                    progress.file_done(&label);
                                    continue;
                                }
                                other => failure_or_protocol(other, Done::OP)?,
                            }
                        }
                        other => failure_or_protocol(other, Ready::OP)?,
                    };
                    abort.store(index + 1, Ordering::SeqCst);
                    progress.file_done(&label);
                    fail(labelled(&label, refusal));
                }
            }
        }
        Ok::<_, ClientError>(done)
    };
    let ((), (files, bytes)) = tokio::try_join!(send, receive)?;
    summary.files += files;
    summary.bytes += bytes;
    summary
        .failures
        .extend(failures.into_inner().unwrap_or_default());
    Ok(())
}

fn labelled(label: &str, f: Failure) -> Failure {
    if f.message.contains(label) {
        f
    } else {
        Failure {
            code: f.code,
            message: format!("{label}: {}", f.message),
        }
    }
}

/// The sending half of an upload pipeline: writes each job's request (and
/// a file's data) and hands the reader what answer to expect.
struct Sender<'s, 'w, F> {
    writer: &'s mut SessionWriter<'w>,
    tx: mpsc::Sender<Pending>,
    opts: &'s Options,
    progress: &'s Progress,
    /// Index + 1 of an upload the server refused while we were sending it.
    abort: &'s AtomicUsize,
    fail: &'s F,
}

impl<F: Fn(Failure) + Sync> Sender<'_, '_, F> {
    /// Sends one job.
    async fn send(&mut self, index: usize, job: &Job) -> Result<(), ClientError> {
        match job {
            Job::Mkdir(m) => self.one_frame(m, &m.path).await,
            Job::Symlink { remote, target } => {
                let req = Put {
                    path: remote.clone(),
                    kind: EntryKind::Symlink,
                    target: Some(target.clone()),
                    force: self.opts.force,
                    ..Default::default()
                };
                self.one_frame(&req, remote).await
            }
            Job::File(file) => self.file(index, file).await,
        }
    }

    /// A request answered by one `ok` (or `error`).
    async fn one_frame<M: Message>(&mut self, req: &M, label: &str) -> Result<(), ClientError> {
        self.writer.queue(req, &[])?;
        let pending = Pending::Simple {
            label: label.to_string(),
        };
        hand_to_reader(self.writer, &self.tx, pending).await
    }

    /// A file: the `put`, then (after `ready`, when resuming) its data and
    /// `end`.
    async fn file(&mut self, index: usize, job: &FileJob) -> Result<(), ClientError> {
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&job.local)
        {
            Ok(f) => f,
            Err(e) => {
                (self.fail)(local_failure(&job.local, &e));
                self.progress.skip(job.size);
                return Ok(());
            }
        };
        let req = Put {
            path: job.remote.clone(),
            kind: EntryKind::File,
            size: job.size,
            mode: Some(job.mode),
            mtime_ns: Some(job.mtime_ns),
            hash: self.opts.hash,
            force: self.opts.force,
            resume: self.opts.resume,
            target: None,
        };
        self.writer.queue(&req, &[])?;
        let Some(offset) = self.start_offset(index, job).await? else {
            // Refused while resuming: the server expects no data.
            self.progress.skip(job.size);
            return Ok(());
        };
        if offset > 0 {
            tracing::info!(path = %job.remote, offset, "resuming upload");
        }
        self.progress.skip(offset);
        let end = self.stream(index, job, file, offset).await?;
        self.writer.queue(&end, &[])?;
        Ok(())
    }

    /// Hands the reader this upload and learns where its data starts: 0,
    /// or with `--resume` the offset in the server's `ready` (`None` when
    /// the server refused instead).
    async fn start_offset(
        &mut self,
        index: usize,
        job: &FileJob,
    ) -> Result<Option<u64>, ClientError> {
        let (offset_tx, offset_rx) = if self.opts.resume {
            let (t, r) = oneshot::channel();
            (Some(t), Some(r))
        } else {
            (None, None)
        };
        let pending = Pending::Upload {
            index,
            label: job.remote.clone(),
            offset_tx,
        };
        hand_to_reader(self.writer, &self.tx, pending).await?;
        let Some(rx) = offset_rx else {
            return Ok(Some(0));
        };
        self.writer.flush().await?;
        Ok(rx.await.ok())
    }

    /// Streams the file's data from `offset`; the `end` that closes it
    /// (an abort when the server refused meanwhile or reading failed).
    async fn stream(
        &mut self,
        index: usize,
        job: &FileJob,
        file: std::fs::File,
        offset: u64,
    ) -> Result<End, ClientError> {
        let aborted = End {
            abort: true,
            ..Default::default()
        };
        let mut source = Source::spawn(file, offset, self.opts.hash);
        while let Some(chunk) = source.next().await {
            if self.abort.load(Ordering::SeqCst) == index + 1 {
                return Ok(aborted);
            }
            crate::transfer::fault::maybe_delay().await;
            self.progress.add(chunk.len() as u64);
            self.writer.write_shared(&Data {}, chunk).await?;
        }
        match source.finish().await {
            Ok(d) => Ok(End {
                size: d.size,
                digest: d.digest,
                abort: false,
            }),
            Err(e) => {
                (self.fail)(local_failure(&job.local, &e));
                Ok(aborted)
            }
        }
    }
}

/// A local file that could not be read.
pub(super) fn local_failure(path: &Path, e: &std::io::Error) -> Failure {
    Failure {
        code: ErrorCode::Internal,
        message: format!("{}: {e}", path.display()),
    }
}
