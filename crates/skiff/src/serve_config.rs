//! The server's configuration file (TOML): every `skiff serve` flag as a
//! key of the same name (`state-dir = "/var/lib/skiff"`), plus settings
//! that only make sense in a file (`accept-env`).
//!
//! Where it comes from: `--config FILE`, else the default location
//! ([`default_path`]: `/etc/skiff/serve.toml` when running as root,
//! `~/.config/skiff/serve.toml` otherwise) when that file exists. Flags
//! override the file, the file overrides built-in defaults; the result is
//! what `skiff serve --print-config` prints, itself a valid configuration
//! file. Unknown keys and wrong types are errors that name the line.
//! Relative paths in a file are relative to the file's directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::policy::env::DEFAULT_ACCEPT_ENV;

/// Default `--listen`.
pub const DEFAULT_LISTEN: &str = "tcp://127.0.0.1:7878";
/// Default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default handshake deadline in seconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT: f64 = 10.0;
/// Default pause before answering a failed login.
pub const DEFAULT_AUTH_FAIL_DELAY_MS: u64 = 500;
/// Default recent failed logins from one source that cost it nothing;
/// past them its new connections are delayed (see `session::penalty`).
pub const DEFAULT_AUTH_MAX_FAILURES: u32 = 3;
/// Default longest delay a failing source earns, in milliseconds.
pub const DEFAULT_AUTH_PENALTY_MAX_MS: u64 = 2000;
/// Default connections still in the handshake, all sources together:
/// `START:RATE:FULL` as OpenSSH's `MaxStartups` (from START on, RATE
/// percent of new ones are dropped, rising to all of them at FULL).
pub const DEFAULT_MAX_STARTUPS: &str = "64:30:256";
/// Default connections still in the handshake from one source (an IPv4
/// address, an IPv6 /64, a Unix user).
pub const DEFAULT_PER_SOURCE_MAX_STARTUPS: usize = 16;
/// Default seconds an authenticated session may sit idle between
/// requests before it is closed (0: never).
pub const DEFAULT_IDLE_TIMEOUT: f64 = 600.0;
/// Default seconds a write may wait for a peer that does not read.
pub const DEFAULT_WRITE_TIMEOUT: f64 = 60.0;
/// Default age in days after which an interrupted upload's partial state
/// is removed.
pub const DEFAULT_PARTIAL_MAX_AGE_DAYS: f64 = 7.0;

/// One layer of configuration: a file, the flags, or (resolved) all of
/// them with defaults filled in. `None` means "not said here".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeFile {
    /// Listener URLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<Vec<String>>,
    /// The served directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// The users file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<PathBuf>,
    /// Certificate and default users file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// Refuse commands for everybody.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_exec: Option<bool>,
    /// Connection limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Audit log file, `-` for stderr; absent: no audit log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_log: Option<String>,
    /// Names of client variables (globs) restricted users may set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_env: Option<Vec<String>>,
    /// Seconds a client gets for TLS and authentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handshake_timeout: Option<f64>,
    /// Pause before answering a failed login, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_fail_delay_ms: Option<u64>,
    /// Recent failed logins from one source before its connections are
    /// delayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_max_failures: Option<u32>,
    /// The longest such delay, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_penalty_max_ms: Option<u64>,
    /// Networks (CIDR) whose failures are never penalized.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_penalty_exempt: Option<Vec<String>>,
    /// Connections in the handshake, all sources: `START:RATE:FULL`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_startups: Option<String>,
    /// Connections in the handshake from one source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_source_max_startups: Option<usize>,
    /// Seconds an authenticated session may be idle (0: never).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<f64>,
    /// Seconds a write may wait for a peer that does not read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_timeout: Option<f64>,
    /// Days an interrupted upload is kept for `put --resume`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partial_max_age_days: Option<f64>,
}

/// Why a configuration file cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// Unreadable.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key or a wrong type (the message names
    /// the line and column).
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What and where.
        message: String,
    },
}

/// `/etc/skiff/serve.toml` for root, `~/.config/skiff/serve.toml` (under
/// `$XDG_CONFIG_HOME` when set) for anybody else.
pub fn default_path() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        PathBuf::from("/etc/skiff/serve.toml")
    } else {
        crate::keys::config_dir().join("serve.toml")
    }
}

impl ServeFile {
    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<ServeFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut file = ServeFile::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        file.absolutize(base);
        Ok(file)
    }

    /// Parses configuration text; errors name the line.
    pub fn parse(text: &str) -> Result<ServeFile, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Makes relative paths relative to `base`.
    pub fn absolutize(&mut self, base: &Path) {
        for p in [&mut self.root, &mut self.users, &mut self.state_dir]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(a) = &mut self.audit_log {
            if a != "-" && Path::new(a).is_relative() {
                *a = base.join(&*a).to_string_lossy().into_owned();
            }
        }
    }

    /// This layer with `over` on top: whatever `over` says wins.
    pub fn overlay(self, over: ServeFile) -> ServeFile {
        ServeFile {
            listen: over.listen.or(self.listen),
            root: over.root.or(self.root),
            users: over.users.or(self.users),
            state_dir: over.state_dir.or(self.state_dir),
            no_exec: over.no_exec.or(self.no_exec),
            max_connections: over.max_connections.or(self.max_connections),
            audit_log: over.audit_log.or(self.audit_log),
            accept_env: over.accept_env.or(self.accept_env),
            handshake_timeout: over.handshake_timeout.or(self.handshake_timeout),
            auth_fail_delay_ms: over.auth_fail_delay_ms.or(self.auth_fail_delay_ms),
            auth_max_failures: over.auth_max_failures.or(self.auth_max_failures),
            auth_penalty_max_ms: over.auth_penalty_max_ms.or(self.auth_penalty_max_ms),
            auth_penalty_exempt: over.auth_penalty_exempt.or(self.auth_penalty_exempt),
            max_startups: over.max_startups.or(self.max_startups),
            per_source_max_startups: over
                .per_source_max_startups
                .or(self.per_source_max_startups),
            idle_timeout: over.idle_timeout.or(self.idle_timeout),
            write_timeout: over.write_timeout.or(self.write_timeout),
            partial_max_age_days: over.partial_max_age_days.or(self.partial_max_age_days),
        }
    }

    /// Every setting filled in: built-in defaults under this layer.
    /// `root` defaults to `cwd`, `users` to `STATE_DIR/users`.
    pub fn resolve(self, cwd: &Path) -> ServeFile {
        let state_dir = self
            .state_dir
            .clone()
            .unwrap_or_else(crate::keys::state_dir);
        let defaults = ServeFile {
            listen: Some(vec![DEFAULT_LISTEN.to_string()]),
            root: Some(cwd.to_path_buf()),
            users: Some(state_dir.join("users")),
            state_dir: Some(state_dir),
            no_exec: Some(false),
            max_connections: Some(DEFAULT_MAX_CONNECTIONS),
            audit_log: None,
            accept_env: Some(DEFAULT_ACCEPT_ENV.iter().map(|s| s.to_string()).collect()),
            handshake_timeout: Some(DEFAULT_HANDSHAKE_TIMEOUT),
            auth_fail_delay_ms: Some(DEFAULT_AUTH_FAIL_DELAY_MS),
            auth_max_failures: Some(DEFAULT_AUTH_MAX_FAILURES),
            auth_penalty_max_ms: Some(DEFAULT_AUTH_PENALTY_MAX_MS),
            auth_penalty_exempt: Some(Vec::new()),
            max_startups: Some(DEFAULT_MAX_STARTUPS.to_string()),
            per_source_max_startups: Some(DEFAULT_PER_SOURCE_MAX_STARTUPS),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            write_timeout: Some(DEFAULT_WRITE_TIMEOUT),
            partial_max_age_days: Some(DEFAULT_PARTIAL_MAX_AGE_DAYS),
        };
        let mut out = defaults.overlay(self);
        out.absolutize(cwd);
        out
    }

    /// The configuration as a TOML file.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }

    /// Keys whose values differ between `self` and `other`, in file order.
    pub fn changed_keys(&self, other: &ServeFile) -> Vec<&'static str> {
        let a = toml::Value::try_from(self).ok();
        let b = toml::Value::try_from(other).ok();
        let get = |v: &Option<toml::Value>, k: &str| v.as_ref().and_then(|t| t.get(k)).cloned();
        KEYS.iter()
            .copied()
            .filter(|k| get(&a, k) != get(&b, k))
            .collect()
    }
}

/// Every key, in the order of the struct (and of `--print-config`).
pub const KEYS: &[&str] = &[
    "listen",
    "root",
    "users",
    "state-dir",
    "no-exec",
    "max-connections",
    "audit-log",
    "accept-env",
    "handshake-timeout",
    "auth-fail-delay-ms",
    "auth-max-failures",
    "auth-penalty-max-ms",
    "auth-penalty-exempt",
    "max-startups",
    "per-source-max-startups",
    "idle-timeout",
    "write-timeout",
    "partial-max-age-days",
];

/// Where the configuration comes from, kept so that SIGHUP can read it
/// again and merge it exactly as at start.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The file, if one is used.
    pub file: Option<PathBuf>,
    /// What the command line said.
    pub flags: ServeFile,
    /// The directory relative defaults resolve against.
    pub cwd: PathBuf,
}

impl ConfigSource {
    /// The effective configuration now: defaults, file, flags.
    pub fn effective(&self) -> Result<ServeFile, ConfigError> {
        let file = match &self.file {
            Some(p) => ServeFile::load(p)?,
            None => ServeFile::default(),
        };
        Ok(file.overlay(self.flags.clone()).resolve(&self.cwd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_name_the_line() {
        let e =
            ServeFile::parse("root = \"/srv\"\n\nno-exec = true\nlisten-on = []\n").unwrap_err();
        assert!(e.contains("line 4"), "{e}");
        assert!(e.contains("listen-on"), "{e}");
        let e = ServeFile::parse("max-connections = \"many\"\n").unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn flags_override_the_file_and_print_round_trips() {
        let file =
            ServeFile::parse("root = \"/srv/a\"\nmax-connections = 5\naccept-env = [\"LANG\"]\n")
                .unwrap();
        let flags = ServeFile {
            max_connections: Some(7),
            ..ServeFile::default()
        };
        let eff = file.overlay(flags).resolve(Path::new("/work"));
        assert_eq!(eff.root.as_deref(), Some(Path::new("/srv/a")));
        assert_eq!(eff.max_connections, Some(7));
        assert_eq!(eff.accept_env, Some(vec!["LANG".to_string()]));
        assert_eq!(eff.listen, Some(vec![DEFAULT_LISTEN.to_string()]));
        let printed = eff.to_toml();
        let again = ServeFile::parse(&printed)
            .unwrap()
            .resolve(Path::new("/elsewhere"));
        assert_eq!(again, eff, "{printed}");
        assert!(eff.changed_keys(&again).is_empty());
        let mut other = eff.clone();
        other.no_exec = Some(true);
        other.listen = Some(vec![]);
        assert_eq!(eff.changed_keys(&other), ["listen", "no-exec"]);
    }

    #[test]
    fn relative_paths_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        std::fs::write(&path, "root = \"data\"\naudit-log = \"audit.log\"\n").unwrap();
        let f = ServeFile::load(&path).unwrap();
        assert_eq!(f.root.unwrap(), dir.path().join("data"));
        assert_eq!(
            f.audit_log.unwrap(),
            dir.path().join("audit.log").to_string_lossy()
        );
    }
}
