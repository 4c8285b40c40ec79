//! `hoist serve`, `hoist gc` and `hoist wan-proxy`: the long-running and store-keeping
//! commands.

use std::path::PathBuf;

use clap::Args;
use hoist::store::Store;
use hoist::Error;

use super::global::Env;
use super::output::human_bytes;
use super::parse;

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on, `IP:PORT` or `HOST:PORT`.
    #[arg(long, default_value = "127.0.0.1:5000", value_parser = parse::listen_addr)]
    addr: std::net::SocketAddr,
    /// The store to serve (default: the local store, --store / $HOIST_HOME).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Pull-through cache: fetch misses from this registry. `NS=HOST` applies when a client
    /// (containerd) sends `?ns=NS`; a bare HOST is the default. Repeatable.
    #[arg(long, value_name = "[NS=]HOST")]
    upstream: Vec<String>,
    /// With --upstream: accept pushes and deletes from anonymous clients. A pull-through
    /// cache is read-only to them by default (anyone who reaches it could fill its disk);
    /// with --htpasswd the access policy decides instead.
    #[arg(long)]
    allow_push: bool,
    /// The Hugging Face Hub API (`HF_ENDPOINT=http://ADDR`): put this before every Hub
    /// repository id to find its OCI repository (`models/` serves `org/name` from
    /// `models/org/name`).
    #[arg(
        long,
        default_value = "",
        value_name = "PREFIX",
        env = "HOIST_HUB_PREFIX"
    )]
    hub_prefix: String,
    /// The tag the Hub revision `main` names (default: `main` when the repository has it,
    /// else `latest`).
    #[arg(long, value_name = "TAG", env = "HOIST_HUB_MAIN_TAG")]
    hub_main_tag: Option<String>,
    /// Seconds a manifest fetched by tag is served before it is checked upstream again.
    #[arg(long, default_value_t = 60)]
    manifest_ttl: u64,
    /// Cap the store at this size, evicting least recently used blobs (pull-through).
    #[arg(long, value_parser = parse::size, value_name = "BYTES")]
    cache_size: Option<u64>,
    /// Require users from this htpasswd file (bcrypt: `htpasswd -B`).
    #[arg(long, value_name = "FILE")]
    htpasswd: Option<PathBuf>,
    /// With --htpasswd: `basic` checks every request's password; `token` has clients get
    /// bearer tokens per repository and action from this server's /token.
    #[arg(long, default_value = "basic", value_parser = ["basic", "token"])]
    auth: String,
    /// With --htpasswd: let anyone pull without credentials.
    #[arg(long)]
    anonymous_read: bool,
    /// With --htpasswd: who may pull, push and delete where (TOML: `[groups]` and `[[rule]]`
    /// with `who`, `repositories`, `actions`; see the README). Without it, every user may
    /// pull and push everywhere and nobody may delete.
    #[arg(long, value_name = "FILE", requires = "htpasswd")]
    access_policy: Option<PathBuf>,
    /// With --auth token: the token realm to announce (default: this server's /token, over
    /// https when --tls-cert is given).
    #[arg(long, value_name = "URL")]
    token_realm: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Connections open at once; more are closed when accepted.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    max_connections: usize,
    /// Seconds a connection may move no byte (a half-sent request, an idle keep-alive)
    /// before it is closed; headers must arrive within the same time (at most 30 s).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    idle_timeout: u64,
}

#[derive(Args)]
pub struct InitStoreArgs {
    /// The store folder (created with its parents when missing).
    dir: PathBuf,
    /// Who will own it, `UID:GID` (the image's user is 65532:65532).
    #[arg(long, value_name = "UID:GID", value_parser = parse::owner)]
    owner: (u32, u32),
}

#[derive(Args)]
pub struct GcArgs {
    /// Spare unreferenced blobs younger than this many seconds (a push may be under way).
    #[arg(long, default_value_t = 3600)]
    grace: u64,
    /// First hash every blob and remove those whose bytes no longer match their digest.
    #[arg(long)]
    verify: bool,
}

#[derive(Args)]
pub struct WanProxyArgs {
    /// Address to listen on (loopback).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// The registry to forward to, e.g. 127.0.0.1:5000.
    #[arg(long)]
    upstream: std::net::SocketAddr,
    /// More routes over the same link (its caps, faults and counters), `LISTEN=UPSTREAM`
    /// (repeatable): a node's NIC carries its traffic to every host.
    #[arg(long, value_name = "LISTEN=UPSTREAM", value_parser = parse::route)]
    route: Vec<(String, std::net::SocketAddr)>,
    /// Bandwidth cap per connection and direction, e.g. 50MB (0: none).
    #[arg(long, default_value = "0", value_parser = parse::size)]
    rate: u64,
    /// Bandwidth cap of the whole link towards the clients, shared by all connections
    /// (an origin's egress, a node's NIC), e.g. 100MB (0: none).
    #[arg(long, default_value = "0", value_parser = parse::size)]
    link_rate: u64,
    /// Added before each request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Fault for the first --faulty connections: reset:N, truncate:N, stall:N:SECS, 503, or
    /// throttle:SECS:RETRY_AFTER (429 to manifest and blob downloads for SECS after the first).
    #[arg(long, default_value = "none", value_parser = hoist::wan::parse_fault)]
    fault: hoist::wan::Fault,
    /// How many connections get the fault (default: all).
    #[arg(long, hide_default_value = true, default_value_t = usize::MAX)]
    faulty: usize,
    /// Write what the link carried as JSON to this file (`bytes_down`, `connections`,
    /// `throttled`) every half second and when stopped.
    #[arg(long, value_name = "FILE")]
    stats: Option<PathBuf>,
    /// Hide Range headers from the upstream (a registry without range support).
    #[arg(long)]
    strip_range: bool,
}

pub(super) async fn wan_proxy(args: WanProxyArgs) -> Result<(), Error> {
    let link = hoist::wan::Link {
        rate: args.rate,
        link_rate: args.link_rate,
        latency: std::time::Duration::from_millis(args.latency_ms),
        fault: args.fault,
        faulty_connections: args.faulty,
        strip_range: args.strip_range,
    };
    let mut routes = vec![(args.listen.clone(), args.upstream)];
    routes.extend(args.route.iter().cloned());
    let proxy = hoist::wan::Proxy::start_routes(&routes, link)
        .await
        .map_err(|source| Error::Server {
            what: format!("the WAN emulator cannot listen on {}", args.listen),
            source,
        })?;
    // One line per route says where to connect, so scripts can start it on port 0.
    for addr in &proxy.addrs {
        println!("{addr}");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| Error::Server {
            what: "cannot watch SIGTERM".into(),
            source,
        })?;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => write_stats(args.stats.as_deref(), &proxy.stats)?,
        }
    }
    write_stats(args.stats.as_deref(), &proxy.stats)
}

/// The proxy's counters as JSON, replaced atomically (a reader never sees half a file).
fn write_stats(path: Option<&std::path::Path>, stats: &hoist::wan::Stats) -> Result<(), Error> {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(path) = path else {
        return Ok(());
    };
    let json = serde_json::json!({
        "bytes_down": stats.bytes_down.load(Relaxed),
        "connections": stats.connections.load(Relaxed),
        "throttled": stats.throttled.load(Relaxed),
    });
    hoist::fsutil::write_atomic(
        path,
        json.to_string().as_bytes(),
        hoist::fsutil::Replace::FAST,
    )
    .map_err(|source| Error::Write {
        what: "the link statistics",
        path: path.to_path_buf(),
        source,
    })
}

pub(super) async fn serve(args: ServeArgs, env: &Env) -> Result<(), Error> {
    let hub = hub_names(&args)?;
    let store = match args.root {
        Some(root) => Store::open(root)?,
        None => env.ctx.store()?,
    };
    let root = store.root().to_path_buf();
    let upstreams = hoist::serve::Upstreams::from_specs(
        &env.ctx,
        &args.upstream,
        std::time::Duration::from_secs(args.manifest_ttl),
        args.cache_size,
    )?;
    let access = match &args.htpasswd {
        Some(path) => {
            let mode = if args.auth == "token" {
                hoist::serve::AccessMode::Token
            } else {
                hoist::serve::AccessMode::Basic
            };
            Some(
                hoist::serve::Access::from_htpasswd(
                    path,
                    mode,
                    args.anonymous_read,
                    args.access_policy.as_deref(),
                    args.token_realm.clone(),
                    args.tls_cert.is_some(),
                )
                .map_err(|e| {
                    Error::Usage(format!("cannot read --htpasswd {}: {e}", path.display()))
                })?,
            )
        }
        None => None,
    };
    let (addr, server) = hoist::serve::bind(hoist::serve::ServeOptions {
        upstreams,
        read_only: !args.upstream.is_empty() && access.is_none() && !args.allow_push,
        access,
        tls: args.tls_cert.clone().zip(args.tls_key.clone()),
        limits: hoist::serve::ConnLimits {
            max_connections: args.max_connections.max(1),
            idle_timeout: std::time::Duration::from_secs(args.idle_timeout.max(1)),
            header_timeout: std::time::Duration::from_secs(args.idle_timeout.clamp(1, 30)),
            ..Default::default()
        },
        addr: args.addr,
        store,
        hub,
    })
    .await
    .map_err(|source| Error::Server {
        what: format!("cannot listen on {}", args.addr),
        source,
    })?;
    // The first line says where to connect, so scripts can start it on port 0.
    let scheme = if args.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    println!(
        "hoist serve: listening on {scheme}://{addr}, serving {}",
        root.display()
    );
    server.await.map_err(|source| Error::Server {
        what: "hoist serve stopped".into(),
        source,
    })
}

pub(super) fn init_store(args: InitStoreArgs) -> Result<(), Error> {
    let (uid, gid) = args.owner;
    let changed = hoist::store::owner::hand_over(&args.dir, uid, gid)?;
    println!(
        "{} belongs to {uid}:{gid} ({changed} entries)",
        args.dir.display()
    );
    Ok(())
}

pub(super) fn gc(args: GcArgs, env: &Env) -> Result<(), Error> {
    let store = env.ctx.existing_store()?;
    if args.verify {
        let checked = store.verify_all()?;
        println!(
            "Checked {} blobs; removed {} corrupt{}",
            checked.checked,
            checked.corrupt.len(),
            checked
                .corrupt
                .iter()
                .map(|d| format!(" {d}"))
                .collect::<String>()
        );
    }
    let report = store.gc(std::time::Duration::from_secs(args.grace))?;
    println!(
        "Removed {} unreferenced blobs ({}); kept {}, spared {} younger than {}s",
        report.removed,
        human_bytes(report.removed_bytes),
        report.kept,
        report.spared,
        args.grace
    );
    Ok(())
}

/// `--hub-prefix` as a folder of repositories (`models` → `models/`), checked.
fn hub_names(args: &ServeArgs) -> Result<hoist::serve::hub::HubNames, Error> {
    let prefix = match args.hub_prefix.trim_end_matches('/') {
        "" => String::new(),
        p if hoist::reference::valid_repository(p) => format!("{p}/"),
        p => {
            return Err(Error::Usage(format!(
                "--hub-prefix {p:?} is no repository path: lowercase letters, digits and separators"
            )))
        }
    };
    if let Some(tag) = args.hub_main_tag.as_deref() {
        if !hoist::reference::valid_tag(tag) {
            return Err(Error::Usage(format!("--hub-main-tag {tag:?} is not a tag")));
        }
    }
    Ok(hoist::serve::hub::HubNames {
        prefix,
        main_tag: args.hub_main_tag.clone(),
    })
}
