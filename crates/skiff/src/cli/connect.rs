//! Shared by every client command: the connection options, resolving a
//! TARGET through the client config, choosing the key, connecting, and
//! telling the user how the server was trusted.

use std::path::PathBuf;

use crate::client::config::{ClientConfig, Endpoint};
use crate::client::known_servers::parse_fingerprint;
use crate::client::{self, identity, Client, ClientError, ConnectOptions, Trust};
use crate::keys::UserKey;
use crate::target::HostSpec;

/// `--key FILE` and `--fingerprint`, on every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyArg {
    /// Client key file, lines `NAME BASE64KEY` (USER@HOST picks a line,
    /// else the first). Default: the host alias's `key`, then
    /// $SKIFF_KEY_FILE, then ~/.config/skiff/key.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Trust only a server whose certificate has this fingerprint (as
    /// `skiff serve` prints it), and pin it.
    #[arg(long, value_name = "SHA256:HEX", value_parser = parse_fingerprint)]
    pub fingerprint: Option<String>,
}

/// `-p PORT` (also `-P`, as scp spells it).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct PortArg {
    /// Server port (default 7878, or the host alias's port).
    #[arg(short = 'p', long = "port", short_alias = 'P', value_name = "PORT")]
    pub port: Option<u16>,
}

/// Parses a TARGET argument (clap value parser).
pub fn parse_target(s: &str) -> Result<HostSpec, String> {
    s.parse()
}

/// Resolves `spec` through the client config; `port` is `-p`.
pub fn resolve(spec: &HostSpec, port: Option<u16>) -> Result<Endpoint, ClientError> {
    Ok(ClientConfig::load_default()?.resolve(spec, port))
}

/// The key file for `endpoint`: `--key`, the alias's key, `$SKIFF_KEY_FILE`,
/// the default.
fn key_file(key: &KeyArg, endpoint: &Endpoint) -> PathBuf {
    key.key
        .clone()
        .or_else(|| endpoint.key_file.clone())
        .or_else(|| {
            std::env::var_os("SKIFF_KEY_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(identity::default_key_file)
}

/// Everything needed to connect: where, as whom, and what to trust.
pub struct Prepared {
    /// The resolved server.
    pub endpoint: Endpoint,
    /// The chosen key line.
    pub key: UserKey,
    /// Connect options with the fingerprint to insist on.
    pub opts: ConnectOptions,
}

/// Picks the key and trust settings for `endpoint` (exit 2 on a missing
/// or bad key file).
pub fn prepare(endpoint: Endpoint, key: &KeyArg) -> Result<Prepared, ClientError> {
    let user_key = identity::load(&key_file(key, &endpoint), endpoint.user.as_deref())?;
    let opts = ConnectOptions {
        fingerprint: key
            .fingerprint
            .clone()
            .or_else(|| endpoint.fingerprint.clone()),
        ..ConnectOptions::default()
    };
    Ok(Prepared {
        endpoint,
        key: user_key,
        opts,
    })
}

/// Connects to a resolved endpoint and authenticates; prints on stderr how
/// the server was trusted when that is news (a first pin, a failed pin),
/// unless `quiet`.
pub async fn open_endpoint(
    endpoint: &Endpoint,
    key: &KeyArg,
    quiet: bool,
) -> Result<Client, ClientError> {
    let p = prepare(endpoint.clone(), key)?;
    let client = client::connect(&p.endpoint.target, &p.key, &p.opts).await?;
    if let Some(t) = &client.trust {
        report_trust(t, quiet);
    }
    Ok(client)
}

/// Resolves `spec`, connects and authenticates (see [`open_endpoint`]).
pub async fn open(
    spec: &HostSpec,
    key: &KeyArg,
    port: PortArg,
    quiet: bool,
) -> Result<Client, ClientError> {
    let endpoint = resolve(spec, port.port)?;
    open_endpoint(&endpoint, key, quiet).await
}

/// The ssh-style "Permanently added" line, or why the pin could not be
/// written.
fn report_trust(t: &Trust, quiet: bool) {
    match &t.new_pin {
        Some(Ok(file)) if !quiet => {
            let how = if t.explicit {
                " (as given by --fingerprint or the host alias)"
            } else {
                ""
            };
            eprintln!(
                "skiff: permanently added {} ({}) to the known servers in {}{how}",
                t.host_port,
                t.fingerprint,
                file.display()
            );
        }
        Some(Err(e)) => eprintln!(
            "skiff: warning: could not record the certificate of {} ({}) in the known servers file: {e}; it is not pinned",
            t.host_port, t.fingerprint
        ),
        _ => {}
    }
}
