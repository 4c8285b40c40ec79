"""Tensors straight from a registry: :func:`hoist.open_safetensors` and what it returns.

The native half downloads every ``.safetensors`` layer of an artifact into anonymous memory
(a ``memfd``; no file is written) over the pull engine's ranged connections, checks every
byte against the layer's digest, and reads each header strictly (a header that lies about
offsets or sizes is refused before the memory is taken). Here each file's memory is mapped
read-only and each tensor is a NumPy view into it: no copy after the network's.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

# dtype names of the safetensors format → NumPy's (bfloat16 and the float8 types come from
# ml_dtypes when it is installed, as JAX and TensorFlow provide it).
_NUMPY = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "I16": "int16",
    "U16": "uint16",
    "F16": "float16",
    "I32": "int32",
    "U32": "uint32",
    "F32": "float32",
    "I64": "int64",
    "U64": "uint64",
    "F64": "float64",
}
_ML_DTYPES = {"BF16": "bfloat16", "F8_E5M2": "float8_e5m2", "F8_E4M3": "float8_e4m3fn"}


def _numpy_dtype(name: str) -> Any:
    import numpy as np

    if name in _NUMPY:
        return np.dtype(_NUMPY[name]).newbyteorder("<")
    if name in _ML_DTYPES:
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError(
                f"{name} tensors need the ml_dtypes package for a NumPy dtype "
                f"(pip install ml_dtypes); .raw(name) gives their bytes"
            ) from None
        return np.dtype(getattr(ml_dtypes, _ML_DTYPES[name]))
    raise TypeError(f"{name} has no NumPy dtype; .raw(name) gives its bytes")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    #: The file (path in the artifact) that holds it, and where.
    file: str
    start: int
    end: int


@dataclass
class SafetensorsFile:
    path: str
    digest: str
    size: int
    metadata: dict[str, str] = field(default_factory=dict)


class Tensors(Mapping[str, Any]):
    """A read-only mapping from tensor name to a NumPy array, over verified memory.

    Arrays are views (read-only) into memory that stays mapped while this object or any
    array lives; ``close()`` (or leaving a ``with`` block) drops this object's hold.
    """

    def __init__(self, listed: list[dict[str, Any]]) -> None:
        self._maps: dict[str, mmap.mmap] = {}
        self._info: dict[str, TensorInfo] = {}
        self.files: list[SafetensorsFile] = []
        try:
            for f in listed:
                self._maps[f["path"]] = _map(f["fd"], f["size"])
        finally:
            for f in listed:
                os.close(f["fd"])
        for f in listed:
            self.files.append(SafetensorsFile(f["path"], f["digest"], f["size"], dict(f["metadata"])))
            for t in f["tensors"]:
                if t["name"] in self._info:
                    raise ValueError(f"tensor {t['name']!r} is in both {self._info[t['name']].file} and {f['path']}")
                self._info[t["name"]] = TensorInfo(t["name"], t["dtype"], tuple(t["shape"]), f["path"], t["start"], t["end"])

    @property
    def metadata(self) -> dict[str, str]:
        """The ``__metadata__`` of every file, merged."""
        merged: dict[str, str] = {}
        for f in self.files:
            merged.update(f.metadata)
        return merged

    def info(self, name: str) -> TensorInfo:
        return self._info[name]

    def raw(self, name: str) -> memoryview:
        """The tensor's bytes, for a framework NumPy does not cover."""
        t = self._info[name]
        return memoryview(self._maps[t.file])[t.start : t.end]

    def __getitem__(self, name: str) -> Any:
        import numpy as np

        t = self._info[name]
        dtype = _numpy_dtype(t.dtype)
        count = (t.end - t.start) // dtype.itemsize
        array = np.frombuffer(self._maps[t.file], dtype=dtype, count=count, offset=t.start)
        return array.reshape(t.shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._info)

    def __len__(self) -> int:
        return len(self._info)

    def close(self) -> None:
        """Drop this object's mappings (arrays still alive keep theirs)."""
        self._maps.clear()

    def __enter__(self) -> "Tensors":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _map(fd: int, size: int) -> mmap.mmap:
    if size == 0:
        raise ValueError("an empty file holds no tensors")
    return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
