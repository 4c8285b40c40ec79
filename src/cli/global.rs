//! The global flags, and the one place they become library objects: a [`Context`] (store,
//! registries, mirrors) and a [`Ui`] (how to show progress).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use hoist::context::{Context, Settings};
use hoist::registry::auth::CredentialOptions;
use hoist::registry::TransportOptions;
use hoist::Error;

#[derive(Args, Clone)]
pub struct GlobalArgs {
    /// Local store folder (the embedded default registry).
    #[arg(long, global = true, env = "HOIST_HOME", value_name = "DIR")]
    store: Option<PathBuf>,
    /// Speak plain HTTP to the registry (automatic for localhost and 127.0.0.1).
    #[arg(long, global = true)]
    plain_http: bool,
    /// Accept any TLS certificate.
    #[arg(long, global = true)]
    insecure: bool,
    /// An extra CA certificate (PEM) to trust.
    #[arg(long, global = true, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Progress output: auto (bars on a terminal, JSON lines otherwise), bars, plain (a line
    /// per file and one every few seconds, anywhere), json or none.
    #[arg(long, global = true, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// Print only the result.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Registry username (with --password-stdin); else HOIST_USERNAME/HOIST_PASSWORD, then
    /// the Docker config (credential helpers included), then podman's auth.json.
    #[arg(long, short = 'u', global = true, value_name = "USER")]
    username: Option<String>,
    /// Read the registry password (or token) from standard input.
    #[arg(long, global = true)]
    password_stdin: bool,
    /// A Docker-config JSON file to take credentials from and save them to (e.g. a mounted
    /// Kubernetes image pull secret's .dockerconfigjson); default $DOCKER_CONFIG/config.json
    /// or ~/.docker/config.json.
    #[arg(
        long,
        global = true,
        env = "HOIST_REGISTRY_CONFIG",
        value_name = "FILE"
    )]
    registry_config: Option<PathBuf>,
    /// A mirror of the registry to try first for reads (repeatable, in order; in
    /// $HOIST_MIRROR separated by spaces). Replicas of one cache are joined by commas
    /// (`cache-0:5000,cache-1:5000`): each blob is read from the replica its digest maps
    /// to. `http://` or `https://` before a host pins its scheme. A mirror that cannot be
    /// reached or stalls is left for the next source at once.
    #[arg(
        long,
        global = true,
        env = "HOIST_MIRROR",
        value_delimiter = ' ',
        value_name = "HOST[:PORT][,HOST[:PORT]...]"
    )]
    mirror: Vec<String>,
    /// TOML file mapping registries to mirrors (`[registries."host"] mirrors = [...]`).
    #[arg(long, global = true, env = "HOIST_MIRRORS_CONFIG", value_name = "FILE")]
    mirrors_config: Option<PathBuf>,
    /// Seconds a source may send nothing (no answer, no byte) before the connection is
    /// dropped: its range is retried, and a mirror is left for the next source at once.
    #[arg(
        long,
        global = true,
        default_value_t = 30,
        env = "HOIST_STALL_TIMEOUT",
        value_name = "SECS"
    )]
    stall_timeout: u64,
    /// Log debug details to stderr (never secrets).
    #[arg(long, global = true)]
    debug: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    Auto,
    Bars,
    Plain,
    Json,
    None,
}

/// How a command shows what it does.
#[derive(Clone, Copy)]
pub struct Ui {
    /// Auto already resolved against the terminal.
    pub progress: ProgressMode,
    pub quiet: bool,
}

/// What every command gets: the library context and the output settings.
pub struct Env {
    pub ctx: Context,
    pub ui: Ui,
}

impl GlobalArgs {
    pub fn debug(&self) -> bool {
        self.debug
    }

    pub fn ui(&self) -> Ui {
        let progress = match (self.quiet, self.progress) {
            (true, _) => ProgressMode::None,
            (false, ProgressMode::Auto) if std::io::stderr().is_terminal() => ProgressMode::Bars,
            (false, ProgressMode::Auto) => ProgressMode::Json,
            (false, mode) => mode,
        };
        Ui {
            progress,
            quiet: self.quiet,
        }
    }
}

impl TryFrom<&GlobalArgs> for Env {
    type Error = Error;

    fn try_from(global: &GlobalArgs) -> Result<Env, Error> {
        Ok(Env {
            ctx: Context::try_from(global)?,
            ui: global.ui(),
        })
    }
}

impl TryFrom<&GlobalArgs> for Context {
    type Error = Error;

    /// Reads the password from standard input when `--password-stdin` asks for it.
    fn try_from(global: &GlobalArgs) -> Result<Context, Error> {
        let password = if global.password_stdin {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| Error::Usage(format!("--password-stdin: {e}")))?;
            let password = line.trim_end_matches(['\r', '\n']).to_string();
            if password.is_empty() {
                return Err(Error::Usage(
                    "--password-stdin read no password from standard input".into(),
                ));
            }
            Some(password)
        } else {
            None
        };
        Ok(Context::new(Settings {
            store: global.store.clone(),
            transport: TransportOptions {
                plain_http: global.plain_http.then_some(true),
                insecure: global.insecure,
                ca_file: global.ca_file.clone(),
                max_connections: hoist::transfer::fetch::DEFAULT_MAX_CONNECTIONS,
                connect_timeout: None,
                read_timeout: None,
            },
            credentials: CredentialOptions {
                username: global.username.clone(),
                password,
                registry_config: global.registry_config.clone(),
            },
            mirrors: global.mirror.clone(),
            mirrors_config: global.mirrors_config.clone(),
            stall_timeout: Duration::from_secs(global.stall_timeout.max(1)),
        }))
    }
}
