"""compressed-tensors checkpoints (llm-compressor's output, quant_method "compressed-tensors"): the
pack-quantized integer format, the float-quantized FP8 format and nvfp4-pack-quantized.

pack-quantized, per weight module M with weight (rows, cols):
    M.weight_packed       (rows, ceil(cols*bits/32)) I32: each row a dense little-endian stream of `bits`-wide
                          fields, column c at bit c*bits (fields may straddle words), holding q + 2^(bits-1)
    M.weight_scale        (rows, groups) F16/BF16/F32 (groups = cols / group_size; 1 for a channel scale)
    M.weight_zero_point   asymmetric only: (ceil(rows*bits/32), groups) I32, packed the same way down each
                          column (row r at bit r*bits), holding zero + 2^(bits-1)
    M.weight_shape        (2,) the unpacked shape;   M.weight_g_idx (cols,) the group of each column, optional
  value = (q - zero) * scale in the scale's dtype (compressed-tensors' dequantize) - see intgrid.py.

float-quantized: M.weight F8_E4M3 + M.weight_scale (per tensor, channel or block): as fp8.py.

nvfp4-pack-quantized (fp4 e2m1 values, e4m3 scales per group of 16, one f32 global scale):
    M.weight_packed        (rows, cols/2) U8: byte k = [ code(2k+1) : 4 | code(2k) : 4 ], code = [ sign | e2m1 : 3 ]
                           (0, .5, 1, 1.5, 2, 3, 4, 6)
    M.weight_scale         (rows, cols/16) F8_E4M3
    M.weight_global_scale  (1,) F32 (a divisor)
  value = bf16( fp4 * f32(scale / global) ), in f32, rounded once to bf16: NVFP4PackedCompressor.decompress
  (its unpacked dtype is bf16 whatever the model's; a 0-d global keeps the scale in bf16 too).
  Lossless (--scheme source): GGUF's NVFP4 type holds the fp4 codes and the e4m3 scales (as ue4m3) bit for bit,
  and llama.cpp (0.3.36, llama_model::load_tensors' generic pass) reads an optional per-tensor companion
  `<name>.scale` (1,) F32 that build_lora_mm multiplies the matmul's output by: 1 / global, in f32. The values
  are then e2m1 * e4m3 * f32(1 / global) - decompress's bf16 rounding of the same product is not repeated.
  Other schemes dequantize once (decompress's values).
"""
from __future__ import annotations

import math
import re

import numpy as np

from ggufkit.errors import InputError
from ggufkit.sources import intgrid
from ggufkit.sources.fp8 import Fp8Ref
from ggufkit.sources.prequant import QuantRef, read_all, read_window, take, to_f32

FORMATS = ("pack-quantized", "float-quantized", "nvfp4-pack-quantized")
_SCALE_DTYPES = intgrid.SCALE_DTYPES


def _groups(qcfg: dict) -> list[dict]:
    groups = qcfg.get("config_groups") or {}
    return [g for g in groups.values() if isinstance(g, dict)] if isinstance(groups, dict) else []


def unsupported(qcfg: dict) -> str | None:
    fmt = qcfg.get("format")
    formats = {fmt} | {g.get("format") for g in _groups(qcfg) if g.get("format")}
    formats.discard(None)
    bad = sorted(f for f in formats if f not in FORMATS)
    if bad:
        return f"compressed-tensors format {bad[0]!r} is not supported ({', '.join(FORMATS)})"
    for g in _groups(qcfg):
        w = g.get("weights") or {}
        if w.get("type", "int") == "int" and not 2 <= int(w.get("num_bits", 8)) <= 8:
            return f"compressed-tensors int{w.get('num_bits')} weights are not supported (2..8 bits)"
        if w.get("type") == "float" and int(w.get("num_bits", 8)) == 4:
            if int(w.get("group_size") or 0) != 16 or not w.get("symmetric", True):
                return (f"compressed-tensors fp4 weights with group_size {w.get('group_size')} are not supported "
                        "(nvfp4: symmetric groups of 16)")
        elif w.get("type") == "float" and int(w.get("num_bits", 8)) != 8:
            return f"compressed-tensors float{w.get('num_bits')} weights are not supported (fp8 e4m3, nvfp4)"
    return None


def _weights_args(qcfg: dict, module: str) -> dict:
    """The `weights` quantization args of the config group whose targets match the module."""
    groups = _groups(qcfg)
    for g in groups:
        for target in g.get("targets") or []:
            if target in ("Linear", module) or (target.startswith("re:") and re.fullmatch(target[3:], module)):
                return g.get("weights") or {}
    return (groups[0].get("weights") or {}) if len(groups) == 1 else {}


class PackedRef(QuantRef):
    def __init__(self, name, packed, scale, zero, shape_ref, g_idx, args: dict):
        parts = [p for p in (packed, scale, zero, shape_ref, g_idx) if p is not None]
        shape = tuple(int(v) for v in read_all(shape_ref).reshape(-1))
        super().__init__(name, shape, parts, "")
        self.packed, self.scale, self.zero, self.g_idx = packed, scale, zero, g_idx
        self.bits = int(args.get("num_bits", 4))
        self.symmetric = bool(args.get("symmetric", True))
        rows, cols = shape
        if packed.shape != (rows, math.ceil(cols * self.bits / 32)) or packed.dtype != "I32":
            self.fail(f"weight_packed is {packed.dtype} {list(packed.shape)}, int{self.bits} over {list(shape)} "
                      f"needs I32 [{rows}, {math.ceil(cols * self.bits / 32)}]")
        if scale.dtype not in _SCALE_DTYPES or len(scale.shape) != 2 or scale.shape[0] != rows:
            self.fail(f"weight_scale is {scale.dtype} {list(scale.shape)}, expected [{rows}, groups] of floats")
        n_groups = scale.shape[1]
        if cols % n_groups:
            self.fail(f"{n_groups} scale groups do not divide {cols} columns")
        self.group_size = cols // n_groups
        self.dtype_name = _SCALE_DTYPES[scale.dtype]
        if not self.symmetric and (zero is None or zero.shape != (math.ceil(rows * self.bits / 32), n_groups)):
            self.fail("an asymmetric weight needs a weight_zero_point of packed rows x groups")
        self.group = np.arange(cols) // self.group_size  # (cols,) group of each column
        act_order = False
        if g_idx is not None:
            gi = read_all(g_idx).reshape(-1).astype(np.int64)
            if gi.shape != (cols,) or gi.min() < 0 or gi.max() >= n_groups:
                self.fail("weight_g_idx does not map every column to a scale group")
            act_order = not np.array_equal(gi, self.group)
            self.group = gi
        kind = "channel" if n_groups == 1 else f"g{self.group_size}"
        self.source = (f"compressed-tensors int{self.bits} {kind} {'sym' if self.symmetric else 'asym'}"
                       + (" act-order" if act_order else ""))
        self._act_order = act_order

    @property
    def lossless(self):
        """Q4_0 / Q4_1 for 4-bit groups of whole 32-blocks with f16-exact scales (reads the scales once)."""
        if not hasattr(self, "_lossless"):
            t = intgrid.lossless_type(self.bits, self.symmetric, self.group_size, self.cols, self._act_order, True)
            if t is not None and self.scale.dtype != "F16":
                scales = to_f32(read_all(self.scale), self.scale.dtype)
                t = t if intgrid.f16_exact(scales) else None
            self._lossless = t
        return self._lossless

    def _grid(self, start: int, stop: int):
        """(q (n, cols) u8 unsigned, scale (n, groups) f32, zero (n, groups) f32 unsigned)."""
        rows_bytes = read_window(self.packed, start, stop, 0, self.packed.shape[1])  # (n, words) i4
        q = intgrid.unpack_bits(rows_bytes.view(np.uint8), self.bits, 0, self.cols)
        scale = to_f32(read_window(self.scale, start, stop, 0, self.scale.shape[1]), self.scale.dtype)
        if self.symmetric:
            zero = np.full(scale.shape, 1 << (self.bits - 1), dtype=np.float32)
        else:
            w0, w1 = start * self.bits // 32, -(-stop * self.bits // 32)
            words = read_window(self.zero, w0, w1, 0, self.zero.shape[1])  # (w1-w0, groups) i4
            cols_bytes = np.ascontiguousarray(words.T).view(np.uint8)  # (groups, 4*(w1-w0)) a stream down rows
            zero = intgrid.unpack_bits(cols_bytes, self.bits, start * self.bits - w0 * 32, stop - start).T
            zero = zero.astype(np.float32)
        return q, scale, zero

    def decode(self, start: int, stop: int) -> np.ndarray:
        q, scale, zero = self._grid(start, stop)
        return intgrid.dequantize(q, scale, zero, self.group, self.dtype_name)

    def read_blocks(self, start: int, stop: int, qtype) -> np.ndarray:
        q, scale, zero = self._grid(start, stop)
        if self.bits == 8:
            return intgrid.q8_blocks(q, scale, self.group_size)
        return intgrid.q4_blocks(q, scale, None if self.symmetric else zero, self.group_size)


class NvFp4Ref(QuantRef):
    def __init__(self, name, packed, scale, global_scale):
        rows, half = packed.shape if len(packed.shape) == 2 else (0, 0)
        super().__init__(name, (rows, half * 2), [packed, scale, global_scale], "compressed-tensors nvfp4 g16")
        self.packed, self.scale = packed, scale
        if packed.dtype != "U8" or len(packed.shape) != 2:
            self.fail(f"weight_packed is {packed.dtype} {list(packed.shape)}, nvfp4 needs U8 [rows, cols/2]")
        if scale.dtype != "F8_E4M3" or tuple(scale.shape) != (rows, half * 2 // 16) or half % 8:
            self.fail(f"weight_scale is {scale.dtype} {list(scale.shape)}, nvfp4 needs F8_E4M3 [{rows}, "
                      f"{half * 2 // 16}]")
        g = read_all(global_scale).reshape(-1)
        if global_scale.dtype not in _SCALE_DTYPES or g.size != 1:
            self.fail(f"weight_global_scale is {global_scale.dtype} {list(global_scale.shape)}, expected one float")
        self.global_scale = to_f32(g, global_scale.dtype)[0]
        self.scalar_global = len(global_scale.shape) == 0  # torch keeps the bf16 scale dtype then

    @property
    def lossless(self):
        """GGUF's NVFP4 (whole 64-column super-blocks, every e4m3 scale a positive finite value, a (1,) global
        scale, which decompress applies without rounding the group scale first), with the global divisor as the
        companion `.scale` factor (lossless_scale) llama.cpp multiplies the matmul by."""
        if not hasattr(self, "_lossless"):
            ok = self.cols % 64 == 0 and not self.scalar_global and self.global_scale > 0
            if ok:
                codes = read_all(self.scale)  # (rows, cols/16) e4m3 bytes
                ok = not np.any(codes & 0x80) and not np.any(codes == 0x7F)  # sign bit / NaN
            self._lossless = intgrid.QT.NVFP4 if ok else None
        return self._lossless

    @property
    def lossless_scale(self) -> float:
        return float(np.float32(1.0 / np.float64(self.global_scale)))

    def read_blocks(self, start: int, stop: int, qtype) -> np.ndarray:
        """Rows [start, stop) as NVFP4 super-blocks of 64 columns, the grid bit for bit:
            block = [ d: 4 x ue4m3 (one per 16 columns) | qs: 32 B ],  sub-block s: qs[8s + j] = code j | code j+8 << 4
        ue4m3 = the e4m3 scale byte (sign clear; ggml reads it as half its value, and its fp4 table is the
        doubled e2m1, so d * value = e4m3 * e2m1 exactly); the codes are the same 4-bit e2m1 codes.
        (n, cols/64 * 36) u8."""
        n = stop - start
        packed = read_window(self.packed, start, stop, 0, self.packed.shape[1])  # (n, cols/2) u8
        codes = np.empty((n, self.cols), dtype=np.uint8)
        codes[:, 0::2], codes[:, 1::2] = packed & 0xF, packed >> 4
        sub = codes.reshape(n, self.cols // 64, 4, 16)  # (n, blocks, sub-block, 16)
        qs = (sub[..., :8] | (sub[..., 8:] << 4)).reshape(n, self.cols // 64, 32)
        d = read_window(self.scale, start, stop, 0, self.scale.shape[1]).reshape(n, self.cols // 64, 4)
        return np.concatenate([d, qs], axis=2).reshape(n, -1)

    def decode(self, start: int, stop: int) -> np.ndarray:
        from ggufkit.sources.mxfp4 import FP4
        from ggufkit.sources.prequant import round_to

        packed = read_window(self.packed, start, stop, 0, self.packed.shape[1])  # (n, cols/2) u8
        codes = np.empty((stop - start, self.cols), dtype=np.uint8)
        codes[:, 0::2], codes[:, 1::2] = packed & 0xF, packed >> 4
        scale = to_f32(read_window(self.scale, start, stop, 0, self.scale.shape[1]), "F8_E4M3")  # (n, cols/16)
        s = scale / self.global_scale  # f32 division, once per group
        if self.scalar_global:
            s = round_to(s, "bfloat16")
        values = FP4[codes].reshape(stop - start, -1, 16) * s[:, :, None]  # (n, cols/16, 16) f32
        if self.scalar_global:
            values = round_to(values, "bfloat16")
        return round_to(values.reshape(stop - start, self.cols), "bfloat16")


def group(tensors: dict, qcfg: dict, config_path) -> dict:
    """Every pack-quantized module (weight_packed + weight_scale + weight_shape ...) -> PackedRef, every F8_E4M3
    weight with a weight_scale -> Fp8Ref."""
    out = {}
    for key in [k for k in tensors if k.endswith(".weight_packed") and k[:-7] + "_global_scale" in tensors]:
        module = key[:-len(".weight_packed")]
        name = f"{module}.weight"
        out[name] = NvFp4Ref(name, take(tensors, key, name), take(tensors, f"{module}.weight_scale", name),
                             take(tensors, f"{module}.weight_global_scale", name))
        for extra in ("input_global_scale", "input_scale", "weight_zero_point"):
            tensors.pop(f"{module}.{extra}", None)
    for key in [k for k in tensors if k.endswith(".weight_packed")]:
        module = key[:-len(".weight_packed")]
        name = f"{module}.weight"
        args = _weights_args(qcfg, module)
        if not args:
            raise InputError(f"tensor {key}: no config group of quantization_config targets {module}", config_path)
        packed = take(tensors, key, name)
        scale = take(tensors, f"{module}.weight_scale", name)
        shape = take(tensors, f"{module}.weight_shape", name)
        zero = tensors.pop(f"{module}.weight_zero_point", None)
        g_idx = tensors.pop(f"{module}.weight_g_idx", None)
        out[name] = PackedRef(name, packed, scale, zero, shape, g_idx, args)
    for name in [k for k, r in tensors.items() if r.dtype == "F8_E4M3" and k + "_scale" in tensors]:
        module = name.rsplit(".", 1)[0]
        args = _weights_args(qcfg, module)
        block = args.get("block_structure")
        out[name] = Fp8Ref(name, take(tensors, name, name), take(tensors, name + "_scale", name), block,
                           method="compressed-tensors")
        for extra in ("input_scale", "input_zero_point", "weight_zero_point"):
            tensors.pop(f"{module}.{extra}", None)
    return out

