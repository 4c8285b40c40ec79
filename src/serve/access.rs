//! Access control for `hoist serve`: users from an htpasswd file (bcrypt, as Debian's
//! `htpasswd -B` writes), checked per request with Basic auth, or exchanged at `/token` for
//! short-lived bearer tokens scoped to repositories and actions (the flow Docker Hub and
//! distribution use). Anonymous reads can be allowed.
//!
//! Tokens are `base64url(claims).base64url(HMAC-SHA256(claims))` with a key made at start:
//! only this server issues and checks them, so no key distribution is needed.

use std::collections::HashMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap, StatusCode};
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
    users: HashMap<String, String>,
    mode: Mode,
    anonymous_read: bool,
    key: [u8; 32],
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    /// (repository, actions) pairs.
    access: Vec<(String, Vec<String>)>,
}

impl Access {
    pub fn from_htpasswd(path: &Path, mode: Mode, anonymous_read: bool) -> std::io::Result<Access> {
        let text = std::fs::read_to_string(path)?;
        let users = text
            .lines()
            .filter_map(|l| l.trim().split_once(':'))
            .map(|(u, h)| (u.to_string(), h.to_string()))
            .collect();
        let mut key = [0u8; 32];
        // Per-process key: uuid v4 comes from the OS RNG.
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Ok(Access {
            users,
            mode,
            anonymous_read,
            key,
        })
    }

    fn check_password(&self, user: &str, password: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|hash| bcrypt::verify(password, hash).unwrap_or(false))
    }

    fn basic_user(&self, headers: &HeaderMap) -> Option<Result<String, ()>> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let encoded = value.strip_prefix("Basic ")?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()?;
        let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
        Some(if self.check_password(user, password) {
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
                format!("Bearer realm=\"http://{host}/token\",service=\"hoist\"{scope}")
            }
        }
    }

    /// May this request `action` (`pull`/`push`) on `repository` (None: the `/v2/` ping)?
    /// `None` if so, else the refusal to send.
    pub fn authorize(
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
        if !has_auth && self.anonymous_read && action == "pull" {
            return None;
        }
        match self.mode {
            Mode::Basic => match self.basic_user(headers) {
                Some(Ok(_)) => None,
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
                    Some(
                        ApiError::new(
                            StatusCode::FORBIDDEN,
                            "DENIED",
                            format!("the token does not allow {action} on {repository}"),
                        )
                        .into_response(),
                    )
                }
            }
        }
    }

    /// `GET /token?service=…&scope=repository:<name>:<actions>`: a token for a known user
    /// (Basic auth), or an anonymous one carrying only what anonymous users may do.
    pub fn issue(&self, headers: &HeaderMap, scopes: &[String]) -> Response {
        let user = match self.basic_user(headers) {
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
            let granted: Vec<String> = actions
                .split(',')
                .filter(|a| matches!(*a, "pull" | "push"))
                .filter(|a| user.is_some() || (self.anonymous_read && *a == "pull"))
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
