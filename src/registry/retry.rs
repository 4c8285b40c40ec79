//! Retry policy: exponential backoff with jitter, a cap per request (or range) and for the
//! whole pull; and retries of small idempotent requests (manifests, HEADs).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per range (the first try included).
    pub attempts: u32,
    /// Retries allowed across the whole pull, so a broken network ends in bounded time.
    pub total: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            total: 200,
            base: Duration::from_millis(200),
            max: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// Wait before attempt `n` (1-based retry count): base·2ⁿ⁻¹ capped, times a jitter in
    /// [0.5, 1.5) so that many connections failing together do not retry together. A
    /// server's `Retry-After` wins when it asks for longer.
    pub fn delay(&self, retry: u32, retry_after: Option<u64>) -> Duration {
        let exp = self
            .base
            .saturating_mul(1 << retry.saturating_sub(1).min(16));
        let capped = exp.min(self.max);
        let jittered = capped.mul_f64(0.5 + jitter());
        match retry_after {
            Some(secs) => jittered.max(Duration::from_secs(secs.min(60))),
            None => jittered,
        }
    }
}

impl super::RegistryClient {
    /// Run an idempotent request again on transient failures (resets, 429, 5xx).
    pub(crate) async fn with_retries<T, F, Fut>(
        &self,
        mut request: F,
    ) -> Result<T, super::RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, super::RegistryError>>,
    {
        let policy = RetryPolicy::default();
        let mut attempt = 1;
        loop {
            match request().await {
                Err(e) if e.is_transient() && attempt < policy.attempts => {
                    let retry_after = match &e {
                        super::RegistryError::Throttled { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    let delay = policy.delay(attempt, retry_after);
                    tracing::warn!("{e}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}

/// A number in [0, 1) that differs between calls and processes; not for cryptography.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let p = RetryPolicy::default();
        for _ in 0..50 {
            let d1 = p.delay(1, None);
            assert!(d1 >= Duration::from_millis(100) && d1 < Duration::from_millis(300));
            let d10 = p.delay(10, None);
            assert!(d10 >= Duration::from_secs(5) && d10 < Duration::from_secs(15));
            assert!(p.delay(1, Some(3)) >= Duration::from_secs(3));
        }
    }
}
