//! `hoist bench`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use hoist::bench::{self, BenchOptions};
use hoist::registry::RegistryClient;
use hoist::Error;

use super::commands::parse_size;
use super::login::{credentials, transport};
use super::GlobalArgs;

#[derive(Args)]
pub struct BenchArgs {
    /// A model folder to benchmark (default: a synthetic bf16 checkpoint).
    #[arg(long, value_name = "DIR", conflicts_with = "synthetic")]
    model: Option<PathBuf>,
    /// Size of the synthetic model.
    #[arg(long, value_name = "SIZE", default_value = "2GiB", value_parser = parse_size)]
    synthetic: u64,
    /// Push to this registry and repository prefix (`host[:port]/prefix`) instead of an
    /// embedded `hoist serve`.
    #[arg(long, value_name = "HOST/PREFIX")]
    registry: Option<String>,
    /// Also pull every shape through the WAN emulator: `RATE,LATENCY`, e.g. `50MB,20ms`
    /// (RATE per connection).
    #[arg(long, value_name = "RATE,LATENCY")]
    link: Option<String>,
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

pub async fn bench(args: BenchArgs, global: &GlobalArgs) -> Result<(), Error> {
    let registry = match &args.registry {
        Some(spec) => {
            let (host, prefix) = spec.split_once('/').unwrap_or((spec, "hoist-bench"));
            let client = RegistryClient::new(host, &transport(global), credentials(host, global)?)?;
            Some((client, prefix.trim_end_matches('/').to_string()))
        }
        None => None,
    };
    let link = args
        .link
        .as_deref()
        .map(parse_link)
        .transpose()
        .map_err(Error::Usage)?;
    let scratch = match &args.work_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("hoist-bench-")
                .tempdir()
                .map_err(|e| Error::Usage(format!("cannot make a scratch folder: {e}")))?,
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
        hoist: std::env::current_exe().map_err(|e| Error::Usage(format!("own path: {e}")))?,
        work,
        peers: !args.no_peers,
    };
    let quiet = global.quiet;
    let report = bench::run(&opts, &|step| {
        if !quiet {
            eprintln!("bench: {step}");
        }
    })
    .await
    .map_err(|e| Error::Usage(format!("bench failed: {e}")))?;
    print!("{}", report.markdown());
    let (written, note) = report
        .write(&args.out)
        .map_err(|e| Error::Usage(format!("writing {}: {e}", args.out.display())))?;
    if let Some(note) = note {
        eprintln!("bench: {note}");
    }
    for path in written {
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

/// `50MB,20ms` → (bytes per second, latency).
fn parse_link(s: &str) -> Result<(u64, Duration), String> {
    let (rate, latency) = s
        .split_once(',')
        .ok_or_else(|| format!("--link {s:?}: expected RATE,LATENCY like 50MB,20ms"))?;
    let rate = rate.trim().to_ascii_lowercase();
    let rate = match rate.strip_suffix("mb") {
        Some(n) => n.trim().parse::<u64>().map(|n| n * 1_000_000),
        None => rate.parse::<u64>(),
    }
    .map_err(|_| format!("--link rate {rate:?} is not a number of MB"))?;
    let ms = latency
        .trim()
        .trim_end_matches("ms")
        .parse::<u64>()
        .map_err(|_| format!("--link latency {latency:?} is not a number of ms"))?;
    Ok((rate, Duration::from_millis(ms)))
}
