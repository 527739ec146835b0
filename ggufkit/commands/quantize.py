"""`ggufkit quantize`: the CLI over ggufkit.quantization."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from ggufkit.commands._controls import control_options, pop_controls, split_options


def _scheme(ctx, param, value: str) -> str:
    from ggufkit.plan import schemes

    try:
        return schemes.get_scheme(value).name
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.command("quantize")
@click.argument("src", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Output file [default: <input name>-<SCHEME>.gguf in the current directory]. With a split "
                   "option: the parts are <OUT without .gguf>-00001-of-0000N.gguf, ...")
@click.option("--scheme", default="q4_k_m", show_default=True, callback=_scheme,
              help="Quantization scheme (llama-quantize's names, case-insensitive), as for `convert`.")
@click.option("--imatrix", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Importance matrix (llama.cpp GGUF or .dat format); recorded in quantize.imatrix.* keys.")
@control_options
@click.option("--allow-requantize", is_flag=True,
              help="Allow tensors that are already quantized (e.g. a Q8_0 input) to be dequantized and quantized "
                   "again. Quality is then worse than quantizing from 16- or 32-bit weights.")
@click.option("--keep-split", is_flag=True, help="Write a split input as a split output with the same parts (a "
                                                  "single-file input gives a single file at OUT).")
@split_options
@click.option("--threads", type=click.IntRange(min=1), help="Quantization threads [default: all cores].")
@click.option("--dry-run", is_flag=True, help="Print the plan (tensor, shape, type, bytes; parts) and write nothing.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no summary, no warnings.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan or the result as JSON.")
def command(src, out, scheme, imatrix, allow_requantize, keep_split, split_max_size, split_max_tensors, threads,
            dry_run, quiet, as_json, **kwargs):
    """Quantize a GGUF model (F32/F16/BF16, or quantized with --allow-requantize) to another scheme.

    SRC is a GGUF file or the first part of a split set (model-00001-of-00003.gguf). The output equals
    llama.cpp's llama-quantize on the same input and options, byte for byte, and is written in one streaming
    pass. The controls (--tensor-type, --pure, ...) work as in llama-quantize, and also for `convert`.

    \b
    Example:
      ggufkit quantize SmolLM2-135M-Instruct-BF16.gguf --scheme q4_k_m
      ggufkit quantize model-BF16.gguf -o model-Q4_K_M.gguf --tensor-type "attn_v=q8_0" --imatrix m.imatrix.gguf
      ggufkit quantize model-00001-of-00002.gguf --scheme q6_k --split-max-size 2G --dry-run
    """
    from ggufkit.quantization import default_output, make_plan, run

    controls = pop_controls(kwargs)
    if keep_split and (split_max_size or split_max_tensors):
        raise click.UsageError("--keep-split and --split-max-size/--split-max-tensors are alternatives: give one")
    if split_max_size and split_max_tensors:
        raise click.UsageError("--split-max-size and --split-max-tensors are alternatives: give one")
    try:
        plan = make_plan(src, scheme, controls, imatrix, keep_split=keep_split, split_max_size=split_max_size,
                         split_max_tensors=split_max_tensors)
    except ValueError as e:  # a split size no part can meet
        raise click.UsageError(str(e)) from None
    out = out if out is not None else default_output(plan)
    if dry_run:
        if as_json:
            click.echo(json.dumps({**plan.summary(), "output": str(out), "tensors": plan.table()}, indent=1))
        else:
            click.echo(plan.format())
        return
    requantized = plan.requantized
    if requantized and allow_requantize and not quiet:
        kinds = sorted({p.tensor.ggml_type.name for p in requantized})
        click.echo(f"warning: requantizing {len(requantized)} tensor(s) already quantized as {', '.join(kinds)}: "
                   "quality is worse than quantizing from 16- or 32-bit weights", err=True)
    start = time.perf_counter()
    paths = run(plan, out, threads=threads, allow_requantize=allow_requantize,
                progress=not quiet and sys.stderr.isatty())
    seconds = time.perf_counter() - start
    s = plan.summary()
    if as_json:
        click.echo(json.dumps({**s, "output": [str(p) for p in paths], "seconds": round(seconds, 3)}))
    elif not quiet:
        where = str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} parts)"
        click.echo(f"{where}: {s['scheme']}, {s['tensors']} tensors, {s['bytes'] / 2**20:.1f} MiB, "
                   f"{s['bits_per_weight']:.2f} bits per weight, {seconds:.1f} s")
