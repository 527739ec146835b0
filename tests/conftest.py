"""Shared fixtures: the demo checkpoint, tiny random checkpoints per architecture (cached under models/), and
offline mode for everything."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
sys.path.insert(0, str(ROOT / "tests"))

TINY_CACHE = ROOT / "models" / "tiny-cache"

try:  # tests construct llama_cpp.Llama directly: load the CPU backend variant first, as ggufkit's runtime does
    from ggufkit.runtime import backends

    backends.ensure()
except ImportError:  # llama-cpp-python not installed: the tests that need it fail on their own import
    pass


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """The demo checkpoint (SmolLM2-135M-Instruct, HF format), built by models/build_demo.py if missing."""
    import build_demo

    return build_demo.build()


@pytest.fixture(scope="session")
def tiny_checkpoint(demo_dir):
    """Factory: tiny_checkpoint("llama") -> Path of a tiny random checkpoint (see models/tiny.py)."""
    import tiny

    def make(name: str, transformers4: bool = False) -> Path:
        suffix = "-tf4" if transformers4 else ""
        return tiny.make_tiny(name, TINY_CACHE / f"{name}{suffix}", transformers4=transformers4)

    return make
