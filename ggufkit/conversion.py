"""Hugging Face safetensors -> GGUF in one streaming pass.

    from ggufkit.conversion import convert
    convert("./SmolLM2-135M-Instruct", "smollm2-q4_k_m.gguf", scheme="q4_k_m")

Per tensor: read a row block from disk -> f32 -> (Q/K reorder) -> check finite -> quantize natively (threads, GIL
released) -> append to the output -> free. Memory stays at a few row blocks whatever the model size; there is
no intermediate file. The type of every tensor comes from ggufkit.plan.schemes.plan (llama-quantize's rules).
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from ggufkit import _quants, quant
from ggufkit.archs import Architecture, OutputTensor, for_config
from ggufkit.errors import InputError, OutputError
from ggufkit.output.writer import StreamingGGUF, tensor_nbytes
from ggufkit.sources.hf import Checkpoint, open_checkpoint

BLOCK_BYTES = 16 << 20  # f32 bytes per row block: bounds memory per tensor, large enough to keep threads busy
QT = gguf.GGMLQuantizationType


@dataclass
class PlannedTensor:
    tensor: OutputTensor
    qtype: QT
    nbytes: int


@dataclass
class Plan:
    """What a conversion will write: the checkpoint, its architecture, the scheme and every tensor's type."""
    checkpoint: Checkpoint
    arch: Architecture
    scheme: object  # ggufkit.plan.schemes.Scheme
    tensors: list[PlannedTensor]
    scheme_rows: list  # ggufkit.plan.schemes.PlanRow per tensor (with the fallbacks taken), for printing
    controls: object = None  # ggufkit.plan.overrides.Controls (llama-quantize's options) or None
    imatrix_source: object = None  # what make_plan got as imatrix (a path or an Imatrix: its quantize.* keys)
    split: dict = field(default_factory=dict)  # {"max_size": bytes} or {"max_tensors": n}: a split set
    metadata: dict = field(default_factory=dict)  # extra string key-values (ggufkit's opt-in options); none by default
    refine: object = None  # opt-in re-encoder (x, qtype, imatrix, data, name=) -> data, e.g. quant.rounding.refine
    # write the imatrix's quantize.imatrix.* keys (False: the size guard's reverted file where they do not fit, as
    # llama_model_quantize's own output has none)
    imatrix_keys: bool = True

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def n_elements(self) -> int:
        return sum(int(np.prod(t.tensor.shape)) for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.total_bytes / max(1, self.n_elements)

    def rows(self) -> list[dict]:
        return [{"name": t.tensor.name, "shape": list(t.tensor.shape), "type": t.qtype.name, "bytes": t.nbytes}
                | ({"source": t.tensor.source_quant,
                    "lossless": t.tensor.lossless is not None and t.qtype == t.tensor.lossless}
                   if t.tensor.source_quant else {})
                for t in self.tensors]

    def summary(self) -> dict:
        return {"model": self.checkpoint.name, "architecture": self.arch.arch_name, "scheme": self.scheme.name,
                "tensors": len(self.tensors), "bytes": self.total_bytes, "parameters": self.n_elements,
                "bits_per_weight": round(self.bits_per_weight, 4)}


def make_plan(src, scheme: str = "q4_k_m", imatrix=None, controls=None, split: dict | None = None) -> Plan:
    """Open and validate SRC (config, every safetensors header, every tensor's presence and shape) and decide
    each tensor's type. Reads no tensor data. controls: ggufkit.plan.overrides.Controls (--tensor-type, --pure,
    ...); split: {"max_size": bytes} or {"max_tensors": n} to write a split set."""
    from ggufkit.plan import schemes

    keep_source = isinstance(scheme, str) and scheme.strip().lower() == SOURCE_SCHEME
    sch = schemes.get_scheme(SOURCE_BASE if keep_source else scheme) if isinstance(scheme, str) else scheme
    ckpt = open_checkpoint(src)
    arch = for_config(ckpt.config, ckpt.config_path)
    by_name = {t.name: t for t in arch.tensors(ckpt)}
    # llama-quantize writes tensors in this order; using it too makes our file byte-identical to its output
    tensors = [by_name[n] for n in schemes.quantize_order(by_name)]
    if controls is None:
        rows = schemes.plan_rows(sch, [(t.name, t.shape) for t in tensors], arch.model_info(),
                                 has_imatrix=imatrix is not None)
    else:
        from ggufkit.plan.overrides import plan_tensors

        try:
            rows = plan_tensors(sch, [(t.name, t.shape, QT.F32) for t in tensors],
                                controls.apply_to_info(arch.model_info()),
                                has_imatrix=imatrix is not None, controls=controls)
        except ValueError as e:
            raise InputError(str(e), ckpt.dir) from None
    if keep_source:
        sch, rows = _source_scheme(sch, tensors, rows)
        tensors, rows = _source_companions(tensors, rows)
    planned = [PlannedTensor(t, QT(r.type), tensor_nbytes(t.shape, QT(r.type))) for t, r in zip(tensors, rows)]
    return Plan(ckpt, arch, sch, planned, rows, controls, imatrix, dict(split or {}))


# ---- --scheme source: keep a pre-quantized checkpoint's grid where a GGUF type holds it exactly

SOURCE_SCHEME = "source"
SOURCE_BASE = "q8_0"  # tensors without a lossless type (floats, NF4, int8, ...) are planned as this scheme


def _source_scheme(base, tensors: list[OutputTensor], rows: list) -> tuple:
    """The rows of SOURCE_BASE with every tensor that has a lossless type switched to it (no second rounding)."""
    import dataclasses

    from ggufkit.plan.schemes import Scheme

    rows = [dataclasses.replace(r, type=QT(t.lossless), nbytes=tensor_nbytes(t.shape, QT(t.lossless)),
                                fallback_from=None) if t.lossless is not None else r
            for t, r in zip(tensors, rows)]
    kept = [QT(t.lossless) for t in tensors if t.lossless is not None]
    file_type = base.file_type
    if kept:
        main = max(set(kept), key=kept.count)
        file_type = {QT.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0, QT.Q4_1: gguf.LlamaFileType.MOSTLY_Q4_1,
                     QT.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0, QT.NVFP4: gguf.LlamaFileType.MOSTLY_NVFP4,
                     }.get(main, base.file_type)
    return Scheme("SOURCE", file_type, base.base_type, base.rules), rows


def _source_companions(tensors: list[OutputTensor], rows: list) -> tuple[list, list]:
    """After each tensor kept lossless with a per-tensor factor (NVFP4's global scale), its `.scale` companion:
    (1,) F32, which llama.cpp multiplies that tensor's matmul output by."""
    from ggufkit.plan.schemes import PlanRow

    out_t, out_r = [], []
    for t, r in zip(tensors, rows):
        out_t.append(t)
        out_r.append(r)
        if t.lossless_scale is not None and QT(r.type) == t.lossless:
            name = t.name.removesuffix(".weight") + ".scale"
            value = np.array([[t.lossless_scale]], dtype=np.float32)  # (1, 1) f32: one row of one column
            out_t.append(OutputTensor(name, (1,), lambda a, b, v=value: v, t.file, t.source_name))
            out_r.append(PlanRow(name, (1,), QT.F32, 4))
    return out_t, out_r


def default_output(plan: Plan) -> Path:
    return Path.cwd() / f"{plan.checkpoint.name}-{plan.scheme.name}.gguf"


def check_destination(out: Path, force: bool = False) -> None:
    """OUT may be replaced when it is absent or a GGUF file (as llama.cpp's tools do); anything else, only with
    force: a typo in -o must not eat a text file."""
    out = Path(out)
    if out.is_dir():
        raise OutputError("is a directory", out)
    if out.exists() and not force:
        with open(out, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise OutputError("exists and is not a GGUF file (--force replaces it)", out)


# ---- imatrix


def load_imatrix(imatrix):
    """None, an object with column_weights(name) (ggufkit.quant.imatrix.Imatrix), a mapping {GGUF tensor name:
    (cols,) f32}, or a path to an imatrix file in either of llama.cpp's formats -> a lookup name -> weights."""
    if imatrix is None:
        return None
    if hasattr(imatrix, "column_weights"):
        return imatrix.column_weights
    if isinstance(imatrix, Mapping):
        return imatrix.get
    from ggufkit.quant import imatrix as imatrix_files

    return imatrix_files.load(Path(imatrix)).column_weights


# ---- encoding


def _check_finite(x: np.ndarray, t: OutputTensor, row0: int) -> None:
    count, first = _quants.scan_nonfinite(np.ascontiguousarray(x, dtype=np.float32))
    if count:
        row, col = divmod(first, x.shape[1])
        raise InputError(f"tensor {t.source_name or t.name} has {count} NaN/Inf value(s) in rows {row0}.."
                         f"{row0 + x.shape[0] - 1} (first at row {row0 + row}, col {col})", t.file)


def encode(x: np.ndarray, qtype: QT, imatrix: np.ndarray | None, threads: int | None) -> np.ndarray:
    """(rows, cols) f32 -> the tensor type's bytes for those rows."""
    if qtype == QT.F32:
        return x
    if qtype == QT.F16:
        return x.astype(np.float16)  # round to nearest even, as ggml's fp32 -> fp16
    if qtype == QT.BF16:
        # gguf-py's bf16: round to nearest even, NaN kept quiet - the same as ggml_fp32_to_bf16
        return gguf.quants.quantize(x, QT.BF16)
    return quant.quantize(x, qtype, imatrix=imatrix, threads=threads)


def encode_block(x: np.ndarray, start: int, t: OutputTensor, qtype: QT, imatrix: np.ndarray | None,
                 threads: int | None) -> np.ndarray:
    """Rows [start, start + len(x)) of t -> bytes. With a per-expert importance matrix ((n_expert * cols,) for a
    (n_expert, rows, cols) tensor) each expert's rows are quantized with that expert's slice, as llama-quantize."""
    if imatrix is None or imatrix.shape[0] == t.cols:
        return encode(x, qtype, imatrix, threads)
    per_expert = t.shape[-2]
    pieces, a = [], 0
    while a < len(x):
        expert = (start + a) // per_expert
        b = min(len(x), (expert + 1) * per_expert - start)
        pieces.append(encode(x[a:b], qtype, imatrix[expert * t.cols:(expert + 1) * t.cols], threads))
        a = b
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _row_blocks(t: OutputTensor):
    rows_per_block = max(1, BLOCK_BYTES // (4 * t.cols))
    rows_per_block = max(t.row_align, rows_per_block // t.row_align * t.row_align)
    for start in range(0, t.rows, rows_per_block):
        yield start, min(t.rows, start + rows_per_block)


# ---- the pass


def write_metadata(g: StreamingGGUF, plan: Plan) -> None:
    from ggufkit.tokenizer import add_tokenizer

    w = g.kv
    w.add_name(plan.checkpoint.name)
    plan.arch.write_hparams(w)
    add_tokenizer(w, plan.checkpoint.dir, plan.checkpoint.config, plan.arch.spm_bpe_tokenizer)
    for key, value in plan.metadata.items():  # ggufkit.plan.budget / quant.rounding record what they did
        w.add_string(key, value)
    # last, in this order: where llama-quantize puts them (it re-sets both), so our file equals its output
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_file_type(int(plan.scheme.file_type))
    _write_overrides(w, plan)


def _write_overrides(w, plan: Plan) -> None:
    """--override-kv and the quantize.imatrix.* keys, after file_type and each moved last when set, as
    llama-quantize sets them (ggufkit.quantization.output_kv does the same for GGUF input)."""
    from ggufkit.plan.overrides import Controls
    from ggufkit.quantization import load_imatrix, override_value

    controls = plan.controls or Controls()
    entries = [(o.key, *override_value(o)) for o in controls.kv_overrides]
    source = plan.imatrix_source
    if source is not None and not isinstance(source, Mapping) and plan.imatrix_keys:
        im = load_imatrix(source, controls)
        entries += im.metadata if im else []
    for key, vtype, value in entries:
        w.kv_data[0].pop(key, None)
        w.add_key_value(key, value, vtype)


def convert(src, out=None, scheme: str = "q4_k_m", threads: int | None = None, quiet: bool = False,
            dry_run: bool = False, imatrix=None, controls=None, split: dict | None = None,
            force: bool = False) -> Path:
    """Convert the HF checkpoint SRC (directory or hub id) to a GGUF file at OUT (default
    `<model-name>-<SCHEME>.gguf` in the current directory). Returns OUT. dry_run: plan only, write nothing
    (the plan is printed unless quiet). controls / split: see make_plan (a split set is written as
    <OUT without .gguf>-00001-of-0000N.gguf, ...). An existing OUT is replaced if it is a GGUF file, else only
    with force."""
    plan = make_plan(src, scheme, imatrix, controls, split)
    out = Path(out) if out is not None else default_output(plan)
    if dry_run:
        if not quiet:
            print_plan(plan)
        return out
    run(plan, out, threads=threads, imatrix=load_imatrix(imatrix),
        progress=not quiet and sys.stderr.isatty(), force=force)
    return out


def _check_imatrix_coverage(plan: Plan, imatrix) -> None:
    """llama-quantize refuses a type it quantizes only with importance weights (IQ1/IQ2/IQ3_XXS, Q2_K in Q2_K_S)
    for a tensor without them; so does ggufkit, before anything is written."""
    from ggufkit.plan.schemes import requires_imatrix

    for p in plan.tensors:
        if requires_imatrix(plan.scheme, p.tensor.name, p.qtype) and (imatrix is None or imatrix(p.tensor.name) is None):
            what = "has no entry for it" if imatrix is not None else "was given"
            raise InputError(f"{p.tensor.name}: scheme {plan.scheme.name} stores it as {p.qtype.name}, which needs "
                             f"an importance matrix, and none {what}: pass --imatrix FILE or --calibration TEXT")


def run(plan: Plan, out: Path, threads: int | None = None, imatrix=None,
        progress: bool = False, force: bool = False) -> Path:
    """Write the planned tensors to OUT in one pass. imatrix: name -> (cols,) f32 or None (see load_imatrix).
    Returns OUT, or for a split set the path of its first part. force: replace OUT even if it is not a GGUF
    file (check_destination)."""
    check_destination(out, force)
    if imatrix is not None and plan.controls is not None and (plan.controls.include_weights
                                                              or plan.controls.exclude_weights):
        lookup, keep = imatrix, plan.controls.filter_imatrix
        imatrix = lambda name: lookup(name) if keep([name]) else None
    _check_imatrix_coverage(plan, imatrix)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=plan.total_bytes, unit="B", unit_scale=True, desc=out.name, leave=False)
    if plan.split:
        from ggufkit.output.split import SplitStreamingGGUF

        writer = SplitStreamingGGUF(out, plan.arch.arch_name, plan.split.get("max_size"),
                                    plan.split.get("max_tensors"))
    else:
        writer = StreamingGGUF(out, plan.arch.arch_name)
    with writer as g:
        g.open()
        write_metadata(g, plan)
        for p in plan.tensors:
            g.add_tensor_info(p.tensor.name, p.tensor.shape, p.qtype)
        g.start()
        for i, p in enumerate(plan.tensors):
            t = p.tensor
            im = imatrix(t.name) if imatrix is not None and p.qtype not in (QT.F32, QT.F16, QT.BF16) else None
            n_mat = t.shape[0] if len(t.shape) == 3 else 1  # a 3-D expert tensor: one imatrix slice per expert
            if im is not None and im.shape != (n_mat * t.cols,):
                raise InputError(f"importance matrix entry {t.name} has {im.shape[0]} values, the tensor "
                                 f"has {t.cols} columns" + (f" x {n_mat} experts" if n_mat > 1 else ""))
            g.begin_tensor(t.name)
            for start, stop in _row_blocks(t):
                if t.read_blocks is not None and p.qtype == t.lossless:  # the source's grid, copied
                    data = t.read_blocks(start, stop)  # (stop-start, row_bytes) u8
                    g.write(data)
                    if bar is not None:
                        bar.update(data.nbytes)
                    continue
                x = t.read_rows(start, stop)  # (stop-start, cols) f32
                if p.qtype in (QT.F32, QT.F16, QT.BF16):
                    _check_finite(x, t, start)
                    data = encode_block(x, start, t, p.qtype, im, threads)
                else:  # the native quantizers check every row as they go (a ValueError on NaN/Inf)
                    try:
                        data = encode_block(x, start, t, p.qtype, im, threads)
                    except ValueError:
                        _check_finite(x, t, start)  # names the tensor and the rows
                        raise
                if plan.refine is not None:
                    data = plan.refine(x, p.qtype, im, data, name=t.name)
                g.write(data)
                del x
                if bar is not None:
                    bar.update(data.nbytes)
                del data
            g.end_tensor()
            if bar is not None:
                bar.set_postfix_str(f"{i + 1}/{len(plan.tensors)} tensors")
        written = g.commit()
    if bar is not None:
        bar.close()
    return written[0] if plan.split else out  # a split set: its first part


def print_plan(plan: Plan, file=None) -> None:
    from ggufkit.plan.schemes import format_plan

    text = format_plan(plan.scheme_rows, plan.scheme)
    sources = {t.tensor.name: t for t in plan.tensors if t.tensor.source_quant}
    if sources:  # a pre-quantized checkpoint: say per tensor what it was, and whether its grid is kept
        lines = text.split("\n")
        width = max(len(line) for line in lines[:-1])
        for i, line in enumerate(lines[1:-1], 1):
            p = sources.get(line.split(" ", 1)[0])
            if p is not None:
                kept = "  lossless" if p.tensor.lossless is not None and p.qtype == p.tensor.lossless else ""
                lines[i] = f"{line:<{width}}  from {p.tensor.source_quant}{kept}"
        text = "\n".join(lines)
    print(text, file=file or sys.stdout)
