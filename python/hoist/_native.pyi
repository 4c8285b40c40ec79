"""The native half of hoist (Rust, PyO3). Use the functions of ``hoist``, which wrap these."""

from typing import Callable, Mapping, Optional, Sequence

__version__: str

class NativeError(Exception):
    """args: (exit code, one-line message)."""

class Connection:
    def __init__(
        self,
        store: Optional[str],
        plain_http: Optional[bool],
        insecure: bool,
        ca_file: Optional[str],
        username: Optional[str],
        password: Optional[str],
        registry_config: Optional[str],
        mirrors: Sequence[str],
        mirrors_config: Optional[str],
        stall_timeout: float,
    ) -> None: ...

Tick = Optional[Callable[[int, int, int, int, str], None]]

def push(
    conn: Connection,
    folder: str,
    reference: str,
    tags: Sequence[str],
    layer_format: str,
    compression_level: Optional[int],
    name: Optional[str],
    created: bool,
    include_hidden: bool,
    follow_external_symlinks: bool,
    concurrency: int,
    chunk_size: Optional[int],
    mount_from: Sequence[str],
    annotations: Mapping[str, str],
    config: Optional[str],
    chunk_index: bool,
    image_volume: bool,
    sign_key: Optional[str],
    sign_cert: Optional[str],
    sign_cert_chain: Sequence[str],
    progress: Tick,
) -> str: ...
def pull(
    conn: Connection,
    reference: str,
    output: str,
    include: Sequence[str],
    exclude: Sequence[str],
    kind: Sequence[str],
    cache: bool,
    verify_key: Sequence[str],
    verify_cert_chain: Sequence[str],
    cert_identity: Sequence[str],
    cert_oidc_issuer: Sequence[str],
    sigstore_trusted_root: Optional[str],
    verify_policy: Optional[str],
    concurrency: int,
    max_connections: int,
    range_size: Optional[int],
    link_mode: str,
    overwrite: bool,
    progress: Tick,
) -> str: ...
def copy(
    conn: Connection,
    source: str,
    destination: str,
    concurrency: int,
    include: Sequence[str],
    exclude: Sequence[str],
    chunk_index: bool,
    progress: Tick,
) -> str: ...
def open_safetensors(
    conn: Connection,
    reference: str,
    cache: bool,
    concurrency: int,
    max_connections: int,
    range_size: Optional[int],
    progress: Tick,
) -> str: ...
def inspect(conn: Connection, reference: str) -> str: ...
def verify(
    conn: Connection,
    folder: str,
    reference: Optional[str],
    marker: Optional[str],
    key: Sequence[str],
    full: bool,
) -> str: ...
def list(conn: Connection) -> str: ...

