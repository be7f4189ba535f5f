//! Keys and the client key file (the server's users file is in
//! [`crate::users`]).
//!
//! A key is 32 random bytes per user, written as one line `NAME BASE64KEY`.
//! The server's users file holds such lines (`#` starts a comment); a
//! client's key file holds its user's one line. Like ssh, we refuse files
//! that group or others can read or write.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use thiserror::Error;

/// Length of a key in bytes.
pub const KEY_LEN: usize = 32;

/// A shared secret. Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_LEN]);

impl Key {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Key {
        let mut k = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Key(k)
    }

    /// A key from raw bytes (test vectors, other tools).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key(bytes)
    }

    /// The raw bytes, for computing MACs.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Standard base64 with padding, as in key files.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    /// Reads a base64 key; it must decode to exactly 32 bytes.
    pub fn from_base64(s: &str) -> Result<Key, String> {
        let bytes = B64
            .decode(s.trim())
            .map_err(|e| format!("key is not valid base64: {e}"))?;
        let arr: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("key is {} bytes, expected {KEY_LEN}", b.len()))?;
        Ok(Key(arr))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// A user name with its key: one line of a key or users file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKey {
    /// The user name.
    pub user: String,
    /// The user's key.
    pub key: Key,
}

impl UserKey {
    /// A new random key for `user`.
    pub fn generate(user: &str) -> UserKey {
        UserKey {
            user: user.to_string(),
            key: Key::generate(),
        }
    }

    /// The line `NAME BASE64KEY` (no newline).
    pub fn to_line(&self) -> String {
        format!("{} {}", self.user, self.key.to_base64())
    }

    /// Parses `NAME BASE64KEY`.
    pub fn parse_line(line: &str) -> Result<UserKey, String> {
        let mut parts = line.split_whitespace();
        let (Some(user), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err("expected `NAME BASE64KEY`".to_string());
        };
        check_user_name(user)?;
        Ok(UserKey {
            user: user.to_string(),
            key: Key::from_base64(key)?,
        })
    }
}

/// User names are what a shell would not mangle: letters, digits, `._-@`.
pub fn check_user_name(user: &str) -> Result<(), String> {
    if user.is_empty() || user.len() > 64 {
        return Err("user name must be 1 to 64 characters".to_string());
    }
    if !user
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
    {
        return Err(format!(
            "user name {user:?} may only hold letters, digits and . _ - @"
        ));
    }
    Ok(())
}

/// Why a key or users file could not be used.
#[derive(Debug, Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is readable or writable by group or others.
    #[error("{path} is accessible by other users (mode {mode:04o}); keys must be private: run `chmod 600 {path}`")]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A line could not be parsed.
    #[error("{path}:{line}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A key file with no key in it.
    #[error("{path} holds no key; create one with `skiff keygen --out {path}`")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Refuses a file that group or others can access.
pub fn check_private(path: &Path) -> Result<(), KeyError> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

fn read_private(path: &Path) -> Result<String, KeyError> {
    check_private(path)?;
    std::fs::read_to_string(path).map_err(io_err(path))
}

fn parse_lines(path: &Path, text: &str) -> Result<Vec<UserKey>, KeyError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        out.push(
            UserKey::parse_line(line).map_err(|reason| KeyError::Malformed {
                path: path.to_path_buf(),
                line: i + 1,
                reason,
            })?,
        );
    }
    Ok(out)
}

/// Reads every line of a private key file (a client key file may hold
/// several users' keys).
pub fn load_keys(path: &Path) -> Result<Vec<UserKey>, KeyError> {
    let text = read_private(path)?;
    parse_lines(path, &text)
}

/// Reads a client key file: its first key line.
pub fn load_key(path: &Path) -> Result<UserKey, KeyError> {
    let text = read_private(path)?;
    parse_lines(path, &text)?
        .into_iter()
        .next()
        .ok_or_else(|| KeyError::Empty {
            path: path.to_path_buf(),
        })
}

/// Writes `contents` to a new file with mode 0600 (parents 0700), failing if
/// it exists.
pub fn write_private_new(path: &Path, contents: &str) -> Result<(), KeyError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io_err(parent))?;
    }
    use std::os::unix::fs::DirBuilderExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(contents.as_bytes()).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// `$HOME`, or `/` when unset.
pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// `$XDG_CONFIG_HOME/skiff` or `~/.config/skiff`.
pub fn config_dir() -> PathBuf {
    xdg_dir("XDG_CONFIG_HOME", ".config")
}

/// `$VAR/skiff` when `VAR` holds an absolute path (the XDG base directory
/// rule), else `~/FALLBACK/skiff`.
fn xdg_dir(var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| home_dir().join(fallback))
        .join("skiff")
}

/// `$XDG_STATE_HOME/skiff` or `~/.local/state/skiff`: the server's
/// certificate and default users file.
pub fn state_dir() -> PathBuf {
    xdg_dir("XDG_STATE_HOME", ".local/state")
}

/// `$XDG_CACHE_HOME/skiff` or `~/.cache/skiff`: what a client may lose
/// without harm (the signatures of files it pulled).
pub fn cache_dir() -> PathBuf {
    xdg_dir("XDG_CACHE_HOME", ".cache")
}

/// The client key file when neither `--key` nor `$SKIFF_KEY_FILE` is given.
pub fn default_key_path() -> PathBuf {
    config_dir().join("key")
}

/// The name of the user running this process.
pub fn current_user() -> String {
    let from_os = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name);
    from_os
        .or_else(|| std::env::var("USER").ok())
        .filter(|u| check_user_name(u).is_ok())
        .unwrap_or_else(|| "skiff".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_round_trip() {
        let uk = UserKey::generate("alice");
        assert_eq!(UserKey::parse_line(&uk.to_line()).unwrap(), uk);
    }

    #[test]
    fn rejects_bad_lines() {
        assert!(UserKey::parse_line("alice").is_err());
        assert!(UserKey::parse_line("alice notbase64!").is_err());
        assert!(UserKey::parse_line("alice AAAA").is_err()); // 3 bytes
        assert!(UserKey::parse_line("al/ice AAAA").is_err());
    }

    #[test]
    fn refuses_open_files_and_reads_private_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let uk = UserKey::generate("bob");
        write_private_new(&path, &format!("# users\n{}\n\n", uk.to_line())).unwrap();
        assert_eq!(load_key(&path).unwrap(), uk);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_key(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}
