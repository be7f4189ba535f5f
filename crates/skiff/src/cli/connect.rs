//! Shared by every client command: the key option and connecting.

use std::path::PathBuf;

use crate::client::{self, Client, ClientError, ConnectOptions};
use crate::keys::{self, UserKey};
use crate::target::Target;

/// `--key FILE`, defaulting to `$SKIFF_KEY_FILE`, then `~/.config/skiff/key`.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyArg {
    /// Client key file (one line `NAME BASE64KEY`).
    #[arg(long, value_name = "FILE", env = "SKIFF_KEY_FILE")]
    pub key: Option<PathBuf>,
}

impl KeyArg {
    /// Reads the key file.
    pub fn load(&self) -> Result<UserKey, ClientError> {
        let path = self.key.clone().unwrap_or_else(keys::default_key_path);
        if !path.exists() {
            return Err(ClientError::Key(keys::KeyError::Io {
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no key file: start `skiff serve` once on this machine, or get a key line from the server's admin (`skiff keygen`) and save it there with mode 0600",
                ),
            }));
        }
        Ok(keys::load_key(&path)?)
    }
}

/// Parses a TARGET argument (clap value parser).
pub fn parse_target(s: &str) -> Result<Target, String> {
    s.parse()
}

/// Loads the key and opens an authenticated session.
pub async fn open(target: &Target, key: &KeyArg) -> Result<Client, ClientError> {
    let key = key.load()?;
    client::connect(target, &key, &ConnectOptions::default()).await
}
