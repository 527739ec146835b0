"""Does the size budget's error model rank type mixes as their measured KLD does?

    .venv/bin/python bench/error_model.py --work DIR [--schemes q3_k_m,q2_k] [--chunks 4]

For each scheme's llama.cpp file size (llama_model_quantize with the imatrix, as bench/optimize.py), without the
demo's grid-matching Q4_1/Q5_1: the tensors' errors are measured once (ggufkit.plan.budget.measure), then mixes
are allocated under several error models (the "relative" model, the "residual" one, and blends of the two with
each tensor's error err = (1 - a) rel / sum(rel of the scheme) + a res / sum(res of the scheme)), plus the
scheme's own types; every mix is written (no --optimize: llama.cpp's rounding) and scored against the stored BF16
reference. Prints, per model, the predicted error of every mix and Spearman's rank correlation with the KLD.
DIR holds bench/optimize.py's --keep files (hamlet-8.imatrix.gguf, demo-F32.gguf, the reference logits of
--chunks chunks): run `bench/optimize.py --keep DIR --calibration-chunks 8` once first.

    .venv/bin/python bench/error_model.py --work DIR --swap --schemes q4_k_m [--model stream]

--swap: which tensors' choices cost an allocation against llama.cpp's mix. A = the mix --model allocates at the
scheme's llama.cpp file size (no Q4_1/Q5_1), L = llama.cpp's types; for each group of tensors (the embedding,
attn_v, attn_output, q/k, gate/up, ffn_down, layers 0-9 / 10-19 / 20-29) the mixes "A with L's group" and "L
with A's group" are written and scored, next to what the stream model and the measured-sensitivity model
("fisher": ggufkit.plan.sensitivity on 2 Hamlet chunks) predict for them; Spearman's rank correlation of each
model with the KLD over all mixes.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import numpy as np

DEMO = ROOT / "models" / "smollm2-135m-instruct"


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _optimize():
    """bench/optimize.py as a module (its llama.cpp route and calibration text)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import optimize

    sys.path.pop(0)
    return optimize


class Work:
    """What both modes share: the --work files, the imatrix, the reference logits and the candidate types."""

    def __init__(self, args) -> None:
        from ggufkit.conversion import load_imatrix
        from ggufkit.plan import budget as B
        from ggufkit.quant import imatrix as imatrix_files
        from ggufkit.runtime import backends

        backends.ensure()
        self.work = args.work
        self.im_path = self.work / "hamlet-8.imatrix.gguf"
        self.im = imatrix_files.load(self.im_path)
        self.lookup = load_imatrix(self.im)
        self.ref = self.work / f"demo-BF16-{args.chunks}x512.ref-logits"
        self.types = tuple(t for t in B.CANDIDATES if t.name not in ("Q4_1", "Q5_1"))

    def llama_cpp_size(self, scheme: str) -> int:
        """The size of llama_model_quantize's file of the scheme with the imatrix (written once, kept in --work)."""
        base = self.work / f"demo-{scheme}-llamacpp.gguf"
        if not base.exists():
            _optimize().llama_cpp_quantize(self.work / "demo-F32.gguf", base, scheme, self.im)
        return base.stat().st_size

    def score(self, scheme: str, mix: dict, stem: str) -> dict:
        """Write the demo with the mix's type per tensor (llama.cpp's rounding) and score it against the reference."""
        from ggufkit.conversion import make_plan, run
        from ggufkit.evaluate import evaluate
        from ggufkit.output.writer import tensor_nbytes

        plan = make_plan(DEMO, scheme, self.im_path)
        plan.tensors[:] = [type(p)(p.tensor, mix[p.tensor.name], tensor_nbytes(p.tensor.shape, mix[p.tensor.name]))
                           for p in plan.tensors]
        out = self.work / f"{stem}.gguf"
        run(plan, out, imatrix=self.lookup)
        r = evaluate(out, None, ref=self.ref)
        row = {"bytes": out.stat().st_size, "kld": r.kld, "top1": r.top1}
        out.unlink()
        return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--schemes", default="q3_k_m,q2_k")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--blends", default="0.25,0.5,0.75")
    ap.add_argument("--swap", action="store_true", help="group swaps between an allocation and llama.cpp's mix")
    ap.add_argument("--model", default="stream", help="with --swap: the error model that allocates A")
    args = ap.parse_args()
    if args.swap:
        return swap(args)

    from ggufkit.conversion import make_plan
    from ggufkit.plan import budget as B

    w = Work(args)
    work, im_path, lookup, types = w.work, w.im_path, w.lookup, w.types
    results = {}
    cache_file = work / "error_model_cache.json"  # scheme/mix -> measured KLD: a rerun measures only new mixes
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    for scheme in args.schemes.split(","):
        size = w.llama_cpp_size(scheme)
        plan = make_plan(DEMO, scheme, im_path)
        measured = B.measure(plan, lookup, types)
        names = {p.tensor.name for p in plan.tensors}
        models = {k: B.errors(measured, names, k) for k in ("relative", "residual", "stream")}
        scheme_types = {p.tensor.name: p.qtype for p in plan.tensors}
        norm = {k: sum(v[n][scheme_types[n]] for n in v) for k, v in models.items()}
        for a in map(float, args.blends.split(",")):
            models[f"blend {a}"] = {n: {q: (1 - a) * models["relative"][n][q] / norm["relative"]
                                        + a * models["residual"][n][q] / norm["residual"]
                                        for q in models["relative"][n]} for n in models["relative"]}
        for f in (0.3, 3.0):  # the output role's weight against the block terms, off by a factor
            models[f"residual, output x{f}"] = {n: {q: e * (f if n in ("token_embd.weight", "output.weight") else 1)
                                                    for q, e in v.items()} for n, v in models["residual"].items()}
        mixes = {"scheme (llama.cpp's types)": scheme_types}
        for key, errs in models.items():
            p2 = make_plan(DEMO, scheme, im_path)
            B.allocate_plan(p2, B.parse_budget(target_size=size), lookup, types=types, model=errs,
                            measured=measured)
            mixes[f"allocated: {key}"] = {p.tensor.name: p.qtype for p in p2.tensors}
        rows = []
        for label, mix in mixes.items():
            pred = {k: sum(errs[n][mix[n]] for n in errs) for k, errs in models.items()}
            if f"{scheme}/{label}" in cache:  # measured by an earlier run (same mix: the allocation is deterministic)
                rows.append({**cache[f"{scheme}/{label}"], "predicted": pred})
                continue
            row = {"scheme": scheme, "mix": label, **w.score(scheme, mix, f"mix-{scheme}"), "predicted": pred}
            cache[f"{scheme}/{label}"] = {k: row[k] for k in ("scheme", "mix", "bytes", "kld", "top1")}
            cache_file.write_text(json.dumps(cache, indent=1))
            print(json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
        results[scheme] = rows
        klds = [r["kld"] for r in rows]
        print(f"\n{scheme.upper()} at {size} bytes, no Q4_1/Q5_1")
        print("| mix | file bytes | KLD | top-1 % | " + " | ".join(f"pred. {k}" for k in models) + " |")
        print("| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in models) + " |")
        for r in rows:
            print(f"| {r['mix']} | {r['bytes']} | {r['kld']:.5f} | {100 * r['top1']:.2f} | "
                  + " | ".join(f"{r['predicted'][k]:.4g}" for k in models) + " |")
        print("| Spearman vs KLD | | | | " + " | ".join(
            f"{spearman([r['predicted'][k] for r in rows], klds):.2f}" for k in models) + " |")
    (work / "error_model.json").write_text(json.dumps(results, indent=1))


def _group(name: str) -> str | None:
    """The tensor groups --swap moves between the two mixes (None: not quantized, or no group)."""
    if name == "token_embd.weight":
        return "embedding"
    m = re.fullmatch(r"blk\.\d+\.(\w+)\.weight", name)
    if m is None or m.group(1).endswith("norm"):
        return None
    return {"attn_q": "q/k", "attn_k": "q/k", "ffn_gate": "gate/up", "ffn_up": "gate/up"}.get(m.group(1), m.group(1))


def _layers(name: str) -> str | None:
    m = re.match(r"blk\.(\d+)\.", name)
    return None if m is None or _group(name) is None else f"layers {10 * (int(m.group(1)) // 10)}-"


def swap(args) -> None:
    from ggufkit.conversion import make_plan
    from ggufkit.plan import budget as B
    from ggufkit.plan.sensitivity import Session

    w = Work(args)
    work, im_path, lookup, types = w.work, w.im_path, w.lookup, w.types
    sens = Session(DEMO, _optimize().HAMLET, ctx=512, fit_chunks=B.SENSITIVITY_CHUNKS, held_out=8, threads=2).sensitivity()
    for scheme in args.schemes.split(","):
        size = w.llama_cpp_size(scheme)
        plan = make_plan(DEMO, scheme, im_path)
        measured = B.measure(plan, lookup, types, sensitivity=sens)
        names = {p.tensor.name for p in plan.tensors}
        models = {"stream": B.errors(measured, names, "stream"), "fisher": B.fisher_errors(measured, names, sens)}
        L = {p.tensor.name: p.qtype for p in plan.tensors}
        p2 = make_plan(DEMO, scheme, im_path)
        B.allocate_plan(p2, B.parse_budget(target_size=size), lookup, types=types, model=models[args.model],
                        measured=measured)
        A = {p.tensor.name: p.qtype for p in p2.tensors}
        mixes = {"A": A, "L": L}
        for g in [*dict.fromkeys(filter(None, map(_group, A))), *dict.fromkeys(filter(None, map(_layers, A)))]:
            inside = [n for n in A if g in (_group(n), _layers(n))]
            if all(A[n] == L[n] for n in inside):
                continue
            mixes[f"A with L's {g}"] = {n: L[n] if n in inside else A[n] for n in A}
            mixes[f"L with A's {g}"] = {n: A[n] if n in inside else L[n] for n in A}
        cache_file = work / f"swap_cache-{scheme}-{args.model}.json"
        cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
        rows = []
        for label, mix in mixes.items():
            pred = {k: sum(e[n][mix[n]] for n in e) for k, e in models.items()}
            if label not in cache:
                cache[label] = w.score(scheme, mix, f"swap-{scheme}")
                cache_file.write_text(json.dumps(cache, indent=1))
            rows.append({"mix": label, **cache[label], "predicted": pred})
        klds = [r["kld"] for r in rows]
        print(f"\n{scheme.upper()} at {size} bytes, no Q4_1/Q5_1; A = allocated by {args.model}, L = llama.cpp's")
        print("| mix | file bytes | KLD | top-1 % | pred. stream | pred. fisher (KL) |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for r in rows:
            print(f"| {r['mix']} | {r['bytes']} | {r['kld']:.5f} | {100 * r['top1']:.2f} | "
                  f"{r['predicted']['stream']:.5f} | {r['predicted']['fisher']:.5f} |")
        print("| Spearman vs KLD | | | | " + " | ".join(
            f"{spearman([r['predicted'][k] for r in rows], klds):.2f}" for k in models) + " |")


if __name__ == "__main__":
    main()
