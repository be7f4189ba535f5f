//! `skiff cp [-r] [-f] [-p PORT] SRC... DST`, in the style of scp: a
//! remote side is `[USER@]HOST:PATH`, `[USER@][IPv6]:PATH` or
//! `skiff://[USER@]HOST[:PORT]/PATH` (`target::Location`); `-` is stdin
//! as a source and stdout as a destination. Local to remote is `put`,
//! remote to local is `get`, remote to remote streams through this client
//! (as `scp -3`). With `-H`/`--hosts-file` the remote side is written
//! `:PATH` and means that path on every host.

use std::path::PathBuf;

use super::connect::open;
use super::fanout;
use super::output::usage;
use super::transfer::{resume_hint, Totals, TransferArgs};
use crate::client::files::{dest, relay, sources, upload, Options, Summary};
use crate::client::ClientError;
use crate::target::{HostSpec, Location, RemotePath};

/// Arguments of `skiff cp`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    t: TransferArgs,
    /// Sources, then the destination: HOST:PATH, USER@HOST:PATH,
    /// [IPv6]:PATH, skiff://[USER@]HOST[:PORT]/PATH, a local path (write
    /// a local name holding `:` as ./name), or `-` (stdin / stdout).
    #[arg(value_name = "PATH", num_args = 1.., required = true)]
    paths: Vec<String>,
}

/// Runs `skiff cp`.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let json = a.t.fanout.json;
    let opts = a.t.flags.options(json);
    let Some((dst, srcs)) = a.paths.split_last().filter(|(_, s)| !s.is_empty()) else {
        usage!("give at least one source and a destination")
    };
    if a.t.fanout.selected() {
        return many_hosts(&a, srcs, dst, opts);
    }
    let parse = |s: &String| Location::parse(s).map_err(super::output::UsageError);
    let dst = parse(dst)?;
    let srcs = srcs.iter().map(parse).collect::<Result<Vec<_>, _>>()?;
    let remote_srcs: Vec<&RemotePath> = srcs
        .iter()
        .filter_map(|s| match s {
            Location::Remote(r) => Some(r),
            _ => None,
        })
        .collect();
    let plan = Plan::new(&dst, &srcs, &remote_srcs, a.t.flags.recursive)?;
    let mut totals = Totals::start();
    let spooled = match &plan {
        Plan::Stdin(_) => Some(spool_stdin()?),
        _ => None,
    };
    let stdin_file = spooled.as_ref().map(|f| f.path().to_path_buf());
    let r = super::runtime()?.block_on(plan.execute(&a, &opts, stdin_file, srcs.len() > 1));
    match r {
        Ok(s) => {
            totals.add(s);
            Ok(totals.report("cp", &a.t.flags, json))
        }
        Err(e) => {
            resume_hint(&e);
            Err(e.into())
        }
    }
}

/// What one `cp` does.
enum Plan<'a> {
    /// Local files or trees to a server.
    Put(Vec<PathBuf>, &'a RemotePath),
    /// Standard input to a file on a server.
    Stdin(&'a RemotePath),
    /// Remote sources (grouped by server) to a local destination.
    Get(Vec<(HostSpec, Vec<String>)>, PathBuf),
    /// Remote files to standard output.
    Stdout(Vec<(HostSpec, Vec<String>)>),
    /// Remote sources to another (or the same) server, through us.
    Relay(Vec<(HostSpec, Vec<String>)>, &'a RemotePath),
}

impl<'a> Plan<'a> {
    /// The plan for `srcs` to `dst`, or a usage error for a combination
    /// `cp` does not do.
    fn new(
        dst: &'a Location,
        srcs: &[Location],
        remote_srcs: &[&RemotePath],
        recursive: bool,
    ) -> anyhow::Result<Self> {
        Ok(match (dst, remote_srcs.len()) {
            (Location::Remote(to), 0) => {
                let stdin = srcs.contains(&Location::Stdio);
                if stdin && srcs.len() > 1 {
                    usage!("`-` (stdin) must be the only source");
                }
                if stdin {
                    Plan::Stdin(to)
                } else {
                    let local = srcs
                        .iter()
                        .filter_map(|s| match s {
                            Location::Local(p) => Some(p.clone()),
                            _ => None,
                        })
                        .collect();
                    Plan::Put(local, to)
                }
            }
            (_, 0) => usage!(
                "no remote side: write a remote path as HOST:PATH (a local name with `:` is ./name); for a local copy use cp(1)"
            ),
            (_, n) if n < srcs.len() => {
                usage!("the sources must be all remote or all local")
            }
            (Location::Local(to), _) => Plan::Get(groups(remote_srcs), to.clone()),
            (Location::Stdio, _) if recursive => usage!("a tree cannot be written to stdout"),
            (Location::Stdio, _) => Plan::Stdout(groups(remote_srcs)),
            (Location::Remote(to), _) => Plan::Relay(groups(remote_srcs), to),
        })
    }

    /// Runs the plan: one connection per server group, each closed when
    /// its part is done. `stdin_file` is standard input spooled to a file
    /// (for [`Plan::Stdin`]); `several` whether there was more than one
    /// source (`get` then needs a directory to write into).
    async fn execute(
        &self,
        a: &Args,
        opts: &Options,
        stdin_file: Option<PathBuf>,
        several: bool,
    ) -> Result<Summary, ClientError> {
        let (k, p, q) = (&a.t.key, a.t.port, a.t.flags.quiet);
        let mut all = Summary::default();
        match self {
            Plan::Put(local, to) => {
                let mut c = open(&to.host, k, p, q).await?;
                all.absorb(sources::put_all(&mut c.session, local, &to.path, opts).await?);
                let _ = c.session.close().await;
            }
            Plan::Stdin(to) => {
                let mut c = open(&to.host, k, p, q).await?;
                if dest::remote_destination(&mut c.session, &to.path, false).await? {
                    return Err(ClientError::Local(format!(
                        "{}: is a directory, and standard input has no name; give the file name to write",
                        to.path
                    )));
                }
                let file = stdin_file.unwrap_or_default();
                let opts = sources::labelled(opts, "stdin");
                all.absorb(upload::put_as(&mut c.session, &file, &to.path, &opts).await?);
                let _ = c.session.close().await;
            }
            Plan::Get(groups, to) => {
                for (host, paths) in groups {
                    let mut c = open(host, k, p, q).await?;
                    all.absorb(sources::get_all(&mut c.session, paths, to, several, opts).await?);
                    let _ = c.session.close().await;
                }
            }
            Plan::Stdout(groups) => {
                let mut out = tokio::io::stdout();
                for (host, paths) in groups {
                    let mut c = open(host, k, p, q).await?;
                    all.absorb(relay::get_to_writer(&mut c.session, paths, &mut out, opts).await?);
                    let _ = c.session.close().await;
                }
            }
            Plan::Relay(groups, to) => {
                let mut d = open(&to.host, k, p, q).await?;
                for (host, paths) in groups {
                    let mut c = open(host, k, p, q).await?;
                    let s = relay::relay_all(&mut c.session, paths, &mut d.session, &to.path, opts)
                        .await?;
                    all.absorb(s);
                    let _ = c.session.close().await;
                }
                let _ = d.session.close().await;
            }
        }
        Ok(all)
    }
}

/// Consecutive sources on the same server share one connection.
fn groups(srcs: &[&RemotePath]) -> Vec<(HostSpec, Vec<String>)> {
    let mut out: Vec<(HostSpec, Vec<String>)> = Vec::new();
    for s in srcs {
        match out.last_mut() {
            Some((h, paths)) if *h == s.host => paths.push(s.path.clone()),
            _ => out.push((s.host.clone(), vec![s.path.clone()])),
        }
    }
    out
}

/// The protocol announces a file's size before its data, so standard input
/// is first copied into a private temporary file (memory stays bounded;
/// the disk holds one copy), then uploaded like any file.
fn spool_stdin() -> anyhow::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    let mut f = tempfile::NamedTempFile::new()?;
    std::io::copy(&mut std::io::stdin().lock(), &mut f)
        .map_err(|e| ClientError::Local(format!("reading stdin: {e}")))?;
    // The uploaded file gets the mode of the spool file: a usual one.
    f.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    Ok(f)
}

/// `cp -H …`: `:PATH` names the path on every host. Local sources to
/// `:DEST` is a fan-out `put`; `:SRC`s to a local directory a fan-out
/// `get` (into `DIR/HOST/`).
fn many_hosts(a: &Args, srcs: &[String], dst: &str, opts: Options) -> anyhow::Result<i32> {
    let timeout = fanout::parse_timeout(a.t.timeout)?;
    let remote = |s: &str| s.strip_prefix(':').map(str::to_string);
    if let Some(to) = remote(dst) {
        if srcs.iter().any(|s| s.starts_with(':') || s == "-") {
            usage!("with -H, copy local files to :PATH, or :PATHs to a local directory");
        }
        let local = srcs.iter().map(PathBuf::from).collect();
        return fanout::put_many(&a.t.fanout, &a.t.key, a.t.port, timeout, local, &to, opts);
    }
    let from: Option<Vec<String>> = srcs.iter().map(|s| remote(s)).collect();
    match from {
        Some(from) if dst != "-" => fanout::get_many(
            &a.t.fanout,
            &a.t.key,
            a.t.port,
            timeout,
            from,
            PathBuf::from(dst),
            opts,
        ),
        _ => usage!(
            "with -H, write the remote side as :PATH (skiff cp -H @web app.tar :/opt/, or skiff cp -H @web :logs/app.log ./logs/)"
        ),
    }
}
