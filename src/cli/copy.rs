//! `copy` and `convert`: an artifact moved between registries and the local store, as it is
//! or repacked in another shape.

use clap::Args;
use hoist::oci::LayerFormat;
use hoist::pack::PackOptions;
use hoist::reference::Reference;
use hoist::transfer::import::ImportSource;
use hoist::transfer::{self};
use hoist::Error;

use super::global::Env;
use super::output::{count, human_bytes, observer, print_json};
use super::parse;

use super::push::all_tags;

#[derive(Args)]
pub struct CopyArgs {
    /// Source reference, or a Hugging Face Hub repository: hf://ORG/NAME[@REVISION],
    /// hf://datasets/ORG/NAME[@REVISION] (HF_ENDPOINT, HF_TOKEN as the Hub's own tools).
    source: String,
    /// Destination reference (`repo:v1,latest` tags twice).
    destination: String,
    /// Blobs copied at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Also copy what is attached to the artifact (signatures, SBOMs), recursively.
    #[arg(long, short = 'r')]
    recursive: bool,
    /// From the Hub: copy only the files matching this glob (repeatable; `*` crosses `/`).
    #[arg(long)]
    include: Vec<String>,
    /// From the Hub: leave out the files matching this glob (repeatable).
    #[arg(long)]
    exclude: Vec<String>,
    /// From the Hub: no chunk index (delta pulls of the next revision then fetch whole files).
    #[arg(long)]
    no_chunk_index: bool,
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

pub async fn copy(args: CopyArgs, env: &Env) -> Result<(), Error> {
    if let Some(source) = env.ctx.import_source(&args.source)? {
        return import(source.as_ref(), args, env).await;
    }
    if !args.include.is_empty() || !args.exclude.is_empty() || args.no_chunk_index {
        return Err(Error::Usage(
            "--include, --exclude and --no-chunk-index apply to a copy from the Hub (hf://…)"
                .into(),
        ));
    }
    let src_ref = Reference::parse(&args.source)?;
    let (dst_ref, tags) = Reference::parse_destination(&args.destination, &[], || {
        src_ref.tag.clone().unwrap_or_else(|| "latest".into())
    })?;
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

/// `hoist copy hf://… DEST`: the source's repository streamed into DEST as a ModelPack
/// artifact.
async fn import(source: &dyn ImportSource, args: CopyArgs, env: &Env) -> Result<(), Error> {
    if args.recursive {
        return Err(Error::Usage(
            "--recursive copies what is attached to an OCI artifact; a Hub repository has none"
                .into(),
        ));
    }
    let (dst_ref, tags) =
        Reference::parse_destination(&args.destination, &[], || source.default_tag())?;
    let filter = hoist::transfer::LayerFilter {
        include: parse::globs("--include", &args.include)?,
        exclude: parse::globs("--exclude", &args.exclude)?,
        kinds: None,
    };
    let opts = transfer::ImportOptions {
        concurrency: args.concurrency,
        filter,
        chunk_index: !args.no_chunk_index,
    };
    let dst = env.ctx.target(&dst_ref)?;
    let report = transfer::import(source, &dst, &tags, &opts, observer(env.ui)).await?;
    if args.json {
        print_json(&report);
        return Ok(());
    }
    println!(
        "Copied {} (commit {}) to {} as {}: {} streamed ({}), {} already there{}",
        report.source,
        report.commit,
        dst.describe(),
        tags.join(", "),
        count(report.uploaded, "file"),
        human_bytes(report.uploaded_bytes),
        report.skipped,
        match report.resumed {
            0 => String::new(),
            n => format!(", {} resumed", count(n as usize, "broken read")),
        }
    );
    println!("Digest: {}", report.digest);
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
