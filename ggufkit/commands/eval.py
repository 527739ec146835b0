"""Perplexity of a GGUF model on a text, and with --ref its KL divergence from a reference model.

Computed as llama-perplexity does: chunks of --ctx tokens, each scored on its second half. With --ref (e.g. the
F16 or BF16 file of the same model) also the mean KL divergence, the top-1 agreement and the RMS of Δp for the
actual next token, over the same positions. The reference runs first and alone; its logits go to a compact file
(the --ref-topk largest logits and the log-sum-exp per position), and the model is scored against that file, so
the two models are never in memory together. --save-ref keeps such a file (like llama-perplexity's
--kl-divergence-base); pass it as --ref later to score any number of candidates without rerunning the reference
(--text is then not needed: the file holds the token chunks).

\b
Example:
  ggufkit eval smollm2-Q4_K_M.gguf --text britannica.txt --chunks 16 --ref smollm2-BF16.gguf
  ggufkit eval smollm2-BF16.gguf --text britannica.txt --chunks 16 --save-ref smollm2-ref.gguf
  ggufkit eval smollm2-Q2_K.gguf --ref smollm2-ref.gguf
"""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("eval", help=__doc__)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--text", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Text file (UTF-8); not needed when --ref is a reference-logits file.")
@click.option("--ctx", type=click.IntRange(8), default=512, show_default=True, help="Tokens per chunk.")
@click.option("--chunks", type=click.IntRange(1), default=None, help="Score at most this many chunks (default: all).")
@click.option("--ref", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Reference GGUF model, or a reference-logits file from --save-ref, for KL divergence / top-1 "
                   "agreement.")
@click.option("--save-ref", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write MODEL's logits on --text to this reference-logits file (MODEL is the reference).")
@click.option("--ref-topk", type=click.IntRange(1), default=None,
              help="Logits kept per position in a reference-logits file [256]; the vocabulary size keeps all.")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads [physical cores - 1].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(model, text, ctx, chunks, ref, save_ref, ref_topk, threads, as_json, quiet):
    from ggufkit.errors import InputError
    from ggufkit.evaluate import evaluate

    progress = not quiet and not as_json
    if save_ref is not None:
        from ggufkit import reflogits

        if ref is not None:
            raise InputError("--save-ref makes MODEL the reference: give --ref or --save-ref, not both")
        if text is None:
            raise InputError("--save-ref needs --text")
        if ctx % 2:
            raise InputError(f"--ctx {ctx} must be an even number >= 8")
        r = reflogits.save_reference(model, text, save_ref, ctx=ctx, chunks=chunks,
                                     topk=ref_topk or reflogits.DEFAULT_TOPK, threads=threads, progress=progress)
    else:
        r = evaluate(model, text, ctx=ctx, chunks=chunks, ref=ref, threads=threads, progress=progress,
                     ref_topk=ref_topk)
    if as_json:
        click.echo(json.dumps({**r.as_dict(), **({"saved_ref": str(save_ref)} if save_ref else {})}))
        return
    click.echo(f"{model.name}: PPL {r.ppl:.4f} ± {r.ppl_stderr:.4f} over {r.tokens_scored} tokens "
               f"({r.chunks} chunks of {r.ctx})")
    if save_ref is not None:
        click.echo(f"reference logits written to {save_ref}")
    if r.ref is not None:
        click.echo(f"reference {Path(r.ref).name}: PPL {r.ref_ppl:.4f}; KLD {r.kld:.6f}, "
                   f"top-1 agreement {100 * r.top1:.2f}%, RMS Δp {100 * r.rms_dp:.3f}%")
