"""Reference logits on disk: run the reference model once, then score each candidate alone against the file.

`ggufkit eval --ref` used to hold the reference and the candidate in memory at once (a 7B model and its BF16
reference do not fit a 16 GB laptop). Like llama-perplexity's --kl-divergence-base, the reference pass is now
written to a file first; the candidate pass reads it chunk by chunk, so peak memory is one model plus one chunk.

What is stored per scored position (ctx/2 - 1 per chunk, see ggufkit.evaluate):

    top-k logits   (k,) f32      the k largest raw logits as llama.cpp returned them (lossless)
    top-k ids      (k,) i32      their token ids, by logit descending, ties by id ascending (ids[0] is numpy's
                                 argmax: the top-1 agreement is exact)
    log-sum-exp    f64           L = log sum_v exp(z_v - z_max) over the whole vocabulary (z_max = logits[0]), so
                                 log p(v) = (z_v - z_max) - L in evaluate.log_softmax's operation order: the top-k
                                 log-probabilities and the target's are bit-identical to the in-memory ones
    target logit   f32           the actual next token's logit (reference PPL and RMS Δp: exact)
    tail codes     (n_vocab,) u8 every other token's log p on 255 equal steps between the tail's smallest and
                                 largest log p (255 marks a top-k token)
    tail masses    (255,) f32    the exact reference probability in each of those buckets
    tail log sums  (255,) f64    the sum of log p over each bucket's tokens, exact

The KL divergence is then

    KLD = sum_{top-k} p (log p - log q)  +  sum_b (mass_b / count_b) sum_{v in bucket b} (log p(v) - log q(v))

exact except that within a bucket (1/255 of the tail's log-range, ~0.1 nats) each token's weight p(v) is the
bucket's mean; the log-ratios themselves are exact sums, so a model scored against itself gets exactly 0. Why
this form (measured on the demo model, Q4_K_M vs F32, Hamlet, whose distributions have long tails: PPL 73): the
top-k alone with the tail lumped into one outcome underestimates the KLD by 13% at k = 256 (24% at k = 64),
because 10% of the probability sits outside the top 256; bucketing the weights but not the log-ratios leaves an
error of the order of the covariance of p and log q inside a bucket (+0.13% at k = 256 with 255 buckets); with
exact log sums per bucket that covariance is replaced by the one of p and the (noise-like) log-ratio. llama-perplexity's --kl-divergence-base stores every
log-probability in 16 bits (2 bytes x n_vocab a position); this file needs ~1 byte x n_vocab + 5 KB, half of it,
with the values that decide the top-1, the PPL and most of the KLD stored exactly. k = n_vocab stores everything
exactly (no tail): the in-memory result to the last bits.

File: a GGUF (general.type = "ggufkit.ref_logits"), key-values ref_logits.{ctx, n_vocab, topk, chunks, model,
text}, and tensors
    tokens                                (chunks, ctx) i32   the token chunks the reference saw (BOS in place)
    c<N>.ids, c<N>.logits                 (n_pos, k) i32/f32  per chunk N
    c<N>.target, c<N>.lse                 (n_pos,) f32/f64
    c<N>.codes, c<N>.mass, c<N>.sumlp     (n_pos, n_vocab) i8 (the u8 codes) / (n_pos, 255) f32 / (n_pos, 255) f64
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from ggufkit.errors import InputError

FILE_TYPE = "ggufkit.ref_logits"
DEFAULT_TOPK = 256
SLICE = 32  # positions per step: the (positions, vocab) f64 temporaries stay ~SLICE x vocab x 8 bytes each
N_BUCKETS = 255
TOP_CODE = 255
QT = gguf.GGMLQuantizationType


@dataclass
class ChunkRef:
    tokens: np.ndarray   # (ctx,) i32
    ids: np.ndarray      # (n_pos, k) i32
    logits: np.ndarray   # (n_pos, k) f32
    target: np.ndarray   # (n_pos,) f32
    lse: np.ndarray      # (n_pos,) f64
    sumlp: np.ndarray    # (n_pos, N_BUCKETS) f64
    codes: np.ndarray    # (n_pos, vocab) u8, TOP_CODE for top-k tokens
    mass: np.ndarray     # (n_pos, N_BUCKETS) f32

    def rows(self, sl: slice) -> ChunkRef:
        """The same chunk restricted to the positions sl."""
        return ChunkRef(self.tokens, self.ids[sl], self.logits[sl], self.target[sl], self.lse[sl], self.sumlp[sl],
                        self.codes[sl], self.mass[sl])

    def logp(self) -> np.ndarray:
        """(n_pos, k) f64 log-probabilities of the stored tokens (same float ops as evaluate.log_softmax)."""
        z = self.logits.astype(np.float64)
        return (z - z[:, :1]) - self.lse[:, None]

    def target_logp(self) -> np.ndarray:
        """(n_pos,) f64"""
        return (self.target.astype(np.float64) - self.logits[:, 0].astype(np.float64)) - self.lse


# ---- from one chunk's logits


def summarize_chunk(logits: np.ndarray, targets: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """(n_pos, vocab) f32 logits, (n_pos,) targets -> the stored arrays in _chunk_names order: ids (n_pos, k)
    i32, top logits (n_pos, k) f32, target logits (n_pos,) f32, lse (n_pos,) f64, tail log sums (n_pos,
    N_BUCKETS) f64, tail codes (n_pos, vocab) u8 (as i8), tail masses (n_pos, N_BUCKETS) f32."""
    n_pos, vocab = logits.shape
    k = min(k, vocab)
    if k < vocab:
        part = np.argpartition(-logits, k - 1, axis=1)[:, :k]  # (n_pos, k) unordered top k
    else:
        part = np.broadcast_to(np.arange(vocab), (n_pos, vocab))
    vals = np.take_along_axis(logits, part, axis=1)
    # descending value, ties by ascending id: ids[:, 0] is np.argmax (argpartition keeps every maximum)
    order = np.lexsort((part, -vals), axis=1)
    ids = np.take_along_axis(part, order, axis=1).astype(np.int32)
    top = np.take_along_axis(vals, order, axis=1).astype(np.float32)
    lp = logits.astype(np.float64)                      # (n_pos, vocab), as evaluate.log_softmax
    lp -= top[:, :1].astype(np.float64)
    lse = np.log(np.exp(lp).sum(axis=1))
    lp -= lse[:, None]
    rows = np.arange(n_pos)
    # the tail: every token outside the top k, bucketed by log p
    in_top = np.zeros((n_pos, vocab), dtype=bool)
    np.put_along_axis(in_top, ids.astype(np.intp), True, axis=1)
    tail_lp = np.where(in_top, np.nan, lp)
    codes = np.full((n_pos, vocab), TOP_CODE, dtype=np.uint8)
    sumlp = np.zeros((n_pos, N_BUCKETS))
    mass = np.zeros((n_pos, N_BUCKETS), dtype=np.float32)
    if k < vocab:
        lo = np.nanmin(tail_lp, axis=1, keepdims=True)
        hi = np.nanmax(tail_lp, axis=1, keepdims=True)
        span = np.where(hi > lo, hi - lo, 1.0)
        step = np.floor((np.nan_to_num(tail_lp, nan=0.0) - lo) / span * N_BUCKETS)
        code = np.clip(step, 0, N_BUCKETS - 1).astype(np.uint8)
        codes = np.where(in_top, np.uint8(TOP_CODE), code)
        p = np.where(in_top, 0.0, np.exp(lp))
        flat = (rows[:, None] * (N_BUCKETS + 1) + codes).reshape(-1)
        size = n_pos * (N_BUCKETS + 1)
        mass = np.bincount(flat, weights=p.reshape(-1), minlength=size)
        mass = mass.reshape(n_pos, N_BUCKETS + 1)[:, :N_BUCKETS].astype(np.float32)
        # the same sum, in the same order, as chunk_scores takes over the candidate's log q
        sumlp = np.bincount(flat, weights=lp.reshape(-1), minlength=size).reshape(n_pos, -1)[:, :N_BUCKETS]
    return ids, top, logits[rows, targets].astype(np.float32), lse, sumlp, codes.view(np.int8), mass


def chunk_scores(lp: np.ndarray, ref: ChunkRef, targets: np.ndarray) -> dict[str, np.ndarray]:
    """A candidate's (n_pos, vocab) f64 log-probabilities against one stored chunk -> per position: kld,
    top1 (bool), dp2 (squared Δp of the target), ref_nll."""
    n_pos = len(targets)
    rows = np.arange(n_pos)
    lref = ref.logp()                                   # (n_pos, k)
    lq = np.take_along_axis(lp, ref.ids.astype(np.intp), axis=1)  # (n_pos, k)
    kld = (np.exp(lref) * (lref - lq)).sum(axis=1)
    if ref.ids.shape[1] < lp.shape[1]:  # the tail: sum_b mean p_b * sum_{v in b} (log p(v) - log q(v))
        flat = (rows[:, None] * (N_BUCKETS + 1) + ref.codes).reshape(-1)
        size = n_pos * (N_BUCKETS + 1)
        count = np.bincount(flat, minlength=size).reshape(n_pos, -1)[:, :N_BUCKETS]
        sum_lq = np.bincount(flat, weights=lp.reshape(-1), minlength=size).reshape(n_pos, -1)[:, :N_BUCKETS]
        mean_p = ref.mass.astype(np.float64) / np.maximum(count, 1)
        kld += (mean_p * (ref.sumlp - sum_lq)).sum(axis=1)
    top1 = lp.argmax(axis=1) == ref.ids[:, 0]
    tref = ref.target_logp()
    dp2 = (np.exp(lp[rows, targets]) - np.exp(tref)) ** 2
    return {"kld": kld, "top1": top1, "dp2": dp2, "ref_nll": -tref}


# ---- the file


def _chunk_names(c: int) -> tuple[str, ...]:
    return f"c{c}.ids", f"c{c}.logits", f"c{c}.target", f"c{c}.lse", f"c{c}.sumlp", f"c{c}.codes", f"c{c}.mass"


def save_reference(model: Path, text_path: Path, out: Path, ctx: int = 512, chunks: int | None = None,
                   topk: int = DEFAULT_TOPK, threads: int | None = None, progress: bool = False):
    """Run MODEL over the chunks of TEXT and write its reference logits to OUT (atomically). Returns the
    reference's own EvalResult (its perplexity)."""
    from tqdm import tqdm

    from ggufkit.evaluate import EvalResult, _LlamaScorer, log_softmax, prepare_chunks, scored_positions
    from ggufkit.output.writer import StreamingGGUF

    if topk < 1:
        raise InputError(f"--ref-topk {topk} must be >= 1")
    scorer = _LlamaScorer(model, ctx, threads)
    try:
        parts = prepare_chunks(scorer, text_path, ctx, chunks)
        vocab = scorer.llm.n_vocab()
        k = min(topk, vocab)
        pos = scored_positions(ctx)
        n_pos = pos.stop - pos.start
        nll = []
        with StreamingGGUF(Path(out), arch="ggufkit") as g:
            g.open()
            w = g.kv
            w.add_type(FILE_TYPE)
            w.add_uint32("ref_logits.ctx", ctx)
            w.add_uint32("ref_logits.n_vocab", vocab)
            w.add_uint32("ref_logits.topk", k)
            w.add_uint32("ref_logits.chunks", len(parts))
            w.add_string("ref_logits.model", Path(model).name)
            w.add_string("ref_logits.text", Path(text_path).name)
            g.add_tensor_info("tokens", (len(parts), ctx), QT.I32)
            for c in range(len(parts)):
                ids, lg, tg, ls, ht, cd, ms = _chunk_names(c)
                g.add_tensor_info(ids, (n_pos, k), QT.I32)
                g.add_tensor_info(lg, (n_pos, k), QT.F32)
                g.add_tensor_info(tg, (n_pos,), QT.F32)
                g.add_tensor_info(ls, (n_pos,), QT.F64)
                g.add_tensor_info(ht, (n_pos, N_BUCKETS), QT.F64)
                g.add_tensor_info(cd, (n_pos, vocab), QT.I8)
                g.add_tensor_info(ms, (n_pos, N_BUCKETS), QT.F32)
            g.start()
            g.begin_tensor("tokens")
            g.write(np.array(parts, dtype=np.int32))
            g.end_tensor()
            for c, chunk in enumerate(tqdm(parts, desc="reference", unit="chunk", disable=not progress)):
                targets = np.array(chunk[pos.start + 1: pos.stop + 1])
                logits = scorer.logits(chunk)[pos]  # (n_pos, vocab) f32
                parts_c = [summarize_chunk(logits[i:i + SLICE], targets[i:i + SLICE], k)
                           for i in range(0, n_pos, SLICE)]
                for j, name in enumerate(_chunk_names(c)):
                    g.begin_tensor(name)
                    for part in parts_c:
                        g.write(part[j])
                    g.end_tensor()
                for i in range(0, n_pos, SLICE):
                    lp = log_softmax(logits[i:i + SLICE])
                    nll.append(-lp[np.arange(len(lp)), targets[i:i + SLICE]])
                del logits, lp, parts_c
            g.commit()
    finally:
        scorer.close()
    return _ppl_result(EvalResult, str(model), ctx, len(parts), np.concatenate(nll))


def _ppl_result(cls, model: str, ctx: int, chunks: int, nll: np.ndarray):
    mean = float(nll.mean())
    stderr = float(math.exp(mean) * nll.std(ddof=1) / math.sqrt(len(nll))) if len(nll) > 1 else 0.0
    return cls(model=model, ctx=ctx, chunks=chunks, tokens_scored=len(nll), ppl=math.exp(mean), ppl_stderr=stderr)


class Reference:
    """A reference-logits file, read lazily (memory-mapped) chunk by chunk."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError("no such file", self.path)
        try:
            self._r = gguf.GGUFReader(self.path)
        except (ValueError, OSError) as e:
            raise InputError(f"not a reference-logits file ({e})", self.path) from None
        if self._str("general.type") != FILE_TYPE:
            raise InputError(f"not a reference-logits file (general.type is not {FILE_TYPE})", self.path)
        self.ctx = self._int("ref_logits.ctx")
        self.n_vocab = self._int("ref_logits.n_vocab")
        self.topk = self._int("ref_logits.topk")
        self.n_chunks = self._int("ref_logits.chunks")
        self.model = self._str("ref_logits.model")
        self._tensors = {t.name: t for t in self._r.tensors}
        try:
            self.tokens = self._tensors["tokens"].data.reshape(self.n_chunks, self.ctx)
        except (KeyError, ValueError):
            raise InputError("reference-logits file without its token chunks", self.path) from None

    def _field(self, key: str):
        f = self._r.fields.get(key)
        if f is None:
            raise InputError(f"reference-logits file without {key}", self.path)
        return f

    def _str(self, key: str) -> str | None:
        f = self._r.fields.get(key)
        return None if f is None else bytes(f.parts[-1]).decode("utf-8", "replace")

    def _int(self, key: str) -> int:
        return int(self._field(key).parts[-1][0])

    def chunk(self, c: int) -> ChunkRef:
        names = _chunk_names(c)
        try:
            ids, lg, tg, ls, ht, cd, ms = (np.asarray(self._tensors[n].data) for n in names)
        except KeyError:
            raise InputError(f"reference-logits file without chunk {c}", self.path) from None
        k = self.topk
        return ChunkRef(np.asarray(self.tokens[c]), ids.reshape(-1, k), lg.reshape(-1, k), tg.reshape(-1),
                        ls.reshape(-1), ht.reshape(-1, N_BUCKETS), cd.view(np.uint8).reshape(-1, self.n_vocab),
                        ms.reshape(-1, N_BUCKETS))

    def chunks(self, limit: int | None = None) -> Iterator[ChunkRef]:
        for c in range(self.n_chunks if limit is None else min(limit, self.n_chunks)):
            yield self.chunk(c)


def is_reference_file(path: Path) -> bool:
    """Whether PATH is a reference-logits file (cheap: the general.type key near the start of the header)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head[:4] == b"GGUF" and FILE_TYPE.encode() in head


def score(model: Path, ref: Reference, chunks: int | None = None, threads: int | None = None,
          progress: bool = False, ref_name: Path | None = None):
    """MODEL scored alone against a stored reference: PPL, KLD, top-1, RMS Δp on the reference's chunks.
    ref_name: what errors call the reference (the model it came from) instead of the file."""
    from tqdm import tqdm

    from ggufkit.evaluate import EvalResult, _LlamaScorer, log_softmax, scored_positions

    scorer = _LlamaScorer(model, ref.ctx, threads)
    try:
        if scorer.llm.n_vocab() != ref.n_vocab:
            raise InputError(f"vocabulary of {ref.n_vocab} tokens, the model has {scorer.llm.n_vocab()}: not "
                             f"the same model family", ref_name or ref.path)
        pos = scored_positions(ref.ctx)
        acc: dict[str, list] = {"nll": [], "kld": [], "top1": [], "dp2": [], "ref_nll": []}
        n = ref.n_chunks if chunks is None else min(chunks, ref.n_chunks)
        for c in tqdm(ref.chunks(n), total=n, desc="eval", unit="chunk", disable=not progress):
            chunk = [int(t) for t in c.tokens]
            targets = np.array(chunk[pos.start + 1: pos.stop + 1])
            logits = scorer.logits(chunk)[pos]  # (n_pos, vocab) f32
            for i in range(0, len(targets), SLICE):
                sl = slice(i, i + SLICE)
                lp = log_softmax(logits[sl])  # (SLICE, vocab) f64
                acc["nll"].append(-lp[np.arange(len(lp)), targets[sl]])
                for key, v in chunk_scores(lp, c.rows(sl), targets[sl]).items():
                    acc[key].append(v)
            del logits, lp
    finally:
        scorer.close()
    cat = {k: np.concatenate(v) for k, v in acc.items()}
    result = _ppl_result(EvalResult, str(model), ref.ctx, n, cat["nll"])
    result.ref = str(ref.path)
    result.ref_ppl = math.exp(float(cat["ref_nll"].mean()))
    result.kld = float(cat["kld"].mean())
    result.top1 = float(cat["top1"].mean())
    result.rms_dp = float(math.sqrt(cat["dp2"].mean()))
    return result
