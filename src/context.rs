//! From settings to library objects, in one place (as ripgrep turns flags into plain data and
//! then builds its objects once): the local store, a registry client with its credentials and
//! transport, a registry's mirrors, and the [`Target`] a reference names.
//!
//! The CLI fills [`Settings`] from its flags and environment; a library user fills it by hand.
//! Everything that decides how hoist reaches a registry lives here, so `hoist pull`, `hoist
//! mount`, `hoist serve --upstream` and a Rust caller reach it the same way.

use std::path::PathBuf;
use std::time::Duration;

use crate::hub::HubRepo;
use crate::reference::Reference;
use crate::registry::auth::{self, CredentialOptions};
use crate::registry::mirrors::{replica_hosts, Mirror, MirrorConfig, MirrorError};
use crate::registry::{Credentials, RegistryClient, TransportOptions, MIRROR_CONNECT};
use crate::store::{Store, StoreError};
use crate::transfer::import::{HubSource, ImportSource};
use crate::transfer::{Target, TransferError};
use crate::Error;

/// How to reach registries and where the local store is: plain data, no I/O.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The local store; `None`: [`Store::default_root`].
    pub store: Option<PathBuf>,
    /// TLS and plain-HTTP choices for every registry.
    pub transport: TransportOptions,
    /// Where credentials come from.
    pub credentials: CredentialOptions,
    /// Mirror specs tried before the registry, in order: `host[:port]` or replicas joined by
    /// commas, each optionally with `http://` or `https://`.
    pub mirrors: Vec<String>,
    /// A TOML file mapping registries to more mirrors.
    pub mirrors_config: Option<PathBuf>,
    /// How long a source may send nothing before its connection is dropped.
    pub stall_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            store: None,
            transport: TransportOptions {
                max_connections: crate::transfer::fetch::DEFAULT_MAX_CONNECTIONS,
                ..Default::default()
            },
            credentials: CredentialOptions::default(),
            mirrors: Vec::new(),
            mirrors_config: None,
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// Builds the library objects [`Settings`] describe.
#[derive(Debug, Clone, Default)]
pub struct Context {
    settings: Settings,
}

impl Context {
    pub fn new(settings: Settings) -> Context {
        Context { settings }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn store_root(&self) -> PathBuf {
        self.settings
            .store
            .clone()
            .unwrap_or_else(Store::default_root)
    }

    /// The local store, created if missing (push, pull, serve write to it).
    pub fn store(&self) -> Result<Store, Error> {
        Ok(Store::open(self.store_root())?)
    }

    /// Where a push remembers which registry repositories got which blobs (to mount them
    /// from later): the local store, for a push to a registry; nothing for a push into the
    /// store itself. A store that cannot open costs only the memory.
    pub fn push_memory(&self, target: &Target) -> Option<Store> {
        target.is_remote().then(|| self.store().ok()).flatten()
    }

    /// The local store for commands that only read or change what is there (`list`, `rm`,
    /// `tag`): a mistyped `--store` is an error, not a new empty store.
    pub fn existing_store(&self) -> Result<Store, Error> {
        let root = self.store_root();
        if !root.join("oci-layout").is_file() {
            return Err(StoreError::Missing { root }.into());
        }
        self.store()
    }

    /// The credentials for `registry` (flags, environment, Docker or podman config).
    pub fn credentials(&self, registry: &str) -> Result<Credentials, Error> {
        Ok(auth::resolve(registry, &self.settings.credentials)?)
    }

    /// A client for `registry` with its credentials.
    pub fn client(&self, registry: &str) -> Result<RegistryClient, Error> {
        let creds = self.credentials(registry)?;
        Ok(RegistryClient::new(
            registry,
            &self.settings.transport,
            creds,
        )?)
    }

    /// The import source `source` names by its scheme (`hf://…`), or `None` when it names
    /// an OCI artifact. The one place a scheme is matched: a new source is an arm here.
    pub fn import_source(&self, source: &str) -> Result<Option<Box<dyn ImportSource>>, Error> {
        if HubRepo::is_hub(source) {
            let repo = HubRepo::parse(source).map_err(TransferError::from)?;
            return Ok(Some(Box::new(HubSource::new(self.hub()?, repo))));
        }
        Ok(None)
    }

    /// The Hugging Face Hub client, set up as `huggingface_hub` would be (`HF_ENDPOINT`,
    /// `HF_TOKEN`, the token file) over this context's TLS settings.
    fn hub(&self) -> Result<crate::hub::HubClient, Error> {
        let settings =
            crate::hub::HubSettings::from_env().map_err(crate::transfer::TransferError::from)?;
        Ok(
            crate::hub::HubClient::new(settings, &self.settings.transport)
                .map_err(crate::transfer::TransferError::from)?,
        )
    }

    /// What `reference` names: the local store or a registry repository with its mirrors.
    pub fn target(&self, reference: &Reference) -> Result<Target, Error> {
        self.target_with(reference, None)
    }

    /// [`Context::target`], with `credentials` for the registry in place of the configured
    /// ones when given (a CSI volume's pull secret); mirrors keep their own.
    pub fn target_with(
        &self,
        reference: &Reference,
        credentials: Option<Credentials>,
    ) -> Result<Target, Error> {
        let repository = reference.repository.clone();
        match &reference.registry {
            None => Ok(Target::Local {
                store: self.store()?,
                repository,
            }),
            Some(registry) => {
                let client = match credentials {
                    Some(creds) => RegistryClient::new(registry, &self.settings.transport, creds)?,
                    None => self.client(registry)?,
                };
                Ok(Target::Remote {
                    client,
                    repository,
                    mirrors: self.mirrors(registry)?,
                })
            }
        }
    }

    /// The mirrors of `registry` (the settings' list first, then the mirrors file), each host
    /// a client that fails fast: the registry itself is behind them.
    pub fn mirrors(&self, registry: &str) -> Result<Vec<Mirror>, Error> {
        let mut specs: Vec<String> = self.settings.mirrors.clone();
        if let Some(path) = &self.settings.mirrors_config {
            let config = MirrorConfig::load(path)?;
            specs.extend(config.mirrors_for(registry).iter().cloned());
        }
        specs
            .iter()
            // An empty entry (HOIST_MIRROR="" in a manifest) means no mirror.
            .filter(|spec| !spec.trim().is_empty())
            .map(|spec| self.mirror(spec))
            .collect()
    }

    fn mirror(&self, spec: &str) -> Result<Mirror, Error> {
        let stall = self.settings.stall_timeout;
        let opts = TransportOptions {
            connect_timeout: Some(MIRROR_CONNECT.min(stall)),
            read_timeout: Some(stall),
            ..self.settings.transport.clone()
        };
        let replicas = replica_hosts(spec)
            .into_iter()
            .map(|entry| {
                // `http://host` or `https://host` pins the scheme of one mirror (a node cache
                // on the node's address speaks plain HTTP; the origin may not).
                let (host, plain_http) = match entry.split_once("://") {
                    Some(("http", host)) => (host, Some(true)),
                    Some(("https", host)) => (host, Some(false)),
                    Some(_) => return Err(MirrorError::Scheme(entry.to_string()).into()),
                    None => (entry, opts.plain_http),
                };
                let opts = TransportOptions {
                    plain_http,
                    ..opts.clone()
                };
                let creds = self.credentials(host)?;
                Ok(RegistryClient::new(host, &opts, creds)?.fail_fast())
            })
            .collect::<Result<Vec<_>, Error>>()?;
        if replicas.is_empty() {
            return Err(MirrorError::Empty(spec.to_string()).into());
        }
        Ok(Mirror::new(replicas))
    }
}
