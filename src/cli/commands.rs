//! One function per subcommand that moves or checks an artifact: turn flags into library
//! options, call, print the result.

use std::path::PathBuf;

use clap::Args;
use hoist::oci::{LayerFormat, ManifestKind};
use hoist::pack::{PackOptions, WalkOptions};
use hoist::reference::Reference;
use hoist::transfer::{self, PushOptions, Target};
use hoist::Error;

use super::global::Env;
use super::output::{count, human_bytes, observer, print_json};
use super::parse;

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
    #[arg(long, default_value = "raw", value_parser = parse::layer_format)]
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
    #[arg(long, value_name = "BYTES", value_parser = parse::size)]
    chunk_size: Option<u64>,
    /// A repository of the same registry that may already hold some of the files (e.g. the
    /// previous version): they are mounted from it instead of uploaded (repeatable).
    /// Repositories this machine pushed a file to before are tried too.
    #[arg(long = "mount-from", value_name = "REPOSITORY")]
    mount_from: Vec<String>,
    /// A manifest annotation `KEY=VALUE` (repeatable).
    #[arg(long = "annotation", short = 'a', value_name = "KEY=VALUE", value_parser = parse::annotation)]
    annotations: Vec<(String, String)>,
    /// A JSON file with a partial ModelPack config (e.g. `{"descriptor": {"licenses":
    /// ["mit"]}, "config": {"paramSize": "8b"}}`) merged over what hoist reads from the model.
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,
    /// Attach no chunk index. By default push cuts each file into chunks in the same read
    /// that hashes it and attaches the list beside the manifest (a referrer): a later pull
    /// of another version then downloads only the chunks that changed.
    #[arg(long)]
    no_chunk_index: bool,
    /// Also publish the model's image-volume form under `TAG-volume` for each tag: an image
    /// that containerd and CRI-O both mount as the model's folder (Kubernetes image volumes).
    /// Prints the reference to put in the Pod spec.
    #[arg(long)]
    image_volume: bool,
    /// The default (kept for scripts written when the index was optional).
    #[arg(long, hide = true, conflicts_with = "no_chunk_index")]
    chunk_index: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct IndexArgs {
    /// The artifact to index (e.g. one pushed by ORAS): its blobs are downloaded, verified,
    /// chunked, and the index attached as a referrer.
    reference: String,
}

#[derive(Args)]
pub struct CopyArgs {
    /// Source reference.
    source: String,
    /// Destination reference (`repo:v1,latest` tags twice).
    destination: String,
    /// Blobs copied at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Also copy what is attached to the artifact (signatures, SBOMs), recursively.
    #[arg(long, short = 'r')]
    recursive: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
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
    /// Layer encoding for --to modelpack: raw (default), tar, tar+gzip, tar+zstd. An ORAS
    /// artifact is one raw layer per file.
    #[arg(long, value_parser = parse::layer_format)]
    layer_format: Option<LayerFormat>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ConvertShape {
    Modelpack,
    Oras,
    /// An image that containerd and CRI-O mount as the model's folder.
    ImageVolume,
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
    /// Hash every file, even those the pull's record vouches for.
    #[arg(long)]
    full: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ListArgs {
    /// Print the result as JSON (one object per tag).
    #[arg(long)]
    json: bool,
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

pub async fn push(args: PushArgs, env: &Env) -> Result<(), Error> {
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
    let target = env.ctx.target(&reference)?;
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
        chunk_index: !args.no_chunk_index,
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let push_opts = PushOptions {
        concurrency: args.concurrency,
        chunk_size: args.chunk_size,
        mount_from: args.mount_from.clone(),
        // Where earlier pushes went, as mount sources; a store that cannot open costs only that.
        remember: match &target {
            Target::Remote { .. } => env.ctx.store().ok(),
            Target::Local { .. } => None,
        },
    };
    if args.image_volume && tags.is_empty() {
        return Err(Error::Usage(
            "--image-volume names its form after the tag: push with a tag".into(),
        ));
    }
    let (packed, report) = transfer::push_folder(
        &args.dir,
        &opts,
        &target,
        &tags,
        &push_opts,
        observer(env.ui),
    )
    .await?;
    let (files, bytes) = (
        packed.manifest.layers.len(),
        packed.manifest.layers.iter().map(|l| l.size).sum(),
    );
    let volume = match args.image_volume {
        true => {
            let vtags: Vec<String> = tags.iter().map(|t| transfer::volume_tag(t)).collect();
            let (_, vreport) = transfer::push_volume_beside(
                packed,
                &args.dir,
                &opts,
                &target,
                &vtags,
                &push_opts,
                observer(env.ui),
            )
            .await?;
            Some(vreport)
        }
        false => None,
    };
    if args.json {
        match &volume {
            Some(v) => print_json(&serde_json::json!({"modelpack": report, "imageVolume": v})),
            None => print_json(&report),
        }
    } else {
        println!(
            "Pushed {} ({}, {}) as {}: {} of {} blobs uploaded ({}), {} mounted, {} already there, in {:.1}s",
            target.describe(),
            count(files, "file"),
            human_bytes(bytes),
            tags.join(", "),
            report.uploaded,
            report.blobs,
            human_bytes(report.uploaded_bytes),
            report.mounted,
            report.skipped,
            started.elapsed().as_secs_f64()
        );
        println!("Digest: {}", report.digest);
        if let Some(v) = &volume {
            let at = Reference {
                tag: v.tags.first().cloned(),
                digest: None,
                ..reference.clone()
            };
            println!(
                "Image volume: {at} ({}; {} uploaded) — the reference for a Pod's volumes[].image.reference",
                v.digest,
                human_bytes(v.uploaded_bytes)
            );
        }
    }
    Ok(())
}

pub async fn copy(args: CopyArgs, env: &Env) -> Result<(), Error> {
    let src_ref = Reference::parse(&args.source)?;
    let (dst_ref, mut tags) = Reference::parse_with_tags(&args.destination)?;
    if tags.is_empty() && dst_ref.digest.is_none() {
        tags.push(src_ref.tag.clone().unwrap_or_else(|| "latest".into()));
    }
    let (src, dst) = (env.ctx.target(&src_ref)?, env.ctx.target(&dst_ref)?);
    let report = transfer::copy(
        &src,
        &src_ref.target(),
        &dst,
        &tags,
        args.concurrency,
        observer(env.ui),
    )
    .await?;
    let attached = if args.recursive {
        Some(transfer::copy_referrers(&src, &dst, &report.digest, args.concurrency).await?)
    } else {
        None
    };
    if args.json {
        print_json(&serde_json::json!({
            "source": src_ref.to_string(),
            "destination": dst.describe(),
            "tags": tags,
            "report": report,
            "attached": attached,
        }));
        return Ok(());
    }
    if let Some(n) = attached {
        println!("Copied {}", count(n, "attached artifact"));
    }
    println!(
        "Copied {src_ref} to {} as {}: {} copied ({}), {} mounted, {} already there",
        dst.describe(),
        tags.join(", "),
        count(report.copied, "blob"),
        human_bytes(report.copied_bytes),
        report.mounted,
        report.skipped
    );
    println!("Digest: {}", report.digest);
    Ok(())
}

pub fn list(args: ListArgs, env: &Env) -> Result<(), Error> {
    let store = env.ctx.existing_store()?;
    let entries = store.list()?;
    let rows: Vec<(String, Option<u64>, hoist::digest::Digest)> = entries
        .into_iter()
        .map(|(name, desc)| {
            let size = store
                .read_blob(&desc.digest, hoist::oci::MAX_MANIFEST_BYTES)
                .ok()
                .and_then(|b| match ManifestKind::parse(Some(&desc.media_type), &b) {
                    Ok(ManifestKind::Image(m)) => {
                        Some(m.layers.iter().map(|l| l.size).sum::<u64>())
                    }
                    _ => None,
                });
            (name, size, desc.digest)
        })
        .collect();
    if args.json {
        let doc: Vec<_> = rows
            .iter()
            .map(|(name, size, digest)| {
                serde_json::json!({"reference": name, "size": size, "digest": digest})
            })
            .collect();
        print_json(&doc);
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "The local store {} is empty; `hoist push DIR NAME:TAG` adds a model.",
            store.root().display()
        );
        return Ok(());
    }
    println!("{:<40} {:>12}  DIGEST", "REFERENCE", "SIZE");
    for (name, size, digest) in rows {
        println!(
            "{:<40} {:>12}  {}",
            name,
            size.map_or("-".into(), human_bytes),
            digest
        );
    }
    Ok(())
}

/// Check a pulled folder: against a manifest (every differing file listed), or offline
/// against its ready marker. Either way files nobody expects are listed too.
pub async fn verify(args: VerifyArgs, env: &Env) -> Result<(), Error> {
    let verified = match (&args.reference, &args.marker) {
        (Some(reference), _) => {
            let parsed = Reference::parse(reference)?;
            let source = env.ctx.target(&parsed)?;
            transfer::verify_folder(&source, &parsed.target(), &args.dir, args.full).await?
        }
        (None, Some(marker)) => transfer::verify_marker(&args.dir, marker, args.full)?,
        (None, None) => unreachable!("clap requires one"),
    };
    if args.json {
        print_json(&verified);
        return Ok(());
    }
    println!(
        "Verified {} of {} ({}) in {}{}",
        count(verified.checked, "file"),
        verified.reference,
        verified.digest,
        verified.dir.display(),
        match verified.unchecked_tar_layers {
            0 => String::new(),
            1 => "; 1 tar layer has no per-file digests and was not checked".into(),
            n => format!("; {n} tar layers have no per-file digests and were not checked"),
        }
    );
    Ok(())
}

/// Repack an artifact in another shape: pull (verified) into a scratch folder, pack, push.
pub async fn convert(args: ConvertArgs, env: &Env) -> Result<(), Error> {
    let to = match (args.to, args.layer_format) {
        (ConvertShape::Oras, Some(format)) if format != LayerFormat::Raw => {
            return Err(Error::Usage(
                "--to oras makes one raw layer per file: --layer-format applies to --to modelpack"
                    .into(),
            ))
        }
        (ConvertShape::ImageVolume, Some(format)) if format != LayerFormat::Tar => {
            return Err(Error::Usage(
                "--to image-volume makes one uncompressed tar layer per file: --layer-format applies to --to modelpack"
                    .into(),
            ))
        }
        (ConvertShape::Oras, _) => transfer::ConvertTo::Oras,
        (ConvertShape::ImageVolume, _) => transfer::ConvertTo::ImageVolume,
        (ConvertShape::Modelpack, _) => transfer::ConvertTo::ModelPack,
    };
    let src = Reference::parse(&args.source)?;
    let (dst, tags) = all_tags(&args.destination, &[])?;
    let source = env.ctx.target(&src)?;
    let dest = env.ctx.target(&dst)?;
    let scratch_root = env.ctx.store()?.root().join("ingest");
    let scratch = tempfile::Builder::new()
        .prefix("hoist-convert-")
        .tempdir_in(&scratch_root)
        .map_err(|source| Error::Write {
            what: "a scratch folder in",
            path: scratch_root.clone(),
            source,
        })?;
    let opts = PackOptions {
        layer_format: args.layer_format.unwrap_or(LayerFormat::Raw),
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
        observer(env.ui),
    )
    .await?;
    if args.json {
        print_json(&report);
        return Ok(());
    }
    if !env.ui.quiet {
        eprintln!(
            "Converted {} to {}: {} of {} uploaded, {} mounted, {} already there",
            args.source,
            args.destination,
            report.uploaded,
            count(report.blobs, "blob"),
            report.mounted,
            report.skipped
        );
    }
    println!("Digest: {}", report.digest);
    Ok(())
}

#[derive(Args)]
pub struct RmArgs {
    /// A local-store model: `name:tag`, or `name@sha256:…` for every tag pointing at it.
    reference: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PruneArgs {
    /// Keep the newest N versions of each repository (a version: a manifest with its tags,
    /// as new as its newest tag).
    #[arg(long, value_name = "N", required_unless_present = "older_than")]
    keep: Option<usize>,
    /// Remove versions last tagged longer ago than this (e.g. 30d, 12h).
    #[arg(long, value_name = "AGE", value_parser = parse::age)]
    older_than: Option<std::time::Duration>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct TagArgs {
    /// The local-store model to name (`name:tag` or `name@sha256:…`).
    source: String,
    /// The new name (`name:tag`; `name:v2,latest` tags twice).
    target: String,
}

/// A reference that must name the local store.
fn local(reference: &str, verb: &str) -> Result<(Reference, Vec<String>), Error> {
    let (parsed, tags) = Reference::parse_with_tags(reference)?;
    if let Some(registry) = &parsed.registry {
        return Err(Error::Usage(format!(
            "hoist {verb} works on the local store; {reference} names the registry {registry}"
        )));
    }
    Ok((parsed, tags))
}

pub fn rm(args: RmArgs, env: &Env) -> Result<(), Error> {
    let (reference, _) = local(&args.reference, "rm")?;
    let store = env.ctx.existing_store()?;
    let removed = store.remove(
        &reference.repository,
        reference.tag.as_deref(),
        reference.digest.as_ref(),
    )?;
    if args.json {
        print_json(&removed);
        return Ok(());
    }
    println!(
        "Removed {}; freed {} ({})",
        removed.tags.join(", "),
        count(removed.freed_blobs, "blob"),
        human_bytes(removed.freed_bytes)
    );
    Ok(())
}

pub fn tag(args: TagArgs, env: &Env) -> Result<(), Error> {
    let (source, _) = local(&args.source, "tag")?;
    let (target, tags) = local(&args.target, "tag")?;
    if tags.is_empty() {
        return Err(Error::Usage(format!(
            "{} names no tag (e.g. {}:v2)",
            args.target, target.repository
        )));
    }
    let store = env.ctx.existing_store()?;
    let manifest = store.find(
        &source.repository,
        source.tag.as_deref(),
        source.digest.as_ref(),
    )?;
    for tag in &tags {
        store.tag_as(&manifest, &target.repository, tag)?;
    }
    println!(
        "Tagged {} as {}",
        manifest.digest,
        tags.iter()
            .map(|t| format!("{}:{t}", target.repository))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

pub fn prune(args: PruneArgs, env: &Env) -> Result<(), Error> {
    let store = env.ctx.existing_store()?;
    let pruned = store.prune(hoist::store::Keep {
        newest: args.keep,
        younger_than: args.older_than,
    })?;
    if args.json {
        print_json(&pruned);
        return Ok(());
    }
    for version in &pruned.versions {
        println!("Removed {}", version.tags.join(", "));
    }
    println!(
        "Pruned {}; freed {} ({})",
        count(pruned.versions.len(), "version"),
        count(pruned.freed_blobs, "blob"),
        human_bytes(pruned.freed_bytes)
    );
    Ok(())
}

/// A scratch folder in the store's ingest area (same filesystem as the store).
fn scratch_dir(env: &Env) -> Result<tempfile::TempDir, Error> {
    let root = env.ctx.store()?.root().join("ingest");
    tempfile::Builder::new()
        .prefix("hoist-scratch-")
        .tempdir_in(&root)
        .map_err(|source| Error::Write {
            what: "a scratch folder in",
            path: root,
            source,
        })
}

pub async fn index(args: IndexArgs, env: &Env) -> Result<(), Error> {
    let reference = Reference::parse(&args.reference)?;
    let target = env.ctx.target(&reference)?;
    let scratch = scratch_dir(env)?;
    let (digest, index) =
        transfer::index_artifact(&target, &reference.target(), scratch.path()).await?;
    let chunks: usize = index.blobs.values().map(Vec::len).sum();
    println!(
        "Indexed {reference}: {}, {}; attached as {digest}",
        count(index.blobs.len(), "blob"),
        count(chunks, "chunk")
    );
    Ok(())
}
