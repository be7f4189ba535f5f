//! Optional futures in `select!` loops.
//!
//! A loop that waits on many things at once (a command's output, a timer,
//! a signal) often has some of them absent at the moment: the timer is not
//! armed, the pipe is closed. [`or_pending`] turns "maybe a future" into a
//! future that simply never completes when there is none, so the `select!`
//! branch stays quiet instead of needing a special case.

use std::future::Future;

/// Awaits `f` if there is one; otherwise never completes.
pub(crate) async fn or_pending<F: Future>(f: Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; never completes when `at` is `None` (a timer that is
/// not armed).
pub(crate) async fn sleep_until(at: Option<tokio::time::Instant>) {
    or_pending(at.map(tokio::time::sleep_until)).await
}

/// Awaits `f` for at most `limit` (`None`: as long as it takes); past
/// the limit, the limit itself is the error, for the message that names it.
pub(crate) async fn timeout<F: Future>(
    limit: Option<std::time::Duration>,
    f: F,
) -> Result<F::Output, std::time::Duration> {
    match limit {
        Some(d) => tokio::time::timeout(d, f).await.map_err(|_| d),
        None => Ok(f.await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn absent_futures_never_complete() {
        assert_eq!(or_pending(Some(async { 7 })).await, 7);
        let none: Option<std::future::Ready<()>> = None;
        let waited = tokio::time::timeout(Duration::from_secs(3600), or_pending(none)).await;
        assert!(waited.is_err());
        let at = tokio::time::Instant::now() + Duration::from_secs(5);
        sleep_until(Some(at)).await;
        assert!(tokio::time::Instant::now() >= at);
        assert!(
            tokio::time::timeout(Duration::from_secs(3600), sleep_until(None))
                .await
                .is_err()
        );
        let limit = Some(Duration::from_secs(2));
        assert_eq!(timeout(limit, async { 7 }).await, Ok(7));
        assert_eq!(
            timeout(limit, std::future::pending::<()>()).await,
            Err(Duration::from_secs(2))
        );
        assert_eq!(timeout(None, async { 7 }).await, Ok(7));
    }
}
