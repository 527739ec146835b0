"""Write the malformed-GGUF corpus: `python tests/corpus/make_gguf_corpus.py [OUT_DIR]` (default build/corpus).

Each file is small_model() (gguf_builder.py) with one defect; manifest.json lists the error each must give.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, which holds the corpus package

from corpus.framework import main

if __name__ == "__main__":
    sys.exit(main(kinds=["gguf"]))
