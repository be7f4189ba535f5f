//! How errors become messages and exit codes (DESIGN section 5).
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the operation failed (not found, checksum, permission, escape, conflict) |
//! | 2 | usage or local validation error (bad flag value, unusable key file, bad config) |
//! | 255 | connection, trust or authentication failure |
//!
//! `exec` and `shell` return the remote command's status instead (128+N
//! for a signal), and 255 for anything skiff itself could not do.

use thiserror::Error;

use crate::client::ClientError;

/// Exit code for connection, trust, authentication and protocol errors.
pub const EXIT_CONNECTION: i32 = 255;
/// Exit code for an operation the server refused or that failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code for usage and local validation errors (as clap uses).
pub const EXIT_USAGE: i32 = 2;

/// The exit-code table, for `skiff --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit status:
  0    success
  1    the operation failed (not found, checksum, permission, escape, conflict)
  2    usage or local validation error (bad flag value, unusable key file, bad config)
  255  connection, trust or authentication failure
  exec and shell exit with the remote command's status (128+N if killed by signal N).";

/// A usage or local validation error found after parsing (exit 2): a bad
/// flag value, a combination that makes no sense.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Fails with a [`UsageError`].
macro_rules! usage {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::cli::output::UsageError(format!($($arg)*))))
    };
}
pub(crate) use usage;

/// The exit code of a client error.
pub fn exit_code_for_client(e: &ClientError) -> i32 {
    match e {
        ClientError::Remote(_) | ClientError::Local(_) => EXIT_FAILED,
        ClientError::Key(_) | ClientError::Identity(_) | ClientError::Config(_) => EXIT_USAGE,
        _ => EXIT_CONNECTION,
    }
}

/// The exit code for an error a command returned: see the table above.
/// Errors of no known kind are failures of the operation (1).
pub fn exit_code_for(e: &anyhow::Error) -> i32 {
    if let Some(c) = e.downcast_ref::<ClientError>() {
        return exit_code_for_client(c);
    }
    if e.downcast_ref::<UsageError>().is_some()
        || e.downcast_ref::<crate::keys::KeyError>().is_some()
        || e.downcast_ref::<crate::client::config::ConfigError>()
            .is_some()
        || e.downcast_ref::<crate::serve_config::ConfigError>()
            .is_some()
        || e.downcast_ref::<crate::users::UsersError>().is_some()
    {
        return EXIT_USAGE;
    }
    EXIT_FAILED
}

/// One line: the error and its causes.
pub fn describe(e: &anyhow::Error) -> String {
    let mut s = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
    }
    s
}
