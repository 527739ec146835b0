"""Tokenizers against llama.cpp's own vocabulary test files (vendored in the llama-cpp-python sdist:
models/ggml-vocab-<name>.gguf, with .inp texts and the .out token ids llama.cpp's tokenizer tests expect).

The HF tokenizer is rebuilt from the vocabulary GGUF with the `tokenizers` library (tokens, merges, special
tokens, the split regex the tokenizer.json of that family carries), a tiny checkpoint is made with it, ggufkit
converts it, and llama.cpp tokenizes every .inp text from ggufkit's file: the ids must be the .out ids.

qwen35: ggml-vocab-qwen35.gguf holds 151936 tokens (the Qwen2/3 vocabulary size); rebuilt with the Qwen 3.5 split
regex its hash is a Qwen2/Qwen3 one, so ggufkit - as llama.cpp's converter, which names pre-tokenizers by that
hash - writes tokenizer.ggml.pre "qwen2" where the reference file says "qwen35"; on all 51 test texts the two
regexes split alike and the ids equal the .out ids.

gemma-4: ggml-vocab-gemma-4.gguf (262144 tokens, 514906 merges, written by llama.cpp's converter from the real
Gemma 4 tokenizer) is rebuilt as transformers' GemmaTokenizer pipeline (BPE with byte fallback over "▁" pieces; the
rebuilt tokenizer itself gives the .out ids). ggufkit must write llama.cpp's "gemma4" tokenizer: the same token
list, token types (the chat markers <|channel> ... USER_DEFINED although HF flags them special) and merges as the
reference file, the same special ids, and llama.cpp must tokenize every .inp text to its .out ids."""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
from convert_fixtures import gguf_values

SDIST_MODELS = Path("/work/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp/models")
QWEN35_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _strings(field) -> list[str]:
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def rebuild_bpe_tokenizer(vocab_gguf: Path, split_regex: str, out: Path, eos: str) -> Path:
    """tokenizer.json + tokenizer_config.json for a GPT-2 style BPE vocabulary GGUF."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    fields = gguf.GGUFReader(vocab_gguf).fields
    tokens = _strings(fields["tokenizer.ggml.tokens"])
    types = [int(fields["tokenizer.ggml.token_type"].parts[i][0]) for i in fields["tokenizer.ggml.token_type"].data]
    merges = [tuple(m.split(" ", 1)) for m in _strings(fields["tokenizer.ggml.merges"])]
    normal = {t: i for i, t in enumerate(tokens) if types[i] == gguf.TokenType.NORMAL}
    tok = Tokenizer(models.BPE(vocab=normal, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens([AddedToken(t, special=types[i] == gguf.TokenType.CONTROL, normalized=False)
                    for i, t in enumerate(tokens) if types[i] != gguf.TokenType.NORMAL])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "TokenizersBackend", "eos_token": eos,
                                                           "pad_token": eos, "bos_token": None}))
    return out


def _cases(vocab_gguf: Path) -> list[tuple[str, list[int]]]:
    texts = vocab_gguf.with_suffix(".gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    ids = vocab_gguf.with_suffix(".gguf.out").read_text(encoding="utf-8").split("\n")
    return [(t, [int(x) for x in i.split()]) for t, i in zip(texts, ids)]


@pytest.mark.skipif(not (SDIST_MODELS / "ggml-vocab-qwen35.gguf").is_file(), reason="llama.cpp sdist not here")
def test_qwen35_vocabulary_gives_llama_cpps_expected_ids(tmp_path):
    import llama_cpp
    import tiny

    from ggufkit.conversion import convert

    vocab = SDIST_MODELS / "ggml-vocab-qwen35.gguf"
    tok_dir = rebuild_bpe_tokenizer(vocab, QWEN35_SPLIT, tmp_path / "tokenizer", "<|endoftext|>")
    src = tiny.make_tiny("qwen3.5", tmp_path / "tiny-qwen35-vocab", tokenizer_dir=tok_dir)
    ours = convert(src, tmp_path / "q35.gguf", scheme="f16", quiet=True)
    llm = llama_cpp.Llama(str(ours), vocab_only=True, verbose=False)
    try:
        cases = _cases(vocab)
        assert len(cases) == 51
        wrong = [(text[:30], got[:8], want[:8]) for text, want in cases
                 if (got := llm.tokenize(text.encode(), add_bos=False, special=False)) != want]
        assert not wrong, f"{len(wrong)} of {len(cases)} texts tokenize differently: {wrong[:3]}"
        assert llm.metadata["tokenizer.ggml.pre"] == "qwen2"  # see the module docstring
        ref = gguf.GGUFReader(vocab).fields
        assert int(llm.metadata["tokenizer.ggml.eos_token_id"]) == int(ref["tokenizer.ggml.eos_token_id"].contents())
        assert llm.n_vocab() >= len(ref["tokenizer.ggml.tokens"].data)  # the config pads to a multiple of 256
    finally:
        llm.close()


def rebuild_gemma4_tokenizer(vocab_gguf: Path, out: Path) -> Path:
    """tokenizer.json + tokenizer_config.json for Gemma 4's vocabulary, built as transformers' GemmaTokenizer
    builds its pipeline: Replace(" " -> "▁") normaliser, BPE with byte fallback, <bos> prepended. Control and
    user-defined tokens become special added tokens (the chat markers are special in HF's Gemma 4 tokenizer)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    ref = gguf_values(vocab_gguf, ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"))
    tokens, types = ref["tokenizer.ggml.tokens"], ref["tokenizer.ggml.token_type"]
    merges = [tuple(m.split(" ", 1)) for m in ref["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=True,
                               byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for i, t in enumerate(tokens) if types[i] in specials])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", tokens.index("<bos>"))])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>",
        "pad_token": "<pad>", "mask_token": "<mask>"}))
    return out


@pytest.mark.skipif(not (SDIST_MODELS / "ggml-vocab-gemma-4.gguf").is_file(), reason="llama.cpp sdist not here")
def test_gemma4_vocabulary_gives_llama_cpps_expected_ids(tmp_path):
    import llama_cpp
    import tiny
    from tokenizers import Tokenizer

    from ggufkit.conversion import convert

    vocab = SDIST_MODELS / "ggml-vocab-gemma-4.gguf"
    tok_dir = rebuild_gemma4_tokenizer(vocab, tmp_path / "tokenizer")
    cases = _cases(vocab)
    assert len(cases) == 46
    hf = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))  # the rebuilt tokenizer is faithful
    assert all(hf.encode(text, add_special_tokens=False).ids == want for text, want in cases)
    src = tiny.make_tiny("gemma4-dense", tmp_path / "tiny-gemma4-vocab", tokenizer_dir=tok_dir)
    ours = convert(src, tmp_path / "g4.gguf", scheme="f16", quiet=True)
    llm = llama_cpp.Llama(str(ours), vocab_only=True, verbose=False)
    try:
        wrong = [(text[:30], got[:8], want[:8]) for text, want in cases
                 if (got := llm.tokenize(text.encode(), add_bos=False, special=False)) != want]
        assert not wrong, f"{len(wrong)} of {len(cases)} texts tokenize differently: {wrong[:3]}"
        assert llm.tokenize(b"Hello", add_bos=True, special=False)[0] == 2  # <bos>
    finally:
        llm.close()
    keys = ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
            "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.padding_token_id", "tokenizer.ggml.mask_token_id", "tokenizer.ggml.add_space_prefix",
            "tokenizer.ggml.add_bos_token")
    got, ref = gguf_values(ours, keys), gguf_values(vocab, keys)
    assert got["tokenizer.ggml.model"] == "gemma4"
    for key in keys:
        assert got[key] == ref[key], key
