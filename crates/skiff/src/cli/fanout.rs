//! The fan-out options (`-H`, `--hosts-file`, `--parallel`,
//! `--group-output`, `--json`) and `skiff exec` and `skiff ping` on many
//! hosts.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_wire::message::exec::{Exec, ExecOutput, StdinEof};

use super::connect::{self, KeyArg, PortArg};
use super::output::{describe, usage};
use crate::client::config::{ClientConfig, Endpoint};
use crate::client::exec::Outcome;
use crate::client::files::{self, progress::ProgressKind, Options, Summary};
use crate::client::ping::{ping_once, RttStats};
use crate::client::ClientError;
use crate::fanout::hosts;
use crate::fanout::output::{HostOutput, Stream};
use crate::fanout::report;
use crate::fanout::runner::{self, HostJob, Plan, Run};
use crate::session::SessionError;

/// Default `--parallel`.
pub const DEFAULT_PARALLEL: u32 = 32;

/// Selecting many hosts, and how to run and report them.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Run on these hosts: names, addresses, aliases, `@GROUP` from the
    /// client config, ranges such as `web[01-20]` or `h[1-3,7]`;
    /// comma-separated, repeatable.
    #[arg(short = 'H', long = "hosts", value_name = "HOSTS")]
    pub hosts: Vec<String>,
    /// Read hosts from FILE, one item per line (`#` comments).
    #[arg(long, value_name = "FILE")]
    pub hosts_file: Vec<PathBuf>,
    /// With several hosts: run on at most N at once.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_PARALLEL,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub parallel: u32,
    /// With several hosts: print identical outputs once, under the list
    /// of hosts that produced them (as `dshbak -c`).
    #[arg(long)]
    pub group_output: bool,
    /// One JSON object on stdout: per host with several hosts (exit,
    /// duration, error, output; no live output), the transfer summary with
    /// one host.
    #[arg(long)]
    pub json: bool,
    /// With several hosts: no per-host summary on stderr (it still comes
    /// after Ctrl-C).
    #[arg(long)]
    pub no_summary: bool,
}

impl FanoutArgs {
    /// Whether the user asked for a fan-out (`-H` or `--hosts-file`).
    pub fn selected(&self) -> bool {
        !self.hosts.is_empty() || !self.hosts_file.is_empty()
    }

    /// The hosts, resolved through the client config (`port` is `-p`).
    pub fn endpoints(&self, port: PortArg) -> anyhow::Result<Vec<Endpoint>> {
        let config = ClientConfig::load_default()?;
        let specs = hosts::select(&self.hosts, &self.hosts_file, &config)
            .map_err(|e| anyhow::Error::new(super::output::UsageError(e.to_string())))?;
        Ok(specs.iter().map(|s| config.resolve(s, port.port)).collect())
    }

    /// The runner plan for these options and a per-host deadline.
    fn plan(&self, timeout: Option<Duration>) -> Plan {
        Plan {
            parallel: self.parallel as usize,
            timeout,
            live: !self.group_output && !self.json,
            keep: self.group_output || self.json,
        }
    }

    /// Prints the grouped output or JSON, and the summary; returns the exit
    /// status.
    fn report(&self, run: &Run, started: Instant) -> anyhow::Result<i32> {
        if self.json {
            report::print_json(run, &mut std::io::stdout().lock())?;
        } else if self.group_output {
            report::print_grouped(run, &mut std::io::stdout().lock(), &mut std::io::stderr())?;
        }
        if !self.no_summary || run.interrupted {
            eprint!("{}", report::summary(run, started.elapsed()));
        }
        Ok(run.exit_status())
    }
}

/// Parses `--timeout SECS` (positive seconds).
pub fn parse_timeout(t: Option<f64>) -> anyhow::Result<Option<Duration>> {
    match t {
        Some(t) if !(t.is_finite() && t > 0.0 && t < 1e9) => {
            usage!("--timeout must be a positive number of seconds")
        }
        Some(t) => Ok(Some(Duration::from_secs_f64(t))),
        None => Ok(None),
    }
}

/// `skiff exec -H …`: runs `req` on every host (stdin is not forwarded:
/// the commands see EOF), `--timeout` bounding each host's connect and run.
pub fn exec_many(
    fan: &FanoutArgs,
    key: &KeyArg,
    port: PortArg,
    req: Exec,
    timeout: Option<Duration>,
) -> anyhow::Result<i32> {
    if req.pty.is_some() {
        usage!("-t (a terminal) needs a single host");
    }
    run_many(fan, port, timeout, |endpoint, out| {
        let (key, req) = (key.clone(), req.clone());
        async move { exec_one(&endpoint, &key, &req, &out).await }
    })
}

/// `skiff ping -H …`: `count` session pings of `size` bytes per host,
/// `interval` apart; each host prints one line of round-trip figures.
pub fn ping_many(
    fan: &FanoutArgs,
    key: &KeyArg,
    port: PortArg,
    count: u64,
    interval: Duration,
    size: usize,
    timeout: Duration,
) -> anyhow::Result<i32> {
    run_many(fan, port, Some(timeout), |endpoint, out| {
        let key = key.clone();
        async move {
            let mut client = connect::open_endpoint(&endpoint, &key, true).await?;
            out.mark_started();
            let payload = vec![0x5a; size];
            let mut stats = RttStats::default();
            for i in 0..count {
                if i > 0 {
                    tokio::time::sleep(interval).await;
                }
                stats.add(ping_once(&mut client.session, &payload).await?);
            }
            if let Some((min, avg, max, _)) = stats.summary() {
                let line =
                    format!("{count} pings, rtt min/avg/max = {min:.3}/{avg:.3}/{max:.3} ms\n");
                out.write(Stream::Stdout, line.as_bytes());
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), client.session.close()).await;
            Ok(0)
        }
    })
}

/// `skiff put -H …` (and `cp` to many hosts): the same sources to `dest`
/// on every host. Each host streams the files on its own connection,
/// reading them itself (so the page cache reads them once), with the
/// transfer's bounded window: memory grows with `--parallel`, not with
/// file sizes. A host's stdout gets its summary line, its stderr the
/// failures; it succeeds when nothing failed.
pub fn put_many(
    fan: &FanoutArgs,
    key: &KeyArg,
    port: PortArg,
    timeout: Option<Duration>,
    sources: Vec<PathBuf>,
    dest: &str,
    opts: Options,
) -> anyhow::Result<i32> {
    let opts = quiet_options(opts);
    let (sources, dest) = (Arc::new(sources), dest.to_string());
    run_many(fan, port, timeout, |endpoint, out| {
        let (key, sources, dest, opts) = (key.clone(), sources.clone(), dest.clone(), opts.clone());
        async move {
            let mut client = connect::open_endpoint(&endpoint, &key, true).await?;
            out.mark_started();
            let started = Instant::now();
            let r = files::sources::put_all(&mut client.session, &sources, &dest, &opts).await;
            let _ = tokio::time::timeout(Duration::from_millis(200), client.session.close()).await;
            Ok(transfer_outcome(r, started, &out))
        }
    })
}

/// `skiff get -H …`: the same sources from every host, each host's into
/// its own subdirectory `LOCAL/HOST/` (LOCAL is created when only its last
/// component is missing).
pub fn get_many(
    fan: &FanoutArgs,
    key: &KeyArg,
    port: PortArg,
    timeout: Option<Duration>,
    sources: Vec<String>,
    dest: PathBuf,
    opts: Options,
) -> anyhow::Result<i32> {
    let opts = quiet_options(opts);
    let dir = PathBuf::from(format!("{}/", dest.display()));
    files::dest::local_destination(&dir, true)?;
    let sources = Arc::new(sources);
    run_many(fan, port, timeout, |endpoint, out| {
        let (key, sources, opts) = (key.clone(), sources.clone(), opts.clone());
        let host_dir = dest.join(host_dir_name(&endpoint.name));
        async move {
            match std::fs::create_dir(&host_dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(ClientError::Local(format!("{}: {e}", host_dir.display())));
                }
                _ => {}
            }
            let mut client = connect::open_endpoint(&endpoint, &key, true).await?;
            out.mark_started();
            let started = Instant::now();
            let r = files::sources::get_all(&mut client.session, &sources, &host_dir, false, &opts)
                .await;
            let _ = tokio::time::timeout(Duration::from_millis(200), client.session.close()).await;
            Ok(transfer_outcome(r, started, &out))
        }
    })
}

/// A host's name as a directory name: `/` and NUL become `_`, and `.`
/// or `..` (or an empty name) cannot be one.
pub fn host_dir_name(name: &str) -> String {
    let n: String = name
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    if n.is_empty() || n == "." || n == ".." {
        format!("_{n}")
    } else {
        n
    }
}

/// Fan-out transfers draw no progress: many hosts share one terminal.
fn quiet_options(opts: Options) -> Options {
    Options {
        progress: ProgressKind::Off,
        ..opts
    }
}

/// One host's transfer as its output and status: the summary line on
/// stdout, each failure on stderr; 0 when nothing failed, else 1. A broken
/// session is the host's error.
fn transfer_outcome(r: Result<Summary, ClientError>, started: Instant, out: &HostOutput) -> i32 {
    let s = match r {
        Ok(s) => s,
        Err(e) => {
            let mut s = Summary::default();
            if let Err(e) = s.fail(e) {
                out.write(
                    Stream::Stderr,
                    format!("{}\n", describe(&anyhow::Error::new(e))).as_bytes(),
                );
                return 1;
            }
            s
        }
    };
    let line = super::transfer::summary_line(s.files, s.bytes, started.elapsed());
    out.write(Stream::Stdout, format!("{line}\n").as_bytes());
    for f in &s.failures {
        out.write(
            Stream::Stderr,
            format!("{} [{}]\n", f.message, f.code.as_str()).as_bytes(),
        );
    }
    i32::from(!s.failures.is_empty())
}

/// Resolves the hosts and runs `job` on each under the options in `fan`
/// (a `timeout` per host), then reports; returns the exit status.
fn run_many<F, Fut>(
    fan: &FanoutArgs,
    port: PortArg,
    timeout: Option<Duration>,
    job: F,
) -> anyhow::Result<i32>
where
    F: Fn(Endpoint, HostOutput) -> Fut,
    Fut: Future<Output = Result<i32, ClientError>> + Send + 'static,
{
    let endpoints = fan.endpoints(port)?;
    let jobs = endpoints
        .into_iter()
        .map(|e| HostJob {
            name: e.name.clone(),
            target: e.target.to_string(),
            input: e,
        })
        .collect();
    let rt = super::runtime()?;
    let started = Instant::now();
    let run = rt.block_on(runner::run(jobs, fan.plan(timeout), |endpoint, out| {
        let fut = job(endpoint, out);
        async move { fut.await.map_err(|e| describe(&anyhow::Error::new(e))) }
    }));
    rt.shutdown_background();
    fan.report(&run, started)
}

/// Connects, runs one command with no stdin and feeds its output to
/// `out`; returns the exit status.
async fn exec_one(
    endpoint: &Endpoint,
    key: &KeyArg,
    req: &Exec,
    out: &HostOutput,
) -> Result<i32, ClientError> {
    let mut client = connect::open_endpoint(endpoint, key, true).await?;
    out.mark_started();
    let (reader, writer) = client.session.split();
    writer.queue(req, &[])?;
    writer.queue(&StdinEof {}, &[])?;
    writer.flush().await?;
    let status = loop {
        match reader.recv_msg::<ExecOutput>().await? {
            ExecOutput::Stdout(body) => out.write(Stream::Stdout, &body),
            ExecOutput::Stderr(body) => out.write(Stream::Stderr, &body),
            ExecOutput::StdinCredit(_) => {}
            ExecOutput::Exit(exit) => break Outcome::Exited(exit).exit_status(),
            ExecOutput::Error(e) => return Err(SessionError::Remote(e).into()),
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(200), client.session.close()).await;
    Ok(status)
}
