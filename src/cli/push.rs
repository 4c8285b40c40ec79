//! `push` and `index`: a folder becomes an artifact in a registry or the local store; an
//! artifact without a chunk index gets one.

use std::path::PathBuf;

use clap::Args;
use hoist::oci::LayerFormat;
use hoist::pack::{PackOptions, WalkOptions};
use hoist::reference::Reference;
use hoist::transfer::{self, PublishOptions, PushOptions};
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
    /// Sign the pushed model with this EC private key (PEM) and attach the signature
    /// (OpenSSF model signing) as a referrer, as `hoist sign` does.
    #[arg(long, value_name = "KEY.pem")]
    sign: Option<PathBuf>,
    /// With --sign: the key's X.509 certificate (PEM), carried in the signature in place of
    /// the key's hint (see `hoist sign --cert`).
    #[arg(long, value_name = "CERT.pem", requires = "sign")]
    cert: Option<PathBuf>,
    /// With --cert: intermediate certificates (PEM, repeatable).
    #[arg(long, value_name = "CHAIN.pem", requires = "cert")]
    cert_chain: Vec<PathBuf>,
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

pub(super) fn all_tags(
    reference: &str,
    extra: &[String],
) -> Result<(Reference, Vec<String>), Error> {
    Ok(Reference::parse_destination(reference, extra, || {
        "latest".into()
    })?)
}

pub async fn push(args: PushArgs, env: &Env) -> Result<(), Error> {
    let (reference, tags) = all_tags(&args.reference, &args.tags)?;
    let target = env.ctx.target(&reference)?;
    let opts = PublishOptions {
        pack: PackOptions {
            walk: WalkOptions {
                include_hidden: args.include_hidden,
                follow_external_symlinks: args.follow_external_symlinks,
            },
            layer_format: args.layer_format,
            compression_level: args.compression_level,
            name: args.name,
            timestamp: hoist::pack::creation_time(args.created).map_err(Error::Usage)?,
            annotations: args.annotations.into_iter().collect(),
            config_override: match &args.config_file {
                Some(path) => Some(read_config_file(path)?),
                None => None,
            },
            chunk_index: !args.no_chunk_index,
            ..Default::default()
        },
        push: PushOptions {
            concurrency: args.concurrency,
            chunk_size: args.chunk_size,
            mount_from: args.mount_from.clone(),
            // Where earlier pushes went, as mount sources; a store that cannot open costs only that.
            remember: env.ctx.push_memory(&target),
        },
        image_volume: args.image_volume,
        sign_key: args.sign.clone(),
        sign_cert: args.cert.clone(),
        sign_cert_chain: args.cert_chain.clone(),
    };
    let started = std::time::Instant::now();
    let published = transfer::publish(&args.dir, &target, &tags, &opts, observer(env.ui)).await?;
    let report = &published.report;
    if let (Some(referrer), false) = (&published.signature, env.ui.quiet) {
        eprintln!("Signed {}: signature {referrer} attached", report.digest);
    }
    if args.json {
        match &published.image_volume {
            Some(v) => print_json(&serde_json::json!({"modelpack": report, "imageVolume": v})),
            None => print_json(report),
        }
        return Ok(());
    }
    println!(
        "Pushed {} ({}, {}) as {}: {} of {} blobs uploaded ({}), {} mounted, {} already there, in {:.1}s",
        target.describe(),
        count(published.files, "file"),
        human_bytes(published.bytes),
        tags.join(", "),
        report.uploaded,
        report.blobs,
        human_bytes(report.uploaded_bytes),
        report.mounted,
        report.skipped,
        started.elapsed().as_secs_f64()
    );
    println!("Digest: {}", report.digest);
    if let Some(v) = &published.image_volume {
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
    Ok(())
}

/// `--config-file`: a partial ModelPack config as JSON.
fn read_config_file(path: &std::path::Path) -> Result<serde_json::Value, Error> {
    std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| Error::Usage(format!("--config-file {}: {e}", path.display())))
}

/// A scratch folder in the store's ingest area (same filesystem as the store).
pub(super) fn scratch_dir(env: &Env) -> Result<tempfile::TempDir, Error> {
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
