//! Path rules shared by both ends.
//!
//! These are the *first* line of defence, giving clear errors early; the
//! real confinement is capability-based (every access goes through a
//! `cap_std::fs::Dir`, which the kernel keeps beneath its directory).

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRefused {
    /// A `..` component, a NUL byte, or (for names a peer sends) an
    /// absolute path: it could lead outside.
    Escape,
}

/// Splits a remote path into components: `/` separated, a leading `/`
/// meaning the root, empty and `.` components ignored. `..` and NUL are
/// refused outright rather than resolved. An empty result is the root.
pub fn split_remote(path: &str) -> Result<Vec<&str>, PathRefused> {
    if path.contains('\0') {
        return Err(PathRefused::Escape);
    }
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(PathRefused::Escape),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Checks a relative path a (possibly malicious) peer sent for an entry
/// inside a tree: every component must be a plain name. Absolute paths,
/// empty components, `.`, `..` and NUL are refused.
pub fn split_entry(path: &str) -> Result<Vec<&str>, PathRefused> {
    if path.is_empty() || path.contains('\0') || path.starts_with('/') {
        return Err(PathRefused::Escape);
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return Err(PathRefused::Escape);
    }
    Ok(parts)
}

/// The hidden name an incoming file is written under, next to its final
/// name, until it is verified and renamed into place. Too-long names get a
/// hashed stand-in so the part file still fits `NAME_MAX`.
pub fn part_name(name: &str) -> String {
    let n = format!(".{name}.skiff-part");
    if n.len() <= 255 {
        return n;
    }
    let h = blake3::hash(name.as_bytes()).to_hex();
    format!(".{}.skiff-part", &h[..32])
}

/// The last component of a `/`-separated path (`""` for the root).
pub fn base_name(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_paths() {
        assert_eq!(split_remote("/").unwrap(), Vec::<&str>::new());
        assert_eq!(split_remote("a//b/./c/").unwrap(), vec!["a", "b", "c"]);
        assert_eq!(split_remote("/x").unwrap(), vec!["x"]);
        assert!(split_remote("a/../b").is_err());
        assert!(split_remote("/../../etc/passwd").is_err());
        assert!(split_remote("a\0b").is_err());
    }

    #[test]
    fn entry_paths() {
        assert_eq!(split_entry("a b/ü").unwrap(), vec!["a b", "ü"]);
        for bad in ["", "/etc", "../x", "a/../b", "a//b", "./a", "a\0"] {
            assert!(split_entry(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn part_names() {
        assert_eq!(part_name("f"), ".f.skiff-part");
        assert!(part_name(&"x".repeat(255)).len() <= 255);
        assert_eq!(base_name("a/b/"), "b");
        assert_eq!(base_name("/"), "");
    }
}
