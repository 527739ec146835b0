"""`ggufkit eval` against independent computations: perplexity from transformers' float32 logits of the same
checkpoint, KL divergence and top-1 agreement recomputed with torch from llama.cpp's own logits, and the CLI's
one-line errors on bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from convert_fixtures import OUT_DIR, SHAKESPEARE, converted, llama_cpp_logits, transformers_logits

from ggufkit.evaluate import evaluate

CTX, CHUNKS = 128, 2


@pytest.fixture(scope="module")
def text_file():
    """A stretch of Hamlet well past the Gutenberg header, enough for a few chunks of CTX tokens."""
    text = SHAKESPEARE.read_text(encoding="utf-8", errors="replace")
    path = OUT_DIR / "eval-hamlet.txt"
    path.write_text(text[len(text) // 2:][:6000], encoding="utf-8")
    return path


def hf_chunks(model_dir, text_path, ctx: int, n: int) -> list[list[int]]:
    """The chunks llama-perplexity scores, cut from the HF tokenizer's ids: n chunks of ctx tokens, the first
    token of each replaced by BOS when the tokenizer adds one."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok(text_path.read_text(encoding="utf-8"))["input_ids"]
    adds_bos = tok.bos_token_id is not None and ids[0] == tok.bos_token_id
    assert len(ids) >= n * ctx
    chunks = [list(ids[c * ctx:(c + 1) * ctx]) for c in range(n)]
    for chunk in chunks:
        if adds_bos:
            chunk[0] = tok.bos_token_id
    return chunks


def torch_ppl(model_dir, chunks: list[list[int]]) -> float:
    """exp(mean NLL) over the second half of each chunk (positions ctx/2 .. ctx-2 predict the next token), from
    transformers' float32 logits."""
    import torch

    nll = []
    for chunk in chunks:
        ctx = len(chunk)
        logits = torch.from_numpy(transformers_logits(model_dir, tuple(chunk)))  # (ctx, vocab) f32
        logp = torch.log_softmax(logits.double(), dim=-1)[ctx // 2: ctx - 1]  # (ctx/2 - 1, vocab)
        targets = torch.tensor(chunk[ctx // 2 + 1:])  # (ctx/2 - 1,)
        nll.append(-logp.gather(1, targets[:, None])[:, 0])
    return math.exp(torch.cat(nll).mean().item())


@pytest.mark.parametrize("model", ["tiny-llama", "demo"])
def test_perplexity_matches_transformers(model, tiny_checkpoint, demo_dir, text_file):
    src = tiny_checkpoint("llama") if model == "tiny-llama" else demo_dir
    result = evaluate(converted(src, "f32"), text_file, ctx=CTX, chunks=CHUNKS)
    expected = torch_ppl(src, hf_chunks(src, text_file, CTX, CHUNKS))
    assert result.chunks == CHUNKS and result.tokens_scored == CHUNKS * (CTX // 2 - 1)
    assert abs(result.ppl / expected - 1) < 0.01, (result.ppl, expected)
    if model == "demo":  # a real model on English text: far from uniform over 49152 tokens
        assert 5 < result.ppl < 200, result.ppl


def test_kld_and_top1_match_torch_on_llama_cpp_logits(demo_dir, text_file):
    """KLD(F32 || Q4_K_M) and top-1 agreement, recomputed with torch.nn.functional.kl_div from the logits
    llama.cpp gives for the same chunks."""
    import torch
    import torch.nn.functional as F

    ref, quant = converted(demo_dir, "f32"), converted(demo_dir, "q4_k_m")
    result = evaluate(quant, text_file, ctx=CTX, chunks=CHUNKS, ref=ref)
    klds, agree = [], []
    for chunk in hf_chunks(demo_dir, text_file, CTX, CHUNKS):
        scored = slice(CTX // 2, CTX - 1)
        lp_ref = torch.log_softmax(torch.from_numpy(llama_cpp_logits(ref, chunk)[scored]).double(), -1)
        lp_q = torch.log_softmax(torch.from_numpy(llama_cpp_logits(quant, chunk)[scored]).double(), -1)
        # kl_div(input=log q, target=log p, log_target) = p (log p - log q) elementwise
        klds.append(F.kl_div(lp_q, lp_ref, reduction="none", log_target=True).sum(-1))
        agree.append(lp_q.argmax(-1) == lp_ref.argmax(-1))
    expected_kld = torch.cat(klds).mean().item()
    expected_top1 = torch.cat(agree).double().mean().item()
    assert expected_kld > 1e-3  # Q4_K_M really differs from F32, so the comparison means something
    assert abs(result.kld / expected_kld - 1) < 0.02, (result.kld, expected_kld)
    assert abs(result.top1 - expected_top1) <= 2 / result.tokens_scored, (result.top1, expected_top1)
    assert result.ref_ppl is not None and result.ppl != result.ref_ppl


def test_model_against_itself_has_zero_kld(tiny_checkpoint, text_file):
    from click.testing import CliRunner

    from ggufkit.cli import cli

    model = converted(tiny_checkpoint("llama"), "q8_0")
    out = CliRunner().invoke(cli, ["eval", str(model), "--text", str(text_file), "--ctx", str(CTX),
                                   "--chunks", "1", "--ref", str(model), "--json"])
    assert out.exit_code == 0, out.output
    r = json.loads(out.output)
    assert r["chunks"] == 1 and r["tokens_scored"] == CTX // 2 - 1
    assert abs(r["kld"]) < 1e-9 and r["top1"] == 1.0 and r["rms_dp"] < 1e-9
    assert r["ppl"] == r["ref_ppl"]


def run_cli(capsys, *args) -> tuple[int, str]:
    from ggufkit.cli import main

    code = main(["eval", *map(str, args)])
    return code, capsys.readouterr().err


def test_bad_input_is_a_one_line_error(tiny_checkpoint, text_file, tmp_path, capsys):
    model = converted(tiny_checkpoint("llama"), "q8_0")
    other_vocab = converted(tiny_checkpoint("llama-spm"), "q8_0")
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("just some text, not a model\n")
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be.\n")
    capsys.readouterr()  # drop what building the fixtures printed
    cases = [
        ((tmp_path / "missing.gguf", "--text", text_file), "missing.gguf: no such file"),
        ((not_gguf, "--text", text_file), "notes.gguf: not a GGUF file"),
        ((model, "--text", short, "--ctx", CTX), "short.txt: "),
        ((model, "--text", tmp_path / "nowhere.txt"), "nowhere.txt: cannot read text"),
        ((model, "--text", text_file, "--ctx", CTX, "--chunks", 1, "--ref", other_vocab),
         f"{other_vocab.name}: vocabulary of"),
    ]
    for args, expected in cases:
        code, err = run_cli(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (args, code, err)
        assert expected in lines[0], (expected, lines[0])
    assert "fewer than one chunk" in run_cli(capsys, model, "--text", short, "--ctx", CTX)[1]


def test_chunks_are_llama_perplexity_chunks():
    """chunk_tokens and scored_positions are the building blocks the numbers above rest on."""
    from ggufkit.evaluate import chunk_tokens, scored_positions

    tokens = list(range(10, 30))  # 20 tokens
    assert chunk_tokens(tokens, 8, None, bos=1) == [[1, *range(11, 18)], [1, *range(19, 26)]]
    assert chunk_tokens(tokens, 8, 1, bos=None) == [list(range(10, 18))]
    assert np.arange(8)[scored_positions(8)].tolist() == [4, 5, 6]
