"""`make demo`: the main job on the demo model, saying what it did and how long each step took.

Steps that exist so far are run; see the README for the full pipeline as it lands.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import build_demo  # noqa: E402


def step(title: str):
    print(f"==> {title}", flush=True)
    return time.perf_counter()


def main() -> int:
    t = step("demo checkpoint")
    src = build_demo.build()
    print(f"    {src} ({sum(f.stat().st_size for f in src.iterdir()) / 1e6:.0f} MB) "
          f"in {time.perf_counter() - t:.1f}s")
    import numpy as np
    from safetensors.torch import load_file  # numpy cannot hold bf16; torch can

    from ggufkit import quant

    t = step("quantize every weight matrix of the demo model to Q8_0 with the native kernels")
    n_bytes = 0

    tensors = load_file(src / "model.safetensors")
    for name, w in tensors.items():
        if w.dim() == 2:
            q = quant.quantize(w.float().numpy().astype(np.float32), "Q8_0")
            n_bytes += q.nbytes
    print(f"    {len(tensors)} tensors, {n_bytes / 1e6:.1f} MB of Q8_0 in {time.perf_counter() - t:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
