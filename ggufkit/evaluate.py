"""Perplexity and KL divergence of a GGUF model on a text, computed the way llama-perplexity does.

The text is tokenized once (with BOS if the vocabulary adds one) and cut into chunks of `ctx` tokens; each chunk
is evaluated from scratch (its first token replaced by BOS when the vocabulary adds one) and only its second half
is scored: the logits at positions ctx/2 .. ctx-2 predict the tokens after them (ctx/2 - 1 predictions a chunk).

    PPL  = exp(mean negative log-likelihood of the scored tokens)
    with a reference model (same vocabulary), over the same positions:
    KLD  = mean over positions of  Σ_v p_ref(v) (log p_ref(v) - log p(v))
    top1 = share of positions where both models' most likely token agree
    RMS Δp = sqrt(mean (p(token) - p_ref(token))^2) for the actual next token

The reference is never in memory together with the model: it is run first into a reference-logits file (top-k
logits and the log-sum-exp per position, ggufkit.reflogits), and the model is scored against that file.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ggufkit.errors import InputError, RuntimeFailure


@dataclass
class EvalResult:
    model: str
    ctx: int
    chunks: int
    tokens_scored: int
    ppl: float
    ppl_stderr: float
    ref: str | None = None
    ref_ppl: float | None = None
    kld: float | None = None
    top1: float | None = None
    rms_dp: float | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(n, vocab) f32 -> (n, vocab) f64 log-probabilities, max-shifted for stability."""
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def scored_positions(ctx: int) -> slice:
    """Positions whose logits are scored in a chunk: ctx/2 .. ctx-2 (each predicts the token after it)."""
    return slice(ctx // 2, ctx - 1)


def read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"cannot read text: {e.strerror}", path) from None


def chunk_tokens(tokens: list[int], ctx: int, chunks: int | None, bos: int | None) -> list[list[int]]:
    """Cut tokens into whole chunks of ctx; the first token of each becomes BOS when bos is given."""
    n = len(tokens) // ctx
    if chunks is not None:
        n = min(n, chunks)
    out = []
    for c in range(n):
        chunk = list(tokens[c * ctx: (c + 1) * ctx])
        if bos is not None:
            chunk[0] = bos
        out.append(chunk)
    return out


class _LlamaScorer:
    """A GGUF model through llama-cpp-python, returning the logits of every position of a chunk."""

    def __init__(self, path: Path, ctx: int, threads: int | None):
        from ggufkit.runtime import default_threads, load_check

        self.path = load_check(path)  # a malformed file: one line naming the problem, before llama.cpp
        import llama_cpp

        from ggufkit.runtime import backends

        backends.ensure()
        n = threads or default_threads()
        try:  # logits for every position, which runtime.load (sampling only) does not keep
            self.llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=ctx, n_batch=ctx, n_ubatch=ctx,
                                       n_threads=n, n_threads_batch=n, logits_all=True, verbose=False)
        except (ValueError, RuntimeError) as e:
            raise RuntimeFailure(f"llama.cpp could not load the model: {e}", self.path) from e

    def tokenize(self, text: str) -> tuple[list[int], int | None]:
        """Token ids of the text with BOS if the vocabulary adds one; and that BOS id (or None)."""
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        bos = self.llm.token_bos()
        adds_bos = bool(ids) and ids[0] == bos and self.llm._model.add_bos_token()
        return ids, (bos if adds_bos else None)

    def logits(self, chunk: list[int]) -> np.ndarray:
        """(len(chunk), vocab) f32 logits."""
        self.llm.reset()
        self.llm.eval(chunk)
        return np.array(self.llm.scores[: len(chunk)], dtype=np.float32)

    def close(self) -> None:
        """Free the model now (not when the garbage collector gets to it): the next model may need the RAM."""
        self.llm.close()


def _vocabulary_size(path: Path) -> int | None:
    from ggufkit.sources.gguf import validate_gguf

    tokens = validate_gguf(path).get("tokenizer.ggml.tokens")
    return len(tokens) if tokens is not None else None


def _same_vocabulary(model: Path, ref: Path) -> None:
    """Refuse a reference of another vocabulary before running anything (from the files' tokenizer keys)."""
    n_model, n_ref = _vocabulary_size(model), _vocabulary_size(ref)
    if n_model is not None and n_ref is not None and n_model != n_ref:
        raise InputError(f"vocabulary of {n_ref} tokens, the model has {n_model}: not the same model family", ref)


def prepare_chunks(scorer: _LlamaScorer, text_path: Path, ctx: int, chunks: int | None) -> list[list[int]]:
    """The text cut into the chunks that are scored (tokenized by SCORER's vocabulary)."""
    if ctx < 8 or ctx % 2:
        raise InputError(f"--ctx {ctx} must be an even number >= 8")
    text = read_text(text_path)
    if chunks is not None:
        text = text[: chunks * ctx * 16]  # tokenizing a whole encyclopedia for two chunks is wasted work
    tokens, bos = scorer.tokenize(text)
    parts = chunk_tokens(tokens, ctx, chunks, bos)
    if not parts:
        raise InputError(f"{len(tokens)} tokens are fewer than one chunk of {ctx}", text_path)
    return parts


def evaluate(model: Path, text_path: Path | None, ctx: int = 512, chunks: int | None = None,
             ref: Path | None = None, threads: int | None = None, progress: bool = False,
             ref_topk: int | None = None) -> EvalResult:
    """PPL of MODEL on TEXT_PATH; with REF also KLD, top-1 and RMS Δp against it.

    REF is a reference GGUF model or a reference-logits file (ggufkit.reflogits). A model is run first, alone,
    into a temporary reference-logits file (ref_topk logits per position), then MODEL is scored alone against
    it: the two models are never in memory together. With a reference-logits file its stored chunks are
    scored (TEXT_PATH and ctx are not needed)."""
    from ggufkit import reflogits

    if ctx < 8 or ctx % 2:
        raise InputError(f"--ctx {ctx} must be an even number >= 8")
    if ref is not None:
        if not Path(ref).is_file():
            raise InputError("no such file", ref)
        if reflogits.is_reference_file(ref):
            return reflogits.score(model, reflogits.Reference(ref), chunks=chunks, threads=threads,
                                   progress=progress)
        import tempfile

        if text_path is None:
            raise InputError("a text is needed to run the reference model (--text)")
        with tempfile.TemporaryDirectory(prefix="ggufkit-eval-") as tmp:
            path = Path(tmp) / "ref-logits.gguf"
            from ggufkit.runtime import load_check

            load_check(model)  # a bad candidate fails before the reference has run
            _same_vocabulary(model, ref)
            reflogits.save_reference(ref, text_path, path, ctx=ctx, chunks=chunks,
                                     topk=ref_topk or reflogits.DEFAULT_TOPK, threads=threads, progress=progress)
            result = reflogits.score(model, reflogits.Reference(path), threads=threads, progress=progress,
                                     ref_name=ref)
        result.ref = str(ref)
        return result
    if text_path is None:
        raise InputError("--text is needed (or a reference-logits file as --ref)")
    from tqdm import tqdm

    scorer = _LlamaScorer(model, ctx, threads)
    try:
        parts = prepare_chunks(scorer, text_path, ctx, chunks)
        pos = scored_positions(ctx)
        nll = []
        for chunk in tqdm(parts, desc="eval", unit="chunk", disable=not progress):
            targets = np.array(chunk[pos.start + 1: pos.stop + 1])  # (ctx/2 - 1,) the tokens being predicted
            logits = scorer.logits(chunk)[pos]  # (ctx/2 - 1, vocab) f32
            for i in range(0, len(targets), reflogits.SLICE):  # bounded f64 temporaries
                lp = log_softmax(logits[i:i + reflogits.SLICE])
                nll.append(-lp[np.arange(len(lp)), targets[i:i + reflogits.SLICE]])
    finally:
        scorer.close()
    nll_all = np.concatenate(nll)
    mean = float(nll_all.mean())
    # standard error of the PPL by the delta method: PPL * stderr(mean nll)
    stderr = float(math.exp(mean) * nll_all.std(ddof=1) / math.sqrt(len(nll_all))) if len(nll_all) > 1 else 0.0
    return EvalResult(model=str(model), ctx=ctx, chunks=len(parts), tokens_scored=len(nll_all),
                      ppl=math.exp(mean), ppl_stderr=stderr)
