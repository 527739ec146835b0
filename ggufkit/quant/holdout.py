"""Calibration in two halves: statistics to fit error feedback on one half and check it on the other.

    im, stats = calibrate_halves(model_dir, "hamlet.txt", ctx=512, chunks=8, stats_dir="calib-stats")
    stats.hessian(name)     # the pooled input covariance of all chunks (what the final encoding uses)
    stats.halves(name)      # (H_a, H_b): the first and the second half's, each a mean over its own tokens

Error feedback (ggufkit.quant.gptq) fits the rounding of every column to the input covariance H it is given; with
a few thousand calibration tokens and inputs 1536 to 8192 wide, H is estimated from not many more samples than
it has dimensions, and the fit can follow the calibration text's own directions (measured: blk.5.ffn_down at
IQ4_XS, 1.019x llama.cpp's output error on held-out text). Whether the feedback generalises, and with how much
damping, is a question for text it was not fitted on: gptq.ErrorFeedback answers it per tensor by fitting on one
half and scoring on the other, before encoding with the pooled covariance.

The halves are the calibration chunks llama-imatrix would take (the text tokenized once, cut into ctx tokens, at
most `chunks`), split at the middle chunk: ggufkit.quant.calibrate runs them all in one layer-wise pass with two
covariance accumulators per input (halves=True), one for the first half's chunks and one for the rest; the
importance matrix is that of all chunks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ggufkit.quant.imatrix import Imatrix


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
        """The mean input covariance over both halves' tokens (cols, cols) f32, or None: (sum_a + sum_b) / (tokens_a
        + tokens_b), summed in f32 from the files (one (cols, cols) array in memory)."""
        ga, gb = self.a.groups.get(name), self.b.groups.get(name)
        if ga is None or gb is None:
            return None
        h = np.asarray(np.load(self.a.directory / ga, mmap_mode="r") + np.load(self.b.directory / gb, mmap_mode="r"))
        h /= np.float32(max(1, self.a.tokens[ga] + self.b.tokens[gb]))
        return h


def calibrate_halves(model_dir: Path, text_path: Path, ctx: int = 512, chunks: int | None = None,
                     threads: int | None = None, progress: bool = True,
                     stats_dir: Path | None = None) -> tuple[Imatrix, HalfStatistics | None]:
    """calibrate() with the covariance of each half of the chunks kept apart -> (the Imatrix of all chunks,
    HalfStatistics or None without stats_dir)."""
    from ggufkit.quant.calibrate import calibrate

    im, parts = calibrate(Path(model_dir), Path(text_path), ctx=ctx, chunks=chunks, threads=threads,
                          progress=progress, stats_dir=stats_dir, halves=True)
    return im, None if parts is None else HalfStatistics(*parts)
