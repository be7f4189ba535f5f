//! The authentication handshake (DESIGN section 3). Nonces and proofs are
//! standard base64 with padding.

use serde::{Deserialize, Serialize};

/// Client to server: who I am and my nonce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version; 1.
    pub v: u32,
    /// User name, as in the server's users file.
    pub user: String,
    /// base64 of 32 random bytes.
    pub nonce: String,
}

/// Server to client: my nonce and my proof that I know the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// base64 of 32 random bytes.
    pub nonce: String,
    /// base64 of HMAC-SHA256(K, "skiff/1 server" | cb | cn | sn).
    pub proof: String,
}

/// Client to server: my proof that I know the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    /// base64 of HMAC-SHA256(K, "skiff/1 client" | cb | cn | sn).
    pub proof: String,
}

/// Server to client: authenticated; services may now be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Welcome {
    /// Server software version, informational.
    #[serde(default)]
    pub server: String,
    /// Operations this server offers (e.g. without "exec" under `--no-exec`).
    #[serde(default)]
    pub services: Vec<String>,
}

crate::messages!(Hello => "hello", Challenge => "challenge", Auth => "auth", Welcome => "welcome");
