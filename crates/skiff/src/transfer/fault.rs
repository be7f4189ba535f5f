//! Test-only fault injection: corrupt one chunk of a transfer so tests can
//! prove corruption is detected.
//!
//! `SKIFF_TEST_CORRUPT_CHUNK=N` (0-based) flips one byte of the N-th data
//! chunk *after* it was hashed on the sending side (put) or *before* it is
//! hashed on the receiving side (get) — exactly what corruption on the
//! wire or on disk would look like. The variable is read only in debug
//! builds (`cfg(debug_assertions)`, the profile the test suite runs); a
//! release binary ignores it entirely.

use bytes::{Bytes, BytesMut};

/// Which chunk to corrupt, if the test hook is on.
#[cfg(debug_assertions)]
fn target_chunk() -> Option<u64> {
    std::env::var("SKIFF_TEST_CORRUPT_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
}

#[cfg(not(debug_assertions))]
fn target_chunk() -> Option<u64> {
    None
}

/// Returns `chunk`, with one byte flipped if it is the chunk the test hook
/// names. A no-op in release builds.
pub fn maybe_corrupt(index: u64, chunk: Bytes) -> Bytes {
    if target_chunk() != Some(index) || chunk.is_empty() {
        return chunk;
    }
    let mut b = BytesMut::from(&chunk[..]);
    let mid = b.len() / 2;
    b[mid] ^= 0x5a;
    b.freeze()
}

/// Milliseconds to pause per data chunk on the client, if the test hook
/// `SKIFF_TEST_CHUNK_DELAY_MS` is set (debug builds only). It slows a
/// transfer down so a test can reliably interrupt it halfway.
#[cfg(debug_assertions)]
fn chunk_delay() -> Option<std::time::Duration> {
    std::env::var("SKIFF_TEST_CHUNK_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_millis)
}

#[cfg(not(debug_assertions))]
fn chunk_delay() -> Option<std::time::Duration> {
    None
}

/// Sleeps for the test hook's per-chunk delay; a no-op in release builds
/// and when the hook is off.
pub async fn maybe_delay() {
    if let Some(d) = chunk_delay() {
        tokio::time::sleep(d).await;
    }
}

/// [`maybe_delay`] for blocking threads (the sync sender, per literal
/// piece).
pub fn maybe_delay_blocking() {
    if let Some(d) = chunk_delay() {
        std::thread::sleep(d);
    }
}

/// The client's waits on its server (the transfer idle timeout, the write
/// timeout) as set by the test hook `SKIFF_TEST_IDLE_TIMEOUT_MS` (debug
/// builds only).
#[cfg(debug_assertions)]
pub fn idle_timeout() -> Option<std::time::Duration> {
    std::env::var("SKIFF_TEST_IDLE_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_millis)
}

/// No test hook in release builds.
#[cfg(not(debug_assertions))]
pub fn idle_timeout() -> Option<std::time::Duration> {
    None
}

/// The clock that decides when partial files expire: the system clock,
/// moved forward by `SKIFF_TEST_CLOCK_OFFSET_SECS` seconds when that test
/// hook is set (debug builds only), so tests can age files without waiting.
pub fn now() -> std::time::SystemTime {
    std::time::SystemTime::now() + clock_offset()
}

#[cfg(debug_assertions)]
fn clock_offset() -> std::time::Duration {
    std::env::var("SKIFF_TEST_CLOCK_OFFSET_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_secs)
        .unwrap_or_default()
}

#[cfg(not(debug_assertions))]
fn clock_offset() -> std::time::Duration {
    std::time::Duration::ZERO
}
