"""Quantization schemes (llama.cpp "ftypes" such as Q4_K_M) and the per-tensor type plan they produce.

The plan reproduces llama-quantize's choice for every tensor (llama.cpp as vendored in llama-cpp-python 0.3.36,
`src/llama-quant.cpp`), so a file written from the plan has the same tensor types as `llama_model_quantize` run on
an F32 GGUF of the same model. The steps, in llama.cpp's order:

  1. may the tensor be quantized at all?  (>= 2 dims, name ends in "weight", not a norm, not on the keep list)
                                         no -> it keeps its source type (F32 here)
  2. the scheme's base type               e.g. Q4_K for Q4_K_M; F16/BF16/F32 schemes stop here
  3. output.weight (and token_embd.weight when tied): Q6_K (Q8_0 for the Q8_0 scheme, or when the row length is
     not a multiple of the base type's block)
  4. the scheme's promotion rules by tensor role, some depending on the layer index (a per-role counter in
     llama.cpp's tensor order, or the "blk.N." number for MoE models), GQA, expert count and imatrix
  5. model-wide bumps: attn_v of a 70B llama -> Q5_K, attn_v/attn_k of 8-expert models -> Q8_0
  6. fallback when the row length is not a multiple of the chosen type's block size (Q4_K -> Q5_0, ...), and F16
     when even the fallback does not fit

The promotion rules are data: each Scheme holds, per tensor role, an ordered list of (condition, type) pairs;
the first condition that holds picks the type, none holding keeps the base type.

    scheme = get_scheme("q4_k_m")
    types = plan(scheme, [("token_embd.weight", (49152, 576)), ...], ModelInfo("llama", 30, 9, 3, 576))
    print(format_plan(plan_rows(scheme, tensors, info)))      # the --dry-run table
"""
from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf import LlamaFileType as FT

__all__ = [
    "SCHEMES",
    "ModelInfo",
    "PlanRow",
    "PlanSummary",
    "Scheme",
    "format_plan",
    "get_scheme",
    "plan",
    "plan_rows",
    "quantize_order",
    "summarize",
    "tensor_bytes",
]


# ---- model facts the rules depend on

@dataclass(frozen=True)
class ModelInfo:
    """What llama-quantize reads from the model's hyperparameters. arch is the GGUF architecture name."""
    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_embd: int
    n_expert: int = 0

    @property
    def n_gqa(self) -> int:
        """Query heads per KV head, integer division as llama.cpp does (0 when there are no KV heads)."""
        return self.n_head // self.n_head_kv if self.n_head_kv else 0


# llama.cpp sizes some architectures as "70B" from their layer count; only that size matters for quantization
# (attn_v gets Q5_K instead of Q3_K/Q4_K). Per architecture, from the vendored src/models/<arch>.cpp.
_IS_70B: dict[str, Callable[[ModelInfo], bool]] = {
    "llama": lambda m: m.n_expert != 8 and m.n_layer == 80 and m.n_head != m.n_head_kv,
    "qwen2": lambda m: m.n_layer == 80,
    "deci": lambda m: m.n_layer == 80,
    "olmo": lambda m: m.n_layer == 80,
    "jais2": lambda m: m.n_layer == 68,
}


# ---- tensor roles

class Role(enum.Enum):
    """Broad tensor roles the rules are written against (llama.cpp matches them by name substrings)."""
    TOKEN_EMBD = "token_embd"
    ATTN_Q = "attn_q"
    ATTN_K = "attn_k"
    ATTN_V = "attn_v"            # also attn_qkv and attn_kv_b: llama.cpp treats all three alike
    ATTN_OUTPUT = "attn_output"
    FFN_UP = "ffn_up"
    FFN_GATE = "ffn_gate"
    FFN_DOWN = "ffn_down"
    OUTPUT = "output"
    OTHER = "other"


# (substring, role), checked in this order after the exact names below. attn_qkv / attn_kv_b land in ATTN_V:
# llama.cpp has a separate attn_qkv branch, but it is never reached because the attn_v branch catches it first.
_ROLE_BY_SUBSTRING: tuple[tuple[str, Role], ...] = (
    ("attn_qkv.weight", Role.ATTN_V),
    ("attn_kv_b.weight", Role.ATTN_V),
    ("attn_v.weight", Role.ATTN_V),
    ("attn_k.weight", Role.ATTN_K),
    ("attn_q.weight", Role.ATTN_Q),
    ("attn_output.weight", Role.ATTN_OUTPUT),
    ("ffn_up", Role.FFN_UP),
    ("ffn_gate", Role.FFN_GATE),
    ("ffn_down", Role.FFN_DOWN),
)
_TOKEN_EMBD_NAMES = frozenset({"token_embd.weight", "per_layer_token_embd.weight"})


def tensor_role(name: str) -> Role:
    if name == "output.weight":
        return Role.OUTPUT
    if name in _TOKEN_EMBD_NAMES:
        return Role.TOKEN_EMBD
    for needle, role in _ROLE_BY_SUBSTRING:
        if needle in name:
            return role
    return Role.OTHER


# ---- which tensors are quantized at all

# Name substrings llama-quantize never quantizes (norms, MoE routers, small per-arch tables, vision/audio bits).
_KEEP_SUBSTRINGS: tuple[str, ...] = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
    "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
    "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight", "attn_rel_b.weight",
    ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger",
    "a.rvq.codebook", "mm.a.code_embd",
)
_KEEP_NAMES = frozenset({"position_embd.weight", "token_types.weight"})
_KEEP_SUBSTRINGS_BY_ARCH: dict[str, tuple[str, ...]] = {
    "glm5-next": ("hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
                  "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight",
                  "ssm_g_b.weight", "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight",
                  "attn_v_b.weight"),
}


def ggml_n_dims(shape: Sequence[int]) -> int:
    """Dimensions as ggml counts them: trailing size-1 dims of ne (leading ones of the numpy shape) don't count."""
    ne = list(reversed(shape))
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] != 1:
            return i + 1
    return 1


def is_quantizable(name: str, shape: Sequence[int], arch: str) -> bool:
    if ggml_n_dims(shape) < 2 or not name.endswith("weight") or name in _KEEP_NAMES:
        return False
    keep = _KEEP_SUBSTRINGS + _KEEP_SUBSTRINGS_BY_ARCH.get(arch, ())
    return not any(s in name for s in keep)


# ---- conditions for promotion rules

@dataclass(frozen=True)
class Ctx:
    """What a rule condition may look at: the tensor's layer index among its role (i of n), the model, imatrix."""
    i: int
    n: int
    model: ModelInfo
    has_imatrix: bool
    ne2: int = 1          # ggml's ne[2]: the expert count of a 3-D expert tensor, 1 for a matrix


@dataclass(frozen=True)
class When:
    """A named condition; combine with & | ~."""
    label: str
    test: Callable[[Ctx], bool]

    def __call__(self, ctx: Ctx) -> bool:
        return self.test(ctx)

    def __and__(self, other: When) -> When:
        return When(f"{self.label} and {other.label}", lambda c: self(c) and other(c))

    def __or__(self, other: When) -> When:
        return When(f"({self.label} or {other.label})", lambda c: self(c) or other(c))

    def __invert__(self) -> When:
        return When(f"not {self.label}", lambda c: not self(c))


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's "use_more_bits" layer pattern: the first and last eighth, and every third layer between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


ALWAYS = When("always", lambda c: True)
MORE_BITS = When("more-bits layer", lambda c: _more_bits(c.i, c.n))
FIRST_EIGHTH = When("first 1/8 of layers", lambda c: c.i < c.n // 8)
LAST_EIGHTH = When("last 1/8 of layers", lambda c: c.i >= 7 * c.n // 8)
FIRST_SIXTEENTH = When("first 1/16 of layers", lambda c: c.i < c.n // 16)
GQA_4 = When("n_gqa >= 4", lambda c: c.model.n_gqa >= 4)
EXPERTS_8 = When("8 experts", lambda c: c.model.n_expert == 8)
FALCON = When("falcon", lambda c: c.model.arch == "falcon")
IMATRIX = When("imatrix", lambda c: c.has_imatrix)
EXPERT_MATS = When("3-D expert tensor", lambda c: c.ne2 > 1)
GQA_4_OR_EXPERTS_4 = When("n_gqa >= 4 or >= 4 experts", lambda c: c.model.n_gqa >= 4 or c.model.n_expert >= 4)


# Model-wide bumps after a scheme's own rules, for every quantized scheme (llama-quantize: "for the 8-expert model,
# bumping this to Q8_0 trades just ~128MB"): (role, condition, type).
MODEL_BUMPS: tuple[tuple[Role, When, T], ...] = (
    (Role.ATTN_V, EXPERTS_8, T.Q8_0),
    (Role.ATTN_K, EXPERTS_8, T.Q8_0),
)


def first(k: int) -> When:
    return When(f"first {k}", lambda c: c.i < k)


Rules = tuple[tuple[When, "T | None"], ...]   # first matching condition wins; None = keep the base type


# ---- the schemes

@dataclass(frozen=True)
class Scheme:
    """A llama.cpp file type: its base tensor type and its promotion rules per tensor role."""
    name: str
    file_type: FT
    base_type: T
    rules: dict[Role, Rules] = field(default_factory=dict)
    output: T | None = None      # output.weight's type when not the default (Q6_K, or Q8_0 for Q8_0)
    model_bumps: bool = True     # step 5 applies (llama.cpp skips it in its MXFP4_MOE and IQ1/IQ2 branches)

    @property
    def quantized(self) -> bool:
        """False for F32/F16/BF16 schemes, which take no promotions and no fallbacks."""
        return self.base_type not in (T.F32, T.F16, T.BF16)

    @property
    def output_type(self) -> T:
        """output.weight (and tied token_embd.weight) when its rows fit the base type's blocks."""
        if self.output is not None:
            return self.output
        return T.Q8_0 if self.base_type == T.Q8_0 else T.Q6_K


def _attn_output(experts_8: T | None = None, dense: T | None = None, falcon: T | None = None) -> Rules:
    """llama.cpp's attn_output rule shape: a Falcon branch, an 8-expert branch, and the rest."""
    return ((FALCON, falcon), (EXPERTS_8, experts_8), (ALWAYS, dense))


_IQ4_RULES: dict[Role, Rules] = {
    Role.ATTN_V: ((GQA_4, T.Q5_K),),
    Role.FFN_DOWN: ((FIRST_EIGHTH & ~IMATRIX, T.Q5_K),),
    Role.ATTN_OUTPUT: _attn_output(experts_8=T.Q5_K),
}

def _iq2_rules(low: T, attn_output: T | None = None) -> dict[Role, Rules]:
    """llama.cpp's IQ1/IQ2 branch: `low` (Q2_K, or IQ3_S for IQ2_S/IQ2_M) for token_embd, attn_v without GQA and
    the first eighth of ffn_down; Q4_K for attn_v with GQA or experts and attn_k with 8 experts."""
    return {
        Role.TOKEN_EMBD: ((ALWAYS, low),),
        Role.ATTN_V: ((GQA_4_OR_EXPERTS_4, T.Q4_K), (ALWAYS, low)),
        Role.ATTN_K: ((EXPERTS_8, T.Q4_K),),
        Role.FFN_DOWN: ((FIRST_EIGHTH, low),),
        Role.ATTN_OUTPUT: ((EXPERTS_8, T.Q5_K), (ALWAYS, attn_output)),
    }


_SCHEME_LIST: tuple[Scheme, ...] = (
    Scheme("F32", FT.ALL_F32, T.F32),
    Scheme("F16", FT.MOSTLY_F16, T.F16),
    Scheme("BF16", FT.MOSTLY_BF16, T.BF16),
    Scheme("Q8_0", FT.MOSTLY_Q8_0, T.Q8_0),
    Scheme("Q4_0", FT.MOSTLY_Q4_0, T.Q4_0, {Role.FFN_DOWN: ((IMATRIX & FIRST_EIGHTH, T.Q4_1),)}),
    Scheme("Q4_1", FT.MOSTLY_Q4_1, T.Q4_1),
    Scheme("Q5_0", FT.MOSTLY_Q5_0, T.Q5_0, {Role.FFN_DOWN: ((IMATRIX & FIRST_EIGHTH, T.Q5_1),)}),
    Scheme("Q5_1", FT.MOSTLY_Q5_1, T.Q5_1),
    Scheme("Q2_K", FT.MOSTLY_Q2_K, T.Q2_K, {
        Role.ATTN_V: ((GQA_4, T.Q4_K), (ALWAYS, T.Q3_K)),
        Role.FFN_DOWN: ((ALWAYS, T.Q3_K),),
        Role.ATTN_OUTPUT: _attn_output(experts_8=T.Q5_K, dense=T.Q3_K),
    }),
    Scheme("Q3_K_S", FT.MOSTLY_Q3_K_S, T.Q3_K, {
        Role.ATTN_OUTPUT: _attn_output(experts_8=T.Q5_K),
    }),
    Scheme("Q3_K_M", FT.MOSTLY_Q3_K_M, T.Q3_K, {
        Role.ATTN_V: ((first(2), T.Q5_K), (ALWAYS, T.Q4_K)),
        Role.FFN_DOWN: ((FIRST_SIXTEENTH, T.Q5_K), (~FALCON | MORE_BITS, T.Q4_K)),
        Role.ATTN_OUTPUT: _attn_output(experts_8=T.Q5_K, dense=T.Q4_K),
    }),
    Scheme("Q3_K_L", FT.MOSTLY_Q3_K_L, T.Q3_K, {
        Role.ATTN_V: ((ALWAYS, T.Q5_K),),
        Role.FFN_DOWN: ((FALCON, T.Q4_K), (ALWAYS, T.Q5_K)),
        Role.ATTN_OUTPUT: _attn_output(dense=T.Q5_K, falcon=T.Q4_K),
    }),
    Scheme("Q4_K_S", FT.MOSTLY_Q4_K_S, T.Q4_K, {
        Role.ATTN_V: ((first(4), T.Q5_K),),
        Role.FFN_DOWN: ((~FALCON & FIRST_EIGHTH, T.Q5_K),),
        Role.ATTN_OUTPUT: _attn_output(experts_8=T.Q5_K),
    }),
    Scheme("Q4_K_M", FT.MOSTLY_Q4_K_M, T.Q4_K, {
        Role.ATTN_V: ((MORE_BITS, T.Q6_K),),
        Role.FFN_DOWN: ((FALCON & FIRST_SIXTEENTH, T.Q6_K), (FALCON & MORE_BITS, T.Q5_K), (FALCON, None),
                        (MORE_BITS, T.Q6_K)),
        Role.ATTN_OUTPUT: _attn_output(experts_8=T.Q5_K),
    }),
    Scheme("Q5_K_S", FT.MOSTLY_Q5_K_S, T.Q5_K),
    Scheme("Q5_K_M", FT.MOSTLY_Q5_K_M, T.Q5_K, {
        Role.ATTN_V: ((MORE_BITS, T.Q6_K),),
        Role.FFN_DOWN: ((MORE_BITS, T.Q6_K),),
    }),
    Scheme("Q6_K", FT.MOSTLY_Q6_K, T.Q6_K),
    Scheme("IQ4_NL", FT.MOSTLY_IQ4_NL, T.IQ4_NL, _IQ4_RULES),
    Scheme("IQ4_XS", FT.MOSTLY_IQ4_XS, T.IQ4_XS, _IQ4_RULES),
    # Q2_K_S: Q2_K without Q2_K's promotions, and only with an importance matrix (see requires_imatrix)
    Scheme("Q2_K_S", FT.MOSTLY_Q2_K_S, T.Q2_K, {
        Role.ATTN_V: ((GQA_4, T.Q4_K),),
        Role.FFN_DOWN: ((FIRST_EIGHTH, T.Q4_K),),
    }),
    Scheme("TQ1_0", FT.MOSTLY_TQ1_0, T.TQ1_0, {Role.TOKEN_EMBD: ((ALWAYS, T.Q4_K),)}),
    Scheme("TQ2_0", FT.MOSTLY_TQ2_0, T.TQ2_0, {Role.TOKEN_EMBD: ((ALWAYS, T.Q4_K),)}),
    # MXFP4_MOE: 3-D expert tensors MXFP4, every other quantized tensor (token_embd too) and output Q8_0
    Scheme("MXFP4_MOE", FT.MOSTLY_MXFP4_MOE, T.Q8_0,
           {role: ((EXPERT_MATS, T.MXFP4),) for role in Role if role is not Role.OUTPUT},
           output=T.Q8_0, model_bumps=False),
    # (NVFP4 has an ftype number but llama_model_quantize 0.3.36 rejects it as "invalid output file type 39";
    # Q2_0 is an ftype gguf-py 0.19 cannot name: neither is a scheme here. Both types have kernels.)
    Scheme("Q1_0", FT.MOSTLY_Q1_0, T.Q1_0),
    # the 3-bit i-quant mixes on IQ3_S (IQ3_XS also stores IQ3_XXS, so it needs an importance matrix)
    Scheme("IQ3_XS", FT.MOSTLY_IQ3_XS, T.IQ3_S, {
        Role.ATTN_V: ((GQA_4, T.Q4_K),),
        Role.ATTN_K: ((ALWAYS, T.IQ3_XXS),),
        Role.ATTN_Q: ((ALWAYS, T.IQ3_XXS),),
        Role.FFN_GATE: ((~FIRST_EIGHTH & ~LAST_EIGHTH, T.IQ3_XXS),),
        Role.FFN_UP: ((~FIRST_EIGHTH & ~LAST_EIGHTH, T.IQ3_XXS),),
        Role.ATTN_OUTPUT: _attn_output(experts_8=T.Q5_K),
    }),
    Scheme("IQ3_S", FT.MOSTLY_IQ3_S, T.IQ3_S, {
        Role.ATTN_V: ((GQA_4, T.Q4_K),),
        Role.ATTN_OUTPUT: _attn_output(experts_8=T.Q5_K),
    }),
    # the 2-bit i-quant mixes: llama.cpp's IQ1/IQ2 branch (no model-wide bumps; output Q5_K; imatrix-only)
    Scheme("IQ2_XXS", FT.MOSTLY_IQ2_XXS, T.IQ2_XXS, _iq2_rules(T.Q2_K), output=T.Q5_K, model_bumps=False),
    Scheme("IQ2_XS", FT.MOSTLY_IQ2_XS, T.IQ2_XS, _iq2_rules(T.Q2_K), output=T.Q5_K, model_bumps=False),
    Scheme("IQ2_S", FT.MOSTLY_IQ2_S, T.IQ2_XS, _iq2_rules(T.IQ3_S, T.IQ3_S), output=T.Q5_K, model_bumps=False),
    Scheme("IQ2_M", FT.MOSTLY_IQ2_M, T.IQ2_S, _iq2_rules(T.IQ3_S, T.IQ3_S), output=T.Q5_K, model_bumps=False),
    Scheme("IQ1_S", FT.MOSTLY_IQ1_S, T.IQ1_S, _iq2_rules(T.Q2_K, T.IQ2_XXS), output=T.Q5_K, model_bumps=False),
    Scheme("IQ1_M", FT.MOSTLY_IQ1_M, T.IQ1_M, _iq2_rules(T.Q2_K, T.IQ2_XXS), output=T.Q5_K, model_bumps=False),
    Scheme("IQ3_XXS", FT.MOSTLY_IQ3_XXS, T.IQ3_XXS, {
        Role.TOKEN_EMBD: ((ALWAYS, T.IQ3_S),),
        Role.ATTN_V: ((GQA_4, T.Q4_K), (~IMATRIX, T.IQ3_S)),
        Role.ATTN_K: ((ALWAYS, T.IQ2_S),),
        Role.ATTN_Q: ((ALWAYS, T.IQ2_S),),
        Role.FFN_DOWN: ((~IMATRIX & FIRST_EIGHTH, T.Q4_K), (~IMATRIX, T.Q3_K)),
        Role.ATTN_OUTPUT: _attn_output(experts_8=T.Q5_K, dense=T.IQ3_S),
    }, output=T.Q5_K),
    Scheme("IQ3_M", FT.MOSTLY_IQ3_M, T.IQ3_S, {
        Role.ATTN_V: ((ALWAYS, T.Q4_K),),
        Role.FFN_DOWN: ((FIRST_EIGHTH | (EXPERTS_8 & MORE_BITS), T.Q4_K),),
        Role.ATTN_OUTPUT: _attn_output(experts_8=T.Q5_K, dense=T.Q4_K),
    }),
)

SCHEMES: dict[str, Scheme] = {s.name: s for s in _SCHEME_LIST}


# llama.cpp's schemes whose types it quantizes only with an importance matrix (its tensor_requires_imatrix:
# IQ1/IQ2/IQ3_XXS types, and Q2_K inside a Q2_K_S file). Those in SCHEMES are converted with --imatrix or
# --calibration (ggufkit.conversion refuses them otherwise); for the rest ggufkit has no kernels yet, and asking
# for one says both facts rather than just "unknown".
IMATRIX_ONLY_SCHEMES = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "Q2_K_S", "IQ3_XS")
# llama-quantize's aliases (tools/quantize: "alias for Q4_K_M" and friends)
SCHEME_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}


def get_scheme(name: str) -> Scheme:
    """Scheme by name, case-insensitive ("q4_k_m" -> Q4_K_M), or by llama-quantize's alias ("q4_k" -> Q4_K_M)."""
    key = name.strip().upper()
    key = SCHEME_ALIASES.get(key, key)
    try:
        return SCHEMES[key]
    except KeyError:
        from ggufkit.errors import UsageError  # a ValueError too

        known = ", ".join(s.lower() for s in SCHEMES)
        if key in IMATRIX_ONLY_SCHEMES:
            raise UsageError(f"scheme {name!r} is one llama.cpp quantizes only with an importance matrix, and "
                             f"ggufkit does not offer it yet (known: {known})") from None
        raise UsageError(f"unknown scheme {name!r} (known: {known})") from None


# The types llama.cpp quantizes only with importance weights (tensor_requires_imatrix), except in token_embd and
# output; Q2_K only inside a Q2_K_S file.
_IMATRIX_TYPES = frozenset({T.IQ1_S, T.IQ1_M, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS})


def requires_imatrix(scheme: Scheme, name: str, qtype: T) -> bool:
    """Whether llama-quantize refuses to write this tensor as qtype without an importance matrix."""
    if name in _TOKEN_EMBD_NAMES or name == "output.weight":
        return False
    return qtype in _IMATRIX_TYPES or (qtype == T.Q2_K and scheme.name == "Q2_K_S")


# ---- fallbacks for rows that do not fit a type's blocks

# 256-wide types -> the 32-wide type llama.cpp uses instead; 32-wide types have no smaller step.
_FALLBACK: dict[T, T] = {
    T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.TQ1_0: T.Q4_0, T.TQ2_0: T.Q4_0,
    T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0,
    T.IQ1_S: T.IQ4_NL, T.IQ1_M: T.IQ4_NL, T.IQ2_XXS: T.IQ4_NL, T.IQ2_XS: T.IQ4_NL, T.IQ2_S: T.IQ4_NL,
    T.IQ3_XXS: T.IQ4_NL, T.IQ3_S: T.IQ4_NL, T.IQ4_XS: T.IQ4_NL,
}


def block_size(qtype: T) -> int:
    return GGML_QUANT_SIZES[qtype][0]


def _fit_row(qtype: T, n_cols: int) -> T:
    """The type actually used for rows of n_cols values: qtype, its fallback, or F16."""
    if n_cols % block_size(qtype) == 0:
        return qtype
    if qtype in _FALLBACK:
        qtype = _FALLBACK[qtype]
    elif block_size(qtype) > 32:
        raise ValueError(f"no fallback type for {qtype.name} with rows of {n_cols}")
    return qtype if n_cols % block_size(qtype) == 0 else T.F16


# ---- the plan

_LAYER = re.compile(r"blk\.(\d+)\.")


def _layer_of(name: str) -> int:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else -1


def quantize_order(names: Iterable[str]) -> list[str]:
    """The order llama-quantize visits (and writes) tensors: non-layer tensors first, then by layer number, and
    by byte-wise name within a layer. The per-role layer counters of the rules count in this order."""
    return sorted(names, key=lambda n: (_layer_of(n), n.encode()))


@dataclass(frozen=True)
class PlanRow:
    name: str
    shape: tuple[int, ...]
    type: T
    nbytes: int
    fallback_from: T | None = None   # the type the rules chose when the row length forced another


class _Counters:
    """llama.cpp's per-role layer counters (dense models take a tensor's layer index from these)."""

    def __init__(self, names: Sequence[str], model: ModelInfo):
        self.model = model
        n_attn_v = sum(tensor_role(n) is Role.ATTN_V for n in names)
        self.total = {Role.ATTN_V: n_attn_v, Role.FFN_DOWN: model.n_layer, Role.FFN_GATE: model.n_layer,
                      Role.FFN_UP: model.n_layer}
        self.seen = {role: 0 for role in self.total}

    def take(self, role: Role, name: str) -> tuple[int, int]:
        """(layer index, layer count) for this tensor, then advance the role's counter."""
        if role not in self.total:
            return 0, 0
        i, n = self.seen[role], self.total[role]
        if role is not Role.ATTN_V and self.model.n_expert > 1:
            # MoE expert tensors are not one per layer in order: llama.cpp reads the layer from the name.
            i = _layer_of(name)
            if not 0 <= i < n:
                raise ValueError(f"{name}: cannot tell its layer (n_layer {n})")
        self.seen[role] += 1
        return i, n


def _choose(scheme: Scheme, name: str, shape: Sequence[int], role: Role, model: ModelInfo, tied: bool,
            has_imatrix: bool, counters: _Counters) -> tuple[T, T | None]:
    """(final type, type before the row-length fallback or None) for one quantizable tensor."""
    if not scheme.quantized:
        return scheme.base_type, None
    n_cols = shape[-1]
    base = scheme.base_type
    if role is Role.OUTPUT or (tied and role is Role.TOKEN_EMBD):
        misfit = model.arch == "falcon" or n_cols % block_size(base) != 0
        chosen = T.Q8_0 if misfit else scheme.output_type
    else:
        i, n = counters.take(role, name)
        ctx = Ctx(i, n, model, has_imatrix, shape[-3] if len(shape) >= 3 else 1)
        picked = next((t for cond, t in scheme.rules.get(role, ()) if cond(ctx)), None)
        chosen = base if picked is None else picked
        if scheme.model_bumps:  # llama.cpp skips these in its MXFP4_MOE and IQ1/IQ2 branches
            if role is Role.ATTN_V and chosen in (T.Q3_K, T.Q4_K) and _IS_70B.get(model.arch, lambda m: False)(model):
                chosen = T.Q5_K
            chosen = next((t for r, cond, t in MODEL_BUMPS if r is role and cond(ctx)), chosen)
    final = _fit_row(chosen, n_cols)
    return final, (chosen if final != chosen else None)


def tensor_bytes(qtype: T, shape: Sequence[int]) -> int:
    """Bytes of a tensor of this numpy shape stored as qtype (its rows must fit whole blocks)."""
    n_block, block_bytes = GGML_QUANT_SIZES[qtype]
    n_rows = 1
    for d in shape[:-1]:
        n_rows *= d
    return n_rows * (shape[-1] // n_block) * block_bytes


def plan_rows(scheme: Scheme, tensors: Sequence[tuple[str, Sequence[int]]], info: ModelInfo,
              has_imatrix: bool = False, source_type: T = T.F32) -> list[PlanRow]:
    """One PlanRow per tensor, in the given (file) order. Tensors llama-quantize leaves alone keep source_type."""
    shapes = {name: tuple(int(d) for d in shape) for name, shape in tensors}
    if len(shapes) != len(tensors):
        raise ValueError("duplicate tensor names in plan input")
    tied = "output.weight" not in shapes
    counters = _Counters(list(shapes), info)
    chosen: dict[str, tuple[T, T | None]] = {}
    for name in quantize_order(shapes):
        shape = shapes[name]
        if is_quantizable(name, shape, info.arch):
            chosen[name] = _choose(scheme, name, shape, tensor_role(name), info, tied, has_imatrix, counters)
        else:
            chosen[name] = (source_type, None)
    rows = []
    for name, shape in shapes.items():
        qtype, fallback_from = chosen[name]
        rows.append(PlanRow(name, shape, qtype, tensor_bytes(qtype, shape), fallback_from))
    return rows


def plan(scheme: Scheme, tensors: Sequence[tuple[str, Sequence[int]]], info: ModelInfo,
         has_imatrix: bool = False) -> dict[str, T]:
    """Tensor name -> the GGML type llama-quantize picks, in the given order. tensors: (gguf name, numpy shape)."""
    return {row.name: row.type for row in plan_rows(scheme, tensors, info, has_imatrix)}


# ---- printable plan (--dry-run)

@dataclass(frozen=True)
class PlanSummary:
    n_tensors: int
    n_elements: int
    nbytes: int
    n_fallback: int

    @property
    def bits_per_weight(self) -> float:
        return self.nbytes * 8 / self.n_elements if self.n_elements else 0.0


def summarize(rows: Sequence[PlanRow]) -> PlanSummary:
    n_elements = 0
    for row in rows:
        count = 1
        for d in row.shape:
            count *= d
        n_elements += count
    return PlanSummary(len(rows), n_elements, sum(r.nbytes for r in rows),
                       sum(r.fallback_from is not None for r in rows))


def _human(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if nbytes < 1024:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.2f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.2f} GiB"


def format_plan(rows: Sequence[PlanRow], scheme: Scheme | None = None) -> str:
    """The plan as a text table: tensor, shape, type, bytes; then total size and bits per weight."""
    width = max((len(r.name) for r in rows), default=6)
    lines = [f"{'tensor':<{width}}  {'shape':<16} {'type':<7} {'bytes':>12}"]
    for r in rows:
        shape = " x ".join(str(d) for d in r.shape)  # rows x cols, as `ggufkit inspect --tensors` shows it
        note = f"  (fallback from {r.fallback_from.name}: row of {r.shape[-1]})" if r.fallback_from else ""
        lines.append(f"{r.name:<{width}}  {shape:<16} {r.type.name:<7} {r.nbytes:>12}{note}")
    s = summarize(rows)
    head = f"{scheme.name}: " if scheme else ""
    lines.append(f"{head}{s.n_tensors} tensors, {s.n_elements} weights, tensor data {s.nbytes / 2**20:.1f} MiB "
                 f"({s.nbytes} bytes), {s.bits_per_weight:.2f} bits per weight"
                 + (f", {s.n_fallback} fallback(s)" if s.n_fallback else ""))
    return "\n".join(lines)
