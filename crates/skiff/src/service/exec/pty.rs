//! The pseudo-terminal of a `pty` exec: opening it, async reads and
//! writes on the master side, window size, foreground process group.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

/// Opens a pty pair of the given size: (master, slave).
pub fn open(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let ws = winsize(rows, cols);
    let pair = nix::pty::openpty(Some(&ws), None).map_err(io::Error::from)?;
    Ok((pair.master, pair.slave))
}

fn winsize(rows: u16, cols: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// The master side, non-blocking and registered with tokio. Reads and
/// writes take `&self`, so one task can wait for both at once.
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    /// Wraps the master fd (switching it to non-blocking mode).
    pub fn new(fd: OwnedFd) -> io::Result<PtyMaster> {
        let raw = fd.as_raw_fd();
        // SAFETY: fcntl on an fd we own.
        unsafe {
            let flags = libc::fcntl(raw, libc::F_GETFL);
            if flags < 0 || libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: an OwnedFd stays open and the same fd for its whole life.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(PtyMaster { fd })
    }

    /// Reads what the terminal shows; `Ok(0)` once every slave side is
    /// closed (Linux reports that as EIO).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let r = guard.try_io(|fd| {
                // SAFETY: `buf` is valid for `buf.len()` bytes.
                byte_count(unsafe {
                    libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())
                })
            });
            match r {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Types `buf` into the terminal; returns how much was taken.
    pub async fn write(&self, buf: &[u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.writable().await?;
            let r = guard.try_io(|fd| {
                // SAFETY: `buf` is valid for `buf.len()` bytes.
                byte_count(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })
            });
            match r {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Changes the window size; the kernel sends SIGWINCH to the
    /// terminal's foreground process group.
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        let ws = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The terminal's foreground process group (where Ctrl-C would go).
    pub fn foreground_group(&self) -> Option<nix::unistd::Pid> {
        // SAFETY: tcgetpgrp only reads.
        let pgrp = unsafe { libc::tcgetpgrp(self.fd.as_raw_fd()) };
        (pgrp > 0).then(|| nix::unistd::Pid::from_raw(pgrp))
    }
}

/// A read(2)/write(2) result as a byte count or the errno.
fn byte_count(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
