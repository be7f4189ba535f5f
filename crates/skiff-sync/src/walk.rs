//! A depth-first walk of a local tree that streams entries in list order
//! ([`crate::entry::path_cmp`]), applying the exclude rules.
//!
//! Every directory is opened beneath its parent without following
//! symlinks (cap-std), so a tree changed during the walk cannot lead it
//! outside the root. Memory: the names of each directory on the current
//! path (one directory's listing per level), whatever the tree's size.

use std::io;

use cap_fs_ext::DirExt;
use cap_std::fs::Dir;

use crate::entry::{Entry, Kind};
use crate::exclude::{RuleStack, Rules, IGNORE_FILE};

/// One step of a walk.
#[derive(Debug)]
pub struct Walked {
    /// What is at the path.
    pub entry: Entry,
    /// For a directory: the rules of its `.skiffignore`, if it has one.
    /// A merge against another tree needs them to know which of the other
    /// tree's paths are excluded.
    pub rules: Option<Rules>,
}

/// A path the walk could not describe. The walk goes on, but the list is
/// then incomplete, so a caller must not delete on its strength.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    /// Reading a directory or a path's metadata failed.
    #[error("{path}: {source}")]
    Io {
        /// The path, relative to the root.
        path: String,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A name that is not UTF-8 (the protocol carries UTF-8).
    #[error("{parent}/{name}: name is not UTF-8, skipped")]
    NotUtf8 {
        /// The directory holding it.
        parent: String,
        /// The name, lossily decoded.
        name: String,
    },
    /// A FIFO, socket or device: not carried.
    #[error("{0}: not a regular file, directory or symlink, skipped")]
    Special(String),
    /// A `.skiffignore` that does not parse.
    #[error(transparent)]
    Pattern(#[from] crate::exclude::BadPattern),
}

struct Level {
    dir: Dir,
    rel: String,
    names: std::vec::IntoIter<String>,
}

/// Iterator of [`Walked`] entries (see the module docs). The root itself
/// is not listed; [`Walker::root_rules`] gives its `.skiffignore`.
pub struct Walker {
    stack: Vec<Level>,
    rules: RuleStack,
    root_rules: Option<Rules>,
    pending: Vec<WalkError>,
    read_ignore_files: bool,
}

impl Walker {
    /// Walks the tree under `root`, with command-line rules `global` and
    /// the tree's `.skiffignore` files (a source).
    pub fn new(root: Dir, global: Rules) -> Walker {
        Walker::build(root, global, true)
    }

    /// Walks everything under `root`, ignoring `.skiffignore` files (a
    /// destination: the source's rules decide what is excluded there).
    pub fn unfiltered(root: Dir) -> Walker {
        Walker::build(root, Rules::empty(), false)
    }

    fn build(root: Dir, global: Rules, read_ignore_files: bool) -> Walker {
        let mut w = Walker {
            stack: Vec::new(),
            rules: RuleStack::new(global),
            root_rules: None,
            pending: Vec::new(),
            read_ignore_files,
        };
        w.root_rules = w.descend(root, String::new());
        w
    }

    /// The rules of the root's own `.skiffignore`.
    pub fn root_rules(&self) -> Option<Rules> {
        self.root_rules.clone()
    }

    /// Reads `dir`'s names and `.skiffignore`, and pushes it as a level.
    fn descend(&mut self, dir: Dir, rel: String) -> Option<Rules> {
        let mut names = Vec::new();
        match dir.entries() {
            Ok(it) => {
                for item in it {
                    match item {
                        Ok(e) => match e.file_name().into_string() {
                            Ok(n) => names.push(n),
                            Err(n) => self.pending.push(WalkError::NotUtf8 {
                                parent: rel.clone(),
                                name: n.to_string_lossy().into_owned(),
                            }),
                        },
                        Err(source) => self.pending.push(WalkError::Io {
                            path: rel.clone(),
                            source,
                        }),
                    }
                }
            }
            Err(source) => {
                self.pending.push(WalkError::Io {
                    path: rel.clone(),
                    source,
                });
                return None;
            }
        }
        names.sort_unstable();
        let rules = if self.read_ignore_files && names.iter().any(|n| n == IGNORE_FILE) {
            self.read_rules(&dir, &rel)
        } else {
            None
        };
        if let Some(r) = &rules {
            self.rules.enter(&rel, r.clone());
        }
        self.stack.push(Level {
            dir,
            rel,
            names: names.into_iter(),
        });
        rules
    }

    fn read_rules(&mut self, dir: &Dir, rel: &str) -> Option<Rules> {
        let path = join(rel, IGNORE_FILE);
        let meta = dir.symlink_metadata(IGNORE_FILE).ok()?;
        if !meta.is_file() {
            return None;
        }
        match dir.read_to_string(IGNORE_FILE) {
            Ok(text) => match Rules::parse(rel, text.lines(), &path) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.pending.push(e.into());
                    None
                }
            },
            Err(source) => {
                self.pending.push(WalkError::Io { path, source });
                None
            }
        }
    }

    fn step(&mut self) -> Option<Result<Walked, WalkError>> {
        loop {
            if let Some(e) = self.pending.pop() {
                return Some(Err(e));
            }
            let top = self.stack.last_mut()?;
            let Some(name) = top.names.next() else {
                self.stack.pop();
                continue;
            };
            let rel = join(&top.rel, &name);
            let meta = match top.dir.symlink_metadata(&name) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Some(Err(WalkError::Io { path: rel, source })),
            };
            let is_dir = meta.is_dir();
            self.rules.leave_to(&rel);
            if self.rules.is_excluded(&rel, is_dir) {
                continue;
            }
            let target = if meta.file_type().is_symlink() {
                match top.dir.read_link_contents(&name) {
                    Ok(t) => match t.into_os_string().into_string() {
                        Ok(t) => Some(t),
                        Err(_) => {
                            return Some(Err(WalkError::NotUtf8 {
                                parent: top.rel.clone(),
                                name: format!("{name} (symlink target)"),
                            }))
                        }
                    },
                    Err(source) => return Some(Err(WalkError::Io { path: rel, source })),
                }
            } else {
                None
            };
            let Some(entry) = Entry::from_metadata(rel.clone(), &meta, target) else {
                return Some(Err(WalkError::Special(rel)));
            };
            if entry.kind != Kind::Dir {
                return Some(Ok(Walked { entry, rules: None }));
            }
            let sub = match top.dir.open_dir_nofollow(&name) {
                Ok(d) => d,
                Err(source) => return Some(Err(WalkError::Io { path: rel, source })),
            };
            let rules = self.descend(sub, rel);
            return Some(Ok(Walked { entry, rules }));
        }
    }
}

impl Iterator for Walker {
    type Item = Result<Walked, WalkError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step()
    }
}

/// `dir/name`, or `name` at the root.
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::path_cmp;
    use cap_std::ambient_authority;
    use std::fs;

    fn walk(root: &std::path::Path, global: &[&str]) -> (Vec<String>, usize) {
        let dir = Dir::open_ambient_dir(root, ambient_authority()).unwrap();
        let rules = Rules::parse("", global.iter().copied(), "test").unwrap();
        let mut paths = Vec::new();
        let mut errors = 0;
        for item in Walker::new(dir, rules) {
            match item {
                Ok(w) => paths.push(w.entry.path),
                Err(_) => errors += 1,
            }
        }
        (paths, errors)
    }

    #[test]
    fn lists_in_merge_order_with_excludes() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        for d in ["a/x", "a.d", "b", "skip", "b/build"] {
            fs::create_dir_all(r.join(d)).unwrap();
        }
        for f in [
            "a/x/1",
            "a/2",
            "a.txt",
            "a-b",
            "b/k.log",
            "b/k.txt",
            "skip/f",
            "b/build/o",
        ] {
            fs::write(r.join(f), f).unwrap();
        }
        fs::write(r.join(".skiffignore"), "*.log\n/skip\n").unwrap();
        fs::write(r.join("b/.skiffignore"), "build/\n!k.log\n").unwrap();
        std::os::unix::fs::symlink("../a.txt", r.join("b/link")).unwrap();
        let (paths, errors) = walk(r, &["a-b"]);
        assert_eq!(errors, 0);
        assert_eq!(
            paths,
            [
                ".skiffignore",
                "a",
                "a/2",
                "a/x",
                "a/x/1",
                "a.d",
                "a.txt",
                "b",
                "b/.skiffignore",
                "b/k.log",
                "b/k.txt",
                "b/link"
            ]
        );
        let mut sorted = paths.clone();
        sorted.sort_by(|a, b| path_cmp(a, b));
        assert_eq!(sorted, paths);
    }

    #[test]
    fn unfiltered_walk_ignores_skiffignore() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join(".skiffignore"), "*\n").unwrap();
        fs::write(t.path().join("x"), "x").unwrap();
        let dir = Dir::open_ambient_dir(t.path(), ambient_authority()).unwrap();
        let paths: Vec<_> = Walker::unfiltered(dir)
            .map(|w| w.unwrap().entry.path)
            .collect();
        assert_eq!(paths, [".skiffignore", "x"]);
        assert_eq!(walk(t.path(), &[]).0, Vec::<String>::new());
    }

    #[test]
    fn symlinks_are_listed_not_followed_and_specials_skipped() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir(r.join("real")).unwrap();
        fs::write(r.join("real/f"), "x").unwrap();
        std::os::unix::fs::symlink("real", r.join("dirlink")).unwrap();
        nix::unistd::mkfifo(&r.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let dir = Dir::open_ambient_dir(r, ambient_authority()).unwrap();
        let items: Vec<_> = Walker::new(dir, Rules::empty()).collect();
        let ok: Vec<_> = items.iter().filter_map(|i| i.as_ref().ok()).collect();
        let paths: Vec<_> = ok.iter().map(|w| w.entry.path.as_str()).collect();
        assert_eq!(paths, ["dirlink", "real", "real/f"]);
        assert_eq!(ok[0].entry.kind, Kind::Symlink);
        assert_eq!(ok[0].entry.target.as_deref(), Some("real"));
        assert!(items
            .iter()
            .any(|i| matches!(i, Err(WalkError::Special(p)) if p == "fifo")));
    }
}
