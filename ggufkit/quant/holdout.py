"""Calibration in two halves: statistics to fit error feedback on one half and check it on the other.

    im, stats = calibrate_halves(model_dir, "hamlet.txt", ctx=512, chunks=8, stats_dir="calib-stats")
    stats.hessian(name)     # the pooled input covariance of all chunks (what the final encoding uses)
    stats.halves(name)      # (H_a, H_b): the first and the second half's, each a mean over its own tokens

Error feedback (ggufkit.quant.gptq) fits the rounding of every column to the input covariance H it is given; with
a few thousand calibration tokens and inputs 1536 to 8192 wide, H is estimated from not many more samples than
it has dimensions, and the fit can follow the calibration text's own directions (measured: blk.5.ffn_down at
IQ4_XS, 1.019x llama.cpp's output error on held-out text). Whether the feedback generalises, and with how much
damping, is a question for text it was not fitted on: gptq.ErrorFeedback answers it per tensor by fitting on one
half and scoring on the other (both ways), before encoding with the pooled covariance.

The halves are the calibration chunks llama-imatrix would take (the text tokenized once, cut into ctx tokens, at
most `chunks`), split at the middle chunk: the text up to that token (plus a few tokens of slack, so that
re-tokenizing the first part still gives its chunks) is one half, the rest the other; each is calibrated by
ggufkit.quant.calibrate. The importance matrix is the sum of both halves' (sums and token counts add), so it is
that of the same chunks up to the slack at the cut. (One layer-wise pass that keeps two accumulators per input
would cost one model setup less; calibrate.py's pass does not split, so this runs it twice.)
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ggufkit.errors import InputError
from ggufkit.quant.imatrix import Imatrix, ImatrixEntry

SLACK = 16  # tokens past the cut kept in the first half's text


@dataclass
class HalfStatistics:
    """Two calibration.Statistics over disjoint halves of the calibration chunks (same tensor names)."""
    a: object
    b: object

    @property
    def groups(self) -> dict[str, str]:
        return self.a.groups

    def halves(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        ha, hb = self.a.hessian(name), self.b.hessian(name)
        if ha is None or hb is None:
            return None
        return ha, hb

    def hessian(self, name: str) -> np.ndarray | None:
        """The mean input covariance over both halves' tokens (cols, cols) f32, or None."""
        group = self.a.groups.get(name)
        if group is None or self.b.groups.get(name) is None:
            return None
        ta, tb = self.a.tokens[group], self.b.tokens[self.b.groups[name]]
        ha, hb = self.halves(name)
        return ((ha.astype(np.float64) * ta + hb.astype(np.float64) * tb) / max(1, ta + tb)).astype(np.float32)


def merge_imatrix(a: Imatrix, b: Imatrix) -> Imatrix:
    """The importance matrix of a's and b's tokens together: per entry, sums and counts add."""
    out = Imatrix(datasets=a.datasets, chunk_count=a.chunk_count + b.chunk_count, chunk_size=a.chunk_size)
    for name in sorted(set(a.entries) | set(b.entries)):
        ea, eb = a.entries.get(name), b.entries.get(name)
        if ea is None or eb is None:
            out.entries[name] = ea or eb
            continue
        out.entries[name] = ImatrixEntry((ea.sums.astype(np.float64) + eb.sums).astype(np.float32),
                                         ea.counts + eb.counts)
    return out


def split_text(tokenizer, text: str, ctx: int, chunks: int | None, path=None) -> tuple[str, str, int, int]:
    """The calibration text cut at the middle chunk -> (first text, second text, chunks in each)."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    n_tokens = len(enc["input_ids"])
    n_chunks = n_tokens // ctx if chunks is None else min(n_tokens // ctx, chunks)
    if n_chunks < 2:
        raise InputError(f"{n_tokens} tokens: error feedback needs at least 2 calibration chunks of {ctx} (one "
                         f"to fit, one to check)", path)
    na = n_chunks // 2
    cut = na * ctx
    slack = min(SLACK, max(0, n_tokens - n_chunks * ctx))
    offsets = enc["offset_mapping"]
    end_a = offsets[cut + slack][0] if cut + slack < n_tokens else len(text)
    return text[:end_a], text[offsets[cut][0]:], na, n_chunks - na


def calibrate_halves(model_dir: Path, text_path: Path, ctx: int = 512, chunks: int | None = None,
                     threads: int | None = None, progress: bool = True,
                     stats_dir: Path | None = None) -> tuple[Imatrix, HalfStatistics | None]:
    """calibrate() on each half of the calibration chunks -> (the pooled Imatrix, HalfStatistics or None)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from ggufkit.quant.calibrate import calibrate
    from ggufkit.quant.imatrix_collect import calibration_text

    model_dir, text_path = Path(model_dir), Path(text_path)
    text = calibration_text(text_path, ctx)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    first, second, na, nb = split_text(tokenizer, text, ctx, chunks, text_path)
    results = []
    with tempfile.TemporaryDirectory(prefix="ggufkit-halves-") as tmp:
        for part, body, n in (("a", first, na), ("b", second, nb)):
            path = Path(tmp) / f"{text_path.stem}.{part}.txt"
            path.write_text(body, encoding="utf-8")
            sub = None if stats_dir is None else Path(stats_dir) / part
            results.append(calibrate(model_dir, path, ctx=ctx, chunks=n, threads=threads, progress=progress,
                                     stats_dir=sub))
    (ia, sa), (ib, sb) = results
    im = merge_imatrix(ia, ib)
    im.datasets = [text_path.name]
    return im, None if sa is None else HalfStatistics(sa, sb)
