//! `get`: streams a file from an offset in `data` chunks, read and hashed
//! on a blocking thread while earlier chunks are on the wire, and closes
//! with the whole-file digest in `end`.

use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt, OpenOptionsSyncExt};
use cap_std::fs::{Dir, OpenOptions};
use skiff_wire::message::files::{Data, End, FileHead, Get};
use skiff_wire::{ErrorCode, ErrorMsg};

use super::confine;
use crate::session::{Session, SessionError};
use crate::transfer::errors;
use crate::transfer::pipeline::Source;

/// Handles one `get` request.
pub async fn handle(session: &mut Session<'_>, root: &Dir, req: Get) -> Result<(), SessionError> {
    let (file, head) = match open(root, &req) {
        Ok(x) => x,
        Err(m) => return session.queue(&m, &[]),
    };
    session.queue(&head, &[])?;
    // The announced size and not a byte more, even if the file grows
    // meanwhile: the client refuses anything past it.
    let mut source = Source::spawn_upto(file, head.offset, head.size, req.hash);
    while let Some(chunk) = source.next().await {
        session.write_shared(&Data {}, chunk).await?;
    }
    match source.finish().await {
        Ok(done) => session.queue(
            &End {
                size: done.size,
                digest: done.digest,
                abort: false,
            },
            &[],
        ),
        Err(e) => session.queue(&errors::to_msg(&e, &req.path), &[]),
    }
}

/// Opens a regular file beneath the root (symlinks inside the root are
/// followed, never out of it) and describes it.
fn open(root: &Dir, req: &Get) -> Result<(std::fs::File, FileHead), ErrorMsg> {
    let comps = confine::components(&req.path)?;
    let io = |e: std::io::Error| errors::to_msg(&e, &req.path);
    let mut opts = OpenOptions::new();
    // Non-blocking, so that a FIFO planted in the root cannot hang us.
    opts.read(true).nonblock(true).follow(FollowSymlinks::Yes);
    let file = if comps.is_empty() {
        return Err(not_a_file(&req.path));
    } else {
        root.open_with(comps.join("/"), &opts).map_err(io)?
    };
    let md = file.metadata().map_err(io)?;
    if !md.is_file() {
        return Err(not_a_file(&req.path));
    }
    let entry = crate::transfer::meta::entry(String::new(), &md, None);
    let offset = if req.offset <= md.len() {
        req.offset
    } else {
        0
    };
    Ok((
        file.into_std(),
        FileHead {
            size: md.len(),
            mode: entry.mode,
            mtime_ns: entry.mtime_ns,
            offset,
        },
    ))
}

fn not_a_file(path: &str) -> ErrorMsg {
    ErrorMsg::new(
        ErrorCode::Exists,
        format!(
            "{}: is a directory, not a file; use get -r to copy a tree",
            if path.is_empty() { "/" } else { path }
        ),
    )
}
