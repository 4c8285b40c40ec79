"""Each exception class raised by its cause, with the CLI's exit code and message."""

from __future__ import annotations

import json
import os
import urllib.request
from hashlib import sha256

import hoist
import pytest

from conftest import free_port


def test_usage_error_for_a_bad_reference(tmp_path):
    with pytest.raises(hoist.UsageError, match="invalid reference") as e:
        hoist.pull("Not A Reference!", tmp_path / "out")
    assert e.value.exit_code == 2 and isinstance(e.value, ValueError)
    with pytest.raises(TypeError, match="unexpected keyword"):
        hoist.pull("m:v1", tmp_path / "out", stroe=tmp_path)


def test_auth_error_for_wrong_credentials(auth_registry, model, tmp_path):
    ref = auth_registry.ref("team/bert:v1")
    with pytest.raises(hoist.AuthError) as e:
        hoist.push(model, ref, username="alice", password="wrong")
    assert e.value.exit_code == 3 and "rejected the credentials" in str(e.value)
    assert "username=/password= in Python" in str(e.value)
    pushed = hoist.push(model, ref, username="alice", password="s3cret")
    os.environ["HOIST_USERNAME"], os.environ["HOIST_PASSWORD"] = "alice", "s3cret"
    try:
        assert hoist.pull(ref, tmp_path / "out").digest == pushed.digest
    finally:
        del os.environ["HOIST_USERNAME"], os.environ["HOIST_PASSWORD"]
    with pytest.raises(hoist.AuthError):
        hoist.pull(ref, tmp_path / "anonymous")


def test_not_found_error_for_a_missing_tag(registry, model, tmp_path):
    hoist.push(model, registry.ref("team/bert:v1"))
    with pytest.raises(hoist.NotFoundError) as e:
        hoist.pull(registry.ref("team/bert:v9"), tmp_path / "out")
    assert e.value.exit_code == 4 and "v9" in str(e.value)
    with pytest.raises(hoist.NotFoundError):
        hoist.inspect("nothing-here:v1")


def test_network_error_when_nothing_listens(tmp_path):
    port = free_port()  # closed again: connections are refused
    with pytest.raises(hoist.NetworkError) as e:
        hoist.inspect(f"127.0.0.1:{port}/team/bert:v1")
    assert e.value.exit_code == 5 and isinstance(e.value, ConnectionError)


def test_verify_error_for_a_tampered_blob(registry, model, tmp_path):
    ref = registry.ref("team/bert:v1")
    pushed = hoist.push(model, ref)
    layer = next(f for f in hoist.inspect(ref)["files"] if f["path"] == "model.safetensors")
    data = registry.blob_data(layer["digest"])
    blob = bytearray(data.read_bytes())
    blob[1000] ^= 0xFF
    data.write_bytes(bytes(blob))
    out = tmp_path / "out"
    with pytest.raises(hoist.VerifyError) as e:
        hoist.pull(ref, out)
    assert e.value.exit_code == 6 and pushed.digest
    assert not (out / "model.safetensors").exists()


def test_disk_error_when_the_output_cannot_be_made(registry, model, tmp_path):
    ref = registry.ref("team/bert:v1")
    hoist.push(model, ref)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(hoist.DiskError) as e:
        hoist.pull(ref, blocker / "out")
    assert e.value.exit_code == 7 and isinstance(e.value, OSError)


def _put(url: str, body: bytes, content_type: str) -> None:
    req = urllib.request.Request(url, data=body, method="PUT", headers={"Content-Type": content_type})
    urllib.request.urlopen(req).close()


def test_invalid_content_error_for_a_hostile_manifest(registry, tmp_path):
    """A manifest whose layer would be written outside the output folder."""
    base = f"http://{registry.addr}/v2/evil"
    blobs = {}
    for body in (b"{}", b"owned"):
        digest = "sha256:" + sha256(body).hexdigest()
        req = urllib.request.Request(f"{base}/blobs/uploads/", method="POST", data=b"")
        location = urllib.request.urlopen(req).headers["Location"]
        sep = "&" if "?" in location else "?"
        url = location if location.startswith("http") else f"http://{registry.addr}{location}"
        _put(f"{url}{sep}digest={digest}", body, "application/octet-stream")
        blobs[body] = (digest, len(body))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example+type",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": blobs[b"{}"][0], "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": blobs[b"owned"][0],
                    "size": 5, "annotations": {"org.opencontainers.image.title": "../../escape"}}],
    }
    _put(f"{base}/manifests/v1", json.dumps(manifest).encode(), manifest["mediaType"])
    with pytest.raises(hoist.InvalidContentError) as e:
        hoist.pull(registry.ref("evil:v1"), tmp_path / "out")
    assert e.value.exit_code == 8 and "escape" in str(e.value)
    assert not (tmp_path.parent / "escape").exists()


def test_signature_error_for_an_unsigned_model(registry, model, keys, tmp_path):
    (_, public), _ = keys
    ref = registry.ref("team/bert:v1")
    hoist.push(model, ref)
    with pytest.raises(hoist.SignatureError) as e:
        hoist.pull(ref, tmp_path / "out", verify_key=public)
    assert e.value.exit_code == 9
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_every_error_is_a_hoist_error():
    for cls in (hoist.UsageError, hoist.AuthError, hoist.NotFoundError, hoist.NetworkError,
                hoist.VerifyError, hoist.DiskError, hoist.InvalidContentError, hoist.SignatureError):
        assert issubclass(cls, hoist.HoistError)
