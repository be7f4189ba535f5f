//! The whole-file checksum that closes every transfer.

use sha2::Digest;
use skiff_wire::message::files::HashAlg;

/// A running checksum of one of the algorithms the protocol offers.
pub enum Checksum {
    /// BLAKE3 (default).
    Blake3(Box<blake3::Hasher>),
    /// SHA-256 (for standard-library-only clients).
    Sha256(Box<sha2::Sha256>),
}

impl Checksum {
    /// A fresh checksum of algorithm `alg`.
    pub fn new(alg: HashAlg) -> Checksum {
        match alg {
            HashAlg::Blake3 => Checksum::Blake3(Box::new(blake3::Hasher::new())),
            HashAlg::Sha256 => Checksum::Sha256(Box::new(sha2::Sha256::new())),
        }
    }

    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Checksum::Blake3(h) => {
                h.update(data);
            }
            Checksum::Sha256(h) => h.update(data),
        }
    }

    /// The lowercase hex digest of everything added.
    pub fn finish_hex(self) -> String {
        match self {
            Checksum::Blake3(h) => h.finalize().to_hex().to_string(),
            Checksum::Sha256(h) => hex::encode(h.finalize()),
        }
    }
}

/// Compares two hex digests in constant time (they are not secrets, but a
/// habit costs nothing).
pub fn digests_match(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        let mut b = Checksum::new(HashAlg::Blake3);
        b.update(b"abc");
        assert_eq!(
            b.finish_hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        let mut s = Checksum::new(HashAlg::Sha256);
        s.update(b"abc");
        assert_eq!(
            s.finish_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(digests_match("ab", "ab"));
        assert!(!digests_match("ab", "ac"));
    }
}
