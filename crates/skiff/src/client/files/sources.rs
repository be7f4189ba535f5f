//! Several sources into one destination, as `put`, `get` and `cp` take
//! them: the destination is prepared once ([`super::dest`]), each source is
//! placed into it or becomes it, and a source that fails is reported while
//! the others go on (as scp does). Only a session error stops the rest.

use std::path::{Path, PathBuf};

use super::{dest, download, remote_glob, upload, Options, Summary};
use crate::client::ClientError;
use crate::session::Session;

/// Uploads every local `source` to `dest` on the server.
pub async fn put_all(
    session: &mut Session<'_>,
    sources: &[PathBuf],
    dest: &str,
    opts: &Options,
) -> Result<Summary, ClientError> {
    let dest_is_dir = dest::remote_destination(session, dest, sources.len() > 1).await?;
    let mut total = Summary::default();
    for src in sources {
        let name = match src.file_name().map(|n| n.to_str()) {
            Some(Some(n)) => Some(n),
            Some(None) => {
                total.fail(ClientError::Local(format!(
                    "{}: name is not UTF-8; skipped",
                    src.display()
                )))?;
                continue;
            }
            None => None,
        };
        let place = dest::remote_place(dest, dest_is_dir, name);
        let opts = labelled(opts, &src.to_string_lossy());
        match upload::put_as(session, src, &place, &opts).await {
            Ok(s) => total.absorb(s),
            Err(e) => total.fail(e)?,
        }
    }
    Ok(total)
}

/// Downloads every remote `source` (globs expanded by the server) to the
/// local `dest`; `several` says the command has more sources than these
/// (from other servers), so `dest` must be a directory.
pub async fn get_all(
    session: &mut Session<'_>,
    sources: &[String],
    dest: &Path,
    several: bool,
    opts: &Options,
) -> Result<Summary, ClientError> {
    let mut total = Summary::default();
    let mut expanded = Vec::new();
    for src in sources {
        match remote_glob::expand(session, src).await {
            Ok(paths) => expanded.extend(paths),
            Err(e) => total.fail(e)?,
        }
    }
    if expanded.is_empty() {
        return Ok(total);
    }
    let several = several || expanded.len() > 1 || sources.len() > 1;
    let dest_is_dir = dest::local_destination(dest, several)?;
    for src in &expanded {
        let place = dest::local_place(dest, dest_is_dir, src);
        let opts = labelled(opts, src);
        match download::get_as(session, src, &place, &opts).await {
            Ok(s) => total.absorb(s),
            Err(e) => total.fail(e)?,
        }
    }
    Ok(total)
}

/// `opts` with the progress label set to `what`.
pub(crate) fn labelled(opts: &Options, what: &str) -> Options {
    Options {
        label: what.to_string(),
        ..opts.clone()
    }
}
