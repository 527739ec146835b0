"""The size-quality table: convert one checkpoint at several schemes and measure what each costs.

For every variant (a scheme, with or without an importance matrix):
    convert -> file size and bits per weight (read back from the GGUF) -> perplexity, KL divergence, top-1
    agreement and RMS Δp against the reference file (ggufkit.evaluate, llama-perplexity's procedure) ->
    generation speed (ggufkit bench's measurement: greedy tokens one at a time, median of a few runs).
The reference is the same checkpoint at a 16-bit scheme (bf16 by default), so ΔPPL and KLD measure only what
the quantization loses. It is run once, into a reference-logits file (ggufkit.reflogits) next to the variants;
each variant is then scored alone against that file, so no two models are in memory together.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ggufkit.errors import InputError, OutputError

DEFAULT_SCHEMES = "q8_0,q6_k,q5_k_m,q4_k_m,q3_k_m,q2_k"


@dataclass(frozen=True)
class Variant:
    scheme: str
    imatrix: Path | None = None

    @property
    def label(self) -> str:
        return self.scheme.upper() + (" + imatrix" if self.imatrix is not None else "")

    @property
    def file_stem(self) -> str:
        return self.scheme.upper() + ("-imatrix" if self.imatrix is not None else "")


@dataclass
class Row:
    label: str
    scheme: str
    imatrix: bool
    file: str
    size_bytes: int
    bits_per_weight: float
    ppl: float
    ppl_stderr: float
    delta_ppl: float | None = None
    kld: float | None = None
    top1: float | None = None
    rms_dp: float | None = None
    tg_tok_s: float | None = None


@dataclass
class Comparison:
    model: str
    text: str
    ctx: int
    chunks: int
    tokens_scored: int
    reference: Row
    rows: list[Row]

    def as_dict(self) -> dict:
        return {"model": self.model, "text": self.text, "ctx": self.ctx, "chunks": self.chunks,
                "tokens_scored": self.tokens_scored, "reference": asdict(self.reference),
                "rows": [asdict(r) for r in self.rows]}


def parse_schemes(text: str) -> list[str]:
    """'q8_0, Q4_K_M' -> ['q8_0', 'q4_k_m'] (validated against ggufkit.plan.schemes, order and duplicates kept out)."""
    from ggufkit.plan import schemes

    names = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            name = schemes.get_scheme(part.strip()).name.lower()
        except ValueError as e:
            raise InputError(f"--schemes: {e}") from None
        if name not in names:
            names.append(name)
    if not names:
        raise InputError("--schemes names no scheme")
    return names


def file_size_and_bpw(path: Path) -> tuple[int, float]:
    """Bytes on disk and bits per weight of the tensors, read back from the written GGUF."""
    from ggufkit.sources.gguf import summarize, validate_gguf

    s = summarize(validate_gguf(path))
    return s["file_size"], s["bits_per_weight"]


def generation_speed(path: Path, tokens: int, reps: int, threads: int | None) -> float:
    """Greedy generation tokens/s (median of reps), measured as `ggufkit bench` does, in a fresh process."""
    from ggufkit.commands.bench import bench_model

    return bench_model(path, pp=16, tg=tokens, reps=reps, threads=threads)["tg_tok_s"]


class _Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(message, file=sys.stderr, flush=True)


def compare(src, variants: list[Variant], text: Path, ctx: int = 512, chunks: int | None = None,
            ref_scheme: str = "bf16", out_dir: Path | None = None, threads: int | None = None,
            gen_tokens: int = 32, gen_reps: int = 3, progress: bool = True,
            on_row: Callable[[Row], None] | None = None) -> Comparison:
    """Convert SRC to the reference and every variant into OUT_DIR (a temporary directory, removed at the end,
    when None), evaluate each against the reference on TEXT and measure its generation speed.
    gen_tokens=0 skips the speed measurement."""
    from ggufkit.conversion import convert
    from ggufkit.evaluate import evaluate
    from ggufkit.reflogits import save_reference
    from ggufkit.sources.hf import resolve

    say = _Progress(progress)
    model_dir = resolve(src)
    name = Path(str(model_dir)).name
    if not Path(text).is_file():
        raise InputError("no such text file", text)
    temporary = out_dir is None
    if temporary:
        out_dir = Path(tempfile.mkdtemp(prefix="ggufkit-compare-"))
    else:
        try:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create the output directory: {e.strerror}", out_dir) from None
    out_dir = Path(out_dir)

    def measured(variant: Variant, path: Path, ref: Path | None):
        """-> (Row, EvalResult). ref None: PATH is the reference; its logits are written to ref_logits."""
        size, bpw = file_size_and_bpw(path)
        say(f"evaluating {variant.label} on {Path(text).name} ...")
        if ref is None:  # the reference runs once; every variant is scored alone against its stored logits
            r = save_reference(path, text, ref_logits, ctx=ctx, chunks=chunks, threads=threads, progress=progress)
        else:
            r = evaluate(path, None, ctx=ctx, ref=ref, threads=threads, progress=progress)
        speed = None
        if gen_tokens > 0:
            say(f"generation speed of {variant.label} ...")
            speed = generation_speed(path, gen_tokens, gen_reps, threads)
        return Row(label=variant.label, scheme=variant.scheme, imatrix=variant.imatrix is not None,
                   file=str(path), size_bytes=size, bits_per_weight=bpw, ppl=r.ppl, ppl_stderr=r.ppl_stderr,
                   kld=r.kld, top1=r.top1, rms_dp=r.rms_dp, tg_tok_s=speed), r

    try:
        ref_variant = Variant(ref_scheme)
        ref_path = out_dir / f"{name}-{ref_variant.file_stem}.gguf"
        ref_logits = out_dir / f"{name}-{ref_variant.file_stem}.ref-logits"
        say(f"converting {name} to {ref_variant.label} (reference) ...")
        convert(model_dir, ref_path, scheme=ref_scheme, threads=threads, quiet=True)
        ref_row, ref_eval = measured(ref_variant, ref_path, None)
        if on_row:
            on_row(ref_row)
        rows = []
        for v in variants:
            path = out_dir / f"{name}-{v.file_stem}.gguf"
            say(f"converting {name} to {v.label} ...")
            convert(model_dir, path, scheme=v.scheme, threads=threads, quiet=True, imatrix=v.imatrix)
            row, _ = measured(v, path, ref_logits)
            row.delta_ppl = row.ppl - ref_row.ppl
            rows.append(row)
            if on_row:
                on_row(row)
        return Comparison(model=name, text=str(text), ctx=ctx, chunks=ref_eval.chunks,
                          tokens_scored=ref_eval.tokens_scored, reference=ref_row, rows=rows)
    finally:
        if temporary:
            shutil.rmtree(out_dir, ignore_errors=True)


# ---- output

COLUMNS = ["scheme", "size MiB", "BPW", "PPL", "ΔPPL", "KLD", "top-1 %", "tg tok/s"]


def _cells(row: Row, ref: bool) -> list[str]:
    def opt(value, fmt):
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)

    return [row.label + (" (ref)" if ref else ""), f"{row.size_bytes / 2**20:.1f}", f"{row.bits_per_weight:.2f}",
            f"{row.ppl:.3f} ± {row.ppl_stderr:.3f}", opt(row.delta_ppl, "+.3f"), opt(row.kld, ".5f"),
            opt(None if row.top1 is None else 100 * row.top1, ".2f"), opt(row.tg_tok_s, ".1f")]


def format_table(c: Comparison, markdown: bool = False) -> str:
    """The table users look for, plain text (aligned columns) or a Markdown table."""
    lines = [_cells(c.reference, True)] + [_cells(r, False) for r in c.rows]
    if markdown:
        out = ["| " + " | ".join(COLUMNS) + " |", "| --- |" + " ---: |" * (len(COLUMNS) - 1)]
        return "\n".join(out + ["| " + " | ".join(cells) + " |" for cells in lines])
    widths = [max(len(x) for x in col) for col in zip(COLUMNS, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return "\n".join(fmt.format(*cells) for cells in [COLUMNS, *lines])


def figure(c: Comparison):
    """The quality-against-size figure (matplotlib, Agg): KLD (log scale) and PPL per variant over file size.
    Every point's label stays inside its axes: labels of the right half point left, and the axes keep margins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_kld, ax_ppl) = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    sizes = [r.size_bytes / 2**20 for r in c.rows]
    middle = (min(sizes) + max(sizes)) / 2 if sizes else 0.0
    for ax, values, title in ((ax_kld, [r.kld for r in c.rows], "mean KL divergence from the reference"),
                              (ax_ppl, [r.ppl for r in c.rows], "perplexity")):
        colors = ["#d1604b" if r.imatrix else "#4b7bd1" for r in c.rows]
        ax.scatter(sizes, values, c=colors, zorder=3)
        for r, x, y in zip(c.rows, sizes, values):
            right = x > middle
            ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(-4 if right else 4, 4), fontsize=8,
                        ha="right" if right else "left", va="bottom")
        ax.margins(x=0.08, y=0.15)
        ax.set_xlabel("file size (MiB)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    if all(r.kld and r.kld > 0 for r in c.rows):
        ax_kld.set_yscale("log")
        ax_kld.margins(y=0.15)
    ref = c.reference
    ax_ppl.axhline(ref.ppl, color="gray", linestyle="--", label=f"{ref.label} {ref.ppl:.2f}")
    ax_ppl.legend(fontsize=8)
    fig.suptitle(f"{c.model}: quality against size ({Path(c.text).name}, {c.chunks} chunks of {c.ctx})")
    return fig


def plot(c: Comparison, out: Path) -> Path:
    """figure(c) into a PNG, written via a temp file + rename."""
    import matplotlib.pyplot as plt

    fig = figure(c)
    tmp = out.with_name(out.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(out)
    except OSError as e:
        raise OutputError(f"cannot write the plot: {e.strerror}", out) from e
    finally:
        plt.close(fig)
    return out
