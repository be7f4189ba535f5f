//! Whether a symlink may be created inside a tree (the served root on the
//! server, LOCAL for `get -r` on the client): decided by resolution, never
//! by counting `..` in the text.
//!
//! The rule that keeps every link skiff creates inside its tree, however a
//! chain of links is built:
//!
//! 1. a target is relative and may climb only at its start (`../../a/b`;
//!    `a/../b` is refused), so the climb is resolved from the link's
//!    *physical* parent directory, which is where the kernel resolves it
//!    too, and cannot be redirected by a link met on the way;
//! 2. the climb must stay within the tree: it may not go above the top
//!    from the link's physical position (found by the kernel: the parent
//!    directory is opened beneath the top, its real path read back);
//! 3. the rest of the target, resolved by the kernel beneath the top
//!    (`openat2(RESOLVE_BENEATH)` through cap-std), must not lead out
//!    through any link that already exists. A target that does not exist
//!    yet is fine: whatever is created there later passes these checks.
//!
//! Since every link skiff creates obeys 1 and 2, a path made of such
//! links only ever descends after climbing within the tree, so chains
//! (`sub/up -> ..` then `esc -> sub/up/..`, in either order) cannot walk
//! out.

use std::io;
use std::path::{Path, PathBuf};

use cap_fs_ext::DirExt;
use cap_std::fs::Dir;
use skiff_wire::ErrorCode;
use thiserror::Error;

use super::errors::code_for;

/// Why a link target was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LinkRefused {
    /// Empty, absolute or with a NUL byte.
    #[error("symlink target {0:?} is empty, absolute or contains NUL")]
    NotRelative(String),
    /// A `..` after a name (`a/../b`): where it leads depends on what `a` is.
    #[error("symlink target {0:?} climbs (..) after a name; only leading ../ are allowed")]
    ClimbsAfterName(String),
    /// More leading `..` than the link's depth below the top.
    #[error("symlink target {0:?} climbs above the top of the tree")]
    ClimbsAbove(String),
    /// Resolved by the kernel, the target leads out through existing links.
    #[error("symlink target {0:?} resolves outside the tree")]
    ResolvesOutside(String),
}

/// A target split into its leading climb and the names after it.
#[derive(Debug, PartialEq, Eq)]
struct Target<'a> {
    ups: usize,
    rest: Vec<&'a str>,
}

fn parse(target: &str) -> Result<Target<'_>, LinkRefused> {
    if target.is_empty() || target.starts_with('/') || target.contains('\0') {
        return Err(LinkRefused::NotRelative(target.to_string()));
    }
    let mut ups = 0;
    let mut rest = Vec::new();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." if rest.is_empty() => ups += 1,
            ".." => return Err(LinkRefused::ClimbsAfterName(target.to_string())),
            name => rest.push(name),
        }
    }
    Ok(Target { ups, rest })
}

/// Checks a symlink to `target` about to be created in the directory whose
/// physical path below `top` is `parent` (see [`physical_path`]).
pub fn check(top: &Dir, parent: &[String], target: &str) -> Result<(), LinkRefused> {
    let t = parse(target)?;
    if t.ups > parent.len() {
        return Err(LinkRefused::ClimbsAbove(target.to_string()));
    }
    let mut full: Vec<&str> = parent[..parent.len() - t.ups]
        .iter()
        .map(String::as_str)
        .collect();
    full.extend(&t.rest);
    if full.is_empty() {
        return Ok(());
    }
    match top.metadata(full.join("/")) {
        Ok(_) => Ok(()),
        Err(e) if code_for(&e) == ErrorCode::PathEscape => {
            Err(LinkRefused::ResolvesOutside(target.to_string()))
        }
        // Dangling (not there yet) or unreadable: nothing leads out today.
        Err(_) => Ok(()),
    }
}

/// The physical path, below `top`, of the directory `comps` (as a client
/// named it, possibly through links inside the tree), as components.
/// Without links on the way that is `comps` itself; otherwise the kernel's
/// answer for the opened directory (`/proc/self/fd`).
pub fn physical_path(top: &Dir, comps: &[&str]) -> io::Result<Vec<String>> {
    let mut d = top.try_clone()?;
    let mut all_real = true;
    for c in comps {
        match d.open_dir_nofollow(c) {
            Ok(next) => d = next,
            Err(_) => {
                all_real = false;
                break;
            }
        }
    }
    if all_real {
        return Ok(comps.iter().map(|c| c.to_string()).collect());
    }
    let dir = if comps.is_empty() {
        top.try_clone()?
    } else {
        top.open_dir(comps.join("/"))?
    };
    let top_path = fd_path(top)?;
    let dir_path = fd_path(&dir)?;
    let rel = dir_path.strip_prefix(&top_path).map_err(|_| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a path led outside of the filesystem",
        )
    })?;
    rel.components()
        .map(|c| {
            c.as_os_str().to_str().map(str::to_string).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "directory name is not UTF-8")
            })
        })
        .collect()
}

fn fd_path(dir: &Dir) -> io::Result<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(Path::new("/proc/self/fd").join(dir.as_raw_fd().to_string()))
}

/// Checks a move of the entry `name` of `from` to the place whose physical
/// path below `top` is `dest` (its parent's physical path and its new
/// name): a link's climb is resolved from where the link lies, so moving a
/// link, or a directory holding links, nearer the top could carry a climb
/// that was inside the tree above it. The entry itself, if it is a link,
/// and every link below it, if it is a directory, must pass [`check`] from
/// its new place. The walk holds one directory open at a time.
pub fn check_move(
    top: &Dir,
    from: &Dir,
    name: &str,
    dest: &[String],
) -> io::Result<Result<(), LinkRefused>> {
    let md = from.symlink_metadata(name)?;
    if md.file_type().is_symlink() {
        let target = from.read_link_contents(name)?;
        let parent = &dest[..dest.len().saturating_sub(1)];
        return Ok(check(top, parent, &target.to_string_lossy()));
    }
    if !md.is_dir() {
        return Ok(Ok(()));
    }
    let moved = from.open_dir_nofollow(name)?;
    let mut pending: Vec<Vec<String>> = vec![Vec::new()];
    while let Some(rel) = pending.pop() {
        let dir = if rel.is_empty() {
            moved.try_clone()?
        } else {
            match moved.open_dir_nofollow(rel.join("/")) {
                Ok(d) => d,
                // Changed while walked: nothing of it moves as a link.
                Err(_) => continue,
            }
        };
        for ent in dir.entries()?.flatten() {
            let Ok(entry) = ent.file_name().into_string() else {
                continue;
            };
            let Ok(md) = dir.symlink_metadata(&entry) else {
                continue;
            };
            if md.file_type().is_symlink() {
                let target = dir.read_link_contents(&entry)?;
                let mut parent = dest.to_vec();
                parent.extend(rel.iter().cloned());
                if let Err(refused) = check(top, &parent, &target.to_string_lossy()) {
                    return Ok(Err(refused));
                }
            } else if md.is_dir() {
                let mut sub = rel.clone();
                sub.push(entry);
                pending.push(sub);
            }
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_std::ambient_authority;

    fn tree() -> (tempfile::TempDir, Dir) {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("top/sub/deep")).unwrap();
        let d = Dir::open_ambient_dir(t.path().join("top"), ambient_authority()).unwrap();
        (t, d)
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn shapes() {
        assert_eq!(
            parse("../../a/./b").unwrap(),
            Target {
                ups: 2,
                rest: vec!["a", "b"]
            }
        );
        for bad in ["", "/etc", "a\0b"] {
            assert!(matches!(parse(bad), Err(LinkRefused::NotRelative(_))));
        }
        assert!(matches!(
            parse("sub/up/.."),
            Err(LinkRefused::ClimbsAfterName(_))
        ));
    }

    #[test]
    fn climbs_and_chains() {
        let (t, top) = tree();
        assert!(check(&top, &s(&["sub"]), "..").is_ok());
        assert!(check(&top, &s(&["sub"]), "../sub/deep").is_ok());
        assert!(check(&top, &s(&[]), "..").is_err());
        assert!(check(&top, &s(&["sub", "deep"]), "../../..").is_err());
        assert!(check(&top, &s(&[]), "not/there/yet").is_ok());
        // `sub/up -> ..` is fine; `esc -> sub/up/..` is refused whether or
        // not `sub/up` exists yet.
        assert!(check(&top, &s(&[]), "sub/up/..").is_err());
        std::os::unix::fs::symlink("..", t.path().join("top/sub/up")).unwrap();
        assert!(check(&top, &s(&[]), "sub/up/..").is_err());
        assert!(check(&top, &s(&[]), "sub/up/sub").is_ok());
        // Through a link that leads out (made by someone else): refused.
        std::os::unix::fs::symlink("/etc", t.path().join("top/out")).unwrap();
        assert!(matches!(
            check(&top, &s(&[]), "out/passwd"),
            Err(LinkRefused::ResolvesOutside(_))
        ));
    }

    #[test]
    fn physical_paths_follow_links_inside() {
        let (t, top) = tree();
        std::os::unix::fs::symlink("sub/deep", t.path().join("top/l")).unwrap();
        assert_eq!(physical_path(&top, &["sub"]).unwrap(), s(&["sub"]));
        assert_eq!(physical_path(&top, &["l"]).unwrap(), s(&["sub", "deep"]));
        assert_eq!(physical_path(&top, &[]).unwrap(), s(&[]));
    }

    #[test]
    fn a_move_nearer_the_top_rechecks_the_links_it_carries() {
        let (t, top) = tree();
        // `sub/deep/up -> ../../x` names `top/x`; moved to `top/d` (or the
        // link alone to `top/up`) it would name the parent of the top.
        std::os::unix::fs::symlink("../../x", t.path().join("top/sub/deep/up")).unwrap();
        let sub = top.open_dir("sub").unwrap();
        assert!(matches!(
            check_move(&top, &sub, "deep", &s(&["d"])).unwrap(),
            Err(LinkRefused::ClimbsAbove(_))
        ));
        let deep = top.open_dir("sub/deep").unwrap();
        assert!(check_move(&top, &deep, "up", &s(&["up"])).unwrap().is_err());
        // Deeper, or beside where it was: still inside.
        assert!(check_move(&top, &sub, "deep", &s(&["a", "b"]))
            .unwrap()
            .is_ok());
        assert!(check_move(&top, &top, "sub", &s(&["s2"])).unwrap().is_ok());
        // A plain file carries no link.
        std::fs::write(t.path().join("top/f"), b"x").unwrap();
        assert!(check_move(&top, &top, "f", &s(&["g"])).unwrap().is_ok());
    }
}
