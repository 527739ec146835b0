"""Convert a checkpoint at several schemes and print what each costs in size, quality and speed.

Each scheme is converted from SRC, evaluated on TEXT against the reference (SRC at --ref-scheme, bf16 by
default) as `ggufkit eval --ref` does, and timed generating tokens greedily as `ggufkit bench` does. The table
shows file size, bits per weight, perplexity (± its standard error), ΔPPL against the reference, mean KL
divergence, top-1 agreement and generation tokens/s. With --imatrix or --calibration every quantized scheme uses
that importance matrix (--both: each scheme with and without it). Files are kept in -o DIR, else removed.

\b
Example:
  ggufkit compare ./SmolLM2-135M-Instruct --schemes q8_0,q4_k_m,q2_k --text britannica.txt --chunks 8 --plot q.png
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from ggufkit.compare import DEFAULT_SCHEMES, Variant, compare, format_table, parse_schemes, plot
from ggufkit.errors import InputError


@click.command("compare", help=__doc__)
@click.argument("src")
@click.option("--schemes", default=DEFAULT_SCHEMES, show_default=True, help="Comma-separated schemes to compare.")
@click.option("--text", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Evaluation text (UTF-8).")
@click.option("--ctx", type=click.IntRange(8), default=512, show_default=True, help="Tokens per chunk.")
@click.option("--chunks", type=click.IntRange(1), default=None, help="Score at most this many chunks [all].")
@click.option("--imatrix", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Importance matrix file for the quantized schemes.")
@click.option("--calibration", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Compute the importance matrix from this text first (ggufkit imatrix).")
@click.option("--calibration-chunks", type=click.IntRange(1), default=None,
              help="Chunks of --ctx tokens of --calibration to use [all].")
@click.option("--both", is_flag=True, help="With an importance matrix: also each scheme without it.")
@click.option("--ref-scheme", default="bf16", show_default=True, type=click.Choice(["bf16", "f16", "f32"]),
              help="The reference the quantized files are measured against.")
@click.option("--gen-tokens", type=click.IntRange(0), default=32, show_default=True,
              help="Tokens generated per speed run (0: skip the speed column).")
@click.option("--gen-reps", type=click.IntRange(1), default=3, show_default=True, help="Speed runs (median).")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads [physical cores - 1].")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw quality against size into this PNG.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--markdown", is_flag=True, help="Print the table in Markdown.")
@click.option("-o", "--output-dir", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the GGUF files (and a computed imatrix) here [default: a temporary directory].")
@click.option("--quiet", is_flag=True, help="No progress messages.")
def command(src, schemes, text, ctx, chunks, imatrix, calibration, calibration_chunks, both, ref_scheme,
            gen_tokens, gen_reps, threads, plot_path, as_json, markdown, out_dir, quiet):
    if ctx % 2:
        raise InputError(f"--ctx {ctx} must be even")
    if imatrix is not None and calibration is not None:
        raise InputError("give --imatrix or --calibration, not both")
    if both and imatrix is None and calibration is None:
        raise InputError("--both needs --imatrix or --calibration")
    names = parse_schemes(schemes)
    progress = not quiet and not as_json
    if calibration is not None:
        imatrix = _calibrate(src, calibration, ctx, calibration_chunks, threads, out_dir, progress)
    variants = []
    for name in names:
        if both:
            variants.append(Variant(name))
        variants.append(Variant(name, imatrix))
    if not progress or as_json:
        on_row = None
    else:
        def on_row(row):
            click.echo(f"  {row.label}: {row.size_bytes / 2**20:.1f} MiB, PPL {row.ppl:.3f}"
                       + (f", KLD {row.kld:.5f}" if row.kld is not None else ""), err=True)
    result = compare(src, variants, text, ctx=ctx, chunks=chunks, ref_scheme=ref_scheme, out_dir=out_dir,
                     threads=threads, gen_tokens=gen_tokens, gen_reps=gen_reps, progress=progress, on_row=on_row)
    if plot_path is not None:
        plot(result, plot_path)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=1))
    else:
        click.echo(f"{result.model} on {Path(result.text).name}: {result.chunks} chunks of {ctx} tokens "
                   f"({result.tokens_scored} scored), reference {result.reference.label}")
        click.echo(format_table(result, markdown=markdown))


def _calibrate(src, text: Path, ctx: int, chunks: int | None, threads, out_dir: Path | None,
               progress: bool) -> Path:
    """Compute the importance matrix from TEXT; kept in out_dir, else in a temp file removed at exit."""
    import atexit
    import tempfile

    from ggufkit.quant.imatrix_collect import compute
    from ggufkit.sources.hf import resolve

    if progress:
        click.echo(f"computing an importance matrix from {text.name} ...", err=True)
    im = compute(resolve(src), text, ctx=ctx, chunks=chunks, threads=threads, progress=progress)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        path = Path(out_dir) / f"{text.stem}.imatrix.gguf"
    else:
        fd, name = tempfile.mkstemp(suffix=".imatrix.gguf", prefix="ggufkit-compare-")
        import os

        os.close(fd)
        path = Path(name)
        atexit.register(path.unlink, missing_ok=True)
    return im.save(path)
