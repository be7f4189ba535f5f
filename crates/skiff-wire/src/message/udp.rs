//! UDP ping: one authenticated frame per datagram.
//!
//! A request is `{"op":"udp_ping","user":U,"sid":S,"seq":N,"ts":T,"tag":X}`
//! with an optional body; the reply is the same with `"op":"udp_pong"`, the
//! same `user`/`sid`/`seq`/`ts`, the same body and its own tag. The tag is
//! `HMAC-SHA256(K, signed bytes)` where the signed bytes are a canonical
//! binary string built by [`signed_bytes`] (not the JSON text, so that JSON
//! spelling never matters), starting with a direction label
//! ([`PING_LABEL`] or [`PONG_LABEL`]) so a request can never pass for a
//! reply or the other way round.
//!
//! This module is the sans-IO part: the messages, the signed bytes, and
//! strict datagram decoding. The MAC itself is computed by the application.

use serde::{Deserialize, Serialize};

use crate::{Frame, FrameDecoder, FrameError, Limits};

/// Label that starts the signed bytes of a request.
pub const PING_LABEL: &[u8; 16] = b"skiff/1 udp ping";
/// Label that starts the signed bytes of a reply.
pub const PONG_LABEL: &[u8; 16] = b"skiff/1 udp pong";

/// Largest UDP payload over IPv4 (65535 - 8 UDP - 20 IP header bytes).
pub const MAX_DATAGRAM: usize = 65507;
/// Largest header a UDP ping frame may have. A canonical header is under
/// 250 bytes; the rest is room for peers that add fields.
pub const MAX_UDP_HEADER: usize = 1024;
/// Largest body a UDP ping may carry so that any header fits beside it in
/// one datagram.
pub const MAX_UDP_BODY: usize = MAX_DATAGRAM - 4 - MAX_UDP_HEADER;
/// Longest user name the signed bytes can carry (one length byte; key
/// files allow 64).
pub const MAX_USER_LEN: usize = 255;

/// The fields every UDP ping datagram carries, in both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// User name whose key tags the datagram.
    pub user: String,
    /// Random 64-bit id of one pinging run, so that several runs of the
    /// same user keep separate replay windows.
    pub sid: u64,
    /// Sequence number within the run, from 0.
    pub seq: u64,
    /// Sender's clock at sending: microseconds since the Unix epoch. The
    /// reply echoes the request's value.
    pub ts: u64,
}

/// Client to server: answer me with the same body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpPing {
    /// The authenticated fields.
    #[serde(flatten)]
    pub stamp: Stamp,
    /// base64 (standard, padded) of HMAC-SHA256(K, signed bytes with
    /// [`PING_LABEL`]).
    pub tag: String,
}

/// Server to client: the reply to a [`UdpPing`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpPong {
    /// The request's authenticated fields, echoed.
    #[serde(flatten)]
    pub stamp: Stamp,
    /// base64 (standard, padded) of HMAC-SHA256(K, signed bytes with
    /// [`PONG_LABEL`]).
    pub tag: String,
}

crate::messages!(UdpPing => "udp_ping", UdpPong => "udp_pong");

/// The bytes a tag covers:
///
/// ```text
/// label (16 ASCII bytes) | u8 len(user) | user (UTF-8)
///   | u64be sid | u64be seq | u64be ts | u32be len(body) | body
/// ```
///
/// Every variable-length part is length-prefixed, so two different
/// datagrams never share signed bytes. `None` when the user name is longer
/// than [`MAX_USER_LEN`] or the body longer than `u32::MAX`.
pub fn signed_bytes(label: &[u8; 16], stamp: &Stamp, body: &[u8]) -> Option<Vec<u8>> {
    let user_len = u8::try_from(stamp.user.len()).ok()?;
    let body_len = u32::try_from(body.len()).ok()?;
    let mut out = Vec::with_capacity(16 + 1 + stamp.user.len() + 24 + 4 + body.len());
    out.extend_from_slice(label);
    out.push(user_len);
    out.extend_from_slice(stamp.user.as_bytes());
    out.extend_from_slice(&stamp.sid.to_be_bytes());
    out.extend_from_slice(&stamp.seq.to_be_bytes());
    out.extend_from_slice(&stamp.ts.to_be_bytes());
    out.extend_from_slice(&body_len.to_be_bytes());
    out.extend_from_slice(body);
    Some(out)
}

/// Reads one datagram as exactly one frame: no bytes may follow it, and the
/// header may not exceed [`MAX_UDP_HEADER`].
pub fn decode_datagram(datagram: &[u8]) -> Result<Frame, FrameError> {
    let mut decoder = FrameDecoder::with_limits(Limits {
        max_header: MAX_UDP_HEADER,
        max_body: MAX_DATAGRAM,
    });
    let mut buf = bytes::BytesMut::from(datagram);
    let frame = decoder.decode_eof(&mut buf)?.ok_or(FrameError::Truncated {
        buffered: datagram.len(),
    })?;
    if !buf.is_empty() {
        return Err(FrameError::BadMessage {
            op: frame.op().to_string(),
            reason: format!("{} bytes after the frame in one datagram", buf.len()),
        });
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(user: &str) -> Stamp {
        Stamp {
            user: user.into(),
            sid: 1,
            seq: 2,
            ts: 3,
        }
    }

    #[test]
    fn signed_bytes_layout() {
        let b = signed_bytes(PING_LABEL, &stamp("al"), b"xyz").unwrap();
        let mut want = b"skiff/1 udp ping".to_vec();
        want.extend_from_slice(&[2, b'a', b'l']);
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(&2u64.to_be_bytes());
        want.extend_from_slice(&3u64.to_be_bytes());
        want.extend_from_slice(&3u32.to_be_bytes());
        want.extend_from_slice(b"xyz");
        assert_eq!(b, want);
        assert_ne!(b, signed_bytes(PONG_LABEL, &stamp("al"), b"xyz").unwrap());
        assert!(signed_bytes(PING_LABEL, &stamp(&"u".repeat(256)), b"").is_none());
    }

    #[test]
    fn decodes_exactly_one_frame() {
        let msg = UdpPing {
            stamp: stamp("bob"),
            tag: "t".into(),
        };
        let mut buf = bytes::BytesMut::new();
        crate::encode_frame(&msg, b"body", &mut buf).unwrap();
        let frame = decode_datagram(&buf).unwrap();
        assert_eq!(frame.parse::<UdpPing>().unwrap(), msg);
        assert_eq!(frame.body().as_ref(), b"body");
        let mut longer = buf.to_vec();
        longer.push(0);
        assert!(decode_datagram(&longer).is_err());
        assert!(decode_datagram(&buf[..buf.len() - 1]).is_err());
        assert!(decode_datagram(&[]).is_err());
    }
}
