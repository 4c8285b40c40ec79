"""push, pull, copy, inspect, verify and list against a real registry on loopback."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import json
import threading
from pathlib import Path

import hoist
import pytest

from conftest import files_of, need


def test_a_pushed_folder_pulls_back_identical(registry, model, tmp_path):
    ref = registry.ref("team/bert:v1")
    pushed = hoist.push(model, ref, tags=["latest"])
    assert pushed.digest.startswith("sha256:")
    assert pushed.tags == ["v1", "latest"]
    assert pushed.files == 4 and pushed.uploaded == pushed.blobs
    assert pushed.bytes == sum(len(b) for b in files_of(model).values())
    assert pushed.chunk_index is not None

    out = tmp_path / "out"
    pulled = hoist.pull(ref, out)
    assert pulled.digest == pushed.digest
    assert files_of(out) == files_of(model)
    assert sorted(str(f.path) for f in pulled.files) == sorted(files_of(model))
    assert pulled.downloaded_bytes == pulled.bytes == pushed.bytes
    weights = next(f for f in pulled.files if f.path == Path("model.safetensors"))
    assert weights.digest == "sha256:" + hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()

    again = hoist.pull(registry.ref("team/bert:latest"), out)
    assert again.skipped == 4 and again.downloaded_bytes == 0
    assert hoist.push(model, ref).uploaded == 0


def test_pull_takes_the_clis_selection_flags(registry, model, tmp_path):
    ref = registry.ref("team/bert:v1")
    hoist.push(model, ref)
    out = tmp_path / "out"
    hoist.pull(ref, out, include="*.json", exclude="tokenizer*")
    assert sorted(files_of(out)) == ["config.json"]
    with pytest.raises(hoist.UsageError, match="no file matches"):
        hoist.pull(ref, tmp_path / "none", include="*.gguf")
    with pytest.raises(hoist.UsageError, match="link_mode"):
        hoist.pull(ref, tmp_path / "none", link_mode="teleport")


def test_the_real_model_loads_with_safetensors(registry, real_model, tmp_path):
    from safetensors import safe_open

    ref = registry.ref("minilm:v1")
    hoist.push(real_model, ref)
    out = tmp_path / "out"
    hoist.pull(ref, out)
    assert files_of(out) == files_of(real_model)
    config = json.loads((out / "config.json").read_text())
    with safe_open(str(out / "model.safetensors"), framework="numpy") as f:
        shape = f.get_slice("embeddings.word_embeddings.weight").get_shape()
        assert shape == [config["vocab_size"], config["hidden_size"]]
        layers = {k.split(".")[2] for k in f.keys() if k.startswith("encoder.layer.")}
        assert len(layers) == config["num_hidden_layers"]

    described = hoist.inspect(ref)
    assert described["digest"] == hoist.pull(ref, out).digest
    assert described["config"]["config"]["paramSize"] == "22.7m"
    assert "model.safetensors" in [f["path"] for f in described["files"]]


def test_copy_and_list_use_the_local_store(registry, model, tmp_path):
    hoist.push(model, registry.ref("team/bert:v2"))
    copied = hoist.copy(registry.ref("team/bert:v2"), "bert")
    assert copied.tags == ["v2"] and copied.copied == 4 + 1  # the files and the config
    listed = hoist.list()
    assert [(m.reference, m.digest) for m in listed] == [("bert:v2", copied.digest)]
    assert listed[0].size == sum(len(b) for b in files_of(model).values())
    out = tmp_path / "out"
    assert hoist.pull("bert:v2", out).digest == copied.digest
    assert files_of(out) == files_of(model)


def test_verify_checks_a_folder_against_its_artifact(registry, model, tmp_path):
    ref = registry.ref("team/bert:v1")
    hoist.push(model, ref)
    out = tmp_path / "out"
    hoist.pull(ref, out)
    verified = hoist.verify(out, ref, full=True)
    assert verified.checked == 4
    (out / "config.json").write_text('{"model_type": "evil"}')
    with pytest.raises(hoist.VerifyError, match="config.json"):
        hoist.verify(out, ref, full=True)
    with pytest.raises(hoist.UsageError, match="exactly one"):
        hoist.verify(out)


def test_signed_push_and_verified_pull(registry, model, keys, tmp_path):
    (signer, signer_pub), (_, stranger_pub) = keys
    ref = registry.ref("team/bert:signed")
    pushed = hoist.push(model, ref, sign_key=signer)
    assert pushed.signature is not None
    ok = hoist.pull(ref, tmp_path / "ok", verify_key=signer_pub)
    assert (tmp_path / "ok" / "model.sig").is_file() and ok.digest == pushed.digest
    with pytest.raises(hoist.SignatureError):
        hoist.pull(ref, tmp_path / "refused", verify_key=stranger_pub)
    assert not (tmp_path / "refused" / "model.safetensors").exists()


def test_calls_from_threads_run_at_once_without_the_gil(registry, model, slow_proxy, tmp_path):
    hoist.push(model, registry.ref("team/bert:v1"))
    proxy = slow_proxy(registry.addr, 2 << 20)
    results, errors = {}, []

    def pull(i: int) -> None:
        try:
            results[i] = hoist.pull(f"{proxy.addr}/team/bert:v1", tmp_path / f"out{i}")
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=pull, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    spins = 0
    while any(t.is_alive() for t in threads):
        spins += 1  # runs only while the pulls do not hold the GIL
    for t in threads:
        t.join()
    assert not errors
    assert results[0].digest == results[1].digest
    assert files_of(tmp_path / "out0") == files_of(tmp_path / "out1") == files_of(model)
    assert spins > 100_000


def test_cache_and_layer_format_as_the_cli_flags(registry, model, tmp_path):
    ref = registry.ref("team/bert:zst")
    pushed = hoist.push(model, ref, layer_format="tar+zstd")
    layers = hoist.inspect(ref)["manifest"]["layers"]
    assert all(layer["mediaType"].endswith("tar+zstd") for layer in layers)
    first = hoist.pull(ref, tmp_path / "a", cache=True)
    second = hoist.pull(ref, tmp_path / "b", cache=True)
    assert first.cache_hits == 0 and second.cache_hits == len(layers)
    assert second.downloaded_bytes == 0 and second.digest == pushed.digest
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b") == files_of(model)
    with pytest.raises(hoist.UsageError, match="layer_format"):
        hoist.push(model, ref, layer_format="zip")


def test_signed_by_certificate_and_verified_against_the_root(registry, model, tmp_path):
    need(shutil.which("openssl") is not None, "openssl is not installed (scripts/setup installs it)")

    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    for key in ("root.key", "leaf.key"):
        ssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
    ssl("req", "-x509", "-new", "-key", "root.key", "-subj", "/CN=Py Root", "-days", "30", "-out", "root.pem",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    (tmp_path / "leaf.ext").write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                                       "extendedKeyUsage=codeSigning\nsubjectAltName=email:py@example.com\n")
    ssl("req", "-new", "-key", "leaf.key", "-subj", "/CN=Py Signer", "-out", "leaf.csr")
    ssl("x509", "-req", "-in", "leaf.csr", "-CA", "root.pem", "-CAkey", "root.key", "-CAcreateserial",
        "-days", "30", "-extfile", "leaf.ext", "-out", "leaf.pem")
    ref = registry.ref("team/bert:cert")
    hoist.push(model, ref, sign_key=tmp_path / "leaf.key", sign_cert=tmp_path / "leaf.pem")
    hoist.pull(ref, tmp_path / "ok", verify_cert_chain=tmp_path / "root.pem", cert_identity="*@example.com")
    assert (tmp_path / "ok" / "model.sig").is_file()
    with pytest.raises(hoist.SignatureError):
        hoist.pull(ref, tmp_path / "refused", verify_cert_chain=tmp_path / "root.pem", cert_identity="x@y.z")
    assert not (tmp_path / "refused" / "model.safetensors").exists()
