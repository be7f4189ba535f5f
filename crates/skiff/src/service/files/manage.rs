//! `rm`, `mkdir` and `mv`.

use cap_fs_ext::DirExt;
use cap_std::fs::Dir;
use skiff_wire::message::files::{Mkdir, Mv, OkReply, Rm};
use skiff_wire::{ErrorCode, ErrorMsg, Message};

use super::confine;
use crate::transfer::names::base_name;
use crate::transfer::{errors, links, meta};

/// Removes a file or symlink, or with `recursive` a directory tree
/// (symlinks inside are removed, never followed).
pub async fn rm(root: &Dir, req: Rm) -> Result<OkReply, ErrorMsg> {
    let loc = confine::locate(root, &req.path, Rm::OP)?;
    let io = |e: std::io::Error| errors::to_msg(&e, &req.path);
    let md = loc.parent.symlink_metadata(&loc.name).map_err(io)?;
    if !md.is_dir() {
        loc.parent.remove_file(&loc.name).map_err(io)?;
        return Ok(OkReply {});
    }
    if !req.recursive {
        return Err(ErrorMsg::new(
            ErrorCode::Exists,
            format!(
                "{}: is a directory; use rm -r to remove it and everything in it",
                req.path
            ),
        ));
    }
    let name = loc.name.clone();
    let parent = loc.parent;
    tokio::task::spawn_blocking(move || parent.remove_dir_all(&name))
        .await
        .map_err(|e| ErrorMsg::new(ErrorCode::Internal, e.to_string()))?
        .map_err(io)?;
    Ok(OkReply {})
}

/// Creates a directory (with `parents`, its missing ancestors too). With
/// `exist_ok`, an existing directory only gets mode and mtime applied.
pub fn mkdir(root: &Dir, req: &Mkdir) -> Result<OkReply, ErrorMsg> {
    let comps = confine::components(&req.path)?;
    let io = |e: std::io::Error| errors::to_msg(&e, &req.path);
    if comps.is_empty() {
        return if req.exist_ok || req.parents {
            Ok(OkReply {})
        } else {
            Err(errors::msg(ErrorCode::Exists, "/", "the root exists"))
        };
    }
    let loc = confine::locate(root, &req.path, Mkdir::OP).or_else(|m| {
        if req.parents && m.code == ErrorCode::NotFound {
            let (_, dirs) = comps.split_last().unwrap_or((&"", &[]));
            root.create_dir_all(dirs.join("/")).map_err(io)?;
            confine::locate(root, &req.path, Mkdir::OP)
        } else {
            Err(m)
        }
    })?;
    match loc.parent.create_dir(&loc.name) {
        Ok(()) => {}
        Err(e)
            if e.kind() == std::io::ErrorKind::AlreadyExists && (req.exist_ok || req.parents) =>
        {
            let md = loc.parent.symlink_metadata(&loc.name).map_err(io)?;
            if !md.is_dir() {
                return Err(errors::msg(
                    ErrorCode::Exists,
                    &req.path,
                    "a file is in the way",
                ));
            }
        }
        Err(e) => return Err(io(e)),
    }
    if req.mode.is_some() || req.mtime_ns.is_some() {
        let d = loc.parent.open_dir_nofollow(&loc.name).map_err(io)?;
        meta::apply_dir(&d, req.mode, req.mtime_ns).map_err(io)?;
    }
    Ok(OkReply {})
}

/// Renames `from` to `to`, or into `to` when that is a directory.
pub fn mv(root: &Dir, req: &Mv) -> Result<OkReply, ErrorMsg> {
    let from = confine::locate(root, &req.from, Mv::OP)?;
    let io_from = |e: std::io::Error| errors::to_msg(&e, &req.from);
    from.parent.symlink_metadata(&from.name).map_err(io_from)?;
    let to_comps = confine::components(&req.to)?;
    let into_dir = to_comps.is_empty()
        || root
            .metadata(to_comps.join("/"))
            .map(|m| m.is_dir())
            .unwrap_or(false);
    let to_path = if into_dir {
        format!("{}/{}", to_comps.join("/"), base_name(&from.name))
    } else {
        req.to.clone()
    };
    let to = confine::locate(root, &to_path, Mv::OP)?;
    let io_to = |e: std::io::Error| errors::to_msg(&e, &to_path);
    match to.parent.symlink_metadata(&to.name) {
        Ok(md) if md.is_dir() => {
            return Err(errors::msg(
                ErrorCode::Exists,
                &to_path,
                "a directory is in the way",
            ))
        }
        Ok(_) if !req.force => return Err(errors::msg(ErrorCode::Exists, &to_path, "file exists")),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_to(e)),
    }
    let to_parent: Vec<&str> = confine::components(&to_path)?
        .split_last()
        .map(|(_, parent)| parent.to_vec())
        .unwrap_or_default();
    let mut dest = links::physical_path(root, &to_parent).map_err(io_to)?;
    dest.push(to.name.clone());
    if let Err(refused) =
        links::check_move(root, &from.parent, &from.name, &dest).map_err(io_from)?
    {
        return Err(errors::msg(
            ErrorCode::PathEscape,
            &req.from,
            &format!("moved to {to_path}, {refused}"),
        ));
    }
    from.parent
        .rename(&from.name, &to.parent, &to.name)
        .map_err(io_to)?;
    Ok(OkReply {})
}
