//! The receiving role: describes the destination tree, answers signature
//! requests, and applies the sender's changes (see [`super::apply`]).
//! Deletes asked for by `--delete` wait until everything else has
//! succeeded; after any failure they are skipped and the summary says why.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use cap_std::fs::{Dir, MetadataExt};
use skiff_sync::compress::decompress;
use skiff_sync::list::ListEncoder;
use skiff_sync::params::MAX_CHUNK;
use skiff_sync::{Entry, Hash, Signature, Walker};
use skiff_wire::message::sync::{
    NoteKind, SyncData, SyncDelete, SyncEnd, SyncFailed, SyncFile, SyncFiles, SyncFinish, SyncList,
    SyncRoot, SyncSig, SyncSummary, ToReceiver,
};
use skiff_wire::{ErrorCode, ErrorMsg, MAX_BODY_LEN};
use tokio::sync::mpsc;

use super::apply::{self, Incoming, Stager, Step, Verified};
use super::atomic::{outcome, Shadow};
use super::batch::{Batch, Committed};
use super::deferred::Deferred;
use super::disk::{self, Disk, Job, Outcome, Whole, WHOLE_MAX};
use super::link::{self, Counters, Inbox, Outbox};
use super::pack;
use super::sigcache::{SigCache, Stamp, CACHE_MIN};
use super::{comparable, with_hash, Event, Events, Options, SyncError, LIST_BATCH};
use crate::session::{SessionError, SessionReader, SessionWriter};

/// Bytes per chunk record in a signature body: u32 length + BLAKE3.
pub const SIG_RECORD: usize = 36;

/// Where a receiver writes: the tree, how it stages new files, and the
/// shadow of an atomic sync. One value, because the three are chosen
/// together by whoever accepted the sync (client or server).
pub struct Destination {
    /// The directory the sync writes into (the shadow's, with `--atomic`).
    pub root: Dir,
    /// Where new files are staged before their commit.
    pub stager: Stager,
    /// The new tree of an atomic sync, exchanged with the old one at the end.
    pub shadow: Option<Shadow>,
    /// Where signatures of large files are kept between syncs
    /// ([`super::sigcache`]); `None`: every signature is cut afresh.
    pub sigcache: Option<Arc<SigCache>>,
}

/// Signatures kept for the files they were sent for, to derive the new
/// files' signatures from their recipes: as many as the sender may ask
/// for ahead.
const RECENT_SIGS: usize = 8;

/// Runs the receiving role on `dest.root` until the sender's `sync_finish` has
/// been answered with the summary, which is also returned. With a
/// `shadow` (`--atomic`), `root` is the shadow's directory: before the
/// summary the shadow is exchanged with the destination when everything
/// succeeded and something changed, and discarded otherwise; a sync that
/// stops early discards it too.
pub async fn run(
    reader: &mut SessionReader<'_>,
    writer: &mut SessionWriter<'_>,
    dest: Destination,
    opts: &Options,
    events: Events,
    counters: Arc<Counters>,
) -> Result<SyncSummary, SyncError> {
    let Destination {
        root,
        stager,
        shadow,
        sigcache,
    } = dest;
    let shadow = ShadowGuard(shadow, None);
    let batch = Batch::new(
        root.try_clone()
            .map_err(|e| SyncError::Local(e.to_string()))?,
    )
    .with_cache(sigcache.clone());
    let disk = Disk::start(
        root.try_clone()
            .map_err(|e| SyncError::Local(e.to_string()))?,
        stager.clone(),
        batch,
    )?;
    let opts = opts.clone();
    link::run_role(
        reader,
        writer,
        8,
        |m: &ToReceiver| matches!(m, ToReceiver::Finish(_) | ToReceiver::Error(_)),
        counters,
        |inbox, out| {
            Role {
                root,
                stager,
                opts,
                events,
                out,
                summary: SyncSummary::default(),
                deletes: Deferred::default(),
                disk: Some(disk),
                modified: false,
                shadow,
                sigcache,
                recent: VecDeque::new(),
            }
            .run(inbox)
        },
    )
    .await
}

struct Role {
    root: Dir,
    stager: Stager,
    opts: Options,
    events: Events,
    out: Outbox,
    summary: SyncSummary,
    /// `--delete`s, applied at the end: (path, is a directory).
    deletes: Deferred,
    /// The disk thread, which owns the commit batch ([`super::disk`]);
    /// taken only when the role is dropped.
    disk: Option<Disk>,
    /// Whether anything in the tree was changed (`--atomic` exchanges
    /// only then).
    modified: bool,
    /// The new tree of an atomic sync.
    shadow: ShadowGuard,
    sigcache: Option<Arc<SigCache>>,
    /// The signatures last sent for large files, by path (at most
    /// [`RECENT_SIGS`]).
    recent: VecDeque<(String, Arc<Signature>)>,
}

/// Discards an atomic sync's new tree when the receiver stops before its
/// end (on a blocking thread: removing it is one unlink per file), once
/// the disk thread, which may still be writing into it, has ended.
struct ShadowGuard(Option<Shadow>, Option<std::thread::JoinHandle<()>>);

impl Drop for ShadowGuard {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            let disk = self.1.take();
            let abort = move || {
                if let Some(d) = disk {
                    let _ = d.join();
                }
                s.abort()
            };
            match tokio::runtime::Handle::try_current() {
                Ok(h) => drop(h.spawn_blocking(abort)),
                Err(_) => abort(),
            }
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        // Closing the queue ends the disk thread; the shadow waits for it.
        self.shadow.1 = self.disk.take().and_then(Disk::into_thread);
    }
}

/// A list batch as JSON, made on the walker thread.
type ListBatch = Result<(SyncList, Bytes), String>;

impl Role {
    async fn run(mut self, mut inbox: Inbox<ToReceiver>) -> Result<SyncSummary, SyncError> {
        let root_meta = self.root.dir_metadata().ok();
        self.out
            .send(
                &SyncRoot {
                    mode: root_meta.as_ref().map(|m| m.mode() & 0o7777),
                    mtime_ns: root_meta.as_ref().map(|m| {
                        m.mtime()
                            .saturating_mul(1_000_000_000)
                            .saturating_add(m.mtime_nsec())
                    }),
                    files: true,
                },
                Bytes::new(),
            )
            .await?;
        let clean = matches!(self.stager, Stager::Beside) && !self.opts.dry_run;
        let mut lists = spawn_lister(&self.root, self.opts.checksum, clean)?;
        let mut file: Option<Receiving> = None;
        loop {
            let mut msg = None;
            if inbox.is_empty() {
                // Nothing to read yet: the disk thread may as well work,
                // once it has enough to do or nothing more comes soon.
                if self.disk()?.should_linger() {
                    if let Ok(m) = tokio::time::timeout(disk::LINGER, inbox.recv()).await {
                        msg = Some(m?);
                    }
                }
                if msg.is_none() {
                    self.disk()?.submit().await?;
                }
            }
            let msg = match msg {
                Some(m) => m,
                None => inbox.recv().await?,
            };
            self.outcomes().await?;
            if let Some(job) = &mut file {
                match msg {
                    ToReceiver::Copy(c) => {
                        self.summary.matched_bytes += c.size;
                        (self.events)(Event::Progress(c.size));
                        let step = Step::Copy {
                            offset: c.offset,
                            len: c.size,
                        };
                        match job {
                            Receiving::Stream(j) => j.send(Msg::Step(step)).await,
                            Receiving::Whole(w) => {
                                w.refuse("a copy step, but there is no old copy")
                            }
                        }
                    }
                    ToReceiver::Data((d, body)) => {
                        let m = self.literal(d, body);
                        match job {
                            Receiving::Stream(j) => j.send(m).await,
                            Receiving::Whole(w) => w.take(m),
                        }
                    }
                    ToReceiver::End(end) => match file.take() {
                        Some(Receiving::Stream(job)) => self.finish_file(job, end).await?,
                        Some(Receiving::Whole(w)) => {
                            self.disk()?.push(Job::Whole(w.end(end))).await?
                        }
                        None => {}
                    },
                    other => return Err(unexpected("sync_data, sync_copy or sync_end", &other)),
                }
                continue;
            }
            match msg {
                ToReceiver::More(_) => {
                    // Asked for after the last batch: an empty one.
                    let batch = match lists.recv().await {
                        Some(b) => b,
                        None => encode_batch(&mut ListEncoder::new(), true),
                    };
                    let (head, body) = batch.map_err(SyncError::Local)?;
                    self.out.send(&head, body).await?;
                }
                ToReceiver::SigReq(req) => self.send_signature(&req.path).await?,
                ToReceiver::Mkdir(m) => {
                    let mark = if m.replace { '~' } else { '+' };
                    self.change(mark, format!("{}/", m.path));
                    if !self.opts.dry_run {
                        let r = apply::mkdir(&self.root, &m.path, m.replace);
                        self.outcome(&m.path, r).await?;
                    }
                }
                ToReceiver::Symlink(m) => {
                    self.change(if m.replace { '~' } else { '+' }, m.path.clone());
                    if !self.opts.dry_run {
                        let r = apply::symlink(&self.root, &m.path, &m.target);
                        self.outcome(&m.path, r).await?;
                    }
                }
                ToReceiver::File(m) => {
                    let mark = if m.update || m.replace { '~' } else { '+' };
                    self.change(mark, m.path.clone());
                    if !self.opts.dry_run {
                        (self.events)(Event::Sending {
                            path: m.path.clone(),
                            size: m.size,
                        });
                        let basis = self.take_recent(&m.path, m.update);
                        file = Some(if !m.update && m.size <= WHOLE_MAX {
                            Receiving::Whole(Collecting::new(m))
                        } else {
                            let cache = self.sigcache.clone();
                            Receiving::Stream(FileJob::start(
                                &self.root,
                                &self.stager,
                                m,
                                basis,
                                cache,
                            ))
                        });
                    }
                }
                ToReceiver::Files((head, body)) => self.small_files(head, body).await?,
                ToReceiver::Meta(m) => {
                    if !self.opts.dry_run {
                        let job = Job::Meta {
                            path: m.path,
                            mode: m.mode,
                            mtime_ns: m.mtime_ns,
                        };
                        self.disk()?.push(job).await?;
                    }
                }
                ToReceiver::Delete(m) => self.delete(m).await?,
                ToReceiver::Note(m) => match m.what {
                    NoteKind::Conflict => {
                        let e = ErrorMsg::new(
                            ErrorCode::Exists,
                            format!(
                                "{}: a directory holding excluded entries cannot be replaced; left as it is",
                                m.path
                            ),
                        );
                        self.fail(&m.path, e).await?;
                    }
                    NoteKind::Protect => (self.events)(Event::Protected(m.path)),
                },
                ToReceiver::Finish(m) => return self.finish(m).await,
                ToReceiver::Error(e) => return Err(SessionError::Remote(e).into()),
                other @ (ToReceiver::Copy(_) | ToReceiver::Data(_) | ToReceiver::End(_)) => {
                    return Err(unexpected("a sync step", &other))
                }
            }
        }
    }

    /// Hands a `sync_files` batch to the disk thread file by file, once
    /// the batch as a whole describes its body ([`pack::unpack`]); each
    /// file is then checked and reported on its own, as a `sync_file`.
    async fn small_files(&mut self, head: SyncFiles, body: Bytes) -> Result<(), SyncError> {
        let wire = body.len() as u64;
        let files = pack::unpack(head, body)?;
        self.summary.literal_wire_bytes += wire;
        for (f, data) in files {
            self.change(if f.replace { '~' } else { '+' }, f.path.clone());
            if self.opts.dry_run {
                continue;
            }
            (self.events)(Event::Sending {
                path: f.path.clone(),
                size: f.size,
            });
            self.summary.literal_bytes += f.size;
            (self.events)(Event::Progress(f.size));
            let end = f
                .hash
                .parse::<Hash>()
                .map_err(|e| ErrorMsg::new(ErrorCode::BadFrame, format!("{}: {e}", f.path)));
            let file = SyncFile {
                path: f.path,
                size: f.size,
                mode: f.mode,
                mtime_ns: f.mtime_ns,
                update: false,
                replace: f.replace,
            };
            let whole = Whole {
                file,
                data: vec![data],
                end,
            };
            self.disk()?.push(Job::Whole(whole)).await?;
        }
        Ok(())
    }

    /// Decodes a literal step (decompressing it when the sender did).
    fn literal(&mut self, d: SyncData, body: Bytes) -> Msg {
        self.summary.literal_wire_bytes += body.len() as u64;
        let data = match d.raw {
            None => Ok(body),
            Some(raw) => decompress(&body, raw as usize, MAX_CHUNK as usize)
                .map(Bytes::from)
                .map_err(|e| e.to_string()),
        };
        match data {
            Ok(b) => {
                self.summary.literal_bytes += b.len() as u64;
                (self.events)(Event::Progress(b.len() as u64));
                Msg::Step(Step::Literal(b))
            }
            Err(e) => Msg::Bad(e),
        }
    }

    fn change(&mut self, mark: char, path: String) {
        self.summary.changed += 1;
        (self.events)(Event::Change { mark, path });
    }

    /// Reports a failed path to the sender and the user; the sync goes on.
    async fn fail(&mut self, path: &str, e: ErrorMsg) -> Result<(), SyncError> {
        self.summary.failed += 1;
        (self.events)(Event::Failed {
            path: path.to_string(),
            message: format!("{} [{}]", e.message, e.code),
        });
        self.out
            .send(
                &SyncFailed {
                    path: path.to_string(),
                    code: e.code,
                    message: e.message,
                },
                Bytes::new(),
            )
            .await
    }

    /// A change that failed no longer counts as made.
    async fn outcome(&mut self, path: &str, r: Result<(), ErrorMsg>) -> Result<(), SyncError> {
        match r {
            Ok(()) => {
                self.modified = true;
                Ok(())
            }
            Err(e) => {
                self.summary.changed = self.summary.changed.saturating_sub(1);
                self.fail(path, e).await
            }
        }
    }

    async fn delete(&mut self, m: SyncDelete) -> Result<(), SyncError> {
        skiff_sync::entry::check_path(&m.path).map_err(|e| SyncError::BadList(e.to_string()))?;
        if !m.forced && !self.opts.delete {
            return Err(SyncError::BadList(format!(
                "the sender asked to delete {:?}, but --delete was not given",
                m.path
            )));
        }
        let shown = if m.dir {
            format!("{}/", m.path)
        } else {
            m.path.clone()
        };
        (self.events)(Event::Change {
            mark: '-',
            path: shown,
        });
        if self.opts.dry_run {
            self.summary.deleted += 1;
        } else if m.forced {
            match apply::delete(&self.root, &m.path, m.dir) {
                Ok(()) => {
                    self.summary.deleted += 1;
                    self.modified = true;
                }
                Err(e) => self.fail(&m.path, e).await?,
            }
        } else {
            self.deletes
                .push(m.path, m.dir)
                .map_err(|e| SyncError::Local(format!("holding the deletes: {e}")))?;
        }
        Ok(())
    }

    async fn send_signature(&mut self, path: &str) -> Result<(), SyncError> {
        let root = self
            .root
            .try_clone()
            .map_err(|e| SyncError::Local(e.to_string()))?;
        let path = path.to_string();
        let started = Instant::now();
        let shown = path.clone();
        let cache = self.sigcache.clone();
        let sig = tokio::task::spawn_blocking(move || signature_of(&root, &path, cache.as_deref()))
            .await
            .map_err(|e| SyncError::Local(e.to_string()))?;
        tracing::debug!(path = %shown, ms = started.elapsed().as_millis() as u64, "signature");
        let sig = sig.map(Arc::new);
        if let Some(s) = sig.as_ref().filter(|s| s.size >= CACHE_MIN) {
            if self.sigcache.is_some() {
                if self.recent.len() == RECENT_SIGS {
                    self.recent.pop_front();
                }
                self.recent.push_back((shown, s.clone()));
            }
        }
        // A signature too large for one frame (a file of hundreds of GiB)
        // is not sent: the file then travels whole.
        let sig = sig.filter(|s| s.chunks.len() * SIG_RECORD <= MAX_BODY_LEN);
        let Some(sig) = sig else {
            let m = SyncSig {
                missing: true,
                ..SyncSig::default()
            };
            return self.out.send(&m, Bytes::new()).await;
        };
        let mut body = BytesMut::with_capacity(sig.chunks.len() * SIG_RECORD);
        for (len, hash) in &sig.chunks {
            body.put_u32(*len);
            body.put_slice(&hash.0);
        }
        let m = SyncSig {
            size: sig.size,
            min: sig.params.min,
            avg: sig.params.avg,
            max: sig.params.max,
            missing: false,
        };
        self.out.send(&m, body.freeze()).await
    }

    /// The signature last sent for `path`, for a changed file assembled
    /// against it.
    fn take_recent(&mut self, path: &str, update: bool) -> Option<Arc<Signature>> {
        let i = self.recent.iter().position(|(p, _)| p == path)?;
        let (_, sig) = self.recent.remove(i)?;
        update.then_some(sig)
    }

    async fn finish_file(&mut self, job: FileJob, end: SyncEnd) -> Result<(), SyncError> {
        let path = job.path.clone();
        match job.finish(end).await {
            Ok(v) => self.disk()?.push(Job::Verified(v)).await,
            Err(e) => self.file_failed(&path, e).await,
        }
    }

    fn disk(&mut self) -> Result<&mut Disk, SyncError> {
        self.disk
            .as_mut()
            .ok_or_else(|| SyncError::Local("the disk thread is gone".into()))
    }

    /// Reports what the disk thread has done so far, without waiting.
    async fn outcomes(&mut self) -> Result<(), SyncError> {
        while let Some(o) = self.disk()?.try_outcome() {
            self.outcome_of_disk(o).await?;
        }
        Ok(())
    }

    /// Counts and reports one outcome of the disk thread.
    async fn outcome_of_disk(&mut self, o: Outcome) -> Result<(), SyncError> {
        match o {
            Outcome::Failed(path, e) => self.file_failed(&path, e).await,
            Outcome::Committed(done) => self.committed(done).await,
            Outcome::Flushed => Ok(()),
        }
    }

    /// A file that was not stored no longer counts as changed.
    async fn file_failed(&mut self, path: &str, e: ErrorMsg) -> Result<(), SyncError> {
        self.summary.changed = self.summary.changed.saturating_sub(1);
        self.fail(path, e).await
    }

    /// Has the disk thread commit everything queued (see
    /// [`super::batch`]) and reports all it did until then.
    async fn flush(&mut self) -> Result<(), SyncError> {
        self.disk()?.push(Job::Flush).await?;
        loop {
            match self.disk()?.outcome().await? {
                Outcome::Flushed => return Ok(()),
                o => self.outcome_of_disk(o).await?,
            }
        }
    }

    /// Counts and reports what a commit did.
    async fn committed(&mut self, done: Committed) -> Result<(), SyncError> {
        self.summary.files_sent += done.files;
        self.modified |= done.files > 0 || done.metas_changed > 0;
        for (path, e) in done.failed_files {
            self.file_failed(&path, e).await?;
        }
        for (path, e) in done.failed_metas {
            self.fail(&path, e).await?;
        }
        Ok(())
    }

    async fn finish(mut self, m: SyncFinish) -> Result<SyncSummary, SyncError> {
        // Everything the summary counts is durable before it is sent.
        self.flush().await?;
        self.summary.checked = m.checked;
        self.summary.total_size = m.total_size;
        // What the sender could not read counts as failed too.
        self.summary.failed = self.summary.failed.saturating_add(m.source_errors);
        let skip = if m.source_errors > 0 {
            Some(format!(
                "{} source paths could not be read, so the source list is incomplete",
                m.source_errors
            ))
        } else if self.summary.failed > m.source_errors {
            Some(format!("{} entries failed", self.summary.failed))
        } else {
            None
        };
        let deletes = std::mem::take(&mut self.deletes);
        if !deletes.is_empty() {
            if let Some(reason) = skip {
                self.summary.delete_skipped = Some(reason);
            } else {
                let all = deletes
                    .into_ordered()
                    .map_err(|e| SyncError::Local(format!("reading the deletes back: {e}")))?;
                for d in all {
                    let (path, is_dir) =
                        d.map_err(|e| SyncError::Local(format!("reading the deletes back: {e}")))?;
                    match apply::delete(&self.root, &path, is_dir) {
                        Ok(()) => {
                            self.summary.deleted += 1;
                            self.modified = true;
                        }
                        Err(e) => self.fail(&path, e).await?,
                    }
                }
            }
        }
        if let Some(shadow) = self.shadow.0.take() {
            self.exchange(shadow).await?;
        }
        let summary = self.summary.clone();
        self.out.send(&summary, Bytes::new()).await?;
        Ok(summary)
    }
}

impl Role {
    /// The end of an atomic sync: the new tree replaces the old one when
    /// everything succeeded and something changed; otherwise it is
    /// discarded and the destination stays the old tree.
    async fn exchange(&mut self, shadow: Shadow) -> Result<(), SyncError> {
        let failed = self.summary.failed;
        let modified = self.modified;
        let r = tokio::task::spawn_blocking(move || {
            if failed > 0 {
                shadow.abort();
                Ok(outcome::KEPT)
            } else {
                shadow.commit(modified)
            }
        })
        .await
        .map_err(|e| SyncError::Local(e.to_string()))?;
        match r {
            Ok(o) => self.summary.atomic = Some(o.to_string()),
            Err(e) => {
                self.summary.atomic = Some(outcome::KEPT.to_string());
                let m = ErrorMsg::new(ErrorCode::Internal, e.to_string());
                self.fail("", m).await?;
            }
        }
        Ok(())
    }
}

/// The signature of the old copy at `path` (never through a symlink):
/// from the cache when it holds a valid one, otherwise cut from the file
/// and, for a large file that did not change while it was read, cached.
fn signature_of(root: &Dir, path: &str, cache: Option<&SigCache>) -> Option<Signature> {
    let (dir, name) = apply::open_parent(root, path).ok()?;
    let mut opts = cap_std::fs::OpenOptions::new();
    cap_fs_ext::OpenOptionsFollowExt::follow(opts.read(true), cap_fs_ext::FollowSymlinks::No);
    let f = dir.open_with(name, &opts).ok()?.into_std();
    let md = f.metadata().ok().filter(|m| m.is_file())?;
    let cache = cache.filter(|_| md.len() >= CACHE_MIN);
    let stamp = Stamp::of(&md);
    if let Some(sig) = cache.and_then(|c| c.get(&stamp)) {
        return Some(sig);
    }
    let sig =
        Signature::of_reader(std::io::BufReader::with_capacity(1 << 20, &f), md.len()).ok()?;
    if let Some(c) = cache {
        if f.metadata().ok().map(|m| Stamp::of(&m)) == Some(stamp) {
            c.put(&stamp, &sig);
        }
    }
    Some(sig)
}

fn unexpected(expected: &'static str, got: &ToReceiver) -> SyncError {
    SyncError::Session(SessionError::Unexpected {
        expected,
        got: got.op().to_string(),
    })
}

/// Walks the destination on its own thread, two batches ahead of the
/// sender's requests. Files a receiver has in progress are left out, and
/// with `clean` those a killed receiver left beside their destination are
/// removed; with `checksum`, file contents are hashed on all cores.
fn spawn_lister(
    root: &Dir,
    checksum: bool,
    clean: bool,
) -> Result<mpsc::Receiver<ListBatch>, SyncError> {
    let root = root
        .try_clone()
        .map_err(|e| SyncError::Local(e.to_string()))?;
    let hash_root = root
        .try_clone()
        .map_err(|e| SyncError::Local(e.to_string()))?;
    let clean_root = root
        .try_clone()
        .map_err(|e| SyncError::Local(e.to_string()))?;
    let (tx, rx) = mpsc::channel::<ListBatch>(2);
    std::thread::spawn(move || {
        let entries = Walker::unfiltered(root)
            .filter_map(Result::ok)
            .map(|w| comparable(w.entry))
            .filter(|e| {
                let temp = apply::is_temp_name(e.name());
                if temp && clean && e.kind == skiff_sync::Kind::File {
                    apply::remove_abandoned(&clean_root, &e.path);
                }
                !temp
            });
        let hashed: Box<dyn Iterator<Item = Entry>> = if checksum {
            Box::new(skiff_sync::parallel::ordered_map(entries, move |e| {
                with_hash(&hash_root, e)
            }))
        } else {
            Box::new(entries)
        };
        let mut enc = ListEncoder::new();
        for e in hashed {
            enc.push(&e);
            let full = enc.len() == LIST_BATCH || enc.is_full();
            if full && tx.blocking_send(encode_batch(&mut enc, false)).is_err() {
                return;
            }
        }
        let _ = tx.blocking_send(encode_batch(&mut enc, true));
    });
    Ok(rx)
}

/// The batch `enc` holds, as a `sync_list` frame; `enc` is empty again.
fn encode_batch(enc: &mut ListEncoder, done: bool) -> ListBatch {
    let (z, raw) = enc.finish().map_err(|e| e.to_string())?;
    let raw = u32::try_from(raw).map_err(|e| e.to_string())?;
    Ok((SyncList { done, raw }, Bytes::from(z)))
}

/// The file whose steps are arriving.
enum Receiving {
    /// Assembled as its steps arrive, on a blocking task.
    Stream(FileJob),
    /// Collected, then handed to the disk thread whole.
    Whole(Collecting),
}

/// A small new file being collected in memory (at most its announced
/// size, itself at most [`WHOLE_MAX`]) for the disk thread.
struct Collecting {
    file: SyncFile,
    data: Vec<Bytes>,
    got: u64,
    refused: Option<ErrorMsg>,
}

impl Collecting {
    fn new(file: SyncFile) -> Collecting {
        Collecting {
            file,
            data: Vec::new(),
            got: 0,
            refused: None,
        }
    }

    /// The file cannot be stored: its data is dropped, the rest of its
    /// steps ignored, and `why` reported at its end.
    fn refuse(&mut self, why: &str) {
        if self.refused.is_none() {
            self.refused = Some(disk::bad(&self.file.path, why));
        }
        self.data = Vec::new();
    }

    fn take(&mut self, m: Msg) {
        if self.refused.is_some() {
            return;
        }
        match m {
            Msg::Step(Step::Literal(b)) => {
                self.got += b.len() as u64;
                if self.got > self.file.size {
                    self.refuse("more data than announced");
                } else {
                    self.data.push(b);
                }
            }
            Msg::Step(Step::Copy { .. }) => self.refuse("a copy step, but there is no old copy"),
            Msg::Bad(e) => self.refuse(&e),
            Msg::End(_) => {}
        }
    }

    /// The whole file for the disk thread, as `end` closes it.
    fn end(self, end: SyncEnd) -> Whole {
        let path = &self.file.path;
        let end = match self.refused {
            Some(e) => Err(e),
            None if end.abort => Err(ErrorMsg::new(
                ErrorCode::Internal,
                format!("{path}: the sender could not read the file to its end"),
            )),
            None => end
                .hash
                .parse::<Hash>()
                .map_err(|e| ErrorMsg::new(ErrorCode::BadFrame, format!("{path}: {e}"))),
        };
        Whole {
            file: self.file,
            data: self.data,
            end,
        }
    }
}

/// What the assembling thread gets, in order.
enum Msg {
    Step(Step),
    /// A step that could not even be decoded (bad compressed data).
    Bad(String),
    /// The closing digest (`None`: the sender aborted).
    End(Option<Hash>),
}

/// A file being received: steps go to a blocking thread that assembles
/// it, so disk and hashing never stall the session. The channel is
/// bounded (a few chunks), so memory per file is too.
struct FileJob {
    path: String,
    steps: Option<mpsc::Sender<Msg>>,
    done: tokio::sync::oneshot::Receiver<Result<Verified, ErrorMsg>>,
}

impl FileJob {
    fn start(
        root: &Dir,
        stager: &Stager,
        m: SyncFile,
        basis: Option<Arc<Signature>>,
        cache: Option<Arc<SigCache>>,
    ) -> FileJob {
        let (tx, mut rx) = mpsc::channel::<Msg>(4);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let root = root.try_clone();
        let stager = stager.clone();
        let path = m.path.clone();
        tokio::task::spawn_blocking(move || {
            let r = (|| -> Result<Verified, ErrorMsg> {
                let root = root.map_err(|e| ErrorMsg::new(ErrorCode::Internal, e.to_string()))?;
                let mut inc = Incoming::start(&root, &stager, &path, m.update, m.size)?
                    .with_cache(basis, cache);
                while let Some(msg) = rx.blocking_recv() {
                    match msg {
                        Msg::Step(s) => inc.step(s)?,
                        Msg::Bad(e) => {
                            return Err(ErrorMsg::new(ErrorCode::BadFrame, format!("{path}: {e}")))
                        }
                        Msg::End(None) => {
                            return Err(ErrorMsg::new(
                                ErrorCode::Internal,
                                format!("{path}: the sender could not read the file to its end"),
                            ))
                        }
                        Msg::End(Some(h)) => return inc.verify(h, m.mode, m.mtime_ns),
                    }
                }
                Err(ErrorMsg::new(
                    ErrorCode::Internal,
                    format!("{path}: file data ended early"),
                ))
            })();
            let _ = done_tx.send(r);
        });
        FileJob {
            path: m.path,
            steps: Some(tx),
            done: done_rx,
        }
    }

    /// Hands a step to the assembling thread (waits while it is busy; the
    /// thread never waits for the session, so this cannot deadlock).
    async fn send(&mut self, msg: Msg) {
        if let Some(tx) = &self.steps {
            if tx.send(msg).await.is_err() {
                // The assembly already failed; its error comes at the end.
                self.steps = None;
            }
        }
    }

    async fn finish(mut self, end: SyncEnd) -> Result<Verified, ErrorMsg> {
        let hash =
            if end.abort {
                None
            } else {
                Some(end.hash.parse::<Hash>().map_err(|e| {
                    ErrorMsg::new(ErrorCode::BadFrame, format!("{}: {e}", self.path))
                })?)
            };
        self.send(Msg::End(hash)).await;
        drop(self.steps.take());
        let started = Instant::now();
        let r = self.done.await;
        tracing::debug!(path = %self.path, ms = started.elapsed().as_millis() as u64, "verified");
        r.unwrap_or_else(|_| {
            Err(ErrorMsg::new(
                ErrorCode::Internal,
                "the assembling thread ended",
            ))
        })
    }
}
