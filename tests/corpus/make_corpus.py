"""Write the whole malformed-input corpus: `python tests/corpus/make_corpus.py [OUT_DIR] [--kind KIND ...]`
(default build/corpus; every kind: gguf files, and safetensors / config / tokenizer checkpoint directories).

manifest.json lists each case's kind, path and the error text it must give; tests/test_bad_inputs.py feeds every
case to the commands that read its kind.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, which holds the corpus package

from corpus.framework import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?")
    parser.add_argument("--kind", action="append", choices=["gguf", "safetensors", "config", "tokenizer"])
    args = parser.parse_args()
    sys.exit(main(kinds=args.kind, argv=[args.out_dir] if args.out_dir else []))
