//! `hoist mount` and `hoist umount`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use hoist::mount::{self, BlobStatus, MountOptions};
use hoist::reference::Reference;
use hoist::store::Store;
use hoist::Error;

use super::commands::{parse_size, target};
use super::GlobalArgs;

#[derive(Args)]
pub struct MountArgs {
    /// The artifact, e.g. `registry/repo:tag` or a local-store name.
    #[arg(env = "HOIST_REF")]
    reference: String,
    /// An existing empty folder to mount on.
    mountpoint: PathBuf,
    /// Node cache (a hoist store) to read verified blobs from and keep them in; default the
    /// local store ($HOIST_HOME).
    #[arg(long, env = "HOIST_CACHE", value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Make reads wait until their whole blob is verified (no byte is served unverified).
    #[arg(long)]
    verify_before_read: bool,
    /// Fetch only what is read (no background prefetch).
    #[arg(long)]
    no_prefetch: bool,
    /// Chunk size of the chunk store and of a read's fetch.
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
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
    /// With --daemon: where the background process logs.
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct UmountArgs {
    mountpoint: PathBuf,
}

pub async fn mount(args: MountArgs, global: &GlobalArgs) -> Result<(), Error> {
    if args.daemon {
        return daemonize(&args);
    }
    let reference = Reference::parse(&args.reference)?;
    let target = target(&reference, global)?;
    let cache_root = args
        .cache
        .clone()
        .or_else(|| global.store.clone())
        .unwrap_or_else(Store::default_root);
    let mut opts = MountOptions::new(Store::open(cache_root)?);
    opts.verify_before_read = args.verify_before_read;
    opts.chunk_size = args.chunk_size.clamp(64 << 10, 256 << 20);
    opts.scheduler.connections = args.max_connections.max(1);
    opts.scheduler.prefetch = !args.no_prefetch;
    opts.read_timeout = Duration::from_secs(args.read_timeout);
    opts.allow_other = args.allow_other;

    let tag = reference.target();
    let mounted = mount::mount(&target, &tag, &args.mountpoint, opts).await?;
    if !global.quiet {
        eprintln!(
            "Mounted {} at {} ({} files, {}); fetching in the background. Stop with SIGTERM or `hoist umount {}`.",
            args.reference,
            args.mountpoint.display(),
            mounted.files,
            super::output::human_bytes(mounted.total_bytes),
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
        .map_err(|e| Error::Usage(format!("cannot watch SIGTERM: {e}")))?;
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
                    if !global.quiet {
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
    if !global.quiet {
        eprintln!("Unmounted {}: {summary}", args.mountpoint.display());
    }
    if !corrupt.is_empty() {
        return Err(Error::Verify(format!(
            "{} did not match their digests and were never served after the check: {}",
            corrupt.len(),
            corrupt.join(", ")
        )));
    }
    Ok(())
}

pub fn umount(args: UmountArgs) -> Result<(), Error> {
    mount::unmount(&args.mountpoint)?;
    Ok(())
}

/// Start this same command without `--daemon` in a new session and wait until the mount is
/// up (or the child fails, whose error is then ours).
fn daemonize(args: &MountArgs) -> Result<(), Error> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| Error::Usage(format!("own path: {e}")))?;
    let argv: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--daemon")
        .collect();
    let log = match &args.log_file {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(std::process::Stdio::from)
            .map_err(|e| Error::Usage(format!("--log-file {}: {e}", path.display())))?,
        None => std::process::Stdio::null(),
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.args(argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the child from our terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Usage(format!("starting the mount process: {e}")))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::Usage(format!(
                "the mount process exited ({status}) before mounting; see {}",
                args.log_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "its log (--log-file)".into())
            )));
        }
        if is_mount_point(&args.mountpoint) {
            println!("{}", child.id());
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(Error::Usage(format!(
        "{} was not mounted within 120 s",
        args.mountpoint.display()
    )))
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
