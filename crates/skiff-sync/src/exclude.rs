//! Exclude rules in gitignore syntax: patterns given on the command line
//! (`--exclude`, `--exclude-from`) and `.skiffignore` files in the source
//! tree, each applying to its own directory and below.
//!
//! Precedence: command-line patterns first (the last matching line wins,
//! `!pat` re-includes); when none matches, the nearest `.skiffignore`
//! with a matching line decides, then the next one up. A directory that is
//! excluded is not entered, so nothing below it can be re-included (as in
//! git). Excluded paths are never transferred, and on the destination they
//! are never replaced or deleted.

use std::path::Path;
use std::sync::Arc;

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::Match;

use crate::entry::is_within;

/// The name of per-directory exclude files.
pub const IGNORE_FILE: &str = ".skiffignore";

/// A pattern that is not valid gitignore syntax.
#[derive(Debug, thiserror::Error)]
#[error("bad exclude pattern in {origin}: {source}")]
pub struct BadPattern {
    /// Where the pattern came from (`--exclude`, a file name).
    pub origin: String,
    /// What the parser said.
    #[source]
    pub source: ignore::Error,
}

/// A compiled set of gitignore lines rooted at one directory of the tree.
#[derive(Debug, Clone)]
pub struct Rules(Arc<Gitignore>);

impl Rules {
    /// Compiles `lines` (gitignore syntax; blank lines and `#` comments
    /// allowed) for directory `dir` (`""` is the tree's root).
    pub fn parse<'a>(
        dir: &str,
        lines: impl IntoIterator<Item = &'a str>,
        origin: &str,
    ) -> Result<Rules, BadPattern> {
        let mut b = GitignoreBuilder::new(Path::new(dir));
        for line in lines {
            b.add_line(None, line).map_err(|source| BadPattern {
                origin: origin.to_string(),
                source,
            })?;
        }
        let gi = b.build().map_err(|source| BadPattern {
            origin: origin.to_string(),
            source,
        })?;
        Ok(Rules(Arc::new(gi)))
    }

    /// No rules at all.
    pub fn empty() -> Rules {
        Rules(Arc::new(Gitignore::empty()))
    }

    fn decide(&self, path: &str, is_dir: bool) -> Option<bool> {
        match self.0.matched(Path::new(path), is_dir) {
            Match::None => None,
            Match::Ignore(_) => Some(true),
            Match::Whitelist(_) => Some(false),
        }
    }
}

/// The rules that apply at the current point of a depth-first walk: the
/// command-line rules and the `.skiffignore` of every directory from the
/// root down to the current one. Memory is one rule set per level.
#[derive(Debug, Clone)]
pub struct RuleStack {
    global: Rules,
    frames: Vec<(String, Rules)>,
}

impl RuleStack {
    /// A stack holding only the command-line rules.
    pub fn new(global: Rules) -> RuleStack {
        RuleStack {
            global,
            frames: Vec::new(),
        }
    }

    /// Drops the rules of directories that `path` is not inside. Call
    /// before deciding on `path` (paths must come in list order).
    pub fn leave_to(&mut self, path: &str) {
        while let Some((dir, _)) = self.frames.last() {
            if is_within(path, dir) {
                break;
            }
            self.frames.pop();
        }
    }

    /// Adds the rules of directory `dir`, which the walk is entering.
    pub fn enter(&mut self, dir: &str, rules: Rules) {
        self.leave_to(dir);
        self.frames.push((dir.to_string(), rules));
    }

    /// Whether `path` is excluded (after [`RuleStack::leave_to`]`(path)`).
    pub fn is_excluded(&self, path: &str, is_dir: bool) -> bool {
        if let Some(d) = self.global.decide(path, is_dir) {
            return d;
        }
        self.frames
            .iter()
            .rev()
            .filter(|(dir, _)| is_within(path, dir))
            .find_map(|(_, r)| r.decide(path, is_dir))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(global: &[&str]) -> RuleStack {
        RuleStack::new(Rules::parse("", global.iter().copied(), "--exclude").unwrap())
    }

    #[test]
    fn command_line_patterns() {
        let s = stack(&["*.log", "/build", "cache/", "!keep.log"]);
        assert!(s.is_excluded("a.log", false));
        assert!(s.is_excluded("x/y/a.log", false));
        assert!(!s.is_excluded("keep.log", false));
        assert!(s.is_excluded("build", true));
        assert!(!s.is_excluded("src/build", true));
        assert!(s.is_excluded("src/cache", true));
        assert!(
            !s.is_excluded("src/cache", false),
            "cache/ matches directories only"
        );
        assert!(!s.is_excluded("main.rs", false));
    }

    #[test]
    fn nested_ignore_files_apply_below_their_directory() {
        let mut s = stack(&[]);
        s.enter("", Rules::parse("", ["*.tmp"], "x").unwrap());
        s.enter(
            "sub",
            Rules::parse("sub", ["!special.tmp", "/local"], "x").unwrap(),
        );
        s.leave_to("sub/a.tmp");
        assert!(s.is_excluded("sub/a.tmp", false));
        assert!(!s.is_excluded("sub/special.tmp", false));
        assert!(s.is_excluded("sub/local", false));
        s.leave_to("other/local");
        assert!(!s.is_excluded("other/local", false));
        assert!(s.is_excluded("other/special.tmp", false));
    }

    #[test]
    fn command_line_wins_over_files() {
        let mut s = stack(&["secret"]);
        s.enter("", Rules::parse("", ["!secret"], "x").unwrap());
        assert!(s.is_excluded("secret", false));
    }

    #[test]
    fn bad_pattern_is_an_error() {
        assert!(Rules::parse("", ["a/**/[z-a"], "--exclude").is_err());
    }
}
