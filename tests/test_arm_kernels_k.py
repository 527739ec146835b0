"""K-quants on AArch64, by emulation, against llama.cpp: the kernels cross-compiled for aarch64 (static, with
setup.py's flags) and run under qemu-aarch64 through tests/arm/kernel_driver.c, on rows wide enough (9 blocks) that
the NEON path really runs its eight-blocks-in-lanes code (plus one block through the plain fallback), and on the
degenerate rows of test_kernels_k.py. Both the plain and the NEON outputs must equal ggml_quantize_chunk's bytes
(computed here on x86-64), with and without importance weights.

The cross toolchain is required: `apt-get install gcc-aarch64-linux-gnu qemu-user libc6-dev-arm64-cross`."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from ggml_ref import describe_mismatch, ggml_quantize
from gguf import GGMLQuantizationType as T
from test_kernels_k import K_TYPES, TYPE_BYTES, degenerate_rows

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "arm" / "kernel_driver.c"
CFLAGS = ["-O3", "-ffp-contract=off", "-std=c11", "-fno-strict-aliasing", "-Wall"]  # as setup.py


@pytest.fixture(scope="module")
def arm_outputs(tmp_path_factory) -> tuple[np.ndarray, np.ndarray, Path]:
    """(rows, 2304) f32 inputs, (2304,) importance, and the directory of the aarch64 driver's output files."""
    for tool in ("aarch64-linux-gnu-gcc", "qemu-aarch64"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} missing: apt-get install gcc-aarch64-linux-gnu qemu-user libc6-dev-arm64-cross")
    tmp = tmp_path_factory.mktemp("arm_k")
    rng = np.random.default_rng(11)
    # (rows, 9 * 256) f32: every degenerate kind, then real-looking normal and heavy-tailed rows
    x = np.concatenate([*degenerate_rows(9).values(), rng.standard_normal((2, 2304)),
                        rng.standard_t(3, (2, 2304))]).astype(np.float32)
    im = rng.uniform(0.01, 5, 2304).astype(np.float32)
    im[rng.random(2304) < 0.3] = 0
    im[:256] = 0  # a whole super-block without importance
    x.astype("<f4").tofile(tmp / "x.f32")
    im.astype("<f4").tofile(tmp / "im.f32")
    driver = tmp / "driver-aarch64"
    sources = sorted(str(p) for p in (ROOT / "native" / "src").glob("quants_*.c"))
    build = subprocess.run(["aarch64-linux-gnu-gcc", *CFLAGS, "-static", "-I", str(ROOT / "native" / "include"),
                            "-o", str(driver), str(DRIVER), *sources, "-lm"], capture_output=True, text=True,
                           check=False)
    assert build.returncode == 0, build.stderr[-3000:]
    out = tmp / "out"
    out.mkdir()
    run = subprocess.run(["qemu-aarch64", str(driver), str(len(x)), "2304", str(tmp / "x.f32"),
                          str(tmp / "im.f32"), str(out)], capture_output=True, text=True, timeout=600,
                         check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    return x, im, out


@pytest.mark.parametrize("path", ["simd", "plain"])
@pytest.mark.parametrize("qtype", K_TYPES, ids=lambda t: t.name)
def test_aarch64_k_quants_match_llama_cpp(arm_outputs, qtype: T, path: str):
    x, im, out = arm_outputs
    for im_name, weights in (("none", None), ("imatrix", im)):
        with np.errstate(all="ignore"):
            ref = ggml_quantize(x, qtype, weights)
        produced = out / f"{qtype.name}.{path}.{im_name}.q"
        assert produced.exists(), f"the aarch64 build has no {path} path for {qtype.name}"
        ours = np.fromfile(produced, np.uint8).reshape(ref.shape)
        assert np.array_equal(ours, ref), (f"aarch64 {qtype.name} {path} imatrix={im_name}: "
                                           + describe_mismatch(ours, ref, TYPE_BYTES[qtype]))
