//! How errors become messages and exit codes (DESIGN section 5).

use crate::client::ClientError;

/// Exit code for connection, authentication and protocol errors.
pub const EXIT_CONNECTION: i32 = 255;
/// Exit code for an operation the server refused or that failed.
pub const EXIT_FAILED: i32 = 1;

/// 1 when the server answered with an error about the operation, 255 when
/// we could not talk to it properly (or for local usage errors).
pub fn exit_code_for(e: &anyhow::Error) -> i32 {
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Remote(_)) | Some(ClientError::Local(_)) => EXIT_FAILED,
        _ => EXIT_CONNECTION,
    }
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
