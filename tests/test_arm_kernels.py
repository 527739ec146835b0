"""The native kernels on AArch64, by emulation: native/src/quants_*.c cross-compiled for aarch64 (Debian's
gcc-aarch64-linux-gnu, static) and run under qemu-aarch64 (Debian's qemu-user) produce the same bytes as the
x86-64 build, for every type, with and without importance weights, on both their plain and SIMD (NEON / AVX2)
paths. Same seeded input files in, output files compared byte for byte (tests/arm/kernel_driver.c).

The cross toolchain is required, not optional: `apt-get install gcc-aarch64-linux-gnu qemu-user
libc6-dev-arm64-cross` (make setup installs them)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "arm" / "kernel_driver.c"
# the flags setup.py builds the extension with (byte-exactness needs -ffp-contract=off, above all on aarch64)
CFLAGS = ["-O3", "-ffp-contract=off", "-std=c11", "-fno-strict-aliasing", "-Wall", "-Werror=implicit-function-declaration"]
TOOLS = {"aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu", "qemu-aarch64": "qemu-user", "gcc": "gcc"}
ROWS, COLS = 24, 2304  # 9 blocks of 256 (72 of 32): every SIMD path runs a full group of 8 and a remainder


def _require_tools():
    missing = [f"{tool} (Debian package {pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        pytest.fail("ARM emulation toolchain missing: " + ", ".join(missing) +
                    ". Install: apt-get install gcc-aarch64-linux-gnu qemu-user libc6-dev-arm64-cross")


def _build(compiler: str, out: Path, extra=()) -> Path:
    sources = sorted(str(p) for p in (ROOT / "native" / "src").glob("quants_*.c"))
    cmd = [compiler, *CFLAGS, *extra, "-I", str(ROOT / "native" / "include"), "-o", str(out), str(DRIVER),
           *sources, "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{compiler} could not build the kernels:\n{proc.stderr[-3000:]}")
    return out


def _inputs(tmp: Path) -> tuple[Path, Path]:
    """(ROWS, COLS) f32 rows of different character, and (COLS,) importance weights, from a fixed seed."""
    rng = np.random.default_rng(20240811)
    x = rng.standard_normal((ROWS, COLS)).astype(np.float32)
    x *= np.logspace(-3, 2, ROWS, dtype=np.float32)[:, None]               # scales from 1e-3 to 1e2
    x[1] = 0.0                                                              # all zero
    x[2] = 0.75                                                             # constant
    x[3, ::97] = 300.0                                                      # outliers
    # tiny but with 1/scale still finite: below max|x| ~ 127 * 2^-126 the reference C code's 1/d overflows and
    # (int8_t)roundf(inf) is undefined behaviour - x86-64 and aarch64 really differ there, llama.cpp's too
    x[4] = rng.standard_normal(COLS).astype(np.float32) * 1e-30
    x[5] = np.round(rng.standard_normal(COLS) * 4).astype(np.float32)       # integers (ties in rounding)
    x[6] = np.abs(x[6])                                                     # one sign only
    x[7, :512] = 0.0                                                        # half-zero row
    im = (rng.random(COLS) ** 3 * 10).astype(np.float32)
    im[::13] = 0.0                                                          # some columns with no weight
    xp, imp = tmp / "x.f32", tmp / "im.f32"
    x.astype("<f4").tofile(xp)
    im.astype("<f4").tofile(imp)
    return xp, imp


def _run(cmd_prefix: list[str], driver: Path, x: Path, im: Path, out: Path) -> dict[str, bytes]:
    out.mkdir()
    proc = subprocess.run([*cmd_prefix, str(driver), str(ROWS), str(COLS), str(x), str(im), str(out)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"{driver.name} failed: {proc.stderr[-2000:]}"
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    _require_tools()
    tmp = tmp_path_factory.mktemp("arm")
    x, im = _inputs(tmp)
    x86 = _build("gcc", tmp / "driver-x86_64")
    arm = _build("aarch64-linux-gnu-gcc", tmp / "driver-aarch64", extra=["-static"])
    return {"x86_64": _run([], x86, x, im, tmp / "out-x86_64"),
            "aarch64": _run(["qemu-aarch64"], arm, x, im, tmp / "out-aarch64")}


def _first_difference(a: bytes, b: bytes, type_name: str) -> str:
    block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][1]
    n = len(a) // block_bytes
    bad = [i for i in range(n) if a[i * block_bytes:(i + 1) * block_bytes] != b[i * block_bytes:(i + 1) * block_bytes]]
    if not bad:
        return "identical"
    i = bad[0]
    return (f"{len(bad)} of {n} blocks differ; first block {i}: x86_64={a[i * block_bytes:(i + 1) * block_bytes].hex()} "
            f"aarch64={b[i * block_bytes:(i + 1) * block_bytes].hex()}")


def test_every_type_is_covered_on_both_paths(outputs):
    from ggufkit import quant

    types = {t.name for t in quant.supported_types()}
    needs_im = {t.name for t in quant.REQUIRES_IMATRIX}
    for arch, files in outputs.items():
        for name in types:
            for im in ("none", "imatrix")[name in needs_im:]:
                assert f"{name}.plain.{im}.q" in files, (arch, name)
    # the aarch64 build runs a SIMD path wherever a type has one for NEON; x86-64 wherever it has AVX2
    assert any(".simd." in f for f in outputs["aarch64"]), "no NEON path ran on aarch64"


def test_aarch64_bytes_equal_x86_64_bytes(outputs):
    """Every output of the aarch64 build (plain and NEON) equals the x86-64 plain output, which the kernel tests
    check against llama.cpp; every x86-64 SIMD output equals it too."""
    x86, arm = outputs["x86_64"], outputs["aarch64"]
    problems = []
    for name, data in sorted(arm.items()):
        type_name, path, im, kind = name.split(".")
        reference = x86[f"{type_name}.plain.{im}.{kind}"]
        if data != reference:
            detail = _first_difference(reference, data, type_name) if kind == "q" else "dequantized floats differ"
            problems.append(f"aarch64 {name}: {detail}")
    for name, data in sorted(x86.items()):
        type_name, path, im, kind = name.split(".")
        if path == "simd" and data != x86[f"{type_name}.plain.{im}.{kind}"]:
            problems.append(f"x86_64 {name}: differs from the plain path")
    assert not problems, "\n".join(problems)
