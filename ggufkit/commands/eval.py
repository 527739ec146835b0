"""Perplexity of a GGUF model on a text, and with --ref its KL divergence from a reference model.

Computed as llama-perplexity does: chunks of --ctx tokens, each scored on its second half. With --ref (e.g. the
F16 or BF16 file of the same model) also the mean KL divergence, the top-1 agreement and the RMS of Δp for the
actual next token, over the same positions.

\b
Example:
  ggufkit eval smollm2-Q4_K_M.gguf --text britannica.txt --chunks 16 --ref smollm2-BF16.gguf
"""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("eval", help=__doc__)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--text", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Text file (UTF-8).")
@click.option("--ctx", type=click.IntRange(8), default=512, show_default=True, help="Tokens per chunk.")
@click.option("--chunks", type=click.IntRange(1), default=None, help="Score at most this many chunks (default: all).")
@click.option("--ref", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Reference GGUF for KL divergence / top-1 agreement.")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads [physical cores - 1].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(model, text, ctx, chunks, ref, threads, as_json, quiet):
    from ggufkit.evaluate import evaluate

    r = evaluate(model, text, ctx=ctx, chunks=chunks, ref=ref, threads=threads,
                 progress=not quiet and not as_json)
    if as_json:
        click.echo(json.dumps(r.as_dict()))
        return
    click.echo(f"{model.name}: PPL {r.ppl:.4f} ± {r.ppl_stderr:.4f} over {r.tokens_scored} tokens "
               f"({r.chunks} chunks of {ctx})")
    if r.ref is not None:
        click.echo(f"reference {Path(r.ref).name}: PPL {r.ref_ppl:.4f}; KLD {r.kld:.6f}, "
                   f"top-1 agreement {100 * r.top1:.2f}%, RMS Δp {100 * r.rms_dp:.3f}%")
