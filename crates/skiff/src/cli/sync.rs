//! `skiff sync SRC DST`: one side local, the other `[USER@]HOST:PATH`.
//!
//! SRC's contents are mirrored into DST whatever the trailing slashes
//! (`dir` and `dir/` mean the same), so running it twice is a no-op the
//! second time. Exit status: 0 when everything was synced, 1 when any path
//! failed (the rest went on), 2 for usage errors, 255 for connection and
//! authentication errors.

use std::io::{IsTerminal as _, Write as _};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;
use std::sync::Arc;

use super::connect::{open, KeyArg, PortArg};
use super::output::usage;
use crate::client::sync::{self as client_sync, Direction};
use crate::sync::{global_rules, Event, Events, Options, Report};
use crate::target::{Location, RemotePath};

/// Arguments of `skiff sync`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    port: PortArg,
    /// Compare files by content (BLAKE3) instead of size and mtime.
    #[arg(short = 'c', long)]
    checksum: bool,
    /// Compress file data with zstd (a chunk that does not shrink is sent
    /// as it is).
    #[arg(short = 'z', long)]
    compress: bool,
    /// List every change (`+` new, `~` changed, `.` metadata, `-`
    /// deleted) without making it.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Remove what DST has and SRC lacks, once everything else succeeded
    /// (excluded paths are kept).
    #[arg(long)]
    delete: bool,
    /// Leave out paths matching PATTERN (gitignore syntax, repeatable);
    /// `.skiffignore` files in SRC are read too.
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Read exclude patterns from FILE, one a line.
    #[arg(long, value_name = "FILE")]
    exclude_from: Vec<PathBuf>,
    /// Switch DST from the old tree to the new one in one step: the new
    /// tree is built beside DST (unchanged files hard-linked) and the two
    /// are exchanged at the end (Linux; DST not a mount point, and for a
    /// push not the server's root). On any failure DST stays the old tree.
    #[arg(long)]
    atomic: bool,
    /// Print each change as it is made.
    #[arg(short = 'i', long)]
    itemize: bool,
    /// Print statistics at the end.
    #[arg(long)]
    stats: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// Print nothing but errors.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Source: a local directory, or [USER@]HOST:PATH (skiff://... too).
    src: String,
    /// Destination, created if missing: the other kind of SRC.
    dst: String,
}

/// Runs `skiff sync`.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let (local, remote, dir) = match (parse(&a.src)?, parse(&a.dst)?) {
        (Location::Local(l), Location::Remote(r)) => (l, r, Direction::Push),
        (Location::Remote(r), Location::Local(l)) => (l, r, Direction::Pull),
        (Location::Remote(_), Location::Remote(_)) => {
            usage!("sync: both SRC and DST are remote; one side must be a local directory")
        }
        _ => usage!("sync: one of SRC and DST must be remote ([USER@]HOST:PATH)"),
    };
    let opts = options(&a)?;
    let (tree, shadow) = if a.atomic && dir == Direction::Pull && !a.dry_run {
        let (shadow, tree) = client_sync::prepare_atomic(&local)?;
        (Some(tree), Some(shadow))
    } else {
        (client_sync::open_local(&local, dir, a.dry_run)?, None)
    };
    let bar =
        (!a.quiet && !a.json && !a.dry_run && std::io::stderr().is_terminal()).then(progress_bar);
    let events = printer(a.dry_run || a.itemize, a.quiet, bar.clone());
    let report = super::runtime()?.block_on(async {
        let mut client = open(&remote.host, &a.key, a.port, a.quiet).await?;
        let r = client_sync::sync(
            &mut client.session,
            tree,
            &remote_dir(&remote),
            dir,
            &opts,
            events,
            shadow,
        )
        .await;
        let _ = client.session.close().await;
        anyhow::Ok(r?)
    });
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let report = report?;
    print_report(&a, &report)?;
    Ok(if report.failed > 0 { 1 } else { 0 })
}

fn parse(s: &str) -> anyhow::Result<Location> {
    match Location::parse(s) {
        Ok(Location::Stdio) => usage!("sync: `-` (stdin/stdout) cannot be synced"),
        Ok(l) => Ok(l),
        Err(e) => usage!("sync: {e}"),
    }
}

/// The server directory, trailing slashes and all meaning the same.
fn remote_dir(r: &RemotePath) -> String {
    let p = r.path.trim_end_matches('/');
    if p.is_empty() {
        "/".to_string()
    } else {
        p.to_string()
    }
}

fn options(a: &Args) -> anyhow::Result<Options> {
    let mut excludes = a.exclude.clone();
    for f in &a.exclude_from {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => usage!("sync: --exclude-from {}: {e}", f.display()),
        };
        excludes.extend(
            text.lines()
                .map(str::trim_end)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    if let Err(e) = global_rules(&excludes) {
        usage!("sync: {e}");
    }
    Ok(Options {
        checksum: a.checksum,
        delete: a.delete,
        compress: a.compress,
        dry_run: a.dry_run,
        excludes,
        atomic: a.atomic,
    })
}

/// The progress display on a terminal: files checked, the file being
/// sent, bytes done of the bytes announced so far, rate and ETA. The
/// lists are streamed, so the total grows as changed files are found
/// (there is no scan before the sync starts).
fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{msg:40!} {bytes:>10}/{total_bytes:10} {binary_bytes_per_sec:>12} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Prints changes (`-n`, `-i`) on stdout and failures on stderr as they
/// happen, and drives the progress display.
fn printer(changes: bool, quiet: bool, bar: Option<ProgressBar>) -> Events {
    let checked = std::sync::atomic::AtomicU64::new(0);
    let print = move |bar: &Option<ProgressBar>, f: &dyn Fn()| match bar {
        Some(b) => b.suspend(f),
        None => f(),
    };
    Arc::new(move |e| match e {
        Event::Change { mark, path } if changes && !quiet => print(&bar, &|| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{mark} {path}");
        }),
        Event::Failed { path, message } => print(&bar, &|| {
            if message.is_empty() || message.contains(&path) {
                eprintln!("skiff: sync: {message}");
            } else {
                eprintln!("skiff: sync: {path}: {message}");
            }
        }),
        Event::Checked(n) => {
            checked.store(n, std::sync::atomic::Ordering::Relaxed);
            if let Some(b) = &bar {
                b.set_message(format!("{n} checked"));
            }
        }
        Event::Sending { path, size } => {
            if let Some(b) = &bar {
                b.inc_length(size);
                let n = checked.load(std::sync::atomic::Ordering::Relaxed);
                b.set_message(format!("{n} checked, {path}"));
            }
        }
        Event::Progress(n) => {
            if let Some(b) = &bar {
                b.inc(n);
            }
        }
        _ => {}
    })
}

fn print_report(a: &Args, r: &Report) -> anyhow::Result<()> {
    if a.json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    if let Some(why) = &r.delete_skipped {
        eprintln!("skiff: sync: deletes skipped: {why}");
    }
    if r.atomic.as_deref() == Some(crate::sync::atomic::outcome::KEPT) {
        eprintln!(
            "skiff: sync: --atomic: {} entries failed, so the new tree was discarded and DST \
             is still the old tree; fix the failures and run the sync again",
            r.failed
        );
    }
    if a.quiet {
        return Ok(());
    }
    if a.stats {
        println!("files checked:       {}", r.files_checked);
        println!("entries changed:     {}", r.files_changed);
        println!("files sent:          {}", r.files_sent);
        println!("entries deleted:     {}", r.deleted);
        println!("failed:              {}", r.failed);
        println!("total size:          {}", r.total_size);
        println!("literal bytes:       {}", r.literal_bytes);
        println!("matched bytes:       {}", r.matched_bytes);
        println!("literal wire bytes:  {}", r.literal_wire_bytes);
        println!("bytes sent:          {}", r.bytes_sent);
        println!("bytes received:      {}", r.bytes_received);
        println!("time:                {:.3} s", r.seconds);
    } else {
        println!(
            "{}{} checked, {} changed, {} files sent, {} deleted, {} failed; {} literal bytes, {} reused",
            if r.dry_run { "dry run: " } else { "" },
            r.files_checked,
            r.files_changed,
            r.files_sent,
            r.deleted,
            r.failed,
            r.literal_bytes,
            r.matched_bytes
        );
    }
    Ok(())
}
