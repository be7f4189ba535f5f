//! `exec-allow=PATTERN`: which commands a restricted user may run.
//!
//! A pattern is a glob (`*`, `?`, `[...]`, `{a,b}`) matched against the
//! whole command line, its words joined by single spaces: `uptime`,
//! `git pull`, `ls *`. To be sure that what matched is exactly what runs,
//! an allowed command never goes through a shell: the command line is
//! split into words at spaces and executed directly, and a word may only
//! hold letters, digits and `- _ . / : , @ + % = ^`. Quotes, `;`, `|`, `&`,
//! `$`, backquotes, redirections, globs and control characters are refused
//! rather than interpreted, so `sh -c` quoting cannot smuggle a second
//! command past a pattern.

use globset::{GlobBuilder, GlobMatcher};
use skiff_wire::message::exec::Exec;

/// One compiled `exec-allow` pattern.
#[derive(Debug, Clone)]
pub struct ExecPattern {
    source: String,
    matcher: GlobMatcher,
}

impl PartialEq for ExecPattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for ExecPattern {}

impl ExecPattern {
    /// Compiles `pattern`.
    pub fn new(pattern: &str) -> Result<ExecPattern, String> {
        let matcher = GlobBuilder::new(pattern)
            .literal_separator(false)
            .backslash_escape(true)
            .build()
            .map_err(|e| format!("exec-allow={pattern}: {e}"))?
            .compile_matcher();
        Ok(ExecPattern {
            source: pattern.to_string(),
            matcher,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the command line `line` (words joined by single spaces)
    /// matches.
    pub fn matches(&self, line: &str) -> bool {
        self.matcher.is_match(line)
    }
}

fn safe_char(c: char) -> bool {
    c.is_alphanumeric() || "-_./:,@+%=^".contains(c)
}

fn check_word(w: &str) -> Result<(), String> {
    match w.chars().find(|&c| !safe_char(c)) {
        None if !w.is_empty() => Ok(()),
        None => Err("empty arguments are not allowed for this user".to_string()),
        Some(c) => Err(format!(
            "{c:?} is not allowed in this user's commands (they run without a shell)"
        )),
    }
}

/// The words of the request's command: `argv` as given, or `cmd` split at
/// spaces; refused if any word holds a character outside the safe set.
pub fn command_words(req: &Exec) -> Result<Vec<String>, String> {
    let words: Vec<String> = match (&req.argv, &req.cmd) {
        (Some(argv), None) => argv.clone(),
        (None, Some(cmd)) => cmd
            .split(' ')
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect(),
        _ => return Err("exec needs exactly one of \"argv\" and \"cmd\"".to_string()),
    };
    if words.is_empty() {
        return Err("empty command".to_string());
    }
    for w in &words {
        check_word(w)?;
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_lines() {
        let p = ExecPattern::new("git pull *").unwrap();
        assert!(p.matches("git pull origin main"));
        assert!(!p.matches("git pull"));
        assert!(!p.matches("xgit pull a"));
        let p = ExecPattern::new("{uptime,df -h}").unwrap();
        assert!(p.matches("uptime") && p.matches("df -h") && !p.matches("df"));
        assert!(ExecPattern::new("[").is_err());
    }

    #[test]
    fn argv_words_are_checked_too() {
        let req = Exec {
            argv: Some(vec!["ls".into(), "a b".into()]),
            ..Exec::default()
        };
        assert!(command_words(&req).is_err());
        let req = Exec {
            argv: Some(vec!["ls".into(), "-l".into()]),
            ..Exec::default()
        };
        assert_eq!(command_words(&req).unwrap(), ["ls", "-l"]);
    }
}
