//! The fan-out options (`-H`, `--hosts-file`, `--parallel`,
//! `--group-output`, `--json`) and `skiff exec` and `skiff ping` on many
//! hosts.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use skiff_wire::message::exec::{Exec, ExecOutput, StdinEof};

use super::connect::{self, KeyArg, PortArg};
use super::output::{describe, usage};
use crate::client::config::{ClientConfig, Endpoint};
use crate::client::exec::Outcome;
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
    /// With several hosts: one JSON object per host on stdout (exit,
    /// duration, error, output), no live output.
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
