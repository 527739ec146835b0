"""The rounding search (ggufkit.quant.rounding) against llama.cpp's own quantizer: on random blocks of many
shapes, with and without an importance matrix, no super-block's importance-weighted error ever grows over
ggml_quantize_chunk's choice, and it falls on average; the bytes it writes decode (gguf-py's dequantizer) to
what it scored; its layout code reads and rewrites llama.cpp's bytes unchanged."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from ggml_ref import ggml_quantize

from ggufkit import quant
from ggufkit.quant import rounding

QT = gguf.GGMLQuantizationType


def random_rows(rng, kind: str, rows: int = 24, cols: int = 1024) -> np.ndarray:
    if kind == "normal":
        x = rng.standard_normal((rows, cols))
    elif kind == "heavy":
        x = rng.standard_t(2, (rows, cols))
    elif kind == "outliers":
        x = rng.standard_normal((rows, cols)) * 0.02
        x[rng.random((rows, cols)) < 0.01] *= 200
    elif kind == "positive":
        x = np.abs(rng.standard_normal((rows, cols))) + 0.5
    elif kind == "sparse":
        x = rng.standard_normal((rows, cols)) * (rng.random((rows, cols)) < 0.1)
    else:  # "grid": values already on a 4-bit grid per 32, like the demo model's weights
        scale = rng.random((rows, cols // 32, 1)) * 0.1
        x = (rng.integers(0, 16, (rows, cols // 32, 32)) * scale - 8 * scale).reshape(rows, cols)
    return x.astype(np.float32)


def block_errors(x: np.ndarray, data: np.ndarray, qtype: QT, w: np.ndarray) -> np.ndarray:
    """Per 256-value super-block sum w (x - x̂)^2, x̂ from gguf-py's dequantizer: (n_blocks,) f64."""
    y = gguf.quants.dequantize(data, qtype).reshape(x.shape).astype(np.float64)
    e = np.broadcast_to(w, x.shape).astype(np.float64) * (x.astype(np.float64) - y) ** 2
    return e.reshape(-1, 256).sum(axis=1)


@pytest.mark.parametrize("qtype", list(rounding.SUPPORTED))
@pytest.mark.parametrize("kind", ["normal", "heavy", "outliers", "positive", "sparse", "grid"])
@pytest.mark.parametrize("weighted", [True, False])
def test_never_worse_than_llama_cpp(qtype, kind, weighted):
    rng = np.random.default_rng(hash((int(qtype), kind, weighted)) % 2**32)
    x = random_rows(rng, kind)
    w = (rng.random(x.shape[1]) ** 4 * 10 + 1e-3).astype(np.float32) if weighted else None
    ref = ggml_quantize(x, int(qtype), w)
    assert np.array_equal(quant.quantize(x, qtype, imatrix=w), ref)  # ggufkit's start is llama.cpp's bytes
    ours = rounding.refine(x, qtype, w, ref)
    weights = np.ones(x.shape[1]) if w is None else w
    before, after = block_errors(x, ref, qtype, weights), block_errors(x, ours, qtype, weights)
    assert (after <= before).all(), f"{(after > before).sum()} blocks got worse"
    assert after.sum() < 0.995 * before.sum(), after.sum() / before.sum()


@pytest.mark.parametrize("qtype", list(rounding.SUPPORTED))
def test_layout_round_trip_and_decoder(qtype):
    rng = np.random.default_rng(1)
    x = random_rows(rng, "heavy", 8, 512)
    data = ggml_quantize(x, int(qtype), None)
    block = data.reshape(-1, rounding.FORMS[qtype].block_bytes)
    assert np.array_equal(rounding.pack(*rounding.unpack(block, qtype), qtype), block)
    assert np.array_equal(rounding.decode(*rounding.unpack(block, qtype)).reshape(x.shape),
                          gguf.quants.dequantize(data, qtype).reshape(x.shape))


def test_other_types_pass_through():
    x = np.ones((2, 256), dtype=np.float32)  # Q8_0: no search
    data = quant.quantize(x, "Q8_0")
    assert rounding.refine(x, "Q8_0", None, data) is data


def test_convert_optimize_loads_and_is_never_worse(tiny_checkpoint, tmp_path):
    """`convert --optimize`: llama.cpp loads and runs the file, it records the method, and every Q4_K / Q5_K
    tensor's error against the F32 weights (gguf-py's dequantizer) is at most that of the default file."""
    from click.testing import CliRunner
    from convert_fixtures import assert_llama_cpp_runs, converted, tensor_table

    from ggufkit.cli import cli

    src = tiny_checkpoint("llama-untied")
    out = tmp_path / "opt.gguf"
    run = CliRunner().invoke(cli, ["convert", str(src), "--scheme", "q4_k_m", "--optimize", "-o", str(out), "-q"])
    assert run.exit_code == 0, run.output
    default = converted(src, "q4_k_m")
    f32 = {n: np.asarray(d).view(np.float32) for n, _, d in tensor_table(converted(src, "f32"))}
    ours, theirs = tensor_table(out), {n: (t, d) for n, t, d in tensor_table(default)}
    changed = 0
    for name, t, data in ours:
        assert t == theirs[name][0]  # same types: only the encoding differs
        if QT(t) not in rounding.SUPPORTED:
            assert np.array_equal(data, theirs[name][1]), name
            continue
        x = f32[name].reshape(-1, 256)
        err = [((x - gguf.quants.dequantize(np.asarray(d), QT(t)).reshape(x.shape)) ** 2).sum()
               for d in (data, theirs[name][1])]
        assert err[0] <= err[1], name
        changed += err[0] < err[1]
    assert changed >= 4
    meta = gguf.GGUFReader(out).fields["ggufkit.optimize.rounding"]
    assert bytes(meta.parts[-1]).decode() == rounding.METHOD
    assert_llama_cpp_runs(out)
