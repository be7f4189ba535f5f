//! `skiff put|get|ls|stat|rm|mkdir|mv`.
//!
//! Exit status (DESIGN section 5): 0 on success, 1 when the operation (or
//! any file of a tree) failed, 255 for connection and authentication
//! errors.

use std::path::PathBuf;

use skiff_wire::message::files::{Entry, EntryKind};

use super::connect::{open, open_endpoint, parse_target, resolve, KeyArg, PortArg};
use super::fanout;
use super::output::usage;
use super::transfer::{resume_hint, Totals, TransferArgs, TransferFlags};
use std::sync::Arc;

use crate::client::files::{remote, sources, streams, Options, Summary};
use crate::client::{Client, ClientError};
use crate::target::HostSpec;
use crate::transfer::meta::{format_time, mode_string};

/// Arguments of `skiff put`.
#[derive(Debug, clap::Args)]
pub struct PutArgs {
    #[command(flatten)]
    t: TransferArgs,
    /// Send a large file over N connections at once (1 to 16), each
    /// authenticated on its own: for links where one connection cannot
    /// fill the bandwidth (a long round trip). Files under 16 MiB, trees
    /// and --resume use one.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    streams: u32,
    /// TARGET (none with -H or --hosts-file), then the local files or
    /// trees, then the remote destination (relative to the server root;
    /// `/` is the root; ending in `/`: a directory).
    #[arg(value_name = "ARG", num_args = 1.., required = true)]
    args: Vec<String>,
}

/// Arguments of `skiff get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    #[command(flatten)]
    t: TransferArgs,
    /// TARGET (none with -H or --hosts-file), then the remote files or
    /// trees (globs such as 'logs/*.log' are expanded by the server), then
    /// the local destination (ending in `/`: a directory).
    #[arg(value_name = "ARG", num_args = 1.., required = true)]
    args: Vec<String>,
}

/// The TARGET (unless fanning out), the sources and the destination.
struct Positionals<'a> {
    target: Option<HostSpec>,
    sources: &'a [String],
    dest: &'a str,
}

fn positionals(args: &[String], fan_out: bool) -> anyhow::Result<Positionals<'_>> {
    let (target, rest) = if fan_out {
        (None, args)
    } else {
        let Some((t, rest)) = args.split_first() else {
            usage!("a TARGET (or -H HOSTS) is required")
        };
        match parse_target(t) {
            Ok(t) => (Some(t), rest),
            Err(e) => usage!("{e}"),
        }
    };
    match rest.split_last() {
        Some((dest, sources)) if !sources.is_empty() => Ok(Positionals {
            target,
            sources,
            dest,
        }),
        _ => usage!("give at least one source and a destination"),
    }
}

/// Arguments of `skiff ls` and `skiff stat`.
#[derive(Debug, clap::Args)]
pub struct PathArgs {
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    port: PortArg,
    /// Print JSON on stdout (`ls`: an array of entries; `stat`: one entry).
    #[arg(long)]
    json: bool,
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
    with_client_quiet(target, key, port, false, f)
}

/// [`with_client`], with the trust notices silenced when `quiet`.
fn with_client_quiet<T>(
    target: &HostSpec,
    key: &KeyArg,
    port: PortArg,
    quiet: bool,
    f: impl for<'c> AsyncFnOnce(&'c mut Client) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    super::runtime()?.block_on(async {
        let mut client = open(target, key, port, quiet).await?;
        let r = f(&mut client).await;
        let _ = client.session.close().await;
        r
    })
}

/// Runs one transfer command on one host and reports it: the failures,
/// the summary line or JSON, advice after an interruption; the exit status.
pub(super) fn transfer_one(
    what: &str,
    target: &HostSpec,
    key: &KeyArg,
    port: PortArg,
    flags: &TransferFlags,
    json: bool,
    f: impl for<'c> AsyncFnOnce(&'c mut Client) -> Result<Summary, ClientError>,
) -> anyhow::Result<i32> {
    let mut totals = Totals::start();
    let r = with_client_quiet(target, key, port, flags.quiet, async |c| Ok(f(c).await?));
    match r {
        Ok(s) => {
            totals.add(s);
            Ok(totals.report(what, flags, json))
        }
        Err(e) => {
            if let Some(c) = e.downcast_ref::<ClientError>() {
                resume_hint(c);
            }
            Err(e)
        }
    }
}

/// Runs `skiff put`.
pub fn put(a: PutArgs) -> anyhow::Result<i32> {
    let json = a.t.fanout.json;
    let opts = a.t.flags.options(json);
    let pos = positionals(&a.args, a.t.fanout.selected())?;
    let sources: Vec<PathBuf> = pos.sources.iter().map(PathBuf::from).collect();
    let Some(target) = pos.target else {
        let timeout = fanout::parse_timeout(a.t.timeout)?;
        return fanout::put_many(
            &a.t.fanout,
            &a.t.key,
            a.t.port,
            timeout,
            sources,
            pos.dest,
            opts,
        );
    };
    transfer_one(
        "put",
        &target,
        &a.t.key,
        a.t.port,
        &a.t.flags,
        json,
        async |c| {
            let opts = with_streams(c, opts, a.streams, &target, &a.t.key, a.t.port)?;
            sources::put_all(&mut c.session, &sources, pos.dest, &opts).await
        },
    )
}

/// `opts` with `--streams N` (N > 1) set up: how to open each further
/// connection to the same server. A server that does not offer uploads
/// over several connections gets one, with a warning.
fn with_streams(
    c: &Client,
    mut opts: Options,
    n: u32,
    target: &HostSpec,
    key: &KeyArg,
    port: PortArg,
) -> Result<Options, ClientError> {
    if n < 2 {
        return Ok(opts);
    }
    if !c.welcome.services.iter().any(|s| s == streams::SERVICE) {
        eprintln!(
            "skiff: warning: the server ({}) does not take uploads over several connections; using one",
            c.welcome.server
        );
        return Ok(opts);
    }
    let endpoint = resolve(target, port.port)?;
    let key = key.clone();
    let connect: Arc<streams::Connect> = Arc::new(move || {
        let (endpoint, key) = (endpoint.clone(), key.clone());
        Box::pin(async move { open_endpoint(&endpoint, &key, true).await })
    });
    opts.streams = Some(streams::Streams { count: n, connect });
    Ok(opts)
}

/// Runs `skiff get`.
pub fn get(a: GetArgs) -> anyhow::Result<i32> {
    let json = a.t.fanout.json;
    let opts = a.t.flags.options(json);
    let pos = positionals(&a.args, a.t.fanout.selected())?;
    let dest = PathBuf::from(pos.dest);
    let Some(target) = pos.target else {
        let timeout = fanout::parse_timeout(a.t.timeout)?;
        return fanout::get_many(
            &a.t.fanout,
            &a.t.key,
            a.t.port,
            timeout,
            pos.sources.to_vec(),
            dest,
            opts,
        );
    };
    transfer_one(
        "get",
        &target,
        &a.t.key,
        a.t.port,
        &a.t.flags,
        json,
        async |c| sources::get_all(&mut c.session, pos.sources, &dest, false, &opts).await,
    )
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
    if a.json {
        println!("{}", serde_json::to_string(&entries)?);
        return Ok(0);
    }
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
    if a.json {
        println!("{}", serde_json::to_string(&e)?);
        return Ok(0);
    }
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
