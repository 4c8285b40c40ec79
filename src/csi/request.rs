//! What a NodePublishVolume asks for, checked before anything happens: the volume's id, the
//! target path (only under kubelet's pods folder), the model's reference and the volume
//! attributes hoist reads. A request that fails a check is answered INVALID_ARGUMENT with
//! what is wrong; nothing is pulled or mounted for it.
//!
//! Volume attributes (`volumeAttributes` of an inline volume or a PersistentVolume):
//! - `reference` (required for inline volumes): `registry/repository:tag` or `@sha256:…`;
//!   a PersistentVolume may name the model in its `volumeHandle` instead;
//! - `include`: globs, comma-separated: only those files are placed;
//! - `mode`: `copy` (default: the whole model is pulled, then mounted) or `lazy` (a FUSE view
//!   at once, bytes fetched as read, `hoist mount`);
//! - `pullPolicy`: `IfNotPresent` (default; `Always` for `latest` or no tag): whether a tag
//!   the node already resolved is asked of the registry again.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use super::proto;
use crate::reference::Reference;
use crate::registry::auth::{config::from_pull_secret, Credential, Credentials};

/// A request that cannot be served as written (INVALID_ARGUMENT).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

fn invalid(what: impl Into<String>) -> Invalid {
    Invalid(what.into())
}

/// A volume to publish.
#[derive(Debug, Clone)]
pub struct Volume {
    pub id: String,
    pub target: PathBuf,
    pub reference: Reference,
    pub include: Vec<String>,
    pub lazy: bool,
    /// Ask the registry for the tag even when the node has it.
    pub always: bool,
    pub secret: Option<Secret>,
}

impl Volume {
    /// What identifies the volume's content: a repeated publish of the same volume id with
    /// other content is refused (ALREADY_EXISTS), as the spec asks.
    pub fn content_key(&self) -> String {
        format!(
            "{} include={} lazy={}",
            self.reference,
            self.include.join(","),
            self.lazy
        )
    }
}

/// Credentials from the volume's `nodePublishSecretRef`; never printed.
#[derive(Clone)]
pub enum Secret {
    /// A `kubernetes.io/dockerconfigjson` Secret: its `.dockerconfigjson`.
    DockerConfig(Vec<u8>),
    Password {
        username: String,
        password: String,
    },
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::DockerConfig(_) => f.write_str("DockerConfig(<redacted>)"),
            Secret::Password { username, .. } => {
                write!(
                    f,
                    "Password {{ username: {username:?}, password: <redacted> }}"
                )
            }
        }
    }
}

impl Secret {
    /// The credentials for `registry`; `None` when the secret has none for it (the node's
    /// own configuration is used then).
    pub fn credentials(&self, registry: &str) -> Result<Option<Credentials>, crate::Error> {
        match self {
            Secret::DockerConfig(json) => Ok(from_pull_secret(json, registry)?),
            Secret::Password { username, password } => Ok(Some(Credentials::new(
                Credential::Password {
                    username: username.clone(),
                    password: password.clone(),
                },
                "the volume's secret",
            ))),
        }
    }
}

/// Check a NodePublishVolume request. `kubelet_dir`: target paths must be under its `pods/`.
pub fn publish(
    req: &proto::NodePublishVolumeRequest,
    kubelet_dir: &Path,
) -> Result<Volume, Invalid> {
    let id = required("volume_id", &req.volume_id)?;
    let target = target_path(&req.target_path, kubelet_dir)?;
    let capability = req
        .volume_capability
        .as_ref()
        .ok_or_else(|| invalid("volume_capability is missing"))?;
    if let Some(proto::volume_capability::AccessType::Block(_)) = capability.access_type {
        return Err(invalid(
            "a model volume is a folder: block access is not offered",
        ));
    }
    let attrs = &req.volume_context;
    let reference = reference(attrs, id)?;
    let include = include(attrs)?;
    let lazy = match attrs.get("mode").map(String::as_str) {
        Some("lazy") if !include.is_empty() => {
            return Err(invalid(
                "include is not offered with mode lazy: a lazy volume shows the whole model",
            ))
        }
        None | Some("") | Some("copy") => false,
        Some("lazy") => true,
        Some(other) => {
            return Err(invalid(format!(
                "mode {other:?} is not known: use copy (the default) or lazy"
            )))
        }
    };
    let floating =
        reference.digest.is_none() && reference.tag.as_deref().unwrap_or("latest") == "latest";
    let always = match attrs.get("pullPolicy").map(String::as_str) {
        None | Some("") => floating,
        Some("IfNotPresent") => false,
        Some("Always") => true,
        Some(other) => {
            return Err(invalid(format!(
                "pullPolicy {other:?} is not known: use IfNotPresent or Always"
            )))
        }
    };
    Ok(Volume {
        id: id.to_string(),
        target,
        reference,
        include,
        lazy,
        always,
        secret: secret(&req.secrets)?,
    })
}

/// Check a NodeUnpublishVolume request: its volume id and target path.
pub fn unpublish(
    req: &proto::NodeUnpublishVolumeRequest,
    kubelet_dir: &Path,
) -> Result<(String, PathBuf), Invalid> {
    let id = required("volume_id", &req.volume_id)?;
    Ok((id.to_string(), target_path(&req.target_path, kubelet_dir)?))
}

fn required<'a>(name: &str, value: &'a str) -> Result<&'a str, Invalid> {
    if value.is_empty() {
        return Err(invalid(format!("{name} is missing")));
    }
    Ok(value)
}

/// An absolute path without `..` under `<kubelet_dir>/pods/`: a request cannot have the
/// plugin mount over (or remove) anything else on the node.
fn target_path(path: &str, kubelet_dir: &Path) -> Result<PathBuf, Invalid> {
    let path = Path::new(required("target_path", path)?);
    let pods = kubelet_dir.join("pods");
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain || !path.starts_with(&pods) || path == pods {
        return Err(invalid(format!(
            "target_path {} is not under kubelet's pods folder {}",
            path.display(),
            pods.display()
        )));
    }
    Ok(path.to_path_buf())
}

/// The `reference` attribute; else a PersistentVolume's handle when it names a model.
fn reference(attrs: &HashMap<String, String>, id: &str) -> Result<Reference, Invalid> {
    let ephemeral = attrs
        .get("csi.storage.k8s.io/ephemeral")
        .is_some_and(|v| v == "true");
    let text = match attrs.get("reference").filter(|r| !r.is_empty()) {
        Some(r) => r.as_str(),
        None if !ephemeral => id,
        None => return Err(invalid(
            "the volume attribute `reference` is missing: name the model (registry/repository:tag)",
        )),
    };
    let reference = Reference::parse(text).map_err(|e| {
        invalid(match attrs.contains_key("reference") {
            true => e.to_string(),
            false => format!("the volume attribute `reference` is missing and the volume handle is no reference ({e})"),
        })
    })?;
    if reference.registry.is_none() {
        return Err(invalid(format!(
            "{text} names no registry: a volume's model comes from a registry (registry/repository:tag)"
        )));
    }
    Ok(reference)
}

fn include(attrs: &HashMap<String, String>) -> Result<Vec<String>, Invalid> {
    let globs: Vec<String> = attrs
        .get("include")
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|g| !g.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    crate::transfer::LayerFilter::globs(&globs)
        .map_err(|e| invalid(format!("include glob: {e}")))?;
    Ok(globs)
}

fn secret(secrets: &HashMap<String, String>) -> Result<Option<Secret>, Invalid> {
    if let Some(json) = secrets.get(".dockerconfigjson") {
        return Ok(Some(Secret::DockerConfig(json.as_bytes().to_vec())));
    }
    match (secrets.get("username"), secrets.get("password")) {
        (Some(u), Some(p)) => Ok(Some(Secret::Password {
            username: u.clone(),
            password: p.clone(),
        })),
        (None, None) => Ok(None),
        _ => Err(invalid(
            "the volume's secret has a username or a password but not both",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, attrs: &[(&str, &str)]) -> proto::NodePublishVolumeRequest {
        proto::NodePublishVolumeRequest {
            volume_id: "csi-1".into(),
            target_path: target.into(),
            volume_capability: Some(proto::VolumeCapability {
                access_type: Some(proto::volume_capability::AccessType::Mount(
                    Default::default(),
                )),
                access_mode: None,
            }),
            readonly: true,
            volume_context: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    const POD: &str = "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/m/mount";
    const EPHEMERAL: (&str, &str) = ("csi.storage.k8s.io/ephemeral", "true");

    #[test]
    fn a_publish_needs_its_fields_and_a_target_under_the_pods_folder() {
        let kubelet = Path::new("/var/lib/kubelet");
        let ok = publish(&request(POD, &[("reference", "r.io/m:v1")]), kubelet).unwrap();
        assert_eq!(ok.reference.to_string(), "r.io/m:v1");
        assert!(!ok.always && !ok.lazy);
        for (target, attrs, why) in [
            (
                "",
                &[("reference", "r.io/m:v1")][..],
                "target_path is missing",
            ),
            (
                "/etc/kubernetes",
                &[("reference", "r.io/m:v1")][..],
                "not under",
            ),
            (
                "/var/lib/kubelet/pods/../../../etc",
                &[("reference", "r.io/m:v1")][..],
                "not under",
            ),
            (
                "var/lib/kubelet/pods/u/m",
                &[("reference", "r.io/m:v1")][..],
                "not under",
            ),
            (POD, &[EPHEMERAL][..], "`reference` is missing"),
            (POD, &[("reference", "m:v1")][..], "names no registry"),
            (
                POD,
                &[("reference", "r.io/m:v1"), ("mode", "eager")][..],
                "mode",
            ),
            (
                POD,
                &[("reference", "r.io/m:v1"), ("pullPolicy", "Never")][..],
                "pullPolicy",
            ),
            (
                POD,
                &[("reference", "r.io/m:v1"), ("include", "a[")][..],
                "include glob",
            ),
        ] {
            let err = publish(&request(target, attrs), kubelet).unwrap_err();
            assert!(err.0.contains(why), "{target} {attrs:?}: {}", err.0);
        }
        let mut no_id = request(POD, &[("reference", "r.io/m:v1")]);
        no_id.volume_id.clear();
        assert!(publish(&no_id, kubelet)
            .unwrap_err()
            .0
            .contains("volume_id"));
        let mut no_cap = request(POD, &[("reference", "r.io/m:v1")]);
        no_cap.volume_capability = None;
        assert!(publish(&no_cap, kubelet)
            .unwrap_err()
            .0
            .contains("volume_capability"));
    }

    #[test]
    fn a_persistent_volume_may_name_its_model_in_its_handle() {
        let mut req = request(POD, &[]);
        req.volume_id = "r.io/team/m@sha256:".to_string() + &"a".repeat(64);
        let v = publish(&req, Path::new("/var/lib/kubelet")).unwrap();
        assert_eq!(v.reference.repository, "team/m");
        assert!(!v.always, "a digest never floats");
    }

    #[test]
    fn latest_is_asked_again_unless_told_otherwise() {
        let kubelet = Path::new("/var/lib/kubelet");
        let v = publish(&request(POD, &[("reference", "r.io/m")]), kubelet).unwrap();
        assert!(v.always);
        let v = publish(
            &request(
                POD,
                &[
                    ("reference", "r.io/m:latest"),
                    ("pullPolicy", "IfNotPresent"),
                ],
            ),
            kubelet,
        )
        .unwrap();
        assert!(!v.always);
    }

    #[test]
    fn secrets_are_never_printed() {
        let s = Secret::Password {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{s:?}").contains("hunter2"));
        let s =
            Secret::DockerConfig(b"{\"auths\":{\"r.io\":{\"auth\":\"dTpodW50ZXIy\"}}}".to_vec());
        assert!(!format!("{s:?}").contains("dTpo"));
        assert!(s.credentials("r.io").unwrap().is_some());
        assert!(s.credentials("other.io").unwrap().is_none());
    }
}
