"""hoist for Python: push, pull and copy ML models as OCI artifacts, verified.

The calls run hoist's Rust library in-process (no subprocess, no CLI output to parse)::

    import hoist

    # a training job: push each checkpoint
    hoist.push("checkpoints/step-1000", "registry.example.com/team/model:step-1000")

    # a model server: pull it (every byte verified before a file appears)
    result = hoist.pull("registry.example.com/team/model:step-1000", "/models/current")
    print(result.digest, len(result.files))

A reference without a registry host (``my-model:v1``) names the local store (``$HOIST_HOME``,
else ``~/.local/share/hoist``).

Connection keywords, accepted by every call and read as the ``hoist`` CLI reads them:
``store`` (``$HOIST_HOME``), ``plain_http`` (automatic for localhost and 127.0.0.1),
``insecure``, ``ca_file``, ``username`` and ``password`` (else ``$HOIST_USERNAME`` /
``$HOIST_PASSWORD``, then the Docker config with its credential helpers, then podman's
auth.json), ``registry_config`` (``$HOIST_REGISTRY_CONFIG``), ``mirror`` (a list;
``$HOIST_MIRROR``), ``mirrors_config`` (``$HOIST_MIRRORS_CONFIG``), ``stall_timeout``
(seconds; ``$HOIST_STALL_TIMEOUT``, 30). From the Hugging Face Hub: ``$HF_ENDPOINT``,
``$HF_TOKEN``, as the Hub's own tools.

Errors are exceptions of :mod:`hoist.errors`, one per exit code of the CLI, with its
one-line message. Progress: ``progress=True`` shows a tqdm bar; a callable gets a
:class:`Progress` every 0.1 s while something changes. Ctrl-C stops a call with
``KeyboardInterrupt``; an interrupted pull keeps what it downloaded (``OUTPUT/.hoist-partial``)
and the next ``pull`` of the same reference into the same folder resumes from it.

Thread safety: every call may run from any thread, several at once (each runs on its own
runtime and releases the GIL while it waits). Ctrl-C reaches calls on the main thread. For
asyncio, ``await asyncio.to_thread(hoist.pull, ref, out)``.
"""

from __future__ import annotations

import builtins as _builtins
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from . import _native
from .errors import (
    AuthError,
    DiskError,
    HoistError,
    InvalidContentError,
    NetworkError,
    NotFoundError,
    SignatureError,
    UsageError,
    VerifyError,
    from_code,
)
from .tensors import Tensors
from .results import (
    CopyResult,
    PlacedFile,
    Progress,
    PullResult,
    PushResult,
    StoredModel,
    VerifyResult,
    copy_result,
    pull_result,
    push_result,
    verify_result,
)

__version__: str = _native.__version__

__all__ = [
    "push",
    "pull",
    "copy",
    "open_safetensors",
    "Tensors",
    "inspect",
    "verify",
    "list",
    "Progress",
    "PushResult",
    "PullResult",
    "PlacedFile",
    "CopyResult",
    "VerifyResult",
    "StoredModel",
    "HoistError",
    "UsageError",
    "AuthError",
    "NotFoundError",
    "NetworkError",
    "VerifyError",
    "DiskError",
    "InvalidContentError",
    "SignatureError",
]

PathLike = Union[str, "os.PathLike[str]"]
#: ``True`` for a tqdm bar, or a callable given a :class:`Progress`.
ProgressArg = Union[bool, Callable[[Progress], Any], None]

_CONNECTION_KEYS = (
    "store",
    "plain_http",
    "insecure",
    "ca_file",
    "username",
    "password",
    "registry_config",
    "mirror",
    "mirrors_config",
    "stall_timeout",
)


def _env(name: str) -> Optional[str]:
    value = os.environ.get(name)
    return value if value else None


def _connection(options: Mapping[str, Any]) -> "_native.Connection":
    unknown = sorted(set(options) - set(_CONNECTION_KEYS))
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
    mirror = options.get("mirror")
    if mirror is None:
        mirror = (_env("HOIST_MIRROR") or "").split()
    elif isinstance(mirror, str):
        mirror = [mirror]
    stall = options.get("stall_timeout")
    if stall is None:
        stall = float(_env("HOIST_STALL_TIMEOUT") or 30)
    opt_path = lambda key, env: _path(options.get(key)) or _env(env)  # noqa: E731
    return _native.Connection(
        opt_path("store", "HOIST_HOME"),
        options.get("plain_http"),
        bool(options.get("insecure", False)),
        _path(options.get("ca_file")),
        options.get("username"),
        options.get("password"),
        opt_path("registry_config", "HOIST_REGISTRY_CONFIG"),
        [str(m) for m in mirror],
        opt_path("mirrors_config", "HOIST_MIRRORS_CONFIG"),
        float(stall),
    )


def _path(value: Optional[PathLike]) -> Optional[str]:
    return None if value is None else os.fspath(value)


def _paths(values: Union[PathLike, Iterable[PathLike], None]) -> list[str]:
    if values is None:
        return []
    if isinstance(values, (str, os.PathLike)):
        return [os.fspath(values)]
    return [os.fspath(v) for v in values]


def _strings(values: Union[str, Iterable[str], None]) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        return [values]
    return [str(v) for v in values]


class _Reporter:
    """Turns the native ``(done, total, files_done, files_total, file)`` ticks into
    :class:`Progress` for a callback, or into a tqdm bar."""

    def __init__(self, progress: ProgressArg, what: str) -> None:
        self.callback: Optional[Callable[[Progress], Any]] = None
        self.bar: Any = None
        self.what = what
        if callable(progress):
            self.callback = progress
        elif progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc=what)

    def native(self) -> Optional[Callable[..., None]]:
        return self.tick if (self.callback or self.bar is not None) else None

    def tick(self, done: int, total: int, files_done: int, files_total: int, file: str) -> None:
        if self.bar is not None:
            self.bar.total = total
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix_str(f"{files_done}/{files_total} files", refresh=False)
        if self.callback is not None:
            self.callback(Progress(done, total, files_done, files_total, file))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _call(native: Callable[..., str], progress: ProgressArg, what: str, *args: Any) -> Any:
    """A call that reports progress: the reporter's tick goes last."""
    reporter = _Reporter(progress, what)
    try:
        return _plain(native, *args, reporter.native())
    finally:
        reporter.close()


def _plain(native: Callable[..., str], *args: Any) -> Any:
    """The native call's JSON report, its error raised as the class of its exit code."""
    try:
        return json.loads(native(*args))
    except _native.NativeError as e:
        code, message = e.args
        raise from_code(code, message) from None


def push(
    folder: PathLike,
    ref: str,
    *,
    tags: Union[str, Sequence[str], None] = None,
    layer_format: str = "raw",
    compression_level: Optional[int] = None,
    name: Optional[str] = None,
    created: bool = False,
    include_hidden: bool = False,
    follow_external_symlinks: bool = False,
    concurrency: int = 4,
    chunk_size: Optional[int] = None,
    mount_from: Union[str, Sequence[str], None] = None,
    annotations: Optional[Mapping[str, str]] = None,
    config: Optional[Mapping[str, Any]] = None,
    chunk_index: bool = True,
    image_volume: bool = False,
    sign_key: Optional[PathLike] = None,
    sign_cert: Optional[PathLike] = None,
    sign_cert_chain: Union[PathLike, Sequence[PathLike], None] = None,
    progress: ProgressArg = None,
    **connection: Any,
) -> PushResult:
    """Pack ``folder`` as a ModelPack artifact (one layer per file) and push it to ``ref``.

    ``ref`` may list tags (``repo:v1,latest``); ``tags`` adds more; no tag means ``latest``.
    Keywords are the CLI's ``hoist push`` flags: ``layer_format`` (raw, tar, tar+gzip,
    tar+zstd), ``config`` (a partial ModelPack config merged over what hoist reads from the
    model, as ``--config-file``), ``sign_key`` (an EC private key, PEM: the signature is
    attached as a referrer) with ``sign_cert``/``sign_cert_chain`` (its certificate and the
    intermediates, PEM, to sign by certificate), ``image_volume`` (also publish ``TAG-volume`` for Kubernetes
    image volumes). The manifest goes last: nobody sees a model whose files are missing.

    >>> r = hoist.push("out/checkpoint-500", "localhost:5000/team/bert:step-500")  # doctest: +SKIP
    >>> r.digest, r.uploaded_bytes  # doctest: +SKIP
    """
    started = time.monotonic()
    report = _call(
        _native.push,
        progress,
        "push",
        _connection(connection),
        os.fspath(folder),
        ref,
        _strings(tags),
        layer_format,
        compression_level,
        name,
        created,
        include_hidden,
        follow_external_symlinks,
        concurrency,
        chunk_size,
        _strings(mount_from),
        dict(annotations or {}),
        None if config is None else json.dumps(config),
        chunk_index,
        image_volume,
        _path(sign_key),
        _path(sign_cert),
        _paths(sign_cert_chain),
    )
    return push_result(report, ref, time.monotonic() - started)


def pull(
    ref: str,
    output: PathLike = ".",
    *,
    include: Union[str, Sequence[str], None] = None,
    exclude: Union[str, Sequence[str], None] = None,
    kind: Union[str, Sequence[str], None] = None,
    cache: bool = False,
    verify_key: Union[PathLike, Sequence[PathLike], None] = None,
    verify_cert_chain: Union[PathLike, Sequence[PathLike], None] = None,
    cert_identity: Union[str, Sequence[str], None] = None,
    cert_oidc_issuer: Union[str, Sequence[str], None] = None,
    sigstore_trusted_root: Optional[PathLike] = None,
    verify_policy: Optional[PathLike] = None,
    concurrency: int = 4,
    max_connections: int = 64,
    range_size: Optional[int] = None,
    link_mode: str = "auto",
    overwrite: bool = False,
    progress: ProgressArg = None,
    **connection: Any,
) -> PullResult:
    """Pull ``ref`` into the folder ``output`` (created if missing).

    Every byte is checked against its digest before a file appears; files already in place
    are kept. Keywords are the CLI's ``hoist pull`` flags: ``include``/``exclude`` globs,
    ``kind`` (weight, config, doc, code, dataset), ``cache`` (use the local store as a node
    cache), ``verify_key`` (public keys, PEM: the model must carry a signature by one of them,
    checked before any file is placed), ``verify_cert_chain`` (root certificates, PEM: or a
    signature by a certificate chaining to them, for code signing) with ``cert_identity``
    (the subject or SAN it must name, exact or glob), ``cert_oidc_issuer`` (a Sigstore
    signature's OIDC issuer, with ``cert_identity`` its SAN; ``sigstore_trusted_root`` for a
    private instance), ``max_connections`` and ``range_size`` (bytes; large
    files are fetched as ranges in parallel, and an interrupted pull keeps whole ranges),
    ``link_mode`` (auto, reflink, hardlink, copy), ``overwrite`` (replace files no earlier
    pull placed).

    >>> r = hoist.pull("localhost:5000/team/bert:step-500", "/models/bert")  # doctest: +SKIP
    >>> [f.path for f in r.files]  # doctest: +SKIP
    """
    started = time.monotonic()
    report = _call(
        _native.pull,
        progress,
        "pull",
        _connection(connection),
        ref,
        os.fspath(output),
        _strings(include),
        _strings(exclude),
        _strings(kind),
        cache,
        _paths(verify_key),
        _paths(verify_cert_chain),
        _strings(cert_identity),
        _strings(cert_oidc_issuer),
        _path(sigstore_trusted_root),
        _path(verify_policy),
        concurrency,
        max_connections,
        range_size,
        link_mode,
        overwrite,
    )
    return pull_result(report, ref, Path(output), time.monotonic() - started)


def open_safetensors(
    ref: str,
    *,
    cache: bool = False,
    concurrency: int = 4,
    max_connections: int = 64,
    range_size: Optional[int] = None,
    progress: ProgressArg = None,
    **connection: Any,
) -> "Tensors":
    """The tensors of ``ref``'s ``.safetensors`` files, straight from the registry into memory.

    Returns a read-only mapping from tensor name to a NumPy array (a view into memory; no file
    is written). Every byte is checked against its layer's digest before this returns; a
    header that lies about its tensors' offsets or sizes raises before the memory is taken.
    ``cache`` uses the local store as a node cache (a blob it holds is mapped where it is,
    after its digest is checked again); ``max_connections`` and ``range_size`` are
    ``pull``'s. ``.raw(name)`` gives a tensor's bytes for other frameworks.

    >>> with hoist.open_safetensors("localhost:5000/team/bert:v1") as t:  # doctest: +SKIP
    ...     t["embeddings.word_embeddings.weight"].shape
    """
    listed = _call(
        _native.open_safetensors,
        progress,
        "open",
        _connection(connection),
        ref,
        cache,
        concurrency,
        max_connections,
        range_size,
    )
    return Tensors(listed)


def copy(
    src: str,
    dst: str,
    *,
    concurrency: int = 4,
    include: Union[str, Sequence[str], None] = None,
    exclude: Union[str, Sequence[str], None] = None,
    chunk_index: bool = True,
    progress: ProgressArg = None,
    **connection: Any,
) -> CopyResult:
    """Copy an artifact between registries or the local store, blobs before the manifest.

    ``src`` may be a Hugging Face Hub repository, ``hf://ORG/NAME[@REVISION]`` (or
    ``hf://datasets/…``): its files are streamed into ``dst`` as a ModelPack artifact,
    filtered by ``include``/``exclude``. No tag on ``dst`` keeps the source's.

    >>> hoist.copy("hf://sentence-transformers/all-MiniLM-L6-v2", "localhost:5000/minilm")  # doctest: +SKIP
    """
    started = time.monotonic()
    doc = _call(
        _native.copy,
        progress,
        "copy",
        _connection(connection),
        src,
        dst,
        concurrency,
        _strings(include),
        _strings(exclude),
        chunk_index,
    )
    return copy_result(doc, time.monotonic() - started)


def inspect(ref: str, **connection: Any) -> dict[str, Any]:
    """What ``ref`` is: ``digest``, ``manifestDigest``, ``manifest``, ``config`` (the ModelPack
    config), ``files`` (path, size, digest, mediaType per layer), ``isImageVolume``,
    ``imageVolume`` and ``signatures`` (claims, not verified) — ``hoist inspect --json``."""
    return _plain(_native.inspect, _connection(connection), ref)


def verify(
    folder: PathLike,
    ref: Optional[str] = None,
    *,
    marker: Optional[PathLike] = None,
    key: Union[PathLike, Sequence[PathLike], None] = None,
    full: bool = False,
    **connection: Any,
) -> VerifyResult:
    """Check a pulled folder: against the artifact ``ref`` names, or offline against the
    ready marker ``marker`` or the folder's signature (``model.sig``) by ``key``. Raises
    :class:`VerifyError` listing every file that differs. ``full`` hashes every file, even
    those the pull's record vouches for."""
    report = _plain(
        _native.verify,
        _connection(connection),
        os.fspath(folder),
        ref,
        _path(marker),
        _paths(key),
        full,
    )
    return verify_result(report)


def list(**connection: Any) -> _builtins.list[StoredModel]:  # noqa: A001 (the CLI's verb)
    """The local store's tags (``hoist list``)."""
    rows = _plain(_native.list, _connection(connection))
    return [StoredModel(r["reference"], r["digest"], r.get("size")) for r in rows]

