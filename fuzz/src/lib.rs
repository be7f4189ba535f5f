//! The bodies of the fuzz targets, one function per target. Each takes
//! arbitrary bytes and panics only on a finding; `fuzz_targets/*.rs` hand
//! them to libFuzzer, and `crates/skiff/tests/fuzz_corpus.rs` runs the
//! committed corpus and random inputs through the same functions under
//! plain `cargo test` (this file is included there by path).

use std::sync::OnceLock;

use bytes::BytesMut;
use skiff_wire::{encode_raw, Frame, FrameError, FrameReader, Limits};

/// How a decoded stream ended.
#[derive(Debug, PartialEq)]
enum End {
    Clean,
    Error(FrameError),
}

/// Decodes `data` fed in reads of `chunk` bytes, checking the reader's
/// buffer bound after each read.
fn decode_stream(data: &[u8], chunk: usize, limits: Limits) -> (Vec<Frame>, End) {
    let mut reader = FrameReader::with_limits(limits);
    let mut frames = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        reader.feed(piece);
        assert!(reader.buffered() <= limits.max_frame() + piece.len());
        loop {
            match reader.next_frame() {
                Ok(Some(f)) => {
                    assert!(f.header().len() <= limits.max_header);
                    assert!(f.body().len() <= limits.max_body);
                    frames.push(f);
                }
                Ok(None) => break,
                Err(e) => return (frames, End::Error(e)),
            }
        }
        assert!(reader.buffered() < limits.max_frame());
    }
    loop {
        match reader.finish() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return (frames, End::Clean),
            Err(e) => return (frames, End::Error(e)),
        }
    }
}

/// Target `decode`: the frame decoder on arbitrary bytes. The first byte
/// chooses the read size and the limits (the protocol's, or 64-byte
/// headers and 256-byte bodies). Checks: the reader never holds more than
/// one frame plus the last read; decoded frames respect the limits and
/// re-encode unchanged; the outcome is the same however the stream was
/// cut (the sticky-packet property).
pub fn decode(input: &[u8]) {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let limits = if mode & 0x80 != 0 {
        Limits {
            max_header: 64,
            max_body: 256,
        }
    } else {
        Limits::default()
    };
    let chunk = usize::from(mode & 0x7f) + 1;
    let whole = decode_stream(data, data.len(), limits);
    let cut = decode_stream(data, chunk, limits);
    assert_eq!(whole, cut, "the outcome depends on how the stream was cut");
    for f in &whole.0 {
        let mut buf = BytesMut::new();
        encode_raw(f.header(), f.body(), &mut buf).expect("a decoded frame re-encodes");
        let mut reader = FrameReader::with_limits(limits);
        reader.feed(&buf);
        assert_eq!(reader.next_frame().ok().flatten().as_ref(), Some(f));
    }
}

/// Target `messages`: every message parser of every phase on one frame
/// built from the input (the first byte is the body length, the rest the
/// header). Checks: no panic; a frame is accepted by a phase only when its
/// op is one of the phase's ops; an error code always has a wire name.
pub fn messages(input: &[u8]) {
    use skiff_wire::message::exec::{ExecInput, ExecOutput};
    use skiff_wire::message::files::{DownloadData, FilesReply, UploadData};
    use skiff_wire::message::handshake::{Auth, Challenge, Hello, Welcome};
    use skiff_wire::message::sync::{ToReceiver, ToSender};
    use skiff_wire::message::tree::{TreeInput, TreeOutput};
    use skiff_wire::message::udp::{UdpPing, UdpPong};
    use skiff_wire::message::{Phase, Request};
    use skiff_wire::ErrorMsg;

    let Some((&body_len, header)) = input.split_first() else {
        return;
    };
    let body = vec![0u8; usize::from(body_len)];
    let mut buf = BytesMut::new();
    if encode_raw(header, &body, &mut buf).is_err() {
        return;
    }
    let mut reader = FrameReader::new();
    reader.feed(&buf);
    let Ok(Some(frame)) = reader.next_frame() else {
        return;
    };
    fn phase<P: Phase>(frame: &Frame) {
        let parsed = P::from_frame(frame.clone());
        if parsed.is_ok() {
            assert!(P::OPS.contains(&frame.op()), "{} accepted", frame.op());
        }
    }
    phase::<Request>(&frame);
    phase::<UploadData>(&frame);
    phase::<DownloadData>(&frame);
    phase::<FilesReply>(&frame);
    phase::<ExecInput>(&frame);
    phase::<ExecOutput>(&frame);
    phase::<TreeInput>(&frame);
    phase::<TreeOutput>(&frame);
    phase::<ToReceiver>(&frame);
    phase::<ToSender>(&frame);
    let _ = frame.parse::<Hello>();
    let _ = frame.parse::<Challenge>();
    let _ = frame.parse::<Auth>();
    let _ = frame.parse::<Welcome>();
    let _ = frame.parse::<UdpPing>();
    let _ = frame.parse::<UdpPong>();
    if let Ok(e) = frame.parse::<ErrorMsg>() {
        let name = serde_json::to_string(&e.code).expect("an error code serializes");
        assert!(!name.is_empty());
    }
}

/// What the handshake target runs against: a server with one user.
struct HandshakeServer {
    rt: tokio::runtime::Runtime,
    auth: skiff::session::accept::Authenticator,
}

fn handshake_server() -> &'static HandshakeServer {
    static SERVER: OnceLock<HandshakeServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        use skiff::keys::UserKey;
        use skiff::session::accept::{AuthPolicy, Authenticator};
        use skiff::users::{live::LiveUsers, Users};
        let users = Users::from_keys([UserKey::generate("alice")]);
        let policy = AuthPolicy {
            fail_delay: std::time::Duration::ZERO,
            ..AuthPolicy::default()
        };
        let welcome = skiff_wire::message::handshake::Welcome {
            server: "fuzz".into(),
            services: vec!["ping".into()],
        };
        HandshakeServer {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
            auth: Authenticator::new(LiveUsers::fixed(users), policy, welcome),
        }
    })
}

/// Target `handshake`: the server's handshake state machine fed the input
/// as everything a client sends (then end of stream). Checks: no panic, it
/// ends (within 5 s of simulated waiting); no input logs in (a proof needs
/// the key and the server's fresh nonce); what the server sends back is
/// well-formed frames, at most a challenge and an error.
pub fn handshake(input: &[u8]) {
    use skiff::session::Session;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = handshake_server();
    server.rt.block_on(async {
        let (mut client, near) = tokio::io::duplex(64 * 1024);
        let mut session = Session::unauthenticated(Box::new(near));
        let peer = async move {
            let _ = client.write_all(input).await;
            let _ = client.shutdown().await;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            answer
        };
        let run = async {
            let r = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                server.auth.handshake(&mut session, &[0u8; 32], None),
            )
            .await;
            drop(session);
            r
        };
        let (outcome, answer) = tokio::join!(run, peer);
        let outcome = outcome.expect("the handshake ends once its input does");
        assert!(outcome.is_err(), "fuzz input logged in");
        let (frames, _end) = decode_stream(&answer, answer.len(), Limits::default());
        assert!(frames.len() <= 2, "{} frames answered", frames.len());
        for f in &frames {
            assert!(
                f.op() == "challenge" || f.op() == "error",
                "answered {}",
                f.op()
            );
        }
    });
}

/// The served root the `paths` target resolves against: a directory, a
/// file, and links pointing out of the root.
fn paths_root() -> &'static (tempfile::TempDir, cap_std::fs::Dir) {
    static ROOT: OnceLock<(tempfile::TempDir, cap_std::fs::Dir)> = OnceLock::new();
    ROOT.get_or_init(|| {
        let t = tempfile::tempdir().expect("a temp dir");
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("d/e")).expect("mkdir");
        std::fs::write(root.join("d/f"), b"x").expect("write");
        let _ = std::os::unix::fs::symlink("/", root.join("out"));
        let _ = std::os::unix::fs::symlink("..", root.join("d/up"));
        let _ = std::os::unix::fs::symlink("../..", root.join("d/e/upup"));
        let dir = skiff::service::files::confine::open_root(&root).expect("open root");
        (t, dir)
    })
}

/// Target `paths`: the path rules and their resolution beneath a root.
/// Checks: accepted components are never empty, `.`, `..`, nor hold `/`
/// or NUL; an entry path that is accepted rejoins to itself; resolving
/// any path beneath the root either fails or yields a directory inside
/// it (never through a link that leaves it); part names fit `NAME_MAX`;
/// glob patterns compile or are refused, and never match `..`.
pub fn paths(input: &[u8]) {
    use skiff::service::files::confine;
    use skiff::transfer::{glob, names};
    let path = String::from_utf8_lossy(input);
    let plain = |c: &str| !c.is_empty() && c != "." && c != ".." && !c.contains(['/', '\0']);
    if let Ok(comps) = names::split_remote(&path) {
        assert!(comps.iter().all(|c| plain(c)), "{path:?} -> {comps:?}");
    }
    if let Ok(comps) = names::split_entry(&path) {
        assert!(comps.iter().all(|c| plain(c)), "{path:?} -> {comps:?}");
        assert_eq!(comps.join("/"), path);
    }
    let (tmp, root) = paths_root();
    if let Ok(loc) = confine::locate(root, &path, "fuzz") {
        assert!(plain(&loc.name), "{path:?} -> name {:?}", loc.name);
        // The directory it resolved to is the root or beneath it.
        use std::os::fd::AsRawFd;
        let real = std::fs::read_link(format!("/proc/self/fd/{}", loc.parent.as_raw_fd()))
            .expect("the directory's path");
        let top = tmp.path().join("root");
        let top = top.canonicalize().unwrap_or(top);
        assert!(real.starts_with(&top), "{path:?} resolved to {real:?}");
    }
    if let Some(name) = path.rsplit('/').next() {
        assert!(names::part_name(name).len() <= 255, "{name:?}");
    }
    let (dir, rest) = glob::split(&path);
    assert!(!glob::is_glob(&dir), "{path:?}: literal part {dir:?}");
    if glob::Pattern::new(&rest).is_ok() {
        assert!(
            rest.split('/').all(|c| c != ".." && c != "."),
            "{rest:?} compiled"
        );
    }
}
