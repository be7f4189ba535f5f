//! Load generation for `skiff bench`: many authenticated sessions doing
//! round trips, with a bounded-memory latency histogram.
//!
//! The ping load works like redis-benchmark's `-P`: each connection queues
//! `pipeline` pings, flushes them in one write, then reads their pongs in
//! order; a request's latency runs from that flush to its pong. With
//! `pipeline = 1` it is plain request/response.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use skiff_wire::message::ping::{Ping, Pong};

use super::{connect, ClientError, ConnectOptions};
use crate::keys::UserKey;
use crate::target::Target;

/// Sub-buckets per power of two: about 1.5% relative precision.
const SUB_BUCKET_BITS: u32 = 6;
const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
/// Values up to 2^40 ns (about 18 minutes) are kept exactly enough.
const MAX_EXPONENT: usize = 40;

/// A log-linear latency histogram (HdrHistogram's idea, in 20 KiB):
/// recording is O(1) and memory does not grow with the number of samples,
/// so a long run with millions of requests stays bounded.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; (MAX_EXPONENT + 1) * SUB_BUCKETS],
            total: 0,
            max_ns: 0,
        }
    }
}

impl Histogram {
    fn index(ns: u64) -> usize {
        let ns = ns.min((1u64 << MAX_EXPONENT) - 1);
        if ns < SUB_BUCKETS as u64 {
            return ns as usize;
        }
        let exp = 63 - ns.leading_zeros();
        let shift = exp - SUB_BUCKET_BITS;
        let sub = ((ns >> shift) as usize) & (SUB_BUCKETS - 1);
        (shift as usize + 1) * SUB_BUCKETS + sub
    }

    /// The largest value that falls into bucket `i` (a conservative
    /// percentile: never below the true one by more than one bucket).
    fn upper_bound(i: usize) -> u64 {
        if i < SUB_BUCKETS {
            return i as u64;
        }
        let shift = (i / SUB_BUCKETS - 1) as u32;
        let sub = (i % SUB_BUCKETS) as u64;
        ((SUB_BUCKETS as u64 + sub + 1) << shift) - 1
    }

    /// Records one latency.
    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.counts[Self::index(ns)] += 1;
        self.total += 1;
        self.max_ns = self.max_ns.max(ns);
    }

    /// Adds another histogram's samples (one per connection, merged at the end).
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max_ns = self.max_ns.max(other.max_ns);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q`-quantile (0.0..=1.0), `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_nanos(Self::upper_bound(i).min(self.max_ns)));
            }
        }
        Some(Duration::from_nanos(self.max_ns))
    }

    /// p50, p99, p999 and max in milliseconds, for reports.
    pub fn summary(&self) -> LatencySummary {
        let ms = |q: f64| self.quantile(q).map_or(0.0, |d| d.as_secs_f64() * 1000.0);
        LatencySummary {
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: self.max_ns as f64 / 1e6,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LatencySummary {
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest request.
    pub max_ms: f64,
}

/// What `skiff bench ping` runs.
#[derive(Debug, Clone)]
pub struct PingLoad {
    /// Concurrent sessions.
    pub connections: usize,
    /// How long to measure (connecting is not counted).
    pub duration: Duration,
    /// Pings in flight per connection.
    pub pipeline: usize,
    /// Payload bytes per ping.
    pub size: usize,
}

/// The result of a ping load.
#[derive(Debug, Clone, Serialize)]
pub struct PingReport {
    /// Concurrent sessions.
    pub connections: usize,
    /// Pings in flight per connection.
    pub pipeline: usize,
    /// Payload bytes per ping.
    pub size: usize,
    /// Round trips completed while measuring.
    pub requests: u64,
    /// Measured wall time in seconds.
    pub seconds: f64,
    /// Round trips per second, all connections together.
    pub requests_per_sec: f64,
    /// Per-request latency.
    pub latency: LatencySummary,
}

/// Opens `load.connections` sessions, then runs pings on all of them for
/// `load.duration` and reports throughput and latency. Any failed session
/// fails the whole run (a benchmark that silently loses connections would
/// report a lie).
pub async fn ping_load(
    target: &Target,
    key: &UserKey,
    opts: &ConnectOptions,
    load: &PingLoad,
) -> Result<PingReport, ClientError> {
    let connections = load.connections.max(1);
    let pipeline = load.pipeline.max(1);
    if load.size > skiff_wire::MAX_BODY_LEN {
        return Err(ClientError::Local(format!(
            "--size {} exceeds the frame limit of {} bytes",
            load.size,
            skiff_wire::MAX_BODY_LEN
        )));
    }
    // Connect everyone first, a few at a time, so handshakes are not timed.
    // A server drops a connection at once when too many from one address
    // are still in the handshake (`--per-source-max-startups`), and it
    // counts a login as finished a moment after the client sees it
    // finish: half its default cap in flight leaves room for that lag.
    let in_flight = (crate::serve_config::DEFAULT_PER_SOURCE_MAX_STARTUPS / 2).max(1);
    let mut sessions = Vec::with_capacity(connections);
    let mut pending = tokio::task::JoinSet::new();
    let mut started = 0;
    while sessions.len() < connections {
        while started < connections && pending.len() < in_flight {
            let (t, k, o) = (target.clone(), key.clone(), opts.clone());
            pending.spawn(async move { connect(&t, &k, &o).await });
            started += 1;
        }
        match pending.join_next().await {
            Some(Ok(client)) => sessions.push(client?),
            Some(Err(e)) => return Err(ClientError::Local(format!("connect task failed: {e}"))),
            None => break,
        }
    }
    let payload = Bytes::from((0..load.size).map(|i| i as u8).collect::<Vec<u8>>());
    let start = Instant::now();
    let deadline = tokio::time::Instant::from_std(start + load.duration);
    let mut workers = tokio::task::JoinSet::new();
    for client in sessions {
        let payload = payload.clone();
        workers.spawn(async move {
            let mut session = client.session;
            let mut hist = Histogram::default();
            let result = ping_loop(&mut session, &payload, pipeline, deadline, &mut hist).await;
            let _ = session.close().await;
            result.map(|()| hist)
        });
    }
    let mut hist = Histogram::default();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(h) => hist.merge(&h?),
            Err(e) => return Err(ClientError::Local(format!("bench task failed: {e}"))),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(PingReport {
        connections,
        pipeline,
        size: load.size,
        requests: hist.count(),
        seconds,
        requests_per_sec: hist.count() as f64 / seconds.max(1e-9),
        latency: hist.summary(),
    })
}

/// One connection's batches: queue `pipeline` pings, flush, read as many
/// pongs in order; until the deadline. A batch in flight at the deadline
/// is finished (so every request sent is answered) but still counted.
async fn ping_loop(
    session: &mut crate::session::Session<'static>,
    payload: &Bytes,
    pipeline: usize,
    deadline: tokio::time::Instant,
    hist: &mut Histogram,
) -> Result<(), ClientError> {
    // A stalled server must not hang the benchmark past its time: one
    // timer for the whole run (not one per pong, which the runtime would
    // register and remove again for every request).
    let stalled = tokio::time::sleep_until(deadline + Duration::from_secs(10));
    tokio::pin!(stalled);
    while tokio::time::Instant::now() < deadline {
        for _ in 0..pipeline {
            session.queue(&Ping {}, payload)?;
        }
        let sent = Instant::now();
        session.flush().await?;
        for _ in 0..pipeline {
            let (_, frame) = tokio::select! {
                biased;
                r = session.expect::<Pong>() => r?,
                _ = &mut stalled => {
                    return Err(ClientError::Local("server stopped answering pings".into()))
                }
            };
            if frame.body() != payload {
                return Err(ClientError::Local(
                    "a pong did not carry its ping's payload".into(),
                ));
            }
            hist.record(sent.elapsed());
        }
    }
    Ok(())
}

/// The result of `skiff bench exec`.
#[derive(Debug, Clone, Serialize)]
pub struct ExecReport {
    /// Commands run (one connection each).
    pub count: usize,
    /// Wall time of all of them, in seconds.
    pub seconds: f64,
    /// Per command: connect + TLS + handshake + spawn + exit.
    pub latency: LatencySummary,
}

/// Runs `true` on the server `count` times, each on a new connection, one
/// after another, and reports the end-to-end latency. A command that does
/// not exit 0 fails the run.
pub async fn exec_load(
    target: &Target,
    key: &UserKey,
    opts: &ConnectOptions,
    count: usize,
) -> Result<ExecReport, ClientError> {
    let req = skiff_wire::message::exec::Exec {
        cmd: Some("true".into()),
        ..Default::default()
    };
    let mut hist = Histogram::default();
    let start = Instant::now();
    for _ in 0..count.max(1) {
        let t = Instant::now();
        let mut c = connect(target, key, opts).await?;
        let local = super::exec::LocalSide {
            stdin: None,
            forward_signals: false,
        };
        let outcome = super::exec::run(&mut c.session, &req, local).await?;
        hist.record(t.elapsed());
        let _ = c.session.close().await;
        if outcome.exit_status() != 0 {
            return Err(ClientError::Local(format!(
                "`true` ended with status {}",
                outcome.exit_status()
            )));
        }
    }
    Ok(ExecReport {
        count: count.max(1),
        seconds: start.elapsed().as_secs_f64(),
        latency: hist.summary(),
    })
}

/// Which way `skiff bench put|get` moves data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client to server.
    Put,
    /// Server to client.
    Get,
}

/// What `skiff bench put|get` runs.
#[derive(Debug, Clone)]
pub struct TransferLoad {
    /// Which way.
    pub direction: Direction,
    /// Bytes per file.
    pub size: u64,
    /// Files moved at once, each on its own session.
    pub parallel: usize,
    /// Where the local files live while the benchmark runs.
    pub local_dir: std::path::PathBuf,
}

/// The result of a transfer load.
#[derive(Debug, Clone, Serialize)]
pub struct TransferReport {
    /// Which way.
    pub direction: Direction,
    /// Bytes per file.
    pub size: u64,
    /// Files moved at once.
    pub parallel: usize,
    /// Wall time of the timed transfers, in seconds.
    pub seconds: f64,
    /// Megabytes (10^6 bytes) per second, all transfers together.
    pub mb_per_sec: f64,
    /// The client process's peak resident memory, in MiB.
    pub client_peak_rss_mib: f64,
}

/// The peak resident set size of this process in MiB.
pub fn peak_rss_mib() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    // Linux reports ru_maxrss in KiB.
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| u.max_rss() as f64 / 1024.0)
}

/// Writes `size` bytes of non-repeating data to `path` in 1 MiB steps (so
/// the client's memory does not grow with the file).
fn write_test_file(path: &std::path::Path, size: u64, seed: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut x = seed | 1;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for w in chunk.chunks_exact_mut(8) {
            // xorshift64: cheap, and the bytes do not compress.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    f.get_ref().sync_all()
}

/// Moves `load.parallel` files of `load.size` bytes through the real
/// put/get client code (verified, and fsynced on the receiving side), one
/// session each, and reports the aggregate throughput. Files are prepared
/// before the clock starts (for get: uploaded first) and removed after.
pub async fn transfer_load(
    target: &Target,
    key: &UserKey,
    opts: &ConnectOptions,
    load: &TransferLoad,
) -> Result<TransferReport, ClientError> {
    let parallel = load.parallel.max(1);
    let tag = format!("skiff-bench-{}", std::process::id());
    let files: Vec<BenchFile> = (0..parallel)
        .map(|i| {
            (
                load.local_dir.join(format!("{tag}-{i}.bin")),
                format!("/{tag}-{i}.bin"),
            )
        })
        .collect();
    let result = async {
        prepare_files(target, key, opts, load, &files).await?;
        let seconds = timed_transfers(target, key, opts, load.direction, &files).await?;
        Ok::<_, ClientError>(TransferReport {
            direction: load.direction,
            size: load.size,
            parallel,
            seconds,
            mb_per_sec: (load.size * parallel as u64) as f64 / 1e6 / seconds.max(1e-9),
            client_peak_rss_mib: peak_rss_mib(),
        })
    }
    .await;
    remove_files(target, key, opts, &files).await;
    result
}

/// One benchmark file: its local path and its path on the server.
type BenchFile = (std::path::PathBuf, String);

/// The options every benchmark transfer uses: overwrite the last run's file.
fn bench_options() -> super::files::Options {
    super::files::Options {
        force: true,
        ..Default::default()
    }
}

/// Writes the local files; for a get, uploads them and removes the local
/// copies, so the timed run starts with the files only on the server.
async fn prepare_files(
    target: &Target,
    key: &UserKey,
    opts: &ConnectOptions,
    load: &TransferLoad,
    files: &[BenchFile],
) -> Result<(), ClientError> {
    let local_err = |e: std::io::Error| ClientError::Local(format!("bench file: {e}"));
    for (i, (local, _)) in files.iter().enumerate() {
        write_test_file(local, load.size, 0x9e37_79b9_7f4a_7c15 ^ i as u64).map_err(local_err)?;
    }
    if load.direction == Direction::Get {
        let mut c = connect(target, key, opts).await?;
        for (local, remote) in files {
            check(
                super::files::upload::put_as(&mut c.session, local, remote, &bench_options())
                    .await?,
            )?;
            std::fs::remove_file(local).map_err(local_err)?;
        }
        let _ = c.session.close().await;
    }
    Ok(())
}

/// Moves every file at once, one session each (all connected before the
/// clock starts), and returns the seconds from the first byte to the last
/// verified file.
async fn timed_transfers(
    target: &Target,
    key: &UserKey,
    opts: &ConnectOptions,
    direction: Direction,
    files: &[BenchFile],
) -> Result<f64, ClientError> {
    let mut sessions = Vec::with_capacity(files.len());
    for _ in files {
        sessions.push(connect(target, key, opts).await?);
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (mut c, (local, remote)) in sessions.into_iter().zip(files.to_vec()) {
        let o = bench_options();
        tasks.spawn(async move {
            let s = match direction {
                Direction::Put => {
                    super::files::upload::put_as(&mut c.session, &local, &remote, &o).await
                }
                Direction::Get => {
                    super::files::download::get_as(&mut c.session, &remote, &local, &o).await
                }
            };
            let _ = c.session.close().await;
            check(s?)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| ClientError::Local(format!("transfer task failed: {e}")))??;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Leaves nothing behind, on either side, whatever happened.
async fn remove_files(target: &Target, key: &UserKey, opts: &ConnectOptions, files: &[BenchFile]) {
    for (local, _) in files {
        let _ = std::fs::remove_file(local);
    }
    if let Ok(mut c) = connect(target, key, opts).await {
        for (_, remote) in files {
            let _ = super::files::remote::rm(&mut c.session, remote, false).await;
        }
        let _ = c.session.close().await;
    }
}

/// A transfer with failures is a failed benchmark, not a fast one.
fn check(s: super::files::Summary) -> Result<(), ClientError> {
    match s.failures.first() {
        None => Ok(()),
        Some(f) => Err(ClientError::Local(format!(
            "transfer failed: {} [{}]",
            f.message, f.code
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_a_bucket() {
        let mut h = Histogram::default();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile(0.5).unwrap().as_micros() as f64;
        let p99 = h.quantile(0.99).unwrap().as_micros() as f64;
        assert!((p50 - 500.0).abs() / 500.0 < 0.02, "p50 {p50}");
        assert!((p99 - 990.0).abs() / 990.0 < 0.02, "p99 {p99}");
        assert_eq!(h.quantile(1.0).unwrap(), Duration::from_micros(1000));
        assert_eq!(h.count(), 1000);
    }

    #[test]
    fn buckets_cover_their_values() {
        for ns in [0u64, 1, 63, 64, 65, 127, 128, 1000, 123_456_789, 1 << 39] {
            let i = Histogram::index(ns);
            assert!(Histogram::upper_bound(i) >= ns, "{ns}");
            if i > 0 {
                assert!(Histogram::upper_bound(i - 1) < ns, "{ns}");
            }
        }
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(Duration::from_millis(1));
        b.record(Duration::from_millis(3));
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert_eq!(a.summary().max_ms, 3.0);
        assert!(Histogram::default().quantile(0.5).is_none());
    }
}
