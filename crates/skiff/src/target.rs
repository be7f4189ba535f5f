//! Where a client connects and what it names there.
//!
//! Two grammars live here, shared by every client command (and by `sync`):
//! - a TARGET names a server: `[USER@]HOST[:PORT]`, `[USER@][IPv6]:PORT`,
//!   a bare IPv6 address, an alias from the client config, or a URL
//!   (`tcp://`, `tcp+plain://`, `unix://`). [`HostSpec`] is that, as
//!   written; the client config turns it into a [`Target`] plus the user,
//!   key and fingerprint to use.
//! - a copy location (`cp`, `sync`) is local or remote in the style of scp:
//!   `[USER@]HOST:PATH`, `[USER@][IPv6]:PATH`,
//!   `skiff://[USER@]HOST[:PORT]/PATH`, `-` for stdin/stdout, anything
//!   else a local path (a local name with a `:` is written `./name`).
//!   [`Location::parse`] decides.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The default TCP port.
pub const DEFAULT_PORT: u16 = 7878;

/// A server address as the user wrote it (DESIGN section 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `tcp://HOST:PORT` or plain `HOST[:PORT]`: TLS 1.3.
    Tls {
        /// Host name or IP (without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// `tcp+plain://HOST:PORT`: no TLS (loopback only on the server side).
    Plain {
        /// Host name or IP (without brackets).
        host: String,
        /// TCP port.
        port: u16,
    },
    /// `unix:///PATH`: a Unix socket, no TLS.
    Unix(PathBuf),
}

impl Target {
    /// Whether the transport is TLS.
    pub fn uses_tls(&self) -> bool {
        matches!(self, Target::Tls { .. })
    }

    /// `host:port` for connecting (IPv6 in brackets).
    pub fn host_port(&self) -> Option<String> {
        match self {
            Target::Tls { host, port } | Target::Plain { host, port } => {
                Some(if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                })
            }
            Target::Unix(_) => None,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tls { .. } => write!(f, "tcp://{}", self.host_port().unwrap_or_default()),
            Target::Plain { .. } => {
                write!(f, "tcp+plain://{}", self.host_port().unwrap_or_default())
            }
            Target::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

/// Splits `HOST[:PORT]` / `[V6]:PORT` / `[V6]` / bare `V6`.
pub fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let parse_port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("invalid port {p:?} in {s:?}"))
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("missing ']' in {s:?}"))?;
        let port = match after {
            "" => default_port,
            p => parse_port(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("expected ':PORT' after ']' in {s:?}"))?,
            )?,
        };
        return Ok((host.to_string(), port));
    }
    match s.matches(':').count() {
        0 => Ok((s.to_string(), default_port)),
        1 => {
            let (h, p) = s.split_once(':').unwrap_or((s, ""));
            Ok((h.to_string(), parse_port(p)?))
        }
        _ => Ok((s.to_string(), default_port)), // a bare IPv6 address
    }
}

impl FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty target".to_string());
        }
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest)) => (scheme, rest),
            None => ("tcp", s),
        };
        let host_port = |rest: &str| {
            let (host, port) = split_host_port(rest, DEFAULT_PORT)?;
            if host.is_empty() {
                return Err(format!("no host in {s:?}"));
            }
            Ok((host, port))
        };
        match scheme {
            "tcp" => host_port(rest).map(|(host, port)| Target::Tls { host, port }),
            "tcp+plain" => host_port(rest).map(|(host, port)| Target::Plain { host, port }),
            "unix" if !rest.is_empty() => Ok(Target::Unix(PathBuf::from(rest))),
            "unix" => Err(format!("no socket path in {s:?}")),
            other => Err(format!(
                "unknown scheme {other:?} in {s:?} (use tcp://, tcp+plain:// or unix://)"
            )),
        }
    }
}

/// A server as the user wrote it, before the client config resolves
/// aliases: `[USER@]HOST[:PORT]` or `[USER@]URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// The `USER@` part: selects the line of the key file (and overrides an
    /// alias's user).
    pub user: Option<String>,
    /// The server.
    pub host: HostRef,
}

/// The server part of a [`HostSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRef {
    /// A host name, an IP address or an alias from the client config
    /// (brackets of an IPv6 address removed), with the port if one was
    /// written. TLS unless an alias says otherwise.
    Named {
        /// Name, address or alias.
        name: String,
        /// `:PORT`, when given.
        port: Option<u16>,
    },
    /// An explicit URL (`tcp://`, `tcp+plain://`, `unix://`): never an alias.
    Url(Target),
}

impl HostSpec {
    /// The name used in messages and to look up aliases: the host or alias
    /// as written, or the URL.
    pub fn name(&self) -> String {
        match &self.host {
            HostRef::Named { name, .. } => name.clone(),
            HostRef::Url(t) => t.to_string(),
        }
    }
}

impl fmt::Display for HostSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        match &self.host {
            HostRef::Named { name, port } => {
                if name.contains(':') {
                    write!(f, "[{name}]")?;
                } else {
                    f.write_str(name)?;
                }
                match port {
                    Some(p) => write!(f, ":{p}"),
                    None => Ok(()),
                }
            }
            HostRef::Url(t) => write!(f, "{t}"),
        }
    }
}

/// Splits `USER@REST` at the last `@` (user names may hold `@`; host names
/// never do). An empty user is an error.
fn split_user(s: &str) -> Result<(Option<String>, &str), String> {
    match s.rsplit_once('@') {
        None => Ok((None, s)),
        Some(("", _)) => Err(format!("empty user name in {s:?}")),
        Some((user, rest)) => {
            crate::keys::check_user_name(user)?;
            Ok((Some(user.to_string()), rest))
        }
    }
}

impl FromStr for HostSpec {
    type Err = String;

    /// Parses a TARGET argument.
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some((scheme, rest)) = s.split_once("://") {
            // `tcp://alice@host:1` carries the user inside the URL.
            let (user, rest) = if scheme == "unix" {
                (None, rest)
            } else {
                split_user(rest)?
            };
            let target: Target = format!("{scheme}://{rest}").parse()?;
            return Ok(HostSpec {
                user,
                host: HostRef::Url(target),
            });
        }
        let (user, rest) = split_user(s)?;
        if rest.is_empty() {
            return Err(format!("no host in {s:?}"));
        }
        let (name, port) = split_host_port_opt(rest)?;
        if name.is_empty() {
            return Err(format!("no host in {s:?}"));
        }
        Ok(HostSpec {
            user,
            host: HostRef::Named { name, port },
        })
    }
}

/// [`split_host_port`] without a default: the port only when written.
fn split_host_port_opt(s: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = split_host_port(s, 0)?;
    Ok((host, (port != 0).then_some(port)))
}

/// A path on a server, as `cp` and `sync` name one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePath {
    /// The server.
    pub host: HostSpec,
    /// The path, relative to the server's root (`""` and `/` are the root);
    /// may hold glob characters for the server to expand.
    pub path: String,
}

/// One SRC or DST of `cp` (or `sync`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A path on this machine.
    Local(PathBuf),
    /// `-`: standard input as a source, standard output as a destination.
    Stdio,
    /// A path on a server.
    Remote(RemotePath),
}

impl Location {
    /// Parses a copy location the way scp does: `skiff://…` and
    /// `[USER@]HOST:PATH` / `[USER@][V6]:PATH` are remote; `-` is stdio; a
    /// path that starts with `/` or `.`, has no `:`, or has a `/` before
    /// its first `:` is local.
    pub fn parse(s: &str) -> Result<Location, String> {
        if s.is_empty() {
            return Err("empty path".to_string());
        }
        if s == "-" {
            return Ok(Location::Stdio);
        }
        if let Some(rest) = s.strip_prefix("skiff://") {
            return parse_skiff_url(s, rest).map(Location::Remote);
        }
        if s.starts_with('/') || s.starts_with('.') {
            return Ok(Location::Local(PathBuf::from(s)));
        }
        // The user part ends at the last `@` before the host part.
        let host_start = match (s.find(':'), s.find('[')) {
            (_, Some(b)) if s[..b].chars().all(|c| c != ':' && c != '/') => b,
            (Some(c), _) => s[..c].rfind('@').map_or(0, |a| a + 1),
            (None, _) => return Ok(Location::Local(PathBuf::from(s))),
        };
        let (user_part, hostpath) = s.split_at(host_start);
        let (host, path) = if let Some(inner) = hostpath.strip_prefix('[') {
            let Some((host, after)) = inner.split_once(']') else {
                return Ok(Location::Local(PathBuf::from(s)));
            };
            let Some(path) = after.strip_prefix(':') else {
                return Err(format!(
                    "{s:?}: an IPv6 address in a remote path is written [ADDR]:PATH"
                ));
            };
            (host, path)
        } else {
            match hostpath.split_once(':') {
                Some((host, path)) if !host.is_empty() && !host.contains('/') => (host, path),
                _ => return Ok(Location::Local(PathBuf::from(s))),
            }
        };
        if host.is_empty() {
            return Err(format!("no host in {s:?}"));
        }
        let user = match user_part.strip_suffix('@') {
            Some(u) => split_user(&format!("{u}@x"))?.0,
            None if user_part.is_empty() => None,
            None => return Ok(Location::Local(PathBuf::from(s))),
        };
        Ok(Location::Remote(RemotePath {
            host: HostSpec {
                user,
                host: HostRef::Named {
                    name: host.to_string(),
                    port: None,
                },
            },
            path: path.to_string(),
        }))
    }

    /// Whether this is a remote path.
    pub fn is_remote(&self) -> bool {
        matches!(self, Location::Remote(_))
    }
}

/// `skiff://[USER@]HOST[:PORT]/PATH` (after the scheme): the authority
/// ends at the first `/` outside brackets.
fn parse_skiff_url(whole: &str, rest: &str) -> Result<RemotePath, String> {
    let mut in_brackets = false;
    let end = rest
        .char_indices()
        .find(|&(_, c)| {
            match c {
                '[' => in_brackets = true,
                ']' => in_brackets = false,
                _ => {}
            }
            c == '/' && !in_brackets
        })
        .map_or(rest.len(), |(i, _)| i);
    let (authority, path) = rest.split_at(end);
    let host: HostSpec = authority.parse().map_err(|e| format!("{whole:?}: {e}"))?;
    Ok(RemotePath {
        host,
        path: path.strip_prefix('/').unwrap_or(path).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(host: &str, port: u16) -> Target {
        Target::Tls {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn parses_targets() {
        assert_eq!("localhost".parse(), Ok(tls("localhost", 7878)));
        assert_eq!("host:22".parse(), Ok(tls("host", 22)));
        assert_eq!("[::1]:9".parse(), Ok(tls("::1", 9)));
        assert_eq!("::1".parse(), Ok(tls("::1", 7878)));
        assert_eq!("tcp://10.0.0.1:5".parse(), Ok(tls("10.0.0.1", 5)));
        assert_eq!(
            "tcp+plain://127.0.0.1:5".parse(),
            Ok(Target::Plain {
                host: "127.0.0.1".into(),
                port: 5
            })
        );
        assert_eq!(
            "unix:///run/s.sock".parse(),
            Ok(Target::Unix("/run/s.sock".into()))
        );
        assert!("host:99999".parse::<Target>().is_err());
        assert!("ftp://x".parse::<Target>().is_err());
        assert!("unix://".parse::<Target>().is_err());
    }

    #[test]
    fn displays_as_url() {
        assert_eq!(tls("::1", 9).to_string(), "tcp://[::1]:9");
    }

    fn named(user: Option<&str>, name: &str, port: Option<u16>) -> HostSpec {
        HostSpec {
            user: user.map(str::to_string),
            host: HostRef::Named {
                name: name.into(),
                port,
            },
        }
    }

    fn remote(user: Option<&str>, name: &str, port: Option<u16>, path: &str) -> Location {
        Location::Remote(RemotePath {
            host: named(user, name, port),
            path: path.into(),
        })
    }

    #[test]
    fn parses_host_specs() {
        assert_eq!("web".parse(), Ok(named(None, "web", None)));
        assert_eq!("bob@web:9".parse(), Ok(named(Some("bob"), "web", Some(9))));
        assert_eq!("a@b@web".parse(), Ok(named(Some("a@b"), "web", None)));
        assert_eq!("[::1]:7".parse(), Ok(named(None, "::1", Some(7))));
        assert_eq!("bob@[::1]".parse(), Ok(named(Some("bob"), "::1", None)));
        assert_eq!("::1".parse(), Ok(named(None, "::1", None)));
        assert_eq!(
            "tcp://bob@h:5".parse(),
            Ok(HostSpec {
                user: Some("bob".into()),
                host: HostRef::Url(tls("h", 5)),
            })
        );
        assert_eq!(
            "unix:///a@b.sock".parse::<HostSpec>().map(|h| h.user),
            Ok(None)
        );
        assert!("@web".parse::<HostSpec>().is_err());
        assert!("bob@".parse::<HostSpec>().is_err());
        assert!("web:99999".parse::<HostSpec>().is_err());
        assert!("b/o@web".parse::<HostSpec>().is_err());
        assert_eq!(named(Some("u"), "::1", Some(3)).to_string(), "u@[::1]:3");
    }

    #[test]
    fn parses_locations() {
        let local = |p: &str| Location::Local(PathBuf::from(p));
        assert_eq!(Location::parse("-"), Ok(Location::Stdio));
        assert_eq!(Location::parse("file.txt"), Ok(local("file.txt")));
        assert_eq!(Location::parse("./a:b"), Ok(local("./a:b")));
        assert_eq!(Location::parse("/abs/a:b"), Ok(local("/abs/a:b")));
        assert_eq!(Location::parse("dir/a:b"), Ok(local("dir/a:b")));
        assert_eq!(Location::parse(":x"), Ok(local(":x")));
        assert_eq!(Location::parse("h:p/q"), Ok(remote(None, "h", None, "p/q")));
        assert_eq!(Location::parse("h:"), Ok(remote(None, "h", None, "")));
        assert_eq!(
            Location::parse("bob@h:/x"),
            Ok(remote(Some("bob"), "h", None, "/x"))
        );
        assert_eq!(
            Location::parse("h:a@b:c"),
            Ok(remote(None, "h", None, "a@b:c"))
        );
        assert_eq!(
            Location::parse("[::1]:logs/*.log"),
            Ok(remote(None, "::1", None, "logs/*.log"))
        );
        assert_eq!(
            Location::parse("bob@[fe80::1]:x"),
            Ok(remote(Some("bob"), "fe80::1", None, "x"))
        );
        assert!(Location::parse("[::1]x").is_err());
        assert_eq!(
            Location::parse("skiff://bob@h:99/a/b"),
            Ok(remote(Some("bob"), "h", Some(99), "a/b"))
        );
        assert_eq!(
            Location::parse("skiff://[::1]:5/x"),
            Ok(remote(None, "::1", Some(5), "x"))
        );
        assert_eq!(
            Location::parse("skiff://bob@[::1]/x/"),
            Ok(remote(Some("bob"), "::1", None, "x/"))
        );
        assert_eq!(
            Location::parse("skiff://h"),
            Ok(remote(None, "h", None, ""))
        );
        assert!(Location::parse("skiff:///x").is_err());
        assert!(Location::parse("").is_err());
    }
}
