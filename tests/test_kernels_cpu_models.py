"""The extension on x86-64 CPUs without AVX-512, by emulation: qemu-x86_64 runs ggufkit's K-quant kernels as an
AVX2-only Intel (Haswell) and an AMD EPYC Rome (Zen 2) would. The native build must load there (the AVX-512 code is
compiled per function, never for the whole file), choose the AVX2 path, and give llama.cpp's bytes (the reference
is computed here, on the host). Rows of 25 blocks: the AVX2 lanes and the plain tail both run. The lattice
i-quants whose scale trials run in lanes (IQ3_XXS, IQ3_S, IQ2_S) and IQ1_S, IQ1_M, IQ2_XXS (AVX-512 entry points
next to their AVX2 ones) are checked the same way.

qemu-x86_64 comes with qemu-user (also needed by the aarch64 tests): `apt-get install qemu-user`."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ggml_ref import describe_mismatch, ggml_quantize
from gguf import GGMLQuantizationType
from test_kernels_k import COLS, K_TYPES, TYPE_BYTES, degenerate_rows

ROOT = Path(__file__).resolve().parent.parent
CHILD = """
import sys
import numpy as np
from gguf import GGMLQuantizationType as T
from ggufkit import quant
x = np.load(sys.argv[1])
im = np.load(sys.argv[2])
out = {}
for name in sys.argv[4].split(","):
    t = T[name]
    out[name + ".path"] = np.array(quant.simd_path(t))
    if t not in quant.REQUIRES_IMATRIX:
        out[name + ".none"] = quant.quantize(x, t, None, threads=2)
    out[name + ".imatrix"] = quant.quantize(x, t, im, threads=2)
np.savez(sys.argv[3], **out)
"""


@pytest.mark.parametrize("cpu", ["Haswell", "EPYC-Rome"])
def test_k_quants_on_a_cpu_without_avx512(cpu, tmp_path):
    if shutil.which("qemu-x86_64") is None:
        pytest.fail("qemu-x86_64 missing: apt-get install qemu-user")
    rng = np.random.default_rng(13)
    # (rows, COLS) f32: the degenerate kinds and heavy-tailed rows
    x = np.concatenate([degenerate_rows()["mixed_lanes"], degenerate_rows()["outlier"],
                        rng.standard_t(3, (3, COLS))]).astype(np.float32)
    im = rng.uniform(0.01, 5, COLS).astype(np.float32)
    im[rng.random(COLS) < 0.3] = 0
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "im.npy", im)
    names = ",".join(t.name for t in K_TYPES)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GGUFKIT_FORCE_SCALAR": "0", "GGUFKIT_FORCE_AVX2": "0"}
    run = subprocess.run(["qemu-x86_64", "-cpu", cpu, sys.executable, "-c", CHILD, str(tmp_path / "x.npy"),
                          str(tmp_path / "im.npy"), str(tmp_path / "out.npz"), names],
                         capture_output=True, text=True, env=env, timeout=900, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    for qtype in K_TYPES:
        assert str(out[qtype.name + ".path"]) == "avx2", f"{cpu}: {qtype.name} took {out[qtype.name + '.path']}"
        for im_name, weights in (("none", None), ("imatrix", im)):
            with np.errstate(all="ignore"):
                ref = ggml_quantize(x, qtype, weights)
            ours = out[f"{qtype.name}.{im_name}"]
            assert np.array_equal(ours, ref), (f"{cpu} {qtype.name} imatrix={im_name}: "
                                               + describe_mismatch(ours, ref, TYPE_BYTES[qtype]))


LATTICE_TYPES = ["IQ3_XXS", "IQ3_S", "IQ2_S"]  # the scale trials in lanes (native/src/quants_iq_trials.h)
LATTICE_BYTES = {"IQ3_XXS": 98, "IQ3_S": 110, "IQ2_S": 82}


@pytest.mark.parametrize("cpu", ["Haswell", "EPYC-Rome"])
def test_lattice_i_quants_on_a_cpu_without_avx512(cpu, tmp_path):
    """IQ3_XXS, IQ3_S and IQ2_S take their AVX2 trial lanes there (their AVX-512 ones on the host) and give llama.cpp's
    bytes. No rows near overflow: llama.cpp aborts on those for these types."""
    if shutil.which("qemu-x86_64") is None:
        pytest.fail("qemu-x86_64 missing: apt-get install qemu-user")
    rng = np.random.default_rng(17)
    cols = 9 * 256
    x = np.concatenate([rng.standard_normal((2, cols)), rng.standard_t(2, (2, cols)), rng.uniform(0, 1, (1, cols)),
                        1e-30 * rng.standard_normal((1, cols))]).astype(np.float32)  # (6, cols) f32
    x[0, :256] = 0  # an all-zero super-block next to normal ones
    x[1, 300] = 50.0
    im = rng.uniform(0.01, 5, cols).astype(np.float32)
    im[rng.random(cols) < 0.3] = 0
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "im.npy", im)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GGUFKIT_FORCE_SCALAR": "0", "GGUFKIT_FORCE_AVX2": "0"}
    run = subprocess.run(["qemu-x86_64", "-cpu", cpu, sys.executable, "-c", CHILD, str(tmp_path / "x.npy"),
                          str(tmp_path / "im.npy"), str(tmp_path / "out.npz"), ",".join(LATTICE_TYPES)],
                         capture_output=True, text=True, env=env, timeout=900, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    for name in LATTICE_TYPES:
        assert str(out[name + ".path"]) == "avx2", f"{cpu}: {name} took {out[name + '.path']}"
        for im_name, weights in (("none", None), ("imatrix", im)):
            ref = ggml_quantize(x, GGMLQuantizationType[name], weights)
            ours = out[f"{name}.{im_name}"]
            assert np.array_equal(ours, ref), (f"{cpu} {name} imatrix={im_name}: "
                                               + describe_mismatch(ours, ref, LATTICE_BYTES[name]))


@pytest.mark.parametrize("cpu", ["Haswell", "EPYC-Rome"])
def test_iq1_and_iq2_xxs_on_a_cpu_without_avx512(cpu, tmp_path):
    """IQ1_S, IQ1_M, IQ2_XXS and IQ2_XS (AVX-512 entry points next to their AVX2 ones) take AVX2 there, exactly."""
    from gguf import GGMLQuantizationType as T

    from ggufkit import quant

    if shutil.which("qemu-x86_64") is None:
        pytest.fail("qemu-x86_64 missing: apt-get install qemu-user")
    rng = np.random.default_rng(17)
    cols = 256 * 3
    # (4, cols) f32: normal, heavy-tailed, and a row of few distinct values (equal values for the sort by ranks)
    x = np.concatenate([rng.standard_normal((2, cols)), rng.standard_t(3, (1, cols)),
                        rng.integers(-3, 4, (1, cols)) * 0.5]).astype(np.float32)
    im = rng.uniform(0.01, 5, cols).astype(np.float32)
    im[rng.random(cols) < 0.3] = 0
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "im.npy", im)
    types = [T.IQ1_S, T.IQ1_M, T.IQ2_XXS, T.IQ2_XS]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GGUFKIT_FORCE_SCALAR": "0", "GGUFKIT_FORCE_AVX2": "0"}
    run = subprocess.run(["qemu-x86_64", "-cpu", cpu, sys.executable, "-c", CHILD, str(tmp_path / "x.npy"),
                          str(tmp_path / "im.npy"), str(tmp_path / "out.npz"), ",".join(t.name for t in types)],
                         capture_output=True, text=True, env=env, timeout=900, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    for qtype in types:
        assert str(out[qtype.name + ".path"]) == "avx2", f"{cpu}: {qtype.name} took {out[qtype.name + '.path']}"
        for im_name, weights in (("none", None), ("imatrix", im))[qtype in quant.REQUIRES_IMATRIX:]:
            ref = ggml_quantize(x, qtype, weights)
            ours = out[f"{qtype.name}.{im_name}"]
            assert np.array_equal(ours, ref), (f"{cpu} {qtype.name} imatrix={im_name}: "
                                               + describe_mismatch(ours, ref, quant._TRAITS[int(qtype)][2]))
