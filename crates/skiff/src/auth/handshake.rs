//! The handshake's proofs (PROTOCOL.md section 3.4), free of I/O.
//!
//! ```text
//! server proof = HMAC-SHA256(K, "skiff/1 server" | cb | cn | sn)
//! client proof = HMAC-SHA256(K, "skiff/1 client" | cb | cn | sn)
//! ```
//! `cb` is the SHA-256 of the server certificate's DER (RFC 5929
//! `tls-server-end-point`), or 32 zero bytes without TLS; `cn` and `sn` are
//! the client's and server's 32-byte nonces. Binding the proofs to `cb`
//! makes a relay that terminates TLS with its own certificate fail: the
//! client computes a different `cb` than the server.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::keys::Key;

/// Protocol version in `hello`.
pub const VERSION: u32 = 1;
/// Label of the server's proof.
pub const SERVER_LABEL: &[u8] = b"skiff/1 server";
/// Label of the client's proof.
pub const CLIENT_LABEL: &[u8] = b"skiff/1 client";
/// Length of nonces, bindings and proofs.
pub const LEN: usize = 32;

/// 32 bytes: a nonce, a channel binding or a proof.
pub type Block = [u8; LEN];

/// The channel binding of a certificate: SHA-256 of its DER.
pub fn channel_binding(cert_der: &[u8]) -> Block {
    Sha256::digest(cert_der).into()
}

/// The binding used on transports without TLS.
pub const NO_BINDING: Block = [0u8; LEN];

/// A fresh random nonce.
pub fn nonce() -> Block {
    let mut n = [0u8; LEN];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

fn mac(key: &Key, label: &[u8], cb: &Block, cn: &Block, sn: &Block) -> Hmac<Sha256> {
    let mut m = super::keyed(key);
    m.update(label);
    m.update(cb);
    m.update(cn);
    m.update(sn);
    m
}

/// Computes a proof.
pub fn proof(key: &Key, label: &[u8], cb: &Block, cn: &Block, sn: &Block) -> Block {
    mac(key, label, cb, cn, sn).finalize().into_bytes().into()
}

/// Checks a received proof in constant time (any length is accepted and
/// simply fails).
pub fn verify(key: &Key, label: &[u8], cb: &Block, cn: &Block, sn: &Block, got: &[u8]) -> bool {
    mac(key, label, cb, cn, sn).verify_slice(got).is_ok()
}

/// Standard base64 with padding.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Decodes a base64 nonce or proof; anything not exactly 32 bytes is `None`.
pub fn unb64(s: &str) -> Option<Block> {
    B64.decode(s).ok()?.try_into().ok()
}

/// Decodes a received proof for [`verify`]: malformed base64 becomes an
/// empty slice, which simply fails verification (no separate error path a
/// peer could tell apart).
pub fn proof_bytes(s: &str) -> Vec<u8> {
    B64.decode(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector published in docs/HANDSHAKE-VECTORS.md, computed
    /// independently with Python's `hmac` module.
    #[test]
    fn matches_published_vector() {
        let key = Key::from_bytes(core::array::from_fn(|i| i as u8));
        let cb: Block = core::array::from_fn(|i| 0x40 + i as u8);
        let cn: Block = [0x11; LEN];
        let sn: Block = [0x22; LEN];
        assert_eq!(
            hex::encode(proof(&key, SERVER_LABEL, &cb, &cn, &sn)),
            include_str!("../../../../docs/vectors/server_proof.hex").trim()
        );
        assert_eq!(
            hex::encode(proof(&key, CLIENT_LABEL, &cb, &cn, &sn)),
            include_str!("../../../../docs/vectors/client_proof.hex").trim()
        );
        assert_eq!(
            hex::encode(proof(&key, CLIENT_LABEL, &NO_BINDING, &cn, &sn)),
            include_str!("../../../../docs/vectors/client_proof_nobinding.hex").trim()
        );
        assert_eq!(
            hex::encode(proof(&key, SERVER_LABEL, &NO_BINDING, &cn, &sn)),
            include_str!("../../../../docs/vectors/server_proof_nobinding.hex").trim()
        );
        // The base64 forms as they travel in `challenge` and `auth`.
        assert_eq!(
            b64(&proof(&key, SERVER_LABEL, &cb, &cn, &sn)),
            "g78eCTM9/apY6Lj9eItICdJC6CyUXrTb1UgoQpziMPo="
        );
        assert_eq!(
            b64(&proof(&key, CLIENT_LABEL, &cb, &cn, &sn)),
            "2i4nv2GXzTvtR3obs1+xgXjlPSeF05fJvch+RKkRAP8="
        );
        assert_eq!(unb64(&b64(&cn)), Some(cn));
    }

    #[test]
    fn verify_rejects_wrong_proofs() {
        let key = Key::generate();
        let (cn, sn) = (nonce(), nonce());
        let p = proof(&key, CLIENT_LABEL, &NO_BINDING, &cn, &sn);
        assert!(verify(&key, CLIENT_LABEL, &NO_BINDING, &cn, &sn, &p));
        assert!(!verify(&key, SERVER_LABEL, &NO_BINDING, &cn, &sn, &p));
        assert!(!verify(&key, CLIENT_LABEL, &[1; LEN], &cn, &sn, &p));
        assert!(!verify(
            &Key::generate(),
            CLIENT_LABEL,
            &NO_BINDING,
            &cn,
            &sn,
            &p
        ));
        assert!(!verify(&key, CLIENT_LABEL, &NO_BINDING, &cn, &sn, &p[..31]));
    }
}
