//! Runs one job per host in a sliding window of `parallel` jobs, each with
//! its own deadline, so a host that fails, hangs or refuses never holds up
//! the others; Ctrl-C stops every job and the results say what ran.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::output::{Captured, HostOutput};

/// How a fan-out runs.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// At most this many hosts at once (at least 1).
    pub parallel: usize,
    /// Each host's deadline (connect + run); `None`: no deadline.
    pub timeout: Option<Duration>,
    /// Print output live as `host: line`.
    pub live: bool,
    /// Keep output for grouping or JSON.
    pub keep: bool,
}

/// How one host ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostStatus {
    /// The job finished with this exit status (0: success).
    Exited(i32),
    /// The job failed before or while running; the message says why.
    Error(String),
    /// The deadline passed first.
    TimedOut,
    /// Ctrl-C stopped it while it ran.
    Interrupted,
    /// Ctrl-C came before it started.
    NotStarted,
}

/// One host's result.
#[derive(Debug, Clone)]
pub struct HostResult {
    /// The host as the user named it.
    pub name: String,
    /// Where it was reached (or tried), as a URL.
    pub target: String,
    /// How it ended.
    pub status: HostStatus,
    /// Whether the command reached the host (connected and authenticated).
    pub reached: bool,
    /// From the job's start to its end.
    pub duration: Duration,
    /// The output kept (empty unless the plan keeps it).
    pub output: Captured,
}

impl HostResult {
    /// Whether this host counts as a success.
    pub fn ok(&self) -> bool {
        self.status == HostStatus::Exited(0)
    }
}

/// One host to run: its name, target (for reports) and job input.
pub struct HostJob<T> {
    /// The host as the user named it (the output prefix).
    pub name: String,
    /// Where it will be reached, as a URL.
    pub target: String,
    /// What the job needs.
    pub input: T,
}

/// All results, in the order the hosts were given.
#[derive(Debug)]
pub struct Run {
    /// One per host.
    pub results: Vec<HostResult>,
    /// Ctrl-C stopped the run.
    pub interrupted: bool,
}

impl Run {
    /// The fan-out exit status: 0 when every host succeeded; 255 when no
    /// host was reached; else the number of failed hosts, capped at 254
    /// (130 after Ctrl-C, as a shell reports SIGINT).
    pub fn exit_status(&self) -> i32 {
        if self.interrupted {
            return 128 + libc::SIGINT;
        }
        let failed = self.results.iter().filter(|r| !r.ok()).count();
        if failed == 0 {
            0
        } else if !self.results.iter().any(|r| r.reached) {
            255
        } else {
            failed.min(254) as i32
        }
    }
}

/// Runs `job` for every host, `plan.parallel` at a time. The job gets the
/// host's input and its [`HostOutput`] and returns the exit status, or an
/// error message.
pub async fn run<T, F, Fut>(hosts: Vec<HostJob<T>>, plan: Plan, job: F) -> Run
where
    F: Fn(T, HostOutput) -> Fut,
    Fut: Future<Output = Result<i32, String>> + Send + 'static,
{
    let parallel = plan.parallel.max(1);
    let mut started: Vec<Started> = Vec::new();
    let mut pending = hosts.into_iter().enumerate();
    let mut running: JoinSet<(usize, HostStatus)> = JoinSet::new();
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        while running.len() < parallel {
            let Some((i, h)) = pending.next() else { break };
            let output = HostOutput::new(&h.name, plan.live, plan.keep);
            let fut = within(plan.timeout, job(h.input, output.clone()));
            started.push(Started {
                name: h.name,
                target: h.target,
                output,
                at: Instant::now(),
                result: None,
            });
            running.spawn(async move { (i, fut.await) });
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            done = running.join_next() => {
                // A job that panicked leaves its slot empty: reported below.
                if let Some(Ok((i, status))) = done {
                    started[i].result = Some(started[i].finish(status));
                }
            }
            _ = &mut ctrl_c, if !interrupted => {
                interrupted = true;
                running.abort_all();
                while running.join_next().await.is_some() {}
                break;
            }
        }
    }
    let mut results: Vec<HostResult> = started
        .into_iter()
        .map(|s| s.into_result(interrupted))
        .collect();
    results.extend(pending.map(|(_, h)| HostResult {
        name: h.name,
        target: h.target,
        status: HostStatus::NotStarted,
        reached: false,
        duration: Duration::ZERO,
        output: Captured::default(),
    }));
    Run {
        results,
        interrupted,
    }
}

/// A job's outcome, cut off at the host's deadline if it has one.
async fn within<Fut>(timeout: Option<Duration>, fut: Fut) -> HostStatus
where
    Fut: Future<Output = Result<i32, String>>,
{
    let result = match timeout {
        Some(t) => match tokio::time::timeout(t, fut).await {
            Ok(r) => r,
            Err(_) => return HostStatus::TimedOut,
        },
        None => fut.await,
    };
    match result {
        Ok(code) => HostStatus::Exited(code),
        Err(e) => HostStatus::Error(e),
    }
}

/// A host whose job has started: what its result is built from.
struct Started {
    name: String,
    target: String,
    output: HostOutput,
    at: Instant,
    /// Set when the job ends; still `None` if it panicked or was stopped.
    result: Option<HostResult>,
}

impl Started {
    fn finish(&self, status: HostStatus) -> HostResult {
        HostResult {
            name: self.name.clone(),
            target: self.target.clone(),
            reached: self.output.started(),
            duration: self.at.elapsed(),
            output: self.output.finish(),
            status,
        }
    }

    /// The result, or, for a job that never ended on its own, why not.
    fn into_result(self, interrupted: bool) -> HostResult {
        if let Some(r) = self.result {
            return r;
        }
        let status = if interrupted {
            HostStatus::Interrupted
        } else {
            HostStatus::Error("the job crashed".to_string())
        };
        self.finish(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn jobs(n: usize) -> Vec<HostJob<usize>> {
        (0..n)
            .map(|i| HostJob {
                name: format!("h{i}"),
                target: String::new(),
                input: i,
            })
            .collect()
    }

    fn plan(parallel: usize, timeout_ms: u64) -> Plan {
        Plan {
            parallel,
            timeout: Some(Duration::from_millis(timeout_ms)),
            live: false,
            keep: true,
        }
    }

    #[tokio::test]
    async fn window_bounds_concurrency_and_hangs_do_not_block() {
        let now = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let run = run(jobs(20), plan(4, 300), |i, out| {
            let (now, peak) = (now.clone(), peak.clone());
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(n, Ordering::SeqCst);
                out.mark_started();
                if i == 3 {
                    std::future::pending::<()>().await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                match i {
                    5 => Err("refused".to_string()),
                    _ => Ok(i32::from(i == 7)),
                }
            }
        })
        .await;
        assert!(peak.load(Ordering::SeqCst) <= 4);
        // The hung host held one slot for its deadline, not the whole run.
        assert!(t0.elapsed() < Duration::from_secs(2));
        let st: Vec<_> = run.results.iter().map(|r| r.status.clone()).collect();
        assert_eq!(st[3], HostStatus::TimedOut);
        assert_eq!(st[5], HostStatus::Error("refused".into()));
        assert_eq!(st[7], HostStatus::Exited(1));
        assert_eq!(
            st.iter().filter(|s| **s == HostStatus::Exited(0)).count(),
            17
        );
        assert_eq!(run.exit_status(), 3);
    }

    #[test]
    fn exit_status_counts_failures() {
        let r = |status, reached| HostResult {
            name: String::new(),
            target: String::new(),
            status,
            reached,
            duration: Duration::ZERO,
            output: Captured::default(),
        };
        let mk = |results| Run {
            results,
            interrupted: false,
        };
        assert_eq!(mk(vec![r(HostStatus::Exited(0), true)]).exit_status(), 0);
        let unreachable = vec![r(HostStatus::Error("x".into()), false); 3];
        assert_eq!(mk(unreachable).exit_status(), 255);
        let mut many = vec![r(HostStatus::Exited(2), true); 300];
        many.push(r(HostStatus::TimedOut, false));
        assert_eq!(mk(many).exit_status(), 254);
    }
}
