//! `hoist pull`: flags for the pull engine, metrics out, exit code in.

use std::path::PathBuf;

use clap::Args;
use hoist::materialize::LinkMode;
use hoist::metrics::PullMetrics;
use hoist::oci::modelpack::LayerKind;
use hoist::reference::Reference;
use hoist::transfer::fetch::FetchOptions;
use hoist::transfer::{self, LayerFilter, PullOptions, ReadyMarker};
use hoist::Error;

use super::global::Env;
use super::output::{count, human_bytes, observer, print_json};
use super::parse;

/// How blobs are fetched: the flags `pull` and `csi` share, made into the library's
/// options in one place.
#[derive(Args)]
pub struct FetchArgs {
    /// Blobs fetched at once (per volume, for `csi`).
    #[arg(long, default_value_t = 4, env = "HOIST_CONCURRENCY")]
    concurrency: usize,
    /// HTTP connections open at once (per volume, for `csi`); large blobs are split into
    /// byte ranges fetched in parallel.
    #[arg(long, default_value_t = hoist::transfer::fetch::DEFAULT_MAX_CONNECTIONS, env = "HOIST_MAX_CONNECTIONS")]
    max_connections: usize,
    /// Byte-range size for large blobs (default: adapted to the blob, 8–64 MiB); a pull
    /// cut short resumes from its last whole range.
    #[arg(long, value_name = "BYTES", value_parser = parse::size, env = "HOIST_RANGE_SIZE")]
    range_size: Option<u64>,
    /// Attempts per range before giving up (backoff with jitter between them).
    #[arg(long, default_value_t = 6, env = "HOIST_RETRIES")]
    retries: u32,
}

impl FetchArgs {
    pub fn concurrency(&self) -> usize {
        self.concurrency.max(1)
    }

    pub fn options(&self, stall_timeout: std::time::Duration) -> FetchOptions {
        FetchOptions::new(
            self.max_connections,
            self.range_size,
            self.retries,
            stall_timeout,
        )
    }
}

#[derive(Args)]
pub struct PullArgs {
    /// What to pull.
    #[arg(env = "HOIST_REF")]
    reference: String,
    /// The folder to write files into (created if missing).
    #[arg(short, long, default_value = ".", env = "HOIST_OUTPUT")]
    output: PathBuf,
    /// Write this file last, once every file is verified in place (JSON: reference, digest,
    /// files with their digests, timings); removed when a pull starts. An init container's
    /// main container or readiness probe waits on it; `hoist verify --marker` checks it.
    #[arg(long, env = "HOIST_READY_MARKER", value_name = "FILE")]
    ready_marker: Option<PathBuf>,
    #[command(flatten)]
    fetch: FetchArgs,
    /// Use the local store as a node cache: blobs found there are not downloaded, and
    /// downloaded blobs are kept there (concurrent pulls download each blob once).
    /// `HOIST_CACHE` takes 1/0, true/false, yes/no, on/off.
    #[arg(long, env = "HOIST_CACHE", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    cache: bool,
    /// Also pull what is attached to the artifact (signatures, SBOMs, reports), recursively,
    /// into OUTPUT/.referrers/<digest>/ (each with a .descriptor.json).
    #[arg(long)]
    include_referrers: bool,
    /// How files are made from cached blobs: auto (reflink, else copy), reflink, hardlink
    /// (read-only files sharing the cache's inode), copy.
    #[arg(long, default_value = "auto", value_parser = parse::link_mode, env = "HOIST_LINK_MODE")]
    link_mode: LinkMode,
    /// Only files whose path matches this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,
    /// Skip files whose path matches this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Only these ModelPack kinds: weight, config (weight.config), doc, code, dataset.
    #[arg(long, value_delimiter = ',', value_parser = parse::kind, env = "HOIST_KIND")]
    kind: Vec<LayerKind>,
    /// From an index (the image-volume form), the manifest of this platform
    /// (os/architecture[/variant]) rather than this host's; the pull says which it took.
    #[arg(long, value_parser = parse::platform, env = "HOIST_PLATFORM")]
    platform: Option<hoist::oci::Platform>,
    /// Accept layer titles with `..` or absolute paths (they are still kept inside the folder).
    #[arg(long)]
    allow_path_traversal: bool,
    /// Save each layer's blob, verified, as OUTPUT/blobs/sha256/<hex> instead of as files
    /// (for artifacts whose layers hoist cannot name).
    #[arg(long)]
    raw: bool,
    /// Replace files in the output folder that no earlier hoist pull placed (without it, such
    /// files are listed and the pull is refused before anything changes).
    #[arg(long, env = "HOIST_OVERWRITE", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    overwrite: bool,
    /// A tar layer may unpack to at most this many times its compressed size (at least
    /// 256 MiB), and never to more than the free space: a bound on decompression bombs.
    #[arg(
        long,
        default_value_t = 64,
        value_name = "N",
        env = "HOIST_MAX_UNPACK_RATIO"
    )]
    max_unpack_ratio: u64,
    /// Write Prometheus metrics of this pull to FILE (node-exporter textfile collector).
    #[arg(long, env = "HOIST_METRICS_FILE", value_name = "FILE")]
    metrics_file: Option<PathBuf>,
    /// Push the metrics to this Pushgateway URL.
    #[arg(long, env = "HOIST_PUSHGATEWAY", value_name = "URL")]
    pushgateway: Option<String>,
    /// Pull into OUTPUT/.hoist-versions/sha256-<digest>/ and then switch the link
    /// OUTPUT/current to it in one rename: a reader of OUTPUT/current sees the old version or
    /// the new one, never a mix. The previous version stays until the next switch; older
    /// ones are removed.
    #[arg(long, env = "HOIST_VERSIONED", action = clap::ArgAction::SetTrue, value_parser = clap::builder::BoolishValueParser::new())]
    versioned: bool,
    /// The signature the model must carry; written as OUTPUT/model.sig. Exit 9 without it.
    #[command(flatten)]
    verify: VerifyKeyArgs,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

impl PullArgs {
    /// Where an interrupted pull keeps what it downloaded.
    pub fn partial_dir(&self) -> PathBuf {
        self.output.join(hoist::reserved::STAGING_DIR)
    }
}

pub async fn pull(args: PullArgs, env: &Env) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let repository = args.reference.clone();
    if let Some(marker) = &args.ready_marker {
        // Not ready until this pull says so.
        let _ = std::fs::remove_file(marker);
    }
    let mut result = run(&args, env).await;
    if let (Ok(report), Some(marker)) = (&result, &args.ready_marker) {
        let ready = ReadyMarker::new(&args.reference, report, started.elapsed().as_secs_f64());
        if let Err(source) = ready.write(marker) {
            result = Err(Error::Write {
                what: "the ready marker",
                path: marker.clone(),
                source,
            });
        }
    }
    if args.metrics_file.is_some() || args.pushgateway.is_some() {
        let repository = Reference::parse(&repository).map_or(repository, |r| r.repository);
        let metrics = PullMetrics::of(
            repository,
            started,
            result.as_ref(),
            args.ready_marker.is_some(),
        );
        if let Some(path) = &args.metrics_file {
            if let Err(e) = metrics.write_file(path) {
                eprintln!(
                    "hoist: warning: cannot write metrics to {}: {e}",
                    path.display()
                );
            }
        }
        if let Some(url) = &args.pushgateway {
            let instance = std::env::var("HOSTNAME").unwrap_or_else(|_| "hoist".into());
            if let Err(e) = metrics.push(url, "hoist", &instance).await {
                eprintln!("hoist: warning: {e}");
            }
        }
    }
    let report = result?;
    if args.json {
        print_json(&report);
    } else {
        let how = report
            .linked_by
            .describe()
            .map(|how| format!(" by {how}"))
            .unwrap_or_default();
        let resumed = match report.resumed_bytes {
            0 => String::new(),
            n => format!(", {} resumed from an earlier pull", human_bytes(n)),
        };
        let resumed = match report.reused_bytes {
            0 => resumed,
            n => format!(
                "{resumed}, {} reused from local chunks of earlier versions",
                human_bytes(n)
            ),
        };
        println!(
            "Pulled {} into {}: {}, {} ({} downloaded{resumed}, {} already in place, {} from cache{how}) in {:.1}s",
            args.reference,
            args.output.display(),
            count(report.files, "file"),
            human_bytes(report.bytes),
            human_bytes(report.downloaded_bytes),
            report.skipped,
            report.cache_hits,
            started.elapsed().as_secs_f64()
        );
        println!("Digest: {}", report.digest);
        if let Some(platform) = &report.platform {
            println!("Platform: {platform} (the index's manifest for it)");
        }
    }
    Ok(())
}

/// `--verify-key` or `--verify-policy`, for every command that places a model (pull, the
/// CSI plugin).
#[derive(Args)]
pub struct VerifyKeyArgs {
    /// Require a model signature (OpenSSF model signing) by this public key (PEM; repeatable:
    /// any one may vouch), checked against the manifest before any file is placed.
    #[arg(
        long,
        value_name = "PUB.pem",
        env = "HOIST_VERIFY_KEY",
        value_delimiter = ' '
    )]
    verify_key: Vec<PathBuf>,
    /// Require a model signature by a certificate that chains to these roots (PEM;
    /// repeatable), valid now, for code signing (the reference tool's certificate method).
    #[arg(
        long,
        value_name = "ROOTS.pem",
        env = "HOIST_VERIFY_CERT_CHAIN",
        value_delimiter = ' '
    )]
    verify_cert_chain: Vec<PathBuf>,
    /// With --verify-cert-chain: the identity the signing certificate must name — its
    /// subject (`CN=…, O=…`) or a SAN (email, URI, DNS name), exactly or as a glob
    /// (repeatable: any one). Without it, any certificate the roots vouch for.
    /// `HOIST_CERT_IDENTITY` holds one (a glob's `{a,b}` names several).
    #[arg(long, value_name = "IDENTITY", env = "HOIST_CERT_IDENTITY")]
    cert_identity: Vec<String>,
    /// Require a Sigstore (keyless) signature whose Fulcio certificate was issued for an
    /// identity of this OIDC issuer (exact or glob; repeatable), with `--cert-identity`
    /// naming the SAN, checked offline against the Sigstore trusted root.
    #[arg(long, value_name = "ISSUER", env = "HOIST_CERT_OIDC_ISSUER")]
    cert_oidc_issuer: Vec<String>,
    /// The Sigstore trusted root (`trusted_root.json`) for --cert-oidc-issuer: a private
    /// instance's; default the public-good instance's, built in.
    #[arg(long, value_name = "FILE", env = "HOIST_SIGSTORE_TRUSTED_ROOT")]
    sigstore_trusted_root: Option<PathBuf>,
    /// Require signatures as this policy file says per repository: which keys vouch, and
    /// whether a failure stops the pull (enforce), is reported (warn) or is not checked
    /// (off); a repository no rule covers is refused. See the README's "Signed models".
    #[arg(
        long,
        value_name = "POLICY.toml",
        env = "HOIST_VERIFY_POLICY",
        conflicts_with_all = ["verify_key", "verify_cert_chain", "cert_oidc_issuer"]
    )]
    verify_policy: Option<PathBuf>,
}

impl VerifyKeyArgs {
    /// What is required of signatures, `None` when nothing is.
    pub fn verification(&self) -> Result<Option<hoist::sign::Verification>, Error> {
        let trust = hoist::sign::TrustOptions {
            keys: self.verify_key.clone(),
            roots: self.verify_cert_chain.clone(),
            identities: self.cert_identity.clone(),
            oidc_issuers: self.cert_oidc_issuer.clone(),
            sigstore_root: self.sigstore_trusted_root.clone(),
        };
        hoist::sign::Verification::from_files(&trust, self.verify_policy.as_deref())
            .map_err(|e| hoist::transfer::TransferError::from(e).into())
    }
}

async fn run(args: &PullArgs, env: &Env) -> Result<transfer::PullReport, Error> {
    let reference = Reference::parse(&args.reference)?;
    let source = env.ctx.target(&reference)?;
    let opts = PullOptions {
        concurrency: args.fetch.concurrency(),
        allow_path_traversal: args.allow_path_traversal,
        raw: args.raw,
        fetch: args.fetch.options(env.ctx.settings().stall_timeout),
        cache: if args.cache {
            Some(env.ctx.store()?)
        } else {
            None
        },
        link_mode: args.link_mode,
        filter: LayerFilter {
            include: parse::globs("--include", &args.include)?,
            exclude: parse::globs("--exclude", &args.exclude)?,
            kinds: (!args.kind.is_empty()).then(|| args.kind.clone()),
        },
        overwrite: args.overwrite,
        unpack: hoist::materialize::UnpackLimits {
            ratio: args.max_unpack_ratio.max(1),
            ..Default::default()
        },
        reuse_from: Vec::new(),
        verify: args.verify.verification()?,
        platform: args.platform.clone(),
    };
    let (report, folder) = if args.versioned {
        let v = transfer::pull_versioned(
            &source,
            &reference.target(),
            &args.output,
            &opts,
            observer(env.ui),
        )
        .await?;
        if !env.ui.quiet {
            eprintln!(
                "{} now points to {}{}",
                args.output.join(hoist::reserved::CURRENT).display(),
                v.version_dir.display(),
                match v.removed {
                    0 => String::new(),
                    n => format!(" ({} removed)", count(n, "older version")),
                }
            );
        }
        (v.report, v.version_dir)
    } else {
        let report = transfer::pull(
            &source,
            &reference.target(),
            &args.output,
            &opts,
            observer(env.ui),
        )
        .await?;
        (report, args.output.clone())
    };
    if args.include_referrers {
        let opts = PullOptions {
            filter: Default::default(),
            ..opts
        };
        let n = transfer::pull_referrers(
            &source,
            &report.digest,
            &folder,
            hoist::reserved::REFERRERS_DIR,
            &opts,
        )
        .await?;
        if !env.ui.quiet {
            eprintln!(
                "Pulled {n} attached artifacts into {}",
                folder.join(hoist::reserved::REFERRERS_DIR).display()
            );
        }
    }
    Ok(report)
}
