"""The portable llama-cpp-python build against native builds of the same llama.cpp, side by side in one run.

    python bench/runtime_portable.py --native-noamx /work/native-noamx/bin [--native-amx /work/native-amx/bin]

Native builds are plain CMake builds of the vendored llama.cpp (the sdist's vendor/llama.cpp) with
-DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=ON and, for "noamx", -mno-amx-tile -mno-amx-int8 -mno-amx-bf16; the same
Python code runs on each through llama-cpp-python's LLAMA_CPP_LIB_PATH. For each model file and build:
prompt processing (a 512-token prompt, one llama_decode batch) and generation (128 single-token decodes),
tokens/s by wall clock around llama-cpp-python's eval (the same Python code for every build), alternating builds per repetition; the median of the repetitions is reported.

--native-amx also runs a 300-token prompt on the AMX build without and with ggufkit's AMX guard, in child
processes, and reports how each ended (the crash of llama.cpp #20824, or the text).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_PROBE = r"""
import json, sys, time
from ggufkit.runtime import backends
backends.ensure()
import llama_cpp
path, threads = sys.argv[1], int(sys.argv[2])
llm = llama_cpp.Llama(path, n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=threads, n_threads_batch=threads,
                      verbose=False)
n_vocab = llm.n_vocab()
prompt = [llm.token_bos()] + [(i * 7919) % (n_vocab - 200) + 100 for i in range(511)]
llm.eval(prompt[:8]); llm.reset()                       # warm-up
t0 = time.perf_counter()
llm.eval(prompt)
pp_tps = len(prompt) / (time.perf_counter() - t0)
tok = prompt[-1]
t0 = time.perf_counter()
for _ in range(128):                                    # the speed does not depend on which tokens
    llm.eval([tok])
    tok = (tok * 31 + 7) % (n_vocab - 200) + 100
tg_tps = 128 / (time.perf_counter() - t0)
print(json.dumps({"pp": pp_tps, "tg": tg_tps, "cpu": backends.cpu_backend(), "bufts": backends.extra_buffer_types()}))
"""

_CRASH_PROBE = r"""
import sys
guard = sys.argv[2] == "guard"
if guard:
    from ggufkit.runtime import backends
    backends.ensure()
import llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_ctx=1024, n_threads=2, verbose=False)
n_vocab = llm.n_vocab()
llm.eval([llm.token_bos()] + [(i * 7919) % (n_vocab - 200) + 100 for i in range(299)])
print("ok: 300-token prompt evaluated")
"""


def run_probe(code: str, args: list[str], lib: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("LLAMA_CPP_LIB_PATH", None)
    if lib:
        env["LLAMA_CPP_LIB_PATH"] = lib
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=1800, check=False)


def demo_files(tmp: Path) -> list[Path]:
    sys.path.insert(0, str(ROOT / "models"))
    import build_demo

    from ggufkit.conversion import convert

    src = build_demo.build()
    return [convert(src, tmp / f"demo-{s}.gguf", scheme=s, quiet=True) for s in ("q8_0", "q4_k_m")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--native-noamx", default=os.environ.get("GGUFKIT_NATIVE_NOAMX"),
                    help="lib dir of a native build without AMX [$GGUFKIT_NATIVE_NOAMX]")
    ap.add_argument("--native-amx", help="lib dir of a native build with AMX (crash check)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not args.native_noamx:
        print("runtime_portable: skipped (give --native-noamx DIR: a native build to compare with; see --help)")
        return 0
    builds = {"portable": None, "native-noamx": args.native_noamx}
    with tempfile.TemporaryDirectory() as tmpdir:
        files = demo_files(Path(tmpdir))
        results: dict = {}
        for f in files:
            for rep in range(args.reps):
                for name, lib in (builds.items() if rep % 2 == 0 else reversed(builds.items())):
                    proc = run_probe(_PROBE, [str(f), str(args.threads)], lib)
                    if proc.returncode != 0:
                        raise SystemExit(f"{name} on {f.name}: exit {proc.returncode}: {proc.stderr[-1500:]}")
                    r = json.loads(proc.stdout.strip().splitlines()[-1])
                    slot = results.setdefault(f.name, {}).setdefault(name, {"pp": [], "tg": []})
                    slot["pp"].append(r["pp"])
                    slot["tg"].append(r["tg"])
                    slot["cpu"], slot["bufts"] = r["cpu"], r["bufts"]
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
              f"threads {args.threads}; median of {args.reps}")
        print(f"{'file':<18} {'build':<13} {'CPU backend':<24} {'pp t/s':>8} {'tg t/s':>8}")
        for fname, per in results.items():
            for name, slot in per.items():
                print(f"{fname:<18} {name:<13} {slot['cpu']:<24} {statistics.median(slot['pp']):>8.1f} "
                      f"{statistics.median(slot['tg']):>8.1f}")
            p, n = per["portable"], per["native-noamx"]
            print(f"{fname:<18} ratio portable/native-noamx: pp {statistics.median(p['pp']) / statistics.median(n['pp']):.3f}"
                  f"  tg {statistics.median(p['tg']) / statistics.median(n['tg']):.3f}")
        if args.native_amx:
            for mode in ("raw", "guard"):
                proc = run_probe(_CRASH_PROBE, [str(files[0]), mode], args.native_amx)
                how = (f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
                       else f"exit {proc.returncode}: {proc.stdout.strip() or proc.stderr.strip()[-200:]}")
                print(f"native AMX build, 300-token prompt, {'with' if mode == 'guard' else 'without'} "
                      f"ggufkit's guard: {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
