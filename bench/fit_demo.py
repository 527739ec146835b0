"""The memory model (ggufkit/edge/memory.py) against measured peak RSS on the demo model: the BENCHMARKS.md table.

For each scheme x context: a fresh llama-cpp-python process (ggufkit's runtime build, the CPU variant ggml picks
for this machine) loads the file, evaluates a prompt filling the context but 8 cells, and reports VmHWM.

    .venv/bin/python bench/fit_demo.py
"""
from __future__ import annotations

import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))

from ggufkit.edge import memory

CASES = [("Q4_K_M", 512), ("Q4_K_M", 4096), ("Q8_0", 512), ("Q8_0", 4096), ("Q4_0", 512)]


def main() -> int:
    import build_demo

    from ggufkit.conversion import convert
    from ggufkit.runtime import backends

    src = build_demo.build()
    host = memory.host_features()
    print(f"{platform.processor() or platform.machine()}; CPU backend {backends.cpu_backend()}; "
          f"features {sorted(host)}; repacked types {sorted(t.name for t in memory.repacked_types(host))}")
    print("| model | scheme | n_ctx | predicted MiB | measured VmHWM MiB | error |")
    print("| --- | --- | --- | --- | --- | --- |")
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for scheme, n_ctx in CASES:
            path = Path(tmp) / f"demo-{scheme}.gguf"
            if not path.exists():
                convert(src, path, scheme=scheme.lower(), quiet=True)
            measured = memory.measure_peak_rss(path, n_ctx)["evaluated"]["VmHWM"]
            est = memory.estimate(memory.shape_from_gguf(path), n_ctx, host, n_tokens=n_ctx - 8)
            err = est.total / measured - 1
            worst = max(worst, abs(err))
            note = f" ({est.repacked / memory.MIB:.0f} MiB repacked)" if est.repacked else ""
            print(f"| SmolLM2-135M | {scheme}{note} | {n_ctx} | {est.total / memory.MIB:.1f} | "
                  f"{measured / memory.MIB:.0f} | {err:+.1%} |")
    print(f"worst error {worst:.1%} (promise: 15%)")
    return 0 if worst <= 0.15 else 1


if __name__ == "__main__":
    sys.exit(main())
