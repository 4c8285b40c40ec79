//! References: `[registry/]repository[:tag][@sha256:…]`, with Docker's defaults for Docker Hub.
//!
//! A reference without a registry host (`my-model:v1`) names the local store, hoist's embedded
//! default. A first component is a host when it has a `.` or a `:` or is `localhost`, as Docker
//! decides it.

use std::fmt;

use crate::digest::Digest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `None` for the local store.
    pub registry: Option<String>,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid reference {input:?}: {why}; expected [registry/]repository[:tag][@sha256:<hex>]")]
pub struct ReferenceError {
    pub input: String,
    pub why: String,
}

pub const DOCKER_HUB: &str = "docker.io";

impl Reference {
    /// Parse one reference with at most one tag.
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let (reference, tags) = Self::parse_with_tags(input)?;
        if tags.len() > 1 {
            return Err(ReferenceError {
                input: input.into(),
                why: "several tags are only accepted where pushing".into(),
            });
        }
        Ok(reference)
    }

    /// Where to push or copy to, and under which tags: the tags in `input` (`repo:v1,latest`)
    /// then `extra` ones; `default_tag` when there are none and no digest is named.
    pub fn parse_destination(
        input: &str,
        extra: &[String],
        default_tag: impl FnOnce() -> String,
    ) -> Result<(Reference, Vec<String>), ReferenceError> {
        let (parsed, mut tags) = Reference::parse_with_tags(input)?;
        for tag in extra {
            let (_, more) = Reference::parse_with_tags(&format!("{}:{tag}", parsed.repository))?;
            tags.extend(more);
        }
        if tags.is_empty() && parsed.digest.is_none() {
            tags.push(default_tag());
        }
        tags.dedup();
        Ok((parsed, tags))
    }

    /// Parse a reference whose tag part may list several tags (`repo:v1,latest`), as `push`
    /// accepts. The reference carries the first tag; all tags are returned in order.
    pub fn parse_with_tags(input: &str) -> Result<(Reference, Vec<String>), ReferenceError> {
        let fail = |why: &str| ReferenceError {
            input: input.to_string(),
            why: why.to_string(),
        };
        if input.is_empty() {
            return Err(fail("empty"));
        }
        let (name_tag, digest) = match input.split_once('@') {
            Some((a, d)) => (
                a,
                Some(d.parse::<Digest>().map_err(|e| fail(&e.to_string()))?),
            ),
            None => (input, None),
        };
        // The tag is after the last ':' that follows the last '/', so a host port is not a tag.
        let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tags) = match name_tag[last_slash..].find(':') {
            Some(i) => {
                let split = last_slash + i;
                let tags: Vec<String> = name_tag[split + 1..]
                    .split(',')
                    .map(str::to_string)
                    .collect();
                (&name_tag[..split], tags)
            }
            None => (name_tag, Vec::new()),
        };
        for tag in &tags {
            if !valid_tag(tag) {
                return Err(fail(&format!(
                    "tag {tag:?} must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}"
                )));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                let registry = if first == "index.docker.io" {
                    DOCKER_HUB
                } else {
                    first
                };
                (Some(registry.to_string()), rest.to_string())
            }
            _ => (None, name.to_string()),
        };
        if let Some(host) = &registry {
            if !valid_host(host) {
                return Err(fail(&format!(
                    "registry host {host:?} must be a name or address with an optional :port"
                )));
            }
        }
        let repository = match registry.as_deref() {
            Some(DOCKER_HUB) if !repository.contains('/') => format!("library/{repository}"),
            _ => repository,
        };
        if !valid_repository(&repository) {
            return Err(fail(&format!(
                "repository {repository:?} must be lowercase letters, digits and separators (. _ __ - /)"
            )));
        }
        let reference = Reference {
            registry,
            repository,
            tag: tags.first().cloned(),
            digest,
        };
        Ok((reference, tags))
    }

    pub fn is_local(&self) -> bool {
        self.registry.is_none()
    }

    /// What to ask the registry for: the digest if pinned, else the tag, else `latest`.
    pub fn target(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.registry {
            write!(f, "{r}/")?;
        }
        f.write_str(&self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// The one spelling of a registry host that signature policies are matched against: how the
/// URL parser (and so the HTTP client) reads it. Case is folded, a port is a number (`05930`
/// is `5930`), IPv4 literals in any of their spellings (`127.1`, `127.000.000.001`,
/// `0x7f.0.0.1`) are dotted quads, IPv6 literals are compressed (an IPv4-mapped one is its
/// IPv4 address), and the loopback name `localhost` is `127.0.0.1`. Other names that reach
/// the same server (DNS aliases, another address of it) are other names: see SECURITY.md.
pub fn canonical_registry(registry: &str) -> String {
    let (host, port) = split_port(registry);
    let host = match url::Host::parse(host) {
        Ok(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.');
            if name == "localhost" {
                "127.0.0.1".to_string()
            } else {
                name.to_string()
            }
        }
        Ok(url::Host::Ipv4(ip)) => ip.to_string(),
        Ok(url::Host::Ipv6(ip)) => match ip.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => format!("[{ip}]"),
        },
        Err(_) => host.to_ascii_lowercase(),
    };
    match port {
        Some(p) => match p.parse::<u16>() {
            Ok(n) => format!("{host}:{n}"),
            Err(_) => format!("{host}:{p}"),
        },
        None => host,
    }
}

/// `host:port` → (`host`, `port`); a bracketed IPv6 literal keeps its colons.
fn split_port(registry: &str) -> (&str, Option<&str>) {
    if registry.starts_with('[') {
        return match registry.find(']') {
            Some(end) => (&registry[..=end], registry[end + 1..].strip_prefix(':')),
            None => (registry, None),
        };
    }
    match registry.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (registry, None),
    }
}

fn valid_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) if !n.ends_with(']') || host.starts_with('[') => (n, Some(p)),
        _ => (host, None),
    };
    let name_ok = if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        !v6.is_empty() && v6.bytes().all(|c| c.is_ascii_hexdigit() || c == b':')
    } else {
        !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && label
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-')
            })
    };
    // Docker's grammar takes any digits: up to five, or more when leading zeros pad a
    // number a port can be (`05930`).
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 8
            && p.bytes().all(|c| c.is_ascii_digit())
            && (p.len() <= 5 || p.parse::<u32>().is_ok_and(|n| n <= u32::from(u16::MAX)))
    });
    name_ok && port_ok
}

/// The distribution spec's tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A manifest reference: a tag or a digest.
pub fn valid_reference(reference: &str) -> bool {
    valid_tag(reference) || reference.parse::<crate::digest::Digest>().is_ok()
}

/// The distribution spec's `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/…)*`.
pub fn valid_repository(repo: &str) -> bool {
    !repo.is_empty()
        && repo.len() <= 255
        && repo.split('/').all(|component| {
            let b = component.as_bytes();
            let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
            if b.is_empty() || !alnum(&b[0]) || !alnum(&b[b.len() - 1]) {
                return false;
            }
            let mut i = 0;
            while i < b.len() {
                if alnum(&b[i]) {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < b.len() && !alnum(&b[i]) {
                    i += 1;
                }
                let sep = &component[start..i];
                if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-')) {
                    return false;
                }
            }
            true
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_and_remote() {
        let r = Reference::parse("my-model:v1").unwrap();
        assert!(r.is_local());
        assert_eq!(r.repository, "my-model");
        let r = Reference::parse("localhost:5000/a/b:v2").unwrap();
        assert_eq!(r.registry.as_deref(), Some("localhost:5000"));
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.tag.as_deref(), Some("v2"));
        let r = Reference::parse("127.0.0.1:5000/m").unwrap();
        assert_eq!(r.target(), "latest");
    }

    #[test]
    fn every_spelling_of_a_registry_has_one_canonical_form() {
        for spelling in [
            "127.0.0.1:5930",
            "127.0.0.1:05930",
            "localhost:5930",
            "LOCALHOST:5930",
            "LocalHost:5930",
            "127.1:5930",
            "127.000.000.001:5930",
            "0x7f.0.0.1:5930",
            "2130706433:5930",
            "[::ffff:7f00:1]:5930",
        ] {
            assert_eq!(canonical_registry(spelling), "127.0.0.1:5930", "{spelling}");
        }
        assert_eq!(
            canonical_registry("Registry.Example.COM"),
            "registry.example.com"
        );
        assert_eq!(canonical_registry("[0:0::1]:443"), "[::1]:443");
        assert_eq!(canonical_registry("reg.io:443"), "reg.io:443", "ports stay");
        assert_ne!(canonical_registry("127.0.0.2:5930"), "127.0.0.1:5930");
    }

    #[test]
    fn docker_hub_defaults() {
        let r = Reference::parse("docker.io/ubuntu").unwrap();
        assert_eq!(r.repository, "library/ubuntu");
        let r = Reference::parse("index.docker.io/org/m:1").unwrap();
        assert_eq!(r.registry.as_deref(), Some("docker.io"));
        assert_eq!(r.repository, "org/m");
    }

    #[test]
    fn several_tags() {
        let (r, tags) = Reference::parse_with_tags("localhost:5000/m:v1,latest").unwrap();
        assert_eq!(tags, vec!["v1", "latest"]);
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert!(Reference::parse("m:v1,latest").is_err());
    }

    #[test]
    fn malformed() {
        for bad in [
            "",
            "UPPER:v1",
            "a//b",
            "m:",
            "m:-x",
            "a/b@sha256:zz",
            "x/-y",
            "a:b:c/d",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad} should fail");
        }
        let d = format!("m@sha256:{}", "a".repeat(64));
        assert!(Reference::parse(&d).unwrap().digest.is_some());
    }
}
