//! End-to-end: `skiff exec`, `put`, `cp` and `get` on many real `skiff
//! serve` processes at once, some stopped (refused), one frozen with
//! SIGSTOP (hung), one holding a different key: the live output, grouping,
//! JSON, summary and exit status.
//!
//! The exec and put fleets have 200 servers; `SKIFF_LONG_TESTS=1` runs 500
//! (docs/FANOUT.md, "Tests").

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn keygen(user: &str) -> String {
    let out = Command::new(common::skiff_bin())
        .args(["keygen", "--user", user])
        .output()
        .expect("keygen");
    assert!(out.status.success());
    text(&out.stdout).trim().to_string()
}

fn write_private(path: &Path, contents: &str) {
    fs::write(path, contents).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// What each host in the fleet is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Up,
    /// Killed: connections are refused.
    Stopped,
    /// SIGSTOPped: accepts TCP (the kernel does), never answers.
    Hung,
    /// Knows another key for our user.
    WrongKey,
    /// Up, but the command fails there (exit 3) and a file named
    /// `releases` stands where a put wants a directory.
    Fails,
}

struct Fleet {
    servers: Vec<TestServer>,
    roles: Vec<Role>,
    home: tempfile::TempDir,
}

impl Fleet {
    /// `n` servers sharing one users file; hosts `node001`… in the client
    /// config, and the group `all`.
    fn start(n: usize, special: &[(usize, Role)]) -> Fleet {
        let home = tempfile::tempdir().expect("tempdir");
        let cfg_dir = home.path().join(".config/skiff");
        fs::create_dir_all(&cfg_dir).expect("mkdir");
        let key = keygen("tester");
        write_private(&cfg_dir.join("key"), &format!("{key}\n"));
        let users = home.path().join("users");
        write_private(&users, &format!("{key}\n"));
        let other = home.path().join("users-other");
        write_private(&other, &format!("{}\n", keygen("tester")));
        let mut roles = vec![Role::Up; n];
        for &(i, r) in special {
            roles[i] = r;
        }
        // Start in a few threads: one at a time is slow on a loaded machine.
        let servers: Vec<TestServer> = std::thread::scope(|s| {
            let handles: Vec<_> = roles
                .chunks(n.div_ceil(4).max(1))
                .map(|chunk| {
                    let (users, other) = (&users, &other);
                    s.spawn(move || {
                        chunk
                            .iter()
                            .map(|r| {
                                let u = if *r == Role::WrongKey { other } else { users };
                                TestServer::start(&["--users", &u.to_string_lossy()])
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("start thread"))
                .collect()
        });
        let mut config = String::new();
        let mut all = Vec::new();
        for (i, s) in servers.iter().enumerate() {
            let port = s.url().rsplit(':').next().expect("port").to_string();
            let fp = s.fingerprint().expect("fingerprint");
            let name = host(i);
            config.push_str(&format!(
                "[hosts.{name}]\naddress = \"127.0.0.1\"\nport = {port}\nfingerprint = \"{fp}\"\n\n"
            ));
            all.push(format!("{name:?}"));
        }
        config.push_str(&format!("[groups]\nall = [{}]\n", all.join(", ")));
        fs::write(cfg_dir.join("config.toml"), config).expect("config");
        let mut fleet = Fleet {
            servers,
            roles,
            home,
        };
        for (i, r) in fleet.roles.clone().iter().enumerate() {
            match r {
                Role::Stopped => {
                    let _ = fleet.servers[i].child.kill();
                    let _ = fleet.servers[i].child.wait();
                }
                Role::Hung => signal(fleet.servers[i].pid(), libc::SIGSTOP),
                Role::Fails => {
                    let root = &fleet.servers[i].root;
                    fs::write(root.join("fail"), "").expect("mark");
                    fs::write(root.join("releases"), "in the way").expect("mark");
                }
                _ => {}
            }
        }
        fleet
    }

    fn skiff(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run skiff")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = common::env_for(Command::new(common::skiff_bin()), self.home.path());
        c.args(args);
        c
    }

    fn count(&self, role: Role) -> usize {
        self.roles.iter().filter(|r| **r == role).count()
    }
}

impl Drop for Fleet {
    /// Kills every server before waiting for any, then removes their
    /// directories from a few threads: one after another, 200 servers take
    /// seconds to stop (unlinking freshly synced files waits on the disk).
    fn drop(&mut self) {
        for (s, r) in self.servers.iter_mut().zip(&self.roles) {
            let _ = s.child.kill();
            if *r == Role::Hung {
                signal(s.pid(), libc::SIGCONT);
            }
        }
        let mut servers = std::mem::take(&mut self.servers);
        let chunk = servers.len().div_ceil(8).max(1);
        std::thread::scope(|s| {
            while !servers.is_empty() {
                let part: Vec<TestServer> = servers.drain(..chunk.min(servers.len())).collect();
                s.spawn(move || drop(part));
            }
        });
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: plain kill(2) on a child we started.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill {pid}");
}

fn host(i: usize) -> String {
    format!("node{:03}", i + 1)
}

/// Servers in the exec and put fleets: 200 (what a fan-out is for, and a
/// few seconds on two cores), 500 under `SKIFF_LONG_TESTS=1`.
fn fleet_size() -> usize {
    if std::env::var_os("SKIFF_LONG_TESTS").is_some() {
        500
    } else {
        200
    }
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The fleet's special hosts: two stopped, one hung, one with the wrong
/// key, one where the command fails and a put is refused.
fn special_hosts(n: usize) -> [(usize, Role); 5] {
    [
        (3, Role::Stopped),
        (n / 2, Role::Stopped),
        (7, Role::Hung),
        (11, Role::WrongKey),
        (n - 1, Role::Fails),
    ]
}

/// The summary line of host `i` in `err`.
fn summary_line(err: &str, i: usize) -> String {
    err.lines()
        .find(|l| l.starts_with(&format!("{} ", host(i))))
        .unwrap_or_else(|| panic!("no summary line for {}: {err}", host(i)))
        .to_string()
}

/// Everything at once: the failing hosts never hold up the others, and
/// the summary, JSON and exit status say exactly what happened where.
#[test]
fn fan_out_exec_reports_every_host() {
    let n = fleet_size();
    let special = special_hosts(n);
    let fleet = Fleet::start(n, &special);
    let range = format!("node[001-{n:03}]");
    let cmd = "test ! -e fail || exit 3; echo hello; echo oops >&2";

    let t0 = Instant::now();
    let o = fleet.skiff(&[
        "exec",
        "-H",
        &range,
        "--parallel",
        "50",
        "--timeout",
        "3",
        "--",
        cmd,
    ]);
    // The hung host costs one slot for its 3 s deadline, not the run.
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    let failed = special.len();
    assert_eq!(o.status.code(), Some(failed as i32), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let up: Vec<usize> = (0..n).filter(|&i| fleet.roles[i] == Role::Up).collect();
    assert_eq!(out.lines().count(), up.len(), "{out}");
    for &i in &up {
        assert!(out.contains(&format!("{}: hello\n", host(i))), "{out}");
    }
    let err = text(&o.stderr);
    assert!(err.contains(&format!("{}: oops\n", host(0))), "{err}");
    let summary = format!(
        "{n} hosts: {} ok, 1 failed, {} unreachable",
        up.len(),
        failed - 1
    );
    assert!(err.contains(&summary), "{err}");
    let line = |i: usize| summary_line(&err, i);
    assert!(line(3).contains("refused"), "{}", line(3));
    assert!(line(7).contains("timed out"), "{}", line(7));
    assert!(line(11).contains("authentication"), "{}", line(11));
    assert!(line(n - 1).contains(" 3 "), "{}", line(n - 1));

    let o = fleet.skiff(&["exec", "-H", "@all", "--timeout", "3", "--json", "--", cmd]);
    assert_eq!(o.status.code(), Some(failed as i32));
    let objs = json_lines(&o);
    assert_eq!(objs.len(), n);
    for (i, obj) in objs.iter().enumerate() {
        assert_eq!(obj["host"], host(i));
        let want = match fleet.roles[i] {
            Role::Up => "ok",
            Role::Fails => "failed",
            Role::Hung => "timeout",
            Role::Stopped | Role::WrongKey => "error",
        };
        assert_eq!(obj["status"], want, "{obj}");
        if fleet.roles[i] == Role::Up {
            assert_eq!(obj["stdout"], "hello\n");
            assert_eq!(obj["stderr"], "oops\n");
            assert_eq!(obj["exit"], 0);
            assert_eq!(obj["reached"], true);
        }
    }
    assert_eq!(objs[n - 1]["exit"], 3);
    assert_eq!(objs[n - 1]["reached"], true);
    assert_eq!(objs[3]["reached"], false);
    assert_eq!(fleet.count(Role::Up), up.len());
}

/// Lines from many hosts printing fast never mix inside a line.
#[test]
fn live_lines_are_never_interleaved() {
    let fleet = Fleet::start(8, &[]);
    let o = fleet.skiff(&[
        "exec",
        "-H",
        "node[001-008]",
        "--no-summary",
        "--",
        "i=0; while [ $i -lt 300 ]; do echo line-$i-abcdefghijklmnopqrstuvwxyz; i=$((i+1)); done",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert_eq!(out.lines().count(), 8 * 300);
    for l in out.lines() {
        let (h, rest) = l.split_once(": ").unwrap_or_else(|| panic!("{l}"));
        assert!(h.starts_with("node00"), "{l}");
        assert!(
            rest.starts_with("line-") && rest.ends_with("-abcdefghijklmnopqrstuvwxyz"),
            "{l}"
        );
    }
    assert!(o.stderr.is_empty(), "{}", text(&o.stderr));
}

/// `--group-output` prints each distinct output once with its hosts;
/// hosts files and groups select; no reachable host is exit 255.
#[test]
fn grouping_hosts_files_and_unreachable_fleets() {
    let fleet = Fleet::start(6, &[(4, Role::Stopped), (5, Role::Stopped)]);
    for s in &fleet.servers[..2] {
        fs::write(s.root.join("id"), "odd\n").expect("write");
    }
    let list: PathBuf = fleet.home.path().join("fleet.txt");
    fs::write(
        &list,
        "# four live nodes\nnode[001-002]\nnode003 # third\n\nnode004\n",
    )
    .expect("write");
    let o = fleet.skiff(&[
        "exec",
        "--hosts-file",
        &list.to_string_lossy(),
        "--group-output",
        "--",
        "cat id 2>/dev/null || echo even",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let rule = "-".repeat(16);
    assert_eq!(
        text(&o.stdout),
        format!("{rule}\nnode001,node002\n{rule}\nodd\n{rule}\nnode003,node004\n{rule}\neven\n")
    );

    let o = fleet.skiff(&["exec", "-H", "node005,node006", "--", "true"]);
    assert_eq!(o.status.code(), Some(255), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("2 hosts: 0 ok, 0 failed, 2 unreachable"));

    // ping takes the same selection: one line of round trips per live host.
    let o = fleet.skiff(&["ping", "-H", "@all", "-c", "2", "-i", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert_eq!(out.lines().count(), 4, "{out}");
    for i in 0..4 {
        assert!(
            out.contains(&format!("{}: 2 pings, rtt min/avg/max = ", host(i))),
            "{out}"
        );
    }
    assert!(text(&o.stderr).contains("6 hosts: 4 ok, 0 failed, 2 unreachable"));

    // Bad selections are usage errors.
    for bad in [&["-H", "node[3-1]"][..], &["-H", "@nogroup"]] {
        let mut args = vec!["exec"];
        args.extend_from_slice(bad);
        args.extend_from_slice(&["--", "true"]);
        let o = fleet.skiff(&args);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", text(&o.stderr));
    }
}

/// Ctrl-C stops every host and the summary says what ran.
#[test]
fn interrupt_stops_all_and_reports() {
    let fleet = Fleet::start(4, &[]);
    let mut child = fleet
        .command(&[
            "exec",
            "-H",
            "node[001-004]",
            "--parallel",
            "2",
            "--",
            "echo started; sleep 30",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    for _ in 0..2 {
        let l = lines.next().expect("a line").expect("read");
        assert!(l.ends_with(": started"), "{l}");
    }
    let t0 = Instant::now();
    signal(child.id(), libc::SIGINT);
    let o = child.wait_with_output().expect("wait");
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(o.status.code(), Some(130));
    let err = text(&o.stderr);
    assert!(err.contains("interrupted"), "{err}");
    assert_eq!(err.matches("not started").count(), 2, "{err}");
    assert!(err.contains("4 hosts: 0 ok"), "{err}");
}

/// `put` of one file to the whole fleet: every reached host holds the
/// same bytes (BLAKE3 of the file on its disk), the refusing host keeps
/// nothing, the stopped, hung and wrong-key hosts cost their own slot
/// only, and the live lines, summary, JSON and exit status say so.
#[test]
fn fan_out_put_reports_every_host() {
    let n = fleet_size();
    let special = special_hosts(n);
    let fleet = Fleet::start(n, &special);
    let src = fleet.home.path().join("app.tar");
    common::make_file(&src, (1 << 20) + 5, 9);
    let want = common::hash(&src);
    let src_s = src.to_string_lossy().to_string();
    let range = format!("node[001-{n:03}]");
    let up: Vec<usize> = (0..n).filter(|&i| fleet.roles[i] == Role::Up).collect();
    let failed = special.len();

    let t0 = Instant::now();
    let o = fleet.skiff(&[
        "put",
        "-H",
        &range,
        "--parallel",
        "50",
        "--timeout",
        "4",
        &src_s,
        "releases/",
    ]);
    // The hung host costs one slot for its 4 s deadline, not the run.
    assert!(t0.elapsed() < Duration::from_secs(40), "{:?}", t0.elapsed());
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(failed as i32), "{err}");
    for i in 0..n {
        let got = fleet.servers[i].root.join("releases/app.tar");
        if fleet.roles[i] == Role::Up {
            assert_eq!(common::hash(&got), want, "{}", host(i));
            assert!(common::leftovers(&fleet.servers[i].root).is_empty());
        } else if fleet.roles[i] != Role::Hung {
            assert!(!got.exists(), "{}", host(i));
        }
    }
    // One transfer summary per reached host; the refusing one sent none.
    let out = text(&o.stdout);
    assert_eq!(out.lines().count(), up.len() + 1, "{out}");
    for &i in &up {
        assert!(
            out.contains(&format!("{}: 1 file, 1.00 MiB", host(i))),
            "{out}"
        );
    }
    assert!(out.contains(&format!("{}: 0 files", host(n - 1))), "{out}");
    assert!(
        err.contains(&format!(
            "{n} hosts: {} ok, 1 failed, {} unreachable",
            up.len(),
            failed - 1
        )),
        "{err}"
    );
    assert!(summary_line(&err, 3).contains("refused"), "{err}");
    assert!(summary_line(&err, 7).contains("timed out"), "{err}");
    assert!(summary_line(&err, 11).contains("authentication"), "{err}");
    assert!(summary_line(&err, n - 1).contains(" 1 "), "{err}");
    let refusal = format!("{}: ", host(n - 1));
    assert!(
        err.lines()
            .any(|l| l.starts_with(&refusal) && l.contains("not a directory")),
        "{err}"
    );

    // The same as JSON, into a fresh directory on every host.
    let o = fleet.skiff(&[
        "put",
        "-H",
        "@all",
        "--timeout",
        "4",
        "--json",
        &src_s,
        "again/",
    ]);
    assert_eq!(
        o.status.code(),
        Some(failed as i32 - 1),
        "{}",
        text(&o.stderr)
    );
    let objs = json_lines(&o);
    assert_eq!(objs.len(), n);
    for (i, obj) in objs.iter().enumerate() {
        assert_eq!(obj["host"], host(i));
        let (status, reached) = match fleet.roles[i] {
            Role::Up | Role::Fails => ("ok", true),
            Role::Hung => ("timeout", false),
            Role::Stopped | Role::WrongKey => ("error", false),
        };
        assert_eq!(obj["status"], status, "{obj}");
        assert_eq!(obj["reached"], reached, "{obj}");
        if reached {
            assert_eq!(obj["exit"], 0, "{obj}");
            let got = fleet.servers[i].root.join("again/app.tar");
            assert_eq!(common::hash(&got), want, "{}", host(i));
        }
    }
    assert!(
        objs[11]["error"]
            .as_str()
            .unwrap_or("")
            .contains("authentication"),
        "{}",
        objs[11]
    );
    drop(fleet);
}

/// `cp` and `get` across a fleet: `cp :PATH` reaches every live host,
/// one host refuses and says why, `get` writes `LOCAL/HOST/`; the stopped,
/// hung and wrong-key hosts are counted and never hold up the rest.
#[test]
fn fan_out_cp_and_get() {
    let n = 12;
    let special = [(2, Role::Stopped), (5, Role::Hung), (8, Role::WrongKey)];
    let fleet = Fleet::start(n, &special);
    let src = fleet.home.path().join("app.tar");
    common::make_file(&src, (3 << 20) + 5, 9);
    let want = common::hash(&src);
    let live: Vec<usize> = (0..n).filter(|&i| fleet.roles[i] == Role::Up).collect();
    let range = format!("node[001-{n:03}]");
    let src_s = src.to_string_lossy().to_string();

    let o = fleet.skiff(&["put", "-H", &range, "--timeout", "4", &src_s, "releases/"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));

    // cp with :PATH on every host; one host refuses (a file is in the way).
    fs::write(fleet.servers[0].root.join("inbox"), "a file").expect("write");
    let o = fleet.skiff(&[
        "cp",
        "-H",
        "@all",
        "--timeout",
        "4",
        "--json",
        &src_s,
        ":inbox/",
    ]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    let objs = json_lines(&o);
    assert_eq!(objs.len(), n);
    assert_eq!(objs[0]["status"], "failed", "{}", objs[0]);
    assert!(
        objs[0]["stderr"]
            .as_str()
            .unwrap_or("")
            .contains("not a directory"),
        "{}",
        objs[0]
    );
    for &i in &live[1..] {
        assert_eq!(objs[i]["status"], "ok", "{}", objs[i]);
        assert_eq!(
            common::hash(&fleet.servers[i].root.join("inbox/app.tar")),
            want
        );
    }
    assert_eq!(objs[5]["status"], "timeout", "{}", objs[5]);

    // get from every host into per-host directories.
    let out = fleet.home.path().join("collected");
    let out_s = out.to_string_lossy().to_string();
    let o = fleet.skiff(&[
        "get",
        "-H",
        &range,
        "--timeout",
        "4",
        "--no-summary",
        "releases/app.tar",
        &out_s,
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    for i in 0..n {
        let got = out.join(host(i)).join("app.tar");
        if fleet.roles[i] == Role::Up {
            assert_eq!(common::hash(&got), want, "{}", host(i));
        } else {
            assert!(!got.exists(), "{}", host(i));
        }
    }
    let o = fleet.skiff(&["cp", "-f", "-H", "node001", ":releases/app.tar", &out_s]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
}
