//! Trust on first use: each server's certificate fingerprint is pinned in
//! `~/.config/skiff/known_servers` (`HOST:PORT SHA256:HEX` per line), like
//! ssh's known_hosts. A changed certificate stops the client.
//!
//! The check runs right after TLS, before the key proofs; the pin is only
//! written after the server has proved it knows the user's key (after
//! `welcome`), so a man in the middle on first contact, which fails the
//! proofs, never gets its certificate pinned.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use super::ClientError;
use crate::session::tls::fingerprint;

/// What the known-servers file says about a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinState {
    /// The certificate matches the pin.
    Known,
    /// No pin yet: [`pin`] it once the server has authenticated.
    New,
}

/// Whether a read error means "no such file" (also when a parent is not a
/// directory): no pins yet.
fn absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
    )
}

/// Checks `cert` against the pin for `host_port`; a different pinned
/// certificate is [`ClientError::CertificateChanged`].
pub fn check(file: &Path, host_port: &str, cert: &[u8]) -> Result<PinState, ClientError> {
    let seen = fingerprint(cert);
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if absent(&e) => String::new(),
        Err(source) => {
            return Err(ClientError::KnownServers {
                file: file.to_path_buf(),
                source,
            })
        }
    };
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if let (Some(name), Some(pinned)) = (parts.next(), parts.next()) {
            if name == host_port {
                if pinned == seen {
                    return Ok(PinState::Known);
                }
                return Err(ClientError::CertificateChanged {
                    target: host_port.to_string(),
                    pinned: pinned.to_string(),
                    seen,
                    file: file.to_path_buf(),
                });
            }
        }
    }
    Ok(PinState::New)
}

/// Records `cert` as the certificate of `host_port`. The caller reports a
/// failure (the connection itself may go on: the key proofs still hold).
pub fn pin(file: &Path, host_port: &str, cert: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)?;
    writeln!(f, "{host_port} {}", fingerprint(cert))?;
    f.sync_all()
}

/// One line of the known-servers file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownServer {
    /// `HOST:PORT` (IPv6 in brackets) as the client connected to it.
    pub host_port: String,
    /// `SHA256:HEX`.
    pub fingerprint: String,
}

/// Every pin in `file` (none when it does not exist).
pub fn list(file: &Path) -> std::io::Result<Vec<KnownServer>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if absent(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some(h), Some(fp)) if !h.starts_with('#') => Some(KnownServer {
                    host_port: h.to_string(),
                    fingerprint: fp.to_string(),
                }),
                _ => None,
            }
        })
        .collect())
}

/// Removes the pins `matches` selects; returns the removed ones. The file
/// is replaced atomically (a new file renamed over it, mode 0600).
pub fn remove(file: &Path, matches: impl Fn(&str) -> bool) -> std::io::Result<Vec<KnownServer>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if absent(&e) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut kept = String::new();
    let mut removed = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(h), Some(fp)) if !h.starts_with('#') && matches(h) => {
                removed.push(KnownServer {
                    host_port: h.to_string(),
                    fingerprint: fp.to_string(),
                });
            }
            _ => {
                kept.push_str(line);
                kept.push('\n');
            }
        }
    }
    if removed.is_empty() {
        return Ok(removed);
    }
    let tmp = file.with_extension("skiff-tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(kept.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, file)?;
    Ok(removed)
}

/// The host part of a pin's `HOST:PORT` (brackets of IPv6 removed).
pub fn host_of(host_port: &str) -> &str {
    match host_port.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => host_port,
    }
}

/// Normalizes a fingerprint as written by a user (`SHA256:HEX`, any case,
/// `:` between hex pairs allowed) to the form skiff prints.
pub fn parse_fingerprint(s: &str) -> Result<String, String> {
    let hex_part = s
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("sha256:"))
        .map(|_| &s[7..])
        .ok_or_else(|| {
            format!("fingerprint {s:?} must look like SHA256:HEX (as `skiff serve` prints it)")
        })?;
    let hex_digits: String = hex_part.chars().filter(|c| *c != ':').collect();
    if hex_digits.len() != 64 || !hex_digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "fingerprint {s:?} must be SHA256: followed by 64 hex digits"
        ));
    }
    Ok(format!("SHA256:{}", hex_digits.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_then_detects_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known");
        assert_eq!(check(&file, "h:1", b"cert-a").unwrap(), PinState::New);
        pin(&file, "h:1", b"cert-a").unwrap();
        assert_eq!(check(&file, "h:1", b"cert-a").unwrap(), PinState::Known);
        assert_eq!(check(&file, "h:2", b"cert-b").unwrap(), PinState::New);
        let err = check(&file, "h:1", b"cert-b").unwrap_err();
        assert!(matches!(err, ClientError::CertificateChanged { .. }));
        pin(&file, "[::1]:1", b"cert-c").unwrap();
        assert_eq!(list(&file).unwrap().len(), 2);
        let gone = remove(&file, |h| host_of(h) == "::1").unwrap();
        assert_eq!(gone.len(), 1);
        assert_eq!(list(&file).unwrap()[0].host_port, "h:1");
        assert!(remove(&file, |_| false).unwrap().is_empty());
    }

    #[test]
    fn pin_failure_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "x").unwrap();
        assert!(pin(&blocker.join("known"), "h:1", b"c").is_err());
    }

    #[test]
    fn normalizes_fingerprints() {
        let hex = "AB".repeat(32);
        assert_eq!(
            parse_fingerprint(&format!("sha256:{hex}")).unwrap(),
            format!("SHA256:{}", hex.to_lowercase())
        );
        assert!(parse_fingerprint("MD5:00").is_err());
        assert!(parse_fingerprint("SHA256:zz").is_err());
    }
}
