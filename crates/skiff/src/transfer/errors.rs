//! OS errors to protocol error codes, with messages that say what to do.

use std::io;

use skiff_wire::{ErrorCode, ErrorMsg};

/// The protocol code for an I/O error. cap-std reports a path that would
/// leave the root as `PermissionDenied` with a fixed message (or the
/// kernel's `EXDEV` from openat2 `RESOLVE_BENEATH`); both are `path_escape`.
pub fn code_for(e: &io::Error) -> ErrorCode {
    if e.to_string()
        .contains("a path led outside of the filesystem")
    {
        return ErrorCode::PathEscape;
    }
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EFBIG) | Some(libc::EDQUOT) => return ErrorCode::NoSpace,
        Some(libc::EXDEV) | Some(libc::ELOOP) => return ErrorCode::PathEscape,
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => return ErrorCode::Permission,
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => return ErrorCode::NotFound,
        Some(libc::EEXIST) | Some(libc::ENOTEMPTY) | Some(libc::EISDIR) => {
            return ErrorCode::Exists
        }
        Some(libc::ENAMETOOLONG) => return ErrorCode::NameTooLong,
        // rename(2)'s answer to moving a directory into its own subtree.
        Some(libc::EINVAL) => return ErrorCode::Invalid,
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::NotFound => ErrorCode::NotFound,
        io::ErrorKind::AlreadyExists => ErrorCode::Exists,
        io::ErrorKind::PermissionDenied => ErrorCode::Permission,
        _ => ErrorCode::Internal,
    }
}

/// An error frame for an I/O error on `path`, with advice.
pub fn to_msg(e: &io::Error, path: &str) -> ErrorMsg {
    let code = code_for(e);
    ErrorMsg::new(code, explain(code, path, &e.to_string()))
}

/// The sentence users see for `code` on `path`.
pub fn explain(code: ErrorCode, path: &str, detail: &str) -> String {
    let p = if path.is_empty() { "/" } else { path };
    match code {
        ErrorCode::NotFound => format!("{p}: not found ({detail})"),
        ErrorCode::Exists => {
            format!("{p}: already exists ({detail}); use --force to overwrite")
        }
        ErrorCode::Permission => format!("{p}: permission denied ({detail})"),
        ErrorCode::NoSpace => format!(
            "{p}: no space left ({detail}); the partial file was removed, free some space and retry"
        ),
        ErrorCode::PathEscape => {
            format!("{p}: refused, the path leads outside the served root")
        }
        ErrorCode::NameTooLong => format!(
            "{p}: a name is too long for the server's filesystem ({detail}); most allow 255 bytes per name"
        ),
        ErrorCode::Invalid => format!("{p}: not possible ({detail}), e.g. a directory cannot move into itself"),
        ErrorCode::ChecksumMismatch => format!(
            "{p}: checksum mismatch ({detail}); the destination was left untouched, retry the transfer"
        ),
        _ => format!("{p}: {detail}"),
    }
}

/// An error frame with a code and the standard explanation.
pub fn msg(code: ErrorCode, path: &str, detail: &str) -> ErrorMsg {
    ErrorMsg::new(code, explain(code, path, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_errno() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(code_for(&e(libc::ENOSPC)), ErrorCode::NoSpace);
        assert_eq!(code_for(&e(libc::EFBIG)), ErrorCode::NoSpace);
        assert_eq!(code_for(&e(libc::EDQUOT)), ErrorCode::NoSpace);
        assert_eq!(code_for(&e(libc::ENAMETOOLONG)), ErrorCode::NameTooLong);
        assert_eq!(code_for(&e(libc::EINVAL)), ErrorCode::Invalid);
        assert_eq!(code_for(&e(libc::ENOENT)), ErrorCode::NotFound);
        assert_eq!(code_for(&e(libc::EACCES)), ErrorCode::Permission);
        assert_eq!(code_for(&e(libc::EXDEV)), ErrorCode::PathEscape);
        let escape = io::Error::new(
            io::ErrorKind::PermissionDenied,
            "a path led outside of the filesystem",
        );
        assert_eq!(code_for(&escape), ErrorCode::PathEscape);
    }
}
