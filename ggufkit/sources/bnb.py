"""bitsandbytes checkpoints (transformers' BitsAndBytesConfig, quant_method "bitsandbytes"): NF4 / FP4, with or
without double quantization of the absmax, and LLM.int8.

4-bit, per weight W of shape (rows, cols), as transformers saves it:
    W                     packed codes, flat row-major over (rows, cols), two per byte, the first element in the
                          high nibble:  byte k = [ code(2k) : 4 | code(2k+1) : 4 ]   (any storage dtype; its bytes)
    W.absmax              per block of `blocksize` consecutive flat elements: f32, or with double quantization
                          u8 codes into W.nested_quant_map scaled per `nested_blocksize` absmax codes by
                          W.nested_absmax, plus `nested_offset`
    W.quant_map           the 16-value code book (NF4 or FP4) as f32
    W.quant_state.bitsandbytes__{nf4,fp4}   JSON: quant_type, blocksize, dtype, shape, nested_*
  value = quant_map[code] * absmax[block], in f32, then rounded to the state's dtype (bitsandbytes'
  dequantize_4bit returns that dtype), absmax = nested_quant_map[a] * nested_absmax[block // nested] + offset.

LLM.int8 (load_in_8bit):
    W (rows, cols) i8, W's module .SCB (rows,) f32, .weight_format u8 scalar (0 = row-major)
  value = (w * SCB[row]) * f32(1/127), as bitsandbytes' int8_vectorwise_dequant.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np

from ggufkit.errors import InputError
from ggufkit.sources.prequant import QuantRef, pread, read_all, read_elements, round_to, take, to_f32

_STATE = re.compile(r"(.+)\.quant_state\.bitsandbytes__(\w+)")
_INT8_SCALE = np.float32(7.874015718698502e-3)  # bitsandbytes' reciprocal of 127, as an f32 multiplier


def unsupported(qcfg: dict) -> str | None:
    if qcfg.get("load_in_4bit") or qcfg.get("load_in_8bit") or qcfg.get("_load_in_4bit") or qcfg.get("_load_in_8bit"):
        kind = qcfg.get("bnb_4bit_quant_type", "fp4")
        if (qcfg.get("load_in_4bit") or qcfg.get("_load_in_4bit")) and kind not in ("nf4", "fp4"):
            return f"bitsandbytes 4-bit quant type {kind!r} is not supported (nf4, fp4)"
        return None
    return "bitsandbytes quantization_config with neither load_in_4bit nor load_in_8bit"


class Bnb4Ref(QuantRef):
    def __init__(self, name, parts, state: dict, packed, absmax, code, nested):
        self.state = state
        shape = tuple(state["shape"])
        self.blocksize = int(state["blocksize"])
        kind = state["quant_type"]
        desc = f"bnb {kind} g{self.blocksize}" + (" dq" if nested else "")
        super().__init__(name, shape, parts, desc)
        self.packed, self.absmax_ref, self.nested = packed, absmax, nested
        self.code = to_f32(read_all(code).reshape(-1), code.dtype)  # (16,) f32
        if self.code.shape != (16,):
            self.fail(f"quant_map has {self.code.size} values, a 4-bit code book has 16")
        n = math.prod(shape)
        if packed.nbytes != (n + 1) // 2:
            self.fail(f"holds {packed.nbytes} packed bytes, shape {list(shape)} needs {(n + 1) // 2}")
        n_blocks = -(-n // self.blocksize)
        if math.prod(absmax.shape) != n_blocks:
            self.fail(f"absmax has {math.prod(absmax.shape)} values, {n_blocks} blocks of {self.blocksize} expected")
        if nested is not None:
            self.nested_code = to_f32(read_all(nested[1]).reshape(-1), nested[1].dtype)  # (256,) f32
            self.nested_block = int(state["nested_blocksize"])
            self.offset = np.float32(state["nested_offset"])
            if math.prod(nested[0].shape) != -(-n_blocks // self.nested_block):
                self.fail("nested_absmax does not match the absmax count")

    def _absmax(self, b0: int, b1: int) -> np.ndarray:
        """absmax of blocks [b0, b1) as f32."""
        raw = read_elements(self.absmax_ref, b0, b1)
        if self.nested is None:
            return to_f32(raw, self.absmax_ref.dtype)
        g0, g1 = b0 // self.nested_block, -(-b1 // self.nested_block)
        scale = to_f32(read_elements(self.nested[0], g0, g1), self.nested[0].dtype)  # (g1-g0,) f32
        idx = np.arange(b0, b1) // self.nested_block - g0
        return (self.nested_code[raw] * scale[idx]) + self.offset  # f32 throughout, as dequantize_blockwise

    def decode(self, start: int, stop: int) -> np.ndarray:
        cols = self.cols
        e0, e1 = start * cols, stop * cols  # flat element range
        raw = np.frombuffer(pread(self.packed, e0 // 2, (e1 + 1) // 2), dtype=np.uint8)
        codes = np.empty(raw.size * 2, dtype=np.uint8)
        codes[0::2], codes[1::2] = raw >> 4, raw & 0xF
        codes = codes[e0 % 2: e0 % 2 + (e1 - e0)]  # (e1-e0,) u8
        b0, b1 = e0 // self.blocksize, -(-e1 // self.blocksize)
        absmax = self._absmax(b0, b1)  # (b1-b0,) f32
        values = self.code[codes] * absmax[np.arange(e0, e1) // self.blocksize - b0]  # f32 product
        return round_to(values, self.state.get("dtype", "float32")).reshape(stop - start, cols)


class Bnb8Ref(QuantRef):
    def __init__(self, name, weight, scb, fmt):
        super().__init__(name, weight.shape, [weight, scb] + ([fmt] if fmt is not None else []), "bnb int8")
        self.weight, self.scb = weight, scb
        if weight.dtype != "I8" or len(weight.shape) != 2:
            self.fail(f"an LLM.int8 weight must be a 2-D I8 tensor, not {weight.dtype} {list(weight.shape)}")
        if scb.shape != (weight.shape[0],):
            self.fail(f"SCB has shape {list(scb.shape)}, expected [{weight.shape[0]}]")
        if fmt is not None and int(read_all(fmt).reshape(-1)[0]) != 0:
            self.fail("weight_format is not 0 (row-major); tiled int8 layouts are not supported")

    def decode(self, start: int, stop: int) -> np.ndarray:
        w = read_elements(self.weight, start * self.cols, stop * self.cols).reshape(stop - start, self.cols)
        scb = to_f32(read_elements(self.scb, start, stop), self.scb.dtype)  # (n,) f32
        return (w.astype(np.float32) * scb[:, None]) * _INT8_SCALE


def group(tensors: dict, qcfg: dict, config_path) -> dict:
    """Pull every bitsandbytes-quantized weight's parts out of `tensors`; -> {weight name: Bnb4Ref | Bnb8Ref}."""
    out = {}
    for key in [k for k in tensors if _STATE.fullmatch(k)]:
        name = _STATE.fullmatch(key).group(1)
        state_ref = take(tensors, key, name)
        try:
            state = json.loads(bytes(read_all(state_ref)).decode("utf-8"))
            if not isinstance(state, dict) or not {"quant_type", "blocksize", "shape"} <= set(state):
                raise ValueError
        except (UnicodeDecodeError, ValueError):
            raise _bad(state_ref, "is not a valid bitsandbytes quant state (JSON)") from None
        if state["quant_type"] not in ("nf4", "fp4"):
            raise _bad(state_ref, f"quant type {state['quant_type']!r} is not supported (nf4, fp4)")
        packed = take(tensors, name, name)
        absmax = take(tensors, f"{name}.absmax", name)
        code = take(tensors, f"{name}.quant_map", name)
        nested = None
        if f"{name}.nested_absmax" in tensors:
            nested = (take(tensors, f"{name}.nested_absmax", name), take(tensors, f"{name}.nested_quant_map", name))
        parts = [packed, absmax, code, state_ref] + list(nested or ())
        out[name] = Bnb4Ref(name, parts, state, packed, absmax, code, nested)
    for key in [k for k in tensors if k.endswith(".SCB")]:
        module = key[:-len(".SCB")]
        name = f"{module}.weight"
        if name not in tensors:
            continue
        scb = take(tensors, key, name)
        fmt = tensors.pop(f"{module}.weight_format", None)
        out[name] = Bnb8Ref(name, take(tensors, name, name), scb, fmt)
    return out


def _bad(ref, message: str) -> InputError:
    return InputError(f"tensor {ref.name} {message}", ref.file)
