"""Progress callbacks and bars, Ctrl-C, resuming, and the memory of a large pull."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import hoist
import pytest

from conftest import files_of


def test_progress_callback_gets_growing_byte_counts(registry, model, tmp_path):
    ticks = []
    hoist.push(model, registry.ref("team/bert:v1"), progress=ticks.append)
    assert ticks and ticks[-1].bytes_done == ticks[-1].bytes_total > 3 << 20
    ticks = []
    hoist.pull(registry.ref("team/bert:v1"), tmp_path / "out", progress=ticks.append)
    done = [t.bytes_done for t in ticks]
    assert done == sorted(done) and done[-1] == ticks[-1].bytes_total
    assert ticks[-1].files_done == ticks[-1].files_total == 4
    assert all(isinstance(t, hoist.Progress) for t in ticks)


def test_progress_true_shows_a_tqdm_bar(registry, model, tmp_path, capsys):
    hoist.push(model, registry.ref("team/bert:v1"))
    hoist.pull(registry.ref("team/bert:v1"), tmp_path / "out", progress=True)
    err = capsys.readouterr().err
    assert "pull" in err and "100%" in err


def _big_model(tmp_path, mib: int):
    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(os.urandom(mib << 20))
    return folder


def test_ctrl_c_stops_a_pull_and_the_next_call_resumes(registry, tmp_path, slow_proxy):
    """A real SIGINT during a pull: KeyboardInterrupt, the partial download kept, and the
    next pull of the same reference into the same folder takes up from it."""
    folder = _big_model(tmp_path, 12)
    hoist.push(folder, registry.ref("team/big:v1"), chunk_index=False)
    # The weights stop at 6 of 12 MiB until the interrupt has been seen: the pull cannot end
    # first, however late the callback runs on a loaded machine.
    proxy = slow_proxy(registry.addr, 4 << 20, hold_after=6 << 20)
    out = tmp_path / "out"
    sent = []
    # Python's own Ctrl-C handler, whatever this process inherited: a process started in the
    # background by a non-interactive shell has SIGINT ignored, and Python then installs none.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def interrupt(p: hoist.Progress) -> None:
        if p.bytes_done > (3 << 20) and not sent:
            sent.append(p.bytes_done)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        hoist.pull(f"{proxy.addr}/team/big:v1", out, progress=interrupt, max_connections=1,
                   range_size=1 << 20)
    proxy.release()
    signal.signal(signal.SIGINT, previous)
    assert sent, "the pull ended before it could be interrupted"
    assert not (out / "model.safetensors").exists()
    assert (out / ".hoist-partial").is_dir()

    resumed = hoist.pull(registry.ref("team/big:v1"), out, range_size=1 << 20)
    assert resumed.resumed_bytes >= 2 << 20
    assert resumed.downloaded_bytes < resumed.bytes
    assert files_of(out) == files_of(folder)


def test_a_raising_callback_stops_the_call_like_ctrl_c(registry, tmp_path, slow_proxy):
    folder = _big_model(tmp_path, 8)
    hoist.push(folder, registry.ref("team/big:v1"), chunk_index=False)
    proxy = slow_proxy(registry.addr, 4 << 20, hold_after=5 << 20)

    class Stop(Exception):
        pass

    def stop(p: hoist.Progress) -> None:
        if p.bytes_done > (3 << 20):
            raise Stop

    with pytest.raises(Stop):
        hoist.pull(f"{proxy.addr}/team/big:v1", tmp_path / "out", progress=stop, max_connections=1,
                   range_size=1 << 20)
    proxy.release()
    again = hoist.pull(registry.ref("team/big:v1"), tmp_path / "out", range_size=1 << 20)
    assert again.resumed_bytes > 0 and files_of(tmp_path / "out") == files_of(folder)


# The high-water mark of this process's own memory (VmHWM starts afresh at exec, unlike
# ru_maxrss, which keeps what the forking parent had).
PEAK = textwrap.dedent("""
    import sys, hoist
    r = hoist.pull(sys.argv[1], sys.argv[2])
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(r.bytes, int(hwm.split()[1]))
""")


def test_a_2_gib_pull_stays_below_100_mib(registry, tmp_path):
    # The model and the pulled copy live in a tmpfs where one has room for them, so the
    # test needs 2 GiB of disk (the registry's copy), not 4.
    shm = "/dev/shm"
    if os.path.isdir(shm) and shutil.disk_usage(shm).free > 5 << 30:
        with tempfile.TemporaryDirectory(dir=shm) as scratch:
            _pull_2_gib(registry, pathlib.Path(scratch))
    else:
        _pull_2_gib(registry, tmp_path)


def _pull_2_gib(registry, tmp_path):
    folder = tmp_path / "huge"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with open(folder / "model.safetensors", "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(2048):
            f.write(block)
    ref = registry.ref("team/huge:v1")
    hoist.push(folder, ref, chunk_index=False)
    (folder / "model.safetensors").unlink()
    out = tmp_path / "out"
    child = subprocess.run([sys.executable, "-c", PEAK, ref, str(out)],
                           capture_output=True, text=True, check=True)
    size, peak_kib = map(int, child.stdout.split())
    assert size == (2 << 30) + 2
    assert (out / "model.safetensors").stat().st_size == 2 << 30
    print(f"peak RSS of a 2 GiB pull from Python: {peak_kib / 1024:.0f} MiB")
    assert peak_kib < 100 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
