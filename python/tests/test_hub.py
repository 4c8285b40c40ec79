"""`hoist.copy("hf://…", …)`: a Hugging Face Hub repository streamed into a registry.

The stand-in Hub here is small (one page of files, no CDN redirect); tests/hub.rs holds the
Rust side to a fuller one that the official ``huggingface_hub`` client reads first.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import hoist
import pytest

from conftest import files_of

COMMIT = "0123456789abcdef0123456789abcdef01234567"
FILES = {
    "config.json": b'{"model_type": "bert", "hidden_size": 8}',
    "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(256)) * 4096,
}


def entry(path: str, body: bytes) -> dict:
    entry = {"type": "file", "path": path, "size": len(body),
             "oid": hashlib.sha1(b"blob %d\0" % len(body) + body).hexdigest()}
    if path.endswith(".safetensors"):
        entry["lfs"] = {"oid": hashlib.sha256(body).hexdigest(), "size": len(body)}
    return entry


class Hub(BaseHTTPRequestHandler):
    token = "hf_secret"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, code: int, body: bytes, headers: dict[str, str], head: bool = False) -> None:
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            body = b'{"error": "Access to model org/tiny is restricted."}'
            return self._send(401, body, {"X-Error-Code": "GatedRepo",
                                          "X-Error-Message": "Access to model org/tiny is restricted."})
        path = self.path.split("?")[0]
        if path == "/api/models/org/tiny/revision/main":
            doc = {"sha": COMMIT, "siblings": [{"rfilename": p} for p in FILES]}
            return self._send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"}, head)
        if path == f"/api/models/org/tiny/tree/{COMMIT}":
            doc = [entry(p, b) for p, b in FILES.items()]
            return self._send(200, json.dumps(doc).encode(), {"Content-Type": "application/json"}, head)
        prefix = f"/org/tiny/resolve/{COMMIT}/"
        if path.startswith(prefix) and path[len(prefix):] in FILES:
            body = FILES[path[len(prefix):]]
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(body).hexdigest()}"'}
            ranged = self.headers.get("Range", "")
            if ranged.startswith("bytes=") and ranged.endswith("-"):
                start = int(ranged[6:-1])
                headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                return self._send(206, body[start:], headers, head)
            return self._send(200, body, headers, head)
        self._send(404, b'{"error": "not found"}', {"X-Error-Code": "EntryNotFound"}, head)


@pytest.fixture
def hub(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    yield server
    server.shutdown()


def test_a_hub_repository_is_copied_and_pulls_back_identical(hub, registry, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", Hub.token)
    ticks = []
    copied = hoist.copy("hf://org/tiny", registry.ref("mirror/tiny"), progress=ticks.append)
    assert copied.commit == COMMIT and copied.tags == ["latest"]
    assert copied.copied == 2 and copied.copied_bytes == sum(len(b) for b in FILES.values())
    assert ticks[-1].bytes_done == ticks[-1].bytes_total == copied.copied_bytes
    out = tmp_path / "out"
    assert hoist.pull(registry.ref("mirror/tiny:latest"), out).digest == copied.digest
    assert files_of(out) == {p: b for p, b in FILES.items()}
    annotations = hoist.inspect(registry.ref("mirror/tiny:latest"))["manifest"]["annotations"]
    assert annotations["org.opencontainers.image.revision"] == COMMIT


def test_a_gated_repository_without_a_token_is_an_auth_error(hub, registry):
    with pytest.raises(hoist.AuthError, match="restricted"):
        hoist.copy("hf://org/tiny", registry.ref("mirror/tiny"))
