//! Per-user policy: what one user may do on this server.
//!
//! A policy comes from the options after a user's key in the users file,
//! in the spirit of ssh's `authorized_keys` options:
//!
//! - `root=DIR`: the user's own root; a relative `DIR` lies inside the
//!   server root, an absolute one replaces it;
//! - `read-only`: no file changes (`put`, `rm`, `mkdir`, `mv`) and no
//!   commands (a command can change anything), unless `exec-allow` names
//!   the commands this user may still run;
//! - `no-exec`: no commands;
//! - `exec-allow=PATTERN` (repeatable): only commands matching one of the
//!   glob patterns run, without a shell, with no `--cwd`, and with no
//!   client variables but locale ones (`LANG`, `LC_*`) that `accept-env`
//!   also allows (see [`exec_allow`]);
//! - `from=CIDR` (repeatable): the user may only log in from these
//!   networks.
//!
//! Every check lives here, one function per kind of operation
//! ([`Policy::check_login`], [`Policy::authorize_exec`],
//! [`Policy::check_change`]); services call them and never decide on their
//! own. Any operation that changes files (now or added later, such as the
//! receiving side of a sync) must call [`Policy::check_change`] first. A refusal is a [`Refusal`]: the reason a user reads in the
//! `permission` error.

pub mod env;
pub mod exec_allow;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use skiff_wire::message::exec::Exec;
use skiff_wire::{ErrorCode, ErrorMsg};

use self::env::AcceptEnv;
use self::exec_allow::ExecPattern;

/// Why an operation is refused; answered as a `permission` error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Refusal> for ErrorMsg {
    fn from(r: Refusal) -> ErrorMsg {
        ErrorMsg::new(ErrorCode::Permission, format!("permission denied: {}", r.0))
    }
}

/// One user's restrictions. The default policy restricts nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    root: Option<PathBuf>,
    read_only: bool,
    no_exec: bool,
    exec_allow: Vec<ExecPattern>,
    from: Vec<IpNet>,
}

/// The option names [`Policy::apply_option`] knows, for error messages.
pub const OPTIONS: &str = "root=DIR, read-only, no-exec, exec-allow=PATTERN, from=CIDR";

impl Policy {
    /// Applies one option (`read-only`, `root=DIR`, ...) as written in the
    /// users file.
    pub fn apply_option(&mut self, option: &str) -> Result<(), String> {
        let (name, value) = match option.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (option, None),
        };
        let need = |v: Option<&str>| match v {
            Some(v) if !v.is_empty() => Ok(v.to_string()),
            _ => Err(format!("option {name} needs a value: {name}=...")),
        };
        let flag = |v: Option<&str>| match v {
            None => Ok(()),
            Some(_) => Err(format!("option {name} takes no value")),
        };
        match name {
            "root" => {
                if self.root.is_some() {
                    return Err("root= given twice".to_string());
                }
                let dir = need(value)?;
                if Path::new(&dir)
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
                {
                    return Err(format!("root={dir}: `..` is not allowed"));
                }
                self.root = Some(PathBuf::from(dir));
            }
            "read-only" => {
                flag(value)?;
                self.read_only = true;
            }
            "no-exec" => {
                flag(value)?;
                self.no_exec = true;
            }
            "exec-allow" => self.exec_allow.push(ExecPattern::new(&need(value)?)?),
            "from" => {
                let v = need(value)?;
                let net = v
                    .parse::<IpNet>()
                    .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!("from={v}: not an address or network like 10.0.0.0/8 or ::1")
                    })?;
                self.from.push(net.trunc());
            }
            other => return Err(format!("unknown option {other:?} (known: {OPTIONS})")),
        }
        Ok(())
    }

    /// No option at all: the user may do whatever the server's account may
    /// (and so may also set any environment variable).
    pub fn is_unrestricted(&self) -> bool {
        *self == Policy::default()
    }

    /// The root this user works in, given the server's canonical root. A
    /// relative `root=` must resolve inside the server root.
    pub fn resolve_root(&self, server_root: &Path) -> Result<PathBuf, Refusal> {
        let Some(dir) = &self.root else {
            return Ok(server_root.to_path_buf());
        };
        let joined = server_root.join(dir);
        let real = joined.canonicalize().map_err(|e| {
            Refusal(format!(
                "this user's root {} is not usable: {e}",
                joined.display()
            ))
        })?;
        if dir.is_relative() && !real.starts_with(server_root) {
            return Err(Refusal(format!(
                "this user's root {} leads outside the server root",
                dir.display()
            )));
        }
        if !real.is_dir() {
            return Err(Refusal(format!(
                "this user's root {} is not a directory",
                real.display()
            )));
        }
        Ok(real)
    }

    /// May this user log in from `peer` (`None`: a Unix socket, which has
    /// no address and so matches no `from=`)?
    pub fn check_login(&self, peer: Option<IpAddr>) -> Result<(), Refusal> {
        if self.from.is_empty() {
            return Ok(());
        }
        let allowed = |ip: IpAddr| self.from.iter().any(|net| net.contains(&ip));
        match peer.map(|ip| ip.to_canonical()) {
            Some(ip) if allowed(ip) => Ok(()),
            Some(ip) => Err(Refusal(format!(
                "this user may not log in from {ip} (allowed: {})",
                self.allowed_networks()
            ))),
            None => Err(Refusal(format!(
                "this user may only log in over the network from {}",
                self.allowed_networks()
            ))),
        }
    }

    fn allowed_networks(&self) -> String {
        let v: Vec<String> = self.from.iter().map(IpNet::to_string).collect();
        v.join(", ")
    }

    /// Whether this user may run commands at all (for the `welcome`).
    pub fn may_exec(&self) -> bool {
        !self.no_exec && (!self.read_only || !self.exec_allow.is_empty())
    }

    /// Decides about an `exec` request: the request to run (under
    /// `exec-allow`, rewritten to run the matched words without a shell),
    /// or why not. `accept` filters the client's variables for restricted
    /// users.
    pub fn authorize_exec(&self, req: &Exec, accept: &AcceptEnv) -> Result<Exec, Refusal> {
        if self.no_exec {
            return Err(Refusal("this user may not run commands (no-exec)".into()));
        }
        if self.read_only && self.exec_allow.is_empty() {
            return Err(Refusal(
                "this user is read-only and may not run commands".into(),
            ));
        }
        for name in req.env.keys() {
            if name.starts_with("SKIFF_") {
                return Err(Refusal(format!(
                    "{name} is set by the server and cannot be changed"
                )));
            }
            if !self.is_unrestricted() && !accept.allows(name) {
                return Err(Refusal(format!(
                    "variable {name} is not accepted (accept-env: {accept})"
                )));
            }
            // Whatever accept-env says, a variable must not change what an
            // allowed command does (PATH, LD_PRELOAD, GIT_*, ...).
            if !self.exec_allow.is_empty() && !env::is_locale(name) {
                return Err(Refusal(format!(
                    "variable {name} cannot be set for allowed commands (only LANG and LC_*)"
                )));
            }
        }
        if self.exec_allow.is_empty() {
            return Ok(req.clone());
        }
        if req
            .cwd
            .as_deref()
            .is_some_and(|c| !c.trim_matches('/').is_empty())
        {
            return Err(Refusal(
                "this user may only run allowed commands, in the root (no --cwd)".into(),
            ));
        }
        let words = exec_allow::command_words(req).map_err(Refusal)?;
        let line = words.join(" ");
        if !self.exec_allow.iter().any(|p| p.matches(&line)) {
            return Err(Refusal(format!(
                "command {line:?} is not allowed for this user (exec-allow: {})",
                self.exec_allow_list()
            )));
        }
        Ok(Exec {
            argv: Some(words),
            cmd: None,
            cwd: None,
            ..req.clone()
        })
    }

    fn exec_allow_list(&self) -> String {
        let v: Vec<&str> = self.exec_allow.iter().map(ExecPattern::as_str).collect();
        v.join(", ")
    }

    /// May this user change files (`op`: put, rm, mkdir, mv)?
    pub fn check_change(&self, op: &str) -> Result<(), Refusal> {
        if self.read_only {
            return Err(Refusal(format!("this user is read-only ({op} refused)")));
        }
        Ok(())
    }

    /// The options again, as they would be written in the users file.
    pub fn to_options(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(r) = &self.root {
            v.push(format!("root={}", r.display()));
        }
        if self.read_only {
            v.push("read-only".into());
        }
        if self.no_exec {
            v.push("no-exec".into());
        }
        for p in &self.exec_allow {
            v.push(format!("exec-allow={}", p.as_str()));
        }
        for n in &self.from {
            v.push(format!("from={n}"));
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(opts: &[&str]) -> Policy {
        let mut p = Policy::default();
        for o in opts {
            p.apply_option(o).unwrap();
        }
        p
    }

    fn cmd(c: &str) -> Exec {
        Exec {
            cmd: Some(c.into()),
            ..Exec::default()
        }
    }

    #[test]
    fn options_parse_and_reject_nonsense() {
        let p = policy(&["read-only", "root=alice", "from=10.0.0.0/8", "from=::1"]);
        assert!(!p.is_unrestricted());
        assert!(Policy::default().is_unrestricted());
        let mut p = Policy::default();
        assert!(p.apply_option("read-only=yes").is_err());
        assert!(p.apply_option("root=").is_err());
        assert!(p.apply_option("root=../up").is_err());
        assert!(p.apply_option("from=10.0.0.0/33").is_err());
        assert!(p.apply_option("from=example.com").is_err());
        let e = p.apply_option("no-shell").unwrap_err();
        assert!(e.contains("unknown option"), "{e}");
        p.apply_option("root=a").unwrap();
        assert!(p.apply_option("root=b").is_err());
    }

    #[test]
    fn from_matches_networks_and_mapped_addresses() {
        let p = policy(&["from=127.0.0.1"]);
        assert!(p.check_login(Some("127.0.0.1".parse().unwrap())).is_ok());
        assert!(p
            .check_login(Some("::ffff:127.0.0.1".parse().unwrap()))
            .is_ok());
        let e = p.check_login(Some("::1".parse().unwrap())).unwrap_err();
        assert!(e.0.contains("::1"), "{e}");
        assert!(p.check_login(None).is_err());
        let p = policy(&["from=10.1.0.0/16", "from=::1/128"]);
        assert!(p.check_login(Some("10.1.200.3".parse().unwrap())).is_ok());
        assert!(p.check_login(Some("10.2.0.1".parse().unwrap())).is_err());
        assert!(p.check_login(Some("::1".parse().unwrap())).is_ok());
        assert!(Policy::default().check_login(None).is_ok());
    }

    #[test]
    fn exec_rules() {
        let accept = AcceptEnv::default();
        assert!(policy(&["no-exec"])
            .authorize_exec(&cmd("true"), &accept)
            .is_err());
        assert!(policy(&["read-only"])
            .authorize_exec(&cmd("true"), &accept)
            .is_err());
        assert!(policy(&["root=x"])
            .authorize_exec(&cmd("ls; id"), &accept)
            .is_ok());
        let p = policy(&["read-only", "exec-allow=uptime", "exec-allow=ls *"]);
        let run = p.authorize_exec(&cmd("ls -l  /etc"), &accept).unwrap();
        assert_eq!(run.argv.unwrap(), ["ls", "-l", "/etc"]);
        assert!(run.cmd.is_none());
        assert!(p.authorize_exec(&cmd("uptime"), &accept).is_ok());
        for bad in [
            "uptime; id",
            "uptime && id",
            "ls $(id)",
            "ls `id`",
            "ls 'a' ; id",
            "ls \"x\"",
            "ls a|id",
            "ls >f",
            "ls\nid",
            "id",
            "uptimex",
        ] {
            assert!(p.authorize_exec(&cmd(bad), &accept).is_err(), "{bad:?}");
        }
        let mut with_cwd = cmd("uptime");
        with_cwd.cwd = Some("sub".into());
        assert!(p.authorize_exec(&with_cwd, &accept).is_err());
        with_cwd.cwd = Some("/".into());
        assert!(p.authorize_exec(&with_cwd, &accept).is_ok());
        let mut with_env = cmd("uptime");
        with_env.env.insert("LD_PRELOAD".into(), "/tmp/x.so".into());
        assert!(p.authorize_exec(&with_env, &accept).is_err());
        // Even an accept-env that lets everything through cannot widen an
        // exec-allow.
        let all = AcceptEnv::new(&["*".to_string()]).unwrap();
        assert!(p.authorize_exec(&with_env, &all).is_err());
        with_env.env.clear();
        with_env.env.insert("PATH".into(), "/tmp".into());
        assert!(p.authorize_exec(&with_env, &all).is_err());
        with_env.env.clear();
        with_env.env.insert("LC_ALL".into(), "C".into());
        assert!(p.authorize_exec(&with_env, &accept).is_ok());
    }

    #[test]
    fn env_rules_for_unrestricted_users() {
        let accept = AcceptEnv::default();
        let mut req = cmd("true");
        req.env.insert("ANYTHING".into(), "1".into());
        assert!(Policy::default().authorize_exec(&req, &accept).is_ok());
        assert!(policy(&["root=x"]).authorize_exec(&req, &accept).is_err());
        req.env.insert("SKIFF_USER".into(), "root".into());
        assert!(Policy::default().authorize_exec(&req, &accept).is_err());
    }

    #[test]
    fn read_only_refuses_changes() {
        assert!(policy(&["read-only"]).check_change("put").is_err());
        assert!(policy(&["no-exec"]).check_change("put").is_ok());
    }

    #[test]
    fn options_round_trip() {
        let p = policy(&[
            "root=/srv/a",
            "no-exec",
            "exec-allow=git pull",
            "from=10.0.0.0/8",
        ]);
        assert_eq!(
            policy(
                &p.to_options()
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
            ),
            p
        );
    }
}
