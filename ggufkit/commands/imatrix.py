"""Compute an importance matrix for a Hugging Face model from calibration text.

Runs the model on the CPU (transformers, float32) over chunks of --ctx tokens of TEXT and records, for every
weight matrix, the mean squared input activation of each column: llama.cpp's importance matrix, keyed by GGUF
tensor names. Written in llama.cpp's GGUF imatrix format, or its legacy format if OUT ends in .dat. Use it with
`ggufkit convert --imatrix FILE`, or with llama.cpp's llama-quantize --imatrix.

\b
Example:
  ggufkit imatrix ./SmolLM2-135M-Instruct --text hamlet.txt --chunks 32 -o smollm2.imatrix.gguf
  ggufkit imatrix ./Llama-3.1-8B --text hamlet.txt --chunks 32 --layer-by-layer
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import click


@click.command("imatrix", help=__doc__)
@click.argument("src")
@click.option("--text", "text", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Calibration text file (UTF-8).")
@click.option("--ctx", type=click.IntRange(8), default=512, show_default=True, help="Tokens per chunk.")
@click.option("--chunks", type=click.IntRange(1), default=None, help="Process at most this many chunks (default: all).")
@click.option("--process-output", is_flag=True, help="Also collect output.weight (llama-imatrix's flag).")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file [default: <model-name>.imatrix.gguf]; .dat selects the legacy format.")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads for the model.")
@click.option("--layer-by-layer", is_flag=True, help="Bounded memory: one decoder layer's weights at a time, read "
              "from the safetensors (ggufkit.quant.calibrate; the same matrix within float tolerance).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def command(src, text, ctx, chunks, process_output, out, threads, layer_by_layer, quiet, as_json):
    from ggufkit.quant.calibrate import calibrate
    from ggufkit.quant.imatrix_collect import compute
    from ggufkit.sources.hf import resolve

    model_dir = resolve(src)
    out = out or Path.cwd() / f"{str(src).rstrip('/').rsplit('/', 1)[-1]}.imatrix.gguf"
    start = time.perf_counter()
    collect = (lambda *a, **k: calibrate(*a, **k)[0]) if layer_by_layer else compute
    im = collect(model_dir, text, ctx=ctx, chunks=chunks, process_output=process_output, threads=threads,
                 progress=not quiet and not as_json)
    im.save(out)
    summary = {"output": str(out), "entries": len(im.entries), "chunks": im.chunk_count, "ctx": im.chunk_size,
               "dataset": text.name, "seconds": round(time.perf_counter() - start, 2)}
    if as_json:
        click.echo(json.dumps(summary))
    elif not quiet:
        click.echo(f"wrote {out}: {summary['entries']} matrices, {summary['chunks']} chunks of {ctx} tokens "
                   f"from {text.name} in {summary['seconds']}s")
