//! Private registries: distribution with htpasswd (Basic), distribution with token auth and a
//! token server of our own (Bearer, real JWTs the registry verifies), Docker and podman config
//! files, credential helpers, login and logout.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::*;

const AUTH: i32 = 3;
const PASSWORD: &str = "s3cret-Pa55";

/// A hoist invocation with its own Docker config folder and no ambient credentials.
fn hoist_with(h: &Hoist, docker_config: &Path) -> std::process::Command {
    let mut cmd = h.cmd();
    cmd.env("DOCKER_CONFIG", docker_config)
        .env("HOME", docker_config)
        .env_remove("HOIST_USERNAME")
        .env_remove("HOIST_PASSWORD")
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR");
    cmd
}

fn with_stdin(cmd: &mut std::process::Command, input: &str) -> Run {
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn assert_no_secret(r: &Run) {
    assert!(
        !r.stdout.contains(PASSWORD) && !r.stderr.contains(PASSWORD),
        "a secret was printed:\n{}\n{}",
        r.stdout,
        r.stderr
    );
}

fn htpasswd_registry() -> Registry {
    let out = std::process::Command::new("htpasswd")
        .args(["-Bbn", "alice", PASSWORD])
        .output()
        .expect("htpasswd (apache2-utils)");
    // The password file lives in the registry's own folder and goes with it.
    Registry::start_with_files(
        &[("htpasswd", &out.stdout)],
        "auth:\n  htpasswd: {realm: basic-realm, path: {root}/htpasswd}\n",
    )
}

#[test]
fn basic_auth_login_push_pull_logout() {
    let reg = htpasswd_registry();
    let h = Hoist::new();
    let cfg = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    let dir = src.path().to_str().unwrap();
    let reference = reg.reference("private:v1");

    // No credentials: refused, with what to do.
    run(hoist_with(&h, cfg.path()).args(["push", dir, &reference]))
        .fails_with(AUTH, &format!("run `hoist login {}`", reg.addr));
    // Wrong password: login refuses and saves nothing.
    let r = with_stdin(
        hoist_with(&h, cfg.path()).args(["login", &reg.addr, "-u", "alice", "--password-stdin"]),
        "wrong\n",
    );
    r.fails_with(AUTH, "rejected the credentials");
    assert!(!cfg.path().join("config.json").exists());

    let r = with_stdin(
        hoist_with(&h, cfg.path()).args([
            "login",
            &reg.addr,
            "-u",
            "alice",
            "--password-stdin",
            "--debug",
        ]),
        &format!("{PASSWORD}\n"),
    );
    let r = r.ok();
    assert_no_secret(&r);
    let config = cfg.path().join("config.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    let auth = saved["auths"][&reg.addr]["auth"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(auth)
            .unwrap(),
        format!("alice:{PASSWORD}").as_bytes()
    );

    let r = run(hoist_with(&h, cfg.path()).args(["push", dir, &reference, "--debug"])).ok();
    assert_no_secret(&r);
    let out = tempfile::tempdir().unwrap();
    let r = run(hoist_with(&h, cfg.path()).args([
        "pull",
        &reference,
        "-o",
        out.path().to_str().unwrap(),
        "--debug",
    ]))
    .ok();
    assert_no_secret(&r);
    assert_eq!(tree(src.path(), false), tree(out.path(), false));
    let r = run(hoist_with(&h, cfg.path()).args(["inspect", &reference, "--json"])).ok();
    assert_no_secret(&r);

    // A stale password in the config names where it came from.
    let bad = serde_json::json!({"auths": {&reg.addr: {"auth": base64::engine::general_purpose::STANDARD.encode("alice:old")}}});
    let stale = tempfile::tempdir().unwrap();
    std::fs::write(stale.path().join("config.json"), bad.to_string()).unwrap();
    run(hoist_with(&h, stale.path()).args([
        "pull",
        &reference,
        "-o",
        out.path().to_str().unwrap(),
    ]))
    .fails_with(
        AUTH,
        &format!(
            "rejected the credentials from {}",
            stale.path().join("config.json").display()
        ),
    );

    run(hoist_with(&h, cfg.path()).args(["logout", &reg.addr])).ok();
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert!(saved["auths"].get(&reg.addr).is_none());
    let again = tempfile::tempdir().unwrap();
    run(hoist_with(&h, cfg.path()).args([
        "pull",
        &reference,
        "-o",
        again.path().to_str().unwrap(),
    ]))
    .fails_with(AUTH, "requires credentials");
}

#[test]
fn credentials_from_flags_env_registry_config_and_podman() {
    let reg = htpasswd_registry();
    let h = Hoist::new();
    let empty = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    let reference = reg.reference("sources:v1");
    // Flags.
    let r = with_stdin(
        hoist_with(&h, empty.path()).args([
            "push",
            src.path().to_str().unwrap(),
            &reference,
            "-u",
            "alice",
            "--password-stdin",
        ]),
        PASSWORD,
    );
    r.ok();
    let pull = |cmd: &mut std::process::Command| {
        let out = tempfile::tempdir().unwrap();
        run(cmd.args(["pull", &reference, "-o", out.path().to_str().unwrap()])).ok();
        assert_eq!(tree(src.path(), false), tree(out.path(), false));
    };
    // Environment.
    pull(
        hoist_with(&h, empty.path())
            .env("HOIST_USERNAME", "alice")
            .env("HOIST_PASSWORD", PASSWORD),
    );
    // A mounted Kubernetes pull secret (.dockerconfigjson) through --registry-config.
    let secret = empty.path().join("pull-secret.json");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("alice:{PASSWORD}"));
    std::fs::write(
        &secret,
        serde_json::json!({"auths": {format!("http://{}", reg.addr): {"auth": auth}}}).to_string(),
    )
    .unwrap();
    pull(hoist_with(&h, empty.path()).args(["--registry-config", secret.to_str().unwrap()]));
    // podman's auth.json.
    pull(hoist_with(&h, empty.path()).env("REGISTRY_AUTH_FILE", &secret));
}

/// A `docker-credential-test` helper on PATH that keeps its secrets in a JSON file.
fn credential_helper(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let store = dir.join("helper-store.json");
    let script = format!(
        r#"#!/usr/bin/env python3
import json, os, sys
store = {store:?}
data = json.load(open(store)) if os.path.exists(store) else {{}}
verb, text = sys.argv[1], sys.stdin.read().strip()
if verb == "get":
    if text not in data:
        print("credentials not found in native keychain"); sys.exit(1)
    print(json.dumps({{"ServerURL": text, "Username": data[text][0], "Secret": data[text][1]}}))
elif verb == "store":
    req = json.loads(text); data[req["ServerURL"]] = [req["Username"], req["Secret"]]
    json.dump(data, open(store, "w"))
elif verb == "erase":
    data.pop(text, None); json.dump(data, open(store, "w"))
"#
    );
    let path = bin.join("docker-credential-test");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn credential_helpers_through_cred_helpers_and_creds_store() {
    let reg = htpasswd_registry();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    let reference = reg.reference("helped:v1");
    for config in [
        serde_json::json!({"credHelpers": {&reg.addr: "test"}}),
        serde_json::json!({"credsStore": "test"}),
    ] {
        let cfg = tempfile::tempdir().unwrap();
        let bin = credential_helper(cfg.path());
        let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
        std::fs::write(cfg.path().join("config.json"), config.to_string()).unwrap();
        let r = with_stdin(
            hoist_with(&h, cfg.path()).env("PATH", &path).args([
                "login",
                &reg.addr,
                "-u",
                "alice",
                "--password-stdin",
            ]),
            PASSWORD,
        );
        assert!(r.ok().stdout.contains("docker-credential-test"));
        let helper_store = std::fs::read_to_string(cfg.path().join("helper-store.json")).unwrap();
        assert!(
            helper_store.contains(&reg.addr),
            "the helper stored the login: {helper_store}"
        );
        let config_text = std::fs::read_to_string(cfg.path().join("config.json")).unwrap();
        assert!(
            !config_text.contains("auths"),
            "no password in config.json when a helper is configured"
        );
        run(hoist_with(&h, cfg.path()).env("PATH", &path).args([
            "push",
            src.path().to_str().unwrap(),
            &reference,
        ]))
        .ok();
        run(hoist_with(&h, cfg.path())
            .env("PATH", &path)
            .args(["logout", &reg.addr]))
        .ok();
        run(hoist_with(&h, cfg.path()).env("PATH", &path).args([
            "push",
            src.path().to_str().unwrap(),
            &reference,
        ]))
        .fails_with(AUTH, "requires credentials");
    }
}

/// What the token server saw.
#[derive(Debug, Clone)]
struct TokenRequest {
    scope: String,
    user: Option<String>,
    post: bool,
}

/// A token service for distribution's `auth: token`: real RS256 JWTs with an x5c chain the
/// registry verifies against its root bundle. Tokens say `expires_in: 300` but are only
/// valid for `valid_for` (the registry allows 60 s of clock skew), so a client that does
/// not handle a 401 mid-pull fails.
struct TokenServer {
    addr: String,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    dir: tempfile::TempDir,
}

impl TokenServer {
    fn start(valid_for: i64) -> TokenServer {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let ok = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=hoist-test",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success());
        let der = std::process::Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .unwrap()
            .stdout;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (key, der, seen) = (key.clone(), der.clone(), seen.clone());
                std::thread::spawn(move || serve_token(stream, &key, &der, valid_for, &seen));
            }
        });
        TokenServer {
            addr,
            requests,
            dir,
        }
    }

    fn registry(&self) -> Registry {
        Registry::start_with(&format!(
            "auth:\n  token: {{realm: \"http://{}/token\", service: hoist-test, issuer: hoist-issuer, rootcertbundle: {}}}\n",
            self.addr,
            self.dir.path().join("cert.pem").display()
        ))
    }

    fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve_token(
    stream: std::net::TcpStream,
    key: &Path,
    der: &[u8],
    valid_for: i64,
    seen: &Mutex<Vec<TokenRequest>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let (mut user, mut length) = (None, 0usize);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        match name.to_ascii_lowercase().as_str() {
            "authorization" => {
                let b64 = value.trim().strip_prefix("Basic ").unwrap_or("");
                let decoded = String::from_utf8(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap_or_default(),
                )
                .unwrap_or_default();
                if decoded == format!("alice:{PASSWORD}") {
                    user = Some("alice".to_string());
                } else if !decoded.is_empty() {
                    user = Some("<wrong>".to_string());
                }
            }
            "content-length" => length = value.trim().parse().unwrap_or(0),
            _ => {}
        }
    }
    let post = request_line.starts_with("POST");
    let query = if post {
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap()
    } else {
        request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .split_once('?')
            .map(|(_, q)| q.to_string())
            .unwrap_or_default()
    };
    let params: Vec<(String, String)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.replace('+', " ")
                    .replace("%3A", ":")
                    .replace("%2C", ",")
                    .replace("%2F", "/"),
            )
        })
        .collect();
    let param = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    if post && param("grant_type").as_deref() == Some("refresh_token") {
        user = (param("refresh_token").as_deref() == Some("good-refresh-token"))
            .then(|| "alice".to_string())
            .or(Some("<wrong>".into()));
    }
    let scope = param("scope").unwrap_or_default();
    seen.lock().unwrap().push(TokenRequest {
        scope: scope.clone(),
        user: user.clone(),
        post,
    });
    let mut out = stream;
    if user.as_deref() == Some("<wrong>") {
        let _ = out.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        return;
    }
    // Only alice gets access; anonymous tokens carry none.
    let access: Vec<serde_json::Value> = match (
        user.as_deref(),
        scope.split(':').collect::<Vec<_>>().as_slice(),
    ) {
        (Some("alice"), ["repository", name, actions]) => {
            vec![
                serde_json::json!({"type": "repository", "name": name, "actions": actions.split(',').collect::<Vec<_>>()}),
            ]
        }
        _ => Vec::new(),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [base64::engine::general_purpose::STANDARD.encode(der)]});
    let claims = serde_json::json!({
        "iss": "hoist-issuer", "sub": user.clone().unwrap_or_default(), "aud": "hoist-test",
        "exp": now - 60 + valid_for, "nbf": now - 5, "iat": now - 5,
        "jti": format!("{now}-{}", seen.lock().unwrap().len()), "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut sign = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    sign.stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())
        .unwrap();
    let signature = sign.wait_with_output().unwrap().stdout;
    let token = format!("{signing_input}.{}", b64(&signature));
    let body =
        serde_json::json!({"token": token, "access_token": token, "expires_in": 300}).to_string();
    let _ = write!(out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
}

#[test]
fn bearer_tokens_scopes_and_the_password_goes_only_to_the_realm() {
    let tokens = TokenServer::start(300);
    let reg = tokens.registry();
    // Watch what reaches the registry itself.
    let wan = Wan::start(&reg.addr, hoist::wan::Link::default());
    let h = Hoist::new();
    let cfg = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    let reference = wan.reference("team/model:v1");
    run(hoist_with(&h, cfg.path()).args(["push", src.path().to_str().unwrap(), &reference]))
        .fails_with(AUTH, "requires credentials");
    let login = with_stdin(
        hoist_with(&h, cfg.path()).args(["login", &wan.addr(), "-u", "alice", "--password-stdin"]),
        PASSWORD,
    );
    login.ok();
    with_stdin(
        hoist_with(&h, cfg.path()).args(["login", &wan.addr(), "-u", "alice", "--password-stdin"]),
        "nope",
    )
    .fails_with(AUTH, "rejected");
    run(hoist_with(&h, cfg.path()).args(["push", src.path().to_str().unwrap(), &reference])).ok();
    let scopes: Vec<String> = tokens.requests().iter().map(|r| r.scope.clone()).collect();
    assert!(
        scopes.contains(&"repository:team/model:pull,push".to_string()),
        "push asked for push scope: {scopes:?}"
    );
    assert!(
        tokens
            .requests()
            .iter()
            .filter(|r| r.scope.ends_with(":pull,push"))
            .all(|r| r.user.as_deref() == Some("alice")),
        "the credentials went to the token service"
    );
    let out = tempfile::tempdir().unwrap();
    run(hoist_with(&h, cfg.path()).args(["pull", &reference, "-o", out.path().to_str().unwrap()]))
        .ok();
    assert_eq!(tree(src.path(), false), tree(out.path(), false));
    assert!(tokens
        .requests()
        .iter()
        .any(|r| r.scope == "repository:team/model:pull"));
    assert_eq!(
        wan.proxy
            .as_ref()
            .unwrap()
            .stats
            .basic_auth_requests
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the password reached the registry"
    );
}

#[test]
fn expired_tokens_are_refreshed_mid_pull() {
    let tokens = TokenServer::start(2); // valid 2 s, announced as 300 s
    let reg = tokens.registry();
    let h = Hoist::new();
    let cfg = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    large_model(src.path(), 24);
    // Fetched after the weights (files go in path order, one at a time below): each is a
    // new request, made once the first token has expired.
    for i in 0..4 {
        std::fs::write(
            src.path().join(format!("zz-extra-{i}.json")),
            format!("{{\"n\":{i}}}"),
        )
        .unwrap();
    }
    let alice = |cmd: &mut std::process::Command| {
        cmd.env("HOIST_USERNAME", "alice")
            .env("HOIST_PASSWORD", PASSWORD);
    };
    let mut push = hoist_with(&h, cfg.path());
    alice(&mut push);
    run(push.args([
        "push",
        src.path().to_str().unwrap(),
        &reg.reference("slow:v1"),
    ]))
    .ok();
    // 4 MB/s per connection, 2 connections, one blob at a time: the 24 MiB of weights take
    // about 3 s, so the pull outlives its first token. A request streams a run of ranges,
    // so the new token is needed by the requests that start later.
    let wan = Wan::start(
        &reg.addr,
        hoist::wan::Link {
            rate: 4_000_000,
            ..Default::default()
        },
    );
    let before = tokens.requests().len();
    let out = tempfile::tempdir().unwrap();
    let mut pull = hoist_with(&h, cfg.path());
    alice(&mut pull);
    let r = run(pull.args([
        "pull",
        &wan.reference("slow:v1"),
        "-o",
        out.path().to_str().unwrap(),
        "--max-connections",
        "2",
        "--concurrency",
        "1",
        "--range-size",
        "1MiB",
    ]));
    r.ok();
    assert_eq!(tree(src.path(), false), tree(out.path(), false));
    let pulls = tokens.requests()[before..]
        .iter()
        .filter(|t| t.scope.ends_with(":pull"))
        .count();
    assert!(
        pulls >= 2,
        "the pull ran past its token without getting a new one ({pulls} token requests)"
    );
}

#[test]
fn identity_tokens_use_the_oauth2_refresh_grant() {
    let tokens = TokenServer::start(300);
    let reg = tokens.registry();
    let h = Hoist::new();
    let src = tempfile::tempdir().unwrap();
    small_model(src.path());
    let good = tempfile::tempdir().unwrap();
    std::fs::write(good.path().join("config.json"), serde_json::json!({"auths": {&reg.addr: {"auth": "", "identitytoken": "good-refresh-token"}}}).to_string()).unwrap();
    run(hoist_with(&h, good.path()).args([
        "push",
        src.path().to_str().unwrap(),
        &reg.reference("acr/model:v1"),
    ]))
    .ok();
    assert!(
        tokens.requests().iter().all(|r| r.post),
        "identity tokens are exchanged by POST"
    );
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(
        bad.path().join("config.json"),
        serde_json::json!({"auths": {&reg.addr: {"identitytoken": "revoked"}}}).to_string(),
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    run(hoist_with(&h, bad.path()).args([
        "pull",
        &reg.reference("acr/model:v1"),
        "-o",
        out.path().to_str().unwrap(),
    ]))
    .fails_with(AUTH, "rejected the credentials from");
}

#[test]
fn an_unreachable_token_service_is_named() {
    let dead = format!("127.0.0.1:{}", free_port());
    let tokens = TokenServer::start(300);
    let reg = Registry::start_with(&format!(
        "auth:\n  token: {{realm: \"http://{dead}/token\", service: hoist-test, issuer: hoist-issuer, rootcertbundle: {}}}\n",
        tokens.dir.path().join("cert.pem").display()
    ));
    let h = Hoist::new();
    let cfg = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    run(hoist_with(&h, cfg.path()).args([
        "pull",
        &reg.reference("m:v1"),
        "-o",
        out.path().to_str().unwrap(),
    ]))
    .fails_with(5, &format!("token service http://{dead}/token"));
}
