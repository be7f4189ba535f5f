//! Which hosts a fan-out command runs on: `-H` lists, `@group`s from the
//! client config, hosts files, and ClusterShell-style ranges.
//!
//! Grammar of one `-H` value: items separated by commas outside brackets.
//! An item is `@GROUP` (a group from the client config) or a TARGET in
//! which any `[RANGES]` expands, ClusterShell style: `web[01-20]` gives
//! `web01` … `web20` (the width of the lower bound is kept), `h[1-3,7]`
//! gives `h1 h2 h3 h7`, and several brackets multiply
//! (`r[1-2]n[1-2]`). A bracket whose content is not digits, commas and
//! dashes is left alone, so `[::1]:7878` stays an IPv6 address. Each host
//! appears once, in order of first appearance.

use thiserror::Error;

use crate::client::config::{ClientConfig, ConfigError};
use crate::target::HostSpec;

/// The most hosts one selection may expand to: a typo such as
/// `h[1-99999999]` must fail clearly instead of eating memory.
pub const MAX_HOSTS: usize = 100_000;

/// Why a host selection is unusable (a usage error: exit 2).
#[derive(Debug, Error)]
pub enum SelectionError {
    /// A range or item that does not parse.
    #[error("host list {item:?}: {message}")]
    Syntax {
        /// The offending item.
        item: String,
        /// What is wrong with it.
        message: String,
    },
    /// A group that does not exist, or a bad config.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The hosts file could not be read.
    #[error("hosts file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The selection names no host at all.
    #[error("the host selection is empty")]
    Empty,
}

/// Builds the ordered, de-duplicated host list from `-H` values and hosts
/// files (each file: one item per line, `#` starts a comment, blank lines
/// ignored; a line may use ranges and `@group` too).
pub fn select(
    lists: &[String],
    files: &[std::path::PathBuf],
    config: &ClientConfig,
) -> Result<Vec<HostSpec>, SelectionError> {
    let mut out = Vec::new();
    for list in lists {
        add_list(list, config, &mut out)?;
    }
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|source| SelectionError::File {
            path: file.display().to_string(),
            source,
        })?;
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if !line.is_empty() {
                add_list(line, config, &mut out)?;
            }
        }
    }
    if out.is_empty() {
        return Err(SelectionError::Empty);
    }
    Ok(out)
}

fn add_list(
    list: &str,
    config: &ClientConfig,
    out: &mut Vec<HostSpec>,
) -> Result<(), SelectionError> {
    for item in split_items(list) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let specs = match item.strip_prefix('@') {
            Some(group) => config.group(group)?,
            None => expand(item)?
                .into_iter()
                .map(|name| {
                    name.parse::<HostSpec>()
                        .map_err(|message| SelectionError::Syntax {
                            item: item.to_string(),
                            message,
                        })
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        for spec in specs {
            if !out.contains(&spec) {
                if out.len() >= MAX_HOSTS {
                    return Err(too_many(item));
                }
                out.push(spec);
            }
        }
    }
    Ok(())
}

fn too_many(item: &str) -> SelectionError {
    SelectionError::Syntax {
        item: item.to_string(),
        message: format!("more than {MAX_HOSTS} hosts"),
    }
}

/// Splits at commas outside brackets.
fn split_items(list: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                items.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&list[start..]);
    items
}

/// Expands every numeric `[RANGES]` in one item (see the module docs).
pub fn expand(item: &str) -> Result<Vec<String>, SelectionError> {
    let syntax = |message: String| SelectionError::Syntax {
        item: item.to_string(),
        message,
    };
    let mut names = vec![String::new()];
    let mut rest = item;
    while let Some(open) = rest.find('[') {
        let close = rest[open..]
            .find(']')
            .map(|c| open + c)
            .ok_or_else(|| syntax("unclosed '['".to_string()))?;
        let inner = &rest[open + 1..close];
        let literal = &rest[..open];
        if !is_range_set(inner) {
            // Not a node set (an IPv6 address): keep the brackets.
            for n in &mut names {
                n.push_str(&rest[..=close]);
            }
            rest = &rest[close + 1..];
            continue;
        }
        let values = range_values(inner).map_err(syntax)?;
        if names.len().saturating_mul(values.len()) > MAX_HOSTS {
            return Err(too_many(item));
        }
        names = names
            .iter()
            .flat_map(|n| values.iter().map(move |v| format!("{n}{literal}{v}")))
            .collect();
        rest = &rest[close + 1..];
    }
    for n in &mut names {
        n.push_str(rest);
    }
    Ok(names)
}

fn is_range_set(inner: &str) -> bool {
    !inner.is_empty()
        && inner.starts_with(|c: char| c.is_ascii_digit())
        && inner
            .chars()
            .all(|c| c.is_ascii_digit() || c == '-' || c == ',')
}

/// `1-3,7` → `1 2 3 7`; `01-10` keeps the width of the lower bound.
fn range_values(inner: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in inner.split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let num = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| format!("bad range {part:?} in [{inner}]"))
        };
        let (a, b) = (num(lo)?, num(hi)?);
        if a > b {
            return Err(format!("range {part:?} runs backwards"));
        }
        if b - a >= MAX_HOSTS as u64 || out.len() + (b - a) as usize >= MAX_HOSTS {
            return Err(format!("range [{inner}] has more than {MAX_HOSTS} values"));
        }
        let width = if lo.len() > 1 && lo.starts_with('0') {
            lo.len()
        } else {
            0
        };
        out.extend((a..=b).map(|v| format!("{v:0width$}")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn names(list: &str) -> Vec<String> {
        let cfg = ClientConfig::parse(
            Path::new("/c.toml"),
            "[groups]\nweb = [\"w1\", \"w2\"]\nall = [\"@web\", \"db\"]\n",
        )
        .expect("config");
        select(&[list.to_string()], &[], &cfg)
            .expect("select")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn expands_clustershell_ranges() {
        assert_eq!(expand("web[01-03]").unwrap(), ["web01", "web02", "web03"]);
        assert_eq!(expand("h[1-3,7]").unwrap(), ["h1", "h2", "h3", "h7"]);
        assert_eq!(expand("h[8-10]").unwrap(), ["h8", "h9", "h10"]);
        assert_eq!(
            expand("r[1-2]n[1-2].lab").unwrap(),
            ["r1n1.lab", "r1n2.lab", "r2n1.lab", "r2n2.lab"]
        );
        assert_eq!(expand("plain").unwrap(), ["plain"]);
    }

    #[test]
    fn keeps_ipv6_brackets() {
        assert_eq!(expand("[::1]:7878").unwrap(), ["[::1]:7878"]);
        assert_eq!(names("[::1]:7001,[::1]:7002").len(), 2);
    }

    #[test]
    fn splits_lists_groups_and_dedups() {
        assert_eq!(names("a,h[1-2,4],a"), ["a", "h1", "h2", "h4"]);
        assert_eq!(names("@all,w1,x"), ["w1", "w2", "db", "x"]);
        assert_eq!(
            names("alice@h[1-2]:7001"),
            ["alice@h1:7001", "alice@h2:7001"]
        );
    }

    #[test]
    fn rejects_bad_ranges_and_bombs() {
        for bad in [
            "h[3-1]",
            "h[1-",
            "h[1-2-3]",
            "h[1-99999999]",
            "h[1-400][1-400]",
        ] {
            assert!(expand(bad).is_err(), "{bad}");
        }
        let cfg = ClientConfig::default();
        assert!(matches!(
            select(&[",".into()], &[], &cfg),
            Err(SelectionError::Empty)
        ));
        assert!(select(&["@nope".into()], &[], &cfg).is_err());
    }

    #[test]
    fn reads_hosts_files_with_comments() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("hosts");
        std::fs::write(&f, "# fleet\nh1\n\n  h[2-3]  # racks\nh1\n").unwrap();
        let got = select(&[], &[f], &ClientConfig::default()).unwrap();
        let got: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["h1", "h2", "h3"]);
    }
}
