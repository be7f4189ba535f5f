//! Transfer progress: a bar on a terminal (what is being copied, bytes,
//! rate, ETA, and for trees files done/total), a line a second when forced
//! without a terminal, nothing otherwise.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Options;

/// How progress is shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProgressKind {
    /// Nothing (not a terminal, or `-q`).
    #[default]
    Off,
    /// An indicatif bar on stderr (stderr is a terminal).
    Bar,
    /// One line per second on stderr (`--progress` without a terminal).
    Lines,
}

/// A progress display that may be switched off; cheap to clone.
#[derive(Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
    /// Set when the line printer should stop.
    done: Option<Arc<AtomicBool>>,
    label: String,
    files: Arc<(AtomicU64, AtomicU64)>,
    verbose: bool,
}

impl Progress {
    /// A display for `total` bytes of the transfer `opts` describes, named
    /// by `opts.label`.
    pub fn new(total: u64, opts: &Options) -> Progress {
        let files = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let label = opts.label.clone();
        let (bar, done) = match opts.progress {
            ProgressKind::Off => (None, None),
            ProgressKind::Bar => {
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
                let style = ProgressStyle::with_template(
                    "{msg:24!} {bytes:>10}/{total_bytes:10} {wide_bar} {binary_bytes_per_sec:>12} ETA {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar());
                bar.set_style(style);
                bar.set_message(label.clone());
                (Some(bar), None)
            }
            ProgressKind::Lines => {
                let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
                let done = Arc::new(AtomicBool::new(false));
                let (b, d) = (bar.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut ticks = 0u32;
                    while !d.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(100));
                        ticks += 1;
                        if ticks.is_multiple_of(10) && !d.load(Ordering::Relaxed) {
                            progress_line(&b);
                        }
                    }
                });
                bar.set_message(label.clone());
                (Some(bar), Some(done))
            }
        };
        Progress {
            bar,
            done,
            label,
            files,
            verbose: opts.verbose,
        }
    }

    /// Announces how many files a tree holds (shown as done/total).
    pub fn set_files(&self, total: u64) {
        self.files.1.store(total, Ordering::Relaxed);
        self.show_counts();
    }

    /// Counts one file finished (or given up); with `-v` names it, above
    /// the bar when there is one.
    pub fn file_done(&self, name: &str) {
        self.files.0.fetch_add(1, Ordering::Relaxed);
        self.show_counts();
        if self.verbose {
            match &self.bar {
                Some(b) if self.done.is_none() => b.println(name),
                _ => eprintln!("{name}"),
            }
        }
    }

    fn show_counts(&self) {
        let (done, total) = (
            self.files.0.load(Ordering::Relaxed),
            self.files.1.load(Ordering::Relaxed),
        );
        if let Some(b) = &self.bar {
            if total > 1 {
                b.set_message(format!("{} {done}/{total}", self.label));
            }
        }
    }

    /// Counts bytes done.
    pub fn add(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Counts bytes that were already there (a resumed prefix).
    pub fn skip(&self, n: u64) {
        self.add(n);
    }

    /// Removes the bar (or prints the last line).
    pub fn finish(&self) {
        if let Some(d) = &self.done {
            d.store(true, Ordering::Relaxed);
            if let Some(b) = &self.bar {
                progress_line(b);
            }
        } else if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// `label 3/10  12.0 MiB/100.0 MiB  12%  8.1 MiB/s  ETA 11s`.
fn progress_line(b: &ProgressBar) {
    let total = b.length().unwrap_or(0);
    let pct = (b.position() * 100).checked_div(total).unwrap_or(100);
    let line = format!(
        "{} {}/{} {pct:>3}% {}/s ETA {}s",
        b.message(),
        HumanBytes(b.position()),
        HumanBytes(total),
        HumanBytes(b.per_sec() as u64),
        b.eta().as_secs()
    );
    let _ = writeln!(std::io::stderr(), "{}", line.trim_start());
}
