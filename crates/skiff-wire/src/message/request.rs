//! What a client may ask an authenticated session for: the first frame of
//! every operation (PROTOCOL.md section 4).

use super::exec::Exec;
use super::files::{Get, Ls, Mkdir, Mv, Put, Rm, Stat};
use super::phase;
use super::ping::Ping;
use super::streams::{PutJoin, PutOpen};
use super::sync::SyncRequest;
use super::tree::{GetTree, PutTree};

phase! {
    /// Client to server, between operations: the request that starts one.
    /// The variants are the services a server offers; `welcome` announces
    /// them from [`Request::OPS`].
    pub enum Request {
        /// Echo the body back in a `pong`.
        Ping(Ping, body),
        /// Upload a file (its `data` and `end` follow) or create a symlink.
        Put(Put),
        /// Download a file.
        Get(Get),
        /// List a directory.
        Ls(Ls),
        /// Describe a path.
        Stat(Stat),
        /// Remove a path.
        Rm(Rm),
        /// Create a directory.
        Mkdir(Mkdir),
        /// Rename a path.
        Mv(Mv),
        /// Run a command (its input and output frames follow).
        Exec(Exec),
        /// Mirror a tree in either direction (the sync frames follow).
        Sync(SyncRequest),
        /// Upload a tree as one stream (its entries follow).
        PutTree(PutTree),
        /// Download a tree as one stream (its entries follow).
        GetTree(GetTree),
        /// Open an upload whose ranges come on several connections.
        PutOpen(PutOpen),
        /// Send one range of an upload opened on another connection.
        PutJoin(PutJoin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::exec::ExecInput;
    use crate::{Frame, MessageError};

    fn frame(header: &str, body: &[u8]) -> Frame {
        let mut wire = bytes::BytesMut::new();
        crate::encode_raw(header.as_bytes(), body, &mut wire).unwrap();
        crate::FrameDecoder::new()
            .decode(&mut wire)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn services_in_wire_order() {
        assert_eq!(
            Request::OPS,
            &[
                "ping", "put", "get", "ls", "stat", "rm", "mkdir", "mv", "exec", "sync",
                "put_tree", "get_tree", "put_open", "put_join"
            ]
        );
    }

    #[test]
    fn reads_each_request() {
        let r = Request::from_frame(frame(r#"{"op":"ping","len":2}"#, b"hi")).unwrap();
        assert_eq!(r, Request::Ping(bytes::Bytes::from_static(b"hi")));
        let r = Request::from_frame(frame(r#"{"op":"rm","path":"a","x":1}"#, b"")).unwrap();
        assert_eq!(
            r,
            Request::Rm(Rm {
                path: "a".into(),
                recursive: false
            })
        );
    }

    #[test]
    fn unknown_and_malformed_are_told_apart() {
        let e = Request::from_frame(frame(r#"{"op":"nope"}"#, b"")).unwrap_err();
        assert!(matches!(e, MessageError::UnknownOp { ref op, .. } if op == "nope"));
        assert_eq!(e.code(), crate::ErrorCode::Unsupported);
        let e = Request::from_frame(frame(r#"{"op":"stat"}"#, b"")).unwrap_err();
        assert!(
            matches!(e, MessageError::BadFields { op: "stat", .. }),
            "{e}"
        );
        assert!(e.to_string().contains("path"), "{e}");
        assert_eq!(e.code(), crate::ErrorCode::BadFrame);
        let e = Request::from_frame(frame(r#"{"op":"mv","from":1,"to":"b"}"#, b"")).unwrap_err();
        assert!(matches!(e, MessageError::BadFields { op: "mv", .. }), "{e}");
        // Exec input is not a request (it belongs to a running exec).
        assert!(Request::from_frame(frame(r#"{"op":"stdin_eof"}"#, b"")).is_err());
        assert!(ExecInput::knows("stdin_eof"));
    }
}
