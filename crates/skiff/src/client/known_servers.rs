//! Trust on first use: each server's certificate fingerprint is pinned in
//! `~/.config/skiff/known_servers` (`HOST:PORT SHA256:HEX` per line), like
//! ssh's known_hosts. A changed certificate stops the client.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::ClientError;
use crate::session::tls::fingerprint;

/// Checks `cert` against the pin for `host_port`, pinning it if new.
pub fn check_and_pin(file: &Path, host_port: &str, cert: &[u8]) -> Result<(), ClientError> {
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
                    return Ok(());
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
    // Pinning is a convenience on top of the key proofs: failing to record
    // the pin must not stop the connection.
    if let Some(parent) = file.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)
    {
        let _ = writeln!(f, "{host_port} {seen}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_then_detects_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("known");
        check_and_pin(&file, "h:1", b"cert-a").unwrap();
        check_and_pin(&file, "h:1", b"cert-a").unwrap();
        check_and_pin(&file, "h:2", b"cert-b").unwrap();
        let err = check_and_pin(&file, "h:1", b"cert-b").unwrap_err();
        assert!(matches!(err, ClientError::CertificateChanged { .. }));
    }
}
