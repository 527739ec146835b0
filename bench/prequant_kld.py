"""The lossless path against llama.cpp's dequantize-then-requantize route, at the same file size (issue 15).

    python bench/prequant_kld.py [--chunks 8] [--ctx 512] [--keep DIR]

For each pre-quantized checkpoint of the demo model (made by compressed-tensors itself, the recipes of
tests/prequant_fixtures.py: int4 symmetric g32 f16 scales -> Q4_0, int4 asymmetric g64 bf16 scales -> Q4_1; a
GPTQ file holding the same grid converts to the same bytes, tests/test_prequant_gptq.py):
  reference  ggufkit's F32 conversion: the library's own dequantized weights, exactly (the source model)
  source     `ggufkit convert --scheme source`: the 4-bit groups copied into Q4_0 / Q4_1 blocks, the rest Q8_0
  llama.cpp  llama.cpp's own route: its converter (convert_hf_to_gguf.py from the llama-cpp-python sdist)
             dequantizes to F16, then llama_model_quantize at the same ftype (Q4_0 / Q4_1) with the token
             embedding at Q8_0 as in `source` (so both files have the same tensor types and size)
and the compressed-tensors NVFP4A16 checkpoint (tests/prequant_fixtures.ct_nvfp4_checkpoint):
  source     NVFP4 blocks + a `.scale` companion per tensor (the grid bit for bit), the rest Q8_0
  requantize llama.cpp's quantizer on the dequantized values: llama_model_quantize of ggufkit's F32 file to Q4_0
             (the same bytes per weight as NVFP4: 18/32 = 36/64), token embedding Q8_0
  llama.cpp  llama.cpp's own converter, which repacks NVFP4 itself (its bytes are compared with ggufkit's)
Both files are scored against the reference's logits (ggufkit.evaluate: KLD, top-1, PPL) on a stretch of the
Britannica text that bench/quality.py uses. Prints Markdown for BENCHMARKS.md (machine, date, load) and JSON.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "models"))

LLAMA_CPP = Path("/work/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp")
VARIANTS = {"int4 sym g32 (f16 scales)": ((4, True, 32, "float16"), "q4_0"),
            "int4 asym g64 (bf16 scales)": ((4, False, 64, "bfloat16"), "q4_1")}


def llama_cpp_route(src: Path, out: Path, scheme: str, work: Path, llama_cpp_dir: Path) -> Path:
    """llama.cpp's converter to F16, then llama_model_quantize to `scheme` with a Q8_0 token embedding."""
    import llama_cpp
    from gguf import GGMLQuantizationType as QT

    from ggufkit.plan.schemes import get_scheme

    f16 = work / f"{src.name}-llamacpp-f16.gguf"
    env = dict(os.environ, PYTHONPATH=str(llama_cpp_dir / "gguf-py"))
    subprocess.run([sys.executable, str(llama_cpp_dir / "convert_hf_to_gguf.py"), str(src), "--outtype", "f16",
                    "--outfile", str(f16)], check=True, env=env, stdout=subprocess.DEVNULL)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(get_scheme(scheme).file_type)
    params.nthread = 2
    params.token_embedding_type = int(QT.Q8_0)
    params.output_tensor_type = int(QT.Q8_0)
    rc = llama_cpp.llama_model_quantize(str(f16).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize failed ({rc})")
    f16.unlink()
    return out


def requantize(src_gguf: Path, out: Path, scheme: str) -> Path:
    """llama_model_quantize of a GGUF file (ggufkit's F32 conversion) to `scheme`, token embedding Q8_0."""
    import llama_cpp
    from gguf import GGMLQuantizationType as QT

    from ggufkit.plan.schemes import get_scheme

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(get_scheme(scheme).file_type)
    params.nthread = 2
    params.token_embedding_type = int(QT.Q8_0)
    params.output_tensor_type = int(QT.Q8_0)
    if llama_cpp.llama_model_quantize(str(src_gguf).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError("llama_model_quantize failed")
    return out


def nvfp4_rows(demo: Path, keep: Path, work: Path, text: Path, args) -> list[dict]:
    from gguf import GGUFReader
    from prequant_fixtures import ct_nvfp4_checkpoint

    from ggufkit.conversion import convert
    from ggufkit.evaluate import evaluate
    from ggufkit.reflogits import save_reference

    src = ct_nvfp4_checkpoint(demo)
    ref_gguf = convert(src, keep / f"{src.name}-f32.gguf", scheme="f32", quiet=True)
    ref = keep / f"{src.name}-ref-logits.gguf"
    save_reference(ref_gguf, text, ref, ctx=args.ctx, chunks=args.chunks)
    ours = convert(src, keep / f"{src.name}-source.gguf", scheme="source", quiet=True)
    theirs = requantize(ref_gguf, keep / f"{src.name}-requant-q4_0.gguf", "q4_0")
    f16 = keep / f"{src.name}-llamacpp-converter.gguf"
    env = dict(os.environ, PYTHONPATH=str(args.llama_cpp / "gguf-py"))
    subprocess.run([sys.executable, str(args.llama_cpp / "convert_hf_to_gguf.py"), str(src), "--outtype", "f16",
                    "--outfile", str(f16)], check=True, env=env, stdout=subprocess.DEVNULL)
    mine = {t.name: bytes(t.data) for t in GGUFReader(str(ours)).tensors if t.tensor_type.name == "NVFP4"}
    conv = {t.name: bytes(t.data) for t in GGUFReader(str(f16)).tensors if t.tensor_type.name == "NVFP4"}
    same = sorted(mine) == sorted(conv) and all(mine[n] == conv[n] for n in mine)
    print(f"NVFP4 tensors: ggufkit {len(mine)}, llama.cpp's converter {len(conv)}, same bytes: {same}",
          file=sys.stderr)
    rows = []
    for route, path in (("ggufkit --scheme source (NVFP4 + .scale, lossless)", ours),
                        ("ggufkit F32 -> llama-quantize Q4_0 (dequantize, requantize)", theirs),
                        ("llama.cpp converter (its NVFP4 repack, F16 rest)", f16)):
        r = evaluate(path, None, ref=ref)
        row = {"source": "compressed-tensors nvfp4 (NVFP4A16)", "route": route, "bytes": path.stat().st_size,
               "same_tensor_types": route.startswith("llama.cpp") and same, "kld": r.kld, "top1": r.top1,
               "ppl": r.ppl, "tokens": r.tokens_scored}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def tensor_types(path: Path) -> dict[str, str]:
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--keep", type=Path, default=None, help="keep the GGUF files here")
    ap.add_argument("--llama-cpp", type=Path, default=LLAMA_CPP, help="llama.cpp source tree (its converter)")
    ap.add_argument("--only", choices=["int4", "nvfp4"], default=None, help="run one family of variants")
    args = ap.parse_args()
    from prequant_fixtures import ct_packed_checkpoint
    from quality import BRITANNICA, EVAL_CHARS, EVAL_START, machine

    from ggufkit.conversion import convert
    from ggufkit.evaluate import evaluate
    from ggufkit.reflogits import save_reference

    info = machine()
    demo = (ROOT / "models" / "smollm2-135m-instruct").resolve()
    work = Path(tempfile.mkdtemp(prefix="ggufkit-prequant-kld-"))
    keep = args.keep or work
    keep.mkdir(parents=True, exist_ok=True)
    text = work / "britannica-eval.txt"
    text.write_text(BRITANNICA.read_text(encoding="utf-8")[EVAL_START:EVAL_START + EVAL_CHARS], encoding="utf-8")
    start = time.perf_counter()
    rows = []
    for label, (grid, scheme) in (VARIANTS if args.only != "nvfp4" else {}).items():
        src = ct_packed_checkpoint(demo, *grid)
        ref_gguf = convert(src, keep / f"{src.name}-f32.gguf", scheme="f32", quiet=True)
        ref = keep / f"{src.name}-ref-logits.gguf"
        save_reference(ref_gguf, text, ref, ctx=args.ctx, chunks=args.chunks)
        ours = convert(src, keep / f"{src.name}-source.gguf", scheme="source", quiet=True)
        theirs = llama_cpp_route(src, keep / f"{src.name}-llamacpp-{scheme}.gguf", scheme, work, args.llama_cpp)
        same_types = tensor_types(ours) == tensor_types(theirs)
        for route, path in (("ggufkit --scheme source (lossless)", ours),
                            (f"llama.cpp converter F16 -> llama-quantize {scheme.upper()}", theirs)):
            r = evaluate(path, None, ref=ref)
            row = {"source": f"compressed-tensors {label}", "route": route, "bytes": path.stat().st_size,
                   "same_tensor_types": same_types, "kld": r.kld, "top1": r.top1, "ppl": r.ppl,
                   "tokens": r.tokens_scored}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    if args.only != "int4":
        rows += nvfp4_rows(demo, keep, work, text, args)
    wall = time.perf_counter() - start
    today = datetime.date.today().isoformat()
    print(f"\n{info}, {today}. `python bench/prequant_kld.py --chunks {args.chunks} --ctx {args.ctx}`: KLD against "
          f"the F32 conversion of each checkpoint (the library's dequantized weights), {rows[0]['tokens']} tokens "
          f"scored on the Britannica text; {wall:.0f} s wall.\n")
    print("| checkpoint | route | file size | same tensor types | KLD | top-1 % | PPL |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['source']} | {r['route']} | {r['bytes'] / 2**20:.2f} MiB ({r['bytes']} B) | "
              f"{'yes' if r['same_tensor_types'] else 'no'} | {r['kld']:.6f} | {100 * r['top1']:.2f} | "
              f"{r['ppl']:.3f} |")
    print("\n" + json.dumps({"machine": info, "date": today, "args": {k: str(v) for k, v in vars(args).items()},
                             "rows": rows}))


if __name__ == "__main__":
    main()
