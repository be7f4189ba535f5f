//! Remote globs (`HOST:logs/*.log`): a pattern is matched one path
//! component at a time, by the server, against the names it finds while
//! walking beneath the root, so a match is always a real entry inside the
//! root and a pattern can never name anything outside it.
//!
//! Syntax (globset, per component): `*`, `?`, `[abc]`, `[!a-z]`, `{a,b}`;
//! `*` never crosses a `/`, and as in a shell a name starting with `.` is
//! only matched by a component that starts with `.` itself. `..` and `.`
//! components are refused. A path with none of `*`, `?`, `[` is not a glob.

use globset::{Glob, GlobBuilder, GlobMatcher};

/// Whether a path holds glob characters.
pub fn is_glob(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

/// A glob split into the literal directory before its first wildcard and
/// the per-component pattern after it.
#[derive(Debug, Clone)]
pub struct Pattern {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
struct Part {
    matcher: GlobMatcher,
    dot: bool,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// A `..` or `.` component, a NUL, or an empty pattern.
    #[error("{0:?}: a pattern may not be empty or hold `.`, `..` or NUL components")]
    Escape(String),
    /// Not valid glob syntax.
    #[error("{0:?}: bad pattern: {1}")]
    Syntax(String, String),
}

/// Splits `path` at its first component with a wildcard: the literal
/// directory (`""` for the root) and the pattern relative to it.
pub fn split(path: &str) -> (String, String) {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let first = comps.iter().position(|c| is_glob(c)).unwrap_or(comps.len());
    (comps[..first].join("/"), comps[first..].join("/"))
}

impl Pattern {
    /// Compiles a relative pattern (`*/x?.log`).
    pub fn new(pattern: &str) -> Result<Pattern, PatternError> {
        if pattern.is_empty() || pattern.contains('\0') {
            return Err(PatternError::Escape(pattern.to_string()));
        }
        let mut parts = Vec::new();
        for c in pattern.split('/').filter(|c| !c.is_empty()) {
            if c == "." || c == ".." {
                return Err(PatternError::Escape(pattern.to_string()));
            }
            let glob: Glob = GlobBuilder::new(c)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| PatternError::Syntax(pattern.to_string(), e.kind().to_string()))?;
            parts.push(Part {
                matcher: glob.compile_matcher(),
                dot: c.starts_with('.'),
            });
        }
        if parts.is_empty() {
            return Err(PatternError::Escape(pattern.to_string()));
        }
        Ok(Pattern { parts })
    }

    /// How many components a match has.
    pub fn depth(&self) -> usize {
        self.parts.len()
    }

    /// Whether `name` matches the component at `depth` (0-based).
    pub fn matches_at(&self, depth: usize, name: &str) -> bool {
        match self.parts.get(depth) {
            Some(p) => (p.dot || !name.starts_with('.')) && p.matcher.is_match(name),
            None => false,
        }
    }

    /// Whether a relative `path` matches the whole pattern.
    pub fn matches(&self, path: &str) -> bool {
        let comps: Vec<&str> = path.split('/').collect();
        comps.len() == self.parts.len()
            && comps.iter().enumerate().all(|(i, c)| self.matches_at(i, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_matches() {
        assert_eq!(split("logs/*.log"), ("logs".into(), "*.log".into()));
        assert_eq!(split("/a/b*/c"), ("a".into(), "b*/c".into()));
        assert_eq!(split("*"), ("".into(), "*".into()));
        let p = Pattern::new("*/x?.{log,txt}").unwrap();
        assert_eq!(p.depth(), 2);
        assert!(p.matches("d/x1.log"));
        assert!(p.matches("d/x2.txt"));
        assert!(!p.matches("d/x12.log"));
        assert!(!p.matches("d/e/x1.log"));
        assert!(!p.matches(".hidden/x1.log"));
        assert!(Pattern::new(".*").unwrap().matches(".hidden"));
        assert!(Pattern::new("[*]").unwrap().matches("*"));
        for bad in ["", "../*", "a/../*", "./*", "a\0*"] {
            assert!(Pattern::new(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            Pattern::new("[z-a"),
            Err(PatternError::Syntax(..))
        ));
    }
}
