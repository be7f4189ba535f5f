//! `skiff known list | remove HOST`: the pinned server certificates
//! (`~/.config/skiff/known_servers`, or `$SKIFF_KNOWN_SERVERS`).

use std::path::PathBuf;

use anyhow::Context;

use super::connect::parse_target;
use crate::client::config::ClientConfig;
use crate::client::known_servers::{self, KnownServer};
use crate::client::ConnectOptions;
use crate::target::{HostRef, HostSpec};

/// Arguments of `skiff known`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Print every pinned server: `HOST:PORT SHA256:HEX`.
    List {
        /// One JSON array of {"host","fingerprint"} objects.
        #[arg(long)]
        json: bool,
    },
    /// Forget a server's pinned certificate (after it was reinstalled):
    /// the next connection pins the new one. HOST without a port removes
    /// every port of that host; an alias removes its address.
    Remove {
        /// HOST, HOST:PORT, [IPv6]:PORT, an alias or a URL.
        #[arg(value_parser = parse_target, value_name = "HOST")]
        host: HostSpec,
    },
}

fn known_file() -> anyhow::Result<PathBuf> {
    ConnectOptions::default()
        .known_servers
        .context("no known servers file")
}

/// Runs `skiff known`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let file = known_file()?;
    match args.what {
        What::List { json } => {
            let all = known_servers::list(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            if json {
                let rows: Vec<serde_json::Value> = all
                    .iter()
                    .map(|k| serde_json::json!({"host": k.host_port, "fingerprint": k.fingerprint}))
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                for KnownServer {
                    host_port,
                    fingerprint,
                } in &all
                {
                    println!("{host_port} {fingerprint}");
                }
            }
            Ok(0)
        }
        What::Remove { host } => {
            let config = ClientConfig::load_default()?;
            let exact = config.resolve(&host, None).target.host_port();
            // A bare name (no port, no alias) means every port of it.
            let any_port = match &host.host {
                HostRef::Named { name, port: None } if !config.hosts.contains_key(name) => {
                    Some(name.clone())
                }
                _ => None,
            };
            let removed = known_servers::remove(&file, |h| {
                Some(h) == exact.as_deref()
                    || any_port
                        .as_deref()
                        .is_some_and(|want| known_servers::host_of(h) == want)
            })
            .with_context(|| format!("updating {}", file.display()))?;
            if removed.is_empty() {
                eprintln!(
                    "skiff: no pinned certificate for {host} in {}",
                    file.display()
                );
                return Ok(1);
            }
            for k in &removed {
                eprintln!(
                    "skiff: removed {} {} from {}",
                    k.host_port,
                    k.fingerprint,
                    file.display()
                );
            }
            Ok(0)
        }
    }
}
