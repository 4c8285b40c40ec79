//! Who may have a model from the node's cache: the registry decides, not the cache.
//!
//! The node's store holds every model any volume pulled, with whatever credentials that
//! volume had. Serving it to the next volume without asking would hand a private model to a
//! Pod whose namespace holds no Secret for it (the hole Kubernetes closed for images with
//! KEP-2535, "ensure secret pulled images"). So a model is served from the cache only to a
//! volume whose own credentials — its `nodePublishSecretRef`, or none — the registry accepts
//! for that manifest:
//!
//! - a model a volume without a secret pulled is free: anyone on the node could pull it the
//!   same way, so no request is made (kept in memory: after a restart the first volume of
//!   such a model asks once);
//! - otherwise one manifest request by digest, with the volume's credentials; the verdict is
//!   kept for [`VERDICT_TTL`] per (credentials, registry, repository, digest), so a rollout
//!   of many Pods asks once. A pull from the registry with given credentials is a verdict too.
//!
//! Refused: PERMISSION_DENIED, nothing placed or mounted. A registry that cannot be reached
//! refuses too (UNAVAILABLE): the check fails closed.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::request::{Secret, Volume};
use crate::digest::Digest;
use crate::reference::canonical_registry;

/// How long a registry's answer for one set of credentials is trusted.
pub const VERDICT_TTL: Duration = Duration::from_secs(300);
/// Most verdicts kept; past it the expired ones go, then all (each costs one request).
const MAX_VERDICTS: usize = 4096;

/// A model in one repository of one registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Model {
    registry: String,
    repository: String,
    digest: String,
}

impl Model {
    pub fn of(volume: &Volume, digest: &Digest) -> Model {
        Model {
            registry: canonical_registry(volume.reference.registry.as_deref().unwrap_or_default()),
            repository: volume.reference.repository.clone(),
            digest: digest.to_string(),
        }
    }
}

/// What the registry said of one volume's credentials for one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Denied,
}

#[derive(Default)]
pub struct Access {
    /// Models pulled by a volume without a secret.
    free: Mutex<HashSet<Model>>,
    verdicts: Mutex<HashMap<(String, Model), (Verdict, Instant)>>,
}

impl Access {
    /// What is known without asking: `Some(Allowed)` for a free model or a fresh verdict.
    pub fn known(&self, volume: &Volume, model: &Model) -> Option<Verdict> {
        if self.free.lock().expect("access lock").contains(model) {
            return Some(Verdict::Allowed);
        }
        let key = (credentials_key(volume.secret.as_ref()), model.clone());
        let verdicts = self.verdicts.lock().expect("access lock");
        verdicts
            .get(&key)
            .filter(|(_, at)| at.elapsed() < VERDICT_TTL)
            .map(|(v, _)| *v)
    }

    /// Keep the registry's answer for this volume's credentials.
    pub fn remember(&self, volume: &Volume, model: &Model, verdict: Verdict) {
        let mut verdicts = self.verdicts.lock().expect("access lock");
        if verdicts.len() >= MAX_VERDICTS {
            verdicts.retain(|_, (_, at)| at.elapsed() < VERDICT_TTL);
            if verdicts.len() >= MAX_VERDICTS {
                verdicts.clear();
            }
        }
        let key = (credentials_key(volume.secret.as_ref()), model.clone());
        verdicts.insert(key, (verdict, Instant::now()));
    }

    /// A volume pulled `model` from the registry: with no secret, it is free for all.
    pub fn pulled(&self, volume: &Volume, model: &Model) {
        if volume.secret.is_none() {
            self.free.lock().expect("access lock").insert(model.clone());
        } else {
            self.remember(volume, model, Verdict::Allowed);
        }
    }
}

/// A digest of the credentials (never the credentials themselves) to key verdicts by.
fn credentials_key(secret: Option<&Secret>) -> String {
    let mut h = Sha256::new();
    match secret {
        None => h.update(b"none"),
        Some(Secret::DockerConfig(json)) => {
            h.update(b"dockerconfig\0");
            h.update(json);
        }
        Some(Secret::Password { username, password }) => {
            h.update(b"password\0");
            h.update(username.as_bytes());
            h.update(b"\0");
            h.update(password.as_bytes());
        }
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(secret: Option<Secret>) -> Volume {
        Volume {
            id: "v".into(),
            target: "/t".into(),
            reference: crate::reference::Reference::parse("LOCALHOST:5000/m:v1").unwrap(),
            include: Vec::new(),
            lazy: false,
            always: false,
            secret,
        }
    }

    fn password(p: &str) -> Option<Secret> {
        Some(Secret::Password {
            username: "u".into(),
            password: p.into(),
        })
    }

    #[test]
    fn verdicts_are_per_credentials_and_free_models_need_none() {
        let access = Access::default();
        let digest = Digest::of_bytes(b"manifest");
        let (right, wrong, none) = (volume(password("a")), volume(password("b")), volume(None));
        let model = Model::of(&right, &digest);
        assert_eq!(model.registry, "127.0.0.1:5000");
        access.pulled(&right, &model);
        assert_eq!(access.known(&right, &model), Some(Verdict::Allowed));
        assert_eq!(access.known(&wrong, &model), None, "other credentials ask");
        assert_eq!(access.known(&none, &model), None, "no credentials ask");
        access.remember(&wrong, &model, Verdict::Denied);
        assert_eq!(access.known(&wrong, &model), Some(Verdict::Denied));

        let other = Model::of(&none, &Digest::of_bytes(b"public"));
        access.pulled(&none, &other);
        assert_eq!(access.known(&wrong, &other), Some(Verdict::Allowed));
        assert_eq!(access.known(&none, &other), Some(Verdict::Allowed));
    }

    #[test]
    fn the_verdicts_kept_are_bounded() {
        let access = Access::default();
        let v = volume(password("a"));
        for i in 0..(MAX_VERDICTS + 10) {
            let m = Model::of(&v, &Digest::of_bytes(i.to_string().as_bytes()));
            access.remember(&v, &m, Verdict::Allowed);
        }
        assert!(access.verdicts.lock().unwrap().len() <= MAX_VERDICTS);
    }
}
