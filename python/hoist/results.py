"""What hoist's calls return: plain dataclasses, built from the library's reports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional


@dataclass(frozen=True)
class Progress:
    """A progress report: bytes and files done so far, of how many."""

    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    #: The file last heard of.
    file: str


@dataclass(frozen=True)
class PushResult:
    reference: str
    #: The manifest's digest (``sha256:…``): pull by it for exactly these bytes.
    digest: str
    tags: list[str]
    #: Files in the artifact and their total size.
    files: int
    bytes: int
    #: Blobs uploaded (of ``blobs``), mounted from another repository, or already there.
    blobs: int
    uploaded: int
    uploaded_bytes: int
    mounted: int
    skipped: int
    #: The chunk index attached for delta pulls (``None`` with ``chunk_index=False``).
    chunk_index: Optional[str]
    #: The signature attached (with ``sign_key=``).
    signature: Optional[str]
    #: The image-volume form's manifest digest (with ``image_volume=True``).
    image_volume: Optional[str]
    seconds: float


@dataclass(frozen=True)
class PlacedFile:
    path: Path
    size: int
    #: The file's own digest (``None`` for files unpacked from tar layers).
    digest: Optional[str]


@dataclass(frozen=True)
class PullResult:
    reference: str
    digest: str
    output: Path
    #: Every file placed, relative to ``output``.
    files: list[PlacedFile]
    bytes: int
    #: Bytes downloaded by this call (not those an interrupted earlier call kept).
    downloaded_bytes: int
    #: Bytes an interrupted earlier call had downloaded and this one reused.
    resumed_bytes: int
    #: Bytes of changed files taken from the earlier version in the folder (delta pull).
    reused_bytes: int
    #: Files already in place with the right bytes.
    skipped: int
    #: Blobs taken from the local store (``cache=True``) instead of the network.
    cache_hits: int
    seconds: float


@dataclass(frozen=True)
class CopyResult:
    source: str
    destination: str
    tags: list[str]
    digest: str
    #: Blobs (or, from the Hub, files) sent, and their bytes.
    copied: int
    copied_bytes: int
    mounted: int
    skipped: int
    #: From the Hub: the commit copied.
    commit: Optional[str]
    seconds: float


@dataclass(frozen=True)
class VerifyResult:
    reference: str
    digest: str
    folder: Path
    #: Files checked (present, right size, right digest).
    checked: int
    #: Tar layers, whose files have no digests of their own (not checked one by one).
    unchecked_tar_layers: int


@dataclass(frozen=True)
class StoredModel:
    """A tag of the local store."""

    reference: str
    digest: str
    #: The layers' total size (``None`` for an index).
    size: Optional[int]


def push_result(report: dict[str, Any], reference: str, seconds: float) -> PushResult:
    volume = report.get("image_volume")
    return PushResult(
        reference=reference,
        digest=report["digest"],
        tags=list(report["tags"]),
        files=report["files"],
        bytes=report["bytes"],
        blobs=report["blobs"],
        uploaded=report["uploaded"],
        uploaded_bytes=report["uploaded_bytes"],
        mounted=report["mounted"],
        skipped=report["skipped"],
        chunk_index=report.get("chunk_index"),
        signature=report.get("signature"),
        image_volume=volume["digest"] if volume else None,
        seconds=seconds,
    )


def pull_result(report: dict[str, Any], reference: str, output: Path, seconds: float) -> PullResult:
    return PullResult(
        reference=reference,
        digest=report["digest"],
        output=output,
        files=[PlacedFile(Path(f["path"]), f["size"], f.get("digest")) for f in report["placed"]],
        bytes=report["bytes"],
        downloaded_bytes=report["downloaded_bytes"],
        resumed_bytes=report["resumed_bytes"],
        reused_bytes=report["reused_bytes"],
        skipped=report["skipped"],
        cache_hits=report["cache_hits"],
        seconds=seconds,
    )


def copy_result(doc: dict[str, Any], seconds: float) -> CopyResult:
    report = doc["report"]
    from_hub = "commit" in report
    return CopyResult(
        source=doc["source"],
        destination=doc["destination"],
        tags=list(doc["tags"]),
        digest=report["digest"],
        copied=report["uploaded"] if from_hub else report["copied"],
        copied_bytes=report["uploaded_bytes"] if from_hub else report["copied_bytes"],
        mounted=report.get("mounted", 0),
        skipped=report["skipped"],
        commit=report.get("commit"),
        seconds=seconds,
    )


def verify_result(report: dict[str, Any]) -> VerifyResult:
    return VerifyResult(
        reference=report["reference"],
        digest=report["digest"],
        folder=Path(report["dir"]),
        checked=report["checked"],
        unchecked_tar_layers=report["unchecked_tar_layers"],
    )


