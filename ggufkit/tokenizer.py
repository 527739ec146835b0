"""Hugging Face tokenizer -> GGUF tokenizer metadata, so that llama.cpp produces the same token ids as HF.

One entry point, `add_tokenizer(writer, model_dir, hf_config)`, writes every `tokenizer.*` key llama.cpp reads:

- BPE on bytes (GPT-2 style, `tokenizer.json` with a ByteLevel pre-tokenizer): model "gpt2", the token list,
  token types, merges and the pre-tokenizer name (`tokenizer.ggml.pre`) that selects llama.cpp's split regex.
- SentencePiece (`tokenizer.model`): model "llama", pieces, scores and types, plus HF's added tokens.
- SentencePiece-style BPE in tokenizer.json for an architecture that asks for llama.cpp's "gemma4" tokenizer
  (archs: `spm_bpe_tokenizer = "gemma4"`): model "gemma4", the token list with <0xXX> byte tokens, the merges
  (llama.cpp runs them on raw UTF-8 with "▁" for spaces, split only at newlines); no scores.
- Both: special token ids (bos, eos, unk, pad, eot/eom), add_bos/add_eos as HF actually applies them, and the
  chat template (tokenizer_config.json or chat_template.jinja).

The vocabulary is padded with unused "[PAD<i>]" tokens up to the embedding's row count (hf_config["vocab_size"]),
as llama.cpp's own converter does. Readers: the `tokenizers` library on tokenizer.json (plus the special tokens
named in tokenizer_config.json / special_tokens_map.json) for the token table and the reference behaviour,
gguf-py's SpecialVocab for merges, special ids and the chat template, and sentencepiece for `.model` files. Only a
checkpoint with tokenizer.model and no tokenizer.json goes through transformers' AutoTokenizer (never with remote
code): transformers imports torch, which alone costs ~330 MiB of peak RSS during a conversion.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from ggufkit.errors import InputError

TokenType = gguf.TokenType

# ---- pre-tokenizer identification
# llama.cpp keeps one hard-coded split regex per pre-tokenizer *name*. Its converter names a BPE tokenizer by
# encoding this fixed text and hashing the ids (sha256 of the Python repr of the id list); the table below holds
# (hash -> name) pairs from llama.cpp's convert_hf_to_gguf.py for the families people run locally.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
    "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
PRE_BY_HASH = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3 / 3.1 / 3.2
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "d353350c764d8c3b39c763113960e4fb4919bea5fbf208a0e3b22e8469dc7406": "llama4",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2 / Qwen2.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "d30d75d9059f1aa2c19359de71047b3ae408c70875e8a3ccf8c5fba56c9d8af4": "qwen35",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085": "phi-2",
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral Nemo
    "0e9433cbbb161f89e264eb32e8e64bfe69e834973ffca5d41d3948a604a3e2a3": "pixtral",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "8aeee3860c56296a157a1fe2fad249ec40aa59b1bb5709f4ade11c4e6fe652ed": "falcon",
    "b6dc8df998e1cfbdc4eac8243701a65afe638679230920b50d6f17d81c098166": "olmo",  # also MPT: same regex
    "32d85c31273f8019248f2559fed492d929ea28b17e51d81d3bb36fff23ca72b3": "stablelm2",
    "9c2227e4dd922002fb81bde4fc02b0483ca4f12911410dee2255e4987644e3f8": "command-r",
    "a8594e3edff7c29c003940395316294b2c623e09894deebbc65f33f1515df79e": "dbrx",
    "6221ad2852e85ce96f791f476e0b390cf9b474c9e3d1362f53a24a06dc8220ff": "refact",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5": "deepseek-v3",
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",
    "4e2b24cc4770243d65a2c9ec19770a72f08cffc161adbb73fcbb6b7dd45a0aae": "exaone",
    "a6b57017d60e6edb4d88ecc2845188e0eb333a70357e45dcc9b53964a73bbae6": "falcon-h1",
}

# Fallback when the hash is unknown (e.g. a retrained vocabulary): recognise the pre-tokenizer from
# tokenizer.json's structure. Each split regex below is the one HF applies; the name is the llama.cpp
# pre-tokenizer whose built-in regex splits text the same way.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_BY_STRUCTURE = {
    ("bytelevel-regex",): "gpt-2",
    ("digits-individual", "bytelevel-regex"): "smollm",
    ("split:" + _LLAMA3_SPLIT, "bytelevel"): "llama-bpe",
    ("split:" + _QWEN2_SPLIT, "bytelevel"): "qwen2",
}

# Added tokens whose text marks them as control tokens even when tokenizer_config does not flag them special
# (the rule llama.cpp's converter applies: <|...|>, fullwidth <｜...｜>, <unused...>, and a few literal names).
_SPECIAL_LOOKING_NAMES = {"<pad>", "<mask>", "<2mass>", "[@BOS@]"}
# End-of-turn / end-of-message tokens by text; written as eot/eom ids so generation stops on them.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>")
_EOM_TEXTS = ("<|eom_id|>",)

SPM_UNUSED_SCORE = -1000.0
_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass
class GgufVocab:
    """Everything add_tokenizer writes, in GGUF terms. Lists are indexed by token id, len == n_vocab."""
    model: str                      # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str                        # llama.cpp pre-tokenizer name
    tokens: list[str]
    types: list[int]                # gguf.TokenType values
    scores: list[float] | None = None
    add_space_prefix: bool | None = None
    add_bos: bool = False
    add_eos: bool = False
    extra_ids: dict[str, int] = field(default_factory=dict)  # eot / eom


# ---- entry point

def add_tokenizer(writer: gguf.GGUFWriter, model_dir: Path, hf_config: dict, spm_bpe: str = "llama") -> None:
    """Write the tokenizer of the HF checkpoint in `model_dir` into `writer` (tokenizer.* keys only).
    spm_bpe: the llama.cpp tokenizer a SentencePiece-style BPE tokenizer.json becomes ("llama" or "gemma4")."""
    model_dir = Path(model_dir)
    vocab = read_vocab(model_dir, hf_config, spm_bpe)
    special = _special_vocab(model_dir, vocab)

    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    special.add_to_gguf(writer, quiet=True)


def read_vocab(model_dir: Path, hf_config: dict, spm_bpe: str = "llama") -> GgufVocab:
    """Read the checkpoint's tokenizer into a GgufVocab (no writing). Raises InputError when there is none or it
    is of a kind llama.cpp cannot reproduce."""
    model_dir = Path(model_dir)
    spm_file = model_dir / "tokenizer.model"
    json_file = model_dir / "tokenizer.json"
    if not spm_file.is_file() and not json_file.is_file():
        raise InputError("no tokenizer.json or tokenizer.model (the GGUF needs the tokenizer)", model_dir)
    if spm_file.is_file():  # name a corrupt .model here: transformers would fall back to guessing tiktoken
        _load_sentencepiece(spm_file)
    tokenizer = JsonTokenizer(model_dir) if json_file.is_file() else _load_hf_tokenizer(model_dir)
    gemma4 = spm_bpe == "gemma4" and json_file.is_file()
    if gemma4 and _json_tokenizer_kind(tok_json := _read_json(json_file), json_file) == "sentencepiece-bpe":
        vocab = _gemma4_vocab(tokenizer, tok_json, json_file, _n_vocab(hf_config, len(tokenizer), json_file))
    elif spm_file.is_file():
        vocab = _sentencepiece_vocab(spm_file, tokenizer, _n_vocab(hf_config, len(tokenizer), spm_file))
    else:
        tok_json = _read_json(json_file)
        kind = _json_tokenizer_kind(tok_json, json_file)
        n_vocab = _n_vocab(hf_config, len(tokenizer), json_file)
        if kind == "bytelevel-bpe":
            vocab = _bpe_vocab(tokenizer, tok_json, json_file, n_vocab)
        elif kind == "sentencepiece-bpe":
            vocab = _sentencepiece_json_vocab(tokenizer, tok_json, json_file, n_vocab)
        else:
            raise InputError(f"unsupported tokenizer: {kind} (supported: byte-level BPE or SentencePiece-style "
                             "BPE tokenizer.json, SentencePiece tokenizer.model)", json_file)
    vocab.add_bos, vocab.add_eos = _hf_adds_bos_eos(tokenizer)
    vocab.extra_ids = _end_of_turn_ids(vocab)
    return vocab


# ---- readers

def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise InputError(f"cannot read as JSON: {e}", path) from None
    if not isinstance(data, dict):
        raise InputError(f"expected a JSON object, found {type(data).__name__}", path)
    return data


def _named_token(value) -> str | None:
    """A special token as tokenizer_config.json / special_tokens_map.json write it: a string or an AddedToken
    dict with "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class JsonTokenizer:
    """tokenizer.json through the `tokenizers` library, with the special tokens and add_bos/add_eos flags of
    tokenizer_config.json (special_tokens_map.json as the fallback) applied the way transformers' fast tokenizer
    applies them. It offers the few members of a transformers tokenizer this module reads (same names, so the
    transformers fallback for a lone tokenizer.model can stand in): len(), get_vocab, get_added_vocab,
    added_tokens_decoder, encode, decode, bos/eos_token_id, unk_token. Written here rather than using
    transformers because importing transformers imports torch."""

    NAMED = ("bos_token", "eos_token", "unk_token", "pad_token")

    def __init__(self, model_dir: Path):
        from tokenizers import AddedToken, Tokenizer, processors

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        json_file = model_dir / "tokenizer.json"
        try:
            self._tok = Tokenizer.from_file(str(json_file))
        except Exception as e:  # noqa: BLE001 -- the Rust side raises plain Exception for every parse error
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"cannot load the tokenizer: {first_line}", json_file) from None
        config = self._config(model_dir)
        self._names = {k: _named_token(config.get(k)) for k in self.NAMED}
        extra = config.get("additional_special_tokens") or config.get("extra_special_tokens") or []
        extra = [t for t in map(_named_token, extra if isinstance(extra, list) else []) if t]
        # transformers adds a named special token missing from the vocabulary as a new special token
        vocab = self._tok.get_vocab(with_added_tokens=True)
        missing = [t for t in dict.fromkeys([*self._names.values(), *extra]) if t and t not in vocab]
        if missing:
            self._tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        # transformers 5 rebuilds the post-processor as "[bos] $A [eos]" when tokenizer_config.json sets
        # add_bos_token / add_eos_token (a flag whose token is not defined counts as False)
        if "add_bos_token" in config or "add_eos_token" in config:
            bos, eos = self._names["bos_token"], self._names["eos_token"]
            add_bos = bool(config.get("add_bos_token")) and bos is not None
            add_eos = bool(config.get("add_eos_token")) and eos is not None
            single = " ".join([f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos)
            pair = single + " " + " ".join([f"{bos}:1"] * add_bos + ["$B:1"] + [f"{eos}:1"] * add_eos)
            specials = [(t, self._tok.token_to_id(t)) for t, on in ((bos, add_bos), (eos, add_eos)) if on]
            self._tok.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                                     special_tokens=specials)

    @staticmethod
    def _config(model_dir: Path) -> dict:
        """tokenizer_config.json's keys over special_tokens_map.json's (transformers' precedence)."""
        merged: dict = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            if (model_dir / name).is_file():
                merged.update({k: v for k, v in _read_json(model_dir / name).items() if v is not None})
        return merged

    def __len__(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    @property
    def added_tokens_decoder(self) -> dict:  # id -> tokenizers.AddedToken (content, special, normalized)
        return self._tok.get_added_tokens_decoder()

    def get_added_vocab(self) -> dict[str, int]:
        return {t.content: i for i, t in self.added_tokens_decoder.items()}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    def _id(self, name: str) -> int | None:
        text = self._names[name]
        return None if text is None else self._tok.token_to_id(text)

    @property
    def bos_token_id(self) -> int | None:
        return self._id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._id("eos_token")

    @property
    def unk_token(self) -> str | None:
        return self._names["unk_token"]


def _load_hf_tokenizer(model_dir: Path):
    """transformers' tokenizer for a checkpoint with only tokenizer.model: the reference for added tokens and
    special flags (it converts the SentencePiece model; imports torch)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its warnings about a bad file would break the one-line error
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False, local_files_only=True)
    except Exception as e:  # noqa: BLE001 -- transformers raises many types (ValueError, OSError, ...)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"transformers cannot load the tokenizer: {first_line}", model_dir) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    if not getattr(tokenizer, "is_fast", False) and not hasattr(tokenizer, "sp_model"):
        raise InputError(f"unsupported tokenizer class {type(tokenizer).__name__}", model_dir)
    return tokenizer


def _n_vocab(hf_config: dict, n_tokenizer: int, path: Path) -> int:
    """Rows of the embedding matrix: the GGUF token list must have exactly this many entries."""
    n = hf_config.get("vocab_size")
    if n is None and isinstance(hf_config.get("text_config"), dict):
        n = hf_config["text_config"].get("vocab_size")
    if n is None:
        return n_tokenizer
    if n < n_tokenizer:
        raise InputError(f"tokenizer has {n_tokenizer} tokens but config.json vocab_size is {n}", path)
    return int(n)


def _json_tokenizer_kind(tok_json: dict, path: Path) -> str:
    model = tok_json.get("model") or {}
    model_type = model.get("type")
    if model_type != "BPE":
        return f"{model_type or 'unknown'} model"
    if model.get("byte_fallback"):
        return "sentencepiece-bpe"
    if "bytelevel" not in " ".join(_pre_tokenizer_signature(tok_json.get("pre_tokenizer"))):
        return "BPE without a ByteLevel pre-tokenizer"
    return "bytelevel-bpe"


# ---- byte-level BPE (GPT-2 style)

def _bpe_vocab(tokenizer, tok_json: dict, path: Path, n_vocab: int) -> GgufVocab:
    """Token table as llama.cpp's converter builds it: ids without a token become unused "[PAD<i>]"; added
    tokens are CONTROL when special (or special-looking), else USER_DEFINED; the rest NORMAL."""
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    added_info = tokenizer.added_tokens_decoder  # id -> AddedToken (special, normalized flags)
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        elif text in added:
            info = added_info.get(i)
            if info is not None and not info.normalized:
                # llama.cpp matches CONTROL / USER_DEFINED tokens against raw text: store the text the token
                # stands for, i.e. what HF decodes it to.
                text = tokenizer.decode(tokenizer.encode(text, add_special_tokens=False))
            if (info is not None and info.special) or _looks_special(text):
                types.append(TokenType.CONTROL)
            else:
                text = text.replace("\u2581", " ")
                types.append(TokenType.USER_DEFINED)
            tokens.append(text)
        else:
            tokens.append(text)
            types.append(TokenType.NORMAL)
    return GgufVocab(model="gpt2", pre=_pre_tokenizer_name(tokenizer, tok_json, path), tokens=tokens, types=types)


def _looks_special(text: str) -> bool:
    return (text in _SPECIAL_LOOKING_NAMES
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<\uff5c") and text.endswith("\uff5c>"))
            or (text.startswith("<unused") and text.endswith(">")))


def check_hash(tokenizer) -> str:
    """llama.cpp's fingerprint of a BPE tokenizer: sha256 of the repr of the ids of CHECK_TEXT."""
    return hashlib.sha256(str(tokenizer.encode(CHECK_TEXT)).encode()).hexdigest()


def _pre_tokenizer_signature(pre: dict | None) -> tuple[str, ...]:
    """tokenizer.json's pre_tokenizer as a flat tuple of step names (see PRE_BY_STRUCTURE)."""
    if not pre:
        return ()
    if pre.get("type") == "Sequence":
        return tuple(s for p in pre.get("pretokenizers", []) for s in _pre_tokenizer_signature(p))
    kind = pre.get("type")
    if kind == "ByteLevel":
        return ("bytelevel-regex" if pre.get("use_regex", True) else "bytelevel",)
    if kind == "Digits":
        return ("digits-individual" if pre.get("individual_digits") else "digits",)
    if kind == "Split":
        pattern = pre.get("pattern") or {}
        return ("split:" + str(pattern.get("Regex", pattern.get("String", ""))),)
    return (str(kind),)


def _pre_tokenizer_name(tokenizer, tok_json: dict, path: Path) -> str:
    name = PRE_BY_HASH.get(check_hash(tokenizer))
    if name is None:
        name = PRE_BY_STRUCTURE.get(_pre_tokenizer_signature(tok_json.get("pre_tokenizer")))
    if name is None:
        raise InputError("unrecognised BPE pre-tokenizer (its split rules match none llama.cpp implements): "
                         f"{json.dumps(tok_json.get('pre_tokenizer'))[:200]}", path)
    return name


# ---- SentencePiece

def _load_sentencepiece(spm_file: Path):
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(spm_file))
    except (OSError, RuntimeError) as e:
        raise InputError(f"not a SentencePiece model: {e}", spm_file) from None
    return sp


def _sentencepiece_vocab(spm_file: Path, tokenizer, n_vocab: int) -> GgufVocab:
    """Pieces, scores and types from the .model file; HF's added tokens on top; "[PAD<i>]" up to n_vocab."""
    sp = _load_sentencepiece(spm_file)
    if sp.vocab_size() > n_vocab:
        raise InputError(f"SentencePiece model has {sp.vocab_size()} pieces but config.json vocab_size is "
                         f"{n_vocab}", spm_file)
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [SPM_UNUSED_SCORE] * n_vocab
    types = [int(TokenType.UNUSED)] * n_vocab
    for i in range(sp.vocab_size()):
        tokens[i] = sp.IdToPiece(i)
        scores[i] = sp.GetScore(i)
        types[i] = (TokenType.UNKNOWN if sp.IsUnknown(i) else TokenType.CONTROL if sp.IsControl(i)
                    else TokenType.UNUSED if sp.IsUnused(i) else TokenType.BYTE if sp.IsByte(i)
                    else TokenType.NORMAL)
    _overlay_added_tokens(tokenizer, tokens, scores, types, sp.vocab_size(), spm_file)
    return GgufVocab(model="llama", pre="default", tokens=tokens, types=[int(t) for t in types], scores=scores,
                     add_space_prefix=_sentencepiece_adds_prefix(sp))


def _overlay_added_tokens(tokenizer, tokens: list[str], scores: list[float], types: list[int], n_base: int,
                          path: Path) -> None:
    """HF's added tokens over the base pieces, in place: special (or special-looking) ones CONTROL, others
    USER_DEFINED with "▁" written as a space (llama.cpp matches them against raw text)."""
    n_vocab = len(tokens)
    for i, info in tokenizer.added_tokens_decoder.items():
        if i >= n_vocab:
            raise InputError(f"added token {info.content!r} has id {i}, beyond vocab_size {n_vocab}", path)
        if i < n_base and tokens[i] == info.content:
            # the piece itself (<unk>, <s>, </s>): keep its score; a plain piece flagged special is a control
            if types[i] == TokenType.NORMAL and info.special:
                types[i] = TokenType.UNKNOWN if info.content == tokenizer.unk_token else TokenType.CONTROL
            continue
        if info.special or _looks_special(info.content):
            tokens[i], types[i] = info.content, TokenType.CONTROL
        else:
            tokens[i], types[i] = info.content.replace("\u2581", " "), TokenType.USER_DEFINED
        scores[i] = SPM_UNUSED_SCORE


def _sentencepiece_json_vocab(tokenizer, tok_json: dict, path: Path, n_vocab: int) -> GgufVocab:
    """A SentencePiece-derived BPE (byte fallback, "▁" for spaces) found only as tokenizer.json, as transformers
    5 saves Llama-2 / Mistral / Gemma style tokenizers. llama.cpp's SentencePiece tokenizer repeatedly merges the
    adjacent pair whose concatenation has the highest score; HF's BPE applies the lowest-ranked merge. Scoring
    each piece by minus the rank of the first merge producing it makes both pick the same merge at every step.
    (gguf-py's LlamaHfVocab gives every piece the same score, which loses that order.)"""
    model = tok_json["model"]
    first_rank: dict[str, int] = {}
    for rank, merge in enumerate(model.get("merges") or []):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        first_rank.setdefault(left + right, rank)
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [SPM_UNUSED_SCORE] * n_vocab
    types = [int(TokenType.UNUSED)] * n_vocab
    n_base = 0
    for piece, i in model["vocab"].items():
        if i >= n_vocab:
            raise InputError(f"token {piece!r} has id {i}, beyond vocab_size {n_vocab}", path)
        tokens[i] = piece
        scores[i] = -float(first_rank[piece]) if piece in first_rank else 0.0
        types[i] = TokenType.BYTE if _BYTE_PIECE.fullmatch(piece) else TokenType.NORMAL
        n_base = max(n_base, i + 1)
    if model.get("unk_token") in model["vocab"]:
        types[model["vocab"][model["unk_token"]]] = TokenType.UNKNOWN
    _overlay_added_tokens(tokenizer, tokens, scores, types, n_base, path)
    return GgufVocab(model="llama", pre="default", tokens=tokens, types=[int(t) for t in types], scores=scores,
                     add_space_prefix=_json_adds_prefix(tok_json))


# Added tokens llama.cpp's converter keeps USER_DEFINED for Gemma 4 although they are special in HF: the chat
# parser reads them from the output text, so they must be rendered.
GEMMA4_VISIBLE = frozenset({"<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
                            "<tool_response|>", '<|"|>'})


def _gemma4_vocab(tokenizer, tok_json: dict, path: Path, n_vocab: int) -> GgufVocab:
    """llama.cpp's "gemma4" tokenizer: BPE with merges over the pieces as HF stores them ("▁" for spaces, <0xXX>
    byte tokens BYTE); added tokens CONTROL when special, except GEMMA4_VISIBLE (USER_DEFINED, as are non-special
    ones); ids without a token "[PAD<i>]". llama.cpp reads the pre-tokenizer from the model name."""
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [int(TokenType.UNUSED)] * n_vocab
    for piece, i in tok_json["model"]["vocab"].items():
        if i >= n_vocab:
            raise InputError(f"token {piece!r} has id {i}, beyond vocab_size {n_vocab}", path)
        tokens[i] = piece
        types[i] = TokenType.BYTE if _BYTE_PIECE.fullmatch(piece) else TokenType.NORMAL
    for i, info in tokenizer.added_tokens_decoder.items():
        if i >= n_vocab:
            raise InputError(f"added token {info.content!r} has id {i}, beyond vocab_size {n_vocab}", path)
        tokens[i] = info.content
        types[i] = (TokenType.CONTROL if info.special and info.content not in GEMMA4_VISIBLE
                    else TokenType.USER_DEFINED)
    return GgufVocab(model="gemma4", pre="gemma4", tokens=tokens, types=[int(t) for t in types],
                     add_space_prefix=False)


def _json_adds_prefix(tok_json: dict) -> bool:
    """Whether tokenizer.json prepends "▁" to the text: a Metaspace pre-tokenizer with prepend_scheme first or
    always (add_prefix_space in older files), or a Prepend("▁") normaliser."""
    def steps(node: dict | None, key: str) -> list[dict]:
        if not node:
            return []
        return [s for n in node.get(key, []) for s in steps(n, key)] if node.get("type") == "Sequence" else [node]

    for step in steps(tok_json.get("pre_tokenizer"), "pretokenizers"):
        if step.get("type") == "Metaspace":
            scheme = step.get("prepend_scheme", "always" if step.get("add_prefix_space", True) else "never")
            return scheme != "never"
    return any(s.get("type") == "Prepend" and s.get("prepend") == "\u2581"
               for s in steps(tok_json.get("normalizer"), "normalizers"))


def _sentencepiece_adds_prefix(sp) -> bool:
    """Whether the model's normaliser prepends "▁" (add_dummy_prefix), measured rather than parsed from the
    protobuf so no protobuf dependency is needed."""
    pieces = sp.EncodeAsPieces("a")
    return bool(pieces) and pieces[0].startswith("\u2581")


# ---- special tokens, add_bos / add_eos, chat template

def _hf_adds_bos_eos(tokenizer) -> tuple[bool, bool]:
    """What HF really does on encode(add_special_tokens=True): read off, not guessed from config flags."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bos is not None and len(full) > len(plain) and full[0] == bos and full[1:1 + len(plain)] == plain
    add_eos = eos is not None and len(full) > len(plain) and full[-1] == eos and full[-1 - len(plain):-1] == plain
    return add_bos, add_eos


def _end_of_turn_ids(vocab: GgufVocab) -> dict[str, int]:
    ids: dict[str, int] = {}
    for i, (text, kind) in enumerate(zip(vocab.tokens, vocab.types)):
        if kind != TokenType.CONTROL:
            continue
        if text in _EOT_TEXTS and "eot" not in ids:
            ids["eot"] = i
        elif text in _EOM_TEXTS and "eom" not in ids:
            ids["eom"] = i
    return ids


def _special_vocab(model_dir: Path, vocab: GgufVocab) -> gguf.SpecialVocab:
    """gguf-py's SpecialVocab (merges, bos/eos/unk/pad ids, chat template), with add_bos/add_eos replaced by the
    measured HF behaviour and eot/eom added."""
    # SpecialVocab logs warnings about post-processor shapes it cannot parse; add_bos/add_eos are measured
    # below instead, so those warnings would only be noise on the convert command's output.
    vocab_logger = logging.getLogger("gguf.vocab")
    level = vocab_logger.level
    vocab_logger.setLevel(logging.ERROR)
    try:
        special = gguf.SpecialVocab(model_dir, load_merges=vocab.model in ("gpt2", "gemma4"),
                                    n_vocab=len(vocab.tokens))
    finally:
        vocab_logger.setLevel(level)
    if vocab.model in ("gpt2", "gemma4") and not special.merges:
        kind = "byte-level BPE" if vocab.model == "gpt2" else "BPE"
        raise InputError(f"{kind} tokenizer without merges", model_dir / "tokenizer.json")
    special.add_special_token = {k: v for k, v in special.add_special_token.items() if k not in ("bos", "eos")}
    special.add_special_token["bos"] = vocab.add_bos
    special.add_special_token["eos"] = vocab.add_eos
    for kind, tid in vocab.extra_ids.items():
        special.special_token_ids.setdefault(kind, tid)
    if special.chat_template is None:
        template = _chat_template_fallback(model_dir)
        if template is not None:
            special.chat_template = template
    return special


def _chat_template_fallback(model_dir: Path) -> str | None:
    """SpecialVocab reads chat_template.jinja only next to a tokenizer_config.json; cover the file alone."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    return None
