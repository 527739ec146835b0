"""GGUF -> GGUF quantization in one streaming pass, byte-identical to llama.cpp's llama_model_quantize.

    from ggufkit.quantization import quantize
    quantize("model-BF16.gguf", "model-Q4_K_M.gguf", scheme="q4_k_m")
    quantize("model-00001-of-00003.gguf", "out.gguf", scheme="q6_k", controls=Controls(pure=True),
             split_max_size="2G")                       # -> out-00001-of-0000N.gguf ...

What llama_model_quantize writes, and so what this writes:
- key-values: the input's (first part's), in order, with general.quantization_version and general.file_type
  set (moved to the end), the split.* keys removed, then each --override-kv (and the quantize.imatrix.* keys
  llama-quantize adds when it loads an imatrix file) set in turn; "set" replaces a key and moves it last
- tensors in llama.cpp's model-loader order (ggufkit.plan.schemes.quantize_order; with --keep-split the
  input's own order, part by part), each of the type ggufkit.plan.overrides.plan_tensors picks
- data: a tensor whose type does not change is copied byte for byte; any other is read row block by row block
  (pread into a reused buffer) -> f32 (F16/BF16 widened exactly, quantized types dequantized) -> encoded
  (native quantizers, threads, GIL released) -> appended; every tensor padded to 32 bytes
Memory stays at a few row blocks whatever the model size. Deviation: an input general.alignment other than 32
is dropped (llama.cpp copies the key but lays the file out with 32, which makes a broken file).
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

from ggufkit import quant
from ggufkit.errors import InputError
from ggufkit.output.split import (
    GGUF_SPLIT_ORDER,
    KEEP_SPLIT_ORDER,
    GGUFSetWriter,
    TensorSlot,
    assign_parts,
    encode_kv,
    parse_size,
    part_paths,
)
from ggufkit.plan import overrides as ov
from ggufkit.plan import schemes
from ggufkit.sources.gguf_model import SPLIT_KEYS, GGUFModel, ModelTensor, open_gguf_model

BLOCK_BYTES = 16 << 20  # f32 bytes per row block
FLOAT_TYPES = (T.F32, T.F16, T.BF16)
IMATRIX_KEYS = ("quantize.imatrix.file", "quantize.imatrix.dataset", "quantize.imatrix.entries_count",
                "quantize.imatrix.chunks_count")


# ---- the plan

def model_info(model: GGUFModel) -> schemes.ModelInfo:
    """The hyperparameters llama-quantize's rules read, from the GGUF keys."""
    md, path = model.metadata, model.path
    arch = model.architecture
    if not arch:
        raise InputError("no general.architecture key: not a model GGUF", path)

    def number(suffix: str, default=None) -> int:
        value = md.get(f"{arch}.{suffix}", default)
        if hasattr(value, "items"):  # a per-layer array (GGUFArray): llama.cpp's rules read layer 0
            value = value.items[0] if len(value.items) else default
        if value is None:
            raise InputError(f"missing {arch}.{suffix}", path)
        return int(value)

    n_head = number("attention.head_count", 0)
    return schemes.ModelInfo(arch, number("block_count"), n_head, number("attention.head_count_kv", n_head),
                             number("embedding_length", 0), number("expert_count", 0))


@dataclass
class Imatrix:
    """The importance weights used: a lookup name -> (n_mat * cols,) f32, and the keys to record them by."""
    lookup: object
    names: list[str]
    metadata: list[tuple[str, V, object]] = field(default_factory=list)


def load_imatrix(imatrix, controls: ov.Controls) -> Imatrix | None:
    """None | a mapping {tensor name: (n_mat * cols,) f32} (used as llama_model_quantize gets it: no metadata
    keys) | an Imatrix object | a path (llama.cpp GGUF or .dat; llama-quantize's quantize.imatrix.* keys)."""
    if imatrix is None:
        return None
    meta: list[tuple[str, V, object]] = []
    if isinstance(imatrix, Mapping):
        table = {k: np.asarray(v, dtype=np.float32).reshape(-1) for k, v in imatrix.items()}
        names = controls.filter_imatrix(table)
        lookup = {n: table[n] for n in names}.get
    else:
        from ggufkit.quant import imatrix as imatrix_files

        loaded = imatrix if hasattr(imatrix, "entries") else imatrix_files.load(Path(imatrix))
        names = controls.filter_imatrix(loaded.entries)
        kept = set(names)
        lookup = (lambda n: loaded.column_weights(n) if n in kept else None)
        if not hasattr(imatrix, "entries"):
            meta.append((IMATRIX_KEYS[0], V.STRING, os.fspath(imatrix)[:127]))
        if loaded.datasets:
            meta.append((IMATRIX_KEYS[1], V.STRING, loaded.datasets[0][:127]))
        meta.append((IMATRIX_KEYS[2], V.UINT32, len(names)))
        if loaded.chunk_count > 0:
            meta.append((IMATRIX_KEYS[3], V.UINT32, int(loaded.chunk_count)))
    if not names:
        return None  # llama-quantize passes no imatrix when the filters leave nothing
    return Imatrix(lookup, names, meta)


@dataclass
class Planned:
    tensor: ModelTensor
    qtype: T
    fallback_from: T | None = None

    @property
    def slot(self) -> TensorSlot:
        return TensorSlot(self.tensor.name, self.tensor.ne, self.qtype)


@dataclass
class QuantizePlan:
    model: GGUFModel
    scheme: schemes.Scheme
    controls: ov.Controls
    tensors: list[Planned]
    kv: list[tuple[str, bytes]]
    imatrix: Imatrix | None
    parts: list[int] | None
    split_order: tuple[str, ...]

    @property
    def rows(self) -> list[schemes.PlanRow]:
        return [schemes.PlanRow(p.tensor.name, p.tensor.shape, p.qtype,
                                schemes.tensor_bytes(p.qtype, p.tensor.shape), p.fallback_from)
                for p in self.tensors]

    @property
    def total_bytes(self) -> int:
        return sum(p.slot.n_bytes for p in self.tensors)

    @property
    def requantized(self) -> list[Planned]:
        """Tensors stored quantized in the input that get another type (--allow-requantize)."""
        return [p for p in self.tensors if p.tensor.ggml_type not in FLOAT_TYPES and p.qtype != p.tensor.ggml_type]

    def summary(self) -> dict:
        s = schemes.summarize(self.rows)
        return {"input": str(self.model.path), "input_parts": len(self.model.parts),
                "architecture": self.model.architecture, "scheme": self.scheme.name, "tensors": s.n_tensors,
                "bytes": s.nbytes, "parameters": s.n_elements, "bits_per_weight": round(s.bits_per_weight, 4),
                "parts": (max(self.parts) + 1) if self.parts else 1}

    def table(self) -> list[dict]:
        return [{"name": p.tensor.name, "shape": list(p.tensor.shape), "source_type": p.tensor.ggml_type.name,
                 "type": p.qtype.name, "bytes": p.slot.n_bytes,
                 **({"part": self.parts[i] + 1} if self.parts else {})}
                for i, p in enumerate(self.tensors)]

    def format(self) -> str:
        text = schemes.format_plan(self.rows, self.scheme)
        if self.parts:
            n = max(self.parts) + 1
            sizes = [sum(p.slot.n_bytes for p, k in zip(self.tensors, self.parts) if k == i) for i in range(n)]
            text += "\n" + "\n".join(f"part {i + 1:05d}-of-{n:05d}: {self.parts.count(i)} tensors, "
                                     f"{sizes[i]} bytes of tensor data" for i in range(n))
        return text


def override_value(o: ov.KVOverride) -> tuple[V, object]:
    """The GGUF type and value llama-quantize writes for an --override-kv (int: u32 of |value|)."""
    if o.kind == "int":
        return V.UINT32, abs(int(o.value)) & 0xFFFFFFFF
    if o.kind == "float":
        return V.FLOAT32, float(o.value)
    if o.kind == "bool":
        return V.BOOL, bool(o.value)
    return V.STRING, str(o.value)


def _override_entry(o: ov.KVOverride) -> tuple[str, bytes]:
    return encode_kv(o.key, *override_value(o))


def output_kv(model: GGUFModel, scheme: schemes.Scheme, controls: ov.Controls,
              imatrix: Imatrix | None) -> list[tuple[str, bytes]]:
    kv = dict(model.kv_entries())

    def put(key: str, entry: bytes) -> None:
        kv.pop(key, None)
        kv[key] = entry

    put(*encode_kv("general.quantization_version", V.UINT32, gguf.GGML_QUANT_VERSION))
    put(*encode_kv("general.file_type", V.UINT32, int(scheme.file_type)))
    for key in (*SPLIT_KEYS, "general.alignment"):
        kv.pop(key, None)
    for o in controls.kv_overrides:
        put(*_override_entry(o))
    for key, vtype, value in (imatrix.metadata if imatrix else ()):
        put(*encode_kv(key, vtype, value))
    return list(kv.items())


def make_plan(src, scheme="q4_k_m", controls: ov.Controls | None = None, imatrix=None, keep_split: bool = False,
              split_max_size: int | str | None = None, split_max_tensors: int | None = None) -> QuantizePlan:
    """Open and validate SRC (a GGUF file or the first part of a split set) and decide every tensor's type.
    Reads no tensor data (the imatrix file, if any, is read)."""
    controls = controls or ov.Controls()
    sch = schemes.get_scheme(scheme) if isinstance(scheme, str) else scheme
    model = open_gguf_model(src)
    info = controls.apply_to_info(model_info(model))
    im = load_imatrix(imatrix, controls)
    by_name = {t.name: t for t in model.tensors}
    order = [t.name for t in model.tensors] if keep_split else schemes.quantize_order(by_name)
    try:
        rows = ov.plan_tensors(sch, [(t.name, t.shape, t.ggml_type) for t in model.tensors], info,
                               has_imatrix=im is not None, controls=controls, order=order)
    except ValueError as e:
        raise InputError(str(e), model.path) from None
    by_row = {r.name: r for r in rows}
    planned = [Planned(by_name[n], by_row[n].type, by_row[n].fallback_from) for n in order]
    if isinstance(split_max_size, str):
        split_max_size = parse_size(split_max_size)
    parts, split_order = None, GGUF_SPLIT_ORDER
    if keep_split:
        if split_max_size or split_max_tensors:
            raise ValueError("--keep-split and --split-max-size/--split-max-tensors are alternatives: give one")
        # as llama-quantize: the input's parts, named OUT-0000k-of-0000n even for a single-file input
        parts, split_order = [p.tensor.part for p in planned], KEEP_SPLIT_ORDER
    elif split_max_size or split_max_tensors:
        parts = assign_parts([p.slot for p in planned], max_size=split_max_size or None,
                             max_tensors=split_max_tensors or None)
    return QuantizePlan(model, sch, controls, planned, output_kv(model, sch, controls, im), im, parts,
                        split_order)


def default_output(plan: QuantizePlan) -> Path:
    """<input name without its split suffix and a trailing scheme tag>-<SCHEME>.gguf in the current directory."""
    stem = re.sub(r"-\d{5}-of-\d{5}$", "", plan.model.path.name.removesuffix(".gguf"))
    tags = "|".join(re.escape(s) for s in schemes.SCHEMES)
    stem = re.sub(rf"[-.]({tags})$", "", stem, flags=re.IGNORECASE) or stem
    return Path.cwd() / f"{stem}-{plan.scheme.name}.gguf"


# ---- the data

def to_f32(raw: np.ndarray, qtype: T, cols: int, threads: int | None, out: np.ndarray | None = None) -> np.ndarray:
    """(rows, row_bytes) u8 of `qtype` -> (rows, cols) f32, exactly as ggml's to-float conversions.
    out: a reusable f32 buffer of at least rows * cols values (F16/BF16 are widened into it: no allocation)."""
    rows = raw.shape[0]
    if qtype == T.F32:
        return raw.view(np.float32).reshape(rows, cols)
    if qtype in (T.F16, T.BF16):
        if out is None or out.size < rows * cols:
            out = np.empty(rows * cols, dtype=np.float32)
        dst = out.reshape(-1)[: rows * cols]
        if qtype == T.F16:
            np.copyto(dst, raw.view(np.float16).reshape(-1))
        else:  # bf16 is the high half of an f32
            np.left_shift(raw.view(np.uint16).reshape(-1), 16, out=dst.view(np.uint32), dtype=np.uint32,
                          casting="unsafe")
        return dst.reshape(rows, cols)
    if qtype in quant.supported_types():
        return quant.dequantize(raw, qtype, (rows, cols), threads=threads)
    return gguf.quants.dequantize(raw, qtype).reshape(rows, cols).astype(np.float32, copy=False)


def encode(x: np.ndarray, qtype: T, imatrix: np.ndarray | None, threads: int | None) -> np.ndarray:
    """(rows, cols) f32 -> the rows' bytes as qtype. Non-finite values are a ValueError, as llama.cpp's check of
    every converted row refuses them (for F16 also finite values beyond its range, which become inf)."""
    if qtype in FLOAT_TYPES:
        from ggufkit import _quants

        count, first = _quants.scan_nonfinite(np.ascontiguousarray(x, dtype=np.float32))
        if count:
            raise ValueError(f"x has {count} non-finite value(s) (NaN/Inf); first at (row {first // x.shape[1]}, "
                             f"col {first % x.shape[1]})")
    if qtype == T.F32:
        return x
    if qtype == T.F16:
        with np.errstate(over="ignore"):  # overflow is reported below, as an error
            out = x.astype(np.float16)  # round to nearest even, as ggml's fp32 -> fp16
        if np.isinf(out).any():
            raise ValueError(f"x has values beyond F16's range (largest magnitude {np.abs(x).max():g})")
        return out
    if qtype == T.BF16:
        return gguf.quants.quantize(x, T.BF16)
    x = np.ascontiguousarray(x)
    if imatrix is None and schemes.block_size(qtype) == 256 and x.shape[1] % LANE_ROW:
        return _quantize_regrouped(x, qtype, threads)
    return quant.quantize(x, qtype, imatrix=imatrix, threads=threads)


# The native K-quant kernels run eight 256-value blocks of a row side by side in SIMD lanes; a row of 1536 values
# (6 blocks) leaves them on the plain path. Without importance weights every block is quantized on its own values
# alone (llama.cpp's row functions carry nothing from block to block; with an imatrix they do: a per-row sigma),
# so the same bytes come out of the rows regrouped into rows of 2048 values, which fill the lanes.
LANE_ROW = 8 * 256


def _quantize_regrouped(x: np.ndarray, qtype: T, threads: int | None) -> np.ndarray:
    """(rows, cols) f32 -> the bytes of quant.quantize(x, qtype), computed on rows of LANE_ROW values."""
    rows, cols = x.shape
    per = LANE_ROW // np.gcd(cols, LANE_ROW)  # rows whose values fill whole regrouped rows
    head = rows - rows % per
    parts = []
    if head:
        parts.append(quant.quantize(x[:head].reshape(-1, LANE_ROW), qtype, threads=threads).reshape(head, -1))
    if head < rows:
        parts.append(quant.quantize(x[head:], qtype, threads=threads))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _imatrix_for(p: Planned, im: Imatrix | None) -> np.ndarray | None:
    """(n_mat, cols) f32 for this tensor, None when there is none; llama.cpp's size rule: n_mat * cols values,
    a mismatch is an error except for the token embedding (which then goes without)."""
    if im is None or p.qtype in FLOAT_TYPES:
        return None
    w = im.lookup(p.tensor.name)
    if w is None:
        return None
    ne = p.tensor.ne
    n_mat = ne[2] if len(ne) > 2 else 1
    if w.size != ne[0] * n_mat:
        if p.tensor.name in ("token_embd.weight", "per_layer_token_embd.weight"):
            return None
        raise InputError(f"importance matrix entry {p.tensor.name} has {w.size} values, the tensor needs "
                         f"{ne[0] * n_mat} ({n_mat} x {ne[0]})")
    return np.asarray(w, dtype=np.float32).reshape(n_mat, ne[0])


def _row_blocks(t: ModelTensor):
    """(first row, stop row, matrix index) blocks that never cross a matrix (expert) boundary."""
    per_mat = t.ne[1] if len(t.ne) > 1 else 1
    n_mat = t.n_rows // per_mat
    step = max(1, BLOCK_BYTES // (4 * t.row_len))
    for m in range(n_mat):
        for start in range(m * per_mat, (m + 1) * per_mat, step):
            yield start, min((m + 1) * per_mat, start + step), m


def run(plan: QuantizePlan, out: Path, threads: int | None = None, allow_requantize: bool = False,
        progress: bool = False) -> list[Path]:
    """Write the plan to OUT (or its parts). Returns the written paths."""
    bad = plan.requantized
    if bad and not allow_requantize:
        raise InputError(f"tensor {bad[0].tensor.name} is already quantized ({bad[0].tensor.ggml_type.name}); "
                         f"requantizing it to {bad[0].qtype.name} needs --allow-requantize", plan.model.path)
    out = Path(out)
    inputs = {Path(os.path.realpath(p.path)) for p in plan.model.parts}
    targets = part_paths(out, max(plan.parts) + 1) if plan.parts else [out]
    for target in targets:
        if Path(os.path.realpath(target)) in inputs:
            raise InputError("the output would overwrite the input", target)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=plan.total_bytes, unit="B", unit_scale=True, desc=out.name, leave=False)
    buf = np.empty(0, dtype=np.uint8)
    f32 = np.empty(BLOCK_BYTES // 4, dtype=np.float32)  # widened rows (row blocks are at most BLOCK_BYTES of f32)
    with GGUFSetWriter(out, plan.kv, [p.slot for p in plan.tensors], plan.parts, plan.split_order) as w, \
            plan.model.reader() as reader:
        w.open()
        for p in plan.tensors:
            t = p.tensor
            w.begin_tensor(t.name)
            if p.qtype == t.ggml_type:
                step = max(1, BLOCK_BYTES // max(1, t.row_bytes))
                for start in range(0, t.n_rows, step):
                    stop = min(t.n_rows, start + step)
                    buf = _grow(buf, (stop - start) * t.row_bytes)
                    w.write(reader.rows(t, start, stop, out=buf))
            else:
                weights = _imatrix_for(p, plan.imatrix)
                for start, stop, m in _row_blocks(t):
                    buf = _grow(buf, (stop - start) * t.row_bytes)
                    x = to_f32(reader.rows(t, start, stop, out=buf), t.ggml_type, t.row_len, threads, out=f32)
                    try:
                        data = encode(x, p.qtype, None if weights is None else weights[m], threads)
                    except ValueError as e:  # non-finite values
                        raise InputError(f"tensor {t.name}: {e}", plan.model.parts[t.part].path) from None
                    w.write(data)
                    del x, data
            w.end_tensor()
            if bar is not None:
                bar.update(p.slot.n_bytes)
        paths = w.commit()
    if bar is not None:
        bar.close()
    return paths


def _grow(buf: np.ndarray, n: int) -> np.ndarray:
    return buf if buf.size >= n else np.empty(n, dtype=np.uint8)


def quantize(src, out=None, scheme: str = "q4_k_m", controls: ov.Controls | None = None, imatrix=None,
             threads: int | None = None, allow_requantize: bool = False, keep_split: bool = False,
             split_max_size: int | str | None = None, split_max_tensors: int | None = None,
             dry_run: bool = False, quiet: bool = True) -> list[Path]:
    """Quantize the GGUF model SRC (a file or the first part of a split set) to OUT with `scheme` and
    llama-quantize's controls. Returns the written file(s); with dry_run the plan is printed unless quiet and
    nothing is written."""
    plan = make_plan(src, scheme, controls, imatrix, keep_split, split_max_size, split_max_tensors)
    out = Path(out) if out is not None else default_output(plan)
    if dry_run:
        if not quiet:
            print(plan.format())
        return part_paths(out, max(plan.parts) + 1) if plan.parts else [out]
    return run(plan, out, threads=threads, allow_requantize=allow_requantize,
               progress=not quiet and sys.stderr.isatty())
