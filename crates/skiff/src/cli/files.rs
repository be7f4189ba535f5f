//! `skiff put|get|ls|stat|rm|mkdir|mv`.
//!
//! Exit status (DESIGN section 5): 0 on success, 1 when the operation (or
//! any file of a tree) failed, 255 for connection and authentication
//! errors.

use std::io::IsTerminal;
use std::path::PathBuf;

use skiff_wire::message::files::{Entry, EntryKind, HashAlg};

use super::connect::{open, parse_target, KeyArg, PortArg};
use crate::client::files::{download, remote, upload, Options, Summary};
use crate::client::Client;
use crate::target::HostSpec;
use crate::transfer::meta::{format_time, mode_string};

/// Options shared by `put` and `get`.
#[derive(Debug, clap::Args)]
pub struct TransferFlags {
    #[command(flatten)]
    key: KeyArg,
    /// Copy a directory tree.
    #[arg(short = 'r', long)]
    recursive: bool,
    /// Continue an interrupted transfer from the data already stored.
    #[arg(long)]
    resume: bool,
    /// Overwrite existing files.
    #[arg(short = 'f', long)]
    force: bool,
    /// Whole-file checksum: blake3 (default) or sha256.
    #[arg(long, value_parser = parse_hash, default_value = "blake3")]
    hash: HashAlg,
}

fn parse_hash(s: &str) -> Result<HashAlg, String> {
    match s {
        "blake3" => Ok(HashAlg::Blake3),
        "sha256" => Ok(HashAlg::Sha256),
        _ => Err("use blake3 or sha256".into()),
    }
}

impl TransferFlags {
    fn options(&self) -> Options {
        Options {
            recursive: self.recursive,
            resume: self.resume,
            force: self.force,
            hash: self.hash,
            progress: std::io::stderr().is_terminal(),
        }
    }
}

/// Arguments of `skiff put`.
#[derive(Debug, clap::Args)]
pub struct PutArgs {
    #[command(flatten)]
    flags: TransferFlags,
    #[command(flatten)]
    port: PortArg,
    /// Server: [USER@]HOST[:PORT], [IPv6]:PORT, an alias or a URL.
    #[arg(value_parser = parse_target)]
    target: HostSpec,
    /// Local file or directory.
    local: PathBuf,
    /// Remote destination (relative to the server root; `/` is the root).
    remote: String,
}

/// Arguments of `skiff get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    #[command(flatten)]
    flags: TransferFlags,
    #[command(flatten)]
    port: PortArg,
    /// Server: [USER@]HOST[:PORT], [IPv6]:PORT, an alias or a URL.
    #[arg(value_parser = parse_target)]
    target: HostSpec,
    /// Remote file or directory.
    remote: String,
    /// Local destination.
    local: PathBuf,
}

/// Arguments of `skiff ls` and `skiff stat`.
#[derive(Debug, clap::Args)]
pub struct PathArgs {
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    port: PortArg,
    /// Server: [USER@]HOST[:PORT], [IPv6]:PORT, an alias or a URL.
    #[arg(value_parser = parse_target)]
    target: HostSpec,
    /// Remote path (default: the root).
    #[arg(default_value = "/")]
    path: String,
}

/// Arguments of `skiff rm`.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    #[command(flatten)]
    key: KeyArg,
    /// Remove a directory and everything in it.
    #[arg(short = 'r', long)]
    recursive: bool,
    #[command(flatten)]
    port: PortArg,
    /// Server: [USER@]HOST[:PORT], [IPv6]:PORT, an alias or a URL.
    #[arg(value_parser = parse_target)]
    target: HostSpec,
    /// Remote path.
    path: String,
}

/// Arguments of `skiff mkdir`.
#[derive(Debug, clap::Args)]
pub struct MkdirArgs {
    #[command(flatten)]
    key: KeyArg,
    /// Create missing parent directories; an existing directory is fine.
    #[arg(short = 'p', long)]
    parents: bool,
    /// Server port (`-p` is --parents here, as in mkdir(1)).
    #[arg(short = 'P', long = "port", value_name = "PORT")]
    port: Option<u16>,
    /// Server: [USER@]HOST[:PORT], [IPv6]:PORT, an alias or a URL.
    #[arg(value_parser = parse_target)]
    target: HostSpec,
    /// Remote path.
    path: String,
}

/// Arguments of `skiff mv`.
#[derive(Debug, clap::Args)]
pub struct MvArgs {
    #[command(flatten)]
    key: KeyArg,
    /// Replace an existing destination file.
    #[arg(short = 'f', long)]
    force: bool,
    #[command(flatten)]
    port: PortArg,
    /// Server: [USER@]HOST[:PORT], [IPv6]:PORT, an alias or a URL.
    #[arg(value_parser = parse_target)]
    target: HostSpec,
    /// Existing remote path.
    from: String,
    /// New remote path (or an existing directory to move into).
    to: String,
}

/// Connects, runs `f` on the session, and closes politely.
fn with_client<T>(
    target: &HostSpec,
    key: &KeyArg,
    port: PortArg,
    f: impl for<'c> AsyncFnOnce(&'c mut Client) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    super::runtime()?.block_on(async {
        let mut client = open(target, key, port, false).await?;
        let r = f(&mut client).await;
        let _ = client.session.close().await;
        r
    })
}

/// Prints every failure of a transfer; exit 1 if there was any.
fn report(what: &str, s: &Summary) -> i32 {
    for f in &s.failures {
        eprintln!("skiff: {what}: {} [{}]", f.message, f.code);
    }
    if s.failures.is_empty() {
        0
    } else {
        1
    }
}

/// Runs `skiff put`.
pub fn put(a: PutArgs) -> anyhow::Result<i32> {
    let opts = a.flags.options();
    let s = with_client(&a.target, &a.flags.key, a.port, async |c| {
        Ok(upload::put(&mut c.session, &a.local, &a.remote, &opts).await?)
    })?;
    Ok(report("put", &s))
}

/// Runs `skiff get`.
pub fn get(a: GetArgs) -> anyhow::Result<i32> {
    let opts = a.flags.options();
    let s = with_client(&a.target, &a.flags.key, a.port, async |c| {
        Ok(download::get(&mut c.session, &a.remote, &a.local, &opts).await?)
    })?;
    Ok(report("get", &s))
}

/// One `ls -l` style line.
fn long_line(e: &Entry) -> String {
    let mut line = format!(
        "{} {:>12} {} {}",
        mode_string(e.kind, e.mode),
        e.size,
        format_time(e.mtime_ns),
        e.path
    );
    if let Some(t) = &e.target {
        line.push_str(" -> ");
        line.push_str(t);
    }
    if e.kind == EntryKind::Dir {
        line.push('/');
    }
    line
}

/// Runs `skiff ls`.
pub fn ls(a: PathArgs) -> anyhow::Result<i32> {
    let entries = with_client(&a.target, &a.key, a.port, async |c| {
        Ok(remote::ls(&mut c.session, &a.path, false).await?)
    })?;
    for e in &entries {
        println!("{}", long_line(e));
    }
    Ok(0)
}

/// Runs `skiff stat`.
pub fn stat(a: PathArgs) -> anyhow::Result<i32> {
    let e = with_client(&a.target, &a.key, a.port, async |c| {
        Ok(remote::stat(&mut c.session, &a.path).await?)
    })?;
    println!("path: {}", a.path);
    println!("type: {}", format!("{:?}", e.kind).to_lowercase());
    println!("size: {}", e.size);
    println!("mode: {:04o} ({})", e.mode, mode_string(e.kind, e.mode));
    println!("mtime: {} UTC", format_time(e.mtime_ns));
    if let Some(t) = &e.target {
        println!("target: {t}");
    }
    Ok(0)
}

/// Runs `skiff rm`.
pub fn rm(a: RmArgs) -> anyhow::Result<i32> {
    with_client(&a.target, &a.key, a.port, async |c| {
        Ok(remote::rm(&mut c.session, &a.path, a.recursive).await?)
    })?;
    Ok(0)
}

/// Runs `skiff mkdir`.
pub fn mkdir(a: MkdirArgs) -> anyhow::Result<i32> {
    with_client(&a.target, &a.key, PortArg { port: a.port }, async |c| {
        Ok(remote::mkdir(&mut c.session, &a.path, a.parents).await?)
    })?;
    Ok(0)
}

/// Runs `skiff mv`.
pub fn mv(a: MvArgs) -> anyhow::Result<i32> {
    with_client(&a.target, &a.key, a.port, async |c| {
        Ok(remote::mv(&mut c.session, &a.from, &a.to, a.force).await?)
    })?;
    Ok(0)
}
