//! UDP ping tags and the tagged datagram codec both sides use
//! (PROTOCOL.md section 6).
//!
//! Each datagram is one skiff frame (`udp_ping` or `udp_pong`, see
//! [`skiff_wire::message::udp`]) tagged with HMAC-SHA256 under the user's
//! key over [`signed_bytes`]. The client's pinger and the server's
//! `udp_ping` service both seal and open datagrams here, so there is one
//! encoding.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use skiff_wire::message::udp::{
    decode_datagram, signed_bytes, Stamp, UdpPing, UdpPong, MAX_DATAGRAM, PING_LABEL, PONG_LABEL,
};
use skiff_wire::Message;

use crate::keys::Key;

fn mac(key: &Key, label: &[u8; 16], stamp: &Stamp, body: &[u8]) -> Option<Hmac<Sha256>> {
    let bytes = signed_bytes(label, stamp, body)?;
    let mut m = super::keyed(key);
    m.update(&bytes);
    Some(m)
}

/// The base64 tag of a datagram (`None` if the stamp cannot be signed: a
/// user name over 255 bytes).
pub fn tag(key: &Key, label: &[u8; 16], stamp: &Stamp, body: &[u8]) -> Option<String> {
    Some(B64.encode(mac(key, label, stamp, body)?.finalize().into_bytes()))
}

/// Checks a received base64 tag in constant time. A tag that is not valid
/// base64 of 32 bytes fails like a wrong one.
pub fn verify_tag(key: &Key, label: &[u8; 16], stamp: &Stamp, body: &[u8], got: &str) -> bool {
    let Some(m) = mac(key, label, stamp, body) else {
        return false;
    };
    let got = B64.decode(got).unwrap_or_default();
    m.verify_slice(&got).is_ok()
}

fn seal<M: Message>(
    key: &Key,
    label: &[u8; 16],
    stamp: Stamp,
    body: &[u8],
    wrap: fn(Stamp, String) -> M,
) -> Option<BytesMut> {
    let tag = tag(key, label, &stamp, body)?;
    let mut out = BytesMut::new();
    skiff_wire::encode_frame(&wrap(stamp, tag), body, &mut out).ok()?;
    (out.len() <= MAX_DATAGRAM).then_some(out)
}

/// Encodes a tagged request datagram. `None` when it cannot be sent (user
/// name too long, or larger than one datagram).
pub fn seal_request(key: &Key, stamp: Stamp, body: &[u8]) -> Option<BytesMut> {
    seal(key, PING_LABEL, stamp, body, |stamp, tag| UdpPing {
        stamp,
        tag,
    })
}

/// Encodes a tagged reply datagram (the server's side).
pub fn seal_reply(key: &Key, stamp: Stamp, body: &[u8]) -> Option<BytesMut> {
    seal(key, PONG_LABEL, stamp, body, |stamp, tag| UdpPong {
        stamp,
        tag,
    })
}

/// Reads a reply datagram and checks its tag under `key`; `None` for
/// anything that is not an authentic `udp_pong`.
pub fn open_reply(key: &Key, datagram: &[u8]) -> Option<(Stamp, Bytes)> {
    let frame = decode_datagram(datagram).ok()?;
    let pong = frame.parse::<UdpPong>().ok()?;
    verify_tag(key, PONG_LABEL, &pong.stamp, frame.body(), &pong.tag)
        .then(|| (pong.stamp, frame.into_body()))
}

/// Microseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp {
        Stamp {
            user: "alice".into(),
            sid: 7,
            seq: 1,
            ts: now_micros(),
        }
    }

    #[test]
    fn reply_round_trip_and_direction() {
        let key = Key::generate();
        let reply = seal_reply(&key, stamp(), b"abc").unwrap();
        let (s, body) = open_reply(&key, &reply).unwrap();
        assert_eq!((s.sid, s.seq, body.as_ref()), (7, 1, &b"abc"[..]));
        // A request is never accepted as a reply, even with the right key.
        let request = seal_request(&key, stamp(), b"abc").unwrap();
        assert!(open_reply(&key, &request).is_none());
        // Wrong key, flipped body bit.
        assert!(open_reply(&Key::generate(), &reply).is_none());
        let mut bad = reply.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(open_reply(&key, &bad).is_none());
    }

    #[test]
    fn malformed_tags_fail() {
        let key = Key::generate();
        let s = stamp();
        let good = tag(&key, PING_LABEL, &s, b"").unwrap();
        assert!(verify_tag(&key, PING_LABEL, &s, b"", &good));
        assert!(!verify_tag(&key, PONG_LABEL, &s, b"", &good));
        assert!(!verify_tag(&key, PING_LABEL, &s, b"", ""));
        assert!(!verify_tag(&key, PING_LABEL, &s, b"", "!!"));
        assert!(!verify_tag(&key, PING_LABEL, &s, b"", &good[..20]));
    }

    #[test]
    fn oversized_requests_are_refused() {
        let key = Key::generate();
        assert!(seal_request(&key, stamp(), &vec![0u8; MAX_DATAGRAM]).is_none());
        let max = skiff_wire::message::udp::MAX_UDP_BODY;
        assert!(seal_request(&key, stamp(), &vec![0u8; max]).is_some());
    }
}
