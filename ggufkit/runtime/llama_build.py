"""The llama-cpp-python build ggufkit runs on: portable across CPUs, no AMX, cached by its configuration.

Why this build (issue: the runtime must run on every CPU):
- A default `pip install llama-cpp-python` compiles llama.cpp with -march=native. Such a wheel dies with SIGILL on
  an older CPU than the one it was built on, and on Intel Xeons with AMX it moves the weights into ggml's AMX
  buffer type, whose batched matrix multiply segfaults (llama.cpp #20824) in the llama.cpp of 0.3.36.
- A fixed-flags build (GGML_NATIVE=OFF, explicit AVX2/FMA/F16C) runs everywhere but leaves AVX-512 and VNNI
  unused where the CPU has them. Instead we build llama.cpp's dynamically loaded CPU backends
  (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS): one libggml-cpu-<variant>.so per x86-64 level, and at load time
  ggml scores each against the running CPU and picks the best one. The AMX variant (sapphirerapids) is left out,
  so no shipped library holds AMX tile instructions; an AMX Xeon gets the zen4 variant (AVX-512 VBMI/VNNI/BF16),
  which is the native build's ISA minus AMX. The other variants dropped (ivybridge, piledriver, cannonlake,
  cooperlake) each fall back to the next lower one; that saves a third of the compile time.
- llama-cpp-python 0.3.36 neither installs the variant libraries nor loads dynamic backends
  (llama-cpp-python #2069): the recipe installs them, and ggufkit.runtime.backends loads them from the wheel's
  lib directory before llama.cpp is initialised.
- GGML_RPC and a few of llama.cpp's tools (rpc-server, llama-quantize, llama-imatrix, llama-perplexity,
  llama-gguf-split) are built from the same vendored source and shipped in llama_cpp/lib: the RPC runtime uses
  rpc-server, and the tests and benchmarks use the others as references.
- -ffp-contract=off everywhere, so llama.cpp's quantizers (ggml-base) stay the byte-exact reference.

The cache: ~/.cache/ggufkit/wheels/<name>-<key>/, where key hashes CONFIG and the machine type; the wheel itself
carries llama_cpp/ggufkit_build.json with CONFIG, and a wheel whose stamp differs (or that has none, such as a
natively built one from an earlier ggufkit) is refused and rebuilt.

Usage (stdlib only, runs before ggufkit is installed):
    python ggufkit/runtime/llama_build.py --cache ~/.cache/ggufkit/wheels     # prints the wheel's path
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

VERSION = "0.3.36"
STAMP = "llama_cpp/ggufkit_build.json"

# The x86-64 CPU variants built (ggml's names; each needs the features listed in ggml/src/CMakeLists.txt).
X86_VARIANTS = ["x64", "sse42", "sandybridge", "haswell", "alderlake", "skylakex", "cascadelake", "icelake",
                "zen4"]
TOOLS = {  # vendored tool directory -> the targets it builds that we install
    "rpc": ["ggml-rpc-server"],
    "quantize": ["llama-quantize", "llama-quantize-impl"],
    "imatrix": ["llama-imatrix"],
    "perplexity": ["llama-perplexity", "llama-perplexity-impl"],
    "gguf-split": ["llama-gguf-split"],
}
CONFIG = {
    "llama_cpp_python": VERSION,
    "cmake_args": ["-DGGML_NATIVE=OFF", "-DGGML_BACKEND_DL=ON", "-DGGML_CPU_ALL_VARIANTS=ON", "-DGGML_RPC=ON",
                   "-DCMAKE_C_FLAGS=-ffp-contract=off", "-DCMAKE_CXX_FLAGS=-ffp-contract=off"],
    "x86_variants": X86_VARIANTS,
    "tools": TOOLS,
    "recipe": 1,  # bump when the patching below changes
}


def config_key(config: dict = CONFIG, machine: str | None = None) -> str:
    blob = json.dumps({"config": config, "machine": machine or platform.machine()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_dir(cache: Path, config: dict = CONFIG) -> Path:
    return Path(cache) / f"llama_cpp_python-{config['llama_cpp_python']}-{config_key(config)}"


def read_stamp(wheel: Path) -> dict | None:
    """The build configuration a wheel records, or None (no stamp, or not a readable wheel)."""
    try:
        with zipfile.ZipFile(wheel) as z:
            return json.loads(z.read(STAMP))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def find_cached(cache: Path, config: dict = CONFIG, log=print) -> Path | None:
    """The cached wheel built with exactly `config`, else None. Wheels built otherwise are named and refused."""
    folder = cache_dir(cache, config)
    for wheel in sorted(folder.glob("llama_cpp_python-*.whl")) if folder.is_dir() else []:
        stamp = read_stamp(wheel)
        if stamp == {**config, "key": config_key(config)}:
            return wheel
        log(f"llama-cpp-python: ignoring {wheel}: built with another configuration")
    for wheel in sorted(Path(cache).glob("llama_cpp_python-*.whl")) if Path(cache).is_dir() else []:
        log(f"llama-cpp-python: ignoring {wheel}: no build stamp (a native build from an older ggufkit)")
    return None


# ---- the recipe: sdist -> patched source -> wheel -> stamped wheel

def _patch_variants(cmake: Path, variants: list[str]) -> None:
    """Keep only the wanted x86 variants in ggml's ALL_VARIANTS list (the ARM and other lists are untouched)."""
    text = cmake.read_text()
    start = text.index('if (GGML_SYSTEM_ARCH STREQUAL "x86")', text.index("if (GGML_CPU_ALL_VARIANTS)"))
    end = text.index("elseif(GGML_SYSTEM_ARCH STREQUAL \"ARM\")", start)
    block = text[start:end]
    kept = []

    def keep(m: re.Match) -> str:
        if m.group(2) in variants:
            kept.append(m.group(2))
            return m.group(0)
        return m.group(1) + "# ggufkit: not built: " + m.group(0).strip()

    block = re.sub(r"^(\s*)ggml_add_cpu_backend_variant\((\w+)[^)]*\)", keep, block, flags=re.MULTILINE)
    if sorted(kept) != sorted(variants):
        raise SystemExit(f"llama_build: variants not found in {cmake}: {sorted(set(variants) - set(kept))}")
    cmake.write_text(text[:start] + block + text[end:])


def _patch_top(cmake: Path, variants: list[str], tools: dict) -> None:
    """llama-cpp-python's CMakeLists: install the CPU variant libraries, build and install the tools."""
    text = cmake.read_text()
    anchor = "    llama_cpp_python_install_target(ggml-cpu)\n"
    if anchor not in text or "add_subdirectory(vendor/llama.cpp)\n" not in text:
        raise SystemExit(f"llama_build: {cmake} does not have the expected layout")
    extra = "".join(f"    llama_cpp_python_install_target(ggml-cpu-{v})\n" for v in variants)
    extra += "    llama_cpp_python_install_target(llama-common)\n"
    for d, targets in tools.items():
        extra += f"    add_subdirectory(vendor/llama.cpp/tools/{d})\n"
        extra += "".join(f"    llama_cpp_python_install_target({t})\n" for t in targets)
    cmake.write_text(text.replace(anchor, anchor + "    # ggufkit: CPU variants and tools\n" + extra))


def _stamp(wheel: Path, stamp: dict) -> None:
    """Add llama_cpp/ggufkit_build.json to the wheel and its RECORD (rewrites the zip)."""
    data = json.dumps(stamp, indent=1, sort_keys=True).encode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            body = zin.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                body = body.rstrip(b"\n") + f"\n{STAMP},sha256={digest},{len(data)}\n".encode()
            zout.writestr(item, body)
        zout.writestr(STAMP, data)
    tmp.replace(wheel)


def build(cache: Path, config: dict = CONFIG, python: str = sys.executable) -> Path:
    """Build the wheel into CACHE and return its path. The child pips write to stderr: stdout carries only the
    path (the Makefile reads it; on a fresh machine pip's own lines there made setup fail)."""
    out = cache_dir(cache, config)
    with tempfile.TemporaryDirectory(prefix="ggufkit-llama-") as tmpdir:
        tmp = Path(tmpdir)
        pip = [python, "-m", "pip"]
        subprocess.run(pip + ["install", "-q", "scikit-build-core[pyproject]>=0.9.2", "cmake>=3.21", "ninja"],
                       check=True, stdout=sys.stderr)
        subprocess.run(pip + ["download", "-q", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
                              f"llama-cpp-python=={config['llama_cpp_python']}", "-d", str(tmp)], check=True,
                       stdout=sys.stderr)
        sdist = next(tmp.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as t:
            try:
                t.extractall(tmp, filter="data")
            except TypeError:  # Python < 3.10.12 has no extraction filters; the sdist is PyPI's
                t.extractall(tmp)
        src = next(p for p in tmp.iterdir() if p.is_dir())
        _patch_variants(src / "vendor/llama.cpp/ggml/src/CMakeLists.txt", config["x86_variants"])
        _patch_top(src / "CMakeLists.txt", config["x86_variants"], config["tools"])
        env = dict(os.environ, CMAKE_ARGS=" ".join(config["cmake_args"]),
                   CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 2))
        dist = tmp / "dist"
        subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
                       check=True, env=env, stdout=sys.stderr)
        wheel = next(dist.glob("llama_cpp_python-*.whl"))
        _stamp(wheel, {**config, "key": config_key(config)})
        out.mkdir(parents=True, exist_ok=True)
        final = out / wheel.name
        shutil.move(str(wheel), str(final.with_suffix(".part")))
        os.replace(final.with_suffix(".part"), final)
    return final


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", required=True, type=Path, help="the wheel cache directory")
    ap.add_argument("--key", action="store_true", help="print the configuration key and exit")
    args = ap.parse_args(argv)
    if args.key:
        print(config_key())
        return 0
    log = lambda msg: print(msg, file=sys.stderr)
    wheel = find_cached(args.cache, log=log)
    if wheel is None:
        log(f"llama-cpp-python {VERSION}: building the portable wheel (compiles llama.cpp, ~15 min on 2 cores)")
        wheel = build(args.cache)
    else:
        log(f"llama-cpp-python {VERSION}: using the cached wheel {wheel}")
    print(wheel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
