"""Split GGUF sets: what ggufkit writes is byte for byte what llama.cpp's llama-gguf-split makes of the single
file, llama.cpp loads it with the same logits as the single file, a split set is a valid input (quantize,
inspect, run, --keep-split as llama_model_quantize's keep_split), and a missing or mismatched part is a one-line
error that writes nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest
from convert_fixtures import OUT_DIR, converted, llama_cpp_logits, text_ids
from quantize_ref import llama_quantize, run_tool

from ggufkit.cli import main
from ggufkit.quantization import quantize


@pytest.fixture(scope="module")
def demo_bf16(demo_dir):
    return converted(demo_dir, "bf16")


@pytest.fixture(scope="module")
def single_q8(demo_bf16):
    return quantize(demo_bf16, OUT_DIR / "split-single-q8.gguf", scheme="q8_0")[0]


@pytest.fixture(scope="module")
def split_q8(demo_bf16):
    """The demo at Q8_0 as a 3-part set by size (50M of tensor data per part)."""
    paths = quantize(demo_bf16, OUT_DIR / "split-q8.gguf", scheme="q8_0", split_max_size="60M")
    assert len(paths) == 3, paths
    return paths


@pytest.mark.parametrize("option,value", [("--split-max-size", "60M"), ("--split-max-tensors", "100")])
def test_split_output_equals_gguf_split_of_the_single_file(demo_bf16, single_q8, option, value, tmp_path):
    assert main(["quantize", str(demo_bf16), "-o", str(tmp_path / "ours.gguf"), "--scheme", "q8_0", option, value,
                 "-q"]) == 0
    run_tool("llama-gguf-split", option, value, single_q8, tmp_path / "ref")
    ours = sorted(tmp_path.glob("ours-*.gguf"))
    ref = sorted(tmp_path.glob("ref-*.gguf"))
    assert len(ours) == len(ref) >= 2
    for a, b in zip(ours, ref):
        assert a.name.removeprefix("ours") == b.name.removeprefix("ref")
        assert a.read_bytes() == b.read_bytes(), a.name


def test_split_set_loads_with_the_same_logits(demo_dir, single_q8, split_q8):
    ids = text_ids(demo_dir, 32)
    np.testing.assert_array_equal(llama_cpp_logits(split_q8[0], ids), llama_cpp_logits(single_q8, ids))


def test_split_set_as_input_equals_llama_and_the_single_file(demo_bf16, split_q8, single_q8, tmp_path):
    """A split Q8_0 set requantized to Q4_K_M: llama_model_quantize reads the set too; same bytes, and the same
    bytes as requantizing the single file."""
    ref = tmp_path / "ref.gguf"
    llama_quantize(split_q8[0], ref, "q4_k_m", allow_requantize=True)
    ours = quantize(split_q8[0], tmp_path / "ours.gguf", scheme="q4_k_m", allow_requantize=True)[0]
    assert ours.read_bytes() == ref.read_bytes()
    again = quantize(single_q8, tmp_path / "single.gguf", scheme="q4_k_m", allow_requantize=True)[0]
    assert again.read_bytes() == ref.read_bytes()


def test_keep_split_equals_llama_keep_split(demo_bf16, tmp_path):
    parts = quantize(demo_bf16, tmp_path / "in-bf16.gguf", scheme="bf16", split_max_tensors=80)
    assert len(parts) == 4
    llama_quantize(parts[0], tmp_path / "ref", "q5_k_m", keep_split=True)
    ours = quantize(parts[0], tmp_path / "ours.gguf", scheme="q5_k_m", keep_split=True)
    assert [p.name for p in ours] == [f"ours-{k:05d}-of-00004.gguf" for k in (1, 2, 3, 4)]
    for k, p in enumerate(ours, 1):
        assert p.read_bytes() == (tmp_path / f"ref-{k:05d}-of-00004.gguf").read_bytes(), p.name


def test_keep_split_of_a_single_file_equals_llama_keep_split(single_q8, tmp_path):
    """llama-quantize --keep-split on one file writes OUT-00001-of-00001.gguf (without split keys): so does ggufkit."""
    llama_quantize(single_q8, tmp_path / "ref", "q4_k_m", allow_requantize=True, keep_split=True)
    ours = quantize(single_q8, tmp_path / "ours.gguf", scheme="q4_k_m", allow_requantize=True, keep_split=True)
    assert [p.name for p in ours] == ["ours-00001-of-00001.gguf"]
    assert ours[0].read_bytes() == (tmp_path / "ref-00001-of-00001.gguf").read_bytes()


def test_fit_reads_the_whole_set(split_q8, single_q8):
    """fit on the first part of a split set: the tensors and memory of the whole model (those of the single
    file), and the set's bytes on disk (every part)."""
    from ggufkit.commands.fit import fit_report

    split = fit_report(str(split_q8[0]), "rpi5-8gb", 2048, 0.9, None)["file"]
    single = fit_report(str(single_q8), "rpi5-8gb", 2048, 0.9, None)["file"]
    assert split["tensor_mib"] == single["tensor_mib"] and split["needed_mib"] == single["needed_mib"]
    assert split["file_mib"] == round(sum(p.stat().st_size for p in split_q8) / 2**20, 1)
    assert split["file_mib"] > round(split_q8[0].stat().st_size / 2**20, 1)


def test_inspect_shows_the_whole_set(split_q8, single_q8, capsys):
    assert main(["inspect", str(split_q8[0]), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert main(["inspect", str(single_q8), "--json"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert s["split_parts"] == [str(p) for p in split_q8]
    assert (s["tensor_count"], s["parameters"], s["tensor_bytes"]) == \
        (one["tensor_count"], one["parameters"], one["tensor_bytes"])


@pytest.fixture
def broken_sets(demo_bf16, split_q8, tmp_path):
    """Copies of the 3-part set with one thing wrong each: (label, first part, expected message)."""
    import shutil

    def copy(label: str) -> list:
        out = []
        for p in split_q8:
            dst = tmp_path / label / p.name
            dst.parent.mkdir(exist_ok=True)
            shutil.copy(p, dst)
            out.append(dst)
        return out

    cases = []
    missing = copy("missing")
    missing[1].unlink()
    cases.append(("missing", missing[0], f"{missing[1]}: missing part 2 of 3 of the split model"))
    swapped = copy("swapped")
    shutil.copy(swapped[2], swapped[1])  # part 3's bytes under part 2's name
    cases.append(("swapped", swapped[0], f"{swapped[1]}: split.no is 2, expected 1"))
    other = copy("other")
    parts5 = quantize(demo_bf16, tmp_path / "other" / "x.gguf", scheme="q8_0", split_max_tensors=60)
    shutil.copy(parts5[1], other[1])  # part 2 of a 5-part set
    cases.append(("other", other[0], f"{other[1]}: split.count is 5, the first part says 3"))
    return cases


def test_missing_or_mismatched_part_is_a_one_line_error(broken_sets, tmp_path, capsys):
    for label, first, message in broken_sets:
        out = tmp_path / f"out-{label}.gguf"
        for argv in (["quantize", str(first), "-o", str(out), "-q"], ["inspect", str(first)],
                     ["run", str(first), "-p", "hi", "-n", "1"]):
            code = main(argv)
            err = capsys.readouterr().err
            assert code == 1, (label, argv[0], err)
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), (label, argv[0], err)
        assert not out.exists() and not list(tmp_path.glob(f".out-{label}*"))


def test_a_later_part_as_input_names_the_first(split_q8, capsys):
    assert main(["inspect", str(split_q8[1])]) == 1
    assert capsys.readouterr().err.strip() == (f"error: {split_q8[1]}: is part 2 of 3 of a split model; give the "
                                              f"first part, {split_q8[0].name}")


def test_eval_and_run_on_a_split_set_equal_the_single_file(split_q8, single_q8, capsys):
    """`eval` (with the split set also as --ref) and greedy `run` give the single file's numbers and text."""
    from convert_fixtures import SHAKESPEARE

    results = []
    for model in (split_q8[0], single_q8):
        assert main(["eval", str(model), "--text", str(SHAKESPEARE), "--ctx", "128", "--chunks", "2",
                     "--ref", str(split_q8[0]), "--json", "--quiet", "--threads", "2"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert main(["run", str(model), "-p", "The capital of France is", "-n", "8", "--temp", "0",
                     "--threads", "2"]) == 0
        results.append((out["ppl"], out["kld"], capsys.readouterr().out))
    assert results[0] == results[1]
    assert results[0][1] == 0.0  # the set against itself
