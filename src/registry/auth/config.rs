//! Where credentials come from, first match wins:
//! 1. flags (`--username` with `--password-stdin`),
//! 2. `HOIST_USERNAME` / `HOIST_PASSWORD`,
//! 3. the Docker config: `--registry-config FILE`, else `$DOCKER_CONFIG/config.json`, else
//!    `~/.docker/config.json` — `credHelpers`, then `credsStore`, then `auths` — which is also
//!    the format of a Kubernetes image pull secret,
//! 4. podman's `$REGISTRY_AUTH_FILE`, `$XDG_RUNTIME_DIR/containers/auth.json`,
//!    `~/.config/containers/auth.json`.
//!
//! `hoist login` writes the same Docker config (through the configured helper if any).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{json, Value};

use super::{Credential, Credentials};

#[derive(Debug, Clone, Default)]
pub struct CredentialOptions {
    pub username: Option<String>,
    pub password: Option<String>,
    /// An explicit Docker-config file (ORAS's `--registry-config`).
    pub registry_config: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("credentials file {path}: {detail}")]
    File { path: PathBuf, detail: String },
    #[error("credential helper docker-credential-{helper} failed: {detail}")]
    Helper { helper: String, detail: String },
    #[error("{0}")]
    Incomplete(String),
}

/// Credentials for `registry` from the first source that has some (anonymous if none).
pub fn resolve(registry: &str, opts: &CredentialOptions) -> Result<Credentials, ConfigError> {
    match (&opts.username, &opts.password) {
        (Some(u), Some(p)) => {
            return Ok(Credentials::new(
                password(u, p),
                "the username and password given (--username/--password-stdin; username=/password= in Python)",
            ))
        }
        (Some(_), None) => {
            return Err(ConfigError::Incomplete(
                "--username needs a password: pass it with --password-stdin".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::Incomplete(
                "--password-stdin needs --username".into(),
            ))
        }
        _ => {}
    }
    if let (Ok(u), Ok(p)) = (
        std::env::var("HOIST_USERNAME"),
        std::env::var("HOIST_PASSWORD"),
    ) {
        return Ok(Credentials::new(
            password(&u, &p),
            "HOIST_USERNAME/HOIST_PASSWORD",
        ));
    }
    let docker = docker_config_path(opts);
    if let Some(found) = from_config_file(&docker, registry)? {
        return Ok(found);
    }
    if opts.registry_config.is_none() {
        for path in podman_auth_paths() {
            if let Some(found) = from_config_file(&path, registry)? {
                return Ok(found);
            }
        }
    }
    Ok(Credentials::anonymous())
}

/// The Docker config file that is read and that `login` writes.
pub fn docker_config_path(opts: &CredentialOptions) -> PathBuf {
    if let Some(p) = &opts.registry_config {
        return p.clone();
    }
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir).join("config.json");
    }
    home().join(".docker/config.json")
}

fn podman_auth_paths() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|v| !v.is_empty()) {
        paths.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        paths.push(PathBuf::from(dir).join("containers/auth.json"));
    }
    paths.push(home().join(".config/containers/auth.json"));
    paths
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

fn password(u: &str, p: &str) -> Credential {
    Credential::Password {
        username: u.to_string(),
        password: p.to_string(),
    }
}

/// `https://index.docker.io/v1/`, `http://host:5000`, `host:5000/` → the host as users type it.
pub fn normalize(key: &str) -> String {
    let key = key.trim();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        other => other.to_string(),
    }
}

fn read_json(path: &Path) -> Result<Option<Value>, ConfigError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ConfigError::File {
                path: path.to_path_buf(),
                detail: format!("not valid JSON: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ConfigError::File {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

fn from_config_file(path: &Path, registry: &str) -> Result<Option<Credentials>, ConfigError> {
    let Some(config) = read_json(path)? else {
        return Ok(None);
    };
    let source = path.display().to_string();
    let helper = config["credHelpers"]
        .as_object()
        .and_then(|m| m.iter().find(|(k, _)| normalize(k) == registry))
        .and_then(|(_, v)| v.as_str())
        .or_else(|| config["credsStore"].as_str())
        .filter(|h| !h.is_empty());
    if let Some(helper) = helper {
        if let Some(cred) = helper_get(helper, registry)? {
            return Ok(Some(Credentials::new(
                cred,
                format!("docker-credential-{helper} (from {source})"),
            )));
        }
    }
    from_auths(&config, registry, &source)
}

/// A Kubernetes pull secret's `.dockerconfigjson` (what a CSI request carries): only its
/// `auths` are read. A credential helper named in a Secret is never run: the Secret's author
/// does not choose programs for the node to execute.
pub fn from_pull_secret(json: &[u8], registry: &str) -> Result<Option<Credentials>, ConfigError> {
    let source = "the volume's pull secret".to_string();
    let config: Value = serde_json::from_slice(json).map_err(|e| ConfigError::File {
        path: PathBuf::from(".dockerconfigjson"),
        detail: format!("not valid JSON: {e}"),
    })?;
    from_auths(&config, registry, &source)
}

/// The `auths` entry for `registry` in a Docker config: an identity token, `auth`
/// (base64 of user:password), or username and password.
fn from_auths(
    config: &Value,
    registry: &str,
    source: &str,
) -> Result<Option<Credentials>, ConfigError> {
    let Some(entry) = config["auths"]
        .as_object()
        .and_then(|m| m.iter().find(|(k, _)| normalize(k) == registry))
        .map(|(_, v)| v)
    else {
        return Ok(None);
    };
    if let Some(token) = entry["identitytoken"].as_str().filter(|t| !t.is_empty()) {
        return Ok(Some(Credentials::new(
            Credential::IdentityToken(token.to_string()),
            source,
        )));
    }
    if let Some(auth) = entry["auth"].as_str().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(u, p)| (u.to_string(), p.to_string()))
            })
            .ok_or_else(|| ConfigError::File {
                path: PathBuf::from(source),
                detail: format!("the auth entry for {registry} is not base64 of user:password"),
            })?;
        return Ok(Some(Credentials::new(
            password(&decoded.0, &decoded.1),
            source,
        )));
    }
    if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
        return Ok(Some(Credentials::new(password(u, p), source)));
    }
    Ok(None)
}

/// `docker-credential-<helper> get`: the server on stdin, `{Username, Secret}` on stdout.
fn helper_get(helper: &str, registry: &str) -> Result<Option<Credential>, ConfigError> {
    let out = run_helper(helper, "get", registry)?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if msg.to_ascii_lowercase().contains("not found") {
            return Ok(None);
        }
        return Err(ConfigError::Helper {
            helper: helper.into(),
            detail: format!("`get` exited with {}", out.status),
        });
    }
    let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| ConfigError::Helper {
        helper: helper.into(),
        detail: format!("`get` printed no JSON: {e}"),
    })?;
    let (user, secret) = (
        v["Username"].as_str().unwrap_or(""),
        v["Secret"].as_str().unwrap_or(""),
    );
    Ok(match (user, secret) {
        (_, "") => None,
        ("<token>", token) => Some(Credential::IdentityToken(token.to_string())),
        (u, s) => Some(password(u, s)),
    })
}

fn run_helper(helper: &str, verb: &str, input: &str) -> Result<std::process::Output, ConfigError> {
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg(verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ConfigError::Helper {
            helper: helper.into(),
            detail: format!("cannot run {program}: {e}"),
        })?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .ok();
    child.wait_with_output().map_err(|e| ConfigError::Helper {
        helper: helper.into(),
        detail: e.to_string(),
    })
}

/// Save credentials for `registry` (after `login` checked them): through the configured
/// helper if there is one, else into `auths`. Returns where they went.
pub fn save(
    opts: &CredentialOptions,
    registry: &str,
    username: &str,
    secret: &str,
) -> Result<String, ConfigError> {
    let path = docker_config_path(opts);
    let mut config = read_json(&path)?.unwrap_or_else(|| json!({}));
    if let Some(helper) = configured_helper(&config, registry) {
        let input =
            json!({"ServerURL": registry, "Username": username, "Secret": secret}).to_string();
        let out = run_helper(&helper, "store", &input)?;
        if !out.status.success() {
            return Err(ConfigError::Helper {
                helper,
                detail: format!("`store` exited with {}", out.status),
            });
        }
        return Ok(format!("docker-credential-{helper}"));
    }
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}"));
    if !config["auths"].is_object() {
        config["auths"] = json!({});
    }
    config["auths"][registry] = json!({ "auth": auth });
    write_private(&path, &config)?;
    Ok(path.display().to_string())
}

/// Forget `registry`: through its helper, and from `auths`. Whether anything was removed.
pub fn erase(opts: &CredentialOptions, registry: &str) -> Result<bool, ConfigError> {
    let path = docker_config_path(opts);
    let Some(mut config) = read_json(&path)? else {
        return Ok(false);
    };
    let mut removed = false;
    if let Some(helper) = configured_helper(&config, registry) {
        removed |= run_helper(&helper, "erase", registry)?.status.success();
    }
    if let Some(auths) = config["auths"].as_object_mut() {
        let keys: Vec<String> = auths
            .keys()
            .filter(|k| normalize(k) == registry)
            .cloned()
            .collect();
        for k in keys {
            auths.remove(&k);
            removed = true;
        }
        write_private(&path, &config)?;
    }
    Ok(removed)
}

fn configured_helper(config: &Value, registry: &str) -> Option<String> {
    config["credHelpers"]
        .as_object()
        .and_then(|m| m.iter().find(|(k, _)| normalize(k) == registry))
        .and_then(|(_, v)| v.as_str())
        .or_else(|| config["credsStore"].as_str())
        .filter(|h| !h.is_empty())
        .map(str::to_string)
}

/// Write the config with mode 0600, atomically.
fn write_private(path: &Path, config: &Value) -> Result<(), ConfigError> {
    let err = |e: std::io::Error| ConfigError::File {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let how = crate::fsutil::Replace {
        durable: true,
        mode: Some(0o600),
    };
    let text = serde_json::to_string_pretty(config).expect("json");
    crate::fsutil::write_atomic(path, text.as_bytes(), how).map_err(err)
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_pull_secret_never_runs_a_credential_helper() {
        // A helper that does not exist: running it would be an error, not `None`.
        let secret = br#"{"credsStore":"hoist-never-run","credHelpers":{"r.io":"hoist-never-run"},"auths":{"q.io":{"username":"u","password":"p"}}}"#;
        assert!(from_pull_secret(secret, "r.io").unwrap().is_none());
        assert!(from_pull_secret(secret, "q.io").unwrap().is_some());
        assert!(from_pull_secret(b"not json", "q.io").is_err());
    }

    use super::*;

    #[test]
    fn normalizes_docker_config_keys() {
        assert_eq!(normalize("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalize("http://127.0.0.1:5000/"), "127.0.0.1:5000");
        assert_eq!(normalize("ghcr.io"), "ghcr.io");
    }

    #[test]
    fn reads_auths_and_identity_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"https://r.example":{"auth":"dTpw"},"acr.example":{"auth":"","identitytoken":"rt"}}}"#,
        )
        .unwrap();
        let c = from_config_file(&path, "r.example").unwrap().unwrap();
        assert!(
            matches!(c.credential, Some(Credential::Password { ref username, ref password }) if username == "u" && password == "p")
        );
        let c = from_config_file(&path, "acr.example").unwrap().unwrap();
        assert!(matches!(c.credential, Some(Credential::IdentityToken(ref t)) if t == "rt"));
        assert!(from_config_file(&path, "other").unwrap().is_none());
    }
}
