//! The client config: host aliases and groups, as `~/.ssh/config` has.
//!
//! `~/.config/skiff/config.toml`, or the file named by `$SKIFF_CONFIG`:
//!
//! ```toml
//! [hosts.web1]
//! address = "10.0.0.5"          # any TARGET form: host, [v6]:port, tcp+plain://…, unix://…
//! port = 7879                   # default 7878
//! user = "deploy"               # selects the key-file line (USER@ on the command line wins)
//! key = "~/.config/skiff/work"  # key file for this host (--key wins)
//! fingerprint = "SHA256:9f…"    # the server's certificate: anything else is refused
//!
//! [groups]
//! web = ["web1", "web2", "10.0.0.7:7900"]
//! all = ["@web", "db1"]         # `@NAME` includes another group
//! ```
//!
//! Every client command resolves its TARGET here first ([`ClientConfig::resolve`]);
//! a name that is no alias is a host name or address. Precedence, as in
//! ssh: the command line (`-p`, `USER@`, `--key`, `--fingerprint`), then the
//! alias, then the defaults. Unknown settings are errors, so a typo never
//! silently drops a fingerprint pin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use super::known_servers::parse_fingerprint;
use crate::target::{HostRef, HostSpec, Target, DEFAULT_PORT};

/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "SKIFF_CONFIG";

/// Why the config file could not be used (a local validation error: exit 2).
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("client config {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or ill-typed settings.
    #[error("client config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line when TOML knows it.
        message: String,
    },
    /// A group that does not exist, or that includes itself.
    #[error("{0}")]
    Group(String),
}

/// One `[hosts.NAME]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostAlias {
    /// Where the server is: any TARGET form without `USER@`; default: the
    /// alias name itself.
    pub address: Option<String>,
    /// TCP port, unless the address or the command line gives one.
    pub port: Option<u16>,
    /// The user to authenticate as (its line of the key file).
    pub user: Option<String>,
    /// The key file for this host (`~/` is the home directory; relative
    /// paths are relative to the config file).
    pub key: Option<PathBuf>,
    /// The expected certificate fingerprint, `SHA256:HEX`.
    pub fingerprint: Option<String>,
}

/// The parsed client config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Host aliases by name.
    #[serde(default)]
    pub hosts: BTreeMap<String, HostAlias>,
    /// Groups of hosts (aliases, addresses, or `@OTHER` groups) by name.
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
}

/// A server resolved against the config: where to connect and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The host as the user named it (alias or address), for messages.
    pub name: String,
    /// Where to connect.
    pub target: Target,
    /// The user to authenticate as; `None`: the key file's first line.
    pub user: Option<String>,
    /// The alias's key file, if it names one.
    pub key_file: Option<PathBuf>,
    /// The alias's certificate pin (normalized `SHA256:hex`), if any.
    pub fingerprint: Option<String>,
}

/// Where the config is read from: `$SKIFF_CONFIG`, else
/// `~/.config/skiff/config.toml`.
pub fn default_path() -> (PathBuf, bool) {
    match std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
        Some(p) => (PathBuf::from(p), true),
        None => (crate::keys::config_dir().join("config.toml"), false),
    }
}

impl ClientConfig {
    /// Reads the config from [`default_path`]. A missing default file is an
    /// empty config; a missing `$SKIFF_CONFIG` file is an error (it was
    /// asked for).
    pub fn load_default() -> Result<ClientConfig, ConfigError> {
        let (path, explicit) = default_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => ClientConfig::parse(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(ClientConfig::default())
            }
            Err(source) => Err(ConfigError::Io { path, source }),
        }
    }

    /// Parses and checks config text read from `path` (used to resolve
    /// relative key paths and in messages).
    pub fn parse(path: &Path, text: &str) -> Result<ClientConfig, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut cfg: ClientConfig =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for (name, alias) in &mut cfg.hosts {
            let ctx = |m: String| invalid(format!("[hosts.{name}]: {m}"));
            if let Some(addr) = &alias.address {
                let spec: HostSpec = addr.parse().map_err(ctx)?;
                if spec.user.is_some() {
                    return Err(ctx(format!(
                        "address {addr:?} holds a user: write it as user = \"…\""
                    )));
                }
            }
            if let Some(user) = &alias.user {
                crate::keys::check_user_name(user).map_err(ctx)?;
            }
            if let Some(fp) = &alias.fingerprint {
                alias.fingerprint = Some(parse_fingerprint(fp).map_err(ctx)?);
            }
            if let Some(key) = &alias.key {
                alias.key = Some(expand_path(base, key));
            }
        }
        for (name, members) in &cfg.groups {
            for m in members {
                if m.strip_prefix('@').is_none() {
                    m.parse::<HostSpec>()
                        .map_err(|e| invalid(format!("[groups] {name}: {e}")))?;
                }
            }
        }
        Ok(cfg)
    }

    /// Resolves a TARGET: an alias's settings under whatever the command
    /// line said (`port` is `-p`).
    pub fn resolve(&self, spec: &HostSpec, port: Option<u16>) -> Endpoint {
        let name = spec.name();
        match &spec.host {
            HostRef::Url(t) => Endpoint {
                name,
                target: with_port(t.clone(), port),
                user: spec.user.clone(),
                key_file: None,
                fingerprint: None,
            },
            HostRef::Named {
                name: host,
                port: written,
            } => {
                let alias = self.hosts.get(host);
                let port = port.or(*written);
                let Some(alias) = alias else {
                    return Endpoint {
                        name,
                        target: Target::Tls {
                            host: host.clone(),
                            port: port.unwrap_or(DEFAULT_PORT),
                        },
                        user: spec.user.clone(),
                        key_file: None,
                        fingerprint: None,
                    };
                };
                let port = port.or(alias.port);
                // Checked in `parse`; a bad address cannot reach here.
                let addr: HostSpec = alias
                    .address
                    .as_deref()
                    .unwrap_or(host)
                    .parse()
                    .unwrap_or_else(|_| spec.clone());
                let target = match addr.host {
                    HostRef::Url(t) => with_port(t, port),
                    HostRef::Named {
                        name: h,
                        port: addr_port,
                    } => Target::Tls {
                        host: h,
                        port: port.or(addr_port).unwrap_or(DEFAULT_PORT),
                    },
                };
                Endpoint {
                    name,
                    target,
                    user: spec.user.clone().or_else(|| alias.user.clone()),
                    key_file: alias.key.clone(),
                    fingerprint: alias.fingerprint.clone(),
                }
            }
        }
    }

    /// The members of group `name`, with `@OTHER` members expanded (each
    /// host once, in order of first appearance).
    pub fn group(&self, name: &str) -> Result<Vec<HostSpec>, ConfigError> {
        let mut out: Vec<HostSpec> = Vec::new();
        self.expand_group(name, &mut Vec::new(), &mut out)?;
        Ok(out)
    }

    fn expand_group(
        &self,
        name: &str,
        stack: &mut Vec<String>,
        out: &mut Vec<HostSpec>,
    ) -> Result<(), ConfigError> {
        if stack.iter().any(|s| s == name) {
            return Err(ConfigError::Group(format!(
                "group {name:?} includes itself (via {})",
                stack.join(" -> ")
            )));
        }
        let members = self.groups.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.groups.keys().map(String::as_str).collect();
            ConfigError::Group(if known.is_empty() {
                format!("no group {name:?}: the client config defines no [groups]")
            } else {
                format!("no group {name:?} (known: {})", known.join(", "))
            })
        })?;
        stack.push(name.to_string());
        for m in members {
            match m.strip_prefix('@') {
                Some(inner) => self.expand_group(inner, stack, out)?,
                None => {
                    let spec: HostSpec = m.parse().map_err(ConfigError::Group)?;
                    if !out.contains(&spec) {
                        out.push(spec);
                    }
                }
            }
        }
        stack.pop();
        Ok(())
    }
}

/// Applies a port override to a TCP target; Unix sockets have no port.
fn with_port(t: Target, port: Option<u16>) -> Target {
    match (t, port) {
        (Target::Tls { host, .. }, Some(port)) => Target::Tls { host, port },
        (Target::Plain { host, .. }, Some(port)) => Target::Plain { host, port },
        (t, _) => t,
    }
}

/// `~/x` is under the home directory; a relative path is relative to `base`.
fn expand_path(base: &Path, p: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~") {
        return crate::keys::home_dir().join(rest);
    }
    if p.is_relative() {
        return base.join(p);
    }
    p.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "SHA256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn cfg(text: &str) -> Result<ClientConfig, ConfigError> {
        ClientConfig::parse(Path::new("/etc/skiff/config.toml"), text)
    }

    fn spec(s: &str) -> HostSpec {
        s.parse().unwrap()
    }

    #[test]
    fn resolves_aliases_with_command_line_precedence() {
        let c = cfg(&format!(
            r#"
            [hosts.web]
            address = "10.0.0.5"
            port = 7000
            user = "deploy"
            key = "keys/web"
            fingerprint = "{}"
            [hosts.sock]
            address = "unix:///run/s.sock"
            [hosts.v6]
            address = "[::1]:9"
            "#,
            FP.to_uppercase().replace("SHA256", "sha256")
        ))
        .unwrap();
        let e = c.resolve(&spec("web"), None);
        assert_eq!(
            e.target,
            Target::Tls {
                host: "10.0.0.5".into(),
                port: 7000
            }
        );
        assert_eq!(e.user.as_deref(), Some("deploy"));
        assert_eq!(e.key_file, Some(PathBuf::from("/etc/skiff/keys/web")));
        assert_eq!(e.fingerprint.as_deref(), Some(FP));
        let e = c.resolve(&spec("bob@web:8000"), None);
        assert_eq!(e.user.as_deref(), Some("bob"));
        assert_eq!(e.target.host_port().unwrap(), "10.0.0.5:8000");
        let e = c.resolve(&spec("web:8000"), Some(9000));
        assert_eq!(e.target.host_port().unwrap(), "10.0.0.5:9000");
        assert_eq!(
            c.resolve(&spec("sock"), Some(1)).target,
            Target::Unix("/run/s.sock".into())
        );
        assert_eq!(
            c.resolve(&spec("v6"), None).target.host_port().unwrap(),
            "[::1]:9"
        );
        let plain = c.resolve(&spec("other"), None);
        assert_eq!(plain.target.host_port().unwrap(), "other:7878");
        assert_eq!(plain.fingerprint, None);
    }

    #[test]
    fn rejects_bad_configs() {
        for bad in [
            "[hosts.a]\nadress = \"x\"",
            "[hosts.a]\nport = 70000",
            "[hosts.a]\nfingerprint = \"SHA256:12\"",
            "[hosts.a]\naddress = \"bob@x\"",
            "[hosts.a]\nuser = \"b/ob\"",
            "[groups]\nweb = [\"h:notaport\"]",
            "not toml",
        ] {
            assert!(cfg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expands_groups() {
        let c = cfg(r#"
            [groups]
            web = ["w1", "w2"]
            all = ["@web", "db", "w1"]
            loop = ["@loop2"]
            loop2 = ["@loop"]
            "#)
        .unwrap();
        let names: Vec<String> = c
            .group("all")
            .unwrap()
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(names, ["w1", "w2", "db"]);
        assert!(c.group("loop").unwrap_err().to_string().contains("itself"));
        assert!(c.group("nope").unwrap_err().to_string().contains("known"));
    }
}
