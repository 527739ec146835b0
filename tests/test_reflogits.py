"""Reference logits on disk (ggufkit.reflogits): the KLD, top-1, PPL and RMS Δp of a candidate scored against a
stored reference equal those computed with torch from both models' full llama.cpp logits (exactly when every
logit is kept, within 0.5% with the default top-k + tail buckets); the two models are never loaded together; a
saved file scores later candidates without the text; bad files are one-line errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from convert_fixtures import OUT_DIR, SHAKESPEARE, converted, llama_cpp_logits

from ggufkit import reflogits
from ggufkit.evaluate import evaluate

CTX, CHUNKS = 128, 2


@pytest.fixture(scope="module")
def text_file():
    text = SHAKESPEARE.read_text(encoding="utf-8", errors="replace")
    path = OUT_DIR / "reflogits-hamlet.txt"
    path.write_text(text[len(text) // 2:][:6000], encoding="utf-8")
    return path


def torch_scores(ref, quant, chunks: list[list[int]]) -> dict[str, float]:
    """KLD (torch.nn.functional.kl_div), top-1 agreement and reference PPL from the full logits of both models."""
    import torch
    import torch.nn.functional as F

    klds, agree, ref_nll = [], [], []
    scored = slice(CTX // 2, CTX - 1)
    for chunk in chunks:
        lp_ref = torch.log_softmax(torch.from_numpy(llama_cpp_logits(ref, chunk)[scored]).double(), -1)
        lp_q = torch.log_softmax(torch.from_numpy(llama_cpp_logits(quant, chunk)[scored]).double(), -1)
        klds.append(F.kl_div(lp_q, lp_ref, reduction="none", log_target=True).sum(-1))
        agree.append(lp_q.argmax(-1) == lp_ref.argmax(-1))
        targets = torch.tensor(chunk[CTX // 2 + 1:])
        ref_nll.append(-lp_ref.gather(1, targets[:, None])[:, 0])
    return {"kld": torch.cat(klds).mean().item(), "top1": torch.cat(agree).double().mean().item(),
            "ref_ppl": float(np.exp(torch.cat(ref_nll).mean().item()))}


@pytest.fixture(scope="module")
def demo_case(demo_dir, text_file):
    """(reference F32 file, Q4_K_M file, saved reference-logits file, torch's scores on the stored chunks)."""
    ref, quant = converted(demo_dir, "f32"), converted(demo_dir, "q4_k_m")
    saved = OUT_DIR / "demo-f32.ref-logits"
    own = reflogits.save_reference(ref, text_file, saved, ctx=CTX, chunks=CHUNKS)
    stored = reflogits.Reference(saved)
    chunks = [[int(t) for t in c] for c in stored.tokens]
    return ref, quant, saved, own, torch_scores(ref, quant, chunks)


def test_all_logits_kept_is_the_full_kld(demo_case, text_file):
    ref, quant, _, _, expected = demo_case
    r = evaluate(quant, text_file, ctx=CTX, chunks=CHUNKS, ref=ref, ref_topk=49152)
    assert expected["kld"] > 1e-3
    assert r.kld == pytest.approx(expected["kld"], rel=1e-9)
    assert r.top1 == pytest.approx(expected["top1"], abs=1e-12)
    assert r.ref_ppl == pytest.approx(expected["ref_ppl"], rel=1e-9)


def test_default_file_is_within_half_a_percent(demo_case):
    """The demo's distributions have long tails (PPL ~73 on Hamlet): 10% of the mass is outside the top 256."""
    _, quant, saved, own, expected = demo_case
    r = evaluate(quant, None, ref=saved)
    assert abs(r.kld / expected["kld"] - 1) < 0.005, (r.kld, expected["kld"])
    assert r.top1 == pytest.approx(expected["top1"], abs=1e-12)
    assert r.ref_ppl == pytest.approx(expected["ref_ppl"], rel=1e-9)
    assert r.ref_ppl == pytest.approx(own.ppl, rel=1e-12)  # the reference's own pass, same numbers
    assert r.chunks == CHUNKS and r.tokens_scored == CHUNKS * (CTX // 2 - 1)
    # compact: about 1 byte per vocabulary entry per position, against llama-perplexity's 2
    n_pos = CHUNKS * (CTX // 2 - 1)
    assert saved.stat().st_size < 0.6 * n_pos * 49152 * 2


def test_models_are_never_loaded_together(demo_case, text_file, monkeypatch):
    from ggufkit import evaluate as ev

    live, peak = [], [0]
    original_init, original_close = ev._LlamaScorer.__init__, ev._LlamaScorer.close

    def init(self, *a, **kw):
        original_init(self, *a, **kw)
        live.append(self)
        peak[0] = max(peak[0], len(live))

    def close(self):
        live.remove(self)
        original_close(self)

    monkeypatch.setattr(ev._LlamaScorer, "__init__", init)
    monkeypatch.setattr(ev._LlamaScorer, "close", close)
    ref, quant = demo_case[:2]
    evaluate(quant, text_file, ctx=CTX, chunks=1, ref=ref)
    assert peak[0] == 1 and not live


def test_cli_save_then_score_without_text(tiny_checkpoint, text_file, tmp_path):
    from click.testing import CliRunner

    from ggufkit.cli import cli

    ref, quant = converted(tiny_checkpoint("llama"), "f16"), converted(tiny_checkpoint("llama"), "q4_0")
    saved = tmp_path / "tiny.ref-logits"
    run = CliRunner().invoke(cli, ["eval", str(ref), "--text", str(text_file), "--ctx", str(CTX), "--chunks", "2",
                                   "--save-ref", str(saved), "--json"])
    assert run.exit_code == 0, run.output
    own = json.loads(run.output)
    assert own["saved_ref"] == str(saved) and reflogits.is_reference_file(saved)
    later = CliRunner().invoke(cli, ["eval", str(quant), "--ref", str(saved), "--json"])
    assert later.exit_code == 0, later.output
    direct = CliRunner().invoke(cli, ["eval", str(quant), "--text", str(text_file), "--ctx", str(CTX), "--chunks",
                                      "2", "--ref", str(ref), "--json"])
    a, b = json.loads(later.output), json.loads(direct.output)
    assert a["ref_ppl"] == pytest.approx(own["ppl"], rel=1e-12)
    for key in ("ppl", "ref_ppl", "kld", "top1", "rms_dp", "tokens_scored"):
        assert a[key] == b[key], key


def test_bad_reference_files_are_one_line_errors(tiny_checkpoint, tmp_path, capsys):
    from ggufkit.cli import main

    quant = converted(tiny_checkpoint("llama"), "q4_0")
    imatrix_like = tmp_path / "other.gguf"
    import gguf

    w = gguf.GGUFWriter(imatrix_like, arch="ggufkit")
    w.add_type(reflogits.FILE_TYPE)  # says it is one, but holds nothing
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    capsys.readouterr()
    for path, expected in ((tmp_path / "none.ref-logits", "no such file"),
                           (imatrix_like, "reference-logits file without ref_logits.ctx")):
        code = main(["eval", str(quant), "--ref", str(path)])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


# ---- the stored summary against plain numpy, on synthetic logits


def numpy_kld(ref_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    def logp(z):
        z = z.astype(np.float64)
        return z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))

    lp, lq = logp(ref_logits), logp(logits)
    return (np.exp(lp) * (lp - lq)).sum(1)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 3.0])
def test_summary_kld_on_random_logits(temperature):
    """Peaked to flat distributions over 5000 tokens; a candidate = the reference plus noise."""
    from ggufkit.evaluate import log_softmax

    rng = np.random.default_rng(7)
    ref = (rng.standard_normal((40, 5000)) * 3 / temperature).astype(np.float32)
    cand = (ref + rng.standard_normal(ref.shape) * 0.3).astype(np.float32)
    targets = rng.integers(0, 5000, 40)
    exact = numpy_kld(ref, cand)
    for k, tol in ((5000, 1e-9), (256, 0.01)):
        arrays = reflogits.summarize_chunk(ref, targets, k)
        c = reflogits.ChunkRef(np.zeros(1, np.int32), *arrays)
        c.codes = c.codes.view(np.uint8)
        got = reflogits.chunk_scores(log_softmax(cand), c, targets)
        assert abs(got["kld"].mean() / exact.mean() - 1) < tol, (k, got["kld"].mean(), exact.mean())
        assert (got["top1"] == (ref.argmax(1) == cand.argmax(1))).all()
