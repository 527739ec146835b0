"""One truth per number: a file's size reads the same in convert, inspect, fit and bench (MiB of 2**20 bytes,
one decimal, equal to os.stat); tensor data is labelled as such where it is shown; fit and deploy judge a
board by the same budget; convert --dry-run and inspect write a tensor's shape the same way."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def ggufkit(*args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "ggufkit.cli", *map(str, args)], check=False, cwd=ROOT,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (args, result.stderr)
    return result


@pytest.fixture(scope="module")
def converted(tiny_checkpoint, tmp_path_factory):
    """(checkpoint, GGUF path, convert's summary line)."""
    src = tiny_checkpoint("llama")
    out = tmp_path_factory.mktemp("truth") / "tiny-Q8_0.gguf"
    line = ggufkit("convert", src, "--scheme", "q8_0", "-o", out).stdout.strip()
    return src, out, line


def test_file_size_is_said_the_same_way_everywhere(converted):
    _, out, convert_line = converted
    size = f"{out.stat().st_size / 2**20:.1f} MiB"
    tensor_data = out.stat().st_size - _metadata_bytes(out)
    assert f", {size} (tensor data {tensor_data / 2**20:.1f} MiB)," in convert_line, convert_line

    inspect_head = ggufkit("inspect", out).stdout.splitlines()[0]
    assert f"({size}, GGUF v3" in inspect_head, inspect_head
    assert f"tensor data {tensor_data / 2**20:.1f} MiB" in ggufkit("inspect", out).stdout

    fit = json.loads(ggufkit("fit", out, "--device", "rpi5-8gb", "--json").stdout)
    assert f"{fit['file']['file_mib']:.1f} MiB" == size
    assert fit["file"]["tensor_mib"] == round(tensor_data / 2**20, 1)
    assert all("file_mib" not in r for r in fit["schemes"])  # predictions are tensor data, and say so

    pytest.importorskip("llama_cpp")
    table = ggufkit("bench", out, "--pp", "8", "--tg", "4", "--reps", "1").stdout.splitlines()
    assert table[0].split()[:3] == ["model", "size", "MiB"]
    assert table[1].split()[1] + " MiB" == size


def _metadata_bytes(path: Path) -> int:
    """Bytes before the tensor data: from gguf-py's reader (the reference), not from ggufkit."""
    import gguf

    reader = gguf.GGUFReader(path)
    return min(int(t.data_offset) for t in reader.tensors)


def test_fit_and_deploy_give_one_budget(converted, tmp_path):
    _, out, _ = converted
    for device in ("rpi5-8gb", "rpi4-4gb", "orangepi5-8gb"):
        fit = json.loads(ggufkit("fit", out, "--device", device, "--json").stdout)
        said = ggufkit("deploy", out, "--device", device, "-o", tmp_path / device, "--dry-run").stdout
        budget = re.search(r"of (\d+) MiB budget", said)
        assert budget, said
        assert int(budget.group(1)) == round(fit["device"]["budget_mib"]), (device, said, fit["device"])


def test_fit_says_whose_quality_figures_it_shows(converted):
    _, out, _ = converted
    text = ggufkit("fit", out, "--device", "rpi5-8gb").stdout
    header = next(line for line in text.splitlines() if line.startswith("scheme"))
    assert "tensors MiB" in header and "quality (Llama-3-8B ΔPPL)" in header, header
    assert "not this model" in text


def test_dry_run_and_inspect_write_shapes_alike(converted):
    src, out, _ = converted
    plan = ggufkit("convert", src, "--scheme", "q8_0", "--dry-run").stdout.splitlines()
    listing = ggufkit("inspect", out, "--tensors").stdout.splitlines()

    def shapes(lines):
        found = {}
        for line in lines:
            m = re.match(r"\s*(\S+\.weight)\s+(\d+(?: x \d+)*)\s", line)
            if m:
                found[m.group(1)] = m.group(2)
        return found

    planned, listed = shapes(plan), shapes(listing)
    assert planned and planned == listed
    # rows x cols, as the checkpoint has them (safetensors header, read by the safetensors library)
    from safetensors import safe_open

    with safe_open(str(src / "model.safetensors"), "np") as f:
        embed = f.get_slice("model.embed_tokens.weight").get_shape()
    assert planned["token_embd.weight"] == " x ".join(map(str, embed))
