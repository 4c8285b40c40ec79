//! `hoist mount` and `hoist umount`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use hoist::mount::{self, BlobStatus, MountOptions};
use hoist::reference::Reference;
use hoist::store::Store;
use hoist::Error;

use super::global::Env;
use super::output::human_bytes;
use super::parse;

#[derive(Args)]
pub struct MountArgs {
    /// The artifact, e.g. `registry/repo:tag` or a local-store name.
    #[arg(env = "HOIST_REF")]
    reference: String,
    /// An existing empty folder to mount on.
    mountpoint: PathBuf,
    /// Node cache (a hoist store) to read verified blobs from and keep them in; default the
    /// local store ($HOIST_HOME).
    #[arg(
        long = "cache-dir",
        alias = "cache",
        env = "HOIST_CACHE_DIR",
        value_name = "DIR"
    )]
    cache: Option<PathBuf>,
    /// Make reads wait until their whole blob is verified (no byte is served unverified).
    #[arg(long)]
    verify_before_read: bool,
    /// Fetch only what is read (no background prefetch).
    #[arg(long)]
    no_prefetch: bool,
    /// Chunk size of the chunk store and of a read's fetch.
    #[arg(long, default_value = "4MiB", value_parser = parse::size)]
    chunk_size: u64,
    /// Requests in flight at once.
    #[arg(long, env = "HOIST_MAX_CONNECTIONS", default_value_t = 16)]
    max_connections: usize,
    /// Seconds a read waits for its bytes before failing with EIO.
    #[arg(long, default_value_t = 300)]
    read_timeout: u64,
    /// Let other users read the mount (the inference server may run as another uid).
    #[arg(long)]
    allow_other: bool,
    /// Write Prometheus metrics to this file every 2 s and at exit.
    #[arg(long, env = "HOIST_METRICS_FILE", value_name = "FILE")]
    metrics_file: Option<PathBuf>,
    /// Return once mounted, serving from a background process (its log goes to --log-file).
    #[arg(long)]
    daemon: bool,
    /// With --daemon: where the background process logs (without it, what it says before
    /// it is mounted is passed on, and nothing after).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct UmountArgs {
    /// The folder a `hoist mount` is mounted on.
    mountpoint: PathBuf,
}

pub async fn mount(args: MountArgs, env: &Env) -> Result<(), Error> {
    require_empty_folder(&args.mountpoint)?;
    if args.daemon {
        return daemonize(&args);
    }
    let reference = Reference::parse(&args.reference)?;
    let target = env.ctx.target(&reference)?;
    let cache_root = args.cache.clone().unwrap_or_else(|| env.ctx.store_root());
    let mut opts = MountOptions::new(Store::open(cache_root)?);
    opts.verify_before_read = args.verify_before_read;
    opts.chunk_size = args.chunk_size.clamp(64 << 10, 256 << 20);
    opts.scheduler.connections = args.max_connections.max(1);
    opts.scheduler.prefetch = !args.no_prefetch;
    opts.read_timeout = Duration::from_secs(args.read_timeout);
    opts.allow_other = args.allow_other;

    let tag = reference.target();
    let mounted = mount::mount(&target, &tag, &args.mountpoint, opts).await?;
    if !env.ui.quiet {
        eprintln!(
            "Mounted {} at {} ({}, {}); fetching in the background. Stop with SIGTERM or `hoist umount {}`.",
            args.reference,
            args.mountpoint.display(),
            super::output::count(mounted.files, "file"),
            human_bytes(mounted.total_bytes),
            args.mountpoint.display()
        );
    }
    let write_metrics = |m: &mount::Mounted| {
        if let Some(path) = &args.metrics_file {
            if let Err(e) = hoist::metrics::write_atomic(path, &m.stats().render(&args.reference)) {
                tracing::warn!("writing {}: {e}", path.display());
            }
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| Error::Server {
            what: "cannot watch SIGTERM".into(),
            source,
        })?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut reported = false;
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {
                ticks += 1;
                if mounted.is_finished() {
                    break;
                }
                if !reported && mounted.settled() {
                    reported = true;
                    if !env.ui.quiet {
                        eprintln!("All blobs fetched: {}", mounted.stats().summary());
                    }
                }
                if ticks.is_multiple_of(4) {
                    write_metrics(&mounted);
                }
            }
        }
    }
    write_metrics(&mounted);
    let corrupt: Vec<String> = mounted
        .blob_statuses()
        .into_iter()
        .filter(|(_, s)| matches!(s, BlobStatus::Corrupt(_)))
        .map(|(name, _)| name)
        .collect();
    let summary = mounted.stats().summary();
    mounted.unmount()?;
    if !env.ui.quiet {
        eprintln!("Unmounted {}: {summary}", args.mountpoint.display());
    }
    if !corrupt.is_empty() {
        return Err(hoist::mount::MountError::Corrupt { files: corrupt }.into());
    }
    Ok(())
}

pub fn umount(args: UmountArgs) -> Result<(), Error> {
    mount::unmount(&args.mountpoint)?;
    Ok(())
}

pub fn mounted(args: UmountArgs) -> Result<(), Error> {
    let reference = mount::mounted(&args.mountpoint)?;
    println!("{}: hoist mount of {reference}", args.mountpoint.display());
    Ok(())
}

/// A mount hides what the folder holds, so it must be an empty folder.
fn require_empty_folder(path: &Path) -> Result<(), Error> {
    let why = match std::fs::read_dir(path).map(|mut entries| entries.next().is_none()) {
        Ok(true) => return Ok(()),
        Ok(false) => "is not empty (a mount would hide its files)",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist",
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => "is not a folder",
        Err(_) => "cannot be read",
    };
    Err(Error::Usage(format!(
        "the mount point {} {why}",
        path.display()
    )))
}

/// Start this same command without `--daemon` in a new session and wait until the mount is
/// up. If the child exits first, its error line is ours and so is its exit code: its stderr
/// goes to `--log-file`, or else to a temporary file read back on failure.
fn daemonize(args: &MountArgs) -> Result<(), Error> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|source| Error::Server {
        what: "cannot find hoist's own executable".into(),
        source,
    })?;
    let argv: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--daemon")
        .collect();
    let (log, log_path, _scratch) = daemon_log(args.log_file.as_deref())?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the child from our terminal.
    unsafe {
        cmd.pre_exec(|| {
            let _ = rustix::process::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| Error::Server {
        what: "cannot start the mount process".into(),
        source,
    })?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(child_failed(status, &log_path));
        }
        if is_mount_point(&args.mountpoint) {
            println!("{}", child.id());
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    Err(Error::Child {
        what: format!("{} was not mounted within 120 s", args.mountpoint.display()),
        code: hoist::ExitCode::Failure as u8,
    })
}

/// Where the mount process's stderr goes: the user's log file, else a scratch file that is
/// unlinked once the mount is up (kept open by the child, so nothing is left on disk).
fn daemon_log(
    log_file: Option<&Path>,
) -> Result<(std::process::Stdio, PathBuf, Option<tempfile::TempPath>), Error> {
    let open_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Write {
            what: "the mount's log",
            path,
            source,
        }
    };
    match log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(open_err(path))?;
            Ok((file.into(), path.to_path_buf(), None))
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("hoist-mount-")
                .suffix(".log")
                .tempfile()
                .map_err(open_err(&std::env::temp_dir()))?;
            let (file, path) = tmp.into_parts();
            let shown = path.to_path_buf();
            Ok((file.into(), shown, Some(path)))
        }
    }
}

/// The child's own error line and exit code (a usage error stays 2, a missing image 4).
fn child_failed(status: std::process::ExitStatus, log: &Path) -> Error {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line = text
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("hoist: error: "))
        .map(str::to_string)
        .unwrap_or_else(|| format!("the mount process exited ({status}) before mounting"));
    Error::Child {
        what: line,
        code: status
            .code()
            .map_or(hoist::ExitCode::Failure as u8, |c| c as u8),
    }
}

/// A mount point sits on another device than its parent folder.
fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = path.parent().unwrap_or(Path::new("/"));
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}
