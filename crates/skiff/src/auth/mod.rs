//! Keyed MACs: everything skiff computes with a user's key.
//!
//! Both sides of the session handshake ([`handshake`]: the server's and the
//! client's proofs, PROTOCOL.md section 3.4) and both directions of UDP ping
//! ([`udp`]: the datagram tags, PROTOCOL.md section 6.2) are HMAC-SHA256
//! under the 32-byte user key. The MAC is built in one place (the private `keyed` module)
//! and every check is constant-time (`verify_slice`).

pub mod handshake;
pub mod udp;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::keys::Key;

/// HMAC-SHA256 keyed with a user's key, ready for `update`.
fn keyed(key: &Key) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; 32 bytes cannot fail.
    <Hmac<Sha256> as Mac>::new_from_slice(key.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}
