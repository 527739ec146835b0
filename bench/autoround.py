"""AutoRound's GGUF export on CPU next to llama.cpp's imatrix route, scored against one stored BF16 reference.

    .venv/bin/python bench/autoround.py --keep DIR [--schemes q4_k_m,q3_k_m,q2_k=q2_k_s] [--iters 0]
        [--nsamples 8] [--threads 2] [--match-types] [--plain-rtn] [--batch-size N]

BENCHMARKS.md's rows: `--keep DIR --schemes q3_k_m,q2_k=q2_k_s,q4_k_m,iq4_xs` (AutoRound's presets) and
`--keep DIR2 --match-types --schemes q3_k_m,q2_k,iq4_xs` (llama.cpp's type for every tensor: the same file size);
one process per DIR at a time (the results cache is one JSON file).

The setup is bench/optimize.py's (a DIR made by `bench/optimize.py --keep DIR` is reused as it is):
  calibration  Hamlet, 8 chunks of 512 tokens: ggufkit's imatrix (for llama.cpp) and, as a JSON list of the same
               chunks' text, AutoRound's calibration set (offline; its default dataset is on the hub)
  reference    BF16, run once into a reference-logits file on held-out text (Britannica 11th edition,
               Shakespeare article, 4 chunks of 512)
  llama.cpp    llama_model_quantize (llama-cpp-python 0.3.36) on the F32 GGUF with that imatrix; its numbers
               must equal BENCHMARKS.md's "Better files at the same size" rows (printed as a check of the setup)
  AutoRound    auto-round 0.16.1 in a child process (wall and CPU seconds, peak RSS, load average sampled every
               5 s): AutoRound(demo, scheme="gguf:<fmt>", iters, nsamples, seqlen=512, device_map="cpu")
               .quantize_and_save(out, format="gguf:<fmt>"); iters 0 is its "optimised RTN" (an importance-
               weighted scale search per group, imatrix from the calibration set), iters > 0 its SignRound tuning;
               torch threads 2 with OMP_WAIT_POLICY=PASSIVE (the default spin-wait is ~8x slower on a busy CPU)
Each file is scored alone (KLD, top-1, PPL against the stored reference) and must load and answer a chat turn
in llama-cpp-python (the reply is recorded). `q2_k=q2_k_s` means "at llama.cpp Q2_K's size, AutoRound's
gguf:q2_k_s": AutoRound 0.16.1 exports q2_k_s, q3_k_s/m/l, q4_k_s/m, q5_k_s/m, q6_k and q4_0..q8_0 only (no
plain Q2_K, no IQ types, so IQ4_XS's size has no AutoRound row). A rerun with the same DIR reuses every file
and score already made. Prints a Markdown table and the rows as JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
DEMO = ROOT / "models" / "smollm2-135m-instruct"
HAMLET = ROOT / ".venv/lib/python3.11/site-packages/shksprdata/texts/hamlet_gut.txt"
# llama.cpp imatrix rows of BENCHMARKS.md (2026-12-01, same inputs): this run must reproduce them
EXPECTED_LLAMA_CPP = {"q4_k_m": (105453952, 0.04620), "q3_k_m": (93510016, 0.11553), "q2_k": (88201600, 0.35051),
                      "iq4_xs": (90897280, 0.13296)}
QUESTION = "What is the capital of France?"


def calibration_json(path: Path, n: int, ctx: int) -> Path:
    """The first n chunks of ctx tokens of Hamlet as text (the chunks ggufkit and llama.cpp calibrate on; each
    re-tokenizes to exactly ctx tokens with the demo's tokenizer, so AutoRound keeps all n)."""
    from transformers import AutoTokenizer

    from ggufkit.quant.imatrix_collect import calibration_ids

    tok = AutoTokenizer.from_pretrained(DEMO)
    chunks = calibration_ids(tok, HAMLET, ctx, n)
    texts = [tok.decode(c) for c in chunks]
    lengths = {len(tok(t.rstrip())["input_ids"]) for t in texts}
    if lengths != {ctx}:
        sys.exit(f"calibration chunks re-tokenize to {sorted(lengths)} tokens, not {ctx}: AutoRound would drop some")
    path.write_text(json.dumps(texts))
    return path


# llama.cpp tensor -> the HF module AutoRound's layer_config names (llama family)
HF_MODULE = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}
# llama.cpp's type -> AutoRound's layer_config entry for the same type (or, where AutoRound has none, the same bits
# per weight). AutoRound 0.16.1 derives a layer's GGUF type from its bits and the base format's family unless the
# entry matches none of its presets but has a super-block (then "_k"); so on a gguf:q4_0 base a preset string gives
# Q4_0/Q5_0/Q8_0, and a K-quant's own facts with act_bits 32 (no activation quantization either way; it only keeps
# the entry from matching a preset) give that K-quant -- except Q3_K, which 0.16.1 still writes as Q4_0 without a
# warning (measured on llama.cpp's Q2_K types: its file came out 4% larger). Q5_1 (2 tensors of Q3_K_M, 6.0 bpw) becomes Q5_0 (5.5);
# IQ4_NL (4.5) Q4_0 (4.5); IQ4_XS (4.25) has no equal and is split between Q4_0 and Q3_K (matched_layer_config).
SAME_BPW = {"Q4_0": "GGUF:Q4_0", "Q4_1": "GGUF:Q4_0", "Q5_0": "GGUF:Q5_0", "Q5_1": "GGUF:Q5_0", "Q8_0": "GGUF:Q8_0",
            "IQ4_NL": "GGUF:Q4_0", "IQ4_XS": "GGUF:Q4_0"}


def layer_entry(ggml_type: str):
    if ggml_type in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"):
        from auto_round.schemes import GGUF_SCHEME_FACTS

        return {**GGUF_SCHEME_FACTS[f"gguf:{ggml_type.lower()}"], "act_bits": 32}
    return SAME_BPW[ggml_type]


SPLIT_LAYERS = (6, 9, 12, 15, 18, 21, 24)  # the ffn_down llama.cpp's use_more_bits rule does not favour, spread out


def matched_layer_config(llama_cpp_file: Path, split_iq4_xs: bool = False) -> dict:
    """AutoRound's layer_config that gives each tensor llama.cpp's type (its file's size +-0.5%).
    IQ4_XS tensors (4.25 bpw) become Q4_0 (4.5): +0.9% on the demo. split_iq4_xs puts 7 of 30 ffn_down in Q3_K
    (3.44) so that the total would match -- but AutoRound 0.16.1 tunes those on Q3_K's grid and then writes them
    as Q4_0 (about 10 distinct codes per 32-block instead of 12.5): same size as without, lower quality."""
    from gguf import GGUFReader

    config = {}
    for t in GGUFReader(str(llama_cpp_file)).tensors:
        parts = t.name.split(".")
        if parts[0] == "blk" and parts[2] in HF_MODULE:
            kind = t.tensor_type.name
            if kind == "IQ4_XS" and parts[2] == "ffn_down" and split_iq4_xs and int(parts[1]) in SPLIT_LAYERS:
                kind = "Q3_K"
            config[f"model.layers.{parts[1]}.{HF_MODULE[parts[2]]}"] = layer_entry(kind)
        elif parts[0] != "blk" and t.tensor_type.name not in ("F32", "Q8_0"):  # AutoRound: tied embedding in Q8_0
            sys.exit(f"{llama_cpp_file.name}: {t.name} is {t.tensor_type.name}; AutoRound would write Q8_0")
    return config


def child(fmt: str, out_dir: Path, calib: Path, iters: int, nsamples: int, ctx: int, threads: int,
          extra: dict | None = None) -> None:
    """One AutoRound export in this process (run by the parent as a child, so its time and memory are its own)."""
    import torch

    torch.set_num_threads(threads)
    from auto_round import AutoRound

    ar = AutoRound(str(DEMO), scheme=f"gguf:{fmt}", iters=iters, nsamples=nsamples, seqlen=ctx, dataset=str(calib),
                   device_map="cpu", **(extra or {}))
    ar.quantize_and_save(str(out_dir), format=f"gguf:{fmt}")


def run_child(args, fmt: str, out_dir: Path, calib: Path, log: Path, layer_config: Path | None = None) -> dict:
    """Run child() in a niced subprocess; -> wall/CPU seconds, peak RSS, load average range."""
    cmd = ["nice", sys.executable, __file__, "--keep", str(args.keep), "--child", fmt, str(out_dir), str(calib),
           "--iters", str(args.iters), "--nsamples", str(args.nsamples), "--ctx", str(args.ctx),
           "--threads", str(args.threads)] + (["--plain-rtn"] if args.plain_rtn else []) \
        + (["--layer-config", str(layer_config)] if layer_config else []) \
        + (["--batch-size", str(args.batch_size)] if args.batch_size else []) \
        + (["--torch-compile"] if args.torch_compile else [])
    # PASSIVE: OpenMP threads sleep instead of spinning while they wait; on the 2 shared cores (load 7-20) the
    # default spin made AutoRound's scale search ~8x slower in wall and CPU time (BENCHMARKS.md)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY=args.omp_wait_policy)
    loads = [os.getloadavg()[0]]
    t = time.time()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(5)
            loads.append(os.getloadavg()[0])
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"AutoRound {fmt} failed (exit {os.waitstatus_to_exitcode(status)}): see {log}")
    return {"wall_s": round(time.time() - t, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024), "load_min": round(min(loads), 1),
            "load_max": round(max(loads), 1)}


def chat_reply(path: Path) -> str:
    """Load PATH in llama-cpp-python and answer one chat turn greedily (the file loads and generates)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False)
    try:
        out = llm.create_chat_completion([{"role": "user", "content": QUESTION}], max_tokens=24, temperature=0.0)
    finally:
        llm.close()
    return out["choices"][0]["message"]["content"].strip()


def prepare(work: Path, args):
    """bench/optimize.py's inputs: held-out text, imatrix, F32/BF16 GGUFs, reference logits (reused if present)."""
    from optimize import BRITANNICA, EVAL_CHARS, EVAL_START, reference_files

    from ggufkit.quant import imatrix as imatrix_files
    from ggufkit.quant.calibrate import calibrate

    text = work / "britannica-shakespeare.txt"
    text.write_text(BRITANNICA.read_text(encoding="utf-8", errors="replace")[EVAL_START:EVAL_START + EVAL_CHARS])
    imatrix = work / f"hamlet-{args.calibration_chunks}.imatrix.gguf"
    if imatrix.exists():
        im = imatrix_files.load(imatrix)
    else:  # layer by layer, no covariance (llama.cpp needs the imatrix only)
        im, _ = calibrate(DEMO, HAMLET, ctx=args.ctx, chunks=args.calibration_chunks, progress=False)
        im.save(imatrix)
    f32, ref, own = reference_files(work, text, args.ctx, args.chunks)
    return im, f32, ref, own


def score(path: Path, ref: Path) -> dict:
    from ggufkit.evaluate import evaluate

    r = evaluate(path, None, ref=ref)
    return {"size_bytes": path.stat().st_size, "kld": r.kld, "top1": r.top1, "ppl": r.ppl, "reply": chat_reply(path)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, required=True, help="work directory (reused by a rerun)")
    ap.add_argument("--schemes", default="q4_k_m,q3_k_m,q2_k=q2_k_s",
                    help="llama.cpp scheme[=AutoRound gguf format], comma-separated; iq4_xs: AutoRound only with --match-types")
    ap.add_argument("--iters", type=int, default=0, help="AutoRound tuning steps per layer (0: optimised RTN)")
    ap.add_argument("--nsamples", type=int, default=8, help="calibration chunks (AutoRound's and the imatrix's)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4, help="held-out chunks scored")
    ap.add_argument("--threads", type=int, default=2, help="torch threads in AutoRound's process")
    ap.add_argument("--plain-rtn", action="store_true", help="AutoRound's plain RTN (disable_opt_rtn=True)")
    ap.add_argument("--torch-compile", action="store_true",
                    help="let AutoRound torch.compile its tuning step (iters > 0: it does by default; off here, "
                         "tracing layer 0 took over 4 min of wall at load 17 here)")
    ap.add_argument("--batch-size", type=int, default=None, help="AutoRound's batch size (iters > 0; default 8)")
    ap.add_argument("--match-types", action="store_true",
                    help="AutoRound on a gguf:q4_0 base with llama.cpp's bits per tensor (same size) instead of "
                         "its own preset for the scheme")
    ap.add_argument("--split-iq4-xs", action="store_true",
                    help="--match-types at IQ4_XS: 7 ffn_down in Q3_K to keep the size (AutoRound writes them as Q4_0)")
    ap.add_argument("--layer-config", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--omp-wait-policy", default="PASSIVE", help="OMP_WAIT_POLICY of AutoRound's process")
    ap.add_argument("--child", nargs=3, metavar=("FORMAT", "OUT_DIR", "CALIB"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.calibration_chunks = args.nsamples
    if args.child:
        fmt, out_dir, calib = args.child
        extra = {"disable_opt_rtn": True} if args.plain_rtn else {}
        if args.iters > 0 and not args.torch_compile:
            extra["enable_torch_compile"] = False
        if args.batch_size:
            extra["batch_size"] = args.batch_size
        if args.layer_config:
            extra["layer_config"] = json.loads(args.layer_config.read_text())
        child(fmt, Path(out_dir), Path(calib), args.iters, args.nsamples, args.ctx, args.threads, extra)
        return

    from optimize import llama_cpp_quantize

    from ggufkit.runtime import backends

    backends.ensure()
    work = args.keep
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    im, f32, ref, own = prepare(work, args)
    print(f"reference BF16: PPL {own.ppl:.3f} over {own.tokens_scored} tokens", file=sys.stderr, flush=True)
    calib = calibration_json(work / f"autoround-calib-{args.nsamples}x{args.ctx}.json", args.nsamples, args.ctx)
    cache_file = work / "autoround-results.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}

    def save(key: str, row: dict) -> None:
        cache[key] = row
        cache_file.write_text(json.dumps(cache, indent=1))
        print(json.dumps(row), file=sys.stderr, flush=True)

    rows = []
    for item in args.schemes.split(","):
        scheme, _, fmt = item.partition("=")
        fmt = fmt or (None if scheme.startswith("iq") else scheme)
        if args.match_types:
            fmt = "q4_0"
        key = f"{scheme}/llama.cpp"
        base = work / f"demo-{scheme}-llamacpp.gguf"
        if key not in cache or not base.exists():
            llama_cpp_quantize(f32, base, scheme, im)
            save(key, {"scheme": scheme.upper(), "variant": "llama.cpp imatrix", **score(base, ref)})
        lc = cache[key]
        want = EXPECTED_LLAMA_CPP.get(scheme)
        lc["matches_benchmarks_md"] = bool(want and lc["size_bytes"] == want[0] and round(lc["kld"], 5) == want[1])
        rows.append(lc)
        if fmt is None and not args.match_types:
            continue
        name = f"{scheme}-types-on-q4_0" + ("-split" if args.split_iq4_xs else "") if args.match_types else fmt
        tag = f"autoround-{name}-iters{args.iters}-n{args.nsamples}" + ("-rtn" if args.plain_rtn else "") \
            + (f"-bs{args.batch_size}" if args.batch_size else "")
        key = f"{scheme}/{tag}"
        out_dir = work / tag
        if key not in cache:
            made = sorted(out_dir.rglob("*.gguf"))
            timing = {}
            if not made:
                print(f"AutoRound gguf:{fmt} (iters {args.iters}, {args.nsamples} x {args.ctx}) ...", file=sys.stderr,
                      flush=True)
                layer_config = None
                if args.match_types:
                    layer_config = work / f"{tag}.layer_config.json"
                    layer_config.write_text(json.dumps(matched_layer_config(base, args.split_iq4_xs), indent=0))
                timing = run_child(args, fmt, out_dir, calib, work / f"{tag}.log", layer_config)
                made = sorted(out_dir.rglob("*.gguf"))
            how = "plain RTN" if args.plain_rtn else f"iters {args.iters}" + (
                f", batch {args.batch_size}" if args.batch_size else "")
            what = f"llama.cpp's {scheme.upper()} types on gguf:q4_0" if args.match_types else f"gguf:{fmt}"
            save(key, {"scheme": scheme.upper(), "variant": f"AutoRound {what}, {how}, "
                       f"{args.nsamples} x {args.ctx} samples", "file": str(made[0]), **score(made[0], ref),
                       **timing})
        rows.append(cache[key])

    print(f"SmolLM2-135M-Instruct (demo), {datetime.date.today()}, reference BF16 PPL {own.ppl:.3f} over "
          f"{own.tokens_scored} held-out tokens; {time.time() - t0:.0f} s in all\n")
    print("| size of | variant | file bytes | vs llama.cpp size | KLD | KLD vs llama.cpp | top-1 % | PPL | wall s | "
          "CPU s | peak RSS MiB | load |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    base_of = {r["scheme"]: r for r in rows if r["variant"] == "llama.cpp imatrix"}
    for r in rows:
        b = base_of[r["scheme"]]
        load = f"{r['load_min']}-{r['load_max']}" if "load_min" in r else "-"
        print(f"| {r['scheme']} | {r['variant']} | {r['size_bytes']} | {r['size_bytes'] / b['size_bytes']:.4f} | "
              f"{r['kld']:.5f} | {r['kld'] / b['kld']:.2f}x | {100 * r['top1']:.2f} | {r['ppl']:.3f} | "
              f"{r.get('wall_s', '-')} | {r.get('cpu_s', '-')} | {r.get('peak_rss_mib', '-')} | {load} |")
    for r in rows:
        check = f" (BENCHMARKS.md: {'same' if r['matches_benchmarks_md'] else 'DIFFERENT'})" \
            if "matches_benchmarks_md" in r else ""
        print(f"- {r['scheme']} {r['variant']}{check}: {r['reply']!r}")
    print("\n" + json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
