//! What `put`, `get` and `cp` share: the transfer flags, progress choice,
//! the one-line summary, `--json`, and the advice after an interruption.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use skiff_wire::message::files::HashAlg;

use crate::client::files::progress::ProgressKind;
use crate::client::files::{Options, Summary};
use crate::client::ClientError;

/// Options shared by `put`, `get` and `cp`.
#[derive(Debug, Clone, clap::Args)]
pub struct TransferFlags {
    /// Copy directory trees.
    #[arg(short = 'r', long)]
    pub recursive: bool,
    /// Continue an interrupted transfer from the data already stored.
    #[arg(long)]
    pub resume: bool,
    /// Overwrite existing files.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Whole-file checksum: blake3 (default) or sha256.
    #[arg(long, value_parser = parse_hash, default_value = "blake3")]
    pub hash: HashAlg,
    /// No progress, no summary, no trust notices.
    #[arg(short = 'q', long, conflicts_with_all = ["verbose", "progress"])]
    pub quiet: bool,
    /// Name each file as it is done, and print the summary line.
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Show progress even when stderr is not a terminal (one line a second).
    #[arg(long)]
    pub progress: bool,
}

fn parse_hash(s: &str) -> Result<HashAlg, String> {
    match s {
        "blake3" => Ok(HashAlg::Blake3),
        "sha256" => Ok(HashAlg::Sha256),
        _ => Err("use blake3 or sha256".into()),
    }
}

impl TransferFlags {
    /// How progress is shown: a bar on a terminal, lines with
    /// `--progress` elsewhere, nothing with `-q` or (`json`) `--json`.
    pub fn progress_kind(&self, json: bool) -> ProgressKind {
        if self.quiet || (json && !self.progress) {
            ProgressKind::Off
        } else if std::io::stderr().is_terminal() {
            ProgressKind::Bar
        } else if self.progress {
            ProgressKind::Lines
        } else {
            ProgressKind::Off
        }
    }

    /// The library's options for these flags.
    pub fn options(&self, json: bool) -> Options {
        Options {
            recursive: self.recursive,
            resume: self.resume,
            force: self.force,
            hash: self.hash,
            progress: self.progress_kind(json),
            label: String::new(),
            verbose: self.verbose,
            streams: None,
        }
    }
}

/// Everything copied by one command, over all its sources.
pub struct Totals {
    started: Instant,
    /// Files, bytes and failures so far.
    pub summary: Summary,
}

impl Totals {
    /// Starts the clock.
    pub fn start() -> Totals {
        Totals {
            started: Instant::now(),
            summary: Summary::default(),
        }
    }

    /// Adds a command's result.
    pub fn add(&mut self, s: Summary) {
        self.summary.absorb(s);
    }

    /// Prints the failures, the summary line (on a terminal, with
    /// `--progress` or `-v`) or the JSON object; the exit status.
    pub fn report(&self, what: &str, flags: &TransferFlags, json: bool) -> i32 {
        let s = &self.summary;
        let secs = self.started.elapsed().as_secs_f64();
        for f in &s.failures {
            eprintln!("skiff: {what}: {} [{}]", f.message, f.code.as_str());
        }
        if json {
            let failures: Vec<serde_json::Value> = s
                .failures
                .iter()
                .map(|f| serde_json::json!({"code": f.code.as_str(), "message": f.message}))
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "ok": s.failures.is_empty(),
                    "files": s.files,
                    "bytes": s.bytes,
                    "seconds": secs,
                    "failures": failures,
                })
            );
        } else if !flags.quiet && (flags.verbose || flags.progress_kind(false) != ProgressKind::Off)
        {
            eprintln!(
                "{}",
                summary_line(s.files, s.bytes, Duration::from_secs_f64(secs))
            );
        }
        if s.failures.is_empty() {
            0
        } else {
            1
        }
    }
}

/// `3 files, 10.5 MiB in 1.20 s (8.7 MiB/s)`.
pub fn summary_line(files: u64, bytes: u64, took: Duration) -> String {
    use indicatif::HumanBytes;
    let secs = took.as_secs_f64().max(1e-6);
    format!(
        "{files} file{}, {} in {:.2} s ({}/s)",
        if files == 1 { "" } else { "s" },
        HumanBytes(bytes),
        secs,
        HumanBytes((bytes as f64 / secs) as u64)
    )
}

/// After a transfer broke off (connection lost, Ctrl-C): how to go on.
pub fn resume_hint(e: &ClientError) {
    if matches!(e, ClientError::Session(_) | ClientError::Connect { .. }) {
        eprintln!(
            "skiff: the transfer was interrupted; run the same command again with --resume to continue where it stopped"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_reads_well() {
        assert_eq!(
            summary_line(1, 2048, Duration::from_secs(2)),
            "1 file, 2.00 KiB in 2.00 s (1.00 KiB/s)"
        );
    }
}

/// What every transfer command (`put`, `get`, `cp`) takes besides its
/// paths: the key, the transfer flags, the port and, for a fan-out, the
/// hosts and each host's deadline.
#[derive(Debug, clap::Args)]
pub struct TransferArgs {
    #[command(flatten)]
    pub(super) key: super::connect::KeyArg,
    #[command(flatten)]
    pub(super) flags: TransferFlags,
    #[command(flatten)]
    pub(super) port: super::connect::PortArg,
    #[command(flatten)]
    pub(super) fanout: super::fanout::FanoutArgs,
    /// With several hosts: each host's deadline, in seconds.
    #[arg(long, value_name = "SECS")]
    pub(super) timeout: Option<f64>,
}
