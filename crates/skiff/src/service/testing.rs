//! In-process harness for the services' tests: the real dispatcher
//! ([`serve`]) on one end of a `tokio::io::duplex`, a client [`Session`] on
//! the other, a temporary root and staging area. No sockets, TLS or
//! handshake, so a test drives one state machine frame by frame, under
//! tokio's paused clock when it wants timeouts to fire at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use skiff_wire::message::ping::Ping;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{serve, ServiceContext};
use crate::audit::Audit;
use crate::policy::env::{AcceptEnv, BaseEnv};
use crate::policy::Policy;
use crate::session::{Session, SessionError};
use crate::transfer::staging::StagingArea;

/// A server context over a private directory (`root/` served,
/// `staging/` for uploads), with the default (unrestricted) policy.
pub(crate) struct Harness {
    /// Holds `root/` and `staging/`; removed on drop.
    _dir: tempfile::TempDir,
    /// What each connection's `serve` gets; tests may change it first.
    pub ctx: ServiceContext,
}

impl Harness {
    /// A fresh root and staging area; no idle timeout.
    pub fn new() -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir(&root).expect("mkdir root");
        let staging = StagingArea::open(&dir.path().join("staging")).expect("staging");
        let ctx = ServiceContext {
            root,
            exec_enabled: true,
            user: "tester".into(),
            policy: Arc::new(Policy::default()),
            client: None,
            peer: "test".into(),
            audit: Audit::disabled(),
            base_env: Arc::new(BaseEnv::from_server()),
            accept_env: Arc::new(AcceptEnv::default()),
            staging: Arc::new(staging),
            joins: Arc::default(),
            idle_timeout: None,
            shutdown: CancellationToken::new(),
        };
        Harness { _dir: dir, ctx }
    }

    /// The served directory.
    pub fn root(&self) -> PathBuf {
        self.ctx.root.clone()
    }

    /// The length of every partial upload in the staging area.
    pub fn staged(&self) -> Vec<u64> {
        let mut lens = Vec::new();
        let mut dirs = vec![self.ctx.staging.path().to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("read staging").flatten() {
                let meta = e.metadata().expect("metadata");
                if meta.is_dir() {
                    dirs.push(e.path());
                } else {
                    lens.push(meta.len());
                }
            }
        }
        lens
    }

    /// Starts a session: the server's `serve` runs on its own task over
    /// one end of a duplex pipe holding at most `pipe` bytes in flight;
    /// the client session on the other end is returned with the server's
    /// task (its result is how the session ended).
    pub fn connect(&self, pipe: usize) -> (Session<'static>, JoinHandle<Result<(), SessionError>>) {
        let (client, server) = tokio::io::duplex(pipe);
        let ctx = self.ctx.clone();
        let task = tokio::spawn(async move {
            let mut session = Session::new(Box::new(server));
            serve(&mut session, &ctx).await
        });
        (Session::new(Box::new(client)), task)
    }
}

/// Asserts that the session is still in step: a `ping` gets its `pong`
/// with the same body.
pub(crate) async fn assert_pings(client: &mut Session<'_>) {
    client.send(&Ping {}, b"next").await.expect("send ping");
    let f = client.recv_required().await.expect("pong");
    assert_eq!(f.op(), "pong");
    assert_eq!(&f.body()[..], b"next");
}

/// Waits (in real time, up to 5 s) until process `pid` has exited: gone,
/// or a zombie waiting to be reaped.
pub(crate) fn wait_gone(pid: i32) -> bool {
    for _ in 0..500 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return true,
            Ok(stat) => {
                // The state follows the parenthesised command name.
                let state = stat.rsplit_once(") ").map(|(_, r)| r.chars().next());
                if state == Some(Some('Z')) {
                    return true;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}
