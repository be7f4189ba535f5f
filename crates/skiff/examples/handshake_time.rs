//! Measures the handshake: the median of 100 connects (TCP connect + TLS
//! 1.3 + the HMAC handshake up to `welcome`) against a real `skiff serve`
//! on loopback. Build and run with release settings:
//!
//! ```text
//! cargo build --release -p skiff --bin skiff --example handshake_time
//! target/release/examples/handshake_time [N]
//! ```
//! It starts `target/release/skiff serve` itself in a temporary HOME.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff::client::{connect, ConnectOptions};
use skiff::target::Target;

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100);
    let exe = std::env::current_exe()?;
    let skiff = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("skiff"))
        .ok_or_else(|| anyhow::anyhow!("cannot locate the skiff binary"))?;
    let home = tempfile::tempdir()?;
    let mut server = Command::new(&skiff)
        .args(["serve", "--listen", "tcp://127.0.0.1:0"])
        .args(["--listen", "tcp+plain://127.0.0.1:0", "--root"])
        .arg(home.path())
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("XDG_STATE_HOME")
        .env_remove("SKIFF_KEY_FILE")
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = server
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut urls = Vec::new();
    for line in BufReader::new(stdout).lines() {
        if let Some(url) = line?.strip_prefix("listening on ") {
            urls.push(url.to_string());
            if urls.len() == 2 {
                break;
            }
        }
    }
    let key = skiff::keys::load_key(&home.path().join(".config/skiff/key"))?;
    let opts = ConnectOptions {
        known_servers: None,
        ..ConnectOptions::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for url in &urls {
        let target: Target = url.parse().map_err(anyhow::Error::msg)?;
        let mut times: Vec<Duration> = Vec::with_capacity(n);
        rt.block_on(async {
            // One warm-up connect (page faults, first certificate load).
            drop(connect(&target, &key, &opts).await?);
            for _ in 0..n {
                let start = Instant::now();
                let client = connect(&target, &key, &opts).await?;
                times.push(start.elapsed());
                drop(client);
            }
            anyhow::Ok(())
        })?;
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{url}: {n} connects, median {:.3} ms (min {:.3}, p90 {:.3}, max {:.3})",
            ms(times[n / 2]),
            ms(times[0]),
            ms(times[n * 9 / 10]),
            ms(times[n - 1])
        );
    }
    let _ = server.kill();
    let _ = server.wait();
    Ok(())
}
