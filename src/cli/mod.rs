//! The command line: flags and environment in, library calls, human or JSON output out.
//! Nothing here moves bytes itself.

mod bench;
mod commands;
mod graph;
mod login;
mod mount;
mod output;
mod pull;
mod serve;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
References: [registry/]repository[:tag][@sha256:<digest>]. Without a registry host
(`my-model:v1`) the reference names the local store ($HOIST_HOME, default
~/.local/share/hoist), so push and pull work with nothing to set up.
localhost and 127.0.0.1 registries are spoken to over plain HTTP.

Exit codes: 0 ok, 1 failure, 2 usage or bad input, 3 auth, 4 not found,
5 network, 6 verification failed, 7 local disk, 8 invalid or unsafe content.";

#[derive(Parser)]
#[command(name = "hoist", version, about = "Ship ML models as OCI artifacts: pack, push, pull, verified.", after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    global: GlobalArgs,
}

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
    /// Progress output: auto (bars on a terminal, JSON lines otherwise), json, plain or none.
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

impl GlobalArgs {
    pub(crate) fn stall_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.stall_timeout.max(1))
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    Auto,
    Json,
    Plain,
    None,
}

#[derive(Subcommand)]
enum Command {
    /// Pack a model folder as a ModelPack artifact (one layer per file) and push it.
    Push(commands::PushArgs),
    /// Pull an artifact into a folder; files appear only once all are verified.
    Pull(pull::PullArgs),
    /// Mount an artifact read-only (FUSE): files are there at once, bytes are fetched as they
    /// are read and prefetched in the background, every blob verified as it completes.
    Mount(mount::MountArgs),
    /// Unmount a `hoist mount` (lazily: open files do not keep it busy).
    Umount(mount::UmountArgs),
    /// Show an artifact's files, sizes and media types.
    Inspect(commands::InspectArgs),
    /// Copy an artifact between registries and the local store.
    Copy(commands::CopyArgs),
    /// Repack an artifact (ORAS, ModelPack, KitOps, Ollama, Model Runner, an image) as a
    /// ModelPack or ORAS artifact; files whose bytes do not change keep their blobs.
    Convert(commands::ConvertArgs),
    /// List what the local store holds.
    List,
    /// Attach files (a signature, an SBOM, a report) to an artifact as a referrer.
    Attach(graph::AttachArgs),
    /// Show what is attached to an artifact, as a tree (referrers API or tag fallback).
    Discover(graph::DiscoverArgs),
    /// Serve the local store as an OCI registry (distribution spec v1.1), optionally as a
    /// pull-through cache of another registry.
    Serve(serve::ServeArgs),
    /// Check a pulled folder against an artifact's manifest (`verify DIR REF`, listing every
    /// differing file), or offline against its pull's ready marker (`--marker`).
    Verify(commands::VerifyArgs),
    /// Delete blobs of the local store that no tag reaches.
    Gc(serve::GcArgs),
    /// Log in to a registry: check the credentials, then save them in the Docker config
    /// (through its credential helper if one is configured).
    Login(login::LoginArgs),
    /// Remove a registry's saved credentials.
    Logout(login::LogoutArgs),
    /// Reproduce the seed's evaluation: the model as a single-layer gzip image, multi-layer
    /// images and artifacts; build, push and pull times side by side, with a chart.
    Bench(bench::BenchArgs),
    /// Run the WAN emulator: a loopback proxy with bandwidth caps, latency and faults
    /// (for benchmarks and fault tests).
    WanProxy(serve::WanProxyArgs),
}

pub fn main() -> std::process::ExitCode {
    // SIGPIPE stays ignored (Rust's default). hoist is a network program: a peer that hangs
    // up (a client of `hoist serve`, a response a pull stops reading when another connection
    // takes over its ranges) must be an error on that socket, not the death of the process.
    // Output piped into `head` still ends quietly, as with other command-line tools.
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    let filter = if cli.global.debug {
        "hoist=debug"
    } else {
        "hoist=warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOIST_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    let result = runtime.block_on(commands::run(cli.command, &cli.global));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hoist: error: {e}");
            std::process::ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// Printing to a stdout whose reader went away (`hoist inspect … | head`) ends the process
/// quietly with the status a shell shows for SIGPIPE, instead of a panic message.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}
