//! Waiting for something a test expects to happen, with a deadline.

use std::future::Future;
use std::time::{Duration, Instant};

/// Checks every 10 ms until `check` is true, failing the test with `what` after `within`.
/// Returns how long it took.
pub async fn until<F, Fut>(what: &str, within: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}
