"""The compare plot keeps every label inside its axes (the Q8_0 label at the right edge was clipped).
Numbers are a real compare run's (BENCHMARKS.md, the demo model); the plot only lays them out."""
from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from ggufkit.compare import Comparison, Row, plot

# (label, MiB, PPL, KLD) of the demo model at several schemes
POINTS = [("Q8_0", 137.8, 17.29, 0.0021), ("Q6_K", 105.9, 17.41, 0.0093), ("Q5_K_M", 95.6, 17.63, 0.0237),
          ("Q4_K_M", 100.6, 18.37, 0.0712), ("Q3_K_M", 82.0, 20.61, 0.2151), ("Q2_K", 84.7, 27.9, 0.6204)]


def comparison() -> Comparison:
    rows = [Row(label, label.lower(), False, f"{label}.gguf", int(mib * 2**20), 8.0, ppl, 0.1, kld=kld)
            for label, mib, ppl, kld in POINTS]
    ref = Row("BF16", "bf16", False, "BF16.gguf", 258 * 2**20, 16.0, 17.25, 0.1)
    return Comparison("SmolLM2-135M-Instruct", "britannica.txt", 512, 8, 2048, ref, rows)


def test_every_point_label_is_inside_its_axes(tmp_path, monkeypatch):
    import matplotlib.figure

    drawn = []
    original = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        original(fig, *args, **kwargs)
        drawn.append(fig)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    out = plot(comparison(), tmp_path / "q.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = drawn
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in fig.axes:
        box = ax.get_window_extent(renderer)
        labels = [t for t in ax.texts if t.get_text() in {p[0] for p in POINTS}]
        assert len(labels) == len(POINTS)
        for text in labels:
            extent = text.get_window_extent(renderer)
            assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1, (
                ax.get_title(), text.get_text(), extent, box)
