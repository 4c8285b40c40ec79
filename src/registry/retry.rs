//! Retry policy: exponential backoff with jitter, a cap per request (or range) and for the
//! whole pull. Plain data and arithmetic: the client's retry loop for small idempotent
//! requests (manifests, HEADs) is `RegistryClient::with_retries`, in `client`, which uses it.

use std::time::Duration;

/// How long one request waits out a throttling registry before giving up.
pub const MAX_THROTTLED: Duration = Duration::from_secs(300);

/// The longest `Retry-After` honoured, in seconds: a registry asking for more is waited on
/// this long and asked again.
pub const MAX_RETRY_AFTER: u64 = 60;

/// A `Retry-After` header: delay-seconds or an HTTP date (RFC 9110 §10.2.3), as seconds
/// from now. A date in the past means now.
pub fn parse_retry_after(value: &str) -> Option<u64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs);
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .map_or(0, |d| d.as_secs()),
    )
}

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
    /// server's `Retry-After` is a floor, and the jitter is added on top of it: every node
    /// a throttling registry answered at once would otherwise come back in the same second.
    pub fn delay(&self, retry: u32, retry_after: Option<u64>) -> Duration {
        let exp = self
            .base
            .saturating_mul(1 << retry.saturating_sub(1).min(16));
        let capped = exp.min(self.max);
        match retry_after {
            Some(secs) => {
                Duration::from_secs(secs.min(MAX_RETRY_AFTER)) + capped.mul_f64(0.5 + jitter())
            }
            None => capped.mul_f64(0.5 + jitter()),
        }
    }
}

impl RetryPolicy {
    /// Attempts against one source: a mirror with another source behind it gets two, so a
    /// dead cache tier costs one short backoff, not the whole schedule.
    pub fn attempts_for(&self, fail_fast: bool) -> u32 {
        if fail_fast {
            self.attempts.min(2)
        } else {
            self.attempts
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

    #[test]
    fn clients_told_to_wait_the_same_time_do_not_come_back_together() {
        let p = RetryPolicy::default();
        let delays: Vec<Duration> = (0..64).map(|_| p.delay(1, Some(2))).collect();
        assert!(delays.iter().all(|d| *d >= Duration::from_secs(2)));
        assert!(delays.iter().all(|d| *d < Duration::from_secs(3)));
        let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        // Spread over at least a tenth of a second (the window is 100–300 ms wide).
        assert!(
            *max - *min >= Duration::from_millis(100),
            "{min:?}..{max:?}"
        );
        assert_eq!(
            p.delay(1, Some(3600)).as_secs(),
            MAX_RETRY_AFTER,
            "an hour is capped"
        );
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        assert_eq!(parse_retry_after(" 7 "), Some(7));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(0));
        let later = std::time::SystemTime::now() + Duration::from_secs(30);
        let secs = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!((28..=30).contains(&secs), "{secs}");
        assert_eq!(parse_retry_after("soon"), None);
    }
}
