//! The server's users file: who may log in, with which key, under which
//! `policy::Policy`.
//!
//! One user per line: `NAME BASE64KEY [OPTION]...`; options are separated
//! by spaces or commas, and a value holding spaces is written in double
//! quotes (`exec-allow="git pull *"`). `#` starts a comment outside
//! quotes. The file must not be accessible by group or others. Every
//! problem (a malformed line, an unknown option, a name given twice) is
//! reported with its file and line, and a file with any problem is refused
//! as a whole: half a users file is never used. [`live::LiveUsers`] keeps
//! the table current while the server runs.

pub mod live;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use crate::keys::{self, Key, KeyError, UserKey};
use crate::policy::Policy;

/// One user's key and policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    /// The shared secret.
    pub key: Key,
    /// What the user may do.
    pub policy: Arc<Policy>,
}

/// The table of users, as read from one version of the users file.
#[derive(Debug, Default, Clone)]
pub struct Users {
    entries: HashMap<String, UserEntry>,
}

/// One problem in a users file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.reason)
    }
}

/// Why a users file cannot be used.
#[derive(Debug, Error)]
pub enum UsersError {
    /// Unreadable, or too open.
    #[error(transparent)]
    File(#[from] KeyError),
    /// One or more lines are wrong (all of them are listed).
    #[error("{}", list(.0))]
    Lines(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    let v: Vec<String> = problems.iter().map(Problem::to_string).collect();
    v.join("\n")
}

impl Users {
    /// Reads and checks a users file.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        keys::check_private(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Users::parse(path, &text)
    }

    /// Parses the text of a users file (`path` names it in problems).
    pub fn parse(path: &Path, text: &str) -> Result<Users, UsersError> {
        let mut entries: HashMap<String, UserEntry> = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let mut problems = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let problem = |reason: String| Problem {
                path: path.to_path_buf(),
                line,
                reason,
            };
            let (name, entry) = match parse_line(raw) {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(reason) => {
                    problems.push(problem(reason));
                    continue;
                }
            };
            if let Some(first) = first_line.get(&name) {
                problems.push(problem(format!(
                    "user {name} is already defined on line {first}; each user may appear once"
                )));
                continue;
            }
            first_line.insert(name.clone(), line);
            entries.insert(name, entry);
        }
        if problems.is_empty() {
            Ok(Users { entries })
        } else {
            Err(UsersError::Lines(problems))
        }
    }

    /// A table of unrestricted users (tests, embedding).
    pub fn from_keys(list: impl IntoIterator<Item = UserKey>) -> Users {
        Users {
            entries: list
                .into_iter()
                .map(|uk| {
                    (
                        uk.user,
                        UserEntry {
                            key: uk.key,
                            policy: Arc::new(Policy::default()),
                        },
                    )
                })
                .collect(),
        }
    }

    /// The key of `user`, if known.
    pub fn get(&self, user: &str) -> Option<&Key> {
        self.entries.get(user).map(|e| &e.key)
    }

    /// Key and policy of `user`, if known.
    pub fn entry(&self, user: &str) -> Option<&UserEntry> {
        self.entries.get(user)
    }

    /// The user names, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no users.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One line: `None` for blank and comment lines.
fn parse_line(raw: &str) -> Result<Option<(String, UserEntry)>, String> {
    let mut words = tokens(raw)?.into_iter();
    let Some(name) = words.next() else {
        return Ok(None);
    };
    keys::check_user_name(&name)?;
    let Some(key) = words.next() else {
        return Err(format!(
            "user {name} has no key: expected `NAME BASE64KEY [OPTION]...`"
        ));
    };
    let key = Key::from_base64(&key)?;
    let mut policy = Policy::default();
    for option in words {
        policy.apply_option(&option)?;
    }
    Ok(Some((
        name,
        UserEntry {
            key,
            policy: Arc::new(policy),
        },
    )))
}

/// Splits a line at spaces and commas outside double quotes; `#` outside
/// quotes ends it. Quotes are removed (`a="b c"` is the token `a=b c`).
fn tokens(raw: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_token = false;
    let mut quoted = false;
    for c in raw.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_token = true;
            }
            '#' if !quoted => break,
            c if !quoted && (c.is_whitespace() || c == ',') => {
                if in_token {
                    out.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            c => {
                cur.push(c);
                in_token = true;
            }
        }
    }
    if quoted {
        return Err("unterminated double quote".to_string());
    }
    if in_token {
        out.push(cur);
    }
    Ok(out)
}

/// A users file line for `uk` with `options` (as `skiff keygen` would
/// print it, plus options).
pub fn line_for(uk: &UserKey, options: &[String]) -> String {
    let mut line = uk.to_line();
    for o in options {
        line.push(' ');
        if o.contains(|c: char| c.is_whitespace() || c == ',' || c == '#') {
            match o.split_once('=') {
                Some((k, v)) => line.push_str(&format!("{k}=\"{v}\"")),
                None => line.push_str(&format!("\"{o}\"")),
            }
        } else {
            line.push_str(o);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key() -> String {
        Key::generate().to_base64()
    }

    #[test]
    fn reads_options_comments_and_quotes() {
        let k = key();
        let text = format!(
            "# users\n\nalice {k}\nbob {k} read-only,root=bob  from=10.0.0.0/8 # note\ncarol {k} exec-allow=\"git pull *\" exec-allow=uptime\n"
        );
        let users = Users::parse(Path::new("u"), &text).unwrap();
        assert_eq!(users.names(), ["alice", "bob", "carol"]);
        assert!(users.entry("alice").unwrap().policy.is_unrestricted());
        let bob = &users.entry("bob").unwrap().policy;
        assert!(bob.check_change("put").is_err());
        assert_eq!(
            bob.to_options(),
            ["root=bob", "read-only", "from=10.0.0.0/8"]
        );
        assert_eq!(
            users.entry("carol").unwrap().policy.to_options(),
            ["exec-allow=git pull *", "exec-allow=uptime"]
        );
    }

    #[test]
    fn reports_every_problem_with_its_line() {
        let k = key();
        let text = format!(
            "alice {k}\nbob\nalice {k}\ncarol {k} fly\ndave notbase64!\nerin {k} exec-allow=\"open\n"
        );
        let err = Users::parse(Path::new("/etc/skiff/users"), &text).unwrap_err();
        let UsersError::Lines(p) = &err else {
            panic!("{err}")
        };
        let lines: Vec<usize> = p.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6]);
        let msg = err.to_string();
        assert!(
            msg.contains("/etc/skiff/users:3: user alice is already defined on line 1"),
            "{msg}"
        );
        assert!(
            msg.contains("/etc/skiff/users:4: unknown option \"fly\""),
            "{msg}"
        );
    }

    #[test]
    fn too_open_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        keys::write_private_new(&path, &format!("bob {}\n", key())).unwrap();
        assert_eq!(Users::load(&path).unwrap().len(), 1);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Users::load(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn line_for_quotes_what_needs_it() {
        let uk = UserKey::generate("al");
        let line = line_for(&uk, &["read-only".into(), "exec-allow=git pull *".into()]);
        let users = Users::parse(Path::new("u"), &line).unwrap();
        assert_eq!(
            users.entry("al").unwrap().policy.to_options(),
            ["read-only", "exec-allow=git pull *"]
        );
    }
}
