//! Where a client connects: `HOST[:PORT]`, `[IPv6]:PORT`, or a URL.

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
}
