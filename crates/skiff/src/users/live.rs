//! The users file while the server runs: re-read when it changes, checked
//! cheaply (one `stat`) on each new connection, as sshd reads
//! `authorized_keys`, and on demand (SIGHUP). A version with problems is
//! reported once and the last good table stays in force.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Users, UsersError};

/// What identifies one version of the file: a change of any of these means
/// it was edited or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    mode: u32,
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        let m = std::fs::metadata(path).ok()?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
            mode: m.mode(),
        })
    }
}

struct State {
    users: Arc<Users>,
    /// The version `users` came from, or that was last found bad.
    seen: Option<Stamp>,
}

/// A shared, self-refreshing users table. Clones share it.
#[derive(Clone)]
pub struct LiveUsers {
    path: Arc<PathBuf>,
    state: Arc<Mutex<State>>,
}

/// What a reload did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The file is as it was.
    Unchanged,
    /// A new table is in force.
    Loaded {
        /// Users now.
        users: usize,
        /// Names that are new.
        added: Vec<String>,
        /// Names that are gone.
        removed: Vec<String>,
    },
    /// The file is bad; the previous table stays.
    Kept {
        /// Why the file was refused.
        reason: String,
        /// Users still in force.
        users: usize,
    },
}

impl LiveUsers {
    /// Reads `path` for the first time; any problem is an error here (a
    /// server must not start with a bad users file).
    pub fn open(path: &Path) -> Result<LiveUsers, UsersError> {
        let seen = Stamp::of(path);
        let users = Users::load(path)?;
        Ok(LiveUsers {
            path: Arc::new(path.to_path_buf()),
            state: Arc::new(Mutex::new(State {
                users: Arc::new(users),
                seen,
            })),
        })
    }

    /// A fixed table that never reloads (tests, embedding).
    pub fn fixed(users: Users) -> LiveUsers {
        LiveUsers {
            path: Arc::new(PathBuf::new()),
            state: Arc::new(Mutex::new(State {
                users: Arc::new(users),
                seen: None,
            })),
        }
    }

    /// The file this table comes from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The table in force, without looking at the file.
    pub fn snapshot(&self) -> Arc<Users> {
        self.lock().users.clone()
    }

    /// The table in force after re-reading the file if it changed since it
    /// was last read (one `stat` when it did not). For each new connection.
    pub fn current(&self) -> Arc<Users> {
        if self.path.as_os_str().is_empty() {
            return self.snapshot();
        }
        let now = Stamp::of(&self.path);
        if now.is_some() && now == self.lock().seen {
            return self.snapshot();
        }
        self.log(self.reload_if(now, false));
        self.snapshot()
    }

    /// Re-reads the file even if it looks unchanged (SIGHUP).
    pub fn reload(&self) -> Reload {
        let r = self.reload_if(Stamp::of(&self.path), true);
        self.log(r.clone());
        r
    }

    fn reload_if(&self, now: Option<Stamp>, force: bool) -> Reload {
        if self.path.as_os_str().is_empty() {
            return Reload::Unchanged;
        }
        // Held while reading: concurrent connections wait for one reader
        // instead of each parsing the file.
        let mut state = self.lock();
        if !force && now.is_some() && now == state.seen {
            return Reload::Unchanged;
        }
        let seen_before = state.seen;
        state.seen = now;
        match Users::load(&self.path) {
            Ok(users) => {
                let old = state.users.names();
                let new = users.names();
                let added = new
                    .iter()
                    .filter(|n| !old.contains(n))
                    .map(|n| n.to_string())
                    .collect();
                let removed = old
                    .iter()
                    .filter(|n| !new.contains(n))
                    .map(|n| n.to_string())
                    .collect();
                let count = users.len();
                state.users = Arc::new(users);
                Reload::Loaded {
                    users: count,
                    added,
                    removed,
                }
            }
            // A file that vanished or is refused: report it once per
            // version (a missing file is retried on each connection, since
            // it has no stamp to remember).
            Err(e) if force || seen_before != now || now.is_none() => Reload::Kept {
                reason: e.to_string(),
                users: state.users.len(),
            },
            Err(_) => Reload::Unchanged,
        }
    }

    fn log(&self, r: Reload) {
        match r {
            Reload::Unchanged => {}
            Reload::Loaded {
                users,
                added,
                removed,
            } => tracing::info!(
                file = %self.path.display(),
                users,
                added = %added.join(","),
                removed = %removed.join(","),
                "users file reloaded"
            ),
            Reload::Kept { reason, users } => tracing::warn!(
                file = %self.path.display(),
                "users file not reloaded, keeping the last good set of {users} users: {reason}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{write_private_new, Key};

    fn line(name: &str) -> String {
        format!("{name} {}\n", Key::generate().to_base64())
    }

    fn rewrite(path: &Path, text: &str) {
        // A new file renamed over the old one, as editors and scripts do.
        let tmp = path.with_extension("new");
        let _ = std::fs::remove_file(&tmp);
        write_private_new(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn follows_edits_and_keeps_the_last_good_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        write_private_new(&path, &line("alice")).unwrap();
        let live = LiveUsers::open(&path).unwrap();
        assert_eq!(live.current().names(), ["alice"]);

        rewrite(&path, &format!("{}{}", line("alice"), line("bob")));
        assert_eq!(live.current().names(), ["alice", "bob"]);

        rewrite(&path, &format!("{}bob broken\n", line("alice")));
        assert_eq!(live.current().names(), ["alice", "bob"]);
        match live.reload() {
            Reload::Kept { reason, users } => {
                assert_eq!(users, 2);
                assert!(reason.contains(":2:"), "{reason}");
            }
            other => panic!("{other:?}"),
        }

        rewrite(&path, &line("bob"));
        assert_eq!(live.current().names(), ["bob"]);
        assert_eq!(
            live.reload(),
            Reload::Loaded {
                users: 1,
                added: vec![],
                removed: vec![]
            }
        );

        std::fs::remove_file(&path).unwrap();
        assert_eq!(live.current().names(), ["bob"]);
    }

    #[test]
    fn in_place_appends_are_seen() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        write_private_new(&path, &line("alice")).unwrap();
        let live = LiveUsers::open(&path).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(line("carol").as_bytes()).unwrap();
        drop(f);
        assert_eq!(live.current().names(), ["alice", "carol"]);
    }
}
