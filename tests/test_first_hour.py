"""What a new user trips on in the first hour (issue 20): errors that point the right way, exit codes that agree,
overwrites, llama-quantize's scheme aliases, quiet modes that are quiet, and the converted-model cache."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ggufkit.cli import main

ROOT = Path(__file__).resolve().parent.parent


def ggufkit(*args, env=None, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ggufkit.cli", *map(str, args)], check=False, cwd=cwd,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "words.txt"
    path.write_text("It was the best of times, it was the worst of times. " * 200)
    return path


# ---- errors that point the right way

def test_convert_of_a_missing_directory_says_so(tmp_path):
    for arg in ("./nonexistent", "../nonexistent", "nonexistent", ".cache/nonexistent"):
        result = ggufkit("convert", arg, "--dry-run", cwd=tmp_path)
        assert result.returncode == 1, (arg, result.stderr)
        line = one_line(result.stderr)
        assert line.endswith(": no such directory"), (arg, line)
        assert "hub" not in line, line


def test_run_with_an_uncached_hub_id_is_one_plain_line(tmp_path):
    result = ggufkit("run", "nobody-here/no-such-model-0", "-p", "hi",
                     env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"),
                          "GGUFKIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 1, result.stderr
    line = one_line(result.stderr)
    assert line == ("error: nobody-here/no-such-model-0: no such directory, and not in the Hugging Face cache "
                    "(offline or unreachable hub)"), line
    assert "LocalEntryNotFoundError" not in result.stderr


def test_chunks_0_is_a_usage_error_everywhere(tiny_checkpoint, text_file, tmp_path, capsys):
    """--chunks 0 is exit 2 (usage error, as the README says) for eval, compare and imatrix alike."""
    from ggufkit.conversion import convert

    src = tiny_checkpoint("llama")
    model = convert(src, tmp_path / "m.gguf", scheme="q8_0", quiet=True)
    for argv in (["eval", str(model), "--text", str(text_file), "--chunks", "0"],
                 ["compare", str(src), "--text", str(text_file), "--chunks", "0"],
                 ["imatrix", str(src), "--text", str(text_file), "--chunks", "0"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        assert "--chunks" in capsys.readouterr().err


def test_unknown_scheme_from_the_python_api_is_a_ggufkit_error(tiny_checkpoint, tmp_path):
    from ggufkit.conversion import convert
    from ggufkit.errors import GgufkitError, UsageError

    with pytest.raises(GgufkitError, match=r"unknown scheme 'q9_z'") as info:
        convert(tiny_checkpoint("llama"), tmp_path / "x.gguf", scheme="q9_z")
    assert isinstance(info.value, UsageError) and isinstance(info.value, ValueError)
    assert info.value.exit_code == 2
    assert not list(tmp_path.iterdir())


# ---- overwrites

def test_a_non_gguf_output_is_replaced_only_with_force(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("llama")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    refused = ggufkit("convert", src, "-o", notes, "--scheme", "q8_0", "--quiet")
    assert refused.returncode == 3, refused.stderr
    assert one_line(refused.stderr) == f"error: {notes}: exists and is not a GGUF file (--force replaces it)"
    assert notes.read_text() == "my notes\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # no temp file either

    forced = ggufkit("convert", src, "-o", notes, "--scheme", "q8_0", "--quiet", "--force")
    assert forced.returncode == 0, forced.stderr
    assert notes.read_bytes()[:4] == b"GGUF"
    again = ggufkit("convert", src, "-o", notes, "--scheme", "f16", "--quiet")  # a GGUF: replaced as usual
    assert again.returncode == 0, again.stderr

    from ggufkit.conversion import convert
    from ggufkit.errors import OutputError

    other = tmp_path / "other.txt"
    other.write_text("x")
    with pytest.raises(OutputError, match="not a GGUF file"):
        convert(src, other, scheme="q8_0", quiet=True)
    assert convert(src, other, scheme="q8_0", quiet=True, force=True) == other


# ---- llama-quantize's aliases

def test_scheme_aliases_are_llama_quantize_s(tiny_checkpoint):
    """tools/quantize lists Q3_K, Q4_K and Q5_K as aliases for the _M schemes."""
    from ggufkit.plan.schemes import get_scheme

    assert {a: get_scheme(a).name for a in ("q3_k", "Q4_K", "q5_k")} == {
        "q3_k": "Q3_K_M", "Q4_K": "Q4_K_M", "q5_k": "Q5_K_M"}
    result = ggufkit("convert", tiny_checkpoint("llama"), "--scheme", "q4_k", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["scheme"] == "Q4_K_M"


# ---- quiet is quiet

def test_imatrix_quiet_prints_nothing(tiny_checkpoint, text_file, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "im.gguf"
    result = ggufkit("imatrix", tiny_checkpoint("llama"), "--text", text_file, "--ctx", "64", "--chunks", "1",
                     "-o", out, "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    assert out.read_bytes()[:4] == b"GGUF"


# ---- the converted-model cache

def test_cache_ls_and_rm(tiny_checkpoint, tmp_path):
    from ggufkit import runtime

    env = {"GGUFKIT_CACHE": str(tmp_path / "cache")}
    src = tiny_checkpoint("llama")
    os.environ["GGUFKIT_CACHE"] = env["GGUFKIT_CACHE"]
    try:
        paths = {s: runtime.resolve_model(str(src), s, quiet=True) for s in ("q8_0", "f16")}
    finally:
        del os.environ["GGUFKIT_CACHE"]
    listed = ggufkit("cache", "ls", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)["models"]
    assert sorted((r["model"], r["scheme"], r["bytes"], r["path"]) for r in rows) == sorted(
        (src.name, s.upper(), p.stat().st_size, str(p)) for s, p in paths.items())
    table = ggufkit("cache", "ls", env=env).stdout
    assert src.name in table and "Q8_0" in table and "F16" in table

    missing = ggufkit("cache", "rm", "no-such-model", env=env)
    assert missing.returncode == 1 and "not in the cache" in one_line(missing.stderr)
    assert ggufkit("cache", "rm", env=env).returncode == 2  # neither names nor --all

    removed = ggufkit("cache", "rm", src.name, "--scheme", "q8_0", env=env)
    assert removed.returncode == 0, removed.stderr
    assert not paths["q8_0"].exists() and paths["f16"].exists()
    stale = paths["f16"].parent / f".{paths['f16'].name}.123.abcd.tmp"  # what a killed conversion leaves
    stale.write_bytes(b"GGUF")
    assert ggufkit("cache", "rm", "--all", env=env).returncode == 0
    assert list(paths["f16"].parent.iterdir()) == []
    assert json.loads(ggufkit("cache", "ls", "--json", env=env).stdout)["models"] == []
