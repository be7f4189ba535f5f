//! Who the client authenticates as: one line of the client key file.
//!
//! The key file (`--key`, else `$SKIFF_KEY_FILE`, else the host alias's
//! `key`, else `~/.config/skiff/key`) holds one or more `NAME BASE64KEY`
//! lines. `USER@HOST` (or the alias's `user`) selects that user's line;
//! without a user, the first line is used.

use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::keys::{self, KeyError, UserKey};

/// Why no key could be chosen. All are local problems the user fixes on
/// this machine (exit 2).
#[derive(Debug, Error)]
pub enum IdentityError {
    /// There is no key file at all.
    #[error("no key file at {path}. To get one:\n  1. on this machine: skiff keygen --user {user} --out {path}\n  2. send the line it wrote (`{user} …`) to the server's admin, who appends it to the server's users file (by default ~/.local/state/skiff/users of the user running `skiff serve`; the server re-reads it on change)\n  (To serve this machine itself instead, run `skiff serve` once: it creates both files.)")]
    Missing {
        /// Where the key file was looked for.
        path: PathBuf,
        /// The user name to suggest.
        user: String,
    },
    /// The key file has no line for the requested user.
    #[error("{path} holds no key for user {user:?} (it has: {available}). Add one with `skiff keygen --user {user}` and append the line to {path}; the server's admin adds it to the users file too")]
    NoSuchUser {
        /// The key file.
        path: PathBuf,
        /// The user asked for.
        user: String,
        /// The users it does hold, comma-separated.
        available: String,
    },
    /// The key file is unreadable, too open or malformed.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Where the key file is when neither `--key`, `$SKIFF_KEY_FILE` nor an
/// alias names one.
pub fn default_key_file() -> PathBuf {
    keys::default_key_path()
}

/// Reads `path` and picks `user`'s line, or the first line.
pub fn load(path: &Path, user: Option<&str>) -> Result<UserKey, IdentityError> {
    if !path.exists() {
        return Err(IdentityError::Missing {
            path: path.to_path_buf(),
            user: user.map_or_else(keys::current_user, str::to_string),
        });
    }
    let all = keys::load_keys(path)?;
    let Some(user) = user else {
        return all.into_iter().next().ok_or_else(|| {
            KeyError::Empty {
                path: path.to_path_buf(),
            }
            .into()
        });
    };
    let available = all
        .iter()
        .map(|k| k.user.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    all.iter()
        .find(|k| k.user == user)
        .cloned()
        .ok_or_else(|| IdentityError::NoSuchUser {
            path: path.to_path_buf(),
            user: user.to_string(),
            available: if available.is_empty() {
                "none".into()
            } else {
                available
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_the_users_line_or_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let (a, b) = (UserKey::generate("alice"), UserKey::generate("bob"));
        keys::write_private_new(&path, &format!("{}\n# c\n{}\n", a.to_line(), b.to_line()))
            .unwrap();
        assert_eq!(load(&path, None).unwrap(), a);
        assert_eq!(load(&path, Some("bob")).unwrap(), b);
        let err = load(&path, Some("carol")).unwrap_err().to_string();
        assert!(err.contains("alice, bob"), "{err}");
        let err = load(&dir.path().join("none"), Some("dave")).unwrap_err();
        assert!(
            err.to_string().contains("skiff keygen --user dave"),
            "{err}"
        );
    }
}
