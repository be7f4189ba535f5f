//! Confinement: every path a client names is resolved beneath the root
//! through a capability, never by string manipulation alone.

use std::path::Path;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use skiff_wire::{ErrorCode, ErrorMsg};

use crate::transfer::errors;
use crate::transfer::names::{split_remote, PathRefused};

/// Opens the served root as a capability.
pub fn open_root(root: &Path) -> Result<Dir, ErrorMsg> {
    Dir::open_ambient_dir(root, ambient_authority()).map_err(|e| {
        ErrorMsg::new(
            ErrorCode::Internal,
            format!("the server root is not accessible: {e}"),
        )
    })
}

/// The `path_escape` answer for `path`.
pub fn escape(path: &str) -> ErrorMsg {
    errors::msg(ErrorCode::PathEscape, path, "")
}

/// Splits a client path into components, refusing `..` and NUL.
pub fn components(path: &str) -> Result<Vec<&str>, ErrorMsg> {
    split_remote(path).map_err(|PathRefused::Escape| escape(path))
}

/// A path's parent directory, held open, and its last component.
///
/// Holding the parent open is what makes a transfer immune to a directory
/// being swapped for a symlink halfway: the partial file is created, and
/// renamed, inside the directory this handle refers to, wherever that
/// directory is later moved; a symlink put in its place is never looked at.
pub struct Located {
    /// The parent directory.
    pub parent: Dir,
    /// The last component.
    pub name: String,
}

/// Resolves all but the last component of `path` beneath `root`. The root
/// itself has no parent: that is refused with `what` in the message.
pub fn locate(root: &Dir, path: &str, what: &str) -> Result<Located, ErrorMsg> {
    let comps = components(path)?;
    let Some((name, dirs)) = comps.split_last() else {
        return Err(ErrorMsg::new(
            ErrorCode::Permission,
            format!("{what}: the path names the server root itself"),
        ));
    };
    let parent = open_dir(root, dirs).map_err(|e| errors::to_msg(&e, path))?;
    Ok(Located {
        parent,
        name: (*name).to_string(),
    })
}

/// Opens the directory `comps` beneath `root` (symlinks inside the root are
/// followed; any that lead out are refused by the kernel or cap-std).
pub fn open_dir(root: &Dir, comps: &[&str]) -> std::io::Result<Dir> {
    if comps.is_empty() {
        root.try_clone()
    } else {
        root.open_dir(comps.join("/"))
    }
}
