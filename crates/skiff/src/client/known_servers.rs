//! Trust on first use: each server's certificate fingerprint is pinned in
//! `~/.config/skiff/known_servers` (`HOST:PORT SHA256:HEX` per line), like
//! ssh's known_hosts. A changed certificate stops the client.
//!
//! The check runs right after TLS, before the key proofs; the pin is only
//! written after the server has proved it knows the user's key (after
//! `welcome`), so a man in the middle on first contact, which fails the
//! proofs, never gets its certificate pinned.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
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

/// Checks `cert` against the pin for `host_port`; a different pinned
/// certificate is [`ClientError::CertificateChanged`].
pub fn check(file: &Path, host_port: &str, cert: &[u8]) -> Result<PinState, ClientError> {
    let seen = fingerprint(cert);
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(ClientError::Local(format!("{}: {e}", file.display()))),
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

/// Records `cert` as the certificate of `host_port`. Pinning is a
/// convenience on top of the key proofs: failing to write the file must not
/// stop the connection, so errors are ignored.
pub fn pin(file: &Path, host_port: &str, cert: &[u8]) {
    if let Some(parent) = file.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)
    {
        let _ = writeln!(f, "{host_port} {}", fingerprint(cert));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_then_detects_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known");
        assert_eq!(check(&file, "h:1", b"cert-a").unwrap(), PinState::New);
        pin(&file, "h:1", b"cert-a");
        assert_eq!(check(&file, "h:1", b"cert-a").unwrap(), PinState::Known);
        assert_eq!(check(&file, "h:2", b"cert-b").unwrap(), PinState::New);
        let err = check(&file, "h:1", b"cert-b").unwrap_err();
        assert!(matches!(err, ClientError::CertificateChanged { .. }));
    }
}
