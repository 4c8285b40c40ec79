//! `hoist._native`: the library's verbs for Python. Each takes plain values (what the Python
//! half, `hoist/__init__.py`, passed on from its keyword arguments), builds the library's
//! options in one place per verb, runs the call (see [`run`]) and returns its report as
//! JSON text, which the Python half turns into dataclasses. Errors are raised as
//! `NativeError(exit_code, message)`, the CLI's exit code and one-line message; the Python
//! half raises the class of that code.

mod conn;
mod run;

use std::collections::BTreeMap;
use std::path::PathBuf;

use hoist::materialize::LinkMode;
use hoist::oci::modelpack::LayerKind;
use hoist::oci::LayerFormat;
use hoist::pack::{PackOptions, WalkOptions};
use hoist::transfer::{self, LayerFilter, PublishOptions, PullOptions, PushOptions, Target};
use hoist::{Error, Reference};
use pyo3::create_exception;
use pyo3::prelude::*;

use conn::Connection;

create_exception!(
    _native,
    NativeError,
    pyo3::exceptions::PyException,
    "A hoist error: args are (exit code, message)."
);

fn usage(message: String) -> Error {
    Error::Usage(message)
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("reports serialise")
}

/// The local store as a node cache, when the call asks for one.
fn node_cache(ctx: &hoist::Context, cache: bool) -> Result<Option<hoist::Store>, Error> {
    cache.then(|| ctx.store()).transpose()
}

fn globs(what: &str, patterns: &[String]) -> Result<Option<globset::GlobSet>, Error> {
    LayerFilter::globs(patterns).map_err(|e| usage(format!("{what}: {e}")))
}

/// Push a folder; returns the `Published` report as JSON.
#[pyfunction]
#[pyo3(signature = (conn, folder, reference, tags, layer_format, compression_level, name,
    created, include_hidden, follow_external_symlinks, concurrency, chunk_size, mount_from,
    annotations, config, chunk_index, image_volume, sign_key, sign_cert, sign_cert_chain,
    progress))]
#[allow(clippy::too_many_arguments)]
fn push(
    py: Python<'_>,
    conn: &Connection,
    folder: PathBuf,
    reference: String,
    tags: Vec<String>,
    layer_format: String,
    compression_level: Option<i32>,
    name: Option<String>,
    created: bool,
    include_hidden: bool,
    follow_external_symlinks: bool,
    concurrency: usize,
    chunk_size: Option<u64>,
    mount_from: Vec<String>,
    annotations: BTreeMap<String, String>,
    config: Option<String>,
    chunk_index: bool,
    image_volume: bool,
    sign_key: Option<PathBuf>,
    sign_cert: Option<PathBuf>,
    sign_cert_chain: Vec<PathBuf>,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let ctx = conn.context();
    run::run(py, progress.as_ref(), move |observer| async move {
        let (reference, tags) =
            Reference::parse_destination(&reference, &tags, || "latest".into())?;
        let layer_format = LayerFormat::parse(&layer_format).ok_or_else(|| {
            usage(format!(
                "layer_format {layer_format:?} is not one of raw, tar, tar+gzip, tar+zstd"
            ))
        })?;
        let config_override = match config {
            Some(text) => {
                Some(serde_json::from_str(&text).map_err(|e| usage(format!("config: {e}")))?)
            }
            None => None,
        };
        let target = ctx.target(&reference)?;
        let opts = PublishOptions {
            pack: PackOptions {
                walk: WalkOptions {
                    include_hidden,
                    follow_external_symlinks,
                },
                layer_format,
                compression_level,
                name,
                timestamp: hoist::pack::creation_time(created).map_err(usage)?,
                annotations,
                config_override,
                chunk_index,
                ..Default::default()
            },
            push: PushOptions {
                concurrency,
                chunk_size,
                mount_from,
                remember: ctx.push_memory(&target),
            },
            image_volume,
            sign_key,
            sign_cert,
            sign_cert_chain,
        };
        let published = transfer::publish(&folder, &target, &tags, &opts, observer).await?;
        Ok(json(&published))
    })
}

/// Pull into a folder; returns the `PullReport` as JSON.
#[pyfunction]
#[pyo3(signature = (conn, reference, output, include, exclude, kind, cache, verify_key,
    verify_cert_chain, cert_identity, cert_oidc_issuer, sigstore_trusted_root, verify_policy,
    concurrency, max_connections, range_size, link_mode, overwrite, progress))]
#[allow(clippy::too_many_arguments)]
fn pull(
    py: Python<'_>,
    conn: &Connection,
    reference: String,
    output: PathBuf,
    include: Vec<String>,
    exclude: Vec<String>,
    kind: Vec<String>,
    cache: bool,
    verify_key: Vec<PathBuf>,
    verify_cert_chain: Vec<PathBuf>,
    cert_identity: Vec<String>,
    cert_oidc_issuer: Vec<String>,
    sigstore_trusted_root: Option<PathBuf>,
    verify_policy: Option<PathBuf>,
    concurrency: usize,
    max_connections: usize,
    range_size: Option<u64>,
    link_mode: String,
    overwrite: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let ctx = conn.context();
    let fetch = conn.fetch_options(max_connections, range_size);
    run::run(py, progress.as_ref(), move |observer| async move {
        let reference = Reference::parse(&reference)?;
        let kinds = kind
            .iter()
            .map(|k| {
                LayerKind::parse(k).ok_or_else(|| {
                    usage(format!(
                        "kind {k:?} is not one of weight, config, doc, code, dataset"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let link_mode = LinkMode::parse(&link_mode).ok_or_else(|| {
            usage(format!(
                "link_mode {link_mode:?} is not one of auto, reflink, hardlink, copy"
            ))
        })?;
        let trust = hoist::sign::TrustOptions {
            keys: verify_key,
            roots: verify_cert_chain,
            identities: cert_identity,
            oidc_issuers: cert_oidc_issuer,
            sigstore_root: sigstore_trusted_root,
        };
        let verify = hoist::sign::Verification::from_files(&trust, verify_policy.as_deref())
            .map_err(transfer::TransferError::from)?;
        let source = ctx.target(&reference)?;
        let opts = PullOptions {
            concurrency,
            fetch,
            cache: node_cache(&ctx, cache)?,
            link_mode,
            filter: LayerFilter {
                include: globs("include", &include)?,
                exclude: globs("exclude", &exclude)?,
                kinds: (!kinds.is_empty()).then_some(kinds),
            },
            overwrite,
            verify,
            ..Default::default()
        };
        let report = transfer::pull(&source, &reference.target(), &output, &opts, observer).await?;
        Ok(json(&report))
    })
}

/// Copy an artifact (or stream a Hugging Face Hub repository, `hf://…`); returns JSON
/// `{"source", "destination", "tags", "report"}`.
#[pyfunction]
#[pyo3(signature = (conn, source, destination, concurrency, include, exclude, chunk_index, progress))]
#[allow(clippy::too_many_arguments)]
fn copy(
    py: Python<'_>,
    conn: &Connection,
    source: String,
    destination: String,
    concurrency: usize,
    include: Vec<String>,
    exclude: Vec<String>,
    chunk_index: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let ctx = conn.context();
    run::run(py, progress.as_ref(), move |observer| async move {
        if let Some(from) = ctx.import_source(&source)? {
            let default_tag = from.default_tag();
            let (dst_ref, tags) =
                Reference::parse_destination(&destination, &[], move || default_tag)?;
            let opts = transfer::ImportOptions {
                concurrency,
                filter: LayerFilter {
                    include: globs("include", &include)?,
                    exclude: globs("exclude", &exclude)?,
                    kinds: None,
                },
                chunk_index,
            };
            let dst = ctx.target(&dst_ref)?;
            let report = transfer::import(from.as_ref(), &dst, &tags, &opts, observer).await?;
            return Ok(copied(&source, &dst, &tags, &report));
        }
        if !include.is_empty() || !exclude.is_empty() || !chunk_index {
            return Err(usage(
                "include, exclude and chunk_index apply to a copy from the Hub (hf://…)".into(),
            ));
        }
        let src_ref = Reference::parse(&source)?;
        let default_tag = src_ref.tag.clone().unwrap_or_else(|| "latest".into());
        let (dst_ref, tags) = Reference::parse_destination(&destination, &[], move || default_tag)?;
        let (src, dst) = (ctx.target(&src_ref)?, ctx.target(&dst_ref)?);
        let report =
            transfer::copy(&src, &src_ref.target(), &dst, &tags, concurrency, observer).await?;
        Ok(copied(&source, &dst, &tags, &report))
    })
}

fn copied<T: serde::Serialize>(source: &str, dst: &Target, tags: &[String], report: &T) -> String {
    json(&serde_json::json!({
        "source": source,
        "destination": dst.describe(),
        "tags": tags,
        "report": report,
    }))
}

/// Every `.safetensors` file of an artifact in memory, verified; returns JSON, a list of
/// `{"path", "digest", "size", "fd", "tensors", "metadata"}`. Each `fd` (a memfd, or the
/// store's blob read-only) is the caller's to map and close.
#[pyfunction]
#[pyo3(signature = (conn, reference, cache, concurrency, max_connections, range_size, progress))]
#[allow(clippy::too_many_arguments)]
fn open_safetensors(
    py: Python<'_>,
    conn: &Connection,
    reference: String,
    cache: bool,
    concurrency: usize,
    max_connections: usize,
    range_size: Option<u64>,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    use std::os::fd::IntoRawFd;
    let ctx = conn.context();
    let fetch = conn.fetch_options(max_connections, range_size);
    run::run(py, progress.as_ref(), move |observer| async move {
        let reference = Reference::parse(&reference)?;
        let source = ctx.target(&reference)?;
        let opts = transfer::tensors::TensorOptions {
            fetch,
            concurrency,
            cache: node_cache(&ctx, cache)?,
        };
        let files =
            transfer::tensors::open_safetensors(&source, &reference.target(), &opts, observer)
                .await?;
        let listed: Vec<serde_json::Value> = files
            .into_iter()
            .map(|f| {
                serde_json::json!({
                    "path": f.path,
                    "digest": f.digest,
                    "size": f.size,
                    "tensors": f.header.tensors,
                    "metadata": f.header.metadata,
                    "fd": f.file.into_raw_fd(),
                })
            })
            .collect();
        Ok(json(&listed))
    })
}

/// Describe an artifact; returns the `Inspection` as JSON.
#[pyfunction]
fn inspect(py: Python<'_>, conn: &Connection, reference: String) -> PyResult<String> {
    let ctx = conn.context();
    run::run(py, None, move |_| async move {
        let reference = Reference::parse(&reference)?;
        let source = ctx.target(&reference)?;
        Ok(json(
            &transfer::inspect::inspect(&source, &reference, None).await?,
        ))
    })
}

/// Check a pulled folder against an artifact, a ready marker or a signature; returns the
/// `Verified` report as JSON.
#[pyfunction]
#[pyo3(signature = (conn, folder, reference, marker, key, full))]
fn verify(
    py: Python<'_>,
    conn: &Connection,
    folder: PathBuf,
    reference: Option<String>,
    marker: Option<PathBuf>,
    key: Vec<PathBuf>,
    full: bool,
) -> PyResult<String> {
    let ctx = conn.context();
    run::run(py, None, move |_| async move {
        let verified = match (reference, marker, key.is_empty()) {
            (Some(reference), None, true) => {
                let parsed = Reference::parse(&reference)?;
                let source = ctx.target(&parsed)?;
                transfer::verify_folder(&source, &parsed.target(), &folder, full).await?
            }
            (None, Some(marker), true) => transfer::verify_marker(&folder, &marker, full)?,
            (None, None, false) => {
                let trust = hoist::sign::Trust::load(&hoist::sign::TrustOptions {
                    keys: key,
                    ..Default::default()
                })
                .map_err(transfer::TransferError::from)?
                .unwrap_or_default();
                transfer::verify::verify_signature(&folder, &trust, full)?
            }
            _ => {
                return Err(usage(
                    "verify takes exactly one of ref, marker or key".into(),
                ))
            }
        };
        Ok(json(&verified))
    })
}

/// The local store's tags; returns a JSON list of `Listed`.
#[pyfunction]
fn list(py: Python<'_>, conn: &Connection) -> PyResult<String> {
    let ctx = conn.context();
    run::run(py, None, move |_| async move {
        Ok(json(&ctx.existing_store()?.listing()?))
    })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("NativeError", m.py().get_type::<NativeError>())?;
    m.add_class::<Connection>()?;
    m.add_function(wrap_pyfunction!(push, m)?)?;
    m.add_function(wrap_pyfunction!(pull, m)?)?;
    m.add_function(wrap_pyfunction!(copy, m)?)?;
    m.add_function(wrap_pyfunction!(open_safetensors, m)?)?;
    m.add_function(wrap_pyfunction!(inspect, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(list, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
