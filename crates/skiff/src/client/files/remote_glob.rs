//! Expanding a remote glob (`HOST:logs/*.log`): the server walks beneath
//! the pattern's literal directory and returns what matches
//! (`ls` with a `pattern`, see `transfer::glob`), so only real entries
//! inside the root are ever named. The client checks every answer against
//! the same pattern, so an old or misbehaving server cannot widen a match.

use skiff_wire::{ErrorCode, ErrorMsg};

use super::{remote, remote_join};
use crate::client::ClientError;
use crate::session::Session;
use crate::transfer::glob::{self, Pattern, PatternError};

/// The remote paths `path` names: itself when it is not a glob, else every
/// match, sorted. A glob with no match is `not_found`.
pub async fn expand(session: &mut Session<'_>, path: &str) -> Result<Vec<String>, ClientError> {
    if !glob::is_glob(path) {
        return Ok(vec![path.to_string()]);
    }
    let (dir, rest) = glob::split(path);
    let pattern = Pattern::new(&rest).map_err(|e| {
        let code = match e {
            PatternError::Escape(_) => ErrorCode::PathEscape,
            PatternError::Syntax(..) => ErrorCode::NotFound,
        };
        ClientError::Remote(ErrorMsg::new(code, e.to_string()))
    })?;
    let listed = if dir.is_empty() { "/" } else { dir.as_str() };
    let mut out: Vec<String> = remote::ls_matching(session, listed, &rest)
        .await?
        .into_iter()
        .filter(|e| pattern.matches(&e.path))
        .map(|e| remote_join(&dir, &e.path))
        .collect();
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(ClientError::Remote(ErrorMsg::new(
            ErrorCode::NotFound,
            format!("{path}: no match"),
        )));
    }
    Ok(out)
}
