"""Every corpus case (tests/corpus/) through every command that reads its kind: convert for checkpoint
directories (safetensors, config.json, tokenizer), inspect / run / eval for GGUF files.

Each must give exactly one line `error: <the file>: <the problem>` on stderr (nothing else, no traceback, nothing
from llama.cpp either: stderr is captured at the file-descriptor level), exit 1 (README "Exit codes": bad input),
leave nothing at OUT (nor a temp file beside it), and allocate nothing sized by an absurd length.

All cases run in one child process (the CLI called in-process, so the imports are paid once) under an address
space limit of 4 GB, so a huge allocation fails outright; the child also measures each case's peak RSS above its
starting RSS (Linux: VmHWM reset through /proc/self/clear_refs).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from corpus.framework import load_cases, write_corpus

CASES = load_cases()
READERS = {"gguf": ("inspect", "run", "eval"), "safetensors": ("convert",), "config": ("convert",),
           "tokenizer": ("convert",)}
RUNS = [(c, command) for c in CASES for command in READERS[c.kind]]
ADDRESS_SPACE = 4 << 30  # torch + llama.cpp + transformers map ~2 GB of address space before any work
PEAK_RSS_LIMIT = 64 << 20  # what one case may add to the process's resident memory


def test_corpus_is_large_enough():
    kinds = {k: sum(c.kind == k for c in CASES) for k in READERS}
    assert sum(kinds.values()) >= 40 and kinds["safetensors"] >= 15, kinds
    assert all(kinds.values()), kinds


# ---- the child: runs every (case, command) and reports one JSON object per run

def _command_args(command: str, path: Path, out: Path, text: Path) -> list[str]:
    return {"convert": ["convert", str(path), "-o", str(out), "--scheme", "q8_0", "--quiet"],
            "inspect": ["inspect", str(path)],
            "run": ["run", str(path), "-p", "Hello", "-n", "1"],
            "eval": ["eval", str(path), "--text", str(text), "--ctx", "64", "--chunks", "1", "--quiet"]}[command]


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def _run_captured(args: list[str], capture_dir: Path) -> tuple[int, str, str]:
    """ggufkit's main(args) with fds 1 and 2 sent to files -> (exit code, stdout, stderr)."""
    from ggufkit.cli import main

    with open(capture_dir / "out", "w+b") as out_file, open(capture_dir / "err", "w+b") as err_file:
        saved = os.dup(1), os.dup(2)
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(out_file.fileno(), 1), os.dup2(err_file.fileno(), 2)
        try:
            try:
                code = main(args)
            except SystemExit as e:  # a command may exit directly; the real entry point would too
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # noqa: BLE001 -- an escaped exception is what this test looks for
                import traceback

                traceback.print_exc()
                code = "exception"
            sys.stdout.flush(), sys.stderr.flush()
        finally:
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])
        out, err = (f.seek(0) or f.read().decode("utf-8", "replace") for f in (out_file, err_file))
    return code, out, err


def child(corpus_dir: Path, work: Path) -> None:
    import llama_cpp  # noqa: F401
    import transformers  # noqa: F401

    import ggufkit.cli  # noqa: F401 -- import everything heavy before measuring

    text = work / "text.txt"
    text.write_text("It was the best of times, it was the worst of times. " * 40)
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    wanted = json.loads(sys.stdin.read())  # [[case name, kind, command], ...]
    by_key = {(m["kind"], m["name"]): m for m in manifest}
    # Warm-up: the first run of each (kind, command) and a real tokenizer load import the lazy modules (torch
    # through transformers, tokenizers, ...); measure the runs after that.
    from corpus.checkpoint_dir import tiny_dir
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny_dir())
    warm = {(kind, command): (name, kind, command) for name, kind, command in reversed(wanted)}
    for i, (name, kind, command) in enumerate(warm.values()):
        (work / f"warm-{i}").mkdir()
        _run_captured(_command_args(command, corpus_dir / by_key[(kind, name)]["path"],
                                    work / f"warm-{i}" / "out.gguf", text), work)
    for name, kind, command in wanted:
        path = corpus_dir / by_key[(kind, name)]["path"]
        out_dir = work / f"out-{kind}-{name}-{command}"
        out_dir.mkdir()
        os.chdir(out_dir)  # a default output name would land here too
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
        before = _rss("VmRSS")
        code, out, err = _run_captured(_command_args(command, path, out_dir / "out.gguf", text), work)
        peak = _rss("VmHWM") - before
        left = sorted(p.name for p in out_dir.iterdir())
        print(json.dumps({"key": [name, kind, command], "code": code, "stdout": out, "stderr": err,
                          "peak_rss": peak, "left": left}), file=sys.__stdout__, flush=True)


# ---- the tests

@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """{(name, kind, command): result} from one child process running every case."""
    corpus_dir = tmp_path_factory.mktemp("corpus")
    write_corpus(corpus_dir)
    work = tmp_path_factory.mktemp("bad-inputs")

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    wanted = [[c.name, c.kind, command] for c, command in RUNS]
    proc = subprocess.run([sys.executable, __file__, str(corpus_dir), str(work)], input=json.dumps(wanted),
                          capture_output=True, text=True, cwd=ROOT, preexec_fn=limit, timeout=600, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    found = {}
    for line in proc.stdout.splitlines():
        r = json.loads(line)
        found[tuple(r["key"])] = r
    assert proc.returncode == 0 and len(found) == len(wanted), proc.stderr[-3000:]
    return found, corpus_dir


@pytest.mark.parametrize("case,command", RUNS, ids=[f"{c.kind}-{c.name}-{cmd}" for c, cmd in RUNS])
def test_bad_input_gives_one_line_error(case, command, results):
    found, corpus_dir = results
    r = found[(case.name, case.kind, command)]
    path = corpus_dir / case.filename
    lines = r["stderr"].splitlines()
    assert "Traceback" not in r["stderr"], r["stderr"]
    assert len(lines) == 1 and lines[0].startswith("error: "), r["stderr"]
    assert str(path) in lines[0], f"the error does not name the input: {lines[0]}"
    expected = [case.expect]
    if command == "run" and path.is_file() and path.read_bytes()[:4] != b"GGUF":
        # run takes a GGUF file or an HF checkpoint: a file without the magic is "not a GGUF file" there
        expected.append("not a GGUF file (no GGUF magic); pass a GGUF file or an HF checkpoint directory")
    assert any(e in lines[0] for e in expected), f"expected {expected} in: {lines[0]}"
    assert r["code"] == 1, (r["code"], lines[0])
    assert r["stdout"] == "", r["stdout"]
    assert r["left"] == [], f"files left at OUT's directory: {r['left']}"
    assert r["peak_rss"] < PEAK_RSS_LIMIT, f"peak RSS grew by {r['peak_rss'] / 2**20:.0f} MiB"


if __name__ == "__main__":
    child(Path(sys.argv[1]), Path(sys.argv[2]))
