//! The transfer progress bar: bytes, rate and ETA on a terminal, nothing
//! at all otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar that may be switched off; cheap to clone.
#[derive(Clone)]
pub struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar for `total` bytes, drawn on stderr only when `show` is true.
    pub fn new(total: u64, show: bool) -> Progress {
        if !show {
            return Progress(None);
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{bytes:>10}/{total_bytes:10} {wide_bar} {binary_bytes_per_sec:>12} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Progress(Some(bar))
    }

    /// Counts bytes done.
    pub fn add(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }

    /// Counts bytes that were already there (a resumed prefix).
    pub fn skip(&self, n: u64) {
        self.add(n);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}
