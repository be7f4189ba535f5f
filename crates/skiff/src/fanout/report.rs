//! What a fan-out prints at the end: grouped output (`dshbak -c` style),
//! one JSON object per host, and the per-host summary.

use std::io::Write;

use serde::Serialize;

use super::runner::{HostResult, HostStatus, Run};

/// Prints identical outputs once, under the list of hosts that produced
/// them (stdout text on stdout, stderr text on stderr); hosts that printed
/// nothing are left out.
pub fn print_grouped(run: &Run, out: &mut impl Write, err: &mut impl Write) -> std::io::Result<()> {
    let mut groups: Vec<(&[u8], &[u8], Vec<&str>)> = Vec::new();
    for r in &run.results {
        let (o, e) = (r.output.stdout.as_slice(), r.output.stderr.as_slice());
        if o.is_empty() && e.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|(go, ge, _)| *go == o && *ge == e) {
            Some(g) => g.2.push(&r.name),
            None => groups.push((o, e, vec![&r.name])),
        }
    }
    for (o, e, hosts) in groups {
        let rule = "-".repeat(16);
        writeln!(out, "{rule}\n{}\n{rule}", hosts.join(","))?;
        out.write_all(o)?;
        if !o.is_empty() && !o.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        out.flush()?;
        err.write_all(e)?;
        if !e.is_empty() && !e.ends_with(b"\n") {
            err.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// One host as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct HostJson<'a> {
    /// The host as named.
    pub host: &'a str,
    /// Where it was reached.
    pub target: &'a str,
    /// `ok`, `failed` (non-zero exit), `error`, `timeout`, `interrupted`
    /// or `not_started`.
    pub status: &'static str,
    /// The exit status, when the command ended.
    pub exit: Option<i32>,
    /// Why skiff could not run it, when it could not.
    pub error: Option<String>,
    /// Whether the host was reached (connected and authenticated).
    pub reached: bool,
    /// Wall time for this host.
    pub duration_ms: u64,
    /// The command's stdout (lossy UTF-8).
    pub stdout: String,
    /// The command's stderr (lossy UTF-8).
    pub stderr: String,
    /// Output beyond the kept limit was cut.
    pub truncated: bool,
}

impl<'a> From<&'a HostResult> for HostJson<'a> {
    fn from(r: &'a HostResult) -> Self {
        let (status, exit, error) = match &r.status {
            HostStatus::Exited(0) => ("ok", Some(0), None),
            HostStatus::Exited(c) => ("failed", Some(*c), None),
            HostStatus::Error(e) => ("error", None, Some(e.clone())),
            HostStatus::TimedOut => ("timeout", None, Some("timed out".to_string())),
            HostStatus::Interrupted => ("interrupted", None, Some("interrupted".to_string())),
            HostStatus::NotStarted => ("not_started", None, None),
        };
        HostJson {
            host: &r.name,
            target: &r.target,
            status,
            exit,
            error,
            reached: r.reached,
            duration_ms: r.duration.as_millis() as u64,
            stdout: String::from_utf8_lossy(&r.output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&r.output.stderr).into_owned(),
            truncated: r.output.truncated,
        }
    }
}

/// One JSON object per line, per host, in the order given.
pub fn print_json(run: &Run, out: &mut impl Write) -> std::io::Result<()> {
    for r in &run.results {
        serde_json::to_writer(&mut *out, &HostJson::from(r))?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// The summary: a line per host (exit, duration, error), then the totals.
pub fn summary(run: &Run, wall: std::time::Duration) -> String {
    let width = run
        .results
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut s = format!("{:width$}  {:>5}  {:>8}  error\n", "host", "exit", "time");
    let (mut ok, mut failed, mut unreachable) = (0, 0, 0);
    for r in &run.results {
        let j = HostJson::from(r);
        let exit = j.exit.map_or_else(|| "-".to_string(), |c| c.to_string());
        let error = j.error.unwrap_or_else(|| match r.status {
            HostStatus::NotStarted => "not started".to_string(),
            _ => String::new(),
        });
        let time = format!("{:.3}s", r.duration.as_secs_f64());
        s.push_str(format!("{:width$}  {exit:>5}  {time:>8}  {error}", r.name).trim_end());
        s.push('\n');
        if r.ok() {
            ok += 1;
        } else if r.reached {
            failed += 1;
        } else {
            unreachable += 1;
        }
    }
    let stopped = if run.interrupted { ", interrupted" } else { "" };
    s.push_str(&format!(
        "{} hosts: {ok} ok, {failed} failed, {unreachable} unreachable in {:.3}s{stopped}\n",
        run.results.len(),
        wall.as_secs_f64()
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::super::output::Captured;
    use super::*;
    use std::time::Duration;

    fn host(name: &str, status: HostStatus, out: &str) -> HostResult {
        HostResult {
            name: name.into(),
            target: format!("tcp://{name}:7878"),
            reached: !matches!(status, HostStatus::Error(_)),
            status,
            duration: Duration::from_millis(12),
            output: Captured {
                stdout: out.as_bytes().to_vec(),
                ..Captured::default()
            },
        }
    }

    fn sample() -> Run {
        Run {
            results: vec![
                host("a", HostStatus::Exited(0), "same\n"),
                host("b", HostStatus::Exited(3), "other"),
                host("c", HostStatus::Exited(0), "same\n"),
                host("d", HostStatus::Error("connection refused".into()), ""),
            ],
            interrupted: false,
        }
    }

    #[test]
    fn groups_identical_outputs() {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        print_grouped(&sample(), &mut o, &mut e).unwrap();
        let rule = "-".repeat(16);
        assert_eq!(
            String::from_utf8(o).unwrap(),
            format!("{rule}\na,c\n{rule}\nsame\n{rule}\nb\n{rule}\nother\n")
        );
        assert!(e.is_empty());
    }

    #[test]
    fn json_has_one_object_per_host() {
        let mut o = Vec::new();
        print_json(&sample(), &mut o).unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(o)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[1]["status"], "failed");
        assert_eq!(lines[1]["exit"], 3);
        assert_eq!(lines[3]["error"], "connection refused");
        assert_eq!(lines[3]["reached"], false);
    }

    #[test]
    fn summary_lists_every_host_and_totals() {
        let s = summary(&sample(), Duration::from_millis(50));
        assert!(s.contains("connection refused"), "{s}");
        assert!(
            s.ends_with("4 hosts: 2 ok, 1 failed, 1 unreachable in 0.050s\n"),
            "{s}"
        );
    }
}
