"""llama-quantize's controls on top of a scheme, as data: per-tensor type overrides, output / token-embedding
types, --pure, --leave-output-tensor, importance-matrix filters and metadata overrides; and the plan they give.

The meaning is llama.cpp's (src/llama-quant.cpp llama_tensor_get_type, tools/quantize), in its order:

  1. a tensor llama-quantize does not quantize (norms, 1-D, ...; output.weight with --leave-output-tensor)
     keeps its source type
  2. token_embd / per_layer_token_embd with --token-embedding-type: that type, nothing else applies
     (per_layer_token_embd.weight goes on to 3 when a --tensor-type pattern names it)
  3. output.weight with --output-tensor-type: that type, nothing else applies
  4. F32/F16/BF16 schemes: the scheme's type; the rest is skipped (llama.cpp applies overrides only to
     quantized schemes)
  5. the first --tensor-type pattern that matches the name (regex search, in the order given) -> its type;
     otherwise, unless --pure, the scheme's rules (a tied token_embd takes --output-tensor-type there). A tensor
     decided by a pattern, or by --pure, does not advance the rules' per-role layer counters, as in llama.cpp.
  6. the row-length fallback (Q4_K -> Q5_0 ... -> F16) applies to whatever 5 chose

Types given directly in 2 and 3 get no fallback in llama.cpp (it would assert); here a type whose block does not
divide the row length is a one-line error.

    controls = Controls(tensor_types=parse_tensor_types(["attn_v=q8_0", "ffn_down=q6_k"]), pure=False)
    rows = plan_tensors(get_scheme("q4_k_m"), [(name, shape, src_type), ...], info, controls=controls)
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gguf import GGMLQuantizationType as T

from ggufkit.plan import schemes
from ggufkit.plan.schemes import ModelInfo, PlanRow, Role, Scheme

__all__ = ["Controls", "KVOverride", "parse_ggml_type", "parse_kv_override", "parse_tensor_type",
           "parse_tensor_type_file", "plan_tensors"]

FLOAT_TYPES = (T.F32, T.F16, T.BF16)


# ---- parsing (llama-quantize's argument formats)

def parse_ggml_type(text: str) -> T:
    """A ggml type by name, case-insensitive ("q8_0", "Q4_K", "f16"), among those ggufkit can write."""
    from ggufkit import quant

    key = text.strip().upper()
    writable = list(FLOAT_TYPES) + [t for t in quant.supported_types() if t not in FLOAT_TYPES]
    for t in writable:
        if t.name == key:
            return t
    names = ", ".join(t.name.lower() for t in writable)
    if key in T.__members__:
        raise ValueError(f"type {text!r}: ggufkit has no quantizer for it (it writes: {names})")
    raise ValueError(f"unknown type {text!r} (known: {names})")


def parse_tensor_type(text: str) -> tuple[str, T]:
    """"REGEX=TYPE" -> (regex, type). The name part is lower-cased, as llama-quantize does."""
    name, sep, qtype = text.partition("=")
    if not sep:
        raise ValueError(f"malformed tensor type {text!r}: expected REGEX=TYPE, e.g. attn_v=q8_0")
    if not name:
        raise ValueError(f"tensor type {text!r}: missing tensor name")
    if not qtype:
        raise ValueError(f"tensor type {text!r}: missing quantization type")
    pattern = name.lower()
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"tensor type {text!r}: bad regular expression ({e})") from None
    return pattern, parse_ggml_type(qtype)


def parse_tensor_type_file(path: str | Path) -> list[tuple[str, T]]:
    """A file of REGEX=TYPE items separated by spaces or newlines (llama-quantize's --tensor-type-file)."""
    from ggufkit.errors import InputError

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the tensor type file: {getattr(e, 'strerror', None) or e}", path) from None
    out = []
    for item in text.split():
        try:
            out.append(parse_tensor_type(item))
        except ValueError as e:
            raise InputError(str(e), path) from None
    return out


@dataclass(frozen=True)
class KVOverride:
    """--override-kv KEY=TYPE:VALUE. In the written file: int -> u32 of |value| (as llama-quantize),
    float -> f32, bool, str (at most 127 bytes)."""
    key: str
    kind: str  # "int" | "float" | "bool" | "str"
    value: int | float | bool | str


def parse_kv_override(text: str) -> KVOverride:
    key, sep, rest = text.partition("=")
    if not sep or not key or len(key.encode()) >= 128:
        raise ValueError(f"malformed KV override {text!r}: expected KEY=TYPE:VALUE with TYPE int, float, bool "
                         "or str, e.g. general.name=str:MyModel")
    kind, colon, raw = rest.partition(":")
    if not colon or kind not in ("int", "float", "bool", "str"):
        raise ValueError(f"KV override {text!r}: the type must be int, float, bool or str")
    try:
        if kind == "int":
            value: int | float | bool | str = int(raw)
        elif kind == "float":
            value = float(raw)
        elif kind == "bool":
            if raw not in ("true", "false"):
                raise ValueError
            value = raw == "true"
        else:
            if len(raw.encode()) > 127:
                raise ValueError(f"KV override {text!r}: the value cannot exceed 127 bytes")
            value = raw
    except ValueError as e:
        if str(e):
            raise
        raise ValueError(f"KV override {text!r}: {raw!r} is not a valid {kind}") from None
    return KVOverride(key, kind, value)


# ---- the controls

@dataclass(frozen=True)
class Controls:
    """Everything llama-quantize lets a user change on top of the scheme. The defaults change nothing."""
    tensor_types: tuple[tuple[str, T], ...] = ()
    output_tensor_type: T | None = None
    token_embedding_type: T | None = None
    pure: bool = False
    leave_output_tensor: bool = False
    kv_overrides: tuple[KVOverride, ...] = ()
    include_weights: tuple[str, ...] = ()   # imatrix entries kept: names containing one of these
    exclude_weights: tuple[str, ...] = ()   # imatrix entries dropped: names containing one of these

    def __post_init__(self):
        if self.include_weights and self.exclude_weights:
            raise ValueError("--include-weights and --exclude-weights cannot be used together")

    def apply_to_info(self, info: schemes.ModelInfo) -> schemes.ModelInfo:
        """The hyperparameters the rules read, with --override-kv's int values for them: llama_model_quantize's
        model loader reads its hyperparameters through the overrides (e.g. llama.expert_count=int:8 turns on
        the 8-expert rules)."""
        fields = {"block_count": "n_layer", "attention.head_count": "n_head", "attention.head_count_kv": "n_head_kv",
                  "embedding_length": "n_embd", "expert_count": "n_expert"}
        changes = {}
        for o in self.kv_overrides:
            arch, _, suffix = o.key.partition(".")
            if o.kind == "int" and arch == info.arch and suffix in fields:
                changes[fields[suffix]] = int(o.value)
        return dataclasses.replace(info, **changes) if changes else info

    def filter_imatrix(self, names: Iterable[str]) -> list[str]:
        """The imatrix entry names kept by --include-weights / --exclude-weights (substring matches)."""
        kept = list(names)
        if self.exclude_weights:
            kept = [n for n in kept if not any(s in n for s in self.exclude_weights)]
        if self.include_weights:
            kept = [n for n in kept if any(s in n for s in self.include_weights)]
        return kept

    def _pattern_type(self, name: str) -> T | None:
        for pattern, qtype in self.tensor_types:
            if re.search(pattern, name):
                return qtype
        return None


def _direct(qtype: T, name: str, shape: Sequence[int], option: str) -> T:
    if shape[-1] % schemes.block_size(qtype):
        raise ValueError(f"{option} {qtype.name.lower()}: {name} has rows of {shape[-1]}, not a multiple of "
                         f"{qtype.name}'s block of {schemes.block_size(qtype)}")
    return qtype


def plan_tensors(scheme: Scheme, tensors: Sequence[tuple[str, Sequence[int], T]], info: ModelInfo,
                 has_imatrix: bool = False, controls: Controls | None = None,
                 order: Sequence[str] | None = None) -> list[PlanRow]:
    """One PlanRow per tensor, in the given order. tensors: (gguf name, numpy shape, source type).
    order: the order llama-quantize visits the tensors in (default schemes.quantize_order; the input file's
    order with --keep-split); the rules' layer counters count in it."""
    c = controls or Controls()
    shapes = {name: tuple(int(d) for d in shape) for name, shape, _ in tensors}
    sources = {name: T(src) for name, _, src in tensors}
    if len(shapes) != len(tensors):
        raise ValueError("duplicate tensor names in plan input")
    tied = "output.weight" not in shapes
    counters = schemes._Counters(list(shapes), info)
    chosen: dict[str, tuple[T, T | None]] = {}
    for name in (order if order is not None else schemes.quantize_order(shapes)):
        shape = shapes[name]
        role = schemes.tensor_role(name)
        if not schemes.is_quantizable(name, shape, info.arch) or (c.leave_output_tensor and role is Role.OUTPUT):
            chosen[name] = (sources[name], None)
            continue
        if c.token_embedding_type is not None and role is Role.TOKEN_EMBD and not (
                name == "per_layer_token_embd.weight" and c._pattern_type(name) is not None):
            chosen[name] = (_direct(c.token_embedding_type, name, shape, "--token-embedding-type"), None)
            continue
        if c.output_tensor_type is not None and role is Role.OUTPUT:
            chosen[name] = (_direct(c.output_tensor_type, name, shape, "--output-tensor-type"), None)
            continue
        if not scheme.quantized:
            chosen[name] = (scheme.base_type, None)
            continue
        manual = c._pattern_type(name)
        if manual is None and not c.pure:
            if tied and role is Role.TOKEN_EMBD and c.output_tensor_type is not None:
                wanted = c.output_tensor_type
            else:
                chosen[name] = schemes._choose(scheme, name, shape, role, info, tied, has_imatrix, counters)
                continue
        else:
            wanted = manual if manual is not None else scheme.base_type
        final = schemes._fit_row(wanted, shape[-1])
        chosen[name] = (final, wanted if final != wanted else None)
    return [PlanRow(name, shape, chosen[name][0], schemes.tensor_bytes(chosen[name][0], shape), chosen[name][1])
            for name, shape in shapes.items()]
