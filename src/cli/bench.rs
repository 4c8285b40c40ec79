//! `hoist bench`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use hoist::bench::{self, BenchOptions};
use hoist::Error;

use super::global::Env;
use super::parse;

#[derive(Args)]
pub struct BenchArgs {
    /// A model folder to benchmark (default: a synthetic bf16 checkpoint).
    #[arg(long, value_name = "DIR", conflicts_with = "synthetic")]
    model: Option<PathBuf>,
    /// Size of the synthetic model.
    #[arg(long, value_name = "SIZE", default_value = "2GiB", value_parser = parse::size)]
    synthetic: u64,
    /// Push to this registry and repository prefix (`host[:port]/prefix`) instead of an
    /// embedded `hoist serve`.
    #[arg(long, value_name = "HOST/PREFIX")]
    registry: Option<String>,
    /// Also pull every shape through the WAN emulator: `RATE,LATENCY`, e.g. `50MB,20ms`
    /// (RATE per connection).
    #[arg(long, value_name = "RATE,LATENCY", value_parser = parse::link)]
    link: Option<(u64, Duration)>,
    /// Repeat each pull this many times and report the median.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Where bench.md, bench.json, bench.svg and bench.png go.
    #[arg(long, default_value = "hoist-bench")]
    out: PathBuf,
    /// Scratch folder for the model, pulls and the embedded registry (default: a temp dir).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Skip the peers (oras-py, the ORAS CLI, skopeo).
    #[arg(long)]
    no_peers: bool,
}

pub async fn bench(args: BenchArgs, env: &Env) -> Result<(), Error> {
    let registry = match &args.registry {
        Some(spec) => {
            let (host, prefix) = spec.split_once('/').unwrap_or((spec, "hoist-bench"));
            let client = env.ctx.client(host)?;
            Some((client, prefix.trim_end_matches('/').to_string()))
        }
        None => None,
    };
    let link = args.link;
    let scratch = match &args.work_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("hoist-bench-")
                .tempdir()
                .map_err(|source| Error::Write {
                    what: "a scratch folder in",
                    path: std::env::temp_dir(),
                    source,
                })?,
        ),
    };
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| scratch.as_ref().expect("temp dir").path().to_path_buf());
    let opts = BenchOptions {
        model: args.model.clone(),
        synthetic_bytes: args.synthetic,
        registry,
        link,
        runs: args.runs.max(1),
        out: args.out.clone(),
        hoist: std::env::current_exe().map_err(|source| Error::Server {
            what: "cannot find hoist's own executable".into(),
            source,
        })?,
        work,
        peers: !args.no_peers,
    };
    let quiet = env.ui.quiet;
    let report = bench::run(&opts, &|step| {
        if !quiet {
            eprintln!("bench: {step}");
        }
    })
    .await?;
    print!("{}", report.markdown());
    let (written, note) = report.write(&args.out).map_err(|source| Error::Write {
        what: "the benchmark report in",
        path: args.out.clone(),
        source,
    })?;
    if let Some(note) = note {
        eprintln!("bench: {note}");
    }
    for path in written {
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}
