"""The size budget's sensitivity pass: layer by layer (ggufkit.plan.sensitivity.Session) against the whole float32
model (WholeModel, the pass convert used before).

    .venv/bin/python bench/sensitivity.py [--model models/bench-1b] [--fit-chunks 2] [--ctx 512] [--threads 2]

Each variant in its own process, one after the other in one run (peak RSS and CPU time of that child alone,
os.wait4; per phase the child's process CPU time and its peak RSS so far): set-up (the whole model loaded, or the
layer-wise shell and first-layer inputs), sensitivity() on --fit-chunks chunks of Hamlet, one guard score kl() of
a Q4_K/Q6_K mix on a held-out chunk. The two results are compared (largest relative difference over every
tensor's E[g^2], E[x^2] and the embedding's E[g_j^2]; the two KLs), and memory_needed's estimate is printed next
to the measured peak. Prints a Markdown table and the raw numbers as JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from calibrate import HAMLET, child_run  # bench/calibrate.py

CHILD = """
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import gguf
import numpy as np
from ggufkit.plan import sensitivity as S

def mark(name):
    phases.append({{"phase": name, "cpu_s": round(time.process_time() - c0, 1), "wall_s": round(time.perf_counter() - w0, 1),
                   "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}})

phases, c0, w0 = [], time.process_time(), time.perf_counter()
cls = S.WholeModel if {mode!r} == "whole" else S.Session
session = cls(Path({model!r}), Path({text!r}), ctx={ctx}, fit_chunks={fit}, held_out={held}, threads={threads})
mark("set-up")
c0, w0 = time.process_time(), time.perf_counter()
sens = session.sensitivity()
mark("sensitivity")
QT = gguf.GGMLQuantizationType
mix = {{n: QT.Q4_K for n in sens}}
mix["token_embd.weight"] = mix["output.weight"] = QT.Q6_K
c0, w0 = time.process_time(), time.perf_counter()
kl = session.kl(mix)
mark("guard kl")
arrays = {{}}
for n, s in sens.items():
    arrays[n + ":g2"] = np.array([s.g2])
    arrays[n + ":v"] = s.x2 if s.x2 is not None else s.embd_g2
np.savez({out!r}, **arrays)
print(json.dumps({{"phases": phases, "kl": kl}}))
"""


def run(mode: str, args, out: Path) -> dict:
    code = CHILD.format(root=str(ROOT), mode=mode, model=str(args.model), text=str(HAMLET), ctx=args.ctx,
                        fit=args.fit_chunks, held=args.fit_chunks + 6, threads=args.threads, out=str(out))
    r = child_run([sys.executable, "-c", code])
    r.update(json.loads(r.pop("stdout").strip().splitlines()[-1]))
    return r


def largest_difference(a: Path, b: Path) -> float:
    import numpy as np

    x, y = np.load(a), np.load(b)
    assert sorted(x.files) == sorted(y.files)
    return max(float(np.max(np.abs(x[k] - y[k])) / max(float(np.max(np.abs(y[k]))), 1e-300)) for k in y.files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "bench-1b")
    ap.add_argument("--fit-chunks", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-whole", action="store_true", help="only the layer-wise pass")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from ggufkit.conversion import make_plan
    from ggufkit.plan.sensitivity import memory_needed

    plan = make_plan(args.model, "q4_k_m")
    n_params = plan.n_elements
    need = memory_needed(plan, args.ctx, args.fit_chunks)
    load = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    work = Path(tempfile.mkdtemp(prefix="ggufkit-bench-sens-"))
    rows = []
    if not args.skip_whole:   # the whole model's measured peak is 2.6x its f32 size: never run it into the OOM killer
        from ggufkit.runtime import rpc

        if rpc.local_free_bytes() < 3 * 4 * n_params + 2**30:
            print(f"whole model skipped: {rpc.local_free_bytes() / 2**30:.1f} GiB available, it needs "
                  f"~{(12 * n_params + 2**30) / 2**30:.1f}", file=sys.stderr)
            args.skip_whole = True
    for mode in ("layers",) + (() if args.skip_whole else ("whole",)):
        r = run(mode, args, work / f"{mode}.npz")
        rows.append({"variant": "layer by layer (Session)" if mode == "layers" else "whole f32 model (WholeModel)",
                     "mode": mode, **r})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    diff = None if args.skip_whole else largest_difference(work / "layers.npz", work / "whole.npz")
    for f in work.glob("*"):
        f.unlink()
    work.rmdir()
    end_load = os.getloadavg()

    f32_mib = 4 * n_params / 2**20
    print(f"{args.model.name} ({n_params / 1e9:.2f} B parameters, f32 size {f32_mib:.0f} MiB), {platform.machine()}, "
          f"{os.cpu_count()} CPUs, {started}, load average {load[0]:.1f} at the start, {end_load[0]:.1f} at the "
          f"end; Hamlet, {args.fit_chunks} chunks of {args.ctx} tokens, {args.threads} threads\n")
    print("| variant | set-up CPU s | sensitivity CPU s | guard kl CPU s | total CPU s | wall s | peak RSS MiB | "
          "RSS / f32 size | guard KL |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        ph = {p["phase"]: p for p in r["phases"]}
        print(f"| {r['variant']} | {ph['set-up']['cpu_s']} | {ph['sensitivity']['cpu_s']} | "
              f"{ph['guard kl']['cpu_s']} | {r['cpu_s']} | {r['wall_s']} | {r['peak_rss_mib']} | "
              f"{r['peak_rss_mib'] / f32_mib:.2f} | {r['kl'][0]:.6f} |")
    print(f"\nmemory_needed (layer by layer): {need / 2**20:.0f} MiB"
          + ("" if diff is None else f"; largest relative difference layer-wise vs whole: {diff:.2e}"))
    print("\n" + json.dumps({"rows": rows, "params": n_params, "load": [load, end_load], "memory_needed": need,
                             "largest_relative_difference": diff}, indent=1))


if __name__ == "__main__":
    main()
