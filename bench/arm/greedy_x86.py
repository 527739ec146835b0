"""The x86-64 half of bench/arm/llama_check.sh: what llama.cpp's llama-simple example prints, computed through
llama-cpp-python's own libllama on this machine.

    .venv/bin/python bench/arm/greedy_x86.py MODEL.gguf N_PREDICT PROMPT

Mirrors llama-simple step for step so the two outputs can be compared byte for byte: the prompt tokenized with
special tokens (add_special and parse_special), llama.cpp's default context parameters (flash attention "auto",
F16 KV cache) with n_ctx = n_prompt + n_predict - 1 and n_batch = n_prompt, a greedy sampler, the prompt's pieces
printed first (special pieces included), then each sampled piece until an end-of-generation token or n_predict
tokens, then a newline. The high-level llama_cpp.Llama would differ: it turns flash attention off by default.
"""
from __future__ import annotations

import ctypes
import sys

import llama_cpp as lc

from ggufkit.runtime import backends

backends.ensure()


def piece(vocab, token: int) -> bytes:
    buf = ctypes.create_string_buffer(128)
    n = lc.llama_token_to_piece(vocab, token, buf, len(buf), 0, True)
    if n < 0:
        raise RuntimeError(f"token {token}: no piece")
    return buf.raw[:n]


def greedy_text(model_path: str, n_predict: int, prompt: str) -> tuple[bytes, list[int]]:
    """(the text llama-simple prints, the sampled token ids)"""
    lc.llama_backend_init()
    model = lc.llama_model_load_from_file(model_path.encode(), lc.llama_model_default_params())
    if not model:
        raise RuntimeError(f"{model_path}: llama.cpp cannot load it")
    vocab = lc.llama_model_get_vocab(model)
    text = prompt.encode()
    n_prompt = -lc.llama_tokenize(vocab, text, len(text), None, 0, True, True)
    tokens = (lc.llama_token * n_prompt)()
    if lc.llama_tokenize(vocab, text, len(text), tokens, n_prompt, True, True) < 0:
        raise RuntimeError("tokenizing the prompt failed")

    params = lc.llama_context_default_params()
    params.n_ctx = n_prompt + n_predict - 1
    params.n_batch = n_prompt
    ctx = lc.llama_init_from_model(model, params)
    sampler = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    lc.llama_sampler_chain_add(sampler, lc.llama_sampler_init_greedy())

    out = b"".join(piece(vocab, t) for t in tokens)
    sampled: list[int] = []
    batch_tokens, n_pos = tokens, 0
    while n_pos + len(batch_tokens) < n_prompt + n_predict:
        if lc.llama_decode(ctx, lc.llama_batch_get_one(batch_tokens, len(batch_tokens))) != 0:
            raise RuntimeError("llama_decode failed")
        n_pos += len(batch_tokens)
        token = lc.llama_sampler_sample(sampler, ctx, -1)
        if lc.llama_vocab_is_eog(vocab, token):
            break
        sampled.append(token)
        out += piece(vocab, token)
        batch_tokens = (lc.llama_token * 1)(token)
    lc.llama_sampler_free(sampler)
    lc.llama_free(ctx)
    lc.llama_model_free(model)
    return out + b"\n", sampled


if __name__ == "__main__":
    text, ids = greedy_text(sys.argv[1], int(sys.argv[2]), sys.argv[3])
    sys.stdout.buffer.write(text)
    print("token ids:", *ids, file=sys.stderr)
