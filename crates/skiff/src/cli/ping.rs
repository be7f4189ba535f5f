//! `skiff ping`: round trips like ping(8), over the session or over UDP.

use std::time::Duration;

use super::output::usage;

use super::connect::{parse_target, prepare, resolve, KeyArg, PortArg};
use super::fanout::FanoutArgs;
use crate::client::config::Endpoint;
use crate::client::ping::{ping_once, RttStats};
use crate::client::udp_ping::{self, PingEvent, UdpPingOptions};
use crate::target::{split_host_port, HostRef, HostSpec, Target, DEFAULT_PORT};

/// Arguments of `skiff ping`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    port: PortArg,
    /// Ping over UDP datagrams instead of the session (implied by a
    /// udp:// TARGET).
    #[arg(long)]
    udp: bool,
    /// Stop after COUNT pings (default: until Ctrl-C).
    #[arg(short = 'c', value_name = "COUNT")]
    count: Option<u64>,
    /// Seconds between pings; 0 sends the next as soon as the previous one
    /// is answered (or, over UDP, timed out).
    #[arg(short = 'i', value_name = "INTERVAL", default_value_t = 1.0)]
    interval: f64,
    /// Payload bytes per ping.
    #[arg(short = 's', value_name = "SIZE", default_value_t = 56)]
    size: usize,
    /// UDP: seconds to wait for each reply before counting it lost.
    #[arg(short = 'W', value_name = "TIMEOUT", default_value_t = 2.0)]
    timeout: f64,
    #[command(flatten)]
    fanout: FanoutArgs,
    /// Server: [USER@]HOST[:PORT], [IPv6]:PORT, an alias or a URL; with --udp, HOST[:PORT]
    /// or udp://HOST:PORT (default port 7878). None with -H or --hosts-file.
    #[arg(value_parser = parse_ping_target, required_unless_present_any = ["hosts", "hosts_file"])]
    target: Option<PingTarget>,
}

/// A TARGET as written: a session target, or an explicit `udp://` URL.
#[derive(Debug, Clone)]
enum PingTarget {
    Session(HostSpec),
    Udp { host: String, port: u16 },
}

fn parse_ping_target(s: &str) -> Result<PingTarget, String> {
    match s.strip_prefix("udp://") {
        Some(rest) => {
            let (host, port) = split_host_port(rest, DEFAULT_PORT)?;
            if host.is_empty() {
                return Err(format!("no host in {s:?}"));
            }
            Ok(PingTarget::Udp { host, port })
        }
        None => parse_target(s).map(PingTarget::Session),
    }
}

/// Runs the pings and prints the summary.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let Ok(interval) = Duration::try_from_secs_f64(args.interval) else {
        usage!(
            "-i {}: the interval must be a number of seconds >= 0",
            args.interval
        );
    };
    if args.size > skiff_wire::MAX_BODY_LEN {
        usage!(
            "-s {} exceeds the frame limit of {} bytes",
            args.size,
            skiff_wire::MAX_BODY_LEN
        );
    }
    let target = match (&args.target, args.fanout.selected()) {
        (Some(_), true) => usage!("give a TARGET or -H/--hosts-file, not both"),
        (Some(t), false) => t.clone(),
        (None, _) => return ping_many(&args, interval),
    };
    // A bare HOST[:PORT] (or an alias) names a TLS server; over UDP it is
    // the same host and port.
    let (spec, endpoint) = match &target {
        PingTarget::Udp { host, port } => {
            let spec = HostSpec {
                user: None,
                host: HostRef::Named {
                    name: host.clone(),
                    port: Some(*port),
                },
            };
            let ep = resolve(&spec, args.port.port)?;
            (spec, ep)
        }
        PingTarget::Session(spec) => (spec.clone(), resolve(spec, args.port.port)?),
    };
    let udp_addr = match (
        &endpoint.target,
        args.udp || matches!(target, PingTarget::Udp { .. }),
    ) {
        (Target::Tls { host, port }, true) => Some((host.clone(), *port)),
        (other, true) => {
            usage!("--udp needs HOST[:PORT] or udp://HOST:PORT, not {other}")
        }
        (_, false) => None,
    };
    match udp_addr {
        None => super::runtime()?.block_on(session_ping(&args, &spec, interval)),
        Some((host, port)) => ping_udp(&args, endpoint, &host, port, interval),
    }
}

/// `-H`/`--hosts-file`: pings each host over a session.
fn ping_many(args: &Args, interval: Duration) -> anyhow::Result<i32> {
    if args.udp {
        usage!("--udp pings one host");
    }
    // Each host: the connect limit, then every ping and its wait.
    let count = args.count.unwrap_or(1);
    let per_ping = interval + Duration::try_from_secs_f64(args.timeout).unwrap_or_default();
    let deadline = Duration::from_secs(10)
        .saturating_add(per_ping.saturating_mul(u32::try_from(count).unwrap_or(u32::MAX)));
    super::fanout::ping_many(
        &args.fanout,
        &args.key,
        args.port,
        count,
        interval,
        args.size,
        deadline,
    )
}

/// `--udp` or `udp://`: checks the UDP limits, then pings `host:port`.
fn ping_udp(
    args: &Args,
    endpoint: Endpoint,
    host: &str,
    port: u16,
    interval: Duration,
) -> anyhow::Result<i32> {
    let max = skiff_wire::message::udp::MAX_UDP_BODY;
    if args.size > max {
        usage!("-s {}: a UDP ping carries at most {max} bytes", args.size);
    }
    let timeout = match Duration::try_from_secs_f64(args.timeout) {
        Ok(t) if !t.is_zero() => t,
        _ => usage!(
            "-W {}: the timeout must be a number of seconds > 0",
            args.timeout
        ),
    };
    let opts = UdpPingOptions {
        count: args.count,
        interval,
        size: args.size,
        timeout,
    };
    let host_port = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let key = prepare(endpoint, &args.key)?.key;
    super::runtime()?.block_on(udp_ping(&key, &host_port, &opts))
}

async fn udp_ping(
    key: &crate::keys::UserKey,
    host_port: &str,
    opts: &UdpPingOptions,
) -> anyhow::Result<i32> {
    let socket = udp_ping::connect(host_port).await?;
    let target = format!("udp://{host_port}");
    println!("PING {target} ({} bytes of payload)", opts.size);
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let report = udp_ping::run(&socket, key, opts, stop, |event| match event {
        PingEvent::Reply {
            seq,
            bytes,
            rtt,
            reordered,
        } => println!(
            "{bytes} bytes from {target}: seq={seq} time={:.3} ms{}",
            rtt.as_secs_f64() * 1000.0,
            if *reordered { " (reordered)" } else { "" }
        ),
        PingEvent::Duplicate { seq } => println!("reply from {target}: seq={seq} (DUP!)"),
        PingEvent::Timeout { seq } => println!(
            "no reply from {target}: seq={seq} within {:.3} s",
            opts.timeout.as_secs_f64()
        ),
    })
    .await?;
    print_summary(
        &target,
        &Totals {
            transmitted: report.transmitted,
            received: report.received,
            duplicates: report.duplicates,
            reordered: report.reordered,
        },
        &report.rtt,
    );
    if report.received > 0 {
        return Ok(0);
    }
    eprintln!(
        "skiff: no UDP reply from {host_port}: the server answers UDP pings only when started with `--listen udp://HOST:PORT` (as well as its tcp:// listener), the same key must be in its users file, and no firewall may drop UDP"
    );
    Ok(1)
}

async fn session_ping(args: &Args, target: &HostSpec, interval: Duration) -> anyhow::Result<i32> {
    let mut client = super::connect::open(target, &args.key, args.port, false).await?;
    println!("PING {} ({} bytes of payload)", target, args.size);
    let payload: Vec<u8> = (0..args.size).map(|i| i as u8).collect();
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
            target,
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
    let totals = Totals {
        transmitted: seq,
        received: stats.count() as u64,
        ..Totals::default()
    };
    print_summary(&target.to_string(), &totals, &stats);
    let _ = client.session.close().await;
    Ok(0)
}

/// Counts for the summary's first line.
#[derive(Debug, Default)]
struct Totals {
    transmitted: u64,
    received: u64,
    duplicates: u64,
    reordered: u64,
}

/// The ping(8)-style summary, plus the median round trip.
fn print_summary(target: &str, t: &Totals, stats: &RttStats) {
    println!("--- {target} ping statistics ---");
    let mut line = format!(
        "{} pings transmitted, {} received",
        t.transmitted, t.received
    );
    if t.duplicates > 0 {
        line.push_str(&format!(", +{} duplicates", t.duplicates));
    }
    if t.reordered > 0 {
        line.push_str(&format!(", {} reordered", t.reordered));
    }
    println!("{line}, {} loss", loss_percent(t.transmitted, t.received));
    if let Some((min, avg, max, mdev)) = stats.summary() {
        println!("rtt min/avg/max/mdev = {min:.3}/{avg:.3}/{max:.3}/{mdev:.3} ms");
    }
    if let Some(median) = stats.median() {
        println!("rtt median = {median:.3} ms");
    }
}

/// `33.3%`, `0%`, `100%`: one decimal only when it is not a whole number.
fn loss_percent(transmitted: u64, received: u64) -> String {
    if transmitted == 0 {
        return "0%".to_string();
    }
    let lost = transmitted.saturating_sub(received) as f64;
    let pct = (lost * 1000.0 / transmitted as f64).round() / 10.0;
    if pct.fract() == 0.0 {
        format!("{pct:.0}%")
    } else {
        format!("{pct:.1}%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_is_printed_like_ping() {
        assert_eq!(loss_percent(30, 20), "33.3%");
        assert_eq!(loss_percent(10, 10), "0%");
        assert_eq!(loss_percent(4, 0), "100%");
        assert_eq!(loss_percent(0, 0), "0%");
    }

    #[test]
    fn parses_udp_targets() {
        assert!(matches!(
            parse_ping_target("udp://[::1]:9"),
            Ok(PingTarget::Udp { host, port: 9 }) if host == "::1"
        ));
        assert!(matches!(
            parse_ping_target("udp://h"),
            Ok(PingTarget::Udp {
                port: DEFAULT_PORT,
                ..
            })
        ));
        assert!(parse_ping_target("udp://").is_err());
        assert!(matches!(
            parse_ping_target("h:5"),
            Ok(PingTarget::Session(_))
        ));
    }
}
