"""A conversion killed (SIGKILL), interrupted (SIGINT) or terminated (SIGTERM) at any moment, or stopped by a full disk, never leaves a
partial file at OUT: OUT is the previous complete file, byte for byte (or absent if there was none).

What the converter does (ggufkit/output/writer.py): it writes into `.<OUT name>.<random>.tmp` in OUT's directory and
renames it over OUT only after the last byte is written and fsynced. On an exception or Ctrl-C the temp file is
removed; the CLI turns SIGTERM (sent by `timeout`, systemd, CI) into the same unwinding. A SIGKILL cannot be caught, so a killed run may leave that hidden `.tmp` file behind; its name cannot be
taken for OUT, and the next run does not trip over it.

Kill moments are seeded-random: during start-up, right after the temp file appears (header and metadata being
written) and part-way through the tensor data (after a random number of bytes).
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCHEME = "q8_0"
SEED = 9


def _spawn(src: Path, out: Path, stop_at: int | None = None) -> subprocess.Popen:
    """The conversion as a child process. With stop_at it stops itself (SIGSTOP) once its temp file holds stop_at
    bytes, so it cannot finish before the test's signal, however fast the machine (GGUFKIT_TEST_STOP_AT_BYTES)."""
    stop = {"GGUFKIT_TEST_STOP_AT_BYTES": str(stop_at)} if stop_at else {}
    return subprocess.Popen([sys.executable, "-m", "ggufkit.cli", "convert", str(src), "-o", str(out),
                             "--scheme", SCHEME, "--quiet"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **stop},
                            preexec_fn=default_sigint)  # noqa: PLW1509 (one signal() call, no locks)


def default_sigint() -> None:
    """In the child: SIGINT back to its default, so that Python turns it into KeyboardInterrupt even when the test
    runner was started in the background of a non-interactive shell (which ignores SIGINT, and children inherit it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _temp_files(out: Path) -> list[Path]:
    pattern = re.compile(re.escape(f".{out.name}.") + r".+\.tmp")
    return [p for p in out.parent.iterdir() if pattern.fullmatch(p.name)]


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 120.0) -> bool:
    """Poll every 2 ms until ready() or the process ends; True if ready() came first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            return True
        time.sleep(0.002)
    return False


@pytest.fixture(scope="module")
def previous(tiny_checkpoint, tmp_path_factory) -> tuple[Path, bytes]:
    """(checkpoint, bytes of a complete earlier conversion of it, at f16) - what OUT holds before each run."""
    from ggufkit.conversion import convert

    src = tiny_checkpoint("llama")
    out = convert(src, tmp_path_factory.mktemp("previous") / "prev.gguf", scheme="f16", quiet=True)
    return src, out.read_bytes()


def _moments() -> list[tuple[str, str, float]]:
    """(signal, stage, parameter) triples, seeded: stage "startup" waits `parameter` seconds after launch (less if the temp file appears first),
    "temp-created" kills as soon as the temp file exists, "writing" once it holds `parameter` bytes."""
    rng = random.Random(SEED)
    out = []
    for sig in ("SIGKILL", "SIGINT", "SIGTERM"):
        out += [(sig, "startup", rng.uniform(0.2, 2.0)), (sig, "temp-created", 0.0),
                (sig, "writing", float(rng.randrange(4 << 20, 14 << 20)))]
    return out


@pytest.mark.parametrize("sig,stage,param", _moments(), ids=[f"{s}-{st}" for s, st, _ in _moments()])
def test_interrupted_conversion_keeps_the_previous_file(previous, tmp_path, sig, stage, param):
    src, before = previous
    out = tmp_path / "model.gguf"
    out.write_bytes(before)
    proc = _spawn(src, out, stop_at=int(param) if stage == "writing" else 1)
    try:
        if stage == "startup":
            # `param` seconds or the temp file, whichever comes first (the tiny conversion can be quick)
            _wait_for(proc, lambda: bool(_temp_files(out)), timeout=param)
            hit = proc.poll() is None
        elif stage == "temp-created":
            hit = _wait_for(proc, lambda: bool(_temp_files(out)))
        else:
            hit = _wait_for(proc, lambda: any(p.stat().st_size >= param for p in _temp_files(out)))
        assert hit, f"the conversion ended before the {stage} moment: {proc.communicate()}"
        writing = bool(_temp_files(out))
        proc.send_signal(getattr(signal, sig))
        if sig != "SIGKILL":
            proc.send_signal(signal.SIGCONT)  # if it had stopped itself: the pending signal is handled now
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if stage != "startup":
        assert writing, "the kill was meant to land while the temp file existed"
    after = out.read_bytes()
    # compare digests: pytest's diff of two multi-MB byte strings takes hours
    assert hashlib.sha256(after).hexdigest() == hashlib.sha256(before).hexdigest(), \
        f"OUT changed: a partial or new file replaced the previous one ({len(after)} vs {len(before)} bytes)"
    leftovers = _temp_files(out)
    others = sorted(p.name for p in tmp_path.iterdir() if p != out and p not in leftovers)
    assert others == [], others
    if sig in ("SIGINT", "SIGTERM"):
        assert leftovers == [], f"{sig} left a temp file behind"
        if writing:  # the CLI was running: the documented exit code (130 / 143) and one line
            code, line = (130, "error: interrupted") if sig == "SIGINT" else (143, "error: terminated")
            assert proc.returncode == code and err.strip().splitlines() == [line], (proc.returncode, err)
    else:
        assert proc.returncode == -signal.SIGKILL
        assert all(p.name.startswith(".") and p.name.endswith(".tmp") for p in leftovers)


def test_next_run_after_a_kill_completes(previous, tmp_path):
    """A temp file left by a SIGKILL does not stop the next conversion; the new OUT is complete and valid."""
    from ggufkit.sources.gguf import validate_gguf

    src, before = previous
    out = tmp_path / "model.gguf"
    out.write_bytes(before)
    stale = tmp_path / f".{out.name}.abandoned.tmp"
    stale.write_bytes(before[: len(before) // 3])  # what a killed run leaves
    proc = _spawn(src, out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    g = validate_gguf(out)
    assert g.metadata["general.file_type"] == 7  # MOSTLY_Q8_0: the new file, complete
    assert out.read_bytes() != before and stale.exists()


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MB tmpfs (we run as root in CI; without root this test cannot make a full disk)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.fail("test_full_disk needs root to mount a small tmpfs")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_keeps_the_previous_file(previous, small_tmpfs):
    """The output (16 MB at q8_0) cannot fit: ENOSPC mid-write -> one line, exit 3, the earlier OUT intact, no
    temp file."""
    sys.path.insert(0, str(ROOT / "tests"))
    from corpus.gguf_builder import small_model

    src, _ = previous
    out = small_tmpfs / "model.gguf"
    before = small_model().to_bytes()  # a small but complete GGUF that fits on the tmpfs
    out.write_bytes(before)
    proc = _spawn(src, out)
    _, err = proc.communicate(timeout=300)
    lines = err.strip().splitlines()
    assert proc.returncode == 3, err
    assert len(lines) == 1 and lines[0].startswith(f"error: {out}") and "disk full" in lines[0], err
    assert out.read_bytes() == before
    assert sorted(p.name for p in small_tmpfs.iterdir()) == [out.name]
