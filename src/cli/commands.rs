//! One function per subcommand: turn flags into library options, call, print the result.

use std::path::{Path, PathBuf};

use clap::Args;
use hoist::materialize::verify::{check_folder, Expected, FolderCheck};
use hoist::oci::{LayerFormat, LayerPlan, ManifestKind};
use hoist::pack::{PackOptions, WalkOptions};
use hoist::reference::Reference;
use hoist::registry::mirrors::{replica_hosts, Mirror, MirrorConfig};
use hoist::registry::{RegistryClient, TransportOptions, MIRROR_CONNECT};
use hoist::store::Store;
use hoist::transfer::{self, PushOptions, Target};
use hoist::Error;

use super::login::{credentials, transport};
use super::output::{human_bytes, observer, print_json};
use super::{Command, GlobalArgs};

#[derive(Args)]
pub struct PushArgs {
    /// The model folder (nested folders are kept as relative paths).
    dir: PathBuf,
    /// Where to push: `my-model:v1` (local store) or `registry/repo:tag`; `repo:v1,latest` tags twice.
    reference: String,
    /// Extra tags (repeatable).
    #[arg(short = 't', long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Layer encoding: raw (default, the ModelPack advice for weights), tar, tar+gzip, tar+zstd.
    #[arg(long, default_value = "raw", value_parser = parse_layer_format)]
    layer_format: LayerFormat,
    /// zstd (default 3) or gzip (default 6) level for compressed layers.
    #[arg(long, value_name = "N")]
    compression_level: Option<i32>,
    /// `descriptor.name` in the ModelPack config (default: the folder's name).
    #[arg(long)]
    name: Option<String>,
    /// Record the current time as createdAt (otherwise only $SOURCE_DATE_EPOCH is used, so
    /// the same folder always gives the same digest).
    #[arg(long)]
    created: bool,
    /// Include dot-files (.git is always skipped).
    #[arg(long)]
    include_hidden: bool,
    /// Follow symlinks that point outside the folder.
    #[arg(long)]
    follow_external_symlinks: bool,
    /// Blobs uploaded at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Upload in chunks of this many bytes (PATCH) instead of one streaming PUT.
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    chunk_size: Option<u64>,
    /// A repository of the same registry that may already hold some of the files (e.g. the
    /// previous version): they are mounted from it instead of uploaded (repeatable).
    /// Repositories this machine pushed a file to before are tried too.
    #[arg(long = "mount-from", value_name = "REPOSITORY")]
    mount_from: Vec<String>,
    /// A manifest annotation `KEY=VALUE` (repeatable).
    #[arg(long = "annotation", short = 'a', value_name = "KEY=VALUE", value_parser = parse_annotation)]
    annotations: Vec<(String, String)>,
    /// A JSON file with a partial ModelPack config (e.g. `{"descriptor": {"licenses":
    /// ["mit"]}, "config": {"paramSize": "8b"}}`) merged over what hoist reads from the model.
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

fn parse_annotation(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

#[derive(Args)]
pub struct InspectArgs {
    reference: String,
    /// Print the raw manifest and config as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct CopyArgs {
    /// Source reference.
    source: String,
    /// Destination reference (`repo:v1,latest` tags twice).
    destination: String,
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Also copy what is attached to the artifact (signatures, SBOMs), recursively.
    #[arg(long, short = 'r')]
    recursive: bool,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// The artifact to convert (any shape hoist pulls).
    source: String,
    /// Where to push the converted artifact (`repo:v1,latest` tags twice).
    destination: String,
    /// The shape to convert to.
    #[arg(long, value_enum, default_value_t = ConvertShape::Modelpack)]
    to: ConvertShape,
    /// Layer encoding for --to modelpack: raw (default), tar, tar+gzip, tar+zstd.
    #[arg(long, default_value = "raw", value_parser = parse_layer_format)]
    layer_format: LayerFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ConvertShape {
    Modelpack,
    Oras,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// The folder the files were pulled into.
    #[arg(default_value = ".", env = "HOIST_OUTPUT")]
    dir: PathBuf,
    /// Check against this artifact's manifest (sizes and digests of its files).
    #[arg(value_name = "REFERENCE", required_unless_present = "marker")]
    reference: Option<String>,
    /// Check offline against the ready marker `hoist pull --ready-marker` wrote.
    #[arg(
        long,
        env = "HOIST_READY_MARKER",
        value_name = "FILE",
        conflicts_with = "reference"
    )]
    marker: Option<PathBuf>,
    /// Hash every file even if it carries a valid verified mark.
    #[arg(long)]
    full: bool,
}

pub async fn run(command: Command, global: &GlobalArgs) -> Result<(), Error> {
    match command {
        Command::Push(args) => push(args, global).await,
        Command::Pull(args) => super::pull::pull(args, global).await,
        Command::Convert(args) => convert(args, global).await,
        Command::Bench(args) => super::bench::bench(args, global).await,
        Command::Mount(args) => super::mount::mount(args, global).await,
        Command::Umount(args) => super::mount::umount(args),
        Command::Inspect(args) => inspect(args, global).await,
        Command::Copy(args) => copy(args, global).await,
        Command::List => list(global),
        Command::WanProxy(args) => super::serve::wan_proxy(args).await,
        Command::Login(args) => super::login::login(args, global).await,
        Command::Serve(args) => super::serve::serve(args, global).await,
        Command::Verify(args) => verify(args, global).await,
        Command::Gc(args) => super::serve::gc(args, global),
        Command::Attach(args) => super::graph::attach(args, global).await,
        Command::Discover(args) => super::graph::discover(args, global).await,
        Command::Logout(args) => super::login::logout(args, global),
    }
}

pub(super) fn store(global: &GlobalArgs) -> Result<Store, Error> {
    Ok(Store::open(
        global.store.clone().unwrap_or_else(Store::default_root),
    )?)
}

pub(super) fn target(reference: &Reference, global: &GlobalArgs) -> Result<Target, Error> {
    let repository = reference.repository.clone();
    match &reference.registry {
        None => Ok(Target::Local {
            store: store(global)?,
            repository,
        }),
        Some(registry) => {
            let opts = transport(global);
            let client = RegistryClient::new(registry, &opts, credentials(registry, global)?)?;
            Ok(Target::Remote {
                client,
                repository,
                mirrors: mirrors(registry, global)?,
            })
        }
    }
}

fn plain(opts: &TransportOptions, http: bool) -> TransportOptions {
    TransportOptions {
        plain_http: Some(http),
        ..opts.clone()
    }
}

/// The mirrors of `registry` (`--mirror` first, then the mirrors file), each host a client
/// that fails fast: the registry itself is behind them.
pub(super) fn mirrors(registry: &str, global: &GlobalArgs) -> Result<Vec<Mirror>, Error> {
    let mut specs: Vec<String> = global.mirror.clone();
    if let Some(path) = &global.mirrors_config {
        let config = MirrorConfig::load(path).map_err(Error::Usage)?;
        specs.extend(config.mirrors_for(registry).iter().cloned());
    }
    let opts = TransportOptions {
        connect_timeout: Some(MIRROR_CONNECT.min(global.stall_timeout())),
        read_timeout: Some(global.stall_timeout()),
        ..transport(global)
    };
    specs
        .iter()
        // An empty entry (HOIST_MIRROR="" in a manifest) means no mirror.
        .filter(|spec| !spec.trim().is_empty())
        .map(|spec| {
            let replicas = replica_hosts(spec)
                .into_iter()
                .map(|entry| {
                    // `http://host` or `https://host` pins the scheme of one mirror (a node
                    // cache on the node's address speaks plain HTTP; the origin may not).
                    let (host, opts) = match entry.split_once("://") {
                        Some(("http", host)) => (host, plain(&opts, true)),
                        Some(("https", host)) => (host, plain(&opts, false)),
                        Some((scheme, _)) => {
                            return Err(Error::Usage(format!(
                                "mirror {entry:?}: use http:// or https://, not {scheme}://"
                            )))
                        }
                        None => (entry, opts.clone()),
                    };
                    let creds = credentials(host, global)?;
                    Ok(RegistryClient::new(host, &opts, creds)?.fail_fast())
                })
                .collect::<Result<Vec<_>, Error>>()?;
            if replicas.is_empty() {
                return Err(Error::Usage(format!("mirror {spec:?} names no host")));
            }
            Ok(Mirror::new(replicas))
        })
        .collect()
}

fn all_tags(reference: &str, extra: &[String]) -> Result<(Reference, Vec<String>), Error> {
    let (parsed, mut tags) = Reference::parse_with_tags(reference)?;
    for tag in extra {
        let (_, more) = Reference::parse_with_tags(&format!("{}:{tag}", parsed.repository))?;
        tags.extend(more);
    }
    if tags.is_empty() && parsed.digest.is_none() {
        tags.push("latest".into());
    }
    tags.dedup();
    Ok((parsed, tags))
}

async fn push(args: PushArgs, global: &GlobalArgs) -> Result<(), Error> {
    let (reference, tags) = all_tags(&args.reference, &args.tags)?;
    if let Some(bad) = args
        .mount_from
        .iter()
        .find(|r| !hoist::reference::valid_repository(r))
    {
        return Err(Error::Usage(format!(
            "--mount-from {bad:?} is not a repository name (e.g. team/model)"
        )));
    }
    let target = target(&reference, global)?;
    let timestamp = match std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .filter(|v| !v.is_empty())
    {
        Some(v) => Some(v.parse::<i64>().map_err(|_| {
            Error::Usage(format!(
                "SOURCE_DATE_EPOCH={v:?} is not a number of seconds"
            ))
        })?),
        None if args.created => Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        ),
        None => None,
    };
    let opts = PackOptions {
        walk: WalkOptions {
            include_hidden: args.include_hidden,
            follow_external_symlinks: args.follow_external_symlinks,
        },
        layer_format: args.layer_format,
        compression_level: args.compression_level,
        name: args.name,
        timestamp,
        temp_dir: match &target {
            Target::Local { store, .. } => Some(store.root().join("ingest")),
            Target::Remote { .. } => None,
        },
        annotations: args.annotations.into_iter().collect(),
        config_override: match &args.config_file {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                    .map_err(|e| Error::Usage(format!("--config-file {}: {e}", path.display())))?,
            ),
            None => None,
        },
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let push_opts = PushOptions {
        concurrency: args.concurrency,
        chunk_size: args.chunk_size,
        mount_from: args.mount_from.clone(),
        // Where earlier pushes went, as mount sources; a store that cannot open costs only that.
        remember: match &target {
            Target::Remote { .. } => store(global).ok(),
            Target::Local { .. } => None,
        },
    };
    let (packed, report) = transfer::push_folder(
        &args.dir,
        &opts,
        &target,
        &tags,
        &push_opts,
        observer(global),
    )
    .await?;
    if args.json {
        print_json(&report);
    } else {
        println!(
            "Pushed {} ({} files, {}) as {}: {} of {} blobs uploaded ({}), {} mounted, {} already there, in {:.1}s",
            target.describe(),
            packed.manifest.layers.len(),
            human_bytes(packed.manifest.layers.iter().map(|l| l.size).sum()),
            tags.join(", "),
            report.uploaded,
            report.blobs,
            human_bytes(report.uploaded_bytes),
            report.mounted,
            report.skipped,
            started.elapsed().as_secs_f64()
        );
        println!("Digest: {}", report.digest);
    }
    Ok(())
}

async fn inspect(args: InspectArgs, global: &GlobalArgs) -> Result<(), Error> {
    let reference = Reference::parse(&args.reference)?;
    let source = target(&reference, global)?;
    let resolved = source
        .resolve(&reference.target())
        .await
        .map_err(Error::from)?;
    let manifest = &resolved.manifest;
    if args.json {
        let config = fetch_config(&source, manifest).await;
        let doc = serde_json::json!({
            "digest": resolved.digest,
            "manifestDigest": resolved.manifest_digest,
            "manifest": manifest,
            "config": config,
        });
        println!("{}", serde_json::to_string_pretty(&doc).expect("json"));
        return Ok(());
    }
    println!("Reference:     {reference}");
    println!("Digest:        {}", resolved.digest);
    println!(
        "Artifact type: {}",
        manifest
            .artifact_type
            .as_deref()
            .unwrap_or(&manifest.config.media_type)
    );
    println!();
    println!("{:<40} {:>12}  MEDIA TYPE", "FILE", "SIZE");
    let plan = LayerPlan::from_manifest(manifest, true).ok();
    for layer in &manifest.layers {
        let name = plan
            .as_ref()
            .and_then(|p| p.layers.iter().find(|l| l.descriptor == *layer))
            .map_or_else(
                || format!("<{}>", &layer.digest.hex()[..12]),
                |l| l.path.display().to_string(),
            );
        println!(
            "{:<40} {:>12}  {}",
            name,
            human_bytes(layer.size),
            layer.media_type
        );
    }
    let total: u64 = manifest.layers.iter().map(|l| l.size).sum();
    println!(
        "{:<40} {:>12}  ({} layers)",
        "TOTAL",
        human_bytes(total),
        manifest.layers.len()
    );
    Ok(())
}

/// The config as JSON when it is small JSON; `null` otherwise.
async fn fetch_config(source: &Target, manifest: &hoist::oci::Manifest) -> serde_json::Value {
    if manifest.config.size > 1 << 20 {
        return serde_json::Value::Null;
    }
    let bytes = match source {
        Target::Local { store, .. } => store.read_blob(&manifest.config.digest, 1 << 20).ok(),
        Target::Remote {
            client, repository, ..
        } => match client
            .get_blob(repository, &manifest.config.digest, None)
            .await
        {
            // At most the size the manifest declares: a server may send more.
            Ok(b) => client.read_content(b.response, manifest.config.size).await,
            Err(_) => None,
        },
    };
    bytes
        .filter(|b| hoist::digest::Digest::of_bytes(b) == manifest.config.digest)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

async fn copy(args: CopyArgs, global: &GlobalArgs) -> Result<(), Error> {
    let src_ref = Reference::parse(&args.source)?;
    let (dst_ref, mut tags) = Reference::parse_with_tags(&args.destination)?;
    if tags.is_empty() && dst_ref.digest.is_none() {
        tags.push(src_ref.tag.clone().unwrap_or_else(|| "latest".into()));
    }
    let (src, dst) = (target(&src_ref, global)?, target(&dst_ref, global)?);
    let report = transfer::copy(
        &src,
        &src_ref.target(),
        &dst,
        &tags,
        args.concurrency,
        observer(global),
    )
    .await?;
    if args.recursive {
        let n = transfer::copy_referrers(&src, &dst, &report.digest, args.concurrency).await?;
        println!("Copied {n} attached artifacts");
    }
    println!(
        "Copied {src_ref} to {} as {}: {} blobs copied ({}), {} mounted, {} already there",
        dst.describe(),
        tags.join(", "),
        report.copied,
        human_bytes(report.copied_bytes),
        report.mounted,
        report.skipped
    );
    println!("Digest: {}", report.digest);
    Ok(())
}

fn list(global: &GlobalArgs) -> Result<(), Error> {
    let store = store(global)?;
    let entries = store.list()?;
    if entries.is_empty() {
        println!(
            "The local store {} is empty; `hoist push DIR NAME:TAG` adds a model.",
            store.root().display()
        );
        return Ok(());
    }
    println!("{:<40} {:>12}  DIGEST", "REFERENCE", "SIZE");
    for (name, desc) in entries {
        let size = store
            .read_blob(&desc.digest, hoist::oci::MAX_MANIFEST_BYTES)
            .ok()
            .and_then(|b| match ManifestKind::parse(Some(&desc.media_type), &b) {
                Ok(ManifestKind::Image(m)) => Some(m.layers.iter().map(|l| l.size).sum::<u64>()),
                _ => None,
            });
        println!(
            "{:<40} {:>12}  {}",
            name,
            size.map_or("-".into(), human_bytes),
            desc.digest
        );
    }
    Ok(())
}

fn parse_layer_format(s: &str) -> Result<LayerFormat, String> {
    LayerFormat::parse(s).ok_or_else(|| format!("{s:?} is not one of raw, tar, tar+gzip, tar+zstd"))
}

/// Sizes like `16MiB`, `100M`, `1048576`.
pub(super) fn parse_size(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 16MiB)"))?;
    let mult = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?} has an unknown unit (use KiB, MiB or GiB)")),
    };
    Ok(n * mult)
}

/// Check a pulled folder: against a manifest (every differing file listed), or offline
/// against its ready marker. Either way files nobody expects are listed too.
async fn verify(args: VerifyArgs, global: &GlobalArgs) -> Result<(), Error> {
    let marker_path = match (&args.reference, &args.marker) {
        (Some(reference), _) => return verify_against(&args, reference, global).await,
        (None, Some(marker)) => marker.clone(),
        (None, None) => unreachable!("clap requires one"),
    };
    let text = std::fs::read(&marker_path).map_err(|e| {
        Error::Usage(format!(
            "no ready marker at {} ({e}): the pull has not finished",
            marker_path.display()
        ))
    })?;
    let marker: super::pull::ReadyMarker = serde_json::from_slice(&text).map_err(|e| {
        Error::Usage(format!(
            "{} is not a hoist ready marker: {e}",
            marker_path.display()
        ))
    })?;
    let expected: Vec<Expected> = marker
        .files
        .iter()
        .filter(|f| f.digest.is_some())
        .map(|f| Expected {
            path: f.path.clone(),
            size: f.size,
            digest: f.digest.clone(),
        })
        .collect();
    let all_raw = expected.len() == marker.files.len();
    let ignore: Vec<PathBuf> = marker_path
        .strip_prefix(&args.dir)
        .map(|p| vec![p.to_path_buf()])
        .unwrap_or_default();
    let check = check_folder(&args.dir, &expected, args.full, all_raw, &ignore);
    report_check(&check, &args.dir, &marker.reference)?;
    println!(
        "Verified {} files of {} ({}) in {}",
        check.checked,
        marker.reference,
        marker.digest,
        args.dir.display()
    );
    Ok(())
}

/// Compare the folder with the files `reference` holds: each raw layer's file must exist with
/// its size and digest, and nothing else may be there. All differences are listed in one error.
async fn verify_against(
    args: &VerifyArgs,
    reference: &str,
    global: &GlobalArgs,
) -> Result<(), Error> {
    let parsed = Reference::parse(reference)?;
    let source = target(&parsed, global)?;
    let resolved = source.resolve(&parsed.target()).await?;
    let plan = LayerPlan::from_manifest(&resolved.manifest, false)
        .map_err(hoist::transfer::TransferError::from)?;
    let expected: Vec<Expected> = plan
        .layers
        .iter()
        .filter(|l| l.format == LayerFormat::Raw)
        .map(|l| Expected {
            path: l.path.clone(),
            size: l.descriptor.size,
            digest: Some(l.descriptor.digest.clone()),
        })
        .collect();
    // A tar layer's files carry no digest of their own and are not listed in the manifest.
    let unchecked = plan.layers.len() - expected.len();
    let check = check_folder(&args.dir, &expected, args.full, unchecked == 0, &[]);
    report_check(&check, &args.dir, reference)?;
    println!(
        "Verified {} files of {reference} ({}) in {}{}",
        check.checked,
        resolved.digest,
        args.dir.display(),
        if unchecked > 0 {
            format!("; {unchecked} tar layers have no per-file digests and were not checked")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// One error listing every differing and every unexpected file.
fn report_check(check: &FolderCheck, dir: &Path, what: &str) -> Result<(), Error> {
    if check.is_clean() {
        return Ok(());
    }
    let mut parts = Vec::new();
    if !check.differ.is_empty() {
        parts.push(format!(
            "{} of {} files in {} differ from {what}: {}",
            check.differ.len(),
            check.checked,
            dir.display(),
            check.differ.join("; ")
        ));
    }
    if !check.extra.is_empty() {
        parts.push(format!(
            "{} holds {} files that {what} does not: {}",
            dir.display(),
            check.extra.len(),
            check.extra.join(", ")
        ));
    }
    Err(Error::Verify(parts.join("; ")))
}

/// Repack an artifact in another shape: pull (verified) into a scratch folder, pack, push.
async fn convert(args: ConvertArgs, global: &GlobalArgs) -> Result<(), Error> {
    let src = Reference::parse(&args.source)?;
    let (dst, tags) = all_tags(&args.destination, &[])?;
    let source = target(&src, global)?;
    let dest = target(&dst, global)?;
    let scratch_root = store(global)?.root().join("ingest");
    let scratch = tempfile::Builder::new()
        .prefix("hoist-convert-")
        .tempdir_in(&scratch_root)
        .map_err(|e| Error::Usage(format!("scratch folder in {}: {e}", scratch_root.display())))?;
    let to = match args.to {
        ConvertShape::Modelpack => transfer::ConvertTo::ModelPack,
        ConvertShape::Oras => transfer::ConvertTo::Oras,
    };
    let opts = PackOptions {
        layer_format: args.layer_format,
        name: Some(
            src.repository
                .rsplit('/')
                .next()
                .unwrap_or("model")
                .to_string(),
        ),
        ..Default::default()
    };
    let report = transfer::convert(
        &source,
        &src.target(),
        &dest,
        &tags,
        to,
        &opts,
        scratch.path(),
        observer(global),
    )
    .await?;
    if !global.quiet {
        eprintln!(
            "Converted {} to {}: {} of {} blobs uploaded, {} mounted, {} already there",
            args.source,
            args.destination,
            report.uploaded,
            report.blobs,
            report.mounted,
            report.skipped
        );
    }
    println!("Digest: {}", report.digest);
    Ok(())
}
