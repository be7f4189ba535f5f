//! `skiff sync` from the client side: asks the server for a sync of one of
//! its directories, then takes the sending role (push: the local tree is
//! the source) or the receiving role (pull: the local tree is the
//! destination, created if missing; new files are staged beside their
//! destination and committed as `put` commits them). The roles are in
//! `crate::sync`.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use skiff_wire::message::sync::{SyncReady, SyncRequest};

use super::ClientError;
use crate::session::Session;
use crate::sync::apply::Stager;
use crate::sync::atomic::Shadow;
use crate::sync::link::Counters;
use crate::sync::sigcache::SigCache;
use crate::sync::{receiver, sender, Events, Options, Report, SyncError};

/// Which way the tree goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The local tree is the source; the server's the destination.
    Push,
    /// The server's tree is the source; the local one the destination.
    Pull,
}

/// Opens the local tree: the source must be a directory; a destination is
/// created (with its parents) when missing, except on a dry run.
pub fn open_local(path: &Path, dir: Direction, dry_run: bool) -> Result<Option<Dir>, ClientError> {
    let local = |e: std::io::Error| ClientError::Local(format!("{}: {e}", path.display()));
    if dir == Direction::Pull && !path.exists() {
        if dry_run {
            return Ok(None);
        }
        std::fs::create_dir_all(path).map_err(local)?;
    }
    let md = std::fs::metadata(path).map_err(local)?;
    if !md.is_dir() {
        return Err(ClientError::Local(format!(
            "{}: not a directory: sync mirrors directory trees (use cp for a single file)",
            path.display()
        )));
    }
    Dir::open_ambient_dir(path, ambient_authority())
        .map(Some)
        .map_err(local)
}

/// Runs a sync of `local` (opened with [`open_local`]; `None`: a dry-run
/// pull into a directory that does not exist yet) with the server's
/// `remote` directory. An atomic pull passes the [`Shadow`] that `local`
/// is the directory of (see [`prepare_atomic`]); an atomic push
/// (`opts.atomic`) asks the server for one and stops before anything is
/// sent if the server cannot do it.
pub async fn sync(
    session: &mut Session<'_>,
    local: Option<Dir>,
    remote: &str,
    dir: Direction,
    opts: &Options,
    events: Events,
    shadow: Option<Shadow>,
) -> Result<Report, ClientError> {
    let started = Instant::now();
    let req = SyncRequest {
        path: remote.to_string(),
        push: dir == Direction::Push,
        checksum: opts.checksum,
        delete: opts.delete,
        compress: opts.compress,
        dry_run: opts.dry_run,
        excludes: opts.excludes.clone(),
        atomic: opts.atomic && dir == Direction::Push && !opts.dry_run,
    };
    session.send(&req, &[]).await?;
    let (ready, _) = session.expect::<SyncReady>().await?;
    if req.atomic && !ready.atomic {
        return Err(ClientError::Local(
            "--atomic: the server does not support atomic syncs (it is older than this \
             client); upgrade it, or run without --atomic"
                .into(),
        ));
    }
    let counters = Arc::new(Counters::default());
    let (reader, writer) = session.split();
    let local = match local {
        Some(d) => d,
        None => empty_dir()?,
    };
    let summary = match dir {
        Direction::Push => sender::run(reader, writer, local, opts, events, counters.clone()).await,
        Direction::Pull => {
            let dest = receiver::Destination {
                root: local,
                stager: Stager::Beside,
                shadow,
                sigcache: pull_sigcache(),
            };
            receiver::run(reader, writer, dest, opts, events, counters.clone()).await
        }
    }
    .map_err(client_error)?;
    Ok(Report::new(
        &summary,
        &counters,
        started.elapsed().as_secs_f64(),
        opts.dry_run,
    ))
}

/// Prepares an atomic pull into `path`: creates it when missing, checks
/// what `--atomic` needs and builds the new tree beside it
/// (`sync::atomic`). Returns the shadow and its directory, which the
/// sync then writes into. Blocking.
pub fn prepare_atomic(path: &Path) -> Result<(Shadow, Dir), ClientError> {
    let local = |e: std::io::Error| ClientError::Local(format!("{}: {e}", path.display()));
    let abs = std::path::absolute(path).map_err(local)?;
    let name = match abs.file_name().and_then(|n| n.to_str()) {
        Some(n) if n != ".." && n != "." => n.to_string(),
        _ => {
            return Err(ClientError::Local(format!(
                "--atomic: {}: the new tree is built beside DST, so DST needs a parent \
                 directory and a UTF-8 name (not `/`, `.` or `..`)",
                path.display()
            )))
        }
    };
    let parent_path = abs.parent().unwrap_or(Path::new("/"));
    if std::fs::symlink_metadata(&abs).is_err() {
        std::fs::create_dir_all(&abs).map_err(local)?;
    }
    let parent = Dir::open_ambient_dir(parent_path, ambient_authority()).map_err(local)?;
    let shadow = Shadow::prepare(parent, &name).map_err(|e| ClientError::Local(e.to_string()))?;
    let dir = shadow.dir().map_err(local)?;
    Ok((shadow, dir))
}

/// A whole-sync failure as the CLI reports it: the server's refusals and
/// local trouble are failures of the operation; broken peers are
/// connection errors.
fn client_error(e: SyncError) -> ClientError {
    match e {
        SyncError::Session(s) => ClientError::from(s),
        SyncError::Local(m) => ClientError::Local(m),
        e @ SyncError::BadList(_) => ClientError::Session(e.into()),
    }
}

/// An empty directory to compare against, for a dry-run pull into a
/// destination that does not exist (nothing is created there).
/// The signature cache of files this user pulled,
/// `~/.cache/skiff/sigcache` (SYNC.md, "The receiver's signature
/// cache"): the next pull of a changed large file need not read and cut
/// the old copy first. `None` when it cannot be opened (signatures are
/// then cut afresh).
fn pull_sigcache() -> Option<Arc<SigCache>> {
    let dir = crate::keys::cache_dir().join("sigcache");
    match SigCache::open(&dir) {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            tracing::debug!("signature cache {}: {e}", dir.display());
            None
        }
    }
}

fn empty_dir() -> Result<Dir, ClientError> {
    let t = std::env::temp_dir().join(format!("skiff-sync-empty-{}", std::process::id()));
    let local = |e: std::io::Error| ClientError::Local(format!("{}: {e}", t.display()));
    std::fs::create_dir_all(&t).map_err(local)?;
    let d = Dir::open_ambient_dir(&t, ambient_authority()).map_err(local)?;
    let _ = std::fs::remove_dir(&t);
    Ok(d)
}
