//! `skiff bench`: a load generator in the binary (like redis-benchmark),
//! so skiff can be measured beside the tools people would otherwise use.

use std::time::Duration;

use clap::Subcommand;

use super::connect::{parse_target, prepare, resolve, KeyArg, PortArg};
use super::output::usage;
use crate::client::bench::{
    exec_load, ping_load, transfer_load, Direction, PingLoad, PingReport, TransferLoad,
    TransferReport,
};
use crate::target::HostSpec;

/// Arguments of `skiff bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Session round trips: requests/s and latency percentiles.
    Ping(PingArgs),
    /// Latency of `true` end to end: connect, handshake, spawn, exit.
    Exec(ExecArgs),
    /// Upload throughput (MB/s) and the client's peak RSS.
    Put(TransferArgs),
    /// Download throughput (MB/s) and the client's peak RSS.
    Get(TransferArgs),
}

#[derive(Debug, clap::Args)]
struct PingArgs {
    #[command(flatten)]
    key: KeyArg,
    /// Concurrent authenticated sessions.
    #[arg(
        short = 'c',
        long = "connections",
        value_name = "N",
        default_value_t = 50
    )]
    connections: usize,
    /// Seconds to measure (connecting is not counted).
    #[arg(
        short = 'd',
        long = "duration",
        value_name = "SECONDS",
        default_value_t = 10.0
    )]
    duration: f64,
    /// Pings in flight per connection (sent in one write, answered in order).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pipeline: usize,
    /// Payload bytes per ping.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    size: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    port: PortArg,
    /// Server: [USER@]HOST[:PORT], [IPv6]:PORT, an alias or a URL.
    #[arg(value_parser = parse_target)]
    target: HostSpec,
}

#[derive(Debug, clap::Args)]
struct ExecArgs {
    #[command(flatten)]
    key: KeyArg,
    /// Number of connections, each running `true` once.
    #[arg(short = 'n', value_name = "COUNT", default_value_t = 100)]
    count: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    port: PortArg,
    /// Server: [USER@]HOST[:PORT], [IPv6]:PORT, an alias or a URL.
    #[arg(value_parser = parse_target)]
    target: HostSpec,
}

#[derive(Debug, clap::Args)]
struct TransferArgs {
    #[command(flatten)]
    key: KeyArg,
    /// Bytes per transfer.
    #[arg(long, value_name = "BYTES")]
    size: u64,
    /// Transfers running at once.
    #[arg(long, value_name = "N", default_value_t = 1)]
    parallel: usize,
    /// Local directory for the test files (default: the system temp dir).
    #[arg(long, value_name = "DIR")]
    dir: Option<std::path::PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    port: PortArg,
    /// Server: [USER@]HOST[:PORT], [IPv6]:PORT, an alias or a URL.
    #[arg(value_parser = parse_target)]
    target: HostSpec,
}

/// Runs `skiff bench`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    match args.what {
        What::Ping(a) => ping(a),
        What::Exec(a) => exec(a),
        What::Put(a) => transfer(a, Direction::Put),
        What::Get(a) => transfer(a, Direction::Get),
    }
}

fn ping(a: PingArgs) -> anyhow::Result<i32> {
    if !(a.duration.is_finite() && a.duration > 0.0 && a.duration <= 3600.0) {
        usage!("-d must be between 0 and 3600 seconds");
    }
    if a.connections == 0 || a.connections > 10_000 {
        usage!("-c must be between 1 and 10000 connections");
    }
    if a.pipeline == 0 || a.pipeline > 10_000 {
        usage!("--pipeline must be between 1 and 10000");
    }
    let load = PingLoad {
        connections: a.connections,
        duration: Duration::from_secs_f64(a.duration),
        pipeline: a.pipeline,
        size: a.size,
    };
    let p = prepare(resolve(&a.target, a.port.port)?, &a.key)?;
    let report =
        super::runtime()?.block_on(ping_load(&p.endpoint.target, &p.key, &p.opts, &load))?;
    emit(a.json, &report, |r| print_ping(&a.target, r))
}

fn print_ping(target: &HostSpec, r: &PingReport) {
    println!(
        "ping {target}: {} connections, pipeline {}, {} bytes payload, {:.1} s",
        r.connections, r.pipeline, r.size, r.seconds
    );
    println!("requests:   {}", r.requests);
    println!("requests/s: {:.0}", r.requests_per_sec);
    println!(
        "latency ms: p50 {:.3}  p99 {:.3}  p999 {:.3}  max {:.3}",
        r.latency.p50_ms, r.latency.p99_ms, r.latency.p999_ms, r.latency.max_ms
    );
}

fn transfer(a: TransferArgs, direction: Direction) -> anyhow::Result<i32> {
    if a.size == 0 {
        usage!("--size must be at least 1 byte");
    }
    if a.parallel == 0 || a.parallel > 64 {
        usage!("--parallel must be between 1 and 64");
    }
    let load = TransferLoad {
        direction,
        size: a.size,
        parallel: a.parallel,
        local_dir: a.dir.clone().unwrap_or_else(std::env::temp_dir),
    };
    let p = prepare(resolve(&a.target, a.port.port)?, &a.key)?;
    let report =
        super::runtime()?.block_on(transfer_load(&p.endpoint.target, &p.key, &p.opts, &load))?;
    emit(a.json, &report, |r| print_transfer(&a.target, r))
}

/// Prints a report as one JSON line (`--json`) or as text.
fn emit<R: serde::Serialize>(json: bool, report: &R, text: impl FnOnce(&R)) -> anyhow::Result<i32> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        text(report);
    }
    Ok(0)
}

fn print_transfer(target: &HostSpec, r: &TransferReport) {
    let what = match r.direction {
        Direction::Put => "put",
        Direction::Get => "get",
    };
    println!(
        "{what} {target}: {} x {} bytes in {:.2} s",
        r.parallel, r.size, r.seconds
    );
    println!("MB/s:            {:.1}", r.mb_per_sec);
    println!("client peak RSS: {:.1} MiB", r.client_peak_rss_mib);
}

fn exec(a: ExecArgs) -> anyhow::Result<i32> {
    if a.count == 0 || a.count > 100_000 {
        usage!("-n must be between 1 and 100000");
    }
    let p = prepare(resolve(&a.target, a.port.port)?, &a.key)?;
    let r = super::runtime()?.block_on(exec_load(&p.endpoint.target, &p.key, &p.opts, a.count))?;
    emit(a.json, &r, |r| {
        println!(
            "exec {}: `true` {} times, {:.2} s",
            a.target, r.count, r.seconds
        );
        println!(
            "latency ms: p50 {:.3}  p99 {:.3}  max {:.3}",
            r.latency.p50_ms, r.latency.p99_ms, r.latency.max_ms
        );
    })
}
