//! Authentication: the distribution spec's challenge flow and where credentials come from.
//!
//! A request goes out with what we already know (nothing, Basic credentials, or a cached
//! bearer token for its scope). A 401 carries a `WWW-Authenticate` challenge: `Basic` means
//! send the credentials; `Bearer realm,service,scope` means get a token for the scope from
//! the realm — with the credentials, so the password only ever goes to the token service —
//! and send that. Tokens are cached per scope until they expire and refreshed on a 401.
//!
//! Hand-written: no maintained Rust crate does the registry token dance against arbitrary
//! registries (the OCI client crates bundle it with their own HTTP and types).

mod challenge;
pub mod config;
mod token;

pub use challenge::Challenge;
pub use config::{resolve, CredentialOptions};

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use base64::Engine as _;
use reqwest::header::HeaderValue;

use super::RegistryError;

/// A secret for one registry.
#[derive(Clone)]
pub enum Credential {
    Password {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken` in Docker config; ACR uses it).
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    // Secrets never reach logs or errors, not even through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Password { username, .. } => write!(
                f,
                "Password {{ username: {username:?}, password: <redacted> }}"
            ),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// What a request needs: pull, pull and push, or (a cross-repository mount) pull and push
/// here plus pull on the repository the blob is mounted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action<'a> {
    Pull,
    Push,
    Mount { from: &'a str },
}

impl Action<'_> {
    /// The token scopes, one per repository (sent as one `scope` parameter each).
    fn scopes(self, repository: &str) -> Vec<String> {
        match self {
            Action::Pull => vec![format!("repository:{repository}:pull")],
            Action::Push => vec![format!("repository:{repository}:pull,push")],
            Action::Mount { from } => vec![
                format!("repository:{repository}:pull,push"),
                format!("repository:{from}:pull"),
            ],
        }
    }

    /// The key a token for these scopes is cached under.
    fn scope(self, repository: &str) -> String {
        self.scopes(repository).join(" ")
    }
}

/// Credentials plus what the registry told us, shared by all requests to one registry.
#[derive(Debug, Default)]
pub struct Credentials {
    credential: Option<Credential>,
    /// Where the credential came from, for error messages (`~/.docker/config.json`, ...).
    pub source: Option<String>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    challenge: Option<Challenge>,
    tokens: HashMap<String, (String, Instant)>,
}

impl Credentials {
    pub fn anonymous() -> Self {
        Self::default()
    }

    pub fn new(credential: Credential, source: impl Into<String>) -> Self {
        Credentials {
            credential: Some(credential),
            source: Some(source.into()),
            ..Default::default()
        }
    }

    /// The `Authorization` header for a request, fetching a token if the registry asked for
    /// bearer tokens and none is cached for this scope.
    pub(crate) async fn header(
        &self,
        http: &reqwest::Client,
        registry: &str,
        base: &reqwest::Url,
        repository: &str,
        action: Action<'_>,
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let challenge = self.state.lock().expect("auth lock").challenge.clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => Ok(self.basic()),
            Some(Challenge::Bearer { realm, service }) => {
                let scopes = if repository.is_empty() {
                    Vec::new()
                } else {
                    action.scopes(repository)
                };
                let key = scopes.join(" ");
                if let Some((token, expires)) =
                    self.state.lock().expect("auth lock").tokens.get(&key)
                {
                    if *expires > Instant::now() {
                        return Ok(Some(bearer(token)));
                    }
                }
                check_realm(registry, base, &realm, self.credential.is_some())?;
                let (token, expires) = token::fetch(
                    http,
                    registry,
                    &realm,
                    service.as_deref(),
                    &scopes,
                    self.credential.as_ref(),
                    self.source.as_deref(),
                )
                .await?;
                let header = bearer(&token);
                self.state
                    .lock()
                    .expect("auth lock")
                    .tokens
                    .insert(key, (token, expires));
                Ok(Some(header))
            }
        }
    }

    /// Learn from a 401: remember the scheme and drop the token that was refused. Returns
    /// whether one retry could succeed: the request went out without authorization and we now
    /// have some to send, or its bearer token was refused (it may just have expired).
    pub(crate) fn on_unauthorized(
        &self,
        www_authenticate: Option<&str>,
        repository: &str,
        action: Action<'_>,
        authorized: bool,
    ) -> bool {
        let Some(challenge) = www_authenticate.and_then(Challenge::parse) else {
            return false;
        };
        let mut state = self.state.lock().expect("auth lock");
        state.tokens.remove(&action.scope(repository));
        let retry = match challenge {
            Challenge::Basic => !authorized && self.credential.is_some(),
            // Without a token, or with a refused one (it may have expired): one fresh token.
            // The caller retries once, so a fresh token refused again ends it.
            Challenge::Bearer { .. } => true,
        };
        state.challenge = Some(challenge);
        retry
    }

    fn basic(&self) -> Option<HeaderValue> {
        match &self.credential {
            Some(Credential::Password { username, password }) => {
                let encoded = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{password}"));
                let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
                value.set_sensitive(true);
                Some(value)
            }
            _ => None,
        }
    }
}

/// Credentials go to a token service only over TLS when the registry itself was reached
/// over TLS (a loopback realm aside): a challenge must not downgrade where the password goes.
fn check_realm(
    registry: &str,
    base: &reqwest::Url,
    realm: &str,
    sends_secret: bool,
) -> Result<(), RegistryError> {
    let refuse = |why| RegistryError::UnsafeRealm {
        registry: registry.to_string(),
        realm: realm.to_string(),
        why,
    };
    let url = reqwest::Url::parse(realm).map_err(|_| refuse("the realm is not a URL"))?;
    if !matches!(url.scheme(), "https" | "http") {
        return Err(refuse("the realm is not an http(s) URL"));
    }
    let loopback = url
        .host_str()
        .is_some_and(|h| crate::registry::transport::is_loopback(h.trim_matches(['[', ']'])));
    if sends_secret && base.scheme() == "https" && url.scheme() != "https" && !loopback {
        return Err(refuse(
            "the registry is reached over HTTPS but its token service is plain HTTP",
        ));
    }
    Ok(())
}

fn bearer(token: &str) -> HeaderValue {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_go_to_a_plain_http_realm_of_an_https_registry() {
        let https = reqwest::Url::parse("https://registry.example.com/").unwrap();
        let http = reqwest::Url::parse("http://registry.example.com/").unwrap();
        let plain_realm = "http://auth.example.com/token";
        let tls_realm = "https://auth.example.com/token";
        assert!(check_realm("r", &https, plain_realm, true).is_err());
        assert!(check_realm("r", &https, tls_realm, true).is_ok());
        // Anonymous token requests carry no secret; loopback realms are local.
        assert!(check_realm("r", &https, plain_realm, false).is_ok());
        assert!(check_realm("r", &https, "http://127.0.0.1:5000/token", true).is_ok());
        // A registry reached over plain HTTP was already chosen so by the user.
        assert!(check_realm("r", &http, plain_realm, true).is_ok());
        assert!(check_realm("r", &https, "file:///etc/passwd", true).is_err());
    }
}
