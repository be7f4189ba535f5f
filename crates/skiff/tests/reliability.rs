//! The reliability suite: the real `skiff` binary and server through a
//! relay that breaks connections (fault rounds), a soak of many
//! concurrent clients beside many idle sessions, and hostile peers that
//! dribble or send frames out of order.
//!
//! The default `cargo test` runs the short forms (a few seconds each);
//! `SKIFF_LONG_TESTS=1` runs the long forms (docs/RELIABILITY.md gives both
//! and their figures). Randomized parts print their seed; set
//! `SKIFF_FAULT_SEED` to replay one.

mod common;
#[path = "reliability/relay.rs"]
mod relay;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::probe::{host_port, raise_fd_limit, rss_kib, text, RawConn};
use common::TestServer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use relay::{Fault, Relay, Way};
use serde_json::json;

/// Whether the long forms were asked for.
fn long() -> bool {
    std::env::var("SKIFF_LONG_TESTS").is_ok_and(|v| v == "1")
}

/// `SKIFF_FAULT_SEED`, or a fresh seed; printed either way.
fn seed(what: &str) -> u64 {
    let seed = std::env::var("SKIFF_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{what}: seed {seed} (SKIFF_FAULT_SEED={seed} replays it)");
    seed
}

/// Every descendant process of `pid` (children, their children, ...).
fn descendants(pid: u32) -> Vec<(u32, String)> {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split at ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c).to_string();
        let ppid: Option<u32> = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        if let Some(ppid) = ppid {
            parent_of.push((p, ppid, comm));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (p, pp, comm) in &parent_of {
            if *pp == parent {
                out.push((*p, comm.clone()));
                frontier.push(*p);
            }
        }
    }
    out
}

/// Waits (bounded) until the server has no process of its own left.
fn no_processes_left(server: &TestServer, limit: Duration) -> Result<(), Vec<(u32, String)>> {
    let deadline = Instant::now() + limit;
    loop {
        let left = descendants(server.pid());
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(left);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a client command with `stdin` fed in, killed past `limit`.
fn run_with_input(mut cmd: Command, stdin: &[u8], limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let start = Instant::now();
    let out_reader = {
        let mut out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut out, &mut v);
            v
        })
    };
    let err_reader = {
        let mut err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = std::io::Read::read_to_end(&mut err, &mut v);
            v
        })
    };
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("client did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = feeder.join();
    Output {
        status,
        stdout: out_reader.join().expect("stdout"),
        stderr: err_reader.join().expect("stderr"),
    }
}

/// A failure must be an error a user can read, with a non-zero status.
fn assert_clear_failure(what: &str, out: &Output) {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{what}: failed but exited 0");
    assert!(
        !err.trim().is_empty() && !err.contains("panicked"),
        "{what}: unclear failure: {err:?}"
    );
}

/// A random fault for one round that sends about `bytes.0` bytes up
/// (client to server) and `bytes.1` down.
fn random_fault(rng: &mut StdRng, bytes: (u64, u64)) -> Fault {
    let way = if rng.gen_bool(0.5) {
        Way::Up
    } else {
        Way::Down
    };
    let total = match way {
        Way::Up => bytes.0,
        Way::Down => bytes.1,
    };
    // Cut points cover the handshake (the first few KiB) and the data.
    let at = if rng.gen_bool(0.3) {
        rng.gen_range(0..4096)
    } else {
        rng.gen_range(0..total.max(1) + 4096)
    };
    match rng.gen_range(0..10) {
        0 => Fault::Pass,
        1 => Fault::Delay(rng.gen_range(1..5)),
        2 | 3 => Fault::Stall {
            way,
            at,
            ms: rng.gen_range(50..1200),
        },
        4..=6 => Fault::Cut {
            way,
            at,
            reset: false,
        },
        _ => Fault::Cut {
            way,
            at,
            reset: true,
        },
    }
}

/// Pins the server's certificate for the relay's address too.
fn pin_relay(server: &TestServer, relay: &Relay) {
    let fp = server.fingerprint().expect("a TLS fingerprint");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(server.known_file())
        .expect("known_servers");
    writeln!(f, "{} {fp}", relay.addr).expect("pin relay");
}

/// Nothing partial under the server root: no `.skiff-part`, and only the
/// names of completed files.
fn assert_root_clean(server: &TestServer, completed: &std::collections::HashSet<String>) {
    assert!(common::leftovers(&server.root).is_empty());
    for e in std::fs::read_dir(&server.root).expect("root").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        assert!(
            completed.contains(&name),
            "{name} is visible in the root but was never completed"
        );
    }
}

#[test]
fn fault_relay_rounds_complete_or_fail_clearly_and_resume() {
    let rounds = if long() { 300 } else { 15 };
    let max_size: u64 = if long() { 8 << 20 } else { 1 << 20 };
    let server = TestServer::start(&[]);
    let target: std::net::SocketAddr = host_port(server.url()).parse().expect("an IP URL");
    let seed = seed("fault relay");
    let plan_rng = std::sync::Mutex::new(StdRng::seed_from_u64(seed ^ 0x5eed));
    // Bytes the next round sends up and down (TLS and the handshake take
    // a few KiB of their own).
    let sizes = std::sync::Arc::new(std::sync::Mutex::new((0u64, 0u64)));
    let next_size = sizes.clone();
    let relay = Relay::start(target, move |_| {
        let bytes = *next_size.lock().expect("size");
        random_fault(&mut plan_rng.lock().expect("rng"), bytes)
    });
    pin_relay(&server, &relay);
    let via = format!("tcp://{}", relay.addr);
    let direct = server.url().to_string();
    let work = tempfile::tempdir().expect("tempdir");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut completed = std::collections::HashSet::new();
    let (mut ok, mut failed, mut resumed) = (0, 0, 0);
    let limit = Duration::from_secs(60);
    for round in 0..rounds {
        let size = rng.gen_range(1..max_size);
        let op = rng.gen_range(0..3);
        *sizes.lock().expect("size") = match op {
            0 => (size, 0),
            1 => (0, size),
            _ => ((size / 4).max(1), (size / 4).max(1)),
        };
        let (what, out) = match op {
            0 => {
                let name = format!("up{round}.bin");
                let src = work.path().join(&name);
                common::make_file(&src, size, round as u64);
                let mut cmd = server.client();
                cmd.args(["put", &via, common::p(&src), &name]);
                let out = common::probe::run_bounded(cmd, limit);
                if out.status.success() {
                    assert_eq!(common::hash(&server.root.join(&name)), common::hash(&src));
                } else {
                    assert_clear_failure(&format!("round {round}: put"), &out);
                    // Cut after the server committed, before the client
                    // heard `done`: the file is there, and whole.
                    let dest = server.root.join(&name);
                    if dest.exists() {
                        assert_eq!(
                            common::hash(&dest),
                            common::hash(&src),
                            "round {round}: a failed put left a partial {name} visible"
                        );
                        completed.insert(name);
                        eprintln!("round {round}: put committed, its confirmation lost");
                        continue;
                    }
                    assert_root_clean(&server, &completed);
                    let mut cmd = server.client();
                    cmd.args(["put", "--resume", &direct, common::p(&src), &name]);
                    let again = common::probe::run_bounded(cmd, limit);
                    assert!(
                        again.status.success(),
                        "round {round}: put --resume: {}",
                        text(&again.stderr)
                    );
                    assert_eq!(common::hash(&server.root.join(&name)), common::hash(&src));
                    resumed += 1;
                }
                completed.insert(name);
                ("put", out)
            }
            1 => {
                let name = format!("down{round}.bin");
                let src = server.root.join(&name);
                common::make_file(&src, size, 1000 + round as u64);
                completed.insert(name.clone());
                let dst = work.path().join(&name);
                let mut cmd = server.client();
                cmd.args(["get", &via, &name, common::p(&dst)]);
                let out = common::probe::run_bounded(cmd, limit);
                if out.status.success() {
                    assert_eq!(common::hash(&dst), common::hash(&src));
                } else {
                    assert_clear_failure(&format!("round {round}: get"), &out);
                    if dst.exists() {
                        assert_eq!(
                            common::hash(&dst),
                            common::hash(&src),
                            "round {round}: a failed get left a partial {name} visible"
                        );
                        eprintln!("round {round}: get completed, then the connection broke");
                        continue;
                    }
                    let mut cmd = server.client();
                    cmd.args(["get", "--resume", &direct, &name, common::p(&dst)]);
                    let again = common::probe::run_bounded(cmd, limit);
                    assert!(
                        again.status.success(),
                        "round {round}: get --resume: {}",
                        text(&again.stderr)
                    );
                    assert_eq!(common::hash(&dst), common::hash(&src));
                    resumed += 1;
                }
                ("get", out)
            }
            _ => {
                // stdin through `cat` and back: both directions at once.
                let n = (size / 4).max(1) as usize;
                let mut input = vec![0u8; n];
                rng.fill(&mut input[..]);
                let mut cmd = server.client();
                cmd.args(["exec", &via, "--", "cat"]);
                let out = run_with_input(cmd, &input, limit);
                if out.status.success() {
                    assert_eq!(out.stdout.len(), input.len(), "round {round}: exec output");
                    assert!(out.stdout == input, "round {round}: exec output differs");
                } else {
                    assert_clear_failure(&format!("round {round}: exec"), &out);
                }
                ("exec", out)
            }
        };
        let fault = relay
            .applied
            .lock()
            .expect("log")
            .last()
            .copied()
            .unwrap_or(Fault::Pass);
        if out.status.success() {
            ok += 1;
        } else {
            failed += 1;
        }
        eprintln!(
            "round {round}: {what} {size} B through {fault:?}: {}",
            if out.status.success() {
                "ok".to_string()
            } else {
                format!(
                    "exit {:?}: {}",
                    out.status.code(),
                    text(&out.stderr).trim().lines().last().unwrap_or("")
                )
            }
        );
        // A command cut off from its client is ended, and nothing else
        // runs on behalf of a connection that is gone.
        if let Err(left) = no_processes_left(&server, Duration::from_secs(15)) {
            panic!("round {round}: processes left on the server: {left:?}");
        }
        assert_root_clean(&server, &completed);
    }
    eprintln!(
        "fault relay, seed {seed}: {rounds} rounds, {ok} completed, {failed} failed clearly, \
         {resumed} resumed to completion"
    );
    assert!(
        server.staged_files().is_empty(),
        "{:?}",
        server.staged_files()
    );
}

// ---------------------------------------------------------------------
// soak

/// What one soak client did.
#[derive(Default)]
struct Tally {
    ops: u64,
    failures: Vec<String>,
}

/// One authenticated client running a mix of ping, exec and small
/// put/get until `until`.
async fn soak_client(
    i: usize,
    url: String,
    key: std::sync::Arc<skiff::keys::UserKey>,
    opts: skiff::client::ConnectOptions,
    dir: std::path::PathBuf,
    until: tokio::time::Instant,
    gate: std::sync::Arc<tokio::sync::Semaphore>,
) -> Tally {
    use skiff::client::files::Options;
    let mut tally = Tally::default();
    let target: skiff::target::Target = match url.parse() {
        Ok(t) => t,
        Err(e) => {
            tally.failures.push(e);
            return tally;
        }
    };
    // Logins are spread out (a few at a time), as real clients arrive.
    let connected = {
        let _permit = gate.acquire().await;
        skiff::client::connect(&target, &key, &opts).await
    };
    let mut c = match connected {
        Ok(c) => c,
        Err(e) => {
            tally.failures.push(format!("client {i}: connect: {e}"));
            return tally;
        }
    };
    let local = dir.join(format!("c{i}.bin"));
    let back = dir.join(format!("c{i}.back"));
    let payload: Vec<u8> = (0..4096u32).map(|x| (x as usize ^ i) as u8).collect();
    if let Err(e) = std::fs::write(&local, &payload) {
        tally.failures.push(format!("client {i}: {e}"));
        return tally;
    }
    let remote = format!("/soak/c{i}.bin");
    let files = Options {
        force: true,
        ..Options::default()
    };
    let exec = skiff_wire::message::exec::Exec {
        argv: Some(vec!["true".into()]),
        ..Default::default()
    };
    let mut n = i as u64;
    while tokio::time::Instant::now() < until {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let r: Result<(), String> = match (n >> 33) % 10 {
            0..=5 => skiff::client::ping::ping_once(&mut c.session, b"soak")
                .await
                .map(|_| ())
                .map_err(|e| format!("ping: {e}")),
            6 | 7 => {
                let local_side = skiff::client::exec::LocalSide {
                    stdin: None,
                    forward_signals: false,
                };
                match skiff::client::exec::run(&mut c.session, &exec, local_side).await {
                    Ok(o) if o.exit_status() == 0 => Ok(()),
                    Ok(o) => Err(format!("exec: status {}", o.exit_status())),
                    Err(e) => Err(format!("exec: {e}")),
                }
            }
            8 => skiff::client::files::upload::put_as(&mut c.session, &local, &remote, &files)
                .await
                .map_err(|e| format!("put: {e}"))
                .and_then(|s| match s.failures.first() {
                    None => Ok(()),
                    Some(f) => Err(format!("put: {}", f.message)),
                }),
            _ => {
                let got =
                    skiff::client::files::download::get_as(&mut c.session, &remote, &back, &files)
                        .await;
                match got {
                    // Not uploaded yet: a put first.
                    Err(skiff::client::ClientError::Remote(m))
                        if m.code == skiff_wire::ErrorCode::NotFound =>
                    {
                        Ok(())
                    }
                    Err(e) => Err(format!("get: {e}")),
                    Ok(s) if !s.failures.is_empty() => {
                        Err(format!("get: {}", s.failures[0].message))
                    }
                    Ok(_) => match std::fs::read(&back) {
                        Ok(b) if b == payload => Ok(()),
                        Ok(_) => Err("get: the file came back different".into()),
                        Err(e) => Err(format!("get: {e}")),
                    },
                }
            }
        };
        tally.ops += 1;
        if let Err(e) = r {
            tally.failures.push(format!("client {i}: {e}"));
            return tally;
        }
    }
    let _ = c.session.close().await;
    tally
}

/// Percentile `p` (0..=100) of sorted `v`.
fn percentile(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() as f64 - 1.0) * p / 100.0).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Every transfer wait on the client is bounded: with the server's side of
/// the connection stalled by the relay (its answers held back, or the
/// client's data no longer taken), `put` and `get`, of one file and of a
/// tree, end at the client's idle timeout (shortened by the debug-only hook
/// `SKIFF_TEST_IDLE_TIMEOUT_MS`) with a clear error; nothing partial
/// becomes visible on either side, and what a single file's transfer kept
/// finishes with `--resume`.
#[test]
fn transfers_to_a_stalled_server_end_at_the_client_idle_timeout() {
    let server = TestServer::start(&[]);
    let target: std::net::SocketAddr = host_port(server.url()).parse().expect("an IP URL");
    // Past the handshake (a few KiB each way), long before the end.
    let stall = |way| {
        Relay::start(target, move |_| Fault::Stall {
            way,
            at: 256 * 1024,
            ms: 600_000,
        })
    };
    let (answers_held, data_refused) = (stall(Way::Down), stall(Way::Up));
    pin_relay(&server, &answers_held);
    pin_relay(&server, &data_refused);
    let work = tempfile::tempdir().expect("tempdir");
    let up = work.path().join("up");
    for i in 0..100u64 {
        let dir = up.join(format!("d{}", i % 10));
        std::fs::create_dir_all(&dir).expect("mkdir");
        common::make_file(&dir.join(format!("f{i}")), 64 * 1024, i);
    }
    common::make_file(&work.path().join("one.bin"), 8 << 20, 7);
    let remote = server.root.join("there");
    std::fs::create_dir_all(&remote).expect("mkdir");
    for i in 0..100u64 {
        common::make_file(&remote.join(format!("g{i}")), 64 * 1024, 100 + i);
    }
    common::make_file(&server.root.join("big.bin"), 8 << 20, 8);
    let down = work.path().join("down");
    std::fs::create_dir_all(&down).expect("mkdir");
    let via = |r: &Relay| format!("tcp://{}", r.addr);
    let cases: [(&str, &Relay, Vec<String>); 4] = [
        (
            "put -r (its data refused)",
            &data_refused,
            vec![
                "put".into(),
                "-r".into(),
                common::p(&up).into(),
                "up".into(),
            ],
        ),
        (
            "put (its data refused)",
            &data_refused,
            vec![
                "put".into(),
                common::p(&work.path().join("one.bin")).into(),
                "one.bin".into(),
            ],
        ),
        (
            "get -r (its data held back)",
            &answers_held,
            vec![
                "get".into(),
                "-r".into(),
                "there".into(),
                common::p(&down).into(),
            ],
        ),
        (
            "get (its data held back)",
            &answers_held,
            vec!["get".into(), "big.bin".into(), common::p(&down).into()],
        ),
    ];
    for (what, relay, args) in cases {
        let mut cmd = server.client();
        cmd.env("SKIFF_TEST_IDLE_TIMEOUT_MS", "1500");
        cmd.arg(args[0].as_str()).arg(via(relay)).args(&args[1..]);
        // Far below the 120 s default: only the client's own timeout
        // ends the command in time.
        let out = common::probe::run_bounded(cmd, Duration::from_secs(40));
        assert_clear_failure(what, &out);
        let err = text(&out.stderr);
        assert!(
            err.contains("timed out") || err.contains("nothing received"),
            "{what}: the failure does not say the server stopped answering: {err:?}"
        );
        if what.starts_with("get -r") {
            // A tree's unfinished files are removed, not kept.
            assert!(
                common::leftovers(&down).is_empty(),
                "{what}: partial files left"
            );
        }
    }
    assert!(
        !down.join("big.bin").exists(),
        "an unfinished get became visible"
    );
    assert!(
        !server.root.join("one.bin").exists(),
        "an unfinished put became visible"
    );
    assert!(common::leftovers(&server.root).is_empty());
    // What a single file's transfer kept finishes with --resume.
    let direct = server.url().to_string();
    let one = work.path().join("one.bin");
    let mut cmd = server.client();
    cmd.args(["put", "--resume", &direct, common::p(&one), "one.bin"]);
    common::ok(&common::probe::run_bounded(cmd, Duration::from_secs(60)));
    assert_eq!(
        common::hash(&server.root.join("one.bin")),
        common::hash(&one)
    );
    let mut cmd = server.client();
    cmd.args(["get", "--resume", &direct, "big.bin", common::p(&down)]);
    common::ok(&common::probe::run_bounded(cmd, Duration::from_secs(60)));
    assert_eq!(
        common::hash(&down.join("big.bin")),
        common::hash(&server.root.join("big.bin"))
    );
    assert!(common::leftovers(&down).is_empty());
}

#[test]
fn soak_many_clients_beside_idle_sessions() {
    let (clients, idle, mut seconds) = if long() {
        (1000usize, 10_000usize, 60u64)
    } else {
        (50, 500, 10)
    };
    // A longer run of either form shows whether the RSS levels off.
    if let Some(s) = std::env::var("SKIFF_SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        seconds = s;
    }
    raise_fd_limit((idle + 3 * clients + 1024) as u64);
    let max = (clients + idle + 64).to_string();
    let server = TestServer::start_listening(
        &["tcp://127.0.0.1:0", "tcp+plain://127.0.0.1:0"],
        &["--max-connections", &max],
    );
    let plain = server
        .urls
        .iter()
        .find(|u| u.starts_with("tcp+plain://"))
        .expect("plain listener")
        .clone();
    std::fs::create_dir(server.root.join("soak")).expect("mkdir soak");
    // The idle sessions: logged in, then silent.
    let start = Instant::now();
    let idle_conns: Vec<RawConn> = (0..idle)
        .map(|_| RawConn::login(&plain, &server.key_file))
        .collect();
    eprintln!(
        "soak: {idle} idle sessions logged in in {:?}",
        start.elapsed()
    );
    let key = std::sync::Arc::new(
        skiff::client::identity::load(&server.key_file, None).expect("the key"),
    );
    let opts = skiff::client::ConnectOptions {
        timeout: Duration::from_secs(30),
        known_servers: Some(server.known_file()),
        fingerprint: None,
    };
    let work = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = server.url().to_string();
    let pid = server.pid();
    let (tallies, pings, rss) = rt.block_on(async {
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(8));
        let warm = Duration::from_secs((seconds / 5).max(2));
        let until = tokio::time::Instant::now() + Duration::from_secs(seconds) + warm;
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                tokio::spawn(soak_client(
                    i,
                    url.clone(),
                    key.clone(),
                    opts.clone(),
                    work.path().to_path_buf(),
                    until,
                    gate.clone(),
                ))
            })
            .collect();
        // A normal client beside the load: one ping every 20 ms.
        let target: skiff::target::Target = url.parse().expect("url");
        let mut probe = skiff::client::connect(&target, &key, &opts)
            .await
            .expect("probe connect");
        let mut pings = Vec::new();
        let mut rss_warm = None;
        let begun = tokio::time::Instant::now();
        let mut next_sample = Duration::ZERO;
        while tokio::time::Instant::now() < until {
            let t = Instant::now();
            skiff::client::ping::ping_once(&mut probe.session, b"probe")
                .await
                .expect("probe ping");
            if begun.elapsed() >= warm {
                pings.push(t.elapsed());
                if rss_warm.is_none() {
                    rss_warm = Some(rss_kib(pid));
                }
            }
            // The RSS every 5 s, to see whether it levels off.
            if begun.elapsed() >= next_sample {
                eprintln!(
                    "soak: {:>3} s: server RSS {} KiB",
                    next_sample.as_secs(),
                    rss_kib(pid)
                );
                next_sample += Duration::from_secs(5);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut tallies = Vec::new();
        for t in tasks {
            tallies.push(t.await.expect("client task"));
        }
        (tallies, pings, (rss_warm.unwrap_or(0), rss_kib(pid)))
    });
    let ops: u64 = tallies.iter().map(|t| t.ops).sum();
    let failures: Vec<&String> = tallies.iter().flat_map(|t| &t.failures).collect();
    let mut pings = pings;
    pings.sort();
    let (before, after) = rss;
    let growth = (after as f64 - before as f64) / before.max(1) as f64 * 100.0;
    eprintln!(
        "soak: {clients} clients for {seconds} s (after warm-up) beside {idle} idle sessions: \
         {ops} operations, {} failed; server RSS {before} KiB after warm-up, {after} KiB at the \
         end ({growth:+.1} %); probe ping p50 {:?} p99 {:?} max {:?} over {} pings",
        failures.len(),
        percentile(&pings, 50.0),
        percentile(&pings, 99.0),
        pings.last().copied().unwrap_or_default(),
        pings.len()
    );
    assert!(failures.is_empty(), "failed operations: {failures:?}");
    assert!(ops >= clients as u64, "too few operations: {ops}");
    // Every idle session is still there and still answers.
    let mut idle_conns = idle_conns;
    for c in idle_conns.iter_mut().step_by((idle / 20).max(1)) {
        c.send(&json!({"op":"ping"}))
            .expect("idle session still open");
        assert_eq!(c.recv().expect("pong")["op"], "pong");
    }
    if long() {
        assert!(growth < 10.0, "server RSS grew {growth:.1} %");
    }
    if let Err(left) = no_processes_left(&server, Duration::from_secs(10)) {
        panic!("processes left on the server: {left:?}");
    }
}

// ---------------------------------------------------------------------
// hostile peers

#[test]
fn slowloris_before_authentication_is_closed_at_the_handshake_timeout() {
    let server =
        TestServer::start_listening(&["tcp+plain://127.0.0.1:0"], &["--handshake-timeout", "1"]);
    // A hello dribbled one byte per 100 ms never finishes the handshake
    // in time, however steadily it arrives.
    let hello = json!({"op":"hello","v":1,"user":"x","nonce":"AAAA"}).to_string();
    let mut frame = (hello.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(hello.as_bytes());
    let mut c = RawConn::connect(server.url());
    let start = Instant::now();
    for b in &frame {
        if c.sock.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if start.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let answer = c.recv();
    let took = start.elapsed();
    assert!(
        answer.is_none() || answer.as_ref().is_some_and(|a| a["code"] == "timeout"),
        "{answer:?}"
    );
    assert!(c.closed());
    assert!(took < Duration::from_secs(4), "{took:?}");
    eprintln!("a dribbled hello was cut {took:?} after it began");
    // Others still log in.
    let _ = RawConn::login(server.url(), &server.key_file);
}

#[test]
fn frames_out_of_order_after_authentication_are_refused_and_the_session_goes_on() {
    let server = TestServer::start_listening(&["tcp+plain://127.0.0.1:0"], &[]);
    let mut c = RawConn::login(server.url(), &server.key_file);
    // Handshake frames again, server-side frames, and the follow-up frames
    // of requests that were never made: each is answered (or discarded)
    // and the session still serves the next request.
    let out_of_order = [
        json!({"op":"hello","v":1,"user":"x","nonce":"AAAA"}),
        json!({"op":"auth","proof":"AAAA"}),
        json!({"op":"welcome"}),
        json!({"op":"ready","offset":0}),
        json!({"op":"pong"}),
        json!({"op":"exit","code":0}),
        json!({"op":"stdin_eof"}),
        json!({"op":"signal","signal":"TERM"}),
        json!({"op":"resize","rows":1,"cols":1}),
        json!({"op":"data"}),
        json!({"op":"end","size":0,"digest":""}),
        json!({"op":"entries","more":false}),
    ];
    for f in &out_of_order {
        c.send(f).expect("send");
        c.send(&json!({"op":"ping"})).expect("send ping");
        let mut answer = c.recv().expect("an answer");
        if answer["op"] == "error" {
            assert_ne!(answer["code"], "internal", "{f} -> {answer}");
            answer = c.recv().expect("the pong");
        }
        assert_eq!(answer["op"], "pong", "{f} -> {answer}");
    }
    // Data for an upload that was never asked for writes nothing.
    assert_eq!(std::fs::read_dir(&server.root).expect("root").count(), 0);
    assert!(Path::new(&server.root).exists());
}
