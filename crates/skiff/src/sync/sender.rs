//! The sending role: walks the source, merges it with the receiver's list
//! as it streams in, and sends each difference: new directories and links,
//! files as recipes against the receiver's old copies, metadata, and
//! deletes. All of it runs on one blocking thread (walking, hashing,
//! chunking and reading are blocking work; hashing and chunking spread
//! over all cores inside `skiff-sync`); the session is the pump's.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, BufReader, Read};
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
    NoteKind, SyncCopy, SyncData, SyncDelete, SyncEnd, SyncFile, SyncFinish, SyncList, SyncMeta,
    SyncMkdir, SyncMore, SyncNote, SyncRoot, SyncSig, SyncSigReq, SyncSummary, SyncSymlink,
    ToSender,
};

use super::link::{self, Counters, Inbox, Outbox};
use super::receiver::SIG_RECORD;
use super::{comparable, global_rules, with_hash, Event, Events, Options, SyncError};
use crate::session::{SessionError, SessionReader, SessionWriter};
use crate::transfer::fault;
use crate::transfer::meta::MODE_MASK;

/// List batches asked for ahead of the merge.
const LIST_AHEAD: usize = 2;

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
    events: Events,
    root: Option<SyncRoot>,
    root_seen: bool,
    lists: VecDeque<(SyncList, Bytes)>,
    /// `sync_more` requests not answered yet.
    lists_asked: usize,
    sig: Option<(SyncSig, Bytes)>,
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
    fn new(inbox: Inbox<ToSender>, events: Events) -> Inbound {
        Inbound {
            inbox,
            events,
            root: None,
            root_seen: false,
            lists: VecDeque::new(),
            lists_asked: 0,
            sig: None,
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
                self.sig = Some(s);
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
    let inbound = Rc::new(RefCell::new(Inbound::new(inbox, events.clone())));
    let dst_root = inbound.borrow_mut().wait(|i| i.root.take())?;
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
        s.apply(action)?;
        inbound.borrow_mut().drain()?;
    }
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
    fn send<M: skiff_wire::Message>(&self, msg: &M) -> Result<(), SyncError> {
        self.out.send_blocking(msg, Bytes::new())
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

    fn apply(&mut self, action: Action) -> Result<(), SyncError> {
        match action {
            Action::Create(e) => {
                self.change('+', &e);
                self.create(&e, false, false)
            }
            Action::Update { src, .. } => {
                self.change('~', &src);
                self.create(&src, true, false)
            }
            Action::Replace { src, .. } => {
                self.change('~', &src);
                self.create(&src, false, true)
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

    fn meta(&self, e: &Entry) -> Result<(), SyncError> {
        if e.kind == Kind::Symlink {
            return Ok(());
        }
        self.send(&SyncMeta {
            path: e.path.clone(),
            mode: e.mode,
            mtime_ns: e.mtime_ns,
        })
    }

    fn create(&mut self, e: &Entry, update: bool, replace: bool) -> Result<(), SyncError> {
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
            Kind::File => match self.send_file(e, update, replace) {
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

    /// Asks the receiver for its old copy's chunks.
    fn signature(&self, path: &str) -> Result<Option<Signature>, SyncError> {
        self.inbound.borrow_mut().sigs_asked += 1;
        self.send(&SyncSigReq {
            path: path.to_string(),
        })?;
        let (m, mut body) = self.inbound.borrow_mut().wait(|i| i.sig.take())?;
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

    fn send_file(&mut self, e: &Entry, update: bool, replace: bool) -> Result<(), FileError> {
        let mut oo = OpenOptions::new();
        oo.read(true).follow(FollowSymlinks::No);
        let file = self
            .src
            .open_with(&e.path, &oo)
            .map_err(FileError::Source)?;
        let md = file.metadata().map_err(FileError::Source)?;
        if !md.is_file() {
            return Err(FileError::Source(io::Error::other(
                "no longer a regular file",
            )));
        }
        let size = md.len();
        let sig = if update && !self.opts.dry_run {
            self.signature(&e.path)?
        } else {
            None
        };
        self.send(&SyncFile {
            path: e.path.clone(),
            size,
            mode: md.mode() & MODE_MASK,
            mtime_ns: md
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(md.mtime_nsec()),
            update,
            replace,
        })?;
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
        let reader = BufReader::with_capacity(1 << 20, file.into_std()).take(size);
        let out = &self.out;
        let compressor = &mut self.compressor;
        let mut send_error = None;
        let mut pieces = 0u64;
        let r = make_recipe(reader, Some(size), sig.as_ref(), |piece| {
            let sent = match piece {
                Piece::Copy { offset, len } => {
                    events(Event::Progress(len));
                    out.send_blocking(&SyncCopy { offset, size: len }, Bytes::new())
                }
                Piece::Literal(d) => {
                    events(Event::Progress(d.len() as u64));
                    fault::maybe_delay_blocking();
                    let data = fault::maybe_corrupt(pieces, Bytes::copy_from_slice(d));
                    pieces += 1;
                    match compressor.as_mut().and_then(|c| c.compress(&data)) {
                        Some(z) => out.send_blocking(
                            &SyncData {
                                raw: Some(d.len() as u32),
                            },
                            Bytes::from(z),
                        ),
                        None => out.send_blocking(&SyncData { raw: None }, data),
                    }
                }
            };
            sent.map_err(|e| {
                let io = io::Error::new(io::ErrorKind::BrokenPipe, e.to_string());
                send_error = Some(e);
                io
            })
        });
        if let Some(e) = send_error {
            return Err(FileError::Sync(e));
        }
        match r {
            Ok((hash, n)) if n == size => self
                .send(&SyncEnd {
                    hash: hash.to_hex(),
                    abort: false,
                })
                .map_err(FileError::Sync),
            Ok((_, n)) => {
                self.abort()?;
                Err(FileError::Source(io::Error::other(format!(
                    "file shrank while being read ({n} of {size} bytes)"
                ))))
            }
            Err(err) => {
                self.abort()?;
                Err(FileError::Source(err))
            }
        }
    }

    fn abort(&self) -> Result<(), FileError> {
        self.send(&SyncEnd {
            hash: String::new(),
            abort: true,
        })
        .map_err(FileError::Sync)
    }
}
