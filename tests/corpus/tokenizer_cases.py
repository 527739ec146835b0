"""Malformed or missing tokenizer files: each case is the tiny llama checkpoint directory (valid config and
weights) with tokenizer.json / tokenizer.model replaced. `expect` is a substring of the one-line error."""
from __future__ import annotations

import json
from pathlib import Path

from corpus.checkpoint_dir import checkpoint, tiny_dir
from corpus.framework import case

JSON = "tokenizer.json"


def tokenizer_case(name: str, expect: str, files: dict[str, bytes | dict | None]):
    def write(dest: Path) -> None:
        checkpoint(dest, files)
    case("tokenizer", name, expect)(write)


def _tiny_tokenizer() -> dict:
    return json.loads((tiny_dir() / JSON).read_text(encoding="utf-8"))


def edited_case(name: str, expect: str, edit):
    """The tiny tokenizer.json after edit(dict) changed it in place."""
    def write(dest: Path) -> None:
        tok = _tiny_tokenizer()
        edit(tok)
        checkpoint(dest, {JSON: tok})
    case("tokenizer", name, expect)(write)


tokenizer_case("missing", "no tokenizer.json or tokenizer.model", {JSON: None})
tokenizer_case("empty", "cannot load the tokenizer", {JSON: b""})
tokenizer_case("not_json", "cannot load the tokenizer", {JSON: b'{"version": "1.0", "model": {'})
tokenizer_case("not_object", "cannot load the tokenizer", {JSON: b"[1, 2, 3]"})
tokenizer_case("deeply_nested", "cannot load the tokenizer", {JSON: b"[" * 100_000 + b"]" * 100_000})
tokenizer_case("spm_model_garbage", "tokenizer.model: not a SentencePiece model", {JSON: None, "tokenizer.model": b"\x00garbage, not a protobuf"})


def _word_level(tok: dict) -> None:
    tok["model"] = {"type": "WordLevel", "vocab": {"[UNK]": 0, "hello": 1}, "unk_token": "[UNK]"}
    tok["added_tokens"] = []


def _no_merges(tok: dict) -> None:
    tok["model"]["merges"] = []


def _vocab_over_config(tok: dict) -> None:
    n = len(tok["model"]["vocab"])
    tok["model"]["vocab"] |= {f"extra{i}": n + i for i in range(100)}  # more tokens than vocab_size 49152


edited_case("unknown_model_type", "unsupported tokenizer: WordLevel model", _word_level)
edited_case("bpe_without_merges", "byte-level BPE tokenizer without merges", _no_merges)
edited_case("more_tokens_than_vocab_size", "but config.json vocab_size is 49152", _vocab_over_config)
