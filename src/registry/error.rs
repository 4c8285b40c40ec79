//! Registry errors, each phrased so a user knows what failed and what to try.

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot reach registry {registry}: {detail}; check the address and that it is running{}", if *.tls { " (use --plain-http for a registry without TLS)" } else { "" })]
    Connect {
        registry: String,
        detail: String,
        /// Nothing listens there (the host answered "refused"): asking again at once is
        /// pointless, so the first contact fails fast instead of running the retry schedule.
        refused: bool,
        /// The connection was to be TLS (the plain-HTTP hint helps only then).
        tls: bool,
    },
    /// DNS has no address for the host (NXDOMAIN or no A/AAAA records): a misspelt name,
    /// which no retry mends.
    #[error("registry host {host} does not resolve (DNS has no address for it); check the reference's spelling")]
    Unresolved { host: String },
    #[error("unauthorized: {registry} {} for {repository}; run `hoist login {registry}`", match credential_source {
        Some(source) => format!("rejected the credentials from {source}"),
        None => "requires credentials".to_string(),
    })]
    Unauthorized {
        registry: String,
        repository: String,
        credential_source: Option<String>,
    },
    #[error("cannot get a token for {registry} from its token service {realm}: {detail}")]
    TokenService {
        registry: String,
        realm: String,
        detail: String,
    },
    #[error(
        "denied: {registry} refused to {action} {repository}; check that your account may do that"
    )]
    Denied {
        registry: String,
        repository: String,
        action: &'static str,
    },
    #[error("not found: {what} on {registry}")]
    NotFound { registry: String, what: String },
    #[error("manifest {what} is {size} bytes, over the {limit}-byte limit; refusing it")]
    ManifestTooLarge { what: String, size: u64, limit: u64 },
    #[error("{method} {url} failed: HTTP {status}{message}")]
    Status {
        method: &'static str,
        url: String,
        status: u16,
        message: String,
    },
    #[error("{registry} is throttling requests (HTTP 429){}", retry_after.map(|s| format!("; it asked to retry after {s}s")).unwrap_or_default())]
    Throttled {
        registry: String,
        retry_after: Option<u64>,
    },
    #[error("{context} on {registry}: no answer within the time allowed ({detail})")]
    TimedOut {
        registry: String,
        context: String,
        detail: String,
    },
    #[error("{context} on {registry}: {detail}")]
    Transfer {
        registry: String,
        context: String,
        detail: String,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0} is not a valid repository name, tag or digest (distribution spec grammar)")]
    InvalidName(String),
    #[error("verification failed for manifest {what} on {registry}: asked for {expected}, the registry sent {actual}; refusing it")]
    ManifestDigest {
        registry: String,
        what: String,
        expected: String,
        actual: String,
    },
    #[error("{registry} sent a {what} over the {limit}-byte limit; refusing it")]
    BodyTooLarge {
        registry: String,
        what: &'static str,
        limit: u64,
    },
    #[error("refusing to send credentials for {registry} to {realm}: {why}")]
    UnsafeRealm {
        registry: String,
        realm: String,
        why: &'static str,
    },
}

impl RegistryError {
    /// Errors worth a retry on another connection or mirror.
    /// The host refused the connection: nothing listens at that address.
    pub fn is_refused(&self) -> bool {
        matches!(self, RegistryError::Connect { refused: true, .. })
    }

    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Connect { .. }
            | RegistryError::TimedOut { .. }
            | RegistryError::Transfer { .. }
            | RegistryError::Throttled { .. }
            | RegistryError::TokenService { .. } => true,
            RegistryError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// The host did not answer at all (refused, unreachable, or silent past a timeout):
    /// a mirror in this state is left for the next source rather than retried.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            RegistryError::Connect { .. }
                | RegistryError::TimedOut { .. }
                | RegistryError::Unresolved { .. }
        )
    }
}

/// The innermost causes of an error, joined, without the secret-bearing URL details.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        // hyper's "client error (Connect)" wrapper says nothing the next cause does not.
        if !s.starts_with("client error (") && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    // The outermost reqwest text repeats the URL; the causes say what went wrong.
    if parts.len() > 1 {
        parts.remove(0);
    }
    parts.join(": ")
}
