"""Mixture of experts, shared by every MoE family (qwen3_moe, mixtral, ...): the expert weights of a layer go
into llama.cpp's 3-D expert tensors, read from either checkpoint layout, streamed one row block at a time.

llama.cpp wants, per MoE layer (numpy shapes; ggml's ne is the reverse):
    ffn_gate_inp.weight   (n_expert, n_embd)            the router, never quantized
    ffn_gate_exps.weight  (n_expert, n_ff_exp, n_embd)  expert x's gate projection is [x]
    ffn_up_exps.weight    (n_expert, n_ff_exp, n_embd)
    ffn_down_exps.weight  (n_expert, n_embd, n_ff_exp)
In the file a 3-D tensor is n_expert * rows rows of cols values, expert after expert, so it can be written row
block by row block like a matrix (OutputTensor.rows counts all of them).

Checkpoints hold the experts in one of two layouts; both become the same stacked rows:
- one tensor per expert (what most hub checkpoints and transformers 5's save_pretrained write):
      <prefix>.experts.<x>.<proj>.weight   (rows, cols)           e.g. mlp.experts.3.gate_proj, ...experts.3.w1
- fused 3-D parameters (transformers 5's in-memory form, which some exporters save):
      <prefix>.experts.gate_up_proj        (n_expert, 2 * n_ff, cols)   gate rows first, then up rows
      <prefix>.experts.down_proj           (n_expert, n_embd, n_ff)
ExpertView presents either as `<prefix>.experts.<proj>.weight` refs of shape (n_expert, rows, cols) - the
merged names gguf-py's tensor map knows - whose read_rows(start, stop) gathers the rows from the expert tensors
they live in. Nothing larger than the requested row block is ever read.

The MoE mixin goes in front of a dense parent (class Qwen3Moe(MoE, Qwen3)): it reads the expert counts, swaps
the dense FFN for router + experts in the expected tensors, writes the expert keys and gives the quantization
plan the expert count (llama-quantize's MoE rules in plan/schemes.py key on it).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import ClassVar

import gguf
import numpy as np

from ggufkit.errors import InputError

_PER_EXPERT = re.compile(r"(?P<prefix>.+\.experts)\.(?P<index>\d+)\.(?P<proj>\w+)\.weight")
_FUSED = re.compile(r"(?P<prefix>.+\.experts)\.(?P<proj>gate_up_proj|down_proj|gate_proj|up_proj)(?:\.weight)?")


@dataclasses.dataclass
class ExpertStack:
    """A (n_expert, rows, cols) tensor assembled from per-expert row ranges of source tensors. Duck-types the
    part of sources.hf.TensorRef that archs use (name, file, shape, nbytes, check_dtype, read_rows)."""
    name: str
    parts: list[tuple[object, int]]  # per expert: (source ref viewed as (n, cols) rows, its first row)
    rows_per_expert: int
    cols: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.parts), self.rows_per_expert, self.cols)

    @property
    def file(self) -> Path:
        return self.parts[0][0].file

    @property
    def dtype(self) -> str:
        return self.parts[0][0].dtype

    @property
    def nbytes(self) -> int:
        item = self.parts[0][0].nbytes // max(1, self.parts[0][0].rows * self.parts[0][0].cols)
        return len(self.parts) * self.rows_per_expert * self.cols * item

    def check_dtype(self) -> None:
        for ref in {id(r): r for r, _ in self.parts}.values():
            ref.check_dtype()

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Stacked rows [start, stop) -> (stop-start, cols) f32, read expert by expert."""
        r = self.rows_per_expert
        pieces = []
        row = start
        while row < stop:
            expert, offset = divmod(row, r)
            n = min(stop - row, r - offset)
            ref, first = self.parts[expert]
            pieces.append(ref.read_rows(first + offset, first + offset + n))  # (n, cols) f32
            row += n
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _flat(ref, rows: int, cols: int):
    """A safetensors ref of shape (a, b, cols) seen as (rows = a*b, cols) so that read_rows slices rows."""
    return dataclasses.replace(ref, shape=(rows, cols))


class _TransposedExpert:
    """Expert x of a fused (n_expert, n_in, n_out) parameter stored input-major (gpt-oss: y = x @ W[x]), seen
    as the (rows, n_in) matrix llama.cpp wants: row j is source column start + j * step (step 2 picks gate or
    up out of interleaved gate/up columns). A row block needs every source row of the expert, so the expert's
    (n_in, n_out) slice is read once and kept while consecutive blocks use it: one expert in memory, not the
    stacked tensor."""

    def __init__(self, flat, expert: int, n_in: int, n_out: int, start: int, step: int, cache: dict,
                 stop: int | None = None):
        self.flat, self.expert, self.n_in, self.n_out = flat, expert, n_in, n_out
        self.start, self.step, self.cache = start, step, cache
        self.rows, self.cols = len(range(start, n_out if stop is None else stop, step)), n_in
        self.file, self.dtype = flat.file, flat.dtype
        self.nbytes = flat.nbytes // flat.rows * n_in * self.rows // n_out

    def check_dtype(self) -> None:
        self.flat.check_dtype()

    def read_rows(self, a: int, b: int) -> np.ndarray:
        if self.cache.get("key") != (self.flat.name, self.expert):
            self.cache.clear()  # one expert at a time
            x = self.expert
            self.cache["value"] = self.flat.read_rows(x * self.n_in, (x + 1) * self.n_in)  # (n_in, n_out) f32
            self.cache["key"] = (self.flat.name, self.expert)
        m = self.cache["value"]
        return np.ascontiguousarray(m[:, self.start + a * self.step:self.start + b * self.step:self.step].T)


@dataclasses.dataclass
class _ColumnSplit:
    """A small 2-D source (n_expert, 2n) whose every other column belongs to one tensor (gpt-oss's interleaved
    gate/up biases): (n_expert, n) f32, columns start, start + 2, ..."""
    name: str
    ref: object
    start: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.ref.shape[0], self.ref.shape[1] // 2)

    @property
    def file(self) -> Path:
        return self.ref.file

    @property
    def nbytes(self) -> int:
        return self.ref.nbytes // 2

    def check_dtype(self) -> None:
        self.ref.check_dtype()

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.ref.read_rows(start, stop)[:, self.start::2])


_FUSED_BIAS = re.compile(r"(?P<prefix>.+\.experts)\.(?P<proj>gate_up_proj|down_proj)_bias")


class ExpertView:
    """A checkpoint with each layer's expert tensors replaced by ExpertStacks (either layout; see the module
    docstring). Other tensors pass through. Errors name the offending source tensor.

    layout: how fused 3-D parameters are laid out - "split" (transformers 5's (n_expert, out, in), gate rows then
    up rows) or "interleaved_transposed" (gpt-oss: (n_expert, in, out), gate and up in alternating columns, with
    `gate_up_proj_bias` / `down_proj_bias` beside them) or "split_transposed" (Llama 4: (n_expert, in, out), the
    gate columns then the up columns, no biases)."""

    def __init__(self, ckpt, n_expert: int, fused_gate_up: tuple[str, str] = ("gate_proj", "up_proj"),
                 layout: str = "split", proj_names: dict[str, str] | None = None):
        self.weights_file = ckpt.weights_file
        self.tensors: dict[str, object] = {}
        self.layout = layout
        groups: dict[tuple[str, str], dict[int, object]] = {}
        for name, ref in ckpt.tensors.items():
            if m := _PER_EXPERT.fullmatch(name):
                key = (m["prefix"], m["proj"])
                index = int(m["index"])
                if index >= n_expert:
                    raise InputError(f"tensor {name} is expert {index}, the config has {n_expert} experts",
                                     ref.file)
                groups.setdefault(key, {})[index] = ref
            # (a pre-quantized source already stacked in llama.cpp's order, sources/mxfp4.py, passes as it is)
            elif (m := _FUSED.fullmatch(name)) and len(ref.shape) == 3 and not getattr(ref, "expert_major", False):
                self._add_fused(name, ref, m["prefix"], m["proj"], n_expert, fused_gate_up)
            elif layout == "interleaved_transposed" and (m := _FUSED_BIAS.fullmatch(name)):
                self._add_fused_bias(name, ref, m["prefix"], m["proj"], n_expert, fused_gate_up)
            else:
                self.tensors[name] = ref
        for (prefix, proj), by_index in groups.items():
            refs = []
            for x in range(n_expert):
                if x not in by_index:
                    raise InputError(f"tensor {prefix}.{x}.{proj}.weight is missing (expert {x} of {n_expert})",
                                     ckpt.weights_file)
                refs.append(by_index[x])
            first = refs[0]
            for ref in refs[1:]:
                if ref.shape != first.shape:
                    raise InputError(f"tensor {ref.name} has shape {list(ref.shape)}, expert 0's is "
                                     f"{list(first.shape)}", ref.file)
            if len(first.shape) != 2:
                raise InputError(f"tensor {first.name} has shape {list(first.shape)}, an expert projection is "
                                 "a matrix", first.file)
            rows, cols = first.shape
            merged = f"{prefix}.{(proj_names or {}).get(proj, proj)}.weight"
            self.tensors[merged] = ExpertStack(merged, [(ref, 0) for ref in refs], rows, cols)

    def _add_fused(self, name: str, ref, prefix: str, proj: str, n_expert: int,
                   fused_gate_up: tuple[str, str]) -> None:
        e, rows, cols = ref.shape
        if e != n_expert:
            raise InputError(f"tensor {name} holds {e} experts, the config has {n_expert}", ref.file)
        flat = _flat(ref, e * rows, cols)  # (n_expert * rows, cols)
        if self.layout in ("interleaved_transposed", "split_transposed"):  # (n_expert, n_in = rows, n_out = cols)
            if proj == "gate_up_proj" and cols % 2:
                raise InputError(f"tensor {name} has shape {list(ref.shape)}: an odd number of gate+up "
                                 "columns", ref.file)
            cache: dict = {}
            # (first column, column step, end column) of each half: alternating columns, or gate then up halves
            if proj != "gate_up_proj":
                halves = (((0, 1, None), proj),)
            elif self.layout == "interleaved_transposed":
                halves = (((0, 2, None), fused_gate_up[0]), ((1, 2, None), fused_gate_up[1]))
            else:
                halves = (((0, 1, cols // 2), fused_gate_up[0]), ((cols // 2, 1, cols), fused_gate_up[1]))
            for (start, step, stop), proj_name in halves:
                merged = f"{prefix}.{proj_name}.weight"
                parts = [(_TransposedExpert(flat, x, rows, cols, start, step, cache, stop), 0) for x in range(e)]
                self.tensors[merged] = ExpertStack(merged, parts, parts[0][0].rows, rows)
            return
        if proj != "gate_up_proj":
            merged = f"{prefix}.{proj}.weight"
            self.tensors[merged] = ExpertStack(merged, [(flat, x * rows) for x in range(e)], rows, cols)
            return
        if rows % 2:
            raise InputError(f"tensor {name} has shape {list(ref.shape)}: an odd number of gate+up rows", ref.file)
        half = rows // 2
        for part, proj_name in enumerate(fused_gate_up):  # gate rows [0, half) of each expert, up rows after
            merged = f"{prefix}.{proj_name}.weight"
            self.tensors[merged] = ExpertStack(merged, [(flat, x * rows + part * half) for x in range(e)],
                                               half, cols)

    def _add_fused_bias(self, name: str, ref, prefix: str, proj: str, n_expert: int,
                        fused_gate_up: tuple[str, str]) -> None:
        if len(ref.shape) != 2 or ref.shape[0] != n_expert:
            raise InputError(f"tensor {name} has shape {list(ref.shape)}, expected ({n_expert} experts, n)",
                             ref.file)
        if proj == "down_proj":
            self.tensors[f"{prefix}.down_proj.bias"] = ref
            return
        for start, proj_name in enumerate(fused_gate_up):
            merged = f"{prefix}.{proj_name}.bias"
            self.tensors[merged] = _ColumnSplit(merged, ref, start)


class MoE:
    """Mixin for MoE families: put it before the dense parent class. Every layer is an MoE layer unless
    `dense_layers` says otherwise (families whose llama.cpp graph allows a dense layer mix)."""
    expert_count_keys: ClassVar[tuple[str, ...]] = ("num_local_experts", "num_experts", "n_routed_experts")
    expert_used_keys: ClassVar[tuple[str, ...]] = ("num_experts_per_tok", "num_experts_per_token")
    expert_ff_key: ClassVar[str | None] = "moe_intermediate_size"  # None: the experts use intermediate_size
    writes_expert_ff_length: ClassVar[bool] = True  # expert_feed_forward_length (some llama.cpp archs ignore it)
    fused_gate_up: ClassVar[tuple[str, str]] = ("gate_proj", "up_proj")  # merged names of a gate_up_proj's halves
    fused_layout: ClassVar[str] = "split"  # see ExpertView
    per_expert_names: ClassVar[dict[str, str]] = {}  # per-expert projection name -> merged name gguf-py maps

    def __init__(self, config: dict, config_path):
        self.config, self.config_path = config, Path(config_path)  # for hparam() before the base __init__
        key = next((k for k in self.expert_count_keys if config.get(k) is not None), self.expert_count_keys[0])
        self.n_expert = self.hparam(key, int)
        used = next((k for k in self.expert_used_keys if config.get(k) is not None), self.expert_used_keys[0])
        self.n_expert_used = self.hparam(used, int)
        self.n_ff_exp = self.hparam(self.expert_ff_key or "intermediate_size", int)
        if self.n_expert_used > self.n_expert:
            self.fail(f"{used} = {self.n_expert_used} is more than the {self.n_expert} experts")
        super().__init__(config, config_path)

    def expert_features(self) -> list[str]:
        return []  # expert counts are this mixin's to read

    # ---- GGUF metadata

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_expert_count(self.n_expert)
        w.add_expert_used_count(self.n_expert_used)
        if self.writes_expert_ff_length:
            w.add_expert_feed_forward_length(self.n_ff_exp)

    def model_info(self):
        return dataclasses.replace(super().model_info(), n_expert=self.n_expert)

    # ---- tensors

    def moe_layer(self, i: int) -> bool:
        return True

    def expert_shapes(self, block: str) -> dict[str, tuple[int, ...]]:
        """A MoE layer's FFN tensors (router and experts; a family with shared experts or biases adds them)."""
        e, f, n = self.n_embd, self.n_ff_exp, self.n_expert
        return {f"{block}.ffn_gate_inp.weight": (n, e),
                f"{block}.ffn_gate_exps.weight": (n, f, e),
                f"{block}.ffn_up_exps.weight": (n, f, e),
                f"{block}.ffn_down_exps.weight": (n, e, f)}

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {}
        dense_ffn = (".ffn_gate.weight", ".ffn_up.weight", ".ffn_down.weight")
        for name, shape in super().expected_shapes().items():
            block = name.rsplit(".", 2)[0]
            if name.endswith(dense_ffn) and self.moe_layer(int(block.split(".")[1])):
                if name.endswith(".ffn_gate.weight"):  # the experts take the dense FFN's place
                    shapes |= self.expert_shapes(block)
                continue
            shapes[name] = shape
        return shapes

    def tensors(self, ckpt) -> list:
        return super().tensors(ExpertView(ckpt, self.n_expert, self.fused_gate_up, self.fused_layout,
                                          self.per_expert_names))

