"""IQ3_XXS, IQ3_S and IQ2_S, whose scale trials run in SIMD lanes (native/src/quants_iq_trials.h: lane t = trial
t; the neighbour search once per run of equal rounded points; the list scanned as two halves), against llama.cpp's
ggml_quantize_chunk through every path the running CPU has: AVX-512 (IQ3_XXS and IQ3_S, where the CPU has
F/BW/DQ/VL), AVX2 (GGUFKIT_FORCE_AVX2=1; IQ2_S's widest) and the plain reference (GGUFKIT_FORCE_SCALAR=1), with and
without importance weights.
The rows aim at what the lanes could get wrong: ties between neighbour distances (zero importance weights, integer
values), groups on and off the grid at neighbouring trials, all-zero and tiny sub-blocks next to normal ones, real
weights. (test_kernels.py covers every type on the default and plain paths; NEON under qemu: test_arm_kernels.py;
AVX2-only CPUs under qemu: test_kernels_cpu_models.py.)"""
from __future__ import annotations

import numpy as np
import pytest
from ggml_ref import describe_mismatch, ggml_quantize
from gguf import GGMLQuantizationType as T
from test_kernels_k import HAS_AVX512, PATH_ENV

from ggufkit import quant

TYPES = [T.IQ3_XXS, T.IQ3_S, T.IQ2_S]
TYPE_BYTES = {T.IQ3_XXS: 98, T.IQ3_S: 110, T.IQ2_S: 82}
COLS = 12 * 256


def _rows() -> dict[str, np.ndarray]:
    """Named (rows, COLS) f32 inputs."""
    rng = np.random.default_rng(29)
    mixed = rng.standard_normal((2, COLS))
    mixed[0, :256] = 0                      # an all-zero super-block
    mixed[0, 256:288] = 0                   # an all-zero sub-block
    mixed[1, 512:768] *= 1e-30              # a tiny super-block
    mixed[1, 1000] = 80.0                   # an outlier
    return {
        "normal": rng.standard_normal((4, COLS)),
        "student_t": rng.standard_t(2, (3, COLS)),
        "uniform_positive": rng.uniform(0, 1, (2, COLS)),
        "integers": np.round(rng.standard_normal((2, COLS)) * 3),   # equal magnitudes: ties in the searches
        "two_values": np.where(rng.random((2, COLS)) < 0.5, -1.0, 0.25),
        "mixed": mixed,
    }


def _imatrix(kind: str) -> np.ndarray | None:
    rng = np.random.default_rng(31)
    if kind == "none":
        return None
    im = rng.gamma(0.5, 2.0, COLS) + 1e-3
    if kind == "with_zeros":                # zero weights: equal (zero) distance terms, first-of-equals decides
        im[rng.random(COLS) < 0.4] = 0
        im[:64] = 0
    return im.astype(np.float32)


@pytest.fixture(scope="module")
def rows() -> dict[str, np.ndarray]:
    return {k: v.astype(np.float32) for k, v in _rows().items()}


@pytest.mark.parametrize("path", ["avx512", "simd", "scalar"])
@pytest.mark.parametrize("im_kind", ["none", "positive", "with_zeros"])
@pytest.mark.parametrize("qtype", TYPES, ids=[t.name for t in TYPES])
def test_every_path_equals_llama_cpp(qtype, im_kind, path, rows, monkeypatch):
    if path == "avx512" and not HAS_AVX512:
        pytest.skip("this CPU has no AVX-512 F/BW/DQ/VL")
    for name, value in PATH_ENV[path].items():
        monkeypatch.setenv(name, value)
    expected = {"avx512": "avx512", "simd": "avx2", "scalar": "plain"}[path]
    if quant.simd_path(qtype) not in (expected, "neon"):
        pytest.skip(f"{qtype.name} runs {quant.simd_path(qtype)} here, not {expected}")
    im = _imatrix(im_kind)
    for name, x in rows.items():
        ref = ggml_quantize(x, qtype, im)
        ours = quant.quantize(x, qtype, im, threads=1)
        assert np.array_equal(ours, ref), (f"{qtype.name} {name} imatrix={im_kind} ({path}): "
                                           + describe_mismatch(ours, ref, TYPE_BYTES[qtype]))


def test_real_weights_on_every_path(demo_dir, monkeypatch):
    """A slice of two real tensors of the demo model, with and without a random imatrix, on every path."""
    from safetensors import safe_open

    with safe_open(str(demo_dir / "model.safetensors"), "pt") as f:
        x = np.concatenate([f.get_tensor(n).float().numpy().reshape(-1)[:4 * COLS].reshape(4, COLS)
                            for n in ("model.layers.3.self_attn.k_proj.weight", "model.layers.9.mlp.up_proj.weight")])
    im = np.random.default_rng(3).uniform(0.05, 3, COLS).astype(np.float32)
    paths = ["avx512", "simd", "scalar"] if HAS_AVX512 else ["simd", "scalar"]
    for qtype in TYPES:
        for weights in (None, im):
            ref = ggml_quantize(x, qtype, weights)
            for path in paths:
                for name, value in PATH_ENV[path].items():
                    monkeypatch.setenv(name, value)
                ours = quant.quantize(x, qtype, weights, threads=1)
                assert np.array_equal(ours, ref), (f"{qtype.name} real rows imatrix={weights is not None} ({path}): "
                                                   + describe_mismatch(ours, ref, TYPE_BYTES[qtype]))
