//! Access control for `hoist serve`: users from an htpasswd file (bcrypt, as Debian's
//! `htpasswd -B` writes), checked per request with Basic auth, or exchanged at `/token` for
//! short-lived bearer tokens scoped to repositories and actions (the flow Docker Hub and
//! distribution use). Anonymous reads can be allowed.
//!
//! Tokens are `base64url(claims).base64url(HMAC-SHA256(claims))` with a key made at start:
//! only this server issues and checks them, so no key distribution is needed.
//!
//! Who may do what comes from an access policy (`--access-policy`, TOML): users and groups,
//! repository patterns, and the actions `pull`, `push`, `delete`, applied alike to Basic and
//! token auth. Without a policy, every known user may pull and push everywhere and nobody may
//! delete. `/metrics` needs a known user.
//!
//! Password checks (bcrypt, ~50 ms of CPU) run on the blocking pool, on at most half the cores,
//! never on the async workers; an unknown user costs the same check against a dummy hash (no
//! user enumeration by timing); a password that passed is remembered (by its SHA-256, for a
//! minute) so Basic clients do not pay bcrypt on every request.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::ApiError;

const TOKEN_SECONDS: u64 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Basic,
    Token,
}

pub struct Access {
    users: std::sync::Arc<HashMap<String, String>>,
    mode: Mode,
    anonymous_read: bool,
    key: [u8; 32],
    policy: Policy,
    /// Where clients get tokens; `None`: this server's `/token` on the request's host, with
    /// the scheme the server speaks.
    realm: Option<String>,
    tls: bool,
    /// SHA-256 of `user:password` pairs that passed, and when.
    passed: Mutex<HashMap<[u8; 32], Instant>>,
    bcrypt_slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// A bcrypt hash of a random password at the users' cost, checked for unknown users so
    /// that they cost the same as known ones.
    dummy: std::sync::Arc<String>,
}

/// An action a rule may grant.
pub const ACTIONS: [&str; 3] = ["pull", "push", "delete"];

const PASSED_TTL: Duration = Duration::from_secs(60);

/// The access policy file.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub groups: HashMap<String, Vec<String>>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleFile>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// User names, `group:NAME`, `*` (any known user) or `anonymous`.
    pub who: Vec<String>,
    /// Repository patterns: `team/*` (one level), `team/**` (any depth), `*` matches one.
    pub repositories: Vec<String>,
    pub actions: Vec<String>,
}

struct Rule {
    who: Vec<String>,
    repositories: globset::GlobSet,
    actions: Vec<String>,
}

struct Policy {
    groups: HashMap<String, Vec<String>>,
    /// `None`: the default (known users pull and push).
    rules: Option<Vec<Rule>>,
}

impl Policy {
    fn parse(file: PolicyFile) -> Result<Policy, String> {
        let mut rules = Vec::new();
        for (i, r) in file.rules.into_iter().enumerate() {
            let mut set = globset::GlobSetBuilder::new();
            for pattern in &r.repositories {
                set.add(
                    globset::GlobBuilder::new(pattern)
                        .literal_separator(true)
                        .build()
                        .map_err(|e| format!("rule {}: pattern {pattern:?}: {e}", i + 1))?,
                );
            }
            if let Some(bad) = r.actions.iter().find(|a| !ACTIONS.contains(&a.as_str())) {
                return Err(format!(
                    "rule {}: unknown action {bad:?} (pull, push, delete)",
                    i + 1
                ));
            }
            rules.push(Rule {
                who: r.who,
                repositories: set.build().map_err(|e| e.to_string())?,
                actions: r.actions,
            });
        }
        Ok(Policy {
            groups: file.groups,
            rules: Some(rules),
        })
    }

    /// May `user` (`None`: anonymous) do `action` on `repository`?
    fn allows(&self, user: Option<&str>, repository: &str, action: &str) -> bool {
        let Some(rules) = &self.rules else {
            return user.is_some() && matches!(action, "pull" | "push");
        };
        rules.iter().any(|r| {
            r.actions.iter().any(|a| a == action)
                && r.repositories.is_match(repository)
                && r.who.iter().any(|w| self.names(w, user))
        })
    }

    fn names(&self, who: &str, user: Option<&str>) -> bool {
        match (who, user) {
            ("anonymous", _) => true,
            ("*", Some(_)) => true,
            (w, Some(u)) => match w.strip_prefix("group:") {
                Some(g) => self.groups.get(g).is_some_and(|m| m.iter().any(|x| x == u)),
                None => w == u,
            },
            (_, None) => false,
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    /// (repository, actions) pairs.
    access: Vec<(String, Vec<String>)>,
}

impl Access {
    pub fn from_htpasswd(
        path: &Path,
        mode: Mode,
        anonymous_read: bool,
        policy: Option<&Path>,
        realm: Option<String>,
        tls: bool,
    ) -> std::io::Result<Access> {
        let policy = match policy {
            None => Policy {
                groups: HashMap::new(),
                rules: None,
            },
            Some(p) => {
                let text = std::fs::read_to_string(p)?;
                let file: PolicyFile = toml::from_str(&text).map_err(|e| {
                    std::io::Error::other(format!("access policy {}: {e}", p.display()))
                })?;
                Policy::parse(file).map_err(|e| {
                    std::io::Error::other(format!("access policy {}: {e}", p.display()))
                })?
            }
        };
        let text = std::fs::read_to_string(path)?;
        let users: HashMap<String, String> = text
            .lines()
            .filter_map(|l| l.trim().split_once(':'))
            .map(|(u, h)| (u.to_string(), h.to_string()))
            .collect();
        let mut key = [0u8; 32];
        // Per-process key: uuid v4 comes from the OS RNG.
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        let cost = users
            .values()
            .find_map(|h: &String| h.split('$').nth(2)?.parse::<u32>().ok())
            .unwrap_or(bcrypt::DEFAULT_COST);
        let dummy = bcrypt::hash(uuid::Uuid::new_v4().to_string(), cost)
            .map_err(|e| std::io::Error::other(format!("bcrypt: {e}")))?;
        Ok(Access {
            dummy: std::sync::Arc::new(dummy),
            users: std::sync::Arc::new(users),
            mode,
            anonymous_read,
            key,
            policy,
            realm,
            tls,
            passed: Mutex::new(HashMap::new()),
            // At most half the cores hash passwords: wrong passwords queue up instead of
            // taking the CPU from every other request.
            bcrypt_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
            )),
        })
    }

    /// Check a password off the async workers; unknown users cost one dummy check.
    async fn check_password(&self, user: &str, password: &str) -> bool {
        let key: [u8; 32] = {
            use sha2::Digest as _;
            let mut h = Sha256::new();
            h.update(self.key);
            h.update(user.as_bytes());
            h.update([0]);
            h.update(password.as_bytes());
            h.finalize().into()
        };
        {
            let mut passed = self.passed.lock().expect("auth cache");
            passed.retain(|_, at| at.elapsed() < PASSED_TTL);
            if passed.contains_key(&key) {
                return true;
            }
        }
        let Ok(_slot) = self.bcrypt_slots.clone().acquire_owned().await else {
            return false;
        };
        let (users, user, password) = (self.users.clone(), user.to_string(), password.to_string());
        let dummy = self.dummy.clone();
        let ok = tokio::task::spawn_blocking(move || match users.get(&user) {
            Some(hash) => bcrypt::verify(&password, hash).unwrap_or(false),
            None => {
                let _ = bcrypt::verify(&password, &dummy);
                false
            }
        })
        .await
        .unwrap_or(false);
        if ok {
            self.passed
                .lock()
                .expect("auth cache")
                .insert(key, Instant::now());
        }
        ok
    }

    async fn basic_user(&self, headers: &HeaderMap) -> Option<Result<String, ()>> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let encoded = value.strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        Some(if self.check_password(user, password).await {
            Ok(user.to_string())
        } else {
            Err(())
        })
    }

    fn challenge(&self, host: &str, scope: Option<&str>) -> String {
        match self.mode {
            Mode::Basic => "Basic realm=\"hoist\"".to_string(),
            Mode::Token => {
                let scope = scope.map(|s| format!(",scope=\"{s}\"")).unwrap_or_default();
                let realm = self.realm.clone().unwrap_or_else(|| {
                    let scheme = if self.tls { "https" } else { "http" };
                    format!("{scheme}://{host}/token")
                });
                format!("Bearer realm=\"{realm}\",service=\"hoist\"{scope}")
            }
        }
    }

    /// `/metrics` needs a known user (Basic, or a valid token).
    pub async fn authorize_metrics(&self, headers: &HeaderMap) -> Option<Response> {
        let known = match headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            Some(v) if v.starts_with("Bearer ") => self
                .verify(&v["Bearer ".len()..])
                .is_some_and(|c| !c.sub.is_empty()),
            Some(_) => matches!(self.basic_user(headers).await, Some(Ok(_))),
            None => false,
        };
        if known {
            return None;
        }
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "metrics need a user",
        )
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"hoist\""),
        );
        Some(response)
    }

    /// May the caller read `repository` through the Hub API? The credentials `HF_TOKEN`
    /// carries (`Authorization: Bearer …`) are one of serve's tokens, or `USER:PASSWORD` for
    /// a user of `--htpasswd`; Basic auth is taken too; none is the anonymous caller.
    pub async fn may_read(&self, headers: &HeaderMap, repository: &str) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return self.anonymous_read || self.policy.allows(None, repository, "pull");
        };
        if let Some(token) = value.strip_prefix("Bearer ") {
            if let Some(claims) = self.verify(token) {
                return claims
                    .access
                    .iter()
                    .any(|(r, actions)| r == repository && actions.iter().any(|a| a == "pull"));
            }
            return match token.split_once(':') {
                Some((user, password)) => {
                    self.check_password(user, password).await
                        && self.policy.allows(Some(user), repository, "pull")
                }
                None => false,
            };
        }
        match self.basic_user(headers).await {
            Some(Ok(user)) => self.policy.allows(Some(&user), repository, "pull"),
            _ => false,
        }
    }

    /// May this request `action` (`pull`/`push`) on `repository` (None: the `/v2/` ping)?
    /// `None` if so, else the refusal to send.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        repository: Option<&str>,
        action: &str,
    ) -> Option<Response> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let scope = repository.map(|r| format!("repository:{r}:{action}"));
        let deny = |code: &'static str, message: &str| {
            let mut response =
                ApiError::new(StatusCode::UNAUTHORIZED, code, message).into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                self.challenge(host, scope.as_deref())
                    .parse()
                    .expect("ascii"),
            );
            Some(response)
        };
        let has_auth = headers.contains_key(header::AUTHORIZATION);
        let denied = |who: &str, repository: &str| {
            Some(
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "DENIED",
                    format!("{who} may not {action} {repository}"),
                )
                .into_response(),
            )
        };
        if !has_auth {
            let anonymous_ok = match repository {
                Some(r) => {
                    (self.anonymous_read && action == "pull") || self.policy.allows(None, r, action)
                }
                None => self.anonymous_read,
            };
            if anonymous_ok {
                return None;
            }
            return deny("UNAUTHORIZED", "authentication required");
        }
        match self.mode {
            Mode::Basic => match self.basic_user(headers).await {
                Some(Ok(user)) => match repository {
                    None => None,
                    Some(r) if self.policy.allows(Some(&user), r, action) => None,
                    Some(r) => denied(&user, r),
                },
                _ => deny("UNAUTHORIZED", "authentication required"),
            },
            Mode::Token => {
                let token = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "));
                let Some(claims) = token.and_then(|t| self.verify(t)) else {
                    return deny("UNAUTHORIZED", "a valid bearer token is required");
                };
                // The `/v2/` ping needs a valid token, no scope.
                let repository = repository?;
                let allowed = claims
                    .access
                    .iter()
                    .any(|(r, actions)| r == repository && actions.iter().any(|a| a == action));
                if allowed {
                    None
                } else {
                    denied("the token", repository)
                }
            }
        }
    }

    /// `GET /token?service=…&scope=repository:<name>:<actions>`: a token for a known user
    /// (Basic auth), or an anonymous one carrying only what anonymous users may do.
    pub async fn issue(&self, headers: &HeaderMap, scopes: &[String]) -> Response {
        let user = match self.basic_user(headers).await {
            Some(Ok(user)) => Some(user),
            Some(Err(())) => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "wrong username or password",
                )
                .into_response()
            }
            None => None,
        };
        let mut access = Vec::new();
        for scope in scopes {
            let mut parts = scope.splitn(3, ':');
            let (Some("repository"), Some(name), Some(actions)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if !crate::reference::valid_repository(name) {
                continue;
            }
            let granted: Vec<String> = actions
                .split(',')
                .filter(|a| ACTIONS.contains(a))
                .filter(|a| {
                    self.policy.allows(user.as_deref(), name, a)
                        || (user.is_none() && self.anonymous_read && *a == "pull")
                })
                .map(str::to_string)
                .collect();
            access.push((name.to_string(), granted));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            sub: user.unwrap_or_default(),
            exp: now + TOKEN_SECONDS,
            access,
        };
        let token = self.sign(&claims);
        let body =
            serde_json::json!({"token": token, "access_token": token, "expires_in": TOKEN_SECONDS});
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length")
    }

    fn sign(&self, claims: &Claims) -> String {
        let payload = serde_json::to_vec(claims).expect("claims serialise");
        let mut mac = self.mac();
        mac.update(&payload);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}",
            b64.encode(&payload),
            b64.encode(mac.finalize().into_bytes())
        )
    }

    fn verify(&self, token: &str) -> Option<Claims> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (payload, signature) = token.split_once('.')?;
        let payload = b64.decode(payload).ok()?;
        let mut mac = self.mac();
        mac.update(&payload);
        mac.verify_slice(&b64.decode(signature).ok()?).ok()?;
        let claims: Claims = serde_json::from_slice(&payload).ok()?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        (claims.exp > now).then_some(claims)
    }
}
