"""Byte-exactness of every native quantizer against llama.cpp's own (ggml_quantize_chunk from llama-cpp-python's
libggml-base), on many row shapes and on real weights; dequantization against gguf-py; thread and SIMD/plain
invariance; and golden blocks that pin the reference build itself.

Every test is parametrised over ggufkit.quant.supported_types(), so a newly registered type is covered here
without editing this file."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import gguf.quants as gguf_quants
import numpy as np
import pytest
from ggml_ref import describe_mismatch, ggml_dequantize, ggml_quantize
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from ggufkit import quant

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
import make_golden

TYPES = quant.supported_types()
TYPE_IDS = [t.name for t in TYPES]
_BLOCK = {t: quant._TRAITS[int(t)][1] for t in TYPES}
_BYTES = {t: quant._TRAITS[int(t)][2] for t in TYPES}

ROWS = 4
# A row length every registered block size divides, at least 512.
_LCM = math.lcm(*_BLOCK.values()) if TYPES else 256
COLS = _LCM * max(1, -(-512 // _LCM))


def _cols(qtype) -> int:
    """COLS plus three blocks: SIMD paths that take blocks in groups (of 8, say) also meet a remainder."""
    return COLS + 3 * _BLOCK[qtype]


# ---- inputs

def _rows(kind: str, rows: int = ROWS, cols: int = COLS, seed: int = 0) -> np.ndarray:
    """(rows, cols) f32 test rows of one kind; the seed is mixed with the kind so kinds are independent."""
    rng = np.random.default_rng([seed, sum(map(ord, kind))])
    shape = (rows, cols)
    sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "uniform":
        x = rng.uniform(-1.0, 1.0, shape)
    elif kind == "student_t":            # heavy tails: df=2 has infinite variance
        x = rng.standard_t(2, shape)
    elif kind == "zero":
        x = np.zeros(shape)
    elif kind == "constant":
        x = np.full(shape, -1.7)
    elif kind == "outlier":              # small values and one large one per row
        x = 0.01 * rng.standard_normal(shape)
        x[np.arange(rows), rng.integers(0, cols, rows)] = 50.0
    elif kind == "tiny":                 # denormal-ish: 1e-38 .. 1e-30
        x = sign * 10.0 ** rng.uniform(-38, -30, shape)
    elif kind == "subnormal":            # ~1e-39: the block scale is subnormal and 1/scale overflows to inf
        x = 1e-39 * rng.standard_normal(shape)
    elif kind == "huge":                 # 1e30-ish: squares overflow f32
        x = sign * 10.0 ** rng.uniform(29, 31, shape)
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


KINDS = ["normal", "uniform", "student_t", "zero", "constant", "outlier", "tiny", "subnormal", "huge"]


def _imatrix(variant: str, cols: int, seed: int = 1) -> np.ndarray | None:
    """None, or (cols,) f32 importance weights: random positive, or random with a run and a scatter of zeros."""
    if variant == "none":
        return None
    rng = np.random.default_rng(seed)
    im = rng.gamma(0.5, 2.0, cols) + 1e-3
    if variant == "with_zeros":
        im[cols // 4: cols // 4 + 40] = 0.0
        im[rng.integers(0, cols, cols // 16)] = 0.0
    return im.astype(np.float32)


IMATRIX = ["none", "positive", "with_zeros"]


def _both_paths(x, qtype, imatrix, monkeypatch) -> dict[str, np.ndarray]:
    """Our bytes from the default path (SIMD where the type has one here) and from the forced plain path."""
    out = {"default": quant.quantize(x, qtype, imatrix, threads=1)}
    monkeypatch.setenv("GGUFKIT_FORCE_SCALAR", "1")
    out["plain"] = quant.quantize(x, qtype, imatrix, threads=1)
    monkeypatch.delenv("GGUFKIT_FORCE_SCALAR")
    return out


def _assert_bytes_equal_reference(x, qtype, imatrix, monkeypatch, what: str) -> None:
    if imatrix is None and qtype in quant.REQUIRES_IMATRIX:
        # llama.cpp asserts an imatrix for these (ggml_quantize_chunk aborts the process): ours refuses on both paths
        for forced in ("0", "1"):
            monkeypatch.setenv("GGUFKIT_FORCE_SCALAR", forced)
            with pytest.raises(ValueError, match="only with importance weights"):
                quant.quantize(x, qtype, None, threads=1)
        monkeypatch.delenv("GGUFKIT_FORCE_SCALAR")
        return
    ref = ggml_quantize(x, int(qtype), imatrix)
    for path, ours in _both_paths(x, qtype, imatrix, monkeypatch).items():
        assert ours.shape == ref.shape
        same = bool(np.array_equal(ours, ref))
        assert same, f"{qtype.name} {what} ({path} path): " + describe_mismatch(
            ours, ref, _BYTES[qtype])


def _gguf_dequantize(q: np.ndarray, qtype) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):   # inf * 0 scales are part of what is compared
        return gguf_dequantize(q, qtype)


def _dequantized_like_reference(ours: np.ndarray, q: np.ndarray, qtype) -> str:
    """'' when ours equals the reference bit for bit, else how many values differ. The reference is gguf-py, or for
    the types it cannot decode (Q1_0) ggml's own to_float, whose half -> float conversion quiets NaNs (sets the
    quiet bit, as F16C does); ours keeps the payload like numpy, so that one bit is set on our NaNs first."""
    if qtype in gguf_quants._type_traits:
        ref = _gguf_dequantize(q.reshape(ours.shape[0], -1), qtype).reshape(ours.shape)
        bits = ours.view(np.uint32)
    else:
        ref = ggml_dequantize(q.reshape(ours.shape[0], -1), int(qtype), *ours.shape)
        bits = np.where(np.isnan(ours), ours.view(np.uint32) | np.uint32(0x00400000), ours.view(np.uint32))
    differ = np.count_nonzero(bits != ref.view(np.uint32))
    return f"{qtype.name}: {differ} of {ours.size} values differ" if differ else ""


# ---- bytes equal llama.cpp's

@pytest.mark.parametrize("variant", IMATRIX)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("qtype", TYPES, ids=TYPE_IDS)
def test_bytes_equal_llama_cpp(qtype, kind, variant, monkeypatch):
    cols = _cols(qtype)
    x = _rows(kind, cols=cols)
    if kind == "huge" and qtype.name in ABORTS_ON_HUGE and (variant != "none" or qtype not in quant.REQUIRES_IMATRIX):
        # llama.cpp's lattice quantizers abort the process here ("found point not on grid": the weighted sums
        # overflow to inf/NaN); there is no reference, so only check that ours is defined and path-independent
        out = _both_paths(x, qtype, _imatrix(variant, cols), monkeypatch)
        assert np.array_equal(out["default"], out["plain"])
        return
    _assert_bytes_equal_reference(x, qtype, _imatrix(variant, cols), monkeypatch, f"{kind} rows, imatrix {variant}")


# The grid (lattice) types whose llama.cpp quantizer aborts on rows of ~1e30 (see above).
ABORTS_ON_HUGE = {"IQ3_XXS", "IQ3_S", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ1_M"}


def test_row_kinds_are_what_they_claim():
    """Guards the inputs above: a silently empty or finite-only 'huge' row would make its tests weaker."""
    assert not _rows("zero").any()
    assert np.unique(_rows("constant")).size == 1
    tiny, huge = np.abs(_rows("tiny")), np.abs(_rows("huge"))
    assert tiny.min() < 1.2e-38 and tiny.max() <= 1e-30
    with np.errstate(over="ignore"):
        assert huge.min() >= 1e29 and np.isinf(np.square(huge)).all()
    assert np.abs(_rows("student_t")).max() > 30


REAL_TENSORS = [
    ("model.embed_tokens.weight", slice(1000, 1012)),
    ("model.layers.5.self_attn.q_proj.weight", slice(0, 12)),
    ("model.layers.20.mlp.down_proj.weight", slice(100, 112)),
]


@pytest.fixture(scope="module")
def real_rows(demo_dir) -> dict[str, np.ndarray]:
    """{name: (12, cols) f32} row slices of three demo-model tensors (stored as BF16)."""
    from safetensors import safe_open

    with safe_open(str(demo_dir / "model.safetensors"), framework="pt") as f:
        return {name: f.get_slice(name)[rows].float().numpy() for name, rows in REAL_TENSORS}


@pytest.mark.parametrize("variant", ["none", "positive"])
@pytest.mark.parametrize("qtype", TYPES, ids=TYPE_IDS)
def test_bytes_equal_llama_cpp_on_real_weights(qtype, variant, real_rows, monkeypatch):
    for name, x in real_rows.items():
        cols = x.shape[1] - x.shape[1] % _BLOCK[qtype]   # 576-wide tensors: the first 512 for 256-blocks
        x = np.ascontiguousarray(x[:, :cols])
        _assert_bytes_equal_reference(x, qtype, _imatrix(variant, cols), monkeypatch, f"{name}, imatrix {variant}")


# ---- dequantize equals gguf-py's

@pytest.mark.parametrize("qtype", TYPES, ids=TYPE_IDS)
def test_dequantize_equals_gguf_py(qtype):
    x = np.concatenate([_rows(k, rows=2) for k in ("normal", "student_t", "outlier", "tiny", "huge", "zero")])
    for im in (None, _imatrix("positive", COLS))[qtype in quant.REQUIRES_IMATRIX:]:
        q = quant.quantize(x, qtype, im)
        problem = _dequantized_like_reference(quant.dequantize(q, qtype, x.shape), q, qtype)
        assert not problem, problem


@pytest.mark.parametrize("qtype", TYPES, ids=TYPE_IDS)
def test_dequantize_arbitrary_bytes_equals_gguf_py(qtype):
    """Random bytes reach every code, scale and sign combination, including inf/NaN half-precision scales."""
    q = np.random.default_rng(5).integers(0, 256, (32, quant.row_size(qtype, COLS)), dtype=np.uint8)
    problem = _dequantized_like_reference(quant.dequantize(q, qtype, (32, COLS)), q, qtype)
    assert not problem, problem


# ---- threads and paths never change bytes

@pytest.mark.parametrize("qtype", TYPES, ids=TYPE_IDS)
def test_thread_count_never_changes_bytes(qtype):
    x = _rows("student_t", rows=37)
    im = _imatrix("positive", COLS)
    one = quant.quantize(x, qtype, im, threads=1)
    for threads in (2, 3, 16):
        assert np.array_equal(one, quant.quantize(x, qtype, im, threads=threads)), f"{qtype.name}, {threads} threads"


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def test_simd_path_is_taken_unless_forced_scalar(monkeypatch):
    """The byte tests above run both paths; this checks that 'default' really is the SIMD path where there is one."""
    flags = _cpu_flags()
    for qtype in TYPES:
        feature = next(row[4] for row in quant._quants.types() if row[0] == int(qtype))
        expected = feature is not None and (feature in flags or feature == "neon" and "asimd" in flags)
        assert quant.simd_active(qtype) == expected, qtype.name
    monkeypatch.setenv("GGUFKIT_FORCE_SCALAR", "1")
    assert not any(quant.simd_active(t) for t in TYPES)


# ---- golden blocks: the reference build itself has not changed

GOLDEN = make_golden.load_golden()
GOLDEN_IDS = sorted(GOLDEN)


@pytest.mark.parametrize("entry", GOLDEN_IDS)
def test_reference_still_produces_golden_blocks(entry):
    """A llama-cpp-python rebuilt differently (another version, FMA contraction on) would fail here first."""
    x, im = make_golden.golden_input()
    name, _, weighted = entry.partition("+")
    ref = ggml_quantize(x, int(GGMLQuantizationType[name]), im if weighted else None)[0]
    assert np.array_equal(ref, GOLDEN[entry]), f"{entry}: llama.cpp reference drifted from tests/data/golden_blocks.npz"


@pytest.mark.parametrize("qtype", TYPES, ids=TYPE_IDS)
def test_golden_blocks_are_reproduced(qtype, monkeypatch):
    assert qtype.name in GOLDEN or qtype.name + "+imatrix" in GOLDEN, \
        f"{qtype.name}: no golden blocks; add it to TYPES in tests/data/make_golden.py"
    x, im = make_golden.golden_input()
    for weighted, weights in (("", None), ("+imatrix", im))[qtype in quant.REQUIRES_IMATRIX:]:
        want = GOLDEN[qtype.name + weighted][None, :]
        for path, ours in _both_paths(x, qtype, weights, monkeypatch).items():
            same = bool(np.array_equal(ours, want))
            assert same, f"{qtype.name}{weighted} ({path}): " + describe_mismatch(
                ours, want, _BYTES[qtype])
