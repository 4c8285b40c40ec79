//! One upstream and the mirrors in front of it: which to ask first (the replica a digest maps
//! to), which are down or throttling and for how long, and the first good answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::digest::Digest;
use crate::registry::mirrors::Mirror;
use crate::registry::{RegistryClient, RegistryError};

/// One upstream registry and the mirrors to read it through first.
#[derive(Clone)]
pub struct Upstream {
    pub origin: RegistryClient,
    /// Their clients fail fast (`RegistryClient::fail_fast`): the origin is behind them.
    pub mirrors: Vec<Mirror>,
    /// Mirrors that could not be reached, and since when: skipped for `DOWN_FOR`, so each
    /// new miss does not wait out the same dead host again.
    down: Arc<Mutex<HashMap<String, Instant>>>,
    /// Sources that answered 429, and until when: every miss meanwhile is answered 429 here
    /// without asking them again, so N clients waiting on one cache cost the throttling
    /// registry one request per `Retry-After`, not N.
    throttled: Arc<Mutex<HashMap<String, Instant>>>,
}

/// How long a mirror that could not be reached is skipped before it is tried again.
pub(super) const DOWN_FOR: Duration = Duration::from_secs(30);

impl Upstream {
    pub fn new(origin: RegistryClient, mirrors: Vec<Mirror>) -> Upstream {
        Upstream {
            origin,
            mirrors,
            down: Arc::default(),
            throttled: Arc::default(),
        }
    }

    /// `Err(Throttled)` while `source` asked to be left alone.
    pub(super) fn check_hold(&self, source: &RegistryClient) -> Result<(), RegistryError> {
        let held = self.throttled.lock().expect("throttle lock");
        match held.get(source.registry()) {
            Some(until) if *until > Instant::now() => Err(RegistryError::Throttled {
                registry: source.registry().to_string(),
                retry_after: Some((*until - Instant::now()).as_secs_f64().ceil() as u64),
            }),
            _ => Ok(()),
        }
    }

    /// Remember a 429 from `source` for as long as it asked (1 s if it did not say).
    pub(super) fn hold(&self, source: &RegistryClient, e: &RegistryError) {
        if let RegistryError::Throttled { retry_after, .. } = e {
            let secs = retry_after
                .unwrap_or(1)
                .min(crate::registry::MAX_RETRY_AFTER);
            self.throttled.lock().expect("throttle lock").insert(
                source.registry().to_string(),
                Instant::now() + Duration::from_secs(secs),
            );
        }
    }

    /// Where `key` (a digest or reference) is read from, in order: each mirror's replicas,
    /// the key's home first, then the origin. Mirrors recently found down are left out.
    pub(super) fn sources(&self, key: &str) -> Vec<&RegistryClient> {
        let down = self.down.lock().expect("down lock");
        let up = |c: &&RegistryClient| {
            down.get(c.registry())
                .is_none_or(|since| since.elapsed() > DOWN_FOR)
        };
        self.mirrors
            .iter()
            .flat_map(|m| m.order_for(key))
            .filter(up)
            .chain(std::iter::once(&self.origin))
            .collect()
    }

    /// Remember that `source` did not answer, if it is a mirror.
    pub(super) fn mark_down(&self, source: &RegistryClient, e: &RegistryError) {
        if e.is_unreachable() {
            self.skip_mirror(source.registry());
        }
    }

    /// Leave the mirror `host` out for a while (never the origin: it is the last resort).
    pub(super) fn skip_mirror(&self, host: &str) {
        if host != self.origin.registry() {
            self.down
                .lock()
                .expect("down lock")
                .insert(host.to_string(), Instant::now());
        }
    }

    /// Does `name` hold `digest` upstream? The first source that answers decides.
    pub async fn blob_exists(&self, name: &str, digest: &Digest) -> Option<u64> {
        for source in self.sources(digest.as_str()) {
            match source.blob_exists(name, digest).await {
                Ok(found) => return found,
                Err(e) => tracing::debug!("{}: {e}; asking the next source", source.registry()),
            }
        }
        None
    }

    /// Ask the sources of `key` in turn until one answers. A source that fails is left for
    /// the next (and marked down when it did not answer at all); a 429 ends the search and
    /// is held for its `Retry-After`, so it is passed on rather than gone around. Returns
    /// the answer and the source that gave it.
    pub(super) async fn first_answer<T, F, Fut>(
        &self,
        key: &str,
        what: &str,
        mut ask: F,
    ) -> Result<(T, String), RegistryError>
    where
        F: FnMut(RegistryClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let sources: Vec<RegistryClient> = self.sources(key).into_iter().cloned().collect();
        let last = sources.len() - 1;
        for (i, source) in sources.into_iter().enumerate() {
            self.check_hold(&source)?;
            match ask(source.clone()).await {
                Ok(answer) => return Ok((answer, source.registry().to_string())),
                Err(e @ RegistryError::Throttled { .. }) => {
                    self.hold(&source, &e);
                    return Err(e);
                }
                Err(e) if i < last => {
                    self.mark_down(&source, &e);
                    tracing::warn!(
                        "{what}: {} failed ({e}); trying the next source",
                        source.registry()
                    );
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the origin is always the last source")
    }

    /// Open `digest` (its `range`, or whole) on the first source that answers. Returns the
    /// response, whether it is the range (206) or the whole blob (200), and the source.
    pub(super) async fn open_blob(
        &self,
        name: &str,
        digest: &Digest,
        range: Option<(u64, u64)>,
        stall: Duration,
    ) -> Result<(reqwest::Response, bool, String), RegistryError> {
        let what = format!("pull-through of {digest}");
        let ((response, partial), source) = self
            .first_answer(digest.as_str(), &what, |source| async move {
                // A source that accepts and never answers is left after the stall timeout.
                match tokio::time::timeout(stall, source.get_blob(name, digest, range)).await {
                    Ok(opened) => opened.map(|blob| (blob.response, blob.partial)),
                    Err(_) => Err(RegistryError::TimedOut {
                        registry: source.registry().to_string(),
                        context: format!("blob {digest}"),
                        detail: format!("no answer for {stall:?}"),
                    }),
                }
            })
            .await?;
        Ok((response, partial, source))
    }
}
