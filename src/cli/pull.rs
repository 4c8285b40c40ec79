//! `hoist pull`: flags for the pull engine, metrics out, exit code in.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use hoist::materialize::LinkMode;
use hoist::metrics::PullMetrics;
use hoist::oci::modelpack::LayerKind;
use hoist::reference::Reference;
use hoist::transfer::fetch::{FetchOptions, RetryPolicy};
use hoist::transfer::{self, LayerFilter, PullOptions};
use hoist::Error;

use super::commands::{parse_size, store, target};
use super::output::{human_bytes, observer, print_json};
use super::GlobalArgs;

#[derive(Args)]
pub struct PullArgs {
    /// What to pull.
    reference: String,
    /// The folder to write files into (created if missing).
    #[arg(short, long, default_value = ".")]
    output: PathBuf,
    /// Blobs fetched at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// HTTP connections open at once; large blobs are split into byte ranges fetched in parallel.
    #[arg(long, default_value_t = 16)]
    max_connections: usize,
    /// Byte-range size for large blobs (default: adapted to the blob, 8–64 MiB).
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    range_size: Option<u64>,
    /// Attempts per range before giving up (backoff with jitter between them).
    #[arg(long, default_value_t = 6)]
    retries: u32,
    /// Seconds without a byte before a connection is dropped and its range retried.
    #[arg(long, default_value_t = 30)]
    stall_timeout: u64,
    /// Use the local store as a node cache: blobs found there are not downloaded, and
    /// downloaded blobs are kept there (concurrent pulls download each blob once).
    #[arg(long, env = "HOIST_CACHE")]
    cache: bool,
    /// How files are made from cached blobs: auto (reflink, else copy), reflink, hardlink
    /// (read-only files sharing the cache's inode), copy.
    #[arg(long, default_value = "auto", value_parser = parse_link_mode)]
    link_mode: LinkMode,
    /// Only files whose path matches this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,
    /// Skip files whose path matches this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Only these ModelPack kinds: weight, config (weight.config), doc, code, dataset.
    #[arg(long, value_delimiter = ',', value_parser = parse_kind)]
    kind: Vec<LayerKind>,
    /// Accept layer titles with `..` or absolute paths (they are still kept inside the folder).
    #[arg(long)]
    allow_path_traversal: bool,
    /// Write Prometheus metrics of this pull to FILE (node-exporter textfile collector).
    #[arg(long, env = "HOIST_METRICS_FILE", value_name = "FILE")]
    metrics_file: Option<PathBuf>,
    /// Push the metrics to this Pushgateway URL.
    #[arg(long, env = "HOIST_PUSHGATEWAY", value_name = "URL")]
    pushgateway: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn pull(args: PullArgs, global: &GlobalArgs) -> Result<(), Error> {
    let started = std::time::Instant::now();
    let repository = args.reference.clone();
    let result = run(&args, global).await;
    if args.metrics_file.is_some() || args.pushgateway.is_some() {
        let (report, failure) = match &result {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e.exit_code().reason())),
        };
        let metrics = PullMetrics {
            repository: Reference::parse(&repository).map_or(repository, |r| r.repository),
            seconds: started.elapsed().as_secs_f64(),
            failure,
            bytes_total: report.map_or(0, |r| r.bytes),
            bytes_downloaded: report.map_or(0, |r| r.downloaded_bytes),
            cache_hits: report.map_or(0, |r| r.cache_hits as u64),
            cache_misses: report.map_or(0, |r| r.cache_misses as u64),
        };
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
        println!(
            "Pulled {} into {}: {} files, {} ({} downloaded, {} already in place, {} from cache) in {:.1}s",
            args.reference,
            args.output.display(),
            report.files,
            human_bytes(report.bytes),
            human_bytes(report.downloaded_bytes),
            report.skipped,
            report.cache_hits,
            started.elapsed().as_secs_f64()
        );
        println!("Digest: {}", report.digest);
    }
    Ok(())
}

async fn run(args: &PullArgs, global: &GlobalArgs) -> Result<transfer::PullReport, Error> {
    let reference = Reference::parse(&args.reference)?;
    let source = target(&reference, global)?;
    let opts = PullOptions {
        concurrency: args.concurrency,
        allow_path_traversal: args.allow_path_traversal,
        fetch: FetchOptions {
            max_connections: args.max_connections.max(1),
            range_size: args.range_size,
            retry: RetryPolicy {
                attempts: args.retries.max(1),
                ..Default::default()
            },
            stall_timeout: Duration::from_secs(args.stall_timeout.max(1)),
        },
        cache: if args.cache {
            Some(store(global)?)
        } else {
            None
        },
        link_mode: args.link_mode,
        filter: LayerFilter {
            include: globs(&args.include)?,
            exclude: globs(&args.exclude)?,
            kinds: (!args.kind.is_empty()).then(|| args.kind.clone()),
        },
    };
    Ok(transfer::pull(
        &source,
        &reference.target(),
        &args.output,
        &opts,
        observer(global),
    )
    .await?)
}

fn globs(patterns: &[String]) -> Result<Option<globset::GlobSet>, Error> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = globset::GlobSetBuilder::new();
    for p in patterns {
        let glob = globset::GlobBuilder::new(p)
            .literal_separator(false)
            .build()
            .map_err(|e| Error::Usage(format!("bad glob {p:?}: {e}")))?;
        set.add(glob);
    }
    set.build()
        .map(Some)
        .map_err(|e| Error::Usage(e.to_string()))
}

fn parse_link_mode(s: &str) -> Result<LinkMode, String> {
    LinkMode::parse(s).ok_or_else(|| format!("{s:?} is not one of auto, reflink, hardlink, copy"))
}

fn parse_kind(s: &str) -> Result<LayerKind, String> {
    Ok(match s {
        "weight" | "weights" => LayerKind::Weight,
        "config" | "weight.config" => LayerKind::WeightConfig,
        "doc" | "docs" => LayerKind::Doc,
        "code" => LayerKind::Code,
        "dataset" => LayerKind::Dataset,
        _ => {
            return Err(format!(
                "{s:?} is not one of weight, config, doc, code, dataset"
            ))
        }
    })
}
