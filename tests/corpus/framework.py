"""A corpus of malformed inputs: each case is a name, an input kind, a writer and the error it must produce.

Cases live in modules named `<kind>_cases.py` next to this file (gguf_cases.py, and later safetensors_cases.py,
config_cases.py, tokenizer_cases.py). A module registers its cases with `@case(...)` on a writer function that
takes the destination path and writes the malformed file there (or a directory, for kinds whose input is one).

    @case("gguf", "bad_magic", expect="magic", suffix=".gguf")
    def _(dest: Path) -> None:
        dest.write_bytes(b"GGML" + ...)

`write_corpus(out_dir)` writes every case as `<kind>-<name><suffix>` plus `manifest.json`
([{"name", "kind", "path", "expect"}]) so a test or a command-line run can feed each one to the commands that
read that kind and check for a one-line error containing `expect`.
"""
from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Case:
    kind: str  # "gguf", "safetensors", "config", "tokenizer", ...
    name: str
    write: Callable[[Path], None]  # writes the malformed input at the given path
    expect: str  # a substring of the one-line error message
    suffix: str = ""  # file name suffix, e.g. ".gguf"; "" for a directory

    @property
    def filename(self) -> str:
        return f"{self.kind}-{self.name}{self.suffix}"


_REGISTRY: dict[tuple[str, str], Case] = {}


def case(kind: str, name: str, expect: str, suffix: str = ""):
    """Decorator: register the decorated writer as a corpus case."""
    def register(write: Callable[[Path], None]) -> Callable[[Path], None]:
        if (kind, name) in _REGISTRY:
            raise ValueError(f"corpus case {kind}/{name} registered twice")
        _REGISTRY[(kind, name)] = Case(kind, name, write, expect, suffix)
        return write
    return register


def load_cases(kinds: Iterable[str] | None = None) -> list[Case]:
    """Import every `<kind>_cases.py` here (once) and return the registered cases, optionally of some kinds."""
    wanted = set(kinds) if kinds is not None else None
    if str(CORPUS_DIR.parent) not in sys.path:  # tests/ holds the `corpus` package
        sys.path.insert(0, str(CORPUS_DIR.parent))
    for module_path in sorted(CORPUS_DIR.glob("*_cases.py")):
        kind = module_path.stem.removesuffix("_cases")
        if wanted is None or kind in wanted:
            importlib.import_module(f"corpus.{module_path.stem}")  # registers its cases once
    return [c for c in _REGISTRY.values() if wanted is None or c.kind in wanted]


def write_corpus(out_dir: Path, kinds: Iterable[str] | None = None) -> list[tuple[Case, Path]]:
    """Write the cases into out_dir (created if needed) with a manifest.json; returns (case, path) pairs."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for c in load_cases(kinds):
        dest = out_dir / c.filename
        c.write(dest)
        written.append((c, dest))
    manifest = [{"name": c.name, "kind": c.kind, "path": p.name, "expect": c.expect} for c, p in written]
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return written


def main(kinds: list[str] | None, argv: list[str] | None = None) -> int:
    """Command line: `<script> [OUT_DIR]` writes the corpus (default build/corpus) and lists it."""
    argv = sys.argv[1:] if argv is None else argv
    out_dir = Path(argv[0]) if argv else CORPUS_DIR.parent.parent / "build" / "corpus"
    written = write_corpus(out_dir, kinds)
    for c, path in written:
        print(f"{path}  (expect: {c.expect})")
    print(f"{len(written)} cases in {out_dir}")
    return 0
