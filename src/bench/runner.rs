//! Build, push and pull each shape, timing what a user would wait for. Pulls run the `hoist`
//! binary (and peers) as separate processes, as an init container would, into fresh folders;
//! every pulled folder is compared with the model before its time counts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::report::{Machine, PullRow, Report, ShapeRow};
use super::{images, io, synth, BenchError, BenchOptions, Shape};
use crate::digest::Digest;
use crate::pack::{self, PackOptions, WalkOptions};
use crate::registry::{Credentials, RegistryClient, TransportOptions};
use crate::store::Store;
use crate::transfer::{self, PushOptions, Target};

/// Run the whole benchmark; `progress` gets one line per step.
pub async fn run(opts: &BenchOptions, progress: &dyn Fn(&str)) -> Result<Report, BenchError> {
    std::fs::create_dir_all(&opts.work).map_err(io("creating the work folder"))?;
    let model = model_folder(opts, progress)?;
    let files = pack::walk(&model, &WalkOptions::default())?;
    let expected: BTreeMap<String, Digest> = files
        .iter()
        .map(|f| Ok((f.relative.clone(), Digest::of_file(&f.source)?)))
        .collect::<std::io::Result<_>>()
        .map_err(io("hashing the model"))?;
    let (client, prefix, _server) = registry(opts).await?;
    let proxy = wan_link(opts, &client).await?;
    let bench = Bench {
        opts,
        client,
        proxy,
        expected,
        pulls_dir: opts.work.join("pulls"),
        progress,
    };
    let mut shapes = Vec::new();
    let mut pulls = Vec::new();
    for shape in Shape::all() {
        let target = Target::Remote {
            client: bench.client.clone(),
            repository: format!("{prefix}/{}", shape.slug()),
            mirrors: Vec::new(),
        };
        let mut row = bench.build_and_push(shape, &model, &files, &target).await?;
        let reference = format!("{}/{}:v1", bench.client.registry(), target.repository());
        bench.time_pulls(&mut row, &reference)?;
        let raw = Shape::Artifact {
            format: crate::oci::LayerFormat::Raw,
        };
        if opts.peers && shape == raw {
            pulls.extend(bench.peers(&reference)?);
        }
        shapes.push(row);
    }
    Ok(Report {
        machine: Machine::read(),
        model: model.display().to_string(),
        synthetic: opts.model.is_none(),
        model_bytes: files.iter().map(|f| f.size).sum(),
        files: files.len(),
        runs: opts.runs,
        link: opts.link.map(|(rate, lat)| {
            format!(
                "{} MB/s per connection, {} ms",
                rate / 1_000_000,
                lat.as_millis()
            )
        }),
        shapes,
        peers: pulls,
    })
}

/// The model to measure: the one given, or a synthetic checkpoint of the asked size.
fn model_folder(opts: &BenchOptions, progress: &dyn Fn(&str)) -> Result<PathBuf, BenchError> {
    if let Some(dir) = &opts.model {
        return Ok(dir.clone());
    }
    let dir = opts.work.join("model");
    progress(&format!(
        "generating a {:.2} GiB synthetic model",
        opts.synthetic_bytes as f64 / (1u64 << 30) as f64
    ));
    let shards = (opts.synthetic_bytes / (512 << 20)).clamp(2, 16) as usize;
    synth::generate(&dir, opts.synthetic_bytes, shards, 42).map_err(io("generating the model"))?;
    Ok(dir)
}

/// The registry: the one given, or an embedded `hoist serve` on a free loopback port (kept
/// running while the returned guard lives).
async fn registry(
    opts: &BenchOptions,
) -> Result<(RegistryClient, String, Option<AbortOnDrop>), BenchError> {
    if let Some((client, prefix)) = &opts.registry {
        return Ok((client.clone(), prefix.clone(), None));
    }
    let store = Store::open(opts.work.join("registry")).map_err(transfer::TransferError::from)?;
    let (addr, server) = crate::serve::bind(crate::serve::ServeOptions {
        addr: "127.0.0.1:0".parse().expect("address"),
        store,
        upstreams: crate::serve::Upstreams::new(
            None,
            Default::default(),
            Duration::from_secs(60),
            None,
        ),
        access: None,
        read_only: false,
        tls: None,
        limits: Default::default(),
        hub: Default::default(),
    })
    .await
    .map_err(io("starting the embedded registry"))?;
    let task = tokio::spawn(server);
    let client = RegistryClient::new(
        &addr.to_string(),
        &TransportOptions::default(),
        Credentials::default(),
    )
    .map_err(transfer::TransferError::from)?;
    Ok((client, "bench".to_string(), Some(AbortOnDrop(task))))
}

/// The WAN emulator in front of the registry, when `--link` asks for one.
async fn wan_link(
    opts: &BenchOptions,
    client: &RegistryClient,
) -> Result<Option<crate::wan::Proxy>, BenchError> {
    let Some((rate, latency)) = opts.link else {
        return Ok(None);
    };
    let upstream = tokio::net::lookup_host(client.registry())
        .await
        .map_err(io("resolving the registry"))?
        .next()
        .ok_or_else(|| BenchError::Command {
            what: "resolving the registry".into(),
            detail: "no address".into(),
        })?;
    let link = crate::wan::Link {
        rate,
        latency,
        ..Default::default()
    };
    let proxy = crate::wan::Proxy::start("127.0.0.1:0", upstream, link)
        .await
        .map_err(io("starting the WAN emulator"))?;
    Ok(Some(proxy))
}

/// What every step of one benchmark run shares.
struct Bench<'a> {
    opts: &'a BenchOptions,
    client: RegistryClient,
    proxy: Option<crate::wan::Proxy>,
    /// Each file of the model and its digest: every pulled folder must match.
    expected: BTreeMap<String, Digest>,
    pulls_dir: PathBuf,
    progress: &'a dyn Fn(&str),
}

impl Bench<'_> {
    /// Pack `shape` and push it; its row with the build time and what the registry holds.
    async fn build_and_push(
        &self,
        shape: Shape,
        model: &Path,
        files: &[pack::ModelFile],
        target: &Target,
    ) -> Result<ShapeRow, BenchError> {
        (self.progress)(&format!("building and pushing {}", shape.label()));
        let scratch = tempfile::tempdir_in(&self.opts.work).map_err(io("scratch folder"))?;
        let started = Instant::now();
        let packed = match shape {
            Shape::Image { per_weight, format } => {
                images::pack_image(files, format, per_weight, scratch.path())
                    .map_err(io("packing the image"))?
            }
            Shape::Artifact { format } => pack::pack(
                model,
                &PackOptions {
                    layer_format: format,
                    temp_dir: Some(scratch.path().to_path_buf()),
                    // The comparison is of pulls; no index is attached.
                    chunk_index: false,
                    ..Default::default()
                },
            )?,
        };
        transfer::push(
            &packed,
            target,
            &["v1".to_string()],
            &PushOptions::default(),
            transfer::silent(),
        )
        .await?;
        let build = started.elapsed();
        drop(packed);
        drop(scratch);
        // What the registry holds for it, read back from the registry.
        let pushed = target.resolve("v1").await?;
        let stored = pushed.manifest.blobs().map(|d| d.size).sum::<u64>()
            + pushed.manifest_bytes.len() as u64;
        Ok(ShapeRow {
            shape: shape.label(),
            slug: shape.slug(),
            layers: pushed.manifest.layers.len(),
            build_seconds: build.as_secs_f64(),
            stored_bytes: stored,
            pull_cold_seconds: 0.0,
            pull_warm_seconds: 0.0,
            pull_link_seconds: None,
        })
    }

    /// `hoist pull` of `reference` into `out`, with the bench's node cache as its store.
    fn hoist_pull(&self, reference: &str, out: &Path, extra: &[&str]) -> Command {
        let mut cmd = Command::new(&self.opts.hoist);
        cmd.args(["pull", reference, "-q", "--progress", "none", "-o"])
            .arg(out)
            .args(extra)
            .env("HOIST_HOME", self.opts.work.join("node-cache"));
        cmd
    }

    /// Cold, warm (from the node cache) and, with a link, WAN pull times of one shape.
    fn time_pulls(&self, row: &mut ShapeRow, reference: &str) -> Result<(), BenchError> {
        let (opts, label) = (self.opts, row.shape.clone());
        let median = |f: &dyn Fn(&Path) -> Command| {
            median_of(opts.runs, &self.pulls_dir, &label, Some(&self.expected), f)
        };
        (self.progress)(&format!("pulling {label} (cold, {} runs)", opts.runs));
        row.pull_cold_seconds = median(&|out| self.hoist_pull(reference, out, &[]))?;
        // Warm: the node cache holds the blobs; the folder is made anew from it.
        let cache = opts.work.join("node-cache");
        let _ = std::fs::remove_dir_all(&cache);
        let seed = self.pulls_dir.join("seed");
        timed(
            &mut self.hoist_pull(reference, &seed, &["--cache"]),
            "seeding the node cache",
        )?;
        let _ = std::fs::remove_dir_all(seed);
        (self.progress)(&format!("pulling {label} (warm node cache)"));
        row.pull_warm_seconds = median(&|out| {
            self.hoist_pull(reference, out, &["--cache", "--link-mode", "hardlink"])
        })?;
        let _ = std::fs::remove_dir_all(&cache);
        if let Some(via) = self.via_link(reference) {
            (self.progress)(&format!("pulling {label} through the WAN emulator"));
            row.pull_link_seconds = Some(median(&|out| self.hoist_pull(&via, out, &[]))?);
        }
        Ok(())
    }

    /// `reference` reached through the WAN emulator, when there is one.
    fn via_link(&self, reference: &str) -> Option<String> {
        let proxy = self.proxy.as_ref()?;
        Some(reference.replacen(self.client.registry(), &proxy.addr.to_string(), 1))
    }

    /// The peers' pulls of the raw artifact, on loopback and through the link.
    fn peers(&self, reference: &str) -> Result<Vec<PullRow>, BenchError> {
        let mut hosts = vec![("loopback", reference.to_string())];
        if let Some(via) = self.via_link(reference) {
            hosts.push(("wan", via));
        }
        let mut rows = Vec::new();
        for (link, reference) in hosts {
            rows.extend(peer_pulls(
                self.opts,
                &reference,
                link,
                &self.pulls_dir,
                &self.expected,
                self.progress,
            )?);
        }
        Ok(rows)
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<std::io::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Run `make(out)` `runs` times into a fresh folder, check the first folder against
/// `expected` (when the client makes one), return the median time.
fn median_of(
    runs: usize,
    dir: &Path,
    what: &str,
    expected: Option<&BTreeMap<String, Digest>>,
    make: impl Fn(&Path) -> Command,
) -> Result<f64, BenchError> {
    let mut times = Vec::new();
    for i in 0..runs.max(1) {
        let out = dir.join("out");
        let _ = std::fs::remove_dir_all(&out);
        let secs = timed(&mut make(&out), what)?;
        if let (0, Some(expected)) = (i, expected) {
            check_folder(&out, expected).map_err(|detail| BenchError::Mismatch {
                config: what.to_string(),
                detail,
            })?;
        }
        let _ = std::fs::remove_dir_all(&out);
        times.push(secs);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// Seconds a command took; its failure is an error with its last words.
fn timed(cmd: &mut Command, what: &str) -> Result<f64, BenchError> {
    // Start every run with no dirty pages of the previous one left to write back.
    rustix::fs::sync();
    let started = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(io(format!("starting {what}")))?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(BenchError::Command {
            what: what.to_string(),
            detail: err.trim().lines().last().unwrap_or("no output").to_string(),
        });
    }
    Ok(secs)
}

/// Every model file is there with its bytes; nothing else but dot-files.
fn check_folder(out: &Path, expected: &BTreeMap<String, Digest>) -> Result<(), String> {
    let found = pack::walk(out, &WalkOptions::default()).map_err(|e| e.to_string())?;
    if found.len() != expected.len() {
        return Err(format!(
            "{} files instead of {}",
            found.len(),
            expected.len()
        ));
    }
    for f in found {
        let want = expected
            .get(&f.relative)
            .ok_or_else(|| format!("unexpected file {}", f.relative))?;
        let got = Digest::of_file(&f.source).map_err(|e| e.to_string())?;
        if &got != want {
            return Err(format!("{} has other bytes", f.relative));
        }
    }
    Ok(())
}

/// A peer client: its name, its command for an output folder, and whether that folder holds
/// the model's files (skopeo writes an OCI layout, checked by skopeo itself).
struct Peer(&'static str, Box<dyn Fn(&Path) -> Command>, bool);

/// The artifact pulled by the peers that are installed: oras-py, the ORAS CLI, skopeo.
fn peer_pulls(
    opts: &BenchOptions,
    reference: &str,
    link: &str,
    dir: &Path,
    expected: &BTreeMap<String, Digest>,
    progress: &dyn Fn(&str),
) -> Result<Vec<PullRow>, BenchError> {
    let mut rows = Vec::new();
    let has_oras_py = Command::new("python3")
        .args(["-c", "import oras.client"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut peers: Vec<Peer> = Vec::new();
    if has_oras_py {
        let r = reference.to_string();
        peers.push(Peer(
            "oras-py",
            Box::new(move |out: &Path| {
                let mut c = Command::new("python3");
                c.args([
                    "-c",
                    &format!(
                        "import oras.client; oras.client.OrasClient(insecure=True).pull(target={r:?}, outdir={:?})",
                        out.display().to_string()
                    ),
                ]);
                c
            }),
            true,
        ));
    }
    if which("oras") {
        let r = reference.to_string();
        peers.push(Peer(
            "oras CLI",
            Box::new(move |out: &Path| {
                let mut c = Command::new("oras");
                c.args(["pull", "--plain-http", &r, "-o"]).arg(out);
                c
            }),
            true,
        ));
    }
    if which("skopeo") {
        let r = reference.to_string();
        peers.push(Peer(
            "skopeo (blobs only, no folder)",
            Box::new(move |out: &Path| {
                let mut c = Command::new("skopeo");
                c.args([
                    "copy",
                    "-q",
                    "--src-tls-verify=false",
                    &format!("docker://{r}"),
                ])
                .arg(format!("oci:{}:v1", out.display()));
                c
            }),
            false,
        ));
    }
    for Peer(name, make, makes_folder) in peers {
        progress(&format!("pulling the artifact with {name} ({link})"));
        let check = makes_folder.then_some(expected);
        let secs = median_of(opts.runs, dir, name, check, &make)?;
        rows.push(PullRow {
            client: name.to_string(),
            link: link.to_string(),
            seconds: secs,
        });
    }
    Ok(rows)
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|p: PathBuf| p.join(program).is_file())
    })
}
