//! `skiff ping`: round trips like ping(8).

use std::time::Duration;

use super::connect::{parse_target, KeyArg};
use crate::client::ping::{ping_once, RttStats};
use crate::target::Target;

/// Arguments of `skiff ping`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    key: KeyArg,
    /// Ping over UDP datagrams instead of the session.
    #[arg(long)]
    udp: bool,
    /// Stop after COUNT replies (default: until Ctrl-C).
    #[arg(short = 'c', value_name = "COUNT")]
    count: Option<u64>,
    /// Seconds between pings.
    #[arg(short = 'i', value_name = "INTERVAL", default_value_t = 1.0)]
    interval: f64,
    /// Payload bytes per ping.
    #[arg(short = 's', value_name = "SIZE", default_value_t = 56)]
    size: usize,
    /// Server: HOST[:PORT], [IPv6]:PORT or a URL.
    #[arg(value_parser = parse_target)]
    target: Target,
}

/// Runs the pings and prints the summary.
pub fn run(args: Args) -> anyhow::Result<i32> {
    if args.udp {
        return super::not_built("ping --udp");
    }
    if args.size > skiff_wire::MAX_BODY_LEN {
        anyhow::bail!(
            "-s {} exceeds the frame limit of {} bytes",
            args.size,
            skiff_wire::MAX_BODY_LEN
        );
    }
    super::runtime()?.block_on(session_ping(args))
}

async fn session_ping(args: Args) -> anyhow::Result<i32> {
    let mut client = super::connect::open(&args.target, &args.key).await?;
    println!("PING {} ({} bytes of payload)", args.target, args.size);
    let payload: Vec<u8> = (0..args.size).map(|i| i as u8).collect();
    let interval = Duration::from_secs_f64(args.interval.max(0.0));
    let mut stats = RttStats::default();
    let mut seq = 0u64;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        if args.count.is_some_and(|c| seq >= c) {
            break;
        }
        let rtt = tokio::select! {
            r = ping_once(&mut client.session, &payload) => r?,
            _ = &mut interrupted => break,
        };
        stats.add(rtt);
        println!(
            "{} bytes from {}: seq={} time={:.3} ms",
            args.size,
            args.target,
            seq,
            rtt.as_secs_f64() * 1000.0
        );
        seq += 1;
        if args.count.is_some_and(|c| seq >= c) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut interrupted => break,
        }
    }
    println!("--- {} ping statistics ---", args.target);
    println!(
        "{} pings transmitted, {} received, 0% loss",
        seq,
        stats.count()
    );
    if let Some((min, avg, max, mdev)) = stats.summary() {
        println!("rtt min/avg/max/mdev = {min:.3}/{avg:.3}/{max:.3}/{mdev:.3} ms");
    }
    let _ = client.session.close().await;
    Ok(0)
}
