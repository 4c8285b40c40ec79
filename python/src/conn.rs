//! `Connection`: how to reach registries (the CLI's global flags), built by the Python half
//! from keyword arguments and the same environment variables the CLI reads.

use std::path::PathBuf;
use std::time::Duration;

use hoist::registry::auth::CredentialOptions;
use hoist::registry::TransportOptions;
use hoist::transfer::fetch::FetchOptions;
use hoist::{Context, Settings};
use pyo3::prelude::*;

#[pyclass(frozen, module = "hoist._native")]
pub struct Connection {
    settings: Settings,
}

#[pymethods]
impl Connection {
    #[new]
    #[pyo3(signature = (store, plain_http, insecure, ca_file, username, password,
        registry_config, mirrors, mirrors_config, stall_timeout))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        store: Option<PathBuf>,
        plain_http: Option<bool>,
        insecure: bool,
        ca_file: Option<PathBuf>,
        username: Option<String>,
        password: Option<String>,
        registry_config: Option<PathBuf>,
        mirrors: Vec<String>,
        mirrors_config: Option<PathBuf>,
        stall_timeout: f64,
    ) -> Connection {
        Connection {
            settings: Settings {
                store,
                transport: TransportOptions {
                    plain_http,
                    insecure,
                    ca_file,
                    max_connections: hoist::transfer::fetch::DEFAULT_MAX_CONNECTIONS,
                    connect_timeout: None,
                    read_timeout: None,
                },
                credentials: CredentialOptions {
                    username,
                    password,
                    registry_config,
                },
                mirrors,
                mirrors_config,
                stall_timeout: Duration::from_secs_f64(stall_timeout.max(1.0)),
            },
        }
    }
}

impl Connection {
    pub fn context(&self) -> Context {
        Context::new(self.settings.clone())
    }

    /// The download engine's options for a call: its connections and range size, this
    /// connection's stall timeout, and the CLI's default retries (the package has no knob).
    pub fn fetch_options(&self, max_connections: usize, range_size: Option<u64>) -> FetchOptions {
        let attempts = FetchOptions::default().retry.attempts;
        FetchOptions::new(
            max_connections,
            range_size,
            attempts,
            self.settings.stall_timeout,
        )
    }
}
