"""hoist.open_safetensors: tensors from a registry (or the local store) straight into memory,
every byte checked, hostile headers refused before the download."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import hoist
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file


def memfd_maps() -> list[str]:
    with open("/proc/self/maps") as f:
        return [line for line in f if "memfd:" in line]


def every_file(root: Path) -> list[tuple[str, int]]:
    """Every file under the test's folder but the registry's own (its storage and log)."""
    return sorted((str(p), p.stat().st_size) for p in root.rglob("*")
                  if p.is_file() and "registry" not in p.relative_to(root).parts)


def test_the_real_model_opens_in_memory_equal_to_safetensors(registry, real_model, tmp_path):
    ref = registry.ref("team/minilm:v1")
    hoist.push(real_model, ref)
    before = every_file(tmp_path)
    expected = load_file(str(real_model / "model.safetensors"))
    with hoist.open_safetensors(ref) as tensors:
        assert sorted(tensors) == sorted(expected)
        for name, array in expected.items():
            got = tensors[name]
            assert got.dtype == array.dtype and got.shape == array.shape, name
            assert np.array_equal(got, array), name
            assert not got.flags.writeable
        assert [f.path for f in tensors.files] == ["model.safetensors"]
        # In anonymous memory: a memfd mapping, and no file written anywhere under the test.
        assert any("model.safetensors" in line for line in memfd_maps())
        assert every_file(tmp_path) == before


def test_several_files_and_the_local_store(model_with_shards, tmp_path):
    folder, expected = model_with_shards
    hoist.push(folder, "team/sharded:v1")
    with hoist.open_safetensors("team/sharded:v1") as tensors:
        assert sorted(tensors) == sorted(expected)
        for name, array in expected.items():
            assert np.array_equal(tensors[name], array)
        assert tensors.info("b.weight").file == "model-00002-of-00002.safetensors"
        assert tensors.metadata == {"format": "np"}


def test_a_layer_whose_bytes_do_not_match_raises_and_returns_nothing(registry, model_with_shards):
    folder, _ = model_with_shards
    ref = registry.ref("team/sharded:v1")
    pushed = hoist.push(folder, ref)
    manifest = hoist.inspect(ref)["manifest"]
    layer = next(l for l in manifest["layers"]
                 if l["annotations"]["org.opencontainers.image.title"].endswith("00002-of-00002.safetensors"))
    data = registry.blob_data(layer["digest"])
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF  # a weight byte: the header still parses
    data.write_bytes(bytes(raw))
    with pytest.raises(hoist.VerifyError):
        hoist.open_safetensors(ref)
    assert pushed.digest


@pytest.mark.parametrize("lie", ["past the end", "overlap", "shape", "huge header"])
def test_a_header_that_lies_is_refused(registry, tmp_path, lie):
    data = np.arange(16, dtype=np.float32).tobytes()
    tensors = {
        "a": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]},
        "b": {"dtype": "F32", "shape": [8], "data_offsets": [32, 64]},
    }
    if lie == "past the end":
        tensors["b"]["data_offsets"] = [32, 1 << 40]
        tensors["b"]["shape"] = [(1 << 38) - 8]
    elif lie == "overlap":
        tensors["b"]["data_offsets"] = [16, 48]
    elif lie == "shape":
        tensors["b"]["shape"] = [9]
    header = json.dumps(tensors).encode()
    length = len(header) if lie != "huge header" else 1 << 62
    folder = tmp_path / "liar"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", length) + header + data)
    ref = registry.ref("team/liar:v1")
    hoist.push(folder, ref)
    before = len(memfd_maps())
    with pytest.raises(hoist.InvalidContentError) as e:
        hoist.open_safetensors(ref)
    assert "model.safetensors" in str(e.value)
    assert len(memfd_maps()) == before


def test_an_artifact_without_safetensors_says_what_it_has(registry, tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    ref = registry.ref("team/plain:v1")
    hoist.push(folder, ref)
    with pytest.raises(hoist.UsageError, match="config.json"):
        hoist.open_safetensors(ref)


def test_bfloat16_without_ml_dtypes_gives_raw_bytes(tmp_path):
    folder = tmp_path / "bf16"
    folder.mkdir()
    values = np.arange(4, dtype=np.uint16)
    header = json.dumps({"w": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + values.tobytes())
    hoist.push(folder, "team/bf16:v1")
    with hoist.open_safetensors("team/bf16:v1") as tensors:
        assert bytes(tensors.raw("w")) == values.tobytes()
        try:
            import ml_dtypes  # noqa: F401
        except ImportError:
            with pytest.raises(TypeError, match="ml_dtypes"):
                tensors["w"]
        else:
            assert tensors["w"].shape == (4,)


@pytest.fixture
def model_with_shards(tmp_path: Path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    rng = np.random.default_rng(7)
    first = {"a.weight": rng.standard_normal((64, 32)).astype(np.float32),
             "a.bias": np.arange(32, dtype=np.int64)}
    second = {"b.weight": rng.standard_normal((128, 16)).astype(np.float16)}
    save_file(first, str(folder / "model-00001-of-00002.safetensors"), metadata={"format": "np"})
    save_file(second, str(folder / "model-00002-of-00002.safetensors"), metadata={"format": "np"})
    (folder / "config.json").write_text('{"model_type": "test"}')
    return folder, {**first, **second}


def test_a_header_longer_than_the_first_read_is_read_to_its_end(registry, tmp_path):
    # ~2,000 tensors with long names: a header of well over 64 KiB, hoist's first read.
    tensors = {f"layers.{i:05d}.attention.output.dense.weight": np.full((3,), i, dtype=np.int32)
               for i in range(2000)}
    folder = tmp_path / "wide"
    folder.mkdir()
    save_file(tensors, str(folder / "model.safetensors"))
    raw = (folder / "model.safetensors").read_bytes()
    assert struct.unpack("<Q", raw[:8])[0] > 64 << 10
    ref = registry.ref("team/wide:v1")
    hoist.push(folder, ref)
    with hoist.open_safetensors(ref) as got:
        assert len(got) == 2000
        for name, array in tensors.items():
            assert np.array_equal(got[name], array), name


def test_files_larger_than_the_available_memory_are_refused_before_any_download(registry, tmp_path):
    """A manifest may claim any size: one that claims more than MemAvailable is refused from
    the manifest alone, before a byte of a blob is asked for."""
    import urllib.request

    folder = tmp_path / "small"
    folder.mkdir()
    save_file({"w": np.zeros(4, dtype=np.float32)}, str(folder / "model.safetensors"))
    hoist.push(folder, registry.ref("team/claims:v1"))
    accept = "application/vnd.oci.image.manifest.v1+json"
    url = f"http://{registry.addr}/v2/team/claims/manifests/"
    with urllib.request.urlopen(urllib.request.Request(url + "v1", headers={"Accept": accept})) as r:
        manifest = json.load(r)
    for layer in manifest["layers"]:
        if layer["annotations"]["org.opencontainers.image.title"] == "model.safetensors":
            layer["size"] = 1 << 50  # a petabyte, the same digest
    put = urllib.request.Request(url + "huge", data=json.dumps(manifest).encode(), method="PUT",
                                 headers={"Content-Type": accept})
    urllib.request.urlopen(put).close()
    before = len(memfd_maps())
    with pytest.raises(hoist.InvalidContentError) as e:
        hoist.open_safetensors(registry.ref("team/claims:huge"))
    assert "available" in str(e.value) and "nothing was downloaded" in str(e.value), str(e.value)
    assert len(memfd_maps()) == before
