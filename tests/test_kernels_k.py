"""K-quants (Q2_K..Q6_K) against llama.cpp's ggml_quantize_chunk on real demo-model tensors and on degenerate
rows, through both the plain-C and the SIMD path; dequantization against gguf-py. (Random distributions for every
type are covered by test_kernels.py.)"""
from __future__ import annotations

import numpy as np
import pytest
from ggml_ref import describe_mismatch, ggml_quantize
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize

from ggufkit import quant

K_TYPES = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
TYPE_BYTES = {T.Q2_K: 84, T.Q3_K: 110, T.Q4_K: 144, T.Q5_K: 176, T.Q6_K: 210}
PATHS = ["simd", "scalar"]


@pytest.fixture(scope="module")
def demo_rows(demo_dir) -> dict[str, np.ndarray]:
    """A slice of three real tensors, re-rowed to 2304 columns (hidden 576 is not a multiple of 256)."""
    from safetensors import safe_open

    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.7.mlp.down_proj.weight",
             "model.embed_tokens.weight"]
    out = {}
    with safe_open(str(demo_dir / "model.safetensors"), "pt") as f:
        for name in names:
            # (rows, cols) bf16 -> (16, 2304) f32
            out[name] = f.get_tensor(name).float().numpy().reshape(-1, 2304)[:16].copy()
    return out


def degenerate_rows() -> dict[str, np.ndarray]:
    """Rows of 9 blocks: the SIMD path takes 8 blocks at a time (one per lane), the 9th goes the plain way."""
    rng = np.random.default_rng(7)
    cols = 9 * 256
    outlier = np.zeros((2, cols), np.float32)
    outlier[0, 5], outlier[1, 300] = 3.0, -1e4
    mixed = rng.standard_normal((2, cols)).astype(np.float32)
    mixed[:, :256] = 0  # one all-zero super-block next to a normal one
    # every lane of one SIMD group a different kind of block: masks must keep the lanes apart
    lanes = np.stack([np.zeros(256), np.full(256, 0.37), rng.standard_normal(256) * 1e-30,
                      rng.standard_normal(256) * 1e30, rng.standard_normal(256), rng.standard_t(1, 256),
                      rng.uniform(0, 1, 256), rng.standard_normal(256) * 1e-39, rng.standard_normal(256)])
    return {
        "mixed_lanes": lanes.reshape(1, -1).astype(np.float32),
        "student_t": rng.standard_t(2, (4, cols)).astype(np.float32),
        "uniform_positive": rng.uniform(0, 1, (2, cols)).astype(np.float32),
        "zero": np.zeros((2, cols), np.float32),
        "constant": np.full((2, cols), -2.5, np.float32),
        "outlier": outlier,
        "zero_block": mixed,
        "tiny": (rng.standard_normal((2, cols)) * 1e-30).astype(np.float32),
        "denormal": (rng.standard_normal((2, cols)) * 1e-39).astype(np.float32),
        "huge": (rng.standard_normal((2, cols)) * 1e30).astype(np.float32),
    }


def imatrices(cols: int) -> dict[str, np.ndarray | None]:
    rng = np.random.default_rng(cols)
    positive = rng.uniform(0.01, 5, cols).astype(np.float32)
    with_zeros = positive.copy()
    with_zeros[rng.random(cols) < 0.3] = 0
    with_zeros[:256] = 0  # a whole super-block without importance
    return {"none": None, "positive": positive, "with_zeros": with_zeros}


def quantize_on(path: str, monkeypatch, x, qtype, im):
    monkeypatch.setenv("GGUFKIT_FORCE_SCALAR", "1" if path == "scalar" else "0")
    return quant.quantize(x, qtype, im, threads=2)


def assert_same_as_llama_cpp(monkeypatch, path, x, qtype, label):
    for im_name, im in imatrices(x.shape[1]).items():
        ours = quantize_on(path, monkeypatch, x, qtype, im)
        with np.errstate(all="ignore"):
            ref = ggml_quantize(x, qtype, im)
        assert np.array_equal(ours, ref), (f"{qtype.name} {label} imatrix={im_name} ({path}): "
                                           + describe_mismatch(ours, ref, TYPE_BYTES[qtype]))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_real_tensors_match_llama_cpp(demo_rows, qtype, path, monkeypatch):
    for name, x in demo_rows.items():
        assert_same_as_llama_cpp(monkeypatch, path, x, qtype, name)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_degenerate_rows_match_llama_cpp(qtype, path, monkeypatch):
    for name, x in degenerate_rows().items():
        assert_same_as_llama_cpp(monkeypatch, path, x, qtype, name)


@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_dequantize_is_bit_equal_to_gguf_py(demo_rows, qtype):
    x = demo_rows["model.layers.7.mlp.down_proj.weight"]
    data = ggml_quantize(x, qtype)
    ours = quant.dequantize(data, qtype, x.shape)
    ref = gguf_dequantize(data, qtype).reshape(x.shape)
    assert np.array_equal(ours.view(np.uint32), ref.view(np.uint32))
    # and the round trip is a real approximation of the input, not just self-consistent
    rel = np.linalg.norm(ours - x) / np.linalg.norm(x)
    assert rel < {T.Q2_K: 0.5, T.Q3_K: 0.3, T.Q4_K: 0.15, T.Q5_K: 0.08, T.Q6_K: 0.04}[qtype], rel

