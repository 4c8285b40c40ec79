//! Getting a bearer token from a registry's token service (the realm of its challenge):
//! `GET realm?service=…&scope=…` with Basic credentials (or none, for anonymous pulls), or the
//! OAuth2 `POST` with `grant_type=refresh_token` for an identity token.

use std::time::{Duration, Instant};

use super::Credential;
use crate::registry::RegistryError;

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// A token and when to stop using it (10 s before it expires, so no request carries a token
/// that dies on the way).
pub async fn fetch(
    http: &reqwest::Client,
    registry: &str,
    realm: &str,
    service: Option<&str>,
    scopes: &[String],
    credential: Option<&Credential>,
    source: Option<&str>,
) -> Result<(String, Instant), RegistryError> {
    let failed = |detail: String| RegistryError::TokenService {
        registry: registry.to_string(),
        realm: realm.to_string(),
        detail,
    };
    let url =
        reqwest::Url::parse(realm).map_err(|e| failed(format!("the realm is not a URL: {e}")))?;
    let request = token_request(http, url, service, scopes, credential);
    let resp = request
        .send()
        .await
        .map_err(|e| failed(crate::registry::error_chain(&e)))?;
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(RegistryError::Unauthorized {
            registry: registry.to_string(),
            repository: if scopes.is_empty() {
                "the registry".to_string()
            } else {
                scopes.join(" ")
            },
            credential_source: source.map(str::to_string),
        });
    }
    if !status.is_success() {
        return Err(failed(format!("HTTP {}", status.as_u16())));
    }
    let bytes = crate::registry::body::read_capped(resp, crate::registry::body::MAX_JSON_BODY)
        .await
        .ok_or_else(|| failed("the answer is over the 4 MiB limit or was cut off".into()))?;
    let body: TokenResponse = serde_json::from_slice(&bytes)
        .map_err(|e| failed(format!("the answer is not a token: {e}")))?;
    let token = body
        .token
        .or(body.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| failed("the answer holds no token".into()))?;
    // The spec's default lifetime is 60 s; refresh 10 s early.
    let lifetime = Duration::from_secs(body.expires_in.unwrap_or(60).max(11) - 10);
    Ok((token, Instant::now() + lifetime))
}

/// The token request: an OAuth2 refresh-token POST for an identity token, else Docker's GET
/// (with Basic credentials when there is a password).
fn token_request(
    http: &reqwest::Client,
    mut url: reqwest::Url,
    service: Option<&str>,
    scopes: &[String],
    credential: Option<&Credential>,
) -> reqwest::RequestBuilder {
    match credential {
        Some(Credential::IdentityToken(refresh)) => {
            let mut form = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.as_str()),
                ("client_id", "hoist"),
            ];
            if let Some(s) = service {
                form.push(("service", s));
            }
            // OAuth2 form: one space-separated `scope`.
            let joined = scopes.join(" ");
            if !scopes.is_empty() {
                form.push(("scope", joined.as_str()));
            }
            http.post(url).form(&form)
        }
        other => {
            {
                let mut q = url.query_pairs_mut();
                if let Some(s) = service {
                    q.append_pair("service", s);
                }
                // Docker's token protocol: one `scope` parameter per repository.
                for s in scopes {
                    q.append_pair("scope", s);
                }
            }
            let req = http.get(url);
            match other {
                Some(Credential::Password { username, password }) => {
                    req.basic_auth(username, Some(password))
                }
                _ => req,
            }
        }
    }
}
