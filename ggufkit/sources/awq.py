"""AWQ checkpoints (quant_method "awq": AutoAWQ's save_quantized, transformers' AwqConfig), 4-bit, both packings.

Per module M with weight (rows, cols) = (out_features, in_features), G = cols / group_size groups, and
value[r, c] = scale[r, g] * (q[r, c] - zero[r, g]), computed in f16 as AutoAWQ's dequantize does (zero points are
stored as is, 0..15; no minus one as in GPTQ v1):

version "gemm" (input-major, the AWQ nibble order):
    M.qweight   (cols, rows/8) I32   word w of input row c holds outputs 8w..8w+7, nibble i (bits 4i..4i+3)
                                     holding output 8w + ORDER[i]:
                                     word = [ o0 | o2 | o4 | o6 | o1 | o3 | o5 | o7 ]   (low nibble first)
    M.qzeros    (G, rows/8) I32      the same packing, one row per group
    M.scales    (G, rows) F16
version "gemv" (output-major, plain order):
    M.qweight   (rows, cols/8) I32   each row a dense little-endian 4-bit stream along the inputs
    M.qzeros    (rows, W) I32        each row a 4-bit stream of its G zero points, padded to W words
    M.scales    (rows, 8W) F16       the first G columns are the scales, the rest padding
Other AutoAWQ packings (gemv_fast, marlin, exllama, ipex) are refused by name. The grid goes through intgrid.py:
lossless Q4_1 (Q4_0 when every zero point is 8) where group_size is a multiple of 32.
"""
from __future__ import annotations

import numpy as np

from ggufkit.sources import intgrid
from ggufkit.sources.prequant import read_all, read_window, to_f32

ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # GEMM: nibble i of a word holds output 8w + ORDER[i]
_INVERSE = np.argsort(ORDER)  # output 8w + j sits in nibble _INVERSE[j]
VERSIONS = ("gemm", "gemv")


def version_of(qcfg: dict) -> str:
    return str(qcfg.get("version") or qcfg.get("format") or "gemm").lower()


def unsupported(qcfg: dict) -> str | None:
    if int(qcfg.get("bits", qcfg.get("w_bit", 4))) != 4:
        return f"awq with {qcfg.get('bits', qcfg.get('w_bit'))} bits is not supported (4)"
    version = version_of(qcfg)
    if version not in VERSIONS:
        return f"awq version {version!r} is not supported ({', '.join(VERSIONS)})"
    if qcfg.get("zero_point", True) is False:
        return "awq without zero points is not supported (AutoAWQ cannot pack it either)"
    return None


def _nibbles(words: np.ndarray) -> np.ndarray:
    """(n, w) I32 words -> (n, 8w) u8 nibbles in storage order (word by word, low nibble first)."""
    return intgrid.unpack_bits(np.ascontiguousarray(words).view(np.uint8), 4, 0, words.shape[1] * 8)


def _awq_order(nib: np.ndarray) -> np.ndarray:
    """(n, 8w) nibbles of GEMM words -> (n, 8w) in output order (undoes ORDER)."""
    n, m = nib.shape
    return np.ascontiguousarray(nib.reshape(n, m // 8, 8)[:, :, _INVERSE].reshape(n, m))


class AwqRef(intgrid.GridRef):
    def __init__(self, name, qweight, qzeros, scales, qcfg: dict):
        self.gemm = version_of(qcfg) == "gemm"
        rows, cols = (scales.shape[1], qweight.shape[0]) if self.gemm else (qweight.shape[0], qweight.shape[1] * 8)
        super().__init__(name, (rows, cols), [qweight, qzeros, scales], "")
        self.qweight, self.qzeros, self.scales = qweight, qzeros, scales
        group_size = int(qcfg.get("group_size", qcfg.get("q_group_size", 128)))
        self.group_size = cols if group_size <= 0 else group_size
        if qweight.dtype != "I32" or qzeros.dtype != "I32" or scales.dtype not in intgrid.SCALE_DTYPES:
            self.fail("qweight and qzeros must be I32 and scales a float tensor")
        if cols % self.group_size:
            self.fail(f"group_size {self.group_size} does not divide {cols} input columns")
        self.n_groups = cols // self.group_size
        if self.gemm:
            want = {"qweight": (cols, rows // 8), "qzeros": (self.n_groups, rows // 8), "scales": (self.n_groups, rows)}
        else:
            width = qzeros.shape[1] if len(qzeros.shape) == 2 else -1
            want = {"qweight": (rows, cols // 8), "qzeros": (rows, max(width, -(-self.n_groups // 8))),
                    "scales": (rows, max(width, 0) * 8)}
        for part, shape in want.items():
            ref = getattr(self, part)
            if tuple(ref.shape) != shape or rows % 8:
                self.fail(f"{part} has shape {list(ref.shape)}, awq {version_of(qcfg)} over [{rows}, {cols}] with "
                          f"group_size {self.group_size} needs {list(shape)}")
        self.dtype_name = intgrid.SCALE_DTYPES[scales.dtype]
        self.group = np.arange(cols) // self.group_size
        kind = "channel" if group_size <= 0 else f"g{self.group_size}"
        self.source = f"awq {'gemm' if self.gemm else 'gemv'} int4 {kind} asym"

    def _grid(self, start: int, stop: int):
        """(q (n, cols) u8, scale (n, groups) f32, zero (n, groups) f32) for output rows [start, stop)."""
        if self.gemm:
            w0, w1 = start // 8, -(-stop // 8)
            lo = start - 8 * w0
            q = _awq_order(_nibbles(read_window(self.qweight, 0, self.cols, w0, w1)))[:, lo:lo + stop - start].T
            scale = to_f32(read_window(self.scales, 0, self.n_groups, start, stop), self.scales.dtype).T
        else:
            q = _nibbles(read_window(self.qweight, start, stop, 0, self.qweight.shape[1]))
            scale = to_f32(read_window(self.scales, start, stop, 0, self.scales.shape[1]), self.scales.dtype)
            scale = scale[:, :self.n_groups]
        return np.ascontiguousarray(q), np.ascontiguousarray(scale, dtype=np.float32), self._zeros(start, stop)

    def _zeros(self, start: int, stop: int) -> np.ndarray:
        """Zero points of output rows [start, stop): (n, groups) f32."""
        if self.gemm:
            w0, w1 = start // 8, -(-stop // 8)
            lo = start - 8 * w0
            zero = _awq_order(_nibbles(read_window(self.qzeros, 0, self.n_groups, w0, w1)))[:, lo:lo + stop - start].T
        else:
            zero = _nibbles(read_window(self.qzeros, start, stop, 0, self.qzeros.shape[1]))[:, :self.n_groups]
        return np.ascontiguousarray(zero, dtype=np.float32)

    @property
    def lossless(self):
        """Q4_1 (Q4_0 if every zero point is 8) for groups of whole 32-blocks with f16-exact scales."""
        if not hasattr(self, "_lossless"):
            t = intgrid.lossless_type(4, False, self.group_size, self.cols, False, True)
            if t is not None:
                scales = to_f32(read_all(self.scales), self.scales.dtype)
                if not intgrid.f16_exact(scales):
                    t = None
                elif np.all(self._zeros(0, self.rows) == 8):
                    t = intgrid.QT.Q4_0
            self._lossless = t
        return self._lossless


def group(tensors: dict, qcfg: dict, config_path) -> dict:
    """Every module with qweight + qzeros + scales -> AwqRef named `<module>.weight`."""
    return intgrid.group_modules(tensors, lambda name, *parts: AwqRef(name, *parts, qcfg), ())
