//! Mirrors: other registries that serve the same repositories, tried before the origin for
//! reads, as containerd's `hosts.toml` and `registries.conf` describe them. Content is still
//! verified by digest, so a mirror can make a pull fail but cannot change what lands.
//!
//! The file maps a registry to its mirrors, in order:
//!
//! ```toml
//! [registries."registry.example.com"]
//! mirrors = ["127.0.0.1:5001", "mirror.internal:5000"]
//! ```
//!
//! A mirror may be several replicas of one cache, written `a:5000,b:5000` (the pods of a
//! StatefulSet, in ordinal order). Each blob then has one home among them, chosen by
//! rendezvous hashing of its digest and the replica's place in the list: every node picks the
//! same replica for the same blob without talking to the others, so the replicas together
//! fetch each blob from the origin once, not once each (a Service in front of them would
//! spread requests at random and multiply the origin's egress by the replica count). A
//! replica that is down keeps its place; its blobs go to their next replica in the same order,
//! the others stay home; removing the last replica from the list moves only its blobs.
//!
//! The place, not the address, is hashed: nodes may reach one replica by different addresses
//! (a per-node proxy, an IP instead of a name) and still agree, as long as every node lists
//! the replicas in the same order.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::RegistryClient;

/// One mirror: a host, or the replicas of one cache that share its blobs by digest.
#[derive(Clone)]
pub struct Mirror {
    replicas: Vec<RegistryClient>,
}

impl Mirror {
    pub fn new(replicas: Vec<RegistryClient>) -> Mirror {
        assert!(!replicas.is_empty(), "a mirror has at least one host");
        Mirror { replicas }
    }

    /// The same replicas, each client changed by `f`.
    pub fn map(self, f: impl Fn(RegistryClient) -> RegistryClient) -> Mirror {
        Mirror::new(self.replicas.into_iter().map(f).collect())
    }

    /// The replicas in the order to try for `key` (a digest or a reference): its home first.
    pub fn order_for(&self, key: &str) -> Vec<&RegistryClient> {
        let mut ranked: Vec<(_, &RegistryClient)> = self
            .replicas
            .iter()
            .enumerate()
            .map(|(place, r)| (rendezvous_weight(place, key), r))
            .collect();
        ranked.sort_by_key(|r| std::cmp::Reverse(r.0));
        ranked.into_iter().map(|(_, r)| r).collect()
    }
}

/// The hosts of a mirror spec: `a:5000` or `a:5000,b:5000` (replicas).
pub fn replica_hosts(spec: &str) -> Vec<&str> {
    spec.split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect()
}

/// Highest-random-weight hashing: the replica with the largest hash of (place, key) is the
/// key's home. SHA-256 rather than the std hasher, whose seeds differ between processes.
fn rendezvous_weight(place: usize, key: &str) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update((place as u64).to_le_bytes());
    h.update(key.as_bytes());
    let out = h.finalize();
    out[..8].try_into().expect("8 bytes")
}

/// A mirror setting that cannot be used (exit 2: the user's input is wrong).
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("cannot read mirrors file {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("mirrors file {path} is not valid: {detail}")]
    Invalid {
        path: std::path::PathBuf,
        detail: String,
    },
    #[error("mirror {0:?}: use http:// or https:// before the host, or no scheme")]
    Scheme(String),
    #[error("mirror {0:?} names no host")]
    Empty(String),
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct MirrorConfig {
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryMirrors>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct RegistryMirrors {
    #[serde(default)]
    pub mirrors: Vec<String>,
}

impl MirrorConfig {
    pub fn load(path: &Path) -> Result<MirrorConfig, MirrorError> {
        let text = std::fs::read_to_string(path).map_err(|e| MirrorError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        toml::from_str(&text).map_err(|e| MirrorError::Invalid {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })
    }

    pub fn mirrors_for(&self, registry: &str) -> &[String] {
        self.registries
            .get(registry)
            .map_or(&[], |r| r.mirrors.as_slice())
    }
}

#[cfg(test)]
fn group(hosts: &[&str]) -> Mirror {
    let opts = super::TransportOptions::default();
    Mirror::new(
        hosts
            .iter()
            .map(|h| RegistryClient::new(h, &opts, super::Credentials::anonymous()).unwrap())
            .collect(),
    )
}

#[test]
fn every_blob_has_one_home_and_homes_are_spread() {
    let hosts = ["cache-0:5000", "cache-1:5000", "cache-2:5000"];
    let m = group(&hosts);
    let mut homes = std::collections::HashMap::new();
    for i in 0..300 {
        let key = format!("sha256:{i:064x}");
        let order: Vec<&str> = m.order_for(&key).iter().map(|c| c.registry()).collect();
        assert_eq!(order.len(), 3);
        // Another node reaching the same replicas by other addresses agrees.
        let elsewhere = group(&["10.0.0.7:80", "10.0.0.8:80", "10.0.0.9:80"]);
        let place = |m: &Mirror, host: &str| m.replicas.iter().position(|r| r.registry() == host);
        assert_eq!(
            place(&elsewhere, elsewhere.order_for(&key)[0].registry()),
            place(&m, order[0])
        );
        *homes.entry(order[0].to_string()).or_insert(0) += 1;
    }
    for h in hosts {
        let n = homes[h];
        assert!((60..=140).contains(&n), "{h} is home to {n} of 300");
    }
}

#[test]
fn scaling_down_moves_only_the_removed_replicas_blobs() {
    let all = group(&["cache-0:5000", "cache-1:5000", "cache-2:5000"]);
    let two = group(&["cache-0:5000", "cache-1:5000"]);
    for i in 0..200 {
        let key = format!("sha256:{i:064x}");
        let home = all.order_for(&key)[0].registry().to_string();
        let after = two.order_for(&key)[0].registry().to_string();
        if home != "cache-2:5000" {
            assert_eq!(home, after, "a blob of a remaining replica moved");
        } else {
            let next = all.order_for(&key)[1].registry().to_string();
            assert_eq!(next, after, "not its next replica");
        }
    }
}

#[test]
fn replica_specs_split_on_commas() {
    assert_eq!(replica_hosts("a:1, b:2,"), ["a:1", "b:2"]);
    assert_eq!(replica_hosts("a:1"), ["a:1"]);
}

#[test]
fn parses_the_documented_shape() {
    let c: MirrorConfig =
        toml::from_str("[registries.\"r.example\"]\nmirrors = [\"a:1\", \"b\"]\n").unwrap();
    assert_eq!(c.mirrors_for("r.example"), ["a:1", "b"]);
    assert!(c.mirrors_for("other").is_empty());
}
