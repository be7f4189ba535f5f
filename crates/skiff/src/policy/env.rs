//! The environment a command starts with.
//!
//! As sshd does, a command does not inherit the server's environment. It
//! gets a small, fixed set: `PATH`, `HOME`, `USER`, `LOGNAME` and `SHELL`
//! of the server's account, `LANG` and `LC_*` when the server has them,
//! `TERM` when it runs on a pty, and `SKIFF_USER` (the skiff user) and
//! `SKIFF_CLIENT` (`ADDRESS PORT` of the client, or `unix`). On top come
//! the client's own variables (`skiff exec -e`): all of them for an
//! unrestricted user, and for a user with any policy option only those
//! whose names match the server's `accept-env` patterns (default
//! `LANG LC_*`), and for an `exec-allow` user only locale variables among
//! those. `SKIFF_*` can never be set by a client.

use std::fmt;
use std::net::SocketAddr;

use globset::{Glob, GlobSet, GlobSetBuilder};

/// `PATH` for commands, the usual system directories (as sshd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `accept-env` when the configuration does not say.
pub const DEFAULT_ACCEPT_ENV: &[&str] = &["LANG", "LC_*"];

/// Whether `name` is a locale variable (`LANG`, `LC_*`): the only client
/// variables an `exec-allow` user may set, whatever `accept-env` says.
pub fn is_locale(name: &str) -> bool {
    name == "LANG" || name.starts_with("LC_")
}

/// The `accept-env` patterns: names of client variables a restricted user
/// may set.
#[derive(Debug, Clone)]
pub struct AcceptEnv {
    patterns: Vec<String>,
    set: GlobSet,
}

impl Default for AcceptEnv {
    fn default() -> Self {
        let v: Vec<String> = DEFAULT_ACCEPT_ENV.iter().map(|s| s.to_string()).collect();
        AcceptEnv::new(&v).unwrap_or_else(|_| AcceptEnv {
            patterns: Vec::new(),
            set: GlobSet::empty(),
        })
    }
}

impl AcceptEnv {
    /// Compiles glob patterns of variable names (`LANG`, `LC_*`).
    pub fn new(patterns: &[String]) -> Result<AcceptEnv, String> {
        let mut b = GlobSetBuilder::new();
        for p in patterns {
            b.add(Glob::new(p).map_err(|e| format!("accept-env {p:?}: {e}"))?);
        }
        Ok(AcceptEnv {
            patterns: patterns.to_vec(),
            set: b.build().map_err(|e| e.to_string())?,
        })
    }

    /// Whether a client may set variable `name`.
    pub fn allows(&self, name: &str) -> bool {
        self.set.is_match(name)
    }

    /// The patterns as configured.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

impl fmt::Display for AcceptEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.patterns.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&self.patterns.join(" "))
    }
}

/// The fixed part of every command's environment, computed once when the
/// server starts.
#[derive(Debug, Clone, Default)]
pub struct BaseEnv {
    vars: Vec<(String, String)>,
}

impl BaseEnv {
    /// From the server's account (passwd entry) and its locale variables.
    pub fn from_server() -> BaseEnv {
        let account = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten();
        let name = account
            .as_ref()
            .map(|u| u.name.clone())
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_default();
        let home = account
            .as_ref()
            .map(|u| u.dir.to_string_lossy().into_owned())
            .unwrap_or_else(|| crate::keys::home_dir().to_string_lossy().into_owned());
        let shell = account
            .as_ref()
            .map(|u| u.shell.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "/bin/sh".to_string());
        let mut vars = vec![
            ("PATH".to_string(), DEFAULT_PATH.to_string()),
            ("HOME".to_string(), home),
            ("USER".to_string(), name.clone()),
            ("LOGNAME".to_string(), name),
            ("SHELL".to_string(), shell),
        ];
        let mut locale: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k == "LANG" || k.starts_with("LC_"))
            .collect();
        locale.sort();
        vars.extend(locale);
        BaseEnv { vars }
    }

    /// The complete environment of one command: the base set, the session's
    /// `SKIFF_USER`/`SKIFF_CLIENT`, `TERM` for a pty, then the client's
    /// variables (already authorized by the policy).
    pub fn for_command<'a>(
        &self,
        user: &str,
        client: Option<SocketAddr>,
        term: Option<&str>,
        client_vars: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Vec<(String, String)> {
        let mut v = self.vars.clone();
        if let Some(t) = term {
            v.push(("TERM".into(), t.to_string()));
        }
        for (k, val) in client_vars {
            v.retain(|(name, _)| name != k);
            v.push((k.clone(), val.clone()));
        }
        v.push(("SKIFF_USER".into(), user.to_string()));
        v.push(("SKIFF_CLIENT".into(), client_string(client)));
        v
    }
}

/// `SKIFF_CLIENT`: `ADDRESS PORT` (as `SSH_CLIENT` starts), or `unix`.
pub fn client_string(client: Option<SocketAddr>) -> String {
    match client {
        Some(a) => format!("{} {}", a.ip().to_canonical(), a.port()),
        None => "unix".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn accept_env_globs() {
        let a = AcceptEnv::default();
        assert!(a.allows("LANG") && a.allows("LC_ALL"));
        assert!(!a.allows("LD_PRELOAD") && !a.allows("PATH") && !a.allows("XLANG"));
        assert_eq!(a.to_string(), "LANG LC_*");
        assert!(AcceptEnv::new(&["[".into()]).is_err());
    }

    #[test]
    fn command_environment_is_small_and_complete() {
        let base = BaseEnv::from_server();
        let mut client = BTreeMap::new();
        client.insert("LANG".to_string(), "C.UTF-8".to_string());
        client.insert("PATH".to_string(), "/opt/bin".to_string());
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let env = base.for_command("alice", Some(addr), Some("xterm"), &client);
        let get = |k: &str| {
            env.iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(get("SKIFF_USER"), ["alice"]);
        assert_eq!(get("SKIFF_CLIENT"), ["127.0.0.1 4000"]);
        assert_eq!(get("TERM"), ["xterm"]);
        assert_eq!(get("LANG"), ["C.UTF-8"]);
        assert_eq!(get("PATH"), ["/opt/bin"]);
        assert_eq!(get("HOME").len(), 1);
        for (k, _) in &env {
            assert!(
                [
                    "PATH",
                    "HOME",
                    "USER",
                    "LOGNAME",
                    "SHELL",
                    "TERM",
                    "SKIFF_USER",
                    "SKIFF_CLIENT"
                ]
                .contains(&k.as_str())
                    || k == "LANG"
                    || k.starts_with("LC_"),
                "{k}"
            );
        }
        assert_eq!(client_string(None), "unix");
    }
}
