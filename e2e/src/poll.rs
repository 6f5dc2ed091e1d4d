//! Waiting for the cluster to come round: a check retried until it passes or its time is up.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Result;

/// Retries `check` until it succeeds or `timeout` passes; the last error explains a failure.
pub async fn eventually<F, Fut, T>(timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(error) if started.elapsed() >= timeout => {
                return Err(error.context(format!("still failing after {timeout:?}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Runs a blocking check (a request from the client netns) until it succeeds.
pub async fn eventually_blocking<T: Send + 'static>(
    timeout: Duration,
    check: impl Fn() -> Result<T> + Send + Sync + Clone + 'static,
) -> Result<T> {
    eventually(timeout, || {
        let check = check.clone();
        async move { tokio::task::spawn_blocking(check).await? }
    })
    .await
}
