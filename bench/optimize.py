"""Better files at the same size: ggufkit's size budget and rounding search against llama.cpp's imatrix route.

    .venv/bin/python bench/optimize.py [--schemes q2_k,q3_k_m,iq4_xs,q4_k_m] [--chunks 8] [--keep DIR]

On models/smollm2-135m-instruct, with one importance matrix computed by ggufkit from Hamlet (calibration):
  reference  BF16, run once into a reference-logits file (ggufkit.reflogits) on held-out text (the Britannica
             11th edition's Shakespeare article, as bench/quality.py), chunks of 512
  llama.cpp  per scheme: llama_model_quantize (llama-cpp-python 0.3.36) on the F32 GGUF with that imatrix
  budget     ggufkit convert --target-size <llama.cpp's file size> with the same imatrix
  budget+opt the same with --optimize (Q4_K/Q5_K scale search)
  scheme+opt the scheme's own types with --optimize (the rounding search alone)
  *-gptq     the same with --optimize gptq (search + GPTQ-style error feedback from the calibration covariance)
  *-feedback the same with --optimize feedback (error feedback alone, on llama.cpp's block scales)
  blind      (--variants ...,blind,blind-opt) budgets without Q4_1/Q5_1, the types that re-fit the demo's grid
  autoround  AutoRound's GGUF export on CPU (auto-round from PyPI, bench/autoround.py's child process): its
             optimised RTN (iters 0) on the same calibration chunks, with llama.cpp's type for every tensor
             (bench/autoround.py --match-types: AutoRound's layer_config on a gguf:q4_0 base), so the file has
             llama.cpp's size where AutoRound can write llama.cpp's types (the size column says where it cannot);
             a failed export is a row with AutoRound's error
Each candidate is scored alone against the stored reference: KLD, top-1 agreement, PPL. Prints a Markdown table
(machine, date, load) and the raw numbers as JSON. The whole issue-16 table (ggufkit's three stages beside
llama.cpp and AutoRound at the four sizes):
    bench/optimize.py --keep DIR --halves --calibration-chunks 8 --chunks 4 \
        --variants blind,blind-opt,blind-gptq,autoround
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
# not bench/ itself: bench/kernels.py would shadow the `kernels` package transformers probes for
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import numpy as np

DEMO = ROOT / "models" / "smollm2-135m-instruct"
DATA = ROOT / ".venv/lib/python3.11/site-packages/shksprdata"
BRITANNICA = DATA / "ancillary" / "britannica-11th.txt"
HAMLET = DATA / "texts" / "hamlet_gut.txt"
EVAL_START, EVAL_CHARS = 40_000, 120_000


def llama_cpp_quantize(src: Path, out: Path, scheme: str, imatrix) -> Path:
    """llama_model_quantize with the imatrix's per-column weights (what llama-quantize --imatrix passes)."""
    import llama_cpp

    from ggufkit.plan.schemes import get_scheme

    weights = {name: imatrix.column_weights(name) for name in imatrix.entries}
    keep = [np.ascontiguousarray(v, dtype=np.float32) for v in weights.values()]
    names = [k.encode() for k in weights]
    entries = (llama_cpp.llama_model_imatrix_data * (len(keep) + 1))()
    for i, (name, arr) in enumerate(zip(names, keep)):
        entries[i].name = name
        entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = arr.size
    entries[len(keep)].name = None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(get_scheme(scheme).file_type)
    params.nthread = 2
    params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc})")
    return out


# variant key -> (label, size budget?, --optimize? (True = search, "gptq" = search + error feedback), types excluded)
VARIANTS = {
    "budget": ("ggufkit budget", True, False, ()),
    "budget-opt": ("ggufkit budget + optimize", True, True, ()),
    "scheme-opt": ("ggufkit scheme + optimize", False, True, ()),
    "budget-gptq": ("ggufkit budget + optimize gptq", True, "gptq", ()),
    "scheme-gptq": ("ggufkit scheme + optimize gptq", False, "gptq", ()),
    # without the two affine 32-blocks types that can re-fit the demo's Q4_1 grid almost exactly
    "blind": ("ggufkit budget, no Q4_1/Q5_1", True, False, ("Q4_1", "Q5_1")),
    "blind-opt": ("ggufkit budget + optimize, no Q4_1/Q5_1", True, True, ("Q4_1", "Q5_1")),
    "blind-gptq": ("ggufkit budget + optimize gptq, no Q4_1/Q5_1", True, "gptq", ("Q4_1", "Q5_1")),
    # error feedback alone (llama.cpp's scales in every block; no numpy scale search: minutes, not an hour)
    "budget-feedback": ("ggufkit budget + optimize feedback", True, "feedback", ()),
    "scheme-feedback": ("ggufkit scheme + optimize feedback", False, "feedback", ()),
    "blind-feedback": ("ggufkit budget + optimize feedback, no Q4_1/Q5_1", True, "feedback", ("Q4_1", "Q5_1")),
}
STATS = None  # ggufkit.quant.calibrate.Statistics of the calibration text (or its halves), for the gptq variants
SESSION = None  # ggufkit.plan.sensitivity.Session on Hamlet: one Fisher pass and guard model for every budget
CALIBRATION_CHUNKS = 8  # --calibration-chunks: the guard scores the chunk after them
ERROR_MODEL = None  # --error-model (None: "fisher", the measured sensitivities and the guard; or a budget model)


def ggufkit_convert(out: Path, scheme: str, imatrix, target: int | None, optimize,
                    exclude: tuple[str, ...] = ()) -> tuple[Path, dict]:
    from ggufkit.conversion import load_imatrix, make_plan, run
    from ggufkit.plan import budget as budgets
    from ggufkit.quant import gptq, rounding

    plan = make_plan(DEMO, scheme, imatrix)
    if optimize in ("gptq", "feedback"):
        gptq.enable(plan, STATS, search=optimize == "gptq")
    elif optimize:
        rounding.enable(plan)
    info = {}
    if target is not None:
        types = tuple(t for t in budgets.CANDIDATES if t.name not in exclude)
        budget = budgets.parse_budget(target_size=target)
        if ERROR_MODEL in (None, "fisher"):  # measured sensitivities + the held-out guard (what convert does)
            a, guard = budgets.allocate_calibrated(plan, budget, load_imatrix(imatrix), DEMO, HAMLET, 512,
                                                   held_out=CALIBRATION_CHUNKS, types=types, session=SESSION)
            info["guard"] = guard
        else:
            a = budgets.allocate_plan(plan, budget, load_imatrix(imatrix), types=types, model=ERROR_MODEL)
        counts: dict[str, int] = {}
        for r in a.rows:
            counts[r["type"]] = counts.get(r["type"], 0) + 1
        info.update({"predicted_error": a.predicted_error, "scheme_predicted_error": a.scheme_error, "mix": counts})
    run(plan, out, imatrix=load_imatrix(imatrix))
    choices = getattr(plan.refine, "choices", None)
    if choices:  # per-tensor held-out choice: how many tensors took which damping (None: no feedback)
        taken: dict[str, int] = {}
        for damp, _ in choices.values():
            taken[str(damp)] = taken.get(str(damp), 0) + 1
        info["feedback_damping"] = taken
    return out, info


def autoround_file(work: Path, scheme: str, base: Path, ctx: int, chunks: int) -> tuple[Path | None, dict]:
    """AutoRound's export at llama.cpp's types for SCHEME (bench/autoround.py --match-types, iters 0, CHUNKS x CTX
    Hamlet tokens: the imatrix's chunks), in a niced child process. -> (the GGUF, timing) or (None, {"error"})."""
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("bench_autoround", ROOT / "bench" / "autoround.py")
    ar = importlib.util.module_from_spec(spec)
    path_before = list(sys.path)
    spec.loader.exec_module(ar)
    sys.path[:] = path_before  # it puts bench/ first (see the top of this file)
    tag = f"autoround-{scheme}-types-on-q4_0-iters0-n{chunks}"
    out_dir = work / tag
    made = sorted(out_dir.rglob("*.gguf"))
    if made:
        return made[0], {}
    calib = ar.calibration_json(work / f"autoround-calib-{chunks}x{ctx}.json", chunks, ctx)
    layer_config = work / f"{tag}.layer_config.json"
    log = work / f"{tag}.log"
    try:
        layer_config.write_text(json.dumps(ar.matched_layer_config(base), indent=0))
        args = SimpleNamespace(keep=work, iters=0, nsamples=chunks, ctx=ctx, threads=2, plain_rtn=False,
                               batch_size=None, torch_compile=False, omp_wait_policy="PASSIVE")
        timing = ar.run_child(args, "q4_0", out_dir, calib, log, layer_config)
    except SystemExit as e:  # matched_layer_config / run_child exit with the reason
        tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.exists() else []
        return None, {"error": f"{e.code}; " + " | ".join(tail)}
    made = sorted(out_dir.rglob("*.gguf"))
    if not made:
        return None, {"error": f"AutoRound wrote no GGUF into {out_dir} (log {log})", **timing}
    return made[0], timing


def reference_files(work: Path, text: Path, ctx: int, chunks: int):
    """The demo's F32 and BF16 GGUFs and the BF16 reference logits on `text`, in `work` (reused if present).
    -> (F32 path, reference-logits path, the reference's own EvalResult)."""
    from ggufkit.conversion import convert
    from ggufkit.evaluate import EvalResult
    from ggufkit.reflogits import save_reference

    f32, bf16 = work / "demo-F32.gguf", work / "demo-BF16.gguf"
    for path, scheme in ((f32, "f32"), (bf16, "bf16")):
        if not path.exists():
            convert(DEMO, path, scheme=scheme, quiet=True)
    ref = work / f"demo-BF16-{chunks}x{ctx}.ref-logits"
    own_file = ref.with_suffix(".json")
    if ref.exists() and own_file.exists():
        own = EvalResult(**json.loads(own_file.read_text()))
    else:
        own = save_reference(bf16, text, ref, ctx=ctx, chunks=chunks)
        own_file.write_text(json.dumps(own.as_dict()))
    return f32, ref, own


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--schemes", default="q2_k,q3_k_m,iq4_xs,q4_k_m")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--calibration-chunks", type=int, default=16)
    ap.add_argument("--keep", type=Path, default=None)
    ap.add_argument("--halves", action="store_true",
                    help="calibrate in two halves (the error feedback's per-tensor choice on held-out chunks)")
    ap.add_argument("--score-only", action="store_true",
                    help="make no new file: print the rows DIR already has (cached or files left), the rest as not run")
    ap.add_argument("--error-model", default=None, help="the size budget's error model (budget.ERROR_MODEL)")
    ap.add_argument("--variants", default="budget,budget-opt,scheme-opt",
                    help=f"ggufkit variants, from {', '.join(VARIANTS)}, and autoround")
    args = ap.parse_args()

    from ggufkit.evaluate import evaluate
    from ggufkit.quant import imatrix as imatrix_files
    from ggufkit.quant.calibrate import Statistics, calibrate
    from ggufkit.quant.holdout import HalfStatistics, calibrate_halves
    from ggufkit.runtime import backends

    backends.ensure()
    work = args.keep or Path(tempfile.mkdtemp(prefix="ggufkit-bench-opt-"))
    work.mkdir(parents=True, exist_ok=True)
    text = work / "britannica-shakespeare.txt"
    text.write_text(BRITANNICA.read_text(encoding="utf-8", errors="replace")[EVAL_START:EVAL_START + EVAL_CHARS])
    t0 = time.time()
    try:
        global STATS, ERROR_MODEL, SESSION, CALIBRATION_CHUNKS
        ERROR_MODEL = args.error_model
        CALIBRATION_CHUNKS = args.calibration_chunks
        budgeted = not args.score_only and any(VARIANTS[k][1] for k in args.variants.split(",") if k in VARIANTS)
        if ERROR_MODEL in (None, "fisher") and budgeted:
            from ggufkit.plan import budget as budgets
            from ggufkit.plan.sensitivity import Session

            t_s = time.time()
            SESSION = Session(DEMO, HAMLET, ctx=args.ctx, fit_chunks=budgets.SENSITIVITY_CHUNKS,
                              held_out=args.calibration_chunks, threads=2)
            SESSION.sensitivity()
            print(f"sensitivity: {time.time() - t_s:.0f} s", file=sys.stderr, flush=True)
        if args.halves:  # two halves of the chunks: feedback is chosen per tensor on the held-out half
            imatrix = work / f"hamlet-{args.calibration_chunks}-halves.imatrix.gguf"
            stats_dir = work / f"hamlet-{args.calibration_chunks}-halves.statistics"
            if imatrix.exists() and (stats_dir / "b" / "statistics.json").exists():
                im = imatrix_files.load(imatrix)
                STATS = HalfStatistics(Statistics.load(stats_dir / "a"), Statistics.load(stats_dir / "b"))
            else:
                im, STATS = calibrate_halves(DEMO, HAMLET, ctx=args.ctx, chunks=args.calibration_chunks,
                                             progress=False, stats_dir=stats_dir)
                im.save(imatrix)
        else:
            imatrix = work / f"hamlet-{args.calibration_chunks}.imatrix.gguf"
            stats_dir = work / f"hamlet-{args.calibration_chunks}.statistics"
            if imatrix.exists() and (stats_dir / "statistics.json").exists():  # --keep DIR: a rerun reuses them
                im, STATS = imatrix_files.load(imatrix), Statistics.load(stats_dir)
            else:  # layer by layer: the same imatrix as the whole-model collector (tests/test_calibrate.py)
                im, STATS = calibrate(DEMO, HAMLET, ctx=args.ctx, chunks=args.calibration_chunks, progress=False,
                                      stats_dir=stats_dir)
                im.save(imatrix)
        f32, ref, own = reference_files(work, text, args.ctx, args.chunks)
        print(f"reference BF16: PPL {own.ppl:.3f} over {own.tokens_scored} tokens", file=sys.stderr)
        rows = []
        cache_file = work / "results.json"  # --keep DIR: rows already measured are not measured again
        cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}

        def save(key: str, row: dict) -> None:  # merged into the file as it is now (another run may share DIR)
            cache[key] = row
            now = json.loads(cache_file.read_text()) if cache_file.exists() else {}
            now[key] = row
            tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}")
            tmp.write_text(json.dumps(now, indent=1))
            tmp.replace(cache_file)

        loads = [os.getloadavg()[0]]
        for scheme in args.schemes.split(","):
            base = work / f"demo-{scheme}-llamacpp.gguf"
            if not base.exists():  # DIR's imatrix is the one it was made with
                llama_cpp_quantize(f32, base, scheme, im)
            size = base.stat().st_size
            variants = [("llama.cpp", "llama.cpp imatrix", base, {})]
            for key in filter(None, args.variants.split(",")):
                if key == "autoround":
                    label = "AutoRound, llama.cpp's types, iters 0 (CPU)"
                else:
                    label, budgeted, opt, exclude = VARIANTS[key]
                path = work / f"demo-{scheme}-{key}.gguf"
                if f"{scheme}/{key}" in cache:  # measured in an earlier run with --keep (its file deleted)
                    variants.append((key, label, path, None))
                    continue
                if key != "autoround" and path.exists():  # made by an interrupted run (the writer renames a
                    from gguf import GGUFReader  # complete file only): scored as it is, its mix read back

                    mix: dict[str, int] = {}
                    for t in GGUFReader(str(path)).tensors:
                        if t.tensor_type.name != "F32":
                            mix[t.tensor_type.name] = mix.get(t.tensor_type.name, 0) + 1
                    variants.append((key, label, path, {"file_from_earlier_run": True, "mix": mix}))
                    continue
                if args.score_only:
                    variants.append((key, label, None, {"error": "not run (--score-only)"}))
                    continue
                if key == "autoround":
                    path, info = autoround_file(work, scheme, base, args.ctx, args.calibration_chunks)
                    if path is None:  # the error is a row (cached: AutoRound is not run again)
                        save(f"{scheme}/{key}", {"scheme": scheme.upper(), "variant": label, **info})
                else:
                    path, info = ggufkit_convert(path, scheme, imatrix, size if budgeted else None, opt, exclude)
                loads.append(os.getloadavg()[0])
                variants.append((key, label, path, info))
            for key, label, path, info in variants:
                if info is None or (key == "llama.cpp" and f"{scheme}/{key}" in cache) or path is None:
                    rows.append(cache.get(f"{scheme}/{key}") or {"scheme": scheme.upper(), "variant": label, **info})
                    continue
                t = time.time()
                r = evaluate(path, None, ref=ref)
                row = {"scheme": scheme.upper(), "variant": label, "size_bytes": path.stat().st_size,
                       "size_vs_llama_cpp": path.stat().st_size / size, "kld": r.kld, "top1": r.top1, "ppl": r.ppl,
                       "eval_s": round(time.time() - t, 1), **info}
                rows.append(row)
                if key != "llama.cpp":  # ~100 MB each: deleted once scored (the llama.cpp file sets the sizes)
                    path.unlink()
                save(f"{scheme}/{key}", row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    base_of = {r["scheme"]: r for r in rows if r["variant"] == "llama.cpp imatrix"}
    print(f"SmolLM2-135M-Instruct (demo), {platform.machine()}, {platform.processor() or ''} {os.cpu_count()} CPUs, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, load average "
          f"{min(loads):.1f}-{max(loads):.1f}; reference BF16 PPL {own.ppl:.3f}, {own.tokens_scored} tokens of held-out "
          f"text ({args.chunks} chunks of {args.ctx}), imatrix from Hamlet ({args.calibration_chunks} chunks); "
          f"{time.time() - t0:.0f} s in all (rows from an earlier run with --keep are reused)\n")
    print("| size of | variant | file bytes | size vs llama.cpp | KLD | KLD vs llama.cpp | top-1 % | top-1 vs "
          "llama.cpp | PPL |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        b = base_of[r["scheme"]]
        if "kld" not in r:
            why = r.get("error", "?")
            print(f"| {r['scheme']} | {r['variant']} | {why if why.startswith('not run') else 'failed: ' + why} "
                  "| | | | | | |")
            continue
        diff = 100 * (r["size_bytes"] / b["size_bytes"] - 1)
        flag = "" if abs(diff) <= 0.5 else " (outside +-0.5%)"
        top = "" if r is b else f"{100 * (r['top1'] - b['top1']):+.2f}"
        print(f"| {r['scheme']} | {r['variant']} | {r['size_bytes']} | {diff:+.3f}%{flag} | {r['kld']:.5f} | "
              f"{r['kld'] / b['kld']:.3f}x | {100 * r['top1']:.2f} | {top} | {r['ppl']:.3f} |")
    print("\n" + json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
