"""MXFP4 checkpoints (quant_method "mxfp4": the gpt-oss releases): the experts in OCP microscaling FP4.

Per MoE layer, prefix P = `model.layers.N.mlp.experts`, E experts, S source rows (outputs) per expert, G = cols/32:
    P.gate_up_proj_blocks  (E, 2 * n_ff, n_embd/32, 16) U8    output-major: row 2i is gate row i, row 2i+1 up row i
    P.gate_up_proj_scales  (E, 2 * n_ff, n_embd/32) U8
    P.down_proj_blocks     (E, n_embd, n_ff/32, 16) U8
    P.down_proj_scales     (E, n_embd, n_ff/32) U8
  a block of 32 values: 16 bytes, byte k = [ e2m1(2k+1) : 4 | e2m1(2k) : 4 ] (element 2k in the low nibble), and
  one scale byte s (e8m0): value = FP4[code] * 2^(s - 127), FP4 = 0, .5, 1, 1.5, 2, 3, 4, 6 and their negatives
  (transformers' convert_moe_packed_tensors; such a product is exact in f32 and in bf16).
Biases and every other tensor are plain floats, read as usual.

`group` turns each into ExpertStack-like refs in llama.cpp's order, (E, rows, cols) with gate = rows 0::2 and up =
rows 1::2 of gate_up, named `P.gate_proj.weight` / `P.up_proj.weight` / `P.down_proj.weight` (expert_major: the
MoE view passes them as they are). GGUF's MXFP4 holds the same grid bit for bit (the lossless path):
    block = [ e: u8 | qs: 16 B ],  qs[j] = code(j) | code(j + 16) << 4,  value = 2 * FP4[code] * 2^(e - 128)
so only the nibbles move.
"""
from __future__ import annotations

import math

import numpy as np
from gguf import GGMLQuantizationType as QT

from ggufkit.errors import InputError
from ggufkit.sources.prequant import QuantRef, read_elements, take

FP4 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
               dtype=np.float32)  # (16,) e2m1 code -> value


def unsupported(qcfg: dict) -> str | None:
    return None


class Mxfp4Experts(QuantRef):
    """Rows start, start + step, ... of every expert of one `*_blocks` / `*_scales` pair, stacked."""
    expert_major = True
    lossless = QT.MXFP4

    def __init__(self, name: str, blocks, scales, start: int, step: int):
        e, s, g, b = blocks.shape
        if blocks.dtype != "U8" or b != 16 or scales.dtype != "U8" or tuple(scales.shape) != (e, s, g):
            bad = blocks if blocks.dtype != "U8" or b != 16 else scales
            raise InputError(f"tensor {bad.name} is {bad.dtype} {list(bad.shape)}: mxfp4 needs U8 blocks (experts, "
                             "rows, cols/32, 16) and U8 scales (experts, rows, cols/32)", bad.file)
        super().__init__(name, (e, len(range(start, s, step)), g * 32), [blocks, scales], "mxfp4 e2m1 g32 e8m0")
        self.blocks, self.scales = blocks, scales
        self.src_rows, self.n_blocks, self.start, self.step = s, g, start, step
        self.nbytes = (blocks.nbytes + scales.nbytes) * self.shape[1] // s

    @property
    def rows(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def cols(self) -> int:
        return self.shape[2]

    def _raw(self, a: int, b: int):
        """Stacked rows [a, b) -> (codes (n, G, 32) u8 in element order, scales (n, G) u8)."""
        per = self.shape[1]
        codes, exps = [], []
        row = a
        while row < b:
            x, j0 = divmod(row, per)
            j1 = min(per, j0 + b - row)
            r0 = x * self.src_rows + self.start + j0 * self.step  # flat source rows [r0, r1), every step-th
            r1 = x * self.src_rows + self.start + (j1 - 1) * self.step + 1
            g = self.n_blocks
            packed = read_elements(self.blocks, r0 * g * 16, r1 * g * 16).reshape(r1 - r0, g, 16)[::self.step]
            exps.append(read_elements(self.scales, r0 * g, r1 * g).reshape(r1 - r0, g)[::self.step])
            c = np.empty(packed.shape[:2] + (32,), dtype=np.uint8)
            c[:, :, 0::2], c[:, :, 1::2] = packed & 0xF, packed >> 4
            codes.append(c)
            row += j1 - j0
        return np.concatenate(codes), np.concatenate(exps)

    def decode(self, start: int, stop: int) -> np.ndarray:
        codes, exps = self._raw(start, stop)
        values = np.ldexp(FP4[codes], exps.astype(np.int32)[:, :, None] - 127)  # (n, G, 32) f32, exact
        return values.reshape(stop - start, self.cols)

    def read_blocks(self, start: int, stop: int, qtype) -> np.ndarray:
        codes, exps = self._raw(start, stop)
        n, g = exps.shape
        out = np.empty((n, g, 17), dtype=np.uint8)
        out[:, :, 0] = exps
        out[:, :, 1:] = codes[:, :, :16] | (codes[:, :, 16:] << 4)
        return out.reshape(n, g * 17)


def group(tensors: dict, qcfg: dict, config_path) -> dict:
    """Every `<P>.<proj>_blocks` + `<P>.<proj>_scales` -> Mxfp4Experts, gate_up split into its gate and up rows."""
    out = {}
    for key in [k for k in tensors if k.endswith("_blocks")]:
        base = key[:-len("_blocks")]
        prefix, proj = base.rsplit(".", 1)
        blocks = take(tensors, key, base)
        scales = take(tensors, f"{base}_scales", base)
        if len(blocks.shape) != 4 or math.prod(blocks.shape) == 0:
            raise InputError(f"tensor {key} has shape {list(blocks.shape)}, mxfp4 expert blocks are (experts, "
                             "rows, cols/32, 16)", blocks.file)
        if proj == "gate_up_proj":
            for start, half in enumerate(("gate_proj", "up_proj")):
                name = f"{prefix}.{half}.weight"
                out[name] = Mxfp4Experts(name, blocks, scales, start, 2)
        else:
            name = f"{prefix}.{proj}.weight"
            out[name] = Mxfp4Experts(name, blocks, scales, 0, 1)
    return out
