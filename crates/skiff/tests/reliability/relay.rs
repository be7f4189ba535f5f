//! A loopback TCP relay that breaks connections on purpose: it delays,
//! stalls, or cuts each connection at a chosen byte, in either direction,
//! with a FIN or an RST (SO_LINGER 0). Runs on its own tokio runtime in a
//! background thread; each accepted connection gets the next [`Fault`]
//! from the plan.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Which way the bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// What the relay does to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards everything unchanged.
    Pass,
    /// Waits this many milliseconds before forwarding each read.
    Delay(u64),
    /// Stops forwarding `way` after `at` bytes for `ms` milliseconds.
    Stall { way: Way, at: u64, ms: u64 },
    /// Forwards `at` bytes of `way`, then closes both sides: with an RST
    /// (SO_LINGER 0) when `reset`, else with a FIN.
    Cut { way: Way, at: u64, reset: bool },
}

/// A running relay; stops when dropped.
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    stop: CancellationToken,
    /// The fault each connection got, in accept order.
    pub applied: Arc<Mutex<Vec<Fault>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    /// Relays 127.0.0.1:EPHEMERAL to `target`; connection `i` (from 0)
    /// gets `plan(i)`.
    pub fn start(target: SocketAddr, plan: impl Fn(usize) -> Fault + Send + 'static) -> Relay {
        let stop = CancellationToken::new();
        let applied = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (s, a) = (stop.clone(), applied.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("relay runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay bind");
                tx.send(listener.local_addr().expect("relay addr"))
                    .expect("relay start");
                let mut n = 0usize;
                loop {
                    let accepted = tokio::select! {
                        _ = s.cancelled() => break,
                        r = listener.accept() => r,
                    };
                    let Ok((client, _)) = accepted else { continue };
                    let fault = plan(n);
                    n += 1;
                    a.lock().expect("relay log").push(fault);
                    let stop = s.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = relay_one(client, target, fault) => {}
                            _ = stop.cancelled() => {}
                        }
                    });
                }
            });
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("relay listening");
        Relay {
            addr,
            stop,
            applied,
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Relays one connection under `fault`.
async fn relay_one(mut client: TcpStream, target: SocketAddr, fault: Fault) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let cut = CancellationToken::new();
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let (up, down) = tokio::join!(
        pump(&mut cr, &mut sw, Way::Up, fault, &cut),
        pump(&mut sr, &mut cw, Way::Down, fault, &cut),
    );
    let reset = matches!(fault, Fault::Cut { reset: true, .. });
    if (up == Ended::Cut || down == Ended::Cut) && reset {
        // Closing with SO_LINGER 0 sends an RST instead of a FIN (and
        // does not block: there is nothing to linger for).
        let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
        let _ = socket2::SockRef::from(&server).set_linger(Some(Duration::ZERO));
    } else {
        let _ = client.shutdown().await;
        let _ = server.shutdown().await;
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The source closed (or failed); the other side was told with a FIN.
    Eof,
    /// The connection was cut on purpose.
    Cut,
}

/// Copies `from` to `to` applying `fault` to way `way`; a cut in either
/// direction ends both.
async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    from: &mut R,
    to: &mut W,
    way: Way,
    fault: Fault,
    cut: &CancellationToken,
) -> Ended {
    let mut buf = vec![0u8; 16 * 1024];
    let mut passed = 0u64;
    let mut stalled = false;
    loop {
        let n = tokio::select! {
            _ = cut.cancelled() => return Ended::Cut,
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return Ended::Eof;
                }
                Ok(n) => n,
            },
        };
        let mut chunk = &buf[..n];
        match fault {
            Fault::Delay(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Fault::Cut { way: w, at, .. } if w == way && passed + n as u64 >= at => {
                let keep = (at - passed) as usize;
                let _ = to.write_all(&chunk[..keep]).await;
                let _ = to.flush().await;
                cut.cancel();
                return Ended::Cut;
            }
            Fault::Stall { way: w, at, ms } if w == way && !stalled && passed + n as u64 >= at => {
                let keep = (at - passed) as usize;
                if to.write_all(&chunk[..keep]).await.is_err() {
                    return Ended::Eof;
                }
                let _ = to.flush().await;
                stalled = true;
                tokio::select! {
                    _ = cut.cancelled() => return Ended::Cut,
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                }
                passed += keep as u64;
                chunk = &chunk[keep..];
            }
            _ => {}
        }
        if to.write_all(chunk).await.is_err() {
            // The destination is gone: end this direction; the other
            // ends on its own when its source closes.
            return Ended::Eof;
        }
        passed += chunk.len() as u64;
    }
}
