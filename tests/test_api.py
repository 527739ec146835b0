"""The Python face (ggufkit.load / convert / imatrix / fit): the README's example as written, and the same results
as the CLI commands of the same names (one code path)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of the [run] extra")

import ggufkit

ROOT = Path(__file__).resolve().parent.parent
REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ggufkit.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, check=False, env={**os.environ, **(env or {})})


@pytest.fixture()
def hub_cache(demo_dir, tmp_path, monkeypatch):
    """An offline Hugging Face cache holding the demo checkpoint under its hub id, as a download leaves it."""
    repo = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in demo_dir.iterdir():
        if f.is_file():
            (snap / f.name).symlink_to(f)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("GGUFKIT_CACHE", str(tmp_path / "ggufkit-cache"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path


def test_load_a_hub_id_converts_once_and_answers(hub_cache):
    llm = ggufkit.load(REPO, scheme="q8_0", n_ctx=512)
    assert isinstance(llm, llama_cpp.Llama)
    reply = llm.create_chat_completion([{"role": "user", "content": "What is the capital of France?"}],
                                       temperature=0.0, max_tokens=24)
    assert "Paris" in reply["choices"][0]["message"]["content"]
    cached = sorted((hub_cache / "ggufkit-cache" / "models").glob("*.gguf"))
    assert len(cached) == 1 and "q8_0" in cached[0].name
    stamp = cached[0].stat().st_mtime_ns
    llm.close()
    again = ggufkit.load(REPO, scheme="q8_0", n_ctx=512)  # from the cache: not converted again
    assert Path(again.model_path) == cached[0] and cached[0].stat().st_mtime_ns == stamp
    again.close()


def test_convert_equals_the_cli(demo_dir, tmp_path):
    lib_out = ggufkit.convert(demo_dir, tmp_path / "lib.gguf", scheme="q4_k_m")
    proc = cli("convert", demo_dir, "--scheme", "q4_k_m", "-o", tmp_path / "cli.gguf", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert lib_out == tmp_path / "lib.gguf"
    assert lib_out.read_bytes() == (tmp_path / "cli.gguf").read_bytes()


def test_imatrix_equals_the_cli_and_feeds_convert(demo_dir, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    im = ggufkit.imatrix(demo_dir, text, out=tmp_path / "lib.imatrix.gguf", chunks=2, ctx=64)
    proc = cli("imatrix", demo_dir, "--text", text, "--chunks", "2", "--ctx", "64", "-o",
               tmp_path / "cli.imatrix.gguf", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert im.chunk_count == 2 and len(im.entries) == 30 * 7
    assert (tmp_path / "lib.imatrix.gguf").read_bytes() == (tmp_path / "cli.imatrix.gguf").read_bytes()
    # the library convert takes the Imatrix object and gives the tensors the CLI gives from the file; the CLI's
    # file also records the imatrix file's name (quantize.imatrix.file, as llama-quantize does), the rest is equal
    from convert_fixtures import tensor_table

    from ggufkit.sources.gguf import validate_gguf

    ggufkit.convert(demo_dir, tmp_path / "lib.gguf", scheme="q4_k_m", imatrix=im)
    proc = cli("convert", demo_dir, "--scheme", "q4_k_m", "--imatrix", tmp_path / "cli.imatrix.gguf", "-o",
               tmp_path / "cli.gguf", "--quiet")
    assert proc.returncode == 0, proc.stderr
    lib, ref = tensor_table(tmp_path / "lib.gguf"), tensor_table(tmp_path / "cli.gguf")
    assert [(n, t, d.tobytes()) for n, t, d in lib] == [(n, t, d.tobytes()) for n, t, d in ref]
    lib_md, cli_md = validate_gguf(tmp_path / "lib.gguf").metadata, validate_gguf(tmp_path / "cli.gguf").metadata
    assert cli_md.pop("quantize.imatrix.file") == str(tmp_path / "cli.imatrix.gguf")
    assert {k: str(v) for k, v in lib_md.items()} == {k: str(v) for k, v in cli_md.items()}


def test_fit_equals_the_cli(demo_dir):
    report = ggufkit.fit(demo_dir, "rpi5-4gb", ctx=2048)
    proc = cli("fit", demo_dir, "--device", "rpi5-4gb", "--ctx", "2048", "--json")
    assert proc.returncode == 0, proc.stderr
    assert report == json.loads(proc.stdout)
    assert report["pick"] is not None


def test_library_errors_are_ggufkit_errors(tmp_path):
    from ggufkit.errors import GgufkitError

    with pytest.raises(GgufkitError, match="no such"):
        ggufkit.load(tmp_path / "missing.gguf")
    assert sorted(ggufkit.__all__) == sorted(["load", "convert", "imatrix", "fit", "quantize", "__version__"])
    for name in ("load", "convert", "imatrix", "fit", "quantize"):
        assert getattr(ggufkit, name).__doc__
