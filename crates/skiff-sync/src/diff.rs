//! The sorted merge of a source list and a destination list into the
//! actions that make the destination equal to the source.
//!
//! Both lists arrive in list order ([`crate::entry::path_cmp`]), so one
//! pass with one entry of lookahead on each side finds every difference.
//! The state kept is one frame per directory level on the current path, so
//! memory does not grow with the size of the trees.
//!
//! Order of the actions, which a receiver can follow as they come:
//! - a new directory's [`Action::Create`] comes before its contents, and
//!   its [`Action::DirDone`] after them (apply mode and mtime last, since
//!   writing inside a directory changes its mtime);
//! - [`Action::Delete`]s come in post-order (a directory after everything
//!   in it), and a directory that holds an excluded entry is not deleted;
//! - a destination directory that must become a file or symlink is
//!   emptied first (forced deletes), then [`Action::Replace`]d, or, if it
//!   holds excluded entries, reported as [`Action::Conflict`] and left as
//!   it is.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::iter::Peekable;

use crate::entry::{check_path, is_within, path_cmp, BadPath, Entry, Kind};
use crate::exclude::{RuleStack, Rules};
use crate::walk::Walked;

/// How the two lists are compared.
#[derive(Debug, Clone, Copy, Default)]
pub struct MergeOptions {
    /// Compare files by content hash (both lists carry `hash`), not by
    /// size and mtime.
    pub checksum: bool,
    /// Emit deletes for destination paths the source lacks.
    pub delete: bool,
    /// Also emit [`Action::Unchanged`] (an atomic sync rebuilds the whole
    /// tree and needs every path).
    pub emit_unchanged: bool,
}

/// One thing to do at the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The path exists only at the source.
    Create(Entry),
    /// Same kind, different content: transfer (files) or relink (symlinks).
    Update {
        /// The source's entry.
        src: Entry,
        /// The destination's entry.
        dst: Entry,
    },
    /// Same content, different mode or mtime (files).
    Meta {
        /// The source's entry.
        src: Entry,
        /// The destination's entry.
        dst: Entry,
    },
    /// Different kinds (file, directory, symlink): the destination's is
    /// removed and the source's created in its place.
    Replace {
        /// The source's entry.
        src: Entry,
        /// The destination's entry.
        dst: Entry,
    },
    /// The path is only at the destination. `forced`: it is inside a
    /// directory being replaced, so it goes whether or not deletion was
    /// asked for.
    Delete {
        /// The destination's entry.
        entry: Entry,
        /// Part of a replacement rather than of `--delete`.
        forced: bool,
    },
    /// The destination path is excluded: left alone.
    Protect(Entry),
    /// A destination directory that should become a file or symlink holds
    /// excluded entries, so it cannot be replaced without deleting them.
    Conflict {
        /// The source's entry.
        src: Entry,
        /// The destination's entry.
        dst: Entry,
    },
    /// Identical on both sides (only with `emit_unchanged`; directories
    /// come before their contents).
    Unchanged(Entry),
    /// All of a directory's contents are done: set its mode and mtime to
    /// the source's. Emitted when something inside changed or its own
    /// metadata differs (always with `emit_unchanged`). The root comes
    /// last, with path `""`.
    DirDone(Entry),
}

impl Action {
    /// The path the action is about.
    pub fn path(&self) -> &str {
        match self {
            Action::Create(e)
            | Action::Protect(e)
            | Action::Unchanged(e)
            | Action::DirDone(e)
            | Action::Delete { entry: e, .. } => &e.path,
            Action::Update { src, .. }
            | Action::Meta { src, .. }
            | Action::Replace { src, .. }
            | Action::Conflict { src, .. } => &src.path,
        }
    }

    /// Whether it changes what a directory holds (so that directory's
    /// mtime must be set again afterwards).
    fn touches_parent(&self) -> bool {
        !matches!(
            self,
            Action::Protect(_) | Action::Unchanged(_) | Action::DirDone(_) | Action::Meta { .. }
        )
    }
}

/// A list that cannot be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError<E> {
    /// The input failed (I/O, network).
    #[error(transparent)]
    Input(E),
    /// A path is not plain and relative.
    #[error("{side} list: {source}")]
    BadPath {
        /// `source` or `destination`.
        side: &'static str,
        /// What is wrong with it.
        #[source]
        source: BadPath,
    },
    /// A list is not strictly in list order.
    #[error("{side} list is not sorted: {path:?} after {prev:?}")]
    Unsorted {
        /// `source` or `destination`.
        side: &'static str,
        /// The offending path.
        path: String,
        /// The one before it.
        prev: String,
    },
}

struct DirFrame {
    src: Entry,
    changed: bool,
    meta_differs: bool,
}

struct DelFrame {
    dst: Entry,
    protected: bool,
    forced: bool,
    /// For a directory being replaced: the source entry that replaces it.
    replace_by: Option<Entry>,
}

/// Checks one side's order as entries are taken from it.
struct Ordered<I: Iterator> {
    inner: Peekable<I>,
    prev: Option<String>,
    side: &'static str,
}

impl<I, T, E> Ordered<I>
where
    I: Iterator<Item = Result<T, E>>,
{
    fn peek_path(&mut self, path_of: fn(&T) -> &str) -> Result<Option<String>, MergeError<E>> {
        match self.inner.peek() {
            None => Ok(None),
            Some(Ok(t)) => {
                let p = path_of(t);
                check_path(p).map_err(|source| MergeError::BadPath {
                    side: self.side,
                    source,
                })?;
                if let Some(prev) = &self.prev {
                    if path_cmp(prev, p) != Ordering::Less {
                        return Err(MergeError::Unsorted {
                            side: self.side,
                            path: p.to_string(),
                            prev: prev.clone(),
                        });
                    }
                }
                Ok(Some(p.to_string()))
            }
            Some(Err(_)) => match self.inner.next() {
                Some(Err(e)) => Err(MergeError::Input(e)),
                _ => Ok(None),
            },
        }
    }

    fn take(&mut self, path: String) -> Option<T> {
        self.prev = Some(path);
        self.inner.next().and_then(Result::ok)
    }
}

/// Iterator of [`Action`]s merging a source walk and a destination list.
pub struct Merge<S: Iterator, D: Iterator> {
    src: Ordered<S>,
    dst: Ordered<D>,
    opts: MergeOptions,
    rules: RuleStack,
    dirs: Vec<DirFrame>,
    dels: Vec<DelFrame>,
    skip: Option<String>,
    out: VecDeque<Action>,
    done: bool,
}

fn walked_path(w: &Walked) -> &str {
    &w.entry.path
}

fn entry_path(e: &Entry) -> &str {
    &e.path
}

impl<S, D, E> Merge<S, D>
where
    S: Iterator<Item = Result<Walked, E>>,
    D: Iterator<Item = Result<Entry, E>>,
{
    /// Merges `src` (a walk of the source, with its `.skiffignore` rules)
    /// into `dst`. `src_root` describes the source's root directory and
    /// `dst_root` the destination's (`None`: it does not exist yet);
    /// `rules` are the command-line rules plus the source root's
    /// `.skiffignore`, applied to destination paths.
    pub fn new(
        src: S,
        dst: D,
        src_root: Entry,
        dst_root: Option<&Entry>,
        rules: RuleStack,
        opts: MergeOptions,
    ) -> Merge<S, D> {
        let meta_differs = dst_root.is_none_or(|d| meta_differs(&src_root, d));
        Merge {
            src: Ordered {
                inner: src.peekable(),
                prev: None,
                side: "source",
            },
            dst: Ordered {
                inner: dst.peekable(),
                prev: None,
                side: "destination",
            },
            opts,
            rules,
            dirs: vec![DirFrame {
                src: src_root,
                changed: dst_root.is_none(),
                meta_differs,
            }],
            dels: Vec::new(),
            skip: None,
            out: VecDeque::new(),
            done: false,
        }
    }

    fn emit(&mut self, a: Action) {
        if a.touches_parent() {
            if let Some(top) = self.dirs.last_mut() {
                top.changed = true;
            }
        }
        self.out.push_back(a);
    }

    /// Closes every frame that `next` (`None`: the end) is not inside.
    fn close_frames(&mut self, next: Option<&str>) {
        let inside = |dir: &str| next.is_some_and(|p| is_within(p, dir));
        if self.skip.as_deref().is_some_and(|s| !inside(s)) {
            self.skip = None;
        }
        while self.dels.last().is_some_and(|f| !inside(&f.dst.path)) {
            let Some(f) = self.dels.pop() else { break };
            match (f.replace_by, f.protected) {
                (Some(src), false) => self.emit(Action::Replace { src, dst: f.dst }),
                (Some(src), true) => self.emit(Action::Conflict { src, dst: f.dst }),
                (None, false) => self.emit(Action::Delete {
                    entry: f.dst,
                    forced: f.forced,
                }),
                (None, true) => {}
            }
        }
        while self.dirs.last().is_some_and(|f| !inside(&f.src.path)) {
            let Some(f) = self.dirs.pop() else { break };
            if f.changed || f.meta_differs || self.opts.emit_unchanged {
                self.emit(Action::DirDone(f.src));
            }
        }
    }

    fn step(&mut self) -> Result<(), MergeError<E>> {
        let sp = self.src.peek_path(walked_path)?;
        let dp = self.dst.peek_path(entry_path)?;
        let order = match (&sp, &dp) {
            (None, None) => None,
            (Some(_), None) => Some(Ordering::Less),
            (None, Some(_)) => Some(Ordering::Greater),
            (Some(s), Some(d)) => Some(path_cmp(s, d)),
        };
        let next = match order {
            Some(Ordering::Greater) => dp.clone(),
            _ => sp.clone(),
        };
        self.close_frames(next.as_deref());
        match order {
            None => self.done = true,
            Some(Ordering::Less) => {
                if let Some(w) = sp.and_then(|p| self.src.take(p)) {
                    self.src_only(w);
                }
            }
            Some(Ordering::Greater) => {
                if let Some(e) = dp.and_then(|p| self.dst.take(p)) {
                    self.dst_only(e);
                }
            }
            Some(Ordering::Equal) => {
                let w = sp.and_then(|p| self.src.take(p));
                let d = dp.and_then(|p| self.dst.take(p));
                if let (Some(w), Some(d)) = (w, d) {
                    self.both(w, d);
                }
            }
        }
        Ok(())
    }

    fn enter_rules(&mut self, w: &Walked) {
        self.rules.leave_to(&w.entry.path);
        if let Some(r) = &w.rules {
            self.rules.enter(&w.entry.path, Rules::clone(r));
        }
    }

    fn push_dir(&mut self, src: Entry, changed: bool, meta_differs: bool) {
        self.dirs.push(DirFrame {
            src,
            changed,
            meta_differs,
        });
    }

    fn src_only(&mut self, w: Walked) {
        self.enter_rules(&w);
        let is_dir = w.entry.kind == Kind::Dir;
        self.emit(Action::Create(w.entry.clone()));
        if is_dir {
            self.push_dir(w.entry, true, true);
        }
    }

    fn dst_only(&mut self, e: Entry) {
        if self.skip.is_some() {
            return;
        }
        let is_dir = e.kind == Kind::Dir;
        self.rules.leave_to(&e.path);
        if self.rules.is_excluded(&e.path, is_dir) {
            for f in &mut self.dels {
                f.protected = true;
            }
            if is_dir {
                self.skip = Some(e.path.clone());
            }
            self.out.push_back(Action::Protect(e));
            return;
        }
        let forced = self.dels.last().map(|f| f.forced);
        if forced.is_none() && !self.opts.delete {
            if is_dir {
                self.skip = Some(e.path);
            }
            return;
        }
        let forced = forced.unwrap_or(false);
        if is_dir {
            self.dels.push(DelFrame {
                dst: e,
                protected: false,
                forced,
                replace_by: None,
            });
        } else {
            self.emit(Action::Delete { entry: e, forced });
        }
    }

    fn both(&mut self, w: Walked, d: Entry) {
        self.enter_rules(&w);
        let s = w.entry;
        match (s.kind, d.kind) {
            (Kind::File, Kind::File) => {
                if !same_content(&s, &d, self.opts.checksum) {
                    self.emit(Action::Update { src: s, dst: d });
                } else if meta_differs(&s, &d) {
                    self.emit(Action::Meta { src: s, dst: d });
                } else if self.opts.emit_unchanged {
                    self.emit(Action::Unchanged(s));
                }
            }
            (Kind::Symlink, Kind::Symlink) => {
                if s.target != d.target {
                    self.emit(Action::Update { src: s, dst: d });
                } else if self.opts.emit_unchanged {
                    self.emit(Action::Unchanged(s));
                }
            }
            (Kind::Dir, Kind::Dir) => {
                let differs = meta_differs(&s, &d);
                if self.opts.emit_unchanged {
                    self.emit(Action::Unchanged(s.clone()));
                }
                self.push_dir(s, false, differs);
            }
            (_, Kind::Dir) => self.dels.push(DelFrame {
                dst: d,
                protected: false,
                forced: true,
                replace_by: Some(s),
            }),
            (src_kind, _) => {
                self.emit(Action::Replace {
                    src: s.clone(),
                    dst: d,
                });
                if src_kind == Kind::Dir {
                    self.push_dir(s, true, true);
                }
            }
        }
    }
}

fn same_content(s: &Entry, d: &Entry, checksum: bool) -> bool {
    if s.size != d.size {
        return false;
    }
    if checksum {
        s.hash.is_some() && s.hash == d.hash
    } else {
        s.mtime_ns == d.mtime_ns
    }
}

fn meta_differs(s: &Entry, d: &Entry) -> bool {
    s.mode != d.mode || s.mtime_ns != d.mtime_ns
}

impl<S, D, E> Iterator for Merge<S, D>
where
    S: Iterator<Item = Result<Walked, E>>,
    D: Iterator<Item = Result<Entry, E>>,
{
    type Item = Result<Action, MergeError<E>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(a) = self.out.pop_front() {
                return Some(Ok(a));
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.step() {
                self.done = true;
                return Some(Err(e));
            }
            if self.done {
                self.close_frames(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;

    fn e(path: &str, kind: Kind, mtime: i64, size: u64) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: if kind == Kind::Dir { 0o755 } else { 0o644 },
            mtime_ns: mtime,
            size,
            target: (kind == Kind::Symlink).then(|| "t".into()),
            hash: None,
        }
    }
    fn f(path: &str, mtime: i64) -> Entry {
        e(path, Kind::File, mtime, 10)
    }
    fn d(path: &str) -> Entry {
        e(path, Kind::Dir, 1, 0)
    }
    fn root() -> Entry {
        d("")
    }

    fn merge_with(
        src: Vec<Entry>,
        dst: Vec<Entry>,
        rules: RuleStack,
        opts: MergeOptions,
    ) -> Vec<String> {
        let src = src
            .into_iter()
            .map(|entry| Ok::<_, ()>(Walked { entry, rules: None }));
        let dst = dst.into_iter().map(Ok::<_, ()>);
        let root_dst = root();
        Merge::new(src, dst, root(), Some(&root_dst), rules, opts)
            .map(|a| match a.unwrap() {
                Action::Create(e) => format!("+{}", e.path),
                Action::Update { src, .. } => format!("~{}", src.path),
                Action::Meta { src, .. } => format!("m{}", src.path),
                Action::Replace { src, .. } => format!("R{}", src.path),
                Action::Delete { entry, forced } => {
                    format!("{}{}", if forced { "-!" } else { "-" }, entry.path)
                }
                Action::Protect(e) => format!("P{}", e.path),
                Action::Conflict { src, .. } => format!("C{}", src.path),
                Action::Unchanged(e) => format!("={}", e.path),
                Action::DirDone(e) => format!("D{}", e.path),
            })
            .collect()
    }

    fn merge(src: Vec<Entry>, dst: Vec<Entry>, delete: bool) -> Vec<String> {
        let opts = MergeOptions {
            delete,
            ..Default::default()
        };
        merge_with(src, dst, RuleStack::new(Rules::empty()), opts)
    }

    #[test]
    fn identical_trees_need_nothing() {
        let t = vec![d("a"), f("a/1", 5), f("b", 5)];
        assert!(merge(t.clone(), t, true).is_empty());
    }

    #[test]
    fn new_changed_meta_and_deleted() {
        let src = vec![d("a"), f("a/1", 5), f("a/2", 6), f("c", 1)];
        let mut meta = f("c", 1);
        meta.mode = 0o600;
        let dst = vec![d("a"), f("a/1", 5), f("a/2", 7), f("b", 1), meta];
        assert_eq!(merge(src.clone(), dst.clone(), false), ["~a/2", "Da", "mc"]);
        assert_eq!(merge(src, dst, true), ["~a/2", "Da", "-b", "mc", "D"]);
    }

    #[test]
    fn new_directory_contents_between_create_and_done() {
        let src = vec![d("n"), d("n/m"), f("n/m/x", 1), f("z", 1)];
        let dst = vec![f("z", 1)];
        assert_eq!(
            merge(src, dst, true),
            ["+n", "+n/m", "+n/m/x", "Dn/m", "Dn", "D"]
        );
    }

    #[test]
    fn deleted_directory_is_post_order() {
        let src = vec![f("z", 1)];
        let dst = vec![d("o"), d("o/p"), f("o/p/x", 1), f("o/y", 1), f("z", 1)];
        assert_eq!(
            merge(src.clone(), dst.clone(), true),
            ["-o/p/x", "-o/p", "-o/y", "-o", "D"]
        );
        assert!(merge(src, dst, false).is_empty());
    }

    #[test]
    fn type_changes_both_ways() {
        let src = vec![f("a", 1), d("b"), f("b/x", 1), e("c", Kind::Symlink, 1, 1)];
        let dst = vec![d("a"), f("a/in", 1), f("b", 1), f("c", 1)];
        assert_eq!(
            merge(src, dst, false),
            ["-!a/in", "Ra", "Rb", "+b/x", "Db", "Rc", "D"]
        );
    }

    #[test]
    fn excluded_destination_paths_are_never_deleted_or_replaced() {
        let rules = RuleStack::new(Rules::parse("", ["*.keep", "cache/"], "t").unwrap());
        let opts = MergeOptions {
            delete: true,
            ..Default::default()
        };
        let src = vec![f("a", 1)];
        let dst = vec![
            d("a"),
            f("a/x.keep", 1),
            d("gone"),
            d("gone/cache"),
            f("gone/cache/big", 1),
            f("gone/y", 1),
            f("z.keep", 1),
        ];
        assert_eq!(
            merge_with(src, dst, rules, opts),
            ["Pa/x.keep", "Ca", "Pgone/cache", "-gone/y", "Pz.keep", "D"]
        );
    }

    #[test]
    fn checksum_mode_compares_content() {
        let opts = MergeOptions {
            checksum: true,
            ..Default::default()
        };
        let mut a = f("x", 1);
        a.hash = Some(Hash::of(b"1"));
        let mut b = f("x", 2);
        b.hash = Some(Hash::of(b"1"));
        let mut c = f("y", 1);
        c.hash = Some(Hash::of(b"1"));
        let mut dd = f("y", 1);
        dd.hash = Some(Hash::of(b"2"));
        let rules = RuleStack::new(Rules::empty());
        assert_eq!(
            merge_with(vec![a, c], vec![b, dd], rules, opts),
            ["mx", "~y", "D"]
        );
    }

    #[test]
    fn atomic_mode_lists_everything() {
        let t = vec![d("a"), f("a/1", 5), f("b", 5)];
        let opts = MergeOptions {
            emit_unchanged: true,
            ..Default::default()
        };
        let rules = RuleStack::new(Rules::empty());
        assert_eq!(
            merge_with(t.clone(), t, rules, opts),
            ["=a", "=a/1", "Da", "=b", "D"]
        );
    }

    #[test]
    fn unsorted_or_bad_peer_lists_are_errors() {
        for bad in [
            vec![f("b", 1), f("a", 1)],
            vec![f("a", 1), f("a", 1)],
            vec![f("../x", 1)],
        ] {
            let dst = bad.into_iter().map(Ok::<_, ()>);
            let src = std::iter::once(Ok(Walked {
                entry: f("a", 1),
                rules: None,
            }));
            let r: Result<Vec<_>, _> = Merge::new(
                src,
                dst,
                root(),
                None,
                RuleStack::new(Rules::empty()),
                MergeOptions::default(),
            )
            .collect();
            assert!(r.is_err());
        }
    }

    #[test]
    fn input_errors_stop_the_merge() {
        let src = vec![
            Ok(Walked {
                entry: f("a", 1),
                rules: None,
            }),
            Err("boom"),
        ];
        let dst: Vec<Result<Entry, &str>> = vec![];
        let r: Vec<_> = Merge::new(
            src.into_iter(),
            dst.into_iter(),
            root(),
            None,
            RuleStack::new(Rules::empty()),
            MergeOptions::default(),
        )
        .collect();
        assert!(matches!(r.last(), Some(Err(MergeError::Input("boom")))));
    }
}
