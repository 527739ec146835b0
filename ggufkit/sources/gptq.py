"""GPTQ checkpoints (quant_method "gptq": AutoGPTQ / GPTQModel / Optimum), 2/3/4/8 bits.

Per module M with weight (rows, cols) = (out_features, in_features), everything transposed to input-major:
    M.qweight   (cols*bits/32, rows) I32: each column a dense little-endian stream down the input dimension,
                input c at bit c*bits (3-bit fields straddle words)
    M.qzeros    (groups, rows*bits/32) I32: each row of it a dense stream along the outputs, output r at bit
                r*bits; the zero point is stored minus one in the v1 format (checkpoint_format "gptq", the
                default) and as is in v2 ("gptq_v2")
    M.scales    (groups, rows) F16
    M.g_idx     (cols,) I32: the group of each input column (act-order permutes it; else c // group_size)
  value = scale * (q - zero), rounded to the scale's dtype (GPTQModel's torch dequantize computes in f16).
See intgrid.py for the arithmetic and the lossless Q4_0 / Q4_1 / Q8_0 paths.
"""
from __future__ import annotations

import numpy as np

from ggufkit.sources import intgrid
from ggufkit.sources.prequant import read_all, read_window, to_f32


def unsupported(qcfg: dict) -> str | None:
    bits = qcfg.get("bits")
    if bits not in (2, 3, 4, 8):
        return f"gptq with {bits} bits is not supported (2, 3, 4, 8)"
    fmt = str(qcfg.get("checkpoint_format", "gptq")).lower()
    if fmt not in ("gptq", "gptq_v2"):
        return f"gptq checkpoint_format {fmt!r} is not supported (gptq, gptq_v2)"
    return None


class GptqRef(intgrid.GridRef):
    def __init__(self, name, qweight, qzeros, scales, g_idx, qcfg: dict):
        super().__init__(name, (scales.shape[1], qweight.shape[0] * 32 // int(qcfg["bits"])),
                         [p for p in (qweight, qzeros, scales, g_idx) if p is not None], "")
        self.bits = int(qcfg["bits"])
        self.v1 = str(qcfg.get("checkpoint_format", "gptq")).lower() == "gptq"
        self.qweight, self.qzeros, self.scales = qweight, qzeros, scales
        rows, cols = self.shape
        n_groups = scales.shape[0]
        if qweight.dtype != "I32" or qzeros.dtype != "I32" or scales.dtype not in intgrid.SCALE_DTYPES:
            self.fail("qweight and qzeros must be I32 and scales a float tensor")
        if qzeros.shape != (n_groups, rows * self.bits // 32) or (rows * self.bits) % 32:
            self.fail(f"qzeros has shape {list(qzeros.shape)}, expected [{n_groups}, {rows * self.bits // 32}]")
        group_size = int(qcfg.get("group_size") or -1)
        self.group_size = cols if group_size <= 0 else group_size
        self.group = np.arange(cols) // self.group_size
        act_order = False
        if g_idx is not None:
            gi = read_all(g_idx).reshape(-1).astype(np.int64)
            if gi.shape != (cols,) or gi.min() < 0 or gi.max() >= n_groups:
                self.fail("g_idx does not map every input column to a group")
            act_order = not np.array_equal(gi, self.group)
            self.group = gi
        if -(-cols // self.group_size) != n_groups and not act_order:
            self.fail(f"{n_groups} scale groups do not match group_size {self.group_size} over {cols} columns")
        self.dtype_name = intgrid.SCALE_DTYPES[scales.dtype]
        self.symmetric = bool(qcfg.get("sym", True))
        self._act_order = act_order
        kind = "channel" if group_size <= 0 else f"g{self.group_size}"
        self.source = (f"gptq{'' if self.v1 else ' v2'} int{self.bits} {kind} {'sym' if self.symmetric else 'asym'}"
                       + (" act-order" if act_order else ""))

    def _grid(self, start: int, stop: int):
        """(q (n, cols) u8, scale (n, groups) f32, zero (n, groups) f32) for output rows [start, stop)."""
        words = read_window(self.qweight, 0, self.qweight.shape[0], start, stop)  # (K, n) i4
        q = intgrid.unpack_bits(np.ascontiguousarray(words.T).view(np.uint8), self.bits, 0, self.cols)
        scale = to_f32(read_window(self.scales, 0, self.scales.shape[0], start, stop), self.scales.dtype).T
        return np.ascontiguousarray(q), np.ascontiguousarray(scale), self._zeros(start, stop)

    def _zeros(self, start: int, stop: int) -> np.ndarray:
        """Zero points of output rows [start, stop): (n, groups) f32."""
        w0, w1 = start * self.bits // 32, -(-stop * self.bits // 32)
        zw = read_window(self.qzeros, 0, self.qzeros.shape[0], w0, w1)  # (groups, w1-w0) i4
        zero = intgrid.unpack_bits(np.ascontiguousarray(zw).view(np.uint8), self.bits, start * self.bits - w0 * 32,
                                   stop - start).T.astype(np.float32)  # (n, groups)
        return zero + 1 if self.v1 else zero  # v1 stores zero - 1 (4-bit: 7 for the symmetric 8); exact

    @property
    def lossless(self):
        if not hasattr(self, "_lossless"):
            t = intgrid.lossless_type(self.bits, True, self.group_size, self.cols, self._act_order, True)
            if t is not None:
                scales = to_f32(read_all(self.scales), self.scales.dtype)
                if not intgrid.f16_exact(scales):
                    t = None
                elif t == intgrid.QT.Q4_0:  # symmetric only if every zero point is 8 (some asym files say sym)
                    t = intgrid.QT.Q4_0 if np.all(self._zeros(0, self.rows) == 8) else intgrid.QT.Q4_1
                elif t == intgrid.QT.Q8_0 and not np.all(self._zeros(0, self.rows) == 128):
                    t = None
            self._lossless = t
        return self._lossless


def group(tensors: dict, qcfg: dict, config_path) -> dict:
    """Every module with qweight + qzeros + scales (+ g_idx) -> GptqRef named `<module>.weight`."""
    return intgrid.group_modules(tensors, lambda name, *parts: GptqRef(name, *parts, qcfg), ("g_idx",))
