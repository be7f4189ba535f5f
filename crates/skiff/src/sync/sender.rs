//! The sending role: walks the source, merges it with the receiver's list
//! as it streams in, and sends each difference: new directories and links,
//! files as recipes against the receiver's old copies, metadata, and
//! deletes. All of it runs on one blocking thread (walking, hashing,
//! chunking and reading are blocking work; hashing and chunking spread
//! over all cores inside `skiff-sync`); the session is the pump's.
//!
//! Changed files do not cost a round trip each: the differences wait in a
//! short queue ([`QUEUE_CAP`]) in merge order, the signature of every
//! changed file in it is asked for as it enters ([`SIGS_AHEAD`] at most in
//! flight). A file at the head waits for its signature; its recipe then
//! follows the old copy's chunks where they are unchanged, hashing them on
//! all cores, and cuts only around the edits (`skiff_sync::make_recipe`).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
use cap_std::fs::{Dir, MetadataExt, OpenOptions};
use skiff_sync::compress::{Compressor, DEFAULT_LEVEL};
use skiff_sync::{
    make_recipe, Action, ChunkParams, Entry, Hash, Kind, Merge, MergeOptions, Piece, RuleStack,
    Signature, Walked, Walker,
};
use skiff_wire::message::sync::{
    NoteKind, SyncBatchFile, SyncCopy, SyncData, SyncDelete, SyncEnd, SyncFile, SyncFinish,
    SyncList, SyncMeta, SyncMkdir, SyncMore, SyncNote, SyncRoot, SyncSig, SyncSigReq, SyncSummary,
    SyncSymlink, ToSender,
};

use super::link::{self, Counters, Inbox, Outbox};
use super::pack::Pack;
use super::receiver::SIG_RECORD;
use super::{comparable, global_rules, with_hash, Event, Events, Options, SyncError};
use crate::session::{SessionError, SessionReader, SessionWriter};
use crate::transfer::fault;
use crate::transfer::meta::MODE_MASK;

/// List batches asked for ahead of the merge.
const LIST_AHEAD: usize = 2;

/// Signature requests in flight ahead of the file being sent. Each answer
/// is one frame (an honest one is 36 bytes per chunk, about 150 KB for a
/// 1 GiB file), so this bounds what waits for the sender too.
const SIGS_AHEAD: usize = 8;

/// A file at most this large is handed to the session writer whole (its
/// announcement, data and end), with the small files around it
/// ([`Outbox::cork_blocking`]), so a tree of small files costs one
/// wake-up and one flush per few dozen files rather than one per frame.
const CORK_MAX: u64 = 64 * 1024;

/// Differences held back behind a changed file whose signature is on its
/// way (they must reach the receiver in merge order).
const QUEUE_CAP: usize = 64;

/// Runs the sending role from the tree `src` until the receiver's summary
/// arrives, and returns it.
pub async fn run(
    reader: &mut SessionReader<'_>,
    writer: &mut SessionWriter<'_>,
    src: Dir,
    opts: &Options,
    events: Events,
    counters: Arc<Counters>,
) -> Result<SyncSummary, SyncError> {
    let opts = opts.clone();
    link::run_role(
        reader,
        writer,
        64,
        |m: &ToSender| matches!(m, ToSender::Summary(_) | ToSender::Error(_)),
        counters,
        |inbox, out| async move {
            tokio::task::spawn_blocking(move || send_tree(src, &opts, inbox, out, events))
                .await
                .map_err(|e| SyncError::Local(e.to_string()))
                .and_then(|r| r)
        },
    )
    .await
}

/// Messages from the receiver, sorted into what the sender waits for.
/// Only answers to what was asked are accepted (a list batch per
/// `sync_more`, a signature per `sync_sig_req`, one root, the summary
/// after `sync_finish`), so a receiver cannot make the sender hold more
/// than it asked for.
struct Inbound {
    inbox: Inbox<ToSender>,
    /// Flushed before every wait for the receiver (frames held back by
    /// [`Outbox::cork_blocking`] may be what it needs to answer).
    out: Outbox,
    events: Events,
    root: Option<SyncRoot>,
    root_seen: bool,
    lists: VecDeque<(SyncList, Bytes)>,
    /// `sync_more` requests not answered yet.
    lists_asked: usize,
    /// Signatures in the order asked for.
    sigs: VecDeque<(SyncSig, Bytes)>,
    /// `sync_sig_req` requests not answered yet.
    sigs_asked: usize,
    /// `sync_finish` was sent: the summary may come.
    finished: bool,
    summary: Option<SyncSummary>,
}

/// An answer the sender did not ask for: the receiver is broken or hostile.
fn unasked(what: &str) -> SyncError {
    SyncError::BadList(format!("the receiver sent {what} that was not asked for"))
}

impl Inbound {
    fn new(inbox: Inbox<ToSender>, out: Outbox, events: Events) -> Inbound {
        Inbound {
            inbox,
            out,
            events,
            root: None,
            root_seen: false,
            lists: VecDeque::new(),
            lists_asked: 0,
            sigs: VecDeque::new(),
            sigs_asked: 0,
            finished: false,
            summary: None,
        }
    }

    /// Files one message; a receiver's `error` ends the sync.
    fn file(&mut self, m: ToSender) -> Result<(), SyncError> {
        match m {
            ToSender::Root(_) if self.root_seen => return Err(unasked("a second sync_root")),
            ToSender::Root(r) => {
                self.root_seen = true;
                self.root = Some(r);
            }
            ToSender::List(_) if self.lists_asked == 0 => return Err(unasked("a list batch")),
            ToSender::List(l) => {
                self.lists_asked -= 1;
                self.lists.push_back(l);
            }
            ToSender::Sig(_) if self.sigs_asked == 0 => return Err(unasked("a signature")),
            ToSender::Sig(s) => {
                self.sigs_asked -= 1;
                self.sigs.push_back(s);
            }
            ToSender::Summary(_) if !self.finished => {
                return Err(unasked("a summary before the end of the sync"))
            }
            ToSender::Summary(s) => self.summary = Some(s),
            ToSender::Failed(f) => (self.events)(Event::Failed {
                path: f.path,
                message: format!("{} [{}]", f.message, f.code),
            }),
            ToSender::Error(e) => return Err(SessionError::Remote(e).into()),
        }
        Ok(())
    }

    /// Waits until `take` finds what it wants, filing everything else.
    fn wait<T>(&mut self, take: impl Fn(&mut Self) -> Option<T>) -> Result<T, SyncError> {
        loop {
            if let Some(t) = take(self) {
                return Ok(t);
            }
            self.out.flush_blocking()?;
            let m = self.inbox.recv_blocking()?;
            self.file(m)?;
        }
    }

    /// Files what has already arrived (failure notices), without waiting.
    fn drain(&mut self) -> Result<(), SyncError> {
        while let Some(m) = self.inbox.try_recv() {
            self.file(m)?;
        }
        Ok(())
    }
}

/// The receiver's list, as an iterator that asks for batches ahead.
struct DstList {
    inbound: Rc<RefCell<Inbound>>,
    out: Outbox,
    buf: VecDeque<Entry>,
    outstanding: usize,
    done: bool,
}

impl DstList {
    fn fill(&mut self) -> Result<(), SyncError> {
        while self.buf.is_empty() && !(self.done && self.outstanding == 0) {
            while !self.done && self.outstanding < LIST_AHEAD {
                self.inbound.borrow_mut().lists_asked += 1;
                self.out.send_blocking(&SyncMore {}, Bytes::new())?;
                self.outstanding += 1;
            }
            let (head, body) = self.inbound.borrow_mut().wait(|i| i.lists.pop_front())?;
            self.outstanding = self.outstanding.saturating_sub(1);
            if !self.done {
                let batch = skiff_sync::list::decode_batch(&body, head.raw as usize)
                    .map_err(|e| SyncError::BadList(format!("destination list: {e}")))?;
                self.buf.extend(batch);
            }
            self.done |= head.done;
        }
        Ok(())
    }
}

impl Iterator for DstList {
    type Item = Result<Entry, SyncError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Err(e) = self.fill() {
            self.done = true;
            self.outstanding = 0;
            return Some(Err(e));
        }
        self.buf.pop_front().map(Ok)
    }
}

fn root_entry(dir: &Dir) -> Result<Entry, SyncError> {
    let md = dir
        .dir_metadata()
        .map_err(|e| SyncError::Local(format!("source: {e}")))?;
    Entry::from_metadata(String::new(), &md, None)
        .map(comparable)
        .ok_or_else(|| SyncError::Local("source is not a directory".into()))
}

/// What the walk of the source saw, for the summary.
#[derive(Default)]
struct Tally {
    checked: u64,
    total_size: u64,
    source_errors: u64,
}

/// The whole sending side (on a blocking thread).
fn send_tree(
    src: Dir,
    opts: &Options,
    inbox: Inbox<ToSender>,
    out: Outbox,
    events: Events,
) -> Result<SyncSummary, SyncError> {
    let global = global_rules(&opts.excludes).map_err(SyncError::BadList)?;
    let src_root = root_entry(&src)?;
    let inbound = Rc::new(RefCell::new(Inbound::new(
        inbox,
        out.clone(),
        events.clone(),
    )));
    let dst_root = inbound.borrow_mut().wait(|i| i.root.take())?;
    let packs = dst_root.files;
    let dst_root = match (dst_root.mode, dst_root.mtime_ns) {
        (Some(mode), Some(mtime_ns)) => Some(Entry {
            mode: mode & MODE_MASK,
            mtime_ns,
            ..src_root.clone()
        }),
        _ => None,
    };
    let walk_root = src
        .try_clone()
        .map_err(|e| SyncError::Local(e.to_string()))?;
    let walker = Walker::new(walk_root, global.clone());
    let mut rules = RuleStack::new(global);
    if let Some(r) = walker.root_rules() {
        rules.enter("", r);
    }
    let tally = Rc::new(RefCell::new(Tally::default()));
    let t = tally.clone();
    let ev = events.clone();
    let walked = walker.filter_map(move |r| match r {
        Ok(mut w) => {
            w.entry = comparable(w.entry);
            let mut t = t.borrow_mut();
            t.checked += 1;
            if w.entry.kind == Kind::File {
                t.total_size += w.entry.size;
            }
            if t.checked % 256 == 0 {
                ev(Event::Checked(t.checked));
            }
            Some(w)
        }
        Err(e) => {
            t.borrow_mut().source_errors += 1;
            ev(Event::Failed {
                path: String::new(),
                message: e.to_string(),
            });
            None
        }
    });
    let src_iter: Box<dyn Iterator<Item = Result<Walked, SyncError>>> = if opts.checksum {
        let hash_root = src
            .try_clone()
            .map_err(|e| SyncError::Local(e.to_string()))?;
        Box::new(
            skiff_sync::parallel::ordered_map(walked, move |w: Walked| Walked {
                entry: with_hash(&hash_root, w.entry),
                rules: w.rules,
            })
            .map(Ok),
        )
    } else {
        Box::new(walked.map(Ok))
    };
    let dst = DstList {
        inbound: inbound.clone(),
        out: out.clone(),
        buf: VecDeque::new(),
        outstanding: 0,
        done: false,
    };
    let merge_opts = MergeOptions {
        checksum: opts.checksum,
        delete: opts.delete,
        emit_unchanged: false,
    };
    let mut s = Sender {
        src,
        opts,
        out: out.clone(),
        inbound: inbound.clone(),
        compressor: None,
        tally: tally.clone(),
        queue: VecDeque::new(),
        asked: 0,
        pack: Pack::default(),
        packs,
    };
    for action in Merge::new(
        src_iter,
        dst,
        src_root,
        dst_root.as_ref(),
        rules,
        merge_opts,
    ) {
        let action = action.map_err(|e| match e {
            skiff_sync::MergeError::Input(e) => e,
            e => SyncError::BadList(e.to_string()),
        })?;
        s.enqueue(action)?;
        s.run_queue(false)?;
        inbound.borrow_mut().drain()?;
    }
    s.run_queue(true)?;
    s.send_pack()?;
    drop(s);
    events(Event::Checked(tally.borrow().checked));
    let finish = {
        let t = tally.borrow();
        SyncFinish {
            checked: t.checked,
            total_size: t.total_size,
            source_errors: t.source_errors,
        }
    };
    inbound.borrow_mut().finished = true;
    out.send_blocking(&finish, Bytes::new())?;
    drop(out);
    let summary = inbound.borrow_mut().wait(|i| i.summary.take())?;
    Ok(summary)
}

struct Sender<'a> {
    src: Dir,
    opts: &'a Options,
    out: Outbox,
    inbound: Rc<RefCell<Inbound>>,
    compressor: Option<Compressor>,
    tally: Rc<RefCell<Tally>>,
    /// Differences not sent yet, in merge order.
    queue: VecDeque<Queued>,
    /// Signatures asked for and not yet used by a file.
    asked: usize,
    /// Small new files waiting to go in one `sync_files` frame
    /// ([`super::pack`]); sent before any other change, so the receiver
    /// sees every change in merge order.
    pack: Pack,
    /// The receiver takes `sync_files` (it said so in its `sync_root`).
    packs: bool,
}

/// A difference waiting its turn.
struct Queued {
    action: Action,
    sig: Ask,
}

/// Where a queued file stands with its signature.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// Not a changed file (or a dry run): no signature.
    No,
    /// To be asked for once fewer than [`SIGS_AHEAD`] are in flight.
    Later,
    /// Asked for; the answer is the oldest one not yet used.
    Asked,
}

/// Why one file could not be sent.
enum FileError {
    /// The sync cannot go on.
    Sync(SyncError),
    /// This file cannot be read; the others go on.
    Source(io::Error),
}

impl From<SyncError> for FileError {
    fn from(e: SyncError) -> Self {
        FileError::Sync(e)
    }
}

impl Sender<'_> {
    /// Sends a change, after the small files gathered before it.
    fn send<M: skiff_wire::Message>(&mut self, msg: &M) -> Result<(), SyncError> {
        self.send_pack()?;
        self.out.send_blocking(msg, Bytes::new())
    }

    /// Hands the gathered small files over as one `sync_files` frame
    /// (held back with the small frames around it, [`Outbox::cork_blocking`]).
    fn send_pack(&mut self) -> Result<(), SyncError> {
        if self.pack.is_empty() {
            return Ok(());
        }
        if self.opts.compress && self.compressor.is_none() {
            self.compressor = Compressor::new(DEFAULT_LEVEL).ok();
        }
        match self.pack.take(self.compressor.as_mut())? {
            Some((frame, _)) => self.out.cork_blocking(vec![frame]),
            None => Ok(()),
        }
    }

    /// Tells the user (`-i`, `-n`) about a change as it is sent.
    fn change(&self, mark: char, e: &Entry) {
        let path = if e.kind == Kind::Dir {
            format!("{}/", e.path)
        } else {
            e.path.clone()
        };
        (self.inbound.borrow().events)(Event::Change { mark, path });
    }

    /// Queues a difference; a changed file's signature is asked for now
    /// when few enough are in flight.
    fn enqueue(&mut self, action: Action) -> Result<(), SyncError> {
        let changed_file = matches!(&action, Action::Update { src, .. } if src.kind == Kind::File);
        let sig = if changed_file && !self.opts.dry_run {
            Ask::Later
        } else {
            Ask::No
        };
        self.queue.push_back(Queued { action, sig });
        self.ask_ahead()
    }

    /// Asks for the signatures of queued files, in order, up to
    /// [`SIGS_AHEAD`] in flight.
    fn ask_ahead(&mut self) -> Result<(), SyncError> {
        let mut queue = std::mem::take(&mut self.queue);
        let r = queue
            .iter_mut()
            .filter(|q| q.sig == Ask::Later)
            .take(SIGS_AHEAD.saturating_sub(self.asked))
            .try_for_each(|q| self.ask(q));
        self.queue = queue;
        r
    }

    /// Sends the signature request of a queued changed file.
    fn ask(&mut self, q: &mut Queued) -> Result<(), SyncError> {
        if let Action::Update { src, .. } = &q.action {
            self.inbound.borrow_mut().sigs_asked += 1;
            // Not a change: it may pass the small files gathered before
            // it (as it passes the queued differences ahead of it).
            self.out.send_blocking(
                &SyncSigReq {
                    path: src.path.clone(),
                },
                Bytes::new(),
            )?;
            q.sig = Ask::Asked;
            self.asked += 1;
        }
        Ok(())
    }

    /// Sends queued differences in order. The head waits for its
    /// signature only when nothing else can be done: at the end (`all`),
    /// with a full queue, or with every signature slot taken; then it is
    /// cut and hashed while the signature comes.
    fn run_queue(&mut self, all: bool) -> Result<(), SyncError> {
        while let Some(head) = self.queue.front() {
            let ready = head.sig != Ask::Asked || !self.inbound.borrow().sigs.is_empty();
            let look_ahead = !all && self.queue.len() < QUEUE_CAP && self.asked < SIGS_AHEAD;
            if !ready && look_ahead {
                break;
            }
            let Some(mut q) = self.queue.pop_front() else {
                break;
            };
            if q.sig == Ask::Later {
                // Nothing ahead of it is in flight any more.
                self.ask(&mut q)?;
            }
            self.apply(q.action, q.sig == Ask::Asked)?;
            self.ask_ahead()?;
        }
        Ok(())
    }

    fn apply(&mut self, action: Action, asked: bool) -> Result<(), SyncError> {
        match action {
            Action::Create(e) => {
                self.change('+', &e);
                self.create(&e, false, false, None)
            }
            Action::Update { src, dst } => {
                self.change('~', &src);
                let old = asked.then_some(dst.size);
                self.create(&src, true, false, old)
            }
            Action::Replace { src, .. } => {
                self.change('~', &src);
                self.create(&src, false, true, None)
            }
            Action::Meta { src, .. } => {
                self.change('.', &src);
                self.meta(&src)
            }
            Action::DirDone(src) => self.meta(&src),
            Action::Unchanged(_) => Ok(()),
            Action::Delete { entry, forced } => {
                self.change('-', &entry);
                self.send(&SyncDelete {
                    dir: entry.kind == Kind::Dir,
                    path: entry.path,
                    forced,
                })
            }
            Action::Protect(e) => self.send(&SyncNote {
                path: e.path,
                what: NoteKind::Protect,
            }),
            Action::Conflict { src, .. } => self.send(&SyncNote {
                path: src.path,
                what: NoteKind::Conflict,
            }),
        }
    }

    fn meta(&mut self, e: &Entry) -> Result<(), SyncError> {
        if e.kind == Kind::Symlink {
            return Ok(());
        }
        self.send(&SyncMeta {
            path: e.path.clone(),
            mode: e.mode,
            mtime_ns: e.mtime_ns,
        })
    }

    /// Sends one new or changed entry; `old` is the size of the old copy
    /// (from the destination list) when its signature was asked for.
    fn create(
        &mut self,
        e: &Entry,
        update: bool,
        replace: bool,
        old: Option<u64>,
    ) -> Result<(), SyncError> {
        match e.kind {
            Kind::Dir => self.send(&SyncMkdir {
                path: e.path.clone(),
                mode: e.mode,
                replace,
            }),
            Kind::Symlink => self.send(&SyncSymlink {
                path: e.path.clone(),
                target: e.target.clone().unwrap_or_default(),
                replace: update || replace,
            }),
            Kind::File => match self.send_file(e, update, replace, old) {
                Ok(()) => Ok(()),
                Err(FileError::Sync(err)) => Err(err),
                Err(FileError::Source(err)) => {
                    self.tally.borrow_mut().source_errors += 1;
                    (self.inbound.borrow().events)(Event::Failed {
                        path: e.path.clone(),
                        message: format!("{}: cannot read: {err}", e.path),
                    });
                    Ok(())
                }
            },
        }
    }

    /// The signature asked for first and not used yet (waiting for it).
    fn signature(&mut self) -> Result<Option<Signature>, SyncError> {
        let (m, mut body) = self.inbound.borrow_mut().wait(|i| i.sigs.pop_front())?;
        self.asked = self.asked.saturating_sub(1);
        if m.missing {
            return Ok(None);
        }
        let params = ChunkParams {
            min: m.min,
            avg: m.avg,
            max: m.max,
        }
        .validate()
        .map_err(|e| SyncError::BadList(e.to_string()))?;
        if body.len() % SIG_RECORD != 0 {
            return Err(SyncError::BadList(
                "signature body is not made of 36-byte records".into(),
            ));
        }
        let mut chunks = Vec::with_capacity(body.len() / SIG_RECORD);
        while body.has_remaining() {
            let len = body.get_u32();
            let mut h = [0u8; 32];
            body.copy_to_slice(&mut h);
            chunks.push((len, Hash(h)));
        }
        Ok(Some(Signature {
            params,
            size: m.size,
            chunks,
        }))
    }

    /// Opens a source file without following a final symlink.
    fn open_source(&self, path: &str) -> io::Result<(std::fs::File, cap_std::fs::Metadata)> {
        let mut oo = OpenOptions::new();
        oo.read(true).follow(FollowSymlinks::No);
        let file = self.src.open_with(path, &oo)?;
        let md = file.metadata()?;
        if !md.is_file() {
            return Err(io::Error::other("no longer a regular file"));
        }
        Ok((file.into_std(), md))
    }

    /// Adds a small file with no old copy to the pack, read whole and
    /// hashed; `false` when it could not be read to its announced size
    /// (it then goes the usual way, which reports why).
    fn pack_file(&mut self, head: &SyncFile, file: &std::fs::File) -> Result<bool, SyncError> {
        if !self.pack.has_room(&head.path, head.size) {
            self.send_pack()?;
        }
        let at = self.pack.len();
        let body = self.pack.body();
        // Sizes in a pack are at most `SyncFiles::MAX_FILE`.
        body.reserve(head.size as usize);
        let read = file.take(head.size).read_to_end(body);
        if !matches!(read, Ok(n) if n as u64 == head.size) {
            self.pack.truncate(at);
            return Ok(false);
        }
        let hash = Hash::of(&self.pack.body()[at..]).to_hex();
        if cfg!(debug_assertions) {
            // The test hook corrupts a file's first piece after hashing.
            fault::maybe_delay_blocking();
            let data = &mut self.pack.body()[at..];
            let bad = fault::maybe_corrupt(0, Bytes::copy_from_slice(data));
            data.copy_from_slice(&bad);
        }
        let events = self.inbound.borrow().events.clone();
        events(Event::Sending {
            path: head.path.clone(),
            size: head.size,
        });
        events(Event::Progress(head.size));
        self.pack.add(SyncBatchFile {
            path: head.path.clone(),
            size: head.size,
            mode: head.mode,
            mtime_ns: head.mtime_ns,
            hash,
            replace: head.replace,
        });
        if self.pack.is_full() {
            self.send_pack()?;
        }
        Ok(true)
    }

    /// Sends one file; `old` is the old copy's size when its signature
    /// was asked for, which is then always taken (even when the file
    /// cannot be read), so the answers stay matched to their files.
    fn send_file(
        &mut self,
        e: &Entry,
        update: bool,
        replace: bool,
        old: Option<u64>,
    ) -> Result<(), FileError> {
        let opened = self.open_source(&e.path);
        let started = std::time::Instant::now();
        let sig = match old {
            Some(_) => self.signature()?,
            None => None,
        };
        let sig_ms = started.elapsed().as_millis() as u64;
        let (file, md) = opened.map_err(FileError::Source)?;
        let size = md.len();
        let head = SyncFile {
            path: e.path.clone(),
            size,
            mode: md.mode() & MODE_MASK,
            mtime_ns: md
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(md.mtime_nsec()),
            update,
            replace,
        };
        let packed = self.packs && !update && !self.opts.dry_run && Pack::takes(size);
        if packed && self.pack_file(&head, &file)? {
            return Ok(());
        }
        // Everything gathered before goes first.
        self.send_pack()?;
        // A small file's frames go in one hand-over at its end.
        let mut corked = (size <= CORK_MAX && !self.opts.dry_run).then(Vec::new);
        match &mut corked {
            Some(v) => v.push(link::frame(&head, Bytes::new())?),
            None => self.send(&head)?,
        }
        if self.opts.dry_run {
            return Ok(());
        }
        let events = self.inbound.borrow().events.clone();
        events(Event::Sending {
            path: e.path.clone(),
            size,
        });
        if self.opts.compress && self.compressor.is_none() {
            self.compressor = Compressor::new(DEFAULT_LEVEL).ok();
        }
        let out = &self.out;
        let compressor = &mut self.compressor;
        let mut send_error = None;
        let mut pieces = 0u64;
        let corked_frames = &mut corked;
        let mut put = move |m: Result<skiff_wire::Frame, SyncError>| -> Result<(), SyncError> {
            let f = m?;
            match corked_frames {
                Some(v) => {
                    v.push(f);
                    Ok(())
                }
                None => out.send_all_blocking(vec![f]),
            }
        };
        let mut emit = |piece: Piece<'_>| {
            let sent = match piece {
                Piece::Copy { offset, len } => {
                    events(Event::Progress(len));
                    put(link::frame(&SyncCopy { offset, size: len }, Bytes::new()))
                }
                Piece::Literal(d) => {
                    events(Event::Progress(d.len() as u64));
                    fault::maybe_delay_blocking();
                    let data = fault::maybe_corrupt(pieces, Bytes::copy_from_slice(d));
                    pieces += 1;
                    match compressor.as_mut().and_then(|c| c.compress(&data)) {
                        Some(z) => put(link::frame(
                            &SyncData {
                                raw: Some(d.len() as u32),
                            },
                            Bytes::from(z),
                        )),
                        None => put(link::frame(&SyncData { raw: None }, data)),
                    }
                }
            };
            sent.map_err(|e| {
                let io = io::Error::new(io::ErrorKind::BrokenPipe, e.to_string());
                send_error = Some(e);
                io
            })
        };
        let r = (&file).seek(SeekFrom::Start(0)).and_then(|_| {
            let reader = BufReader::with_capacity(1 << 20, &file).take(size);
            make_recipe(reader, Some(size), sig.as_ref(), &mut emit)
        });
        tracing::debug!(
            path = %e.path,
            sig_ms,
            recipe_ms = started.elapsed().as_millis() as u64,
            "sent"
        );
        if let Some(e) = send_error {
            return Err(FileError::Sync(e));
        }
        let closing = match &r {
            Ok((hash, n)) if *n == size => SyncEnd {
                hash: hash.to_hex(),
                abort: false,
            },
            _ => SyncEnd {
                hash: String::new(),
                abort: true,
            },
        };
        match corked {
            Some(mut v) => {
                v.push(link::frame(&closing, Bytes::new())?);
                self.out.cork_blocking(v)?;
            }
            None => self.send(&closing)?,
        }
        match r {
            Ok((_, n)) if n == size => Ok(()),
            Ok((_, n)) => Err(FileError::Source(io::Error::other(format!(
                "file shrank while being read ({n} of {size} bytes)"
            )))),
            Err(err) => Err(FileError::Source(err)),
        }
    }
}
