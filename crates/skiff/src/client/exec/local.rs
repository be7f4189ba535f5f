//! The local end of an exec: our stdin read on its own thread, output
//! written straight to our stdout/stderr file descriptors.

use std::fs::File;
use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

/// Size of one read from local stdin (and so of one `stdin` chunk).
const STDIN_CHUNK: usize = 64 * 1024;

/// Chunks of local stdin; `None` from `recv` means EOF (or a read error,
/// which ends input the same way).
pub type StdinChunks = mpsc::Receiver<Bytes>;

/// Starts a thread that reads fd 0 into a small bounded channel. A thread
/// (not tokio's blocking pool) because a read on a terminal cannot be
/// cancelled: at exit the process simply ends with the thread still in
/// `read`, and the runtime never waits for it.
pub fn stdin_reader() -> StdinChunks {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let spawned = std::thread::Builder::new()
        .name("skiff-stdin".into())
        .spawn(move || {
            let mut stdin = raw_fd(0);
            loop {
                let mut buf = BytesMut::zeroed(STDIN_CHUNK);
                match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.blocking_send(buf.freeze()).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                }
            }
        });
    if spawned.is_err() {
        // No thread, no input: the receiver reports EOF at once.
        let (_, rx) = mpsc::channel(1);
        return rx;
    }
    rx
}

/// A `File` view of an fd we do not own (never closed on drop).
fn raw_fd(fd: RawFd) -> ManuallyDrop<File> {
    // SAFETY: fds 0-2 stay open for the life of the process; ManuallyDrop
    // keeps us from closing them.
    ManuallyDrop::new(unsafe { File::from_raw_fd(fd) })
}

/// Writes a whole chunk to fd 1 or 2 at once, unbuffered, so a line the
/// remote printed shows up now. Blocks while the local reader is slow,
/// which is the point: we stop reading the session and the server stops
/// reading the command.
pub fn write_out(fd: RawFd, bytes: &[u8]) -> io::Result<()> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let write = || raw_fd(fd).write_all(bytes);
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        // Let the runtime move other tasks off this worker meanwhile.
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(write),
        _ => write(),
    }
}
