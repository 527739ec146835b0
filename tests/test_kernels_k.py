"""K-quants (Q2_K..Q6_K) against llama.cpp's ggml_quantize_chunk on real demo-model tensors and on degenerate
rows, through every path the running CPU has: the plain C reference, the 8-lane SIMD path (AVX2; NEON is tested
under qemu by test_arm_kernels_k.py) and, where the CPU has AVX-512 F/BW/DQ/VL, the 16-lane path (skipped with
the reason elsewhere); dequantization against gguf-py. Rows hold 25 blocks: 16 go through the AVX-512 lanes, 8
through the AVX2 lanes (its tail) and 1 through the plain code, so each path's hand-over is covered too.
(Random distributions for every type are covered by test_kernels.py.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ggml_ref import describe_mismatch, ggml_quantize
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as gguf_dequantize

from ggufkit import quant

K_TYPES = [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
TYPE_BYTES = {T.Q2_K: 84, T.Q3_K: 110, T.Q4_K: 144, T.Q5_K: 176, T.Q6_K: 210}
PATHS = ["avx512", "simd", "scalar"]
BLOCKS = 25  # 16 (AVX-512 lanes) + 8 (AVX2 lanes) + 1 (plain)
COLS = BLOCKS * 256


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


AVX512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl"}
HAS_AVX512 = AVX512 <= _cpu_flags()
# The env settings that select each path (GGUFKIT_FORCE_AVX2 lowers AVX-512 to the 8-lane path; on a CPU without
# AVX-512 "simd" is the default path anyway).
PATH_ENV = {"avx512": {"GGUFKIT_FORCE_SCALAR": "0", "GGUFKIT_FORCE_AVX2": "0"},
            "simd": {"GGUFKIT_FORCE_SCALAR": "0", "GGUFKIT_FORCE_AVX2": "1"},
            "scalar": {"GGUFKIT_FORCE_SCALAR": "1", "GGUFKIT_FORCE_AVX2": "0"}}


@pytest.fixture(scope="module")
def demo_rows(demo_dir) -> dict[str, np.ndarray]:
    """A slice of three real tensors, re-rowed to 2304 columns (hidden 576 is not a multiple of 256)."""
    from safetensors import safe_open

    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.7.mlp.down_proj.weight",
             "model.embed_tokens.weight"]
    out = {}
    with safe_open(str(demo_dir / "model.safetensors"), "pt") as f:
        for name in names:
            # (rows, cols) bf16 -> (16, COLS) f32: the first 16 * COLS values of the tensor
            out[name] = f.get_tensor(name).float().numpy().reshape(-1)[:16 * COLS].reshape(16, COLS).copy()
    return out


def degenerate_rows(blocks: int = BLOCKS) -> dict[str, np.ndarray]:
    """Rows of `blocks` blocks (test_arm_kernels_k.py takes 9: NEON's 8 lanes and one plain block)."""
    rng = np.random.default_rng(7)
    cols = blocks * 256
    outlier = np.zeros((2, cols), np.float32)
    outlier[0, 5], outlier[1, 300] = 3.0, -1e4
    mixed = rng.standard_normal((2, cols)).astype(np.float32)
    mixed[:, :256] = 0  # one all-zero super-block next to a normal one
    # every lane of one SIMD group a different kind of block: masks must keep the lanes apart
    kinds = [lambda: np.zeros(256), lambda: np.full(256, 0.37), lambda: rng.standard_normal(256) * 1e-30,
             lambda: rng.standard_normal(256) * 1e30, lambda: rng.standard_normal(256),
             lambda: rng.standard_t(1, 256), lambda: rng.uniform(0, 1, 256),
             lambda: rng.standard_normal(256) * 1e-39, lambda: rng.standard_normal(256)]
    # block i of kind 5i mod 9 (9 blocks: the kinds in order, as before): neighbouring lanes differ
    order = range(9) if blocks == 9 else [(5 * i) % 9 for i in range(blocks)]
    lanes = np.stack([kinds[k]() for k in order])
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
        # the edges of the AVX-512 shortcuts (quants_k_lanes.h: short rounding where products stay below 2^22,
        # clamps dropped by range, division by a shared 1/d with an FMA correction):
        # exact ties everywhere: small integers and half-integers give products and quotients on .5
        "integers": rng.integers(-31, 32, (2, cols)).astype(np.float32),
        "halves": (rng.integers(-16, 16, (2, cols)) + 0.5).astype(np.float32),
        # max - min overflows to inf (trial scales 0, products 0 * inf = NaN): the full rounding
        "near_float_max": (rng.choice([-1.0, 1.0], (2, cols)) * rng.uniform(1e38, 3.4e38, (2, cols)))
        .astype(np.float32),
        # super-block scales above fp16's range: stored as inf, so the requantization divides by inf
        "fp16_overflow": (rng.standard_normal((2, cols)) * 1e7).astype(np.float32),
        # ranges of a few denormal steps: trial scales overflow to inf
        "deep_denormal": (rng.integers(-8, 9, (2, cols)) * 1e-45).astype(np.float32),
        # every lane of one group a different one of these (each 16-lane vector mixes rounding modes)
        "mixed_edges": mixed_edges(rng, blocks),
    }


def mixed_edges(rng, blocks: int) -> np.ndarray:
    """One row whose consecutive blocks cycle through the shortcut edge kinds and normal blocks."""
    kinds = [lambda: rng.standard_normal(256), lambda: rng.integers(-31, 32, 256),
             lambda: rng.integers(-16, 16, 256) + 0.5, lambda: rng.uniform(1e38, 3.4e38, 256),
             lambda: rng.standard_normal(256) * 1e7, lambda: rng.integers(-8, 9, 256) * 1e-45,
             lambda: np.where(rng.random(256) < 0.9, rng.standard_normal(256), 0.0)]
    return np.concatenate([kinds[i % len(kinds)]() for i in range(blocks)]).reshape(1, -1).astype(np.float32)


def imatrices(cols: int) -> dict[str, np.ndarray | None]:
    rng = np.random.default_rng(cols)
    positive = rng.uniform(0.01, 5, cols).astype(np.float32)
    with_zeros = positive.copy()
    with_zeros[rng.random(cols) < 0.3] = 0
    with_zeros[:256] = 0  # a whole super-block without importance
    return {"none": None, "positive": positive, "with_zeros": with_zeros}


def quantize_on(path: str, monkeypatch, x, qtype, im, threads: int = 2):
    if path == "avx512" and not HAS_AVX512:
        pytest.skip(f"this CPU lacks {', '.join(sorted(AVX512 - _cpu_flags()))}: no AVX-512 path to test")
    for name, value in PATH_ENV[path].items():
        monkeypatch.setenv(name, value)
    assert quant.simd_path(qtype) == {"avx512": "avx512", "simd": _simd8(), "scalar": "plain"}[path]
    return quant.quantize(x, qtype, im, threads=threads)


def _simd8() -> str:
    return "neon" if "asimd" in _cpu_flags() else "avx2"


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



@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_threads_never_change_bytes(qtype, path, monkeypatch):
    """37 rows of 25 blocks: 1, 2, 3 and 16 threads split them differently; the bytes stay the same."""
    x = np.random.default_rng(3).standard_t(3, (37, COLS)).astype(np.float32)
    im = imatrices(COLS)["with_zeros"]
    one = quantize_on(path, monkeypatch, x, qtype, im, threads=1)
    for threads in (2, 3, 16):
        assert np.array_equal(one, quantize_on(path, monkeypatch, x, qtype, im, threads=threads)), threads


def test_paths_are_chosen_as_documented(monkeypatch):
    """Default: the widest path the CPU has; GGUFKIT_FORCE_AVX2 lowers AVX-512 to AVX2; FORCE_SCALAR to plain."""
    for name in ("GGUFKIT_FORCE_SCALAR", "GGUFKIT_FORCE_AVX2"):
        monkeypatch.delenv(name, raising=False)
    default = "avx512" if HAS_AVX512 else _simd8() if {"avx2", "f16c"} <= _cpu_flags() or "asimd" in _cpu_flags() \
        else "plain"
    assert {quant.simd_path(t) for t in K_TYPES} == {default}
    monkeypatch.setenv("GGUFKIT_FORCE_AVX2", "1")
    assert {quant.simd_path(t) for t in K_TYPES} == {"plain" if default == "plain" else _simd8()}
    monkeypatch.setenv("GGUFKIT_FORCE_SCALAR", "1")
    assert {quant.simd_path(t) for t in K_TYPES} == {"plain"}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_short_rows_joined_into_lanes_match_llama_cpp(qtype, path, monkeypatch):
    """Rows of fewer blocks than a vector has lanes (a 2048-wide tensor has 8) are quantized several rows per call
    (module.c joins them, the imatrix repeated per row); bytes as llama.cpp's for every row count and thread split."""
    rng = np.random.default_rng(5)
    for blocks, rows in ((8, 37), (9, 21), (1, 40), (6, 19)):
        cols = blocks * 256
        x = rng.standard_t(3, (rows, cols)).astype(np.float32)
        x[3, :300] = 0  # an all-zero block inside a joined call
        for im_name, im in imatrices(cols).items():
            ref = ggml_quantize(x, qtype, im)
            for threads in (1, 3):
                ours = quantize_on(path, monkeypatch, x, qtype, im, threads=threads)
                assert np.array_equal(ours, ref), (f"{qtype.name} {blocks} blocks x {rows} rows imatrix={im_name} "
                                                   f"threads={threads} ({path}): "
                                                   + describe_mismatch(ours, ref, TYPE_BYTES[qtype]))


def test_avx512_shared_divisor_division_is_ieee(tmp_path):
    """The AVX-512 requantization and symmetric trials divide by one 1/d and an FMA correction per value
    (v_div_recip): bit-equal to the IEEE quotient for every x significand (2^23, five binades) over 300 divisors -
    the kernels' fp16-times-integer scales, significands next to 1 and 2, and random ones (tests/data/
    div_shared_check.c, built here against the kernel source)."""
    if not HAS_AVX512:
        pytest.skip("this CPU lacks AVX-512: the shared-divisor division is not used")
    root = Path(__file__).resolve().parent.parent
    src = root / "native" / "src"
    exe = tmp_path / "div_shared_check"
    import subprocess

    subprocess.run(["gcc", "-O2", "-ffp-contract=off", "-std=c11", "-I", str(root / "native" / "include"), "-o",
                    str(exe), str(root / "tests" / "data" / "div_shared_check.c"), str(src / "quants_k.c"),
                    str(src / "quants_k_avx2.c"), str(src / "quants_common.c"), "-lm"], check=True)
    run = subprocess.run([str(exe), "300"], check=False, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.startswith("checked 12582912000 wrong 0"), run.stdout + run.stderr
