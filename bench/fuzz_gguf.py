"""Long fuzzing run of ggufkit's GGUF validation (`make fuzz`; tests/test_fuzz_gguf.py is the short CI run).

    python bench/fuzz_gguf.py [--minutes 1] [--seed N] [--out build/fuzz]

Random byte edits of a valid small GGUF (tests/corpus/gguf_mutations.py) must give a valid parse or a one-line
InputError, without a large allocation; every file ggufkit accepts must also be accepted by llama.cpp's own gguf
reader (checked in batches). Each finding is saved under --out with its traceback; the exit code is 1 if there
was any. Add each finding to tests/corpus/gguf_cases.py as a regression case.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from corpus.gguf_builder import small_model
from corpus.gguf_mutations import apply, check, random_edits
from corpus.llama_gguf import read_in_subprocess

BATCH = 500  # files ggufkit accepts, checked against llama.cpp together


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "fuzz")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    work.mkdir(exist_ok=True)
    rng = random.Random(args.seed)
    seed_bytes = small_model(seed=args.seed % 1000).to_bytes()
    deadline = time.monotonic() + args.minutes * 60
    counts = {"runs": 0, "valid": 0, "rejected": 0}
    findings: list[Path] = []
    pending: list[Path] = []

    def flush_pending() -> None:
        for path, result in zip(pending, read_in_subprocess(pending), strict=True):
            if not result["ok"]:
                kept = args.out / f"lenient-{len(findings)}.gguf"
                path.rename(kept)
                kept.with_suffix(".txt").write_text(f"ggufkit accepts, llama.cpp refuses: {result['reason']}\n")
                findings.append(kept)
        for path in pending:
            path.unlink(missing_ok=True)
        pending.clear()

    start = time.monotonic()
    while time.monotonic() < deadline:
        data = apply(seed_bytes, random_edits(rng, max_edits=6))
        path = work / f"m{counts['runs']}.gguf"
        counts["runs"] += 1
        try:
            outcome = check(data, path)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt):
                raise
            kept = args.out / f"crash-{len(findings)}.gguf"
            kept.write_bytes(data)
            kept.with_suffix(".txt").write_text(traceback.format_exc())
            findings.append(kept)
            continue
        counts[outcome] += 1
        if outcome == "valid":
            pending.append(path)
            if len(pending) >= BATCH:
                flush_pending()
        else:
            path.unlink()
    flush_pending()
    elapsed = time.monotonic() - start
    print(f"seed {args.seed}: {counts['runs']} files in {elapsed:.0f} s ({counts['runs'] / elapsed:.0f}/s), "
          f"{counts['valid']} valid, {counts['rejected']} rejected, {len(findings)} findings")
    for path in findings:
        print(f"  {path}: {path.with_suffix('.txt').read_text().strip().splitlines()[-1]}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
