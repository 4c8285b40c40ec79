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

use std::collections::BTreeMap;
use std::path::Path;

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
    pub fn load(path: &Path) -> Result<MirrorConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read mirrors file {}: {e}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| format!("mirrors file {} is not valid: {e}", path.display()))
    }

    pub fn mirrors_for(&self, registry: &str) -> &[String] {
        self.registries
            .get(registry)
            .map_or(&[], |r| r.mirrors.as_slice())
    }
}

#[test]
fn parses_the_documented_shape() {
    let c: MirrorConfig =
        toml::from_str("[registries.\"r.example\"]\nmirrors = [\"a:1\", \"b\"]\n").unwrap();
    assert_eq!(c.mirrors_for("r.example"), ["a:1", "b"]);
    assert!(c.mirrors_for("other").is_empty());
}
