"""FP8 checkpoints (quant_method "fp8": DeepSeek-V3 / Qwen3-FP8 / Mistral style, transformers'
FineGrainedFP8Config): e4m3 weights with per-tensor, per-channel or block scales.

Per weight W of shape (rows, cols):
    W                   (rows, cols) F8_E4M3, one byte per value:  [ sign:1 | exponent:4 (bias 7) | mantissa:3 ]
    W_scale_inv         the multiplier (despite the name): a scalar or [1] per tensor, (rows, 1) per channel,
                        or (ceil(rows/bm), ceil(cols/bn)) per bm x bn block (weight_block_size, default from the
                        scale grid), F32 / BF16 / F8_E8M0 (ue8m0: 2^(byte-127))
  value = f32(W) * f32(scale[row // bm, col // bn]), one f32 product, as transformers' Fp8Dequantize; no
  further rounding (every such product is an f32, so the F32 output holds the checkpoint exactly).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ggufkit.sources.prequant import QuantRef, read_all, read_elements, read_window, take, to_f32

SCALE_SUFFIXES = ("_scale_inv", "_scale")


def unsupported(qcfg: dict) -> str | None:
    fmt = str(qcfg.get("fmt", "e4m3")).lower()
    if fmt != "e4m3":
        return f"fp8 format {fmt!r} is not supported (e4m3)"
    block = qcfg.get("weight_block_size")
    if block is not None and not (isinstance(block, list) and len(block) == 2
                                  and all(isinstance(b, int) and b > 0 for b in block)):
        return f"fp8 weight_block_size {block!r} is not two positive integers"
    return None


def scale_values(ref, raw: np.ndarray) -> np.ndarray:
    """Raw scale elements -> f32 (F8_E8M0 / U8 are power-of-two exponents)."""
    if ref.dtype in ("F8_E8M0", "U8"):
        return np.ldexp(np.float32(1), raw.astype(np.int32) - 127).astype(np.float32)
    return to_f32(raw, ref.dtype)


class Fp8Ref(QuantRef):
    def __init__(self, name, weight, scale, block: list[int] | None, method: str = "fp8"):
        super().__init__(name, weight.shape, [weight, scale], "")
        self.weight, self.scale = weight, scale
        if weight.dtype != "F8_E4M3" or len(weight.shape) != 2:
            self.fail(f"an fp8 weight must be a 2-D F8_E4M3 tensor, not {weight.dtype} {list(weight.shape)}")
        rows, cols = weight.shape
        n = math.prod(scale.shape)
        grid = tuple(scale.shape) if len(scale.shape) == 2 else (1, 1) if n == 1 else (n, 1)
        if n == 1:
            self.bm, self.bn, kind = rows, cols, "per-tensor"
        elif grid == (rows, 1):
            self.bm, self.bn, kind = 1, cols, "per-channel"
        else:
            self.bm, self.bn = block or (rows // grid[0], cols // grid[1])
            if grid != (-(-rows // self.bm), -(-cols // self.bn)):
                self.fail(f"scale grid {list(scale.shape)} does not match blocks of {self.bm}x{self.bn} over "
                          f"[{rows}, {cols}]")
            kind = f"block {self.bm}x{self.bn}"
        self.grid = grid
        self.source = f"{method} e4m3 {kind}"

    def decode(self, start: int, stop: int) -> np.ndarray:
        cols = self.cols
        w = to_f32(read_elements(self.weight, start * cols, stop * cols), "F8_E4M3").reshape(stop - start, cols)
        if self.grid == (1, 1):
            return w * scale_values(self.scale, read_all(self.scale).reshape(-1))[0]
        g0, g1 = start // self.bm, -(-stop // self.bm)
        grid = dataclasses.replace(self.scale, shape=self.grid)  # a (rows,) per-channel scale as (rows, 1)
        s = scale_values(self.scale, read_window(grid, g0, g1, 0, self.grid[1]))  # (g1-g0, grid cols) f32
        s = s[np.arange(start, stop) // self.bm - g0]  # (stop-start, grid cols)
        return w * np.repeat(s, self.bn, axis=1)[:, :cols]  # one f32 product per value


def group(tensors: dict, qcfg: dict, config_path) -> dict:
    """Every F8_E4M3 weight with a sibling `<name>_scale_inv` (or `_scale`) -> Fp8Ref; drops activation scales."""
    block = qcfg.get("weight_block_size")
    out = {}
    for name in [k for k, r in tensors.items() if r.dtype == "F8_E4M3"]:
        scale_name = next((name + s for s in SCALE_SUFFIXES if name + s in tensors), None)
        if scale_name is None:
            continue  # left as is: the architecture reports an fp8 tensor it cannot read, by name
        scale = take(tensors, scale_name, name)
        out[name] = Fp8Ref(name, take(tensors, name, name), scale, block)
        module = name.rsplit(".", 1)[0]
        for extra in ("input_scale", "activation_scale", "input_scale_inv"):  # activation quantization only
            tensors.pop(f"{module}.{extra}", None)
    return out
