//! The command line: flags and environment in, library calls, human or JSON output out.
//! Nothing here moves bytes itself.

mod bench;
mod copy;
mod csi;
mod global;
mod graph;
mod inspect;
mod logging;
mod login;
mod meta;
mod mount;
mod output;
mod parse;
mod pull;
mod push;
mod serve;
mod store;
mod verify;

use clap::{Parser, Subcommand};
use hoist::Error;

use global::{Env, GlobalArgs};
use hoist::ExitCode as ExitCodeClass;

const AFTER_HELP: &str = "\
References: [registry/]repository[:tag][@sha256:<digest>]. Without a registry host
(`my-model:v1`) the reference names the local store ($HOIST_HOME, default
~/.local/share/hoist), so push and pull work with nothing to set up.
localhost and 127.0.0.1 registries are spoken to over plain HTTP.

Exit codes: 0 ok, 1 failure, 2 usage or bad input, 3 auth, 4 not found,
5 network, 6 verification failed, 7 local disk, 8 invalid or unsafe content,
9 signature missing or not valid (--verify-key),
130 interrupted (a pull run again resumes).";

#[derive(Parser)]
#[command(name = "hoist", version = meta::LONG_VERSION, about = "Ship ML models as OCI artifacts: pack, push, pull, verified.", after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    global: GlobalArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Pack a model folder as a ModelPack artifact (one layer per file) and push it.
    Push(push::PushArgs),
    /// Pull an artifact into a folder; files appear only once all are verified.
    Pull(pull::PullArgs),
    /// Mount an artifact read-only (FUSE): files are there at once, bytes are fetched as they
    /// are read and prefetched in the background, every blob verified as it completes.
    Mount(mount::MountArgs),
    /// Unmount a `hoist mount` (lazily: open files do not keep it busy).
    Umount(mount::UmountArgs),
    /// Exit 0 if a folder is a live hoist mount (its reference printed), 4 if not: the
    /// readiness or startup probe of a Pod's mount sidecar.
    Mounted(mount::UmountArgs),
    /// Show an artifact's files, sizes and media types.
    Inspect(inspect::InspectArgs),
    /// Attach a chunk index to an artifact that has none (e.g. pushed by ORAS), so pulls of
    /// its next versions download only what changed.
    Index(push::IndexArgs),
    /// Copy an artifact between registries and the local store.
    Copy(copy::CopyArgs),
    /// Repack an artifact (ORAS, ModelPack, KitOps, Ollama, Model Runner, an image) as a
    /// ModelPack or ORAS artifact; files whose bytes do not change keep their blobs.
    Convert(copy::ConvertArgs),
    /// List what the local store holds.
    List(store::ListArgs),
    /// Remove a model from the local store: its tag, and the blobs no other tag uses.
    Rm(store::RmArgs),
    /// Give a model in the local store another name (no bytes are copied).
    Tag(store::TagArgs),
    /// Keep only the newest versions in the local store (also the node cache): by count per
    /// repository, or by age; blobs that kept versions share stay.
    Prune(store::PruneArgs),
    /// Attach files (a signature, an SBOM, a report) to an artifact as a referrer.
    Attach(graph::AttachArgs),
    /// Sign a model (OpenSSF model signing, from its manifest: no file is read again) and
    /// attach the signature; `pull --verify-key` checks it before placing any file.
    Sign(graph::SignArgs),
    /// Show what is attached to an artifact, as a tree (referrers API or tag fallback).
    Discover(graph::DiscoverArgs),
    /// Serve the local store as an OCI registry (distribution spec v1.1), optionally as a
    /// pull-through cache of another registry.
    Serve(serve::ServeArgs),
    /// Check a pulled folder against an artifact's manifest (`verify DIR REF`, listing every
    /// differing file), or offline against its pull's ready marker (`--marker`).
    Verify(verify::VerifyArgs),
    /// Delete blobs of the local store that no tag reaches.
    Gc(serve::GcArgs),
    /// Create a store folder and hand it to the user that will serve it (run as root in an
    /// init container before `hoist serve` runs as that user; links are never followed).
    InitStore(serve::InitStoreArgs),
    /// Log in to a registry: check the credentials, then save them in the Docker config
    /// (through its credential helper if one is configured).
    Login(login::LoginArgs),
    /// Remove a registry's saved credentials.
    Logout(login::LogoutArgs),
    /// Compare ways to ship a model: as a single-layer gzip image, as multi-layer images and
    /// as artifacts; build, push and pull times side by side, with a chart.
    Bench(bench::BenchArgs),
    /// Run the CSI node plugin: model volumes for Pods, pulled into the node cache and
    /// bind-mounted read-only (deploy/csi/).
    Csi(csi::CsiArgs),
    /// Run the WAN emulator: a loopback proxy with bandwidth caps, latency and faults
    /// (for benchmarks and fault tests).
    WanProxy(serve::WanProxyArgs),
    /// Print the completion script for a shell (`source <(hoist completions bash)`).
    Completions(meta::CompletionsArgs),
    /// Write the man pages (`hoist.1`, `hoist-pull.1`, …), or print `hoist.1`.
    Man(meta::ManArgs),
}

pub fn main() -> std::process::ExitCode {
    // SIGPIPE stays ignored (Rust's default). hoist is a network program: a peer that hangs
    // up (a client of `hoist serve`, a response a pull stops reading when another connection
    // takes over its ranges) must be an error on that socket, not the death of the process.
    // Output piped into `head` still ends quietly, as with other command-line tools.
    quiet_on_closed_stdout();
    let cli = parse_args();
    let server = matches!(
        cli.command,
        Command::Serve(_) | Command::Mount(_) | Command::WanProxy(_) | Command::Csi(_)
    );
    logging::Logging::choose(cli.global.debug(), server, cli.global.ui()).init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime starts");
    let result = runtime.block_on(async {
        let env = Env::try_from(&cli.global)?;
        run(cli.command, &env).await
    });
    // Tasks still running (an interrupted pull's downloads) stop here, before the error line.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hoist: error: {e}");
            std::process::ExitCode::from(e.exit_code() as u8)
        }
    }
}

async fn run(command: Command, env: &Env) -> Result<(), Error> {
    match command {
        Command::Push(args) => interruptible(push::push(args, env), None).await,
        Command::Pull(args) => {
            let kept = args.partial_dir();
            interruptible(pull::pull(args, env), Some(kept)).await
        }
        Command::Convert(args) => interruptible(copy::convert(args, env), None).await,
        Command::Copy(args) => interruptible(copy::copy(args, env), None).await,
        Command::Bench(args) => bench::bench(args, env).await,
        Command::Mount(args) => mount::mount(args, env).await,
        Command::Umount(args) => mount::umount(args),
        Command::Mounted(args) => mount::mounted(args),
        Command::Inspect(args) => inspect::inspect(args, env).await,
        Command::Index(args) => interruptible(push::index(args, env), None).await,
        Command::List(args) => store::list(args, env),
        Command::Rm(args) => store::rm(args, env),
        Command::Tag(args) => store::tag(args, env),
        Command::Prune(args) => store::prune(args, env),
        Command::WanProxy(args) => serve::wan_proxy(args).await,
        Command::Csi(args) => csi::csi(args, env).await,
        Command::Login(args) => login::login(args, env).await,
        Command::Serve(args) => serve::serve(args, env).await,
        Command::Verify(args) => verify::verify(args, env).await,
        Command::Gc(args) => serve::gc(args, env),
        Command::InitStore(args) => serve::init_store(args),
        Command::Attach(args) => graph::attach(args, env).await,
        Command::Discover(args) => graph::discover(args, env).await,
        Command::Sign(args) => graph::sign(args, env).await,
        Command::Logout(args) => login::logout(args, env),
        Command::Completions(args) => meta::completions(args),
        Command::Man(args) => meta::man(args),
    }
}

/// Run a transfer until it ends or the user stops it (Ctrl-C, SIGTERM). Dropping the future
/// stops its work where it is; what was downloaded stays for the next run, which resumes.
async fn interruptible(
    work: impl std::future::Future<Output = Result<(), Error>>,
    kept: Option<std::path::PathBuf>,
) -> Result<(), Error> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| Error::Server {
            what: "cannot watch SIGTERM".into(),
            source,
        })?;
    tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => Err(interrupted(kept)),
        _ = term.recv() => Err(interrupted(kept)),
    }
}

fn interrupted(kept: Option<std::path::PathBuf>) -> Error {
    Error::Interrupted {
        kept: kept.filter(|k| k.exists()).map(|k| k.display().to_string()),
    }
}

/// The command line, or exit: help and version as clap prints them, a usage error as one
/// `hoist: error:` line (exit 2) like every other error.
fn parse_args() -> Cli {
    use clap::error::ErrorKind;
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            eprintln!("hoist: error: {}", one_line(&e.render().to_string()));
            std::process::exit(ExitCodeClass::Usage as i32)
        }
    }
}

/// clap's message up to its usage block, on one line, with where to find help.
fn one_line(rendered: &str) -> String {
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.trim().trim_start_matches("error:").trim())
        .collect();
    let usage = rendered
        .lines()
        .find_map(|l| l.strip_prefix("Usage: "))
        .and_then(|u| u.split_whitespace().nth(1))
        .filter(|sub| !sub.starts_with('-') && !sub.starts_with('<') && !sub.starts_with('['))
        .map(|sub| format!("hoist {sub} --help"))
        .unwrap_or_else(|| "hoist --help".into());
    format!("{}; see `{usage}`", message.join(" "))
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `hoist X --help` explains every flag and argument of every command.
    #[test]
    fn every_argument_has_help_text() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if arg.is_hide_set() || id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "hoist", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
        super::Cli::command().debug_assert();
    }
}
