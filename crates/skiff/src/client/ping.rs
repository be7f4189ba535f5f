//! Session ping: round trips over an authenticated session.

use std::time::{Duration, Instant};

use skiff_wire::message::ping::{Ping, Pong};

use super::ClientError;
use crate::session::Session;

/// Sends one ping with `payload` and waits for its pong; returns the round
/// trip time. The pong must carry the same bytes.
pub async fn ping_once(session: &mut Session<'_>, payload: &[u8]) -> Result<Duration, ClientError> {
    let start = Instant::now();
    session.send(&Ping {}, payload).await?;
    let (_, frame) = session.expect::<Pong>().await?;
    let rtt = start.elapsed();
    if frame.body().as_ref() != payload {
        return Err(ClientError::Local(
            "pong did not carry the ping's payload".to_string(),
        ));
    }
    Ok(rtt)
}

/// Round-trip statistics as ping(8) prints them.
#[derive(Debug, Default, Clone)]
pub struct RttStats {
    samples: Vec<f64>,
}

impl RttStats {
    /// Records one round trip.
    pub fn add(&mut self, rtt: Duration) {
        self.samples.push(rtt.as_secs_f64() * 1000.0);
    }

    /// Number of samples.
    pub fn count(&self) -> usize {
        self.samples.len()
    }

    /// (min, avg, max, mdev) in milliseconds; `None` without samples.
    pub fn summary(&self) -> Option<(f64, f64, f64, f64)> {
        if self.samples.is_empty() {
            return None;
        }
        let n = self.samples.len() as f64;
        let min = self.samples.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = self.samples.iter().cloned().fold(0.0, f64::max);
        let avg = self.samples.iter().sum::<f64>() / n;
        let sq = self.samples.iter().map(|x| x * x).sum::<f64>() / n;
        let mdev = (sq - avg * avg).max(0.0).sqrt();
        Some((min, avg, max, mdev))
    }

    /// The median in milliseconds.
    pub fn median(&self) -> Option<f64> {
        let mut v = self.samples.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(v.len() / 2).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_matches_ping_formula() {
        let mut s = RttStats::default();
        for ms in [1, 2, 3] {
            s.add(Duration::from_millis(ms));
        }
        let (min, avg, max, mdev) = s.summary().unwrap();
        assert_eq!((min, avg, max), (1.0, 2.0, 3.0));
        assert!((mdev - (2.0f64 / 3.0).sqrt()).abs() < 1e-9);
    }
}
