"""Size budgets: choose each tensor's type to minimise the predicted error under a byte budget.

    budget = parse_budget(target_size="700MB")              # or target_bpw=4.5, or device="rpi5-4gb", ctx=4096
    result = allocate_plan(plan, budget, imatrix=lookup)     # plan: ggufkit.conversion.Plan, retyped in place
    print(format_allocation(result))                         # the --dry-run table

The error model. A linear layer y = W x whose weights are replaced by W + E adds output noise E x. Over the
calibration inputs its power per token is E ||E x||^2 = sum_ij E_ij^2 E[x_j^2] (cross terms dropped: rounding
errors of different columns are independent, so tr(E H E^T) has the same expectation as its diagonal part), and
E[x_j^2] is the importance matrix (its per-token mean). What the logits see of that noise depends on where it
enters (ERROR_MODEL = "stream", the default, and "residual"):
- attn_output and ffn_down write into the residual stream: their absolute noise power is added to it and carried
  to the final norm by the skip connections (the direct path; what later layers make of it is not modelled).
- the other matrices of a block (q/k/v, gate/up) feed the block's writer: to first order their relative output
  noise becomes the writer's relative noise, so their error counts as relative error x the writer's signal power
  sum_ij E[x_j^2] W_ij^2 (also measured).
- every later layer reads the stream through a norm (and the final norm divides it by its size), so a noise
  counts relative to the stream's power where it enters: "stream" divides by the power written into the stream
  up to and including that writer (the embedding row's power, then every writer's signal power in layer order,
  attention before MLP; cross terms dropped again), taking the relative noise to be carried to the logits at
  gain 1 by the later layers; "residual" divides every block tensor's noise by the final stream's power (the
  direct path through the skip connections alone, which makes a large last MLP outweigh every earlier layer).
- the output matrix maps the normed stream n = g * h / rms(h) to the logits; a residual noise d that is isotropic
  shows up in the logits scaled as the signal does, so the output's own relative error (weights E[n_j^2]: its
  imatrix entry, else g_j^2, g = output_norm.weight) is on the same scale as the block terms. A tied embedding
  has both roles: its output role (no imatrix entry: g^2) plus its input role (mean row error power, added to the
  residual stream at the start: relative to the embedding's own power for "stream", to the final stream's for
  "residual").
So every tensor's err is its share of the relative noise at the final norm, and the plan's predicted error is
the sum over tensors (independent noise adds in power); the KL divergence grows with it for small noise.
ERROR_MODEL = "relative" is the older model (every tensor's relative error, weighted alike):

    err(tensor, type) = sum_ij w_j (W_ij - Q(W)_ij)^2 / sum_ij w_j W_ij^2        (w = imatrix, or ones)

Without an imatrix the residual model has no writer powers: each of the 2 n_layer + 1 writers of the stream is
taken to hold an equal share. Q(W) is ggufkit's own quantizer (byte-exact with llama.cpp's) with the same
importance weights the file will be written with, measured on up to SAMPLE_ROWS rows spread over the tensor, for
every standard type the tensor's row length allows (llama.cpp's fallbacks: a row that is not a multiple of 256
cannot take a K-quant).

With calibration text (convert --calibration) the error is measured instead of modelled ("fisher",
fisher_errors): err(tensor, type) = 1/2 mean_i E[g_i^2] sum_ij E_ij^2 E[x_j^2], the second-order KL divergence
of the next-token distribution, g the gradient of log p(t) at the layer's output for t drawn from the model
(ggufkit/plan/sensitivity.py). It replaces the stream model's assumptions (gain 1 after the entry point, the
output's g^2 weight, q/k like v) by what the model does: on the demo at Q4_K_M's size the stream model ranked 20
type mixes (groups of tensors swapped between its allocation and llama.cpp's) at Spearman 0.32 against their
measured KLD, this one at 0.98; the stream model under-weighted the tied embedding and attn_v 4.6x against the
blocks' writers and q/k (bench/error_model.py --swap). Then the guard (keep_better): the allocated mix and the
scheme's own types (when they fit the budget) are run on a held-out calibration chunk in the float32 model,
quantized as each mix says, and the lower KL wins, recorded as ggufkit.optimize.mix.

The allocation is a multiple-choice knapsack: minimise sum err subject to sum bytes <= budget. It is solved by
Lagrangian relaxation (each tensor takes argmin err + lambda * bytes; bisection on lambda for the largest plan
that fits) and then greedy upgrades by error saved per byte while anything still fits. Tensors llama-quantize
never quantizes (norms, 1-D) keep their type and count as fixed bytes.

Budgets:
- target_size: the whole file in bytes (header, metadata and the 32-byte alignment of every tensor included),
  so the written file is never larger than asked.
- target_bpw: bits per weight of the tensor data (8 * tensor bytes / parameters), as llama.cpp reports it.
- device + ctx: the tensor bytes that fit in the RAM budget `ggufkit fit` computes for that board
  ((RAM - OS reserve) x (1 - headroom)) next to the KV cache, compute buffers and runtime the memory model
  predicts at that context (ggufkit.edge.memory).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import gguf
import numpy as np

from ggufkit.errors import InputError

QT = gguf.GGMLQuantizationType
ALIGN = 32
SAMPLE_ROWS = 256
ERROR_MODEL = "stream"   # or "residual", "relative" (see the module docstring; bench/error_model.py)
# standard types every llama.cpp build loads, cheapest first
CANDIDATES = (QT.Q2_K, QT.Q3_K, QT.IQ4_XS, QT.Q4_0, QT.IQ4_NL, QT.Q4_K, QT.Q4_1, QT.Q5_0, QT.Q5_K, QT.Q5_1,
              QT.Q6_K, QT.Q8_0, QT.F16)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


# ---- budgets


@dataclass(frozen=True)
class Budget:
    kind: str         # "size" | "bpw" | "device"
    label: str        # what the user asked for, e.g. "700MB", "4.5 bpw", "rpi5-4gb ctx 4096"
    value: float      # bytes (size), bits per weight (bpw); device: the RAM budget in bytes
    n_ctx: int = 0
    device: str = ""


def parse_size(text: str) -> int:
    """'700MB' -> 700000000, '1.5GiB' -> 1610612736, '123456' -> 123456 (decimal and binary units)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).upper() if m else None
    if m is None or unit not in _UNITS:
        raise InputError(f"--target-size {text!r}: expected a number with an optional unit (B, KB, MB, GB, KiB, "
                         f"MiB, GiB)")
    return int(float(m.group(1)) * _UNITS[unit])


def parse_budget(target_size: str | int | None = None, target_bpw: float | None = None,
                 device: str | None = None, ctx: int | None = None, headroom: float = 0.15) -> Budget | None:
    """At most one budget; None when none is asked for."""
    given = [x is not None for x in (target_size, target_bpw, device)]
    if sum(given) > 1:
        raise InputError("give one budget: --target-size, --target-bpw or --device")
    if ctx is not None and device is None:
        raise InputError("--ctx sets the context of a --device budget; it needs --device")
    if target_size is not None:
        size = target_size if isinstance(target_size, int) else parse_size(target_size)
        return Budget("size", str(target_size), float(size))
    if target_bpw is not None:
        if not 1.0 <= target_bpw <= 32.0:
            raise InputError(f"--target-bpw {target_bpw} must be between 1 and 32")
        return Budget("bpw", f"{target_bpw} bpw", float(target_bpw))
    if device is not None:
        from ggufkit.edge.devices import get_device

        try:
            dev = get_device(device)
        except (KeyError, ValueError) as e:
            raise InputError(str(e).strip("'\"")) from None
        n_ctx = 4096 if ctx is None else int(ctx)
        ram = (dev.ram_mib - dev.os_reserve_mib) * (1 - headroom) * 2**20
        return Budget("device", f"{dev.name} ctx {n_ctx}", ram, n_ctx=n_ctx, device=dev.name)
    return None


# ---- error estimates


def _sample_rows(t, n: int) -> np.ndarray:
    """Up to n rows of tensor t, in 8 aligned runs spread over it: (n', cols) f32."""
    rows = math.prod(t.shape[:-1])
    if rows <= n:
        return t.read_rows(0, rows)
    align = max(1, t.row_align)
    runs = 8
    per = max(align, -(-n // runs) // align * align)
    starts = np.linspace(0, rows - per, runs).astype(int) // align * align
    return np.concatenate([t.read_rows(int(s), int(s) + per) for s in sorted(set(starts.tolist()))])


def squared_errors(x: np.ndarray, qtype: QT, w: np.ndarray | None, measure: list[np.ndarray | None],
                   threads: int | None = None, refine=None) -> list[float]:
    """sum_ij m_j (x - Q(x))_ij^2 for each column weighting m of `measure` (None = ones): rows x (rows, cols) f32
    quantized as qtype with importance w (cols,) (and re-encoded by refine, as the conversion will, when given)."""
    from ggufkit import quant

    if qtype == QT.F16:
        y = x.astype(np.float16).astype(np.float32)
    else:
        data = quant.quantize(x, qtype, imatrix=w, threads=threads)
        if refine is not None:
            data = refine(x, qtype, w, data)
        y = quant.dequantize(data, qtype, x.shape, threads=threads)
    d = ((x.astype(np.float64) - y) ** 2).sum(axis=0)   # (cols,) f64
    return [float(d.sum()) if m is None else float(d @ m.astype(np.float64)) for m in measure]


def relative_error(x: np.ndarray, qtype: QT, w: np.ndarray | None, threads: int | None = None,
                   refine=None) -> float:
    """sum w (x - Q(x))^2 / sum w x^2 for rows x (rows, cols) f32 quantized as qtype with importance w (cols,)
    (and re-encoded by refine, as the conversion will, when given)."""
    ww = np.ones(x.shape[1]) if w is None else w.astype(np.float64)
    signal = float((x.astype(np.float64) ** 2 @ ww).sum())
    return squared_errors(x, qtype, w, [ww], threads, refine)[0] / max(signal, 1e-30)


def candidate_types(cols: int, types=CANDIDATES) -> list[QT]:
    """The types of `types` a row of cols can take, cheapest first: a type's llama.cpp fallback (Q5_K -> Q5_1
    for rows that are not a multiple of 256, ...) counts only if the fallback is one of `types` too."""
    from ggufkit.plan.schemes import _fit_row

    out: list[QT] = []
    for t in types:
        fit = _fit_row(t, cols)
        if fit in types and fit not in out:
            out.append(fit)
    return out


# ---- the knapsack


@dataclass
class Choice:
    name: str
    options: list[tuple[QT, int, float]]  # (type, cost bytes, err), cost ascending, dominated ones removed
    fixed_type: QT | None = None          # not quantizable: this type, cost only
    pick: int = 0


def _pareto(options: list[tuple[QT, int, float]]) -> list[tuple[QT, int, float]]:
    """Cost ascending; drop every option that costs at least as much as another and is not more accurate."""
    out: list[tuple[QT, int, float]] = []
    for opt in sorted(options, key=lambda o: (o[1], o[2])):
        if not out or opt[2] < out[-1][2]:
            out.append(opt)
    return out


def solve(choices: list[Choice], budget: int) -> None:
    """Set every choice's pick to minimise sum err with sum cost <= budget (raises if even the cheapest won't fit)."""
    free = [c for c in choices if c.fixed_type is None]
    fixed = sum(c.options[0][1] for c in choices if c.fixed_type is not None)
    floor_cost = fixed + sum(c.options[0][1] for c in free)
    if floor_cost > budget:
        raise InputError(f"the budget ({budget} bytes for the tensors) is below the smallest plan with standard "
                         f"types ({floor_cost} bytes)")

    def pick_for(lam: float) -> tuple[list[int], int]:
        picks, cost = [], fixed
        for c in free:
            i = min(range(len(c.options)), key=lambda j: c.options[j][2] + lam * c.options[j][1])
            picks.append(i)
            cost += c.options[i][1]
        return picks, cost

    lo, hi = 0.0, 1.0
    while pick_for(hi)[1] > budget:   # lambda large enough that the plan fits
        hi *= 16
        if hi > 1e30:
            break
    picks, cost = pick_for(lo)
    if cost > budget:
        for _ in range(100):
            mid = (lo + hi) / 2 if hi / max(lo, 1e-300) < 4 or lo == 0 else math.sqrt(lo * hi)
            if pick_for(mid)[1] > budget:
                lo = mid
            else:
                hi = mid
        picks, cost = pick_for(hi)
    # greedy upgrades with what is left, best error saved per byte first
    while True:
        best, best_gain = None, 0.0
        for k, c in enumerate(free):
            i = picks[k]
            for j in range(i + 1, len(c.options)):
                extra = c.options[j][1] - c.options[i][1]
                gain = c.options[i][2] - c.options[j][2]
                if cost + extra <= budget and gain > 0 and gain / extra > best_gain:
                    best, best_gain = (k, j, extra), gain / extra
        if best is None:
            break
        k, j, extra = best
        picks[k] = j
        cost += extra
    for c, i in zip(free, picks):
        c.pick = i


# ---- on a conversion plan


@dataclass
class Allocation:
    budget: Budget
    limit: int                               # the byte limit the tensors were fitted into
    rows: list[dict] = field(default_factory=list)  # per tensor: name, shape, type, bytes, err, scheme_type, ...
    file_bytes: int = 0                      # predicted size of the written file
    tensor_bytes: int = 0
    n_elements: int = 0
    predicted_error: float = 0.0             # sum of err over the tensors, this mix
    scheme_error: float = 0.0                # the same for the scheme's own types
    scheme_tensor_bytes: int = 0

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.tensor_bytes / max(1, self.n_elements)

    def summary(self) -> dict:
        return {"budget": self.budget.label, "budget_kind": self.budget.kind, "limit_bytes": self.limit,
                "file_bytes": self.file_bytes, "tensor_bytes": self.tensor_bytes,
                "bits_per_weight": round(self.bits_per_weight, 4), "predicted_error": self.predicted_error,
                "scheme_predicted_error": self.scheme_error, "scheme_tensor_bytes": self.scheme_tensor_bytes}


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def header_bytes(plan) -> int:
    """Bytes before the tensor data of the file conversion.run would write for PLAN (header, key-values, tensor
    infos; their size does not depend on the types), by writing exactly that to a scratch file."""
    import tempfile
    from pathlib import Path

    from ggufkit.conversion import write_metadata
    from ggufkit.output.writer import StreamingGGUF

    with tempfile.TemporaryDirectory(prefix="ggufkit-budget-") as tmp:
        g = StreamingGGUF(Path(tmp) / "header.gguf", plan.arch.arch_name)
        try:
            g.open()
            write_metadata(g, plan)
            for p in plan.tensors:
                g.add_tensor_info(p.tensor.name, p.tensor.shape, p.qtype)
            g.start()
            g._fout.flush()
            return g._fout.tell()
        finally:
            g.abort()


def _limit(plan, budget: Budget) -> tuple[int, bool]:
    """(byte limit for the tensors, whether costs are 32-aligned sizes)."""
    if budget.kind == "size":
        return int(budget.value) - _aligned(header_bytes(plan)), True
    if budget.kind == "bpw":
        return math.floor(budget.value * plan.n_elements / 8), False
    from ggufkit.edge import memory
    from ggufkit.edge.devices import get_device

    dev = get_device(budget.device)
    tensors = [(p.tensor.name, tuple(p.tensor.shape), p.qtype) for p in plan.tensors]
    info = plan.arch.model_info()
    shape = memory.shape_from_tensors(plan.checkpoint.name, tensors, info.n_head)
    est = memory.estimate(shape, budget.n_ctx, dev.features)
    rest = est.needed - est.weights  # KV cache, compute, runtime: the same whatever the types
    return int(budget.value - rest), False


def metadata(budget: Budget, method: str) -> dict:
    """The key-values an optimised file records (fixed-size values, so the header size is known up front)."""
    return {"ggufkit.optimize.method": method, "ggufkit.optimize.budget": budget.label,
            "ggufkit.optimize.budget_kind": budget.kind, "ggufkit.optimize.mix": "budget"}


@dataclass
class Measured:
    """One tensor's error measurements on its sampled rows: per candidate type, sum_ij m_j (W - Q(W))_ij^2 for
    each column weighting m (key "w": the importance the file is written with, or ones; "out": g^2 for an output
    role without an imatrix entry; "in": ones, for the embedding's input role), and sum_ij m_j W_ij^2;
    scale = rows / sampled rows."""
    name: str
    fixed_type: QT | None = None
    sq: dict = field(default_factory=dict)       # type -> {key: float}
    signal: dict = field(default_factory=dict)   # key -> float
    scale: float = 1.0
    rows: int = 1
    has_imatrix: bool = False
    allowed: list = field(default_factory=list)  # the candidate types its rows can take


_BLOCK = re.compile(r"blk\.(\d+)\.(attn|ffn)_\w*?(_exps|_shexp|_chexp)?\.weight")


def _writer(name: str) -> str | None:
    """The tensor that writes blk.N's result for `name` into the residual stream (itself for a writer)."""
    m = _BLOCK.fullmatch(name)
    if m is None:
        return None
    if m.group(2) == "attn":
        return f"blk.{m.group(1)}.attn_output.weight"
    return f"blk.{m.group(1)}.ffn_down{m.group(3) or ''}.weight"


def measure(plan, imatrix: Callable[[str], np.ndarray | None] | None = None, types=CANDIDATES,
            threads: int | None = None, refine=None, progress: bool = False,
            sensitivity: dict | None = None) -> list[Measured]:
    """The error measurements of every tensor of PLAN (at its types before any allocation) for every candidate
    type its rows allow, and the scheme's own type. Reads SAMPLE_ROWS rows per tensor. With sensitivity
    (ggufkit.plan.sensitivity.output_sensitivity), also key "fx": weighted by the layer's measured input power
    (the tied embedding: the lm_head's input), and "fin" for the embedding's input role (E[g_j^2] per dim)."""
    from tqdm import tqdm

    from ggufkit.plan.schemes import is_quantizable

    info = plan.arch.model_info()
    names = {p.tensor.name for p in plan.tensors}
    gain = None   # g^2 of the final norm: the output matrix's column weights when it has no imatrix entry
    for p in plan.tensors:
        if p.tensor.name == "output_norm.weight":
            g = p.tensor.read_rows(0, 1).reshape(-1).astype(np.float64)
            gain = g * g
    out: list[Measured] = []
    for p in tqdm(plan.tensors, desc="error estimates", unit="tensor", disable=not progress, leave=False):
        t = p.tensor
        if not is_quantizable(t.name, t.shape, info.arch):
            out.append(Measured(t.name, fixed_type=p.qtype))
            continue
        x = _sample_rows(t, SAMPLE_ROWS)
        w = imatrix(t.name) if imatrix is not None else None
        if w is not None and w.shape != (t.cols,):
            w = None
        keys = {"w": None if w is None else w.astype(np.float64)}
        output_role = t.name == "output.weight" or (t.name == "token_embd.weight" and "output.weight" not in names)
        if output_role and w is None and gain is not None and gain.shape == (t.cols,):
            keys["out"] = gain
        if t.name == "token_embd.weight":
            keys["in"] = None
        if sensitivity is not None:
            s = sensitivity.get("output.weight" if output_role else t.name)
            if s is not None and s.x2 is not None and s.x2.shape == (t.cols,):
                keys["fx"] = s.x2.astype(np.float64)
            s = sensitivity.get("token_embd.weight") if t.name == "token_embd.weight" else None
            if s is not None and getattr(s, "embd_g2", None) is not None and s.embd_g2.shape == (t.cols,):
                keys["fin"] = s.embd_g2.astype(np.float64)
        m = Measured(t.name, scale=t.rows / len(x), rows=t.rows, has_imatrix=w is not None)
        x64 = (x.astype(np.float64) ** 2).sum(axis=0)   # (cols,) f64
        m.signal = {k: float(x64.sum() if v is None else x64 @ v) for k, v in keys.items()}
        allowed = candidate_types(t.cols, types)
        for q in dict.fromkeys([*allowed, p.qtype]):
            m.sq[q] = dict(zip(keys, squared_errors(x, q, w, list(keys.values()), threads, refine)))
        m.allowed = allowed
        out.append(m)
    return out


def fisher_errors(measured: list[Measured], plan_names: set[str], sensitivity: dict,
                  fallback: str = ERROR_MODEL) -> dict[str, dict[QT, float]]:
    """Per tensor, per type: the predicted KL divergence 1/2 mean_i E[g_i^2] sum_ij E_ij^2 E[x_j^2]
    (ggufkit.plan.sensitivity); the tied embedding adds its input role, 1/2 sum_j mean_r(E_rj^2) E[g_j^2].
    A tensor without a measured sensitivity (no nn.Linear of its own, e.g. stacked experts) takes the FALLBACK
    model's error, scaled by the median ratio of the two models over the tensors that have both."""
    free = [m for m in measured if m.fixed_type is None]
    tied = "output.weight" not in plan_names
    out: dict[str, dict[QT, float]] = {}
    for m in free:
        s = sensitivity.get("output.weight" if m.name == "token_embd.weight" and tied else m.name)
        if s is None or "fx" not in m.signal:
            continue
        e = {q: 0.5 * s.g2 * v["fx"] * m.scale for q, v in m.sq.items()}
        if m.name == "token_embd.weight" and "fin" in m.signal:
            for q, v in m.sq.items():
                e[q] += 0.5 * v["fin"] * m.scale / m.rows
        out[m.name] = e
    missing = [m for m in free if m.name not in out]
    if missing:
        base = errors(measured, plan_names, fallback)
        ratios = [out[n][q] / base[n][q] for n in out for q in out[n] if base[n][q] > 0 and out[n][q] > 0]
        k = float(np.median(ratios)) if ratios else 1.0
        for m in missing:
            out[m.name] = {q: k * e for q, e in base[m.name].items()}
    return out


def errors(measured: list[Measured], plan_names: set[str], model: str = ERROR_MODEL) -> dict[str, dict[QT, float]]:
    """Per tensor, per type: the predicted error (module docstring) under MODEL ("stream", "residual" or
    "relative"; "fisher" needs the sensitivity: fisher_errors)."""
    free = [m for m in measured if m.fixed_type is None]
    rel = {m.name: {q: v["w"] / max(m.signal["w"], 1e-30) for q, v in m.sq.items()} for m in free}
    if model == "relative":
        return rel
    if model not in ("residual", "stream"):
        raise ValueError(f"unknown error model {model!r}")
    by_name = {m.name: m for m in free}
    tied = "output.weight" not in plan_names
    emb = by_name.get("token_embd.weight")
    # the embedding's mean row power: what it writes into the stream per token, in activation units
    p_emb = emb.signal["in"] * emb.scale / emb.rows if emb is not None and "in" in emb.signal else None
    writers = {m.name: m.signal["w"] * m.scale for m in free if _writer(m.name) == m.name and m.has_imatrix}
    n_writers = sum(1 for m in free if _writer(m.name) == m.name)
    known = list(writers.values())
    mean_w = float(np.mean(known)) if known else (p_emb if p_emb else 1.0)
    p_final = (p_emb or 0.0) + sum(known) + (n_writers - len(known)) * mean_w
    if p_final <= 0:
        p_final = 1.0
    share = 1.0 / (n_writers + 1)
    # "stream": the stream's power just after each writer (the embedding, then layer by layer, attention first)
    order = sorted((int(_BLOCK.fullmatch(m.name).group(1)), _BLOCK.fullmatch(m.name).group(2) == "ffn", m.name)
                   for m in free if _writer(m.name) == m.name)
    at, acc = {}, p_emb or 0.0
    for _, _, name in order:
        acc += writers.get(name, mean_w)
        at[name] = acc
    out: dict[str, dict[QT, float]] = {}
    for m in free:
        writer = _writer(m.name)
        if writer is not None:   # a block tensor: relative error x its writer's power, over the stream's
            power = writers.get(writer, mean_w)
            denom = p_final if model == "residual" else max(at.get(writer, p_final), 1e-30)
            if writer == m.name and m.has_imatrix:  # the writer itself: absolute noise
                out[m.name] = {q: v["w"] * m.scale / denom for q, v in m.sq.items()}
            else:
                out[m.name] = {q: e * power / denom for q, e in rel[m.name].items()}
            continue
        e: dict[QT, float] = {}
        output_role = m.name == "output.weight" or (m.name == "token_embd.weight" and tied)
        if output_role:  # the output's relative error, weighted by its imatrix or g^2
            key = "out" if "out" in m.signal else "w"
            e = {q: v[key] / max(m.signal[key], 1e-30) for q, v in m.sq.items()}
        if m.name == "token_embd.weight" and p_emb:  # the input role: mean row error over the final stream
            denom = p_final if model == "residual" else p_emb
            for q, v in m.sq.items():
                e[q] = e.get(q, 0.0) + v["in"] * m.scale / m.rows / denom
        if not e:  # anything else: an equal share of the stream
            e = {q: x * share for q, x in rel[m.name].items()}
        out[m.name] = e
    return out


def allocate_plan(plan, budget: Budget, imatrix: Callable[[str], np.ndarray | None] | None = None,
                  threads: int | None = None, progress: bool = False, method: str = "budget",
                  refine_estimates: bool = False, types=CANDIDATES, model: str | dict | None = None,
                  measured: list[Measured] | None = None, sensitivity: dict | None = None) -> Allocation:
    """Retype PLAN's quantizable tensors (in place: plan.tensors, plan.scheme_rows, plan.metadata) to minimise
    the predicted error under BUDGET. imatrix: GGUF tensor name -> (cols,) f32 importance, or None.
    refine_estimates: with plan.refine set (--optimize), estimate the errors of the refined encodings (slower:
    the search runs on every sampled K-quant candidate); by default the allocation uses llama.cpp's encodings,
    which the search then only improves.
    types: the candidate types (before fallbacks), CANDIDATES by default. model: the error model (ERROR_MODEL),
    or errors()'s result itself (tensor -> type -> error).
    measured: measure(plan, ...)'s result for this plan and types, to allocate again without measuring.
    sensitivity: ggufkit.plan.sensitivity's measured output sensitivities (from calibration text): the errors are
    then the predicted KL divergence (fisher_errors; model "fisher"), else MODEL's."""
    from ggufkit.output.writer import tensor_nbytes
    from ggufkit.plan.schemes import PlanRow

    if getattr(plan.scheme, "quantized", True) is False:
        raise InputError(f"a size budget needs a quantized scheme (not {plan.scheme.name})")
    plan.metadata.update(metadata(budget, method))
    limit, aligned = _limit(plan, budget)
    cost_of = _aligned if aligned else (lambda n: n)
    if measured is None:
        measured = measure(plan, imatrix, types, threads, plan.refine if refine_estimates else None, progress,
                           sensitivity)
    names = {p.tensor.name for p in plan.tensors}
    if isinstance(model, dict):
        errs = model
    elif sensitivity is not None and model in (None, "fisher"):
        errs = fisher_errors(measured, names, sensitivity)
    else:
        errs = errors(measured, names, model or ERROR_MODEL)
    choices: list[Choice] = []
    for p, m in zip(plan.tensors, measured):
        t = p.tensor
        if m.fixed_type is not None:
            choices.append(Choice(t.name, [(p.qtype, cost_of(p.nbytes), 0.0)], fixed_type=p.qtype))
            continue
        options = [(q, cost_of(tensor_nbytes(t.shape, q)), err) for q, err in errs[t.name].items()
                   if q in m.allowed]
        choices.append(Choice(t.name, _pareto(options)))
    solve(choices, limit)
    result = Allocation(budget, limit)
    new_tensors, new_rows = [], []
    for p, c in zip(plan.tensors, choices):
        t = p.tensor
        qtype = c.fixed_type if c.fixed_type is not None else c.options[c.pick][0]
        nbytes = tensor_nbytes(t.shape, qtype)
        err = 0.0 if c.fixed_type is not None else errs[t.name][qtype]
        scheme_err = 0.0 if c.fixed_type is not None else errs[t.name][p.qtype]
        result.rows.append({"name": t.name, "shape": list(t.shape), "type": qtype.name, "bytes": nbytes,
                            "error": err, "scheme_type": p.qtype.name, "scheme_error": scheme_err})
        result.tensor_bytes += nbytes
        result.scheme_tensor_bytes += p.nbytes
        result.predicted_error += err
        result.scheme_error += scheme_err
        new_tensors.append(type(p)(t, qtype, nbytes))
        new_rows.append(PlanRow(t.name, tuple(t.shape), qtype, nbytes))
    plan.tensors[:] = new_tensors
    plan.scheme_rows[:] = new_rows
    result.n_elements = plan.n_elements
    result.file_bytes = _aligned(header_bytes(plan)) + sum(_aligned(p.nbytes) for p in plan.tensors)
    return result


def format_allocation(a: Allocation) -> str:
    """The --dry-run table: tensor, shape, type (and the scheme's), bytes, predicted error; then the totals."""
    width = max((len(r["name"]) for r in a.rows), default=6)
    lines = [f"{'tensor':<{width}}  {'shape':<16} {'type':<7} {'scheme':<7} {'bytes':>12} {'pred. error':>12}"]
    for r in a.rows:
        shape = "x".join(str(d) for d in r["shape"])
        lines.append(f"{r['name']:<{width}}  {shape:<16} {r['type']:<7} {r['scheme_type']:<7} {r['bytes']:>12} "
                     f"{r['error']:>12.3e}")
    counts: dict[str, int] = {}
    for r in a.rows:
        counts[r["type"]] = counts.get(r["type"], 0) + 1
    mix = ", ".join(f"{n} {t}" for t, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    lines.append(f"budget {a.budget.label}: limit {a.limit} bytes for the tensors; mix: {mix}")
    lines.append(f"file {a.file_bytes} bytes ({a.file_bytes / 2**20:.2f} MiB), tensors {a.tensor_bytes} bytes, "
                 f"{a.bits_per_weight:.3f} bits per weight; predicted error {a.predicted_error:.4e} "
                 f"(the scheme's own types: {a.scheme_error:.4e} at {a.scheme_tensor_bytes} tensor bytes)")
    return "\n".join(lines)


# ---- the guard: never worse than the scheme's own types


def keep_better(plan, allocation: Allocation, scheme_types: dict, score: Callable[[dict], float]) -> dict:
    """Score the allocated mix and the scheme's own (SCHEME_TYPES: name -> type, llama.cpp's) with SCORE (mix ->
    measured error, lower is better: the KL on held-out calibration chunks, ggufkit.plan.sensitivity.Session.kl)
    and keep the better one, when the scheme's mix fits the budget too. A reverted plan gets the scheme's types
    back (plan.tensors, plan.scheme_rows, the allocation's rows) and, instead of the budget's keys, only
    ggufkit.optimize.mix = "scheme"; where that does not fit, the first of these that does: without that key;
    without the quantize.imatrix.* keys (llama_model_quantize writes none, llama-quantize does); without any
    ggufkit key (what --optimize recorded). The last is llama.cpp's own header, so a budget of exactly
    llama.cpp's file size -- llama-quantize's or llama_model_quantize's, with or without an imatrix -- always has
    room for llama.cpp's mix, and the guard always compares it. -> {"mix", "kl_budget", "kl_scheme"}."""
    from ggufkit.output.writer import tensor_nbytes
    from ggufkit.plan.schemes import PlanRow

    allocated = {p.tensor.name: p.qtype for p in plan.tensors}
    # the budget's own keys are dropped from a reverted file; the rest is kept as far as it fits (docstring)
    bare = {k: v for k, v in plan.metadata.items() if k not in metadata(allocation.budget, "")}
    reverted_meta = {**bare, "ggufkit.optimize.mix": "scheme"}
    original_keys = imatrix_keys = plan.imatrix_keys
    scheme_tensor_bytes = sum(tensor_nbytes(p.tensor.shape, scheme_types[p.tensor.name]) for p in plan.tensors)
    if allocation.budget.kind == "size":
        data = sum(_aligned(tensor_nbytes(p.tensor.shape, scheme_types[p.tensor.name])) for p in plan.tensors)
        kept = plan.metadata.copy()
        fits = False
        minimal = {k: v for k, v in bare.items() if not k.startswith("ggufkit.")}
        try:
            for meta, keys in ((reverted_meta, True), (bare, True), (reverted_meta, False), (bare, False),
                               (minimal, False)):
                plan.metadata.clear()
                plan.metadata.update(meta)
                plan.imatrix_keys = original_keys and keys
                if _aligned(header_bytes(plan)) + data <= int(allocation.budget.value):
                    reverted_meta, imatrix_keys, fits = meta, plan.imatrix_keys, True
                    break
        finally:
            plan.metadata.clear()
            plan.metadata.update(kept)
            plan.imatrix_keys = original_keys
    else:
        fits = scheme_tensor_bytes <= allocation.limit
    out = {"mix": "budget", "kl_budget": score(allocated), "kl_scheme": None}
    if not fits or allocated == scheme_types:
        return out
    out["kl_scheme"] = score(scheme_types)
    if out["kl_scheme"] >= out["kl_budget"]:
        return out
    out["mix"] = "scheme"
    plan.tensors[:] = [type(p)(p.tensor, scheme_types[p.tensor.name],
                               tensor_nbytes(p.tensor.shape, scheme_types[p.tensor.name])) for p in plan.tensors]
    plan.scheme_rows[:] = [PlanRow(p.tensor.name, tuple(p.tensor.shape), p.qtype, p.nbytes) for p in plan.tensors]
    plan.metadata.clear()
    plan.metadata.update(reverted_meta)
    plan.imatrix_keys = imatrix_keys
    for r, p in zip(allocation.rows, plan.tensors):
        r["type"], r["bytes"] = p.qtype.name, p.nbytes
        r["error"] = r.get("scheme_error", r["error"])
    allocation.tensor_bytes = allocation.scheme_tensor_bytes
    allocation.predicted_error = allocation.scheme_error
    allocation.file_bytes = _aligned(header_bytes(plan)) + sum(_aligned(p.nbytes) for p in plan.tensors)
    return out


SENSITIVITY_CHUNKS = 2   # chunks of calibration text for the Fisher pass (forward + backward of the f32 model)


def allocate_calibrated(plan, budget: Budget, imatrix, model_dir, text, ctx: int, held_out: int,
                        threads: int | None = None, progress: bool = False, types=CANDIDATES,
                        session=None) -> tuple[Allocation, dict]:
    """allocate_plan with the measured sensitivities of the calibration text (the "fisher" errors), then the guard
    (keep_better: the allocated mix against the scheme's own types, by measured KL on the held-out chunk at index
    held_out, e.g. the first one the imatrix did not see). -> (allocation, the guard's result)."""
    from ggufkit.plan.sensitivity import Session

    if session is None:
        session = Session(model_dir, text, ctx=ctx, fit_chunks=SENSITIVITY_CHUNKS, held_out=held_out,
                          threads=threads)
    scheme_types = {p.tensor.name: p.qtype for p in plan.tensors}
    allocation = allocate_plan(plan, budget, imatrix, threads=threads, progress=progress, types=types,
                               sensitivity=session.sensitivity())
    guard = keep_better(plan, allocation, scheme_types, lambda mix: session.kl(mix, imatrix)[0])
    return allocation, guard
