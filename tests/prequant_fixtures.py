"""Pre-quantized checkpoints of the demo model made by the real tools on CPU (bitsandbytes through transformers'
BitsAndBytesConfig, ...), cached per test session, and the references they are checked against: each library's
own dequantization of every quantized weight, mapped to GGUF names and llama.cpp's row order."""
from __future__ import annotations

import functools
import shutil
from pathlib import Path

import numpy as np
from convert_fixtures import OUT_DIR

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)


@functools.cache
def bnb_checkpoint(demo_dir: Path, kind: str, double_quant: bool = False, dtype: str = "float32") -> Path:
    """transformers + bitsandbytes (CPU backend): the demo model loaded with BitsAndBytesConfig and saved.
    kind: "nf4", "fp4" or "int8"."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    out = OUT_DIR / f"bnb-{kind}{'-dq' if double_quant else ''}-{dtype}"
    torch_dtype = getattr(torch, dtype)
    if kind == "int8":
        cfg = BitsAndBytesConfig(load_in_8bit=True)
    else:
        cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=kind, bnb_4bit_use_double_quant=double_quant,
                                 bnb_4bit_compute_dtype=torch_dtype)
    model = AutoModelForCausalLM.from_pretrained(demo_dir, quantization_config=cfg, device_map="cpu",
                                                 dtype=torch_dtype)
    model.save_pretrained(out)
    _copy_tokenizer(demo_dir, out)
    return out


def bnb_reference(model_dir: Path) -> dict[str, np.ndarray]:
    """{HF weight name: (rows, cols) f32} for every bitsandbytes-quantized weight, dequantized by bitsandbytes
    (transformers' dequantize_bnb_weight: bitsandbytes.functional.dequantize_4bit / int8_vectorwise_dequant)."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations.bitsandbytes import dequantize_bnb_weight

    model = AutoModelForCausalLM.from_pretrained(model_dir, device_map="cpu")
    out = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if type(weight).__name__ in ("Params4bit", "Int8Params"):
            out[f"{name}.weight"] = dequantize_bnb_weight(weight, getattr(module, "state", None)).float().numpy()
    return out


def to_gguf_layout(weights: dict[str, np.ndarray], config: dict) -> dict[str, np.ndarray]:
    """HF names -> GGUF names (gguf-py's TensorNameMap), and llama.cpp's Q/K row order (each head's two rotary
    halves interleaved, as llama.cpp's converter permutes them)."""
    import gguf

    n_layer, n_head = config["num_hidden_layers"], config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads", n_head)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    out = {}
    for hf, w in weights.items():
        name = names.get_name(hf, try_suffixes=(".weight",))
        heads = n_head if name.endswith("attn_q.weight") else n_kv if name.endswith("attn_k.weight") else 0
        if heads:
            w = w.reshape(heads, 2, w.shape[0] // heads // 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)
        out[name] = w
    return out


def bnb_exact_cpu_path(model) -> None:
    """bitsandbytes on a CPU with AVX512-BF16 repacks 4-bit weights and multiplies in bf16 (a faster, rounded
    path), and a checkpoint saved from a bf16/f16 model computes in that dtype; switch every Linear4bit to its
    reference path in f32 (dequantize_4bit - values rounded to the state's dtype as stored - then an f32 matmul),
    which is what llama.cpp's F32 file computes too."""
    import torch

    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            module.compute_dtype, module.compute_type_is_set = torch.float32, True
    for param in model.parameters():  # transformers keeps the unquantized parts in the checkpoint's dtype
        if param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()
    for module in model.modules():  # and the rotary inverse frequencies
        for key, buf in list(module.named_buffers(recurse=False)):
            if buf.dtype in (torch.bfloat16, torch.float16):
                setattr(module, key, buf.float())
    from transformers.integrations.bitsandbytes import dequantize_bnb_weight

    for module in model.modules():
        if type(module).__name__ == "Linear8bitLt":
            # LLM.int8's forward quantizes the activations to int8 too (and splits outlier columns): no float
            # runtime computes that. Run bitsandbytes' dequantized weight in f32 instead.
            weight = dequantize_bnb_weight(module.weight, module.state).float()
            module.forward = lambda x, w=weight: torch.nn.functional.linear(x, w)
        elif type(module).__name__ == "Linear4bit" and module.weight.quant_state.dtype != torch.float32:
            # With an f32 compute dtype, bitsandbytes' 4-bit forward multiplies by code * absmax in f32, while its
            # dequantize_4bit (what the checkpoint's values are, and ggufkit's F32 file) rounds those products to
            # the state's dtype first (test_prequant_bnb.test_the_4bit_forward_skips_the_dtype_rounding); run the
            # dequantized weight in f32, as llama.cpp runs the F32 file.
            weight = dequantize_bnb_weight(module.weight, getattr(module, "state", None)).float()
            bias = None if module.bias is None else module.bias.float()
            module.forward = lambda x, w=weight, b=bias: torch.nn.functional.linear(x, w, b)


def quantized_logits(model_dir: Path, ids: list[int], prepare=None, **load) -> np.ndarray:
    """transformers' float32 logits (n_tokens, vocab) from a pre-quantized checkpoint, run by its library
    (`load`: more from_pretrained arguments, e.g. a quantization_config)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, device_map="cpu", **load)
    model.eval()
    if prepare is not None:
        prepare(model)
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].float().numpy()


def assert_logits_agree(gguf_path: Path, model_dir: Path, prepare=None, **load) -> str:
    """llama.cpp on gguf_path vs transformers on the quantized model_dir: the families runner's tolerances."""
    from convert_fixtures import llama_cpp_logits, text_ids

    ids = text_ids(model_dir)
    ours = llama_cpp_logits(gguf_path, ids)
    ref = quantized_logits(model_dir, ids, prepare, **load)
    diff = np.abs(ours - ref)
    top1 = (ours.argmax(-1) == ref.argmax(-1)).mean()
    summary = f"top-1 agreement {top1:.3f}, median |diff| {np.median(diff):.5f}, max {diff.max():.5f}"
    assert top1 == 1.0, summary
    assert np.median(diff) < 0.01, summary
    assert diff.max() < 0.05, summary
    return summary


_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _demo_state(demo_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(demo_dir / "model.safetensors")


def _write_checkpoint(demo_dir: Path, out: Path, state: dict, quantization_config: dict) -> Path:
    import json

    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((demo_dir / "config.json").read_text())
    config["quantization_config"] = quantization_config
    (out / "config.json").write_text(json.dumps(config, indent=1))
    _copy_tokenizer(demo_dir, out)
    return out


@functools.cache
def fp8_checkpoint(demo_dir: Path, scales: str) -> Path:
    """The demo's linear weights in FP8 e4m3 the way FP8 releases store them (`weight` F8_E4M3 plus
    `weight_scale_inv`, the multiplier), written by this test code with torch's float8_e4m3fn cast (no library
    quantizes FP8 on a CPU). scales: "block64" (64x64 blocks), "block128" (128x128, ragged over 576 columns),
    "tensor" (one scale), "channel" (one per row)."""
    import torch

    state = _demo_state(demo_dir)
    block = {"block64": 64, "block128": 128}.get(scales)
    for key in [k for k in state if k.rsplit(".", 2)[-2] in _LINEARS]:
        w = state[key].float()  # (rows, cols)
        rows, cols = w.shape
        if block:
            pad = torch.zeros(-(-rows // block) * block, -(-cols // block) * block)
            pad[:rows, :cols] = w.abs()
            amax = pad.reshape(pad.shape[0] // block, block, -1, block).amax(dim=(1, 3))  # (R, C)
            scale = amax / 448.0
            full = scale.repeat_interleave(block, 0).repeat_interleave(block, 1)[:rows, :cols]
        elif scales == "channel":
            scale = w.abs().amax(dim=1, keepdim=True) / 448.0  # (rows, 1)
            full = scale
        else:
            scale = w.abs().amax() / 448.0  # () per tensor
            full = scale
        state[key] = (w / full).to(torch.float8_e4m3fn)
        state[key + "_scale_inv"] = scale.float().contiguous()
    qcfg = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
            "weight_block_size": [block, block] if block else None}
    return _write_checkpoint(demo_dir, OUT_DIR / f"fp8-{scales}", state, qcfg)


def fp8_reference(model_dir: Path) -> dict[str, np.ndarray]:
    """{HF name: (rows, cols) f32}: transformers' FP8 dequantization of every F8_E4M3 weight. Loaded on the CPU,
    transformers dequantizes FP8 checkpoints itself (Fp8Dequantize, derived from the scale grid); for block
    grids that do not divide the weight (which that loader refuses) its `_dequantize_fp8_weight`."""
    import json

    import torch
    from safetensors.torch import load_file
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

    qcfg = json.loads((model_dir / "config.json").read_text())["quantization_config"]
    state = load_file(model_dir / "model.safetensors")
    weights = [k for k, v in state.items() if v.dtype == torch.float8_e4m3fn]
    block = qcfg.get("weight_block_size")
    if block and any(state[k].shape[0] % block[0] or state[k].shape[1] % block[1] for k in weights):
        return {k: _dequantize_fp8_weight(state[k], state[k + "_scale_inv"], block, torch.float32).numpy()
                for k in weights}
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, device_map="cpu")
    params = dict(model.named_parameters())
    return {k: params[k].detach().float().numpy() for k in weights}


@functools.cache
def ct_packed_checkpoint(demo_dir: Path, bits: int, symmetric: bool, group_size: int | None,
                         dtype: str = "float16") -> Path:
    """The demo's linear weights in compressed-tensors' pack-quantized format, made by compressed-tensors itself:
    scales and zero points from its calculate_qparams over each group's min/max (round to nearest, what
    llm-compressor's QuantizationModifier does without GPTQ), quantized and packed by its
    PackedQuantizationCompressor.compress. group_size None: one scale per output channel."""
    import torch
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme
    from compressed_tensors.quantization.utils import calculate_qparams

    strategy = "group" if group_size else "channel"
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, strategy=strategy,
                            group_size=group_size)
    scheme = QuantizationScheme(targets=["Linear"], weights=args)
    state = _demo_state(demo_dir)
    for key in [k for k in state if k.rsplit(".", 2)[-2] in _LINEARS]:
        w = state.pop(key).to(getattr(torch, dtype))  # (rows, cols)
        g = group_size or w.shape[1]
        grouped = w.reshape(w.shape[0], -1, g)
        lo, hi = grouped.amin(dim=2), grouped.amax(dim=2)  # (rows, groups)
        scale, zero = calculate_qparams(lo, hi, args)
        module = key[:-len(".weight")]
        local = PackedQuantizationCompressor.compress({"weight": w, "weight_scale": scale, "weight_zero_point": zero},
                                                      scheme)
        state |= {f"{module}.{k}": v for k, v in local.items()}
    qcfg = {"quant_method": "compressed-tensors", "format": "pack-quantized", "quantization_status": "compressed",
            "config_groups": {"group_0": {**scheme.model_dump(mode="json"), "format": "pack-quantized"}},
            "ignore": ["lm_head"]}
    name = f"ct-int{bits}-{'sym' if symmetric else 'asym'}-{group_size or 'channel'}-{dtype}"
    return _write_checkpoint(demo_dir, OUT_DIR / name, state, qcfg)


def ct_dequantized_load() -> dict:
    """from_pretrained arguments that make transformers run a compressed-tensors checkpoint on the library's own
    decompress of the stored tensors. Its default route decompresses at the first forward from parameters it has
    already cast to the load dtype: with dtype=float32 an f16 weight_scale becomes f32 and the weights are the
    exact products scale * (q - zero), not the library's values rounded to the scale dtype (measured on the demo's
    int4 g32 f16 checkpoint: those weights equal the exact products, not decompress, and the logits against
    ggufkit's F32 file are median 0.0034 / max 0.055; with dequantize=True the weights equal decompress bit for bit
    and the logits are median 0.0023 / max 0.019)."""
    from transformers import CompressedTensorsConfig

    return {"quantization_config": CompressedTensorsConfig(dequantize=True)}


def ct_reference(model_dir: Path) -> dict[str, np.ndarray]:
    """{HF weight name: (rows, cols) f32}: compressed-tensors' own decompress of every pack-quantized module."""
    import json

    import torch
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from safetensors.torch import load_file

    qcfg = json.loads((model_dir / "config.json").read_text())["quantization_config"]
    scheme = QuantizationScheme.model_validate(
        {k: v for k, v in qcfg["config_groups"]["group_0"].items() if k != "format"})
    state = load_file(model_dir / "model.safetensors")
    out = {}
    for key in [k for k in state if k.endswith(".weight_packed")]:
        module = key[:-len(".weight_packed")]
        local = {k.rsplit(".", 1)[1]: v for k, v in state.items() if k.rsplit(".", 1)[0] == module}
        out[f"{module}.weight"] = PackedQuantizationCompressor.decompress(local, scheme)["weight"].to(
            torch.float32).numpy()
    return out


def ct_grid(model_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{HF weight name: (q (rows, cols) signed ints, scale (rows, groups) f32, zero (rows, groups))}, unpacked by
    compressed-tensors' unpack_from_int32: the exact grid, for the lossless paths."""
    import json

    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors.torch import load_file

    qcfg = json.loads((model_dir / "config.json").read_text())["quantization_config"]
    bits = qcfg["config_groups"]["group_0"]["weights"]["num_bits"]
    state = load_file(model_dir / "model.safetensors")
    out = {}
    for key in [k for k in state if k.endswith(".weight_packed")]:
        module = key[:-len(".weight_packed")]
        shape = tuple(state[f"{module}.weight_shape"].tolist())
        scale = state[f"{module}.weight_scale"].float()
        q = unpack_from_int32(state[key], bits, shape).numpy().astype(np.float32)
        zp = state.get(f"{module}.weight_zero_point")
        zero = (unpack_from_int32(zp, bits, (shape[0], scale.shape[1]), packed_dim=0).numpy().astype(np.float32)
                if zp is not None else np.zeros(scale.shape, np.float32))
        out[f"{module}.weight"] = (q, scale.numpy(), zero)
    return out


@functools.cache
def gptq_checkpoint(demo_dir: Path, bits: int, symmetric: bool, group_size: int | None, dtype: str,
                    v1: bool) -> Path:
    """The grid of ct_packed_checkpoint (made by compressed-tensors) stored in the GPTQ format (qweight, qzeros,
    scales, g_idx), packed by compressed-tensors' pack_to_int32: GPTQ's qweight is the same dense little-endian
    stream, down the input dimension of the transposed weight, and qzeros along the outputs. v1 stores each zero
    point minus one. (GPTQModel's own files: gptqmodel_checkpoint.)"""
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    from safetensors.torch import load_file

    src = ct_packed_checkpoint(demo_dir, bits, symmetric, group_size, dtype)
    grid = ct_grid(src)
    state = {k: v for k, v in load_file(src / "model.safetensors").items() if ".weight_" not in k}
    offset = 1 << (bits - 1)
    for name, (q, scale, zero) in grid.items():
        module = name[:-len(".weight")]
        stored_zero = zero + offset - (1 if v1 else 0)  # unsigned zero point as the format stores it
        state[f"{module}.qweight"] = pack_to_int32(torch.from_numpy(q.T.astype(np.int8)).contiguous(), bits,
                                                   packed_dim=0)
        state[f"{module}.qzeros"] = pack_to_int32(torch.from_numpy((stored_zero.T - offset).astype(np.int8))
                                                  .contiguous(), bits, packed_dim=1)
        state[f"{module}.scales"] = torch.from_numpy(scale.T.copy()).to(getattr(torch, dtype))
        g = group_size or q.shape[1]
        state[f"{module}.g_idx"] = torch.arange(q.shape[1], dtype=torch.int32) // g
    qcfg = {"quant_method": "gptq", "bits": bits, "group_size": group_size or -1, "sym": symmetric,
            "desc_act": False, "checkpoint_format": "gptq" if v1 else "gptq_v2"}
    return _write_checkpoint(demo_dir, OUT_DIR / f"gptq-{src.name}-{'v1' if v1 else 'v2'}", state, qcfg)


AWQ_CALIBRATION = ["The capital of France is Paris, a city on the Seine with many museums and old bridges.",
                   "A quick brown fox jumps over the lazy dog while the farmer counts his sheep at dusk.",
                   "Water boils at one hundred degrees Celsius at sea level, and freezes at zero degrees.",
                   "She opened the old book, and the smell of dust and paper filled the quiet library."]


@functools.cache
def awq_checkpoint(src: Path, version: str, group_size: int) -> Path:
    """AutoAWQ itself on the CPU: its activation-aware search on a few calibration sentences, then its own
    packing (WQLinear_GEMM / WQLinear_GEMV.from_linear) and save_quantized. version: "gemm" or "gemv"."""
    from awq import AutoAWQForCausalLM
    from transformers import AutoTokenizer

    out = OUT_DIR / f"awq-{src.name}-{version}-g{group_size}"
    model = AutoAWQForCausalLM.from_pretrained(str(src), device_map="cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    model.quantize(tokenizer, quant_config={"zero_point": True, "q_group_size": group_size, "w_bit": 4,
                                            "version": version.upper()},
                   calib_data=AWQ_CALIBRATION * 2, max_calib_samples=8, max_calib_seq_len=32,
                   n_parallel_calib_samples=8)
    model.save_quantized(str(out))
    _copy_tokenizer(src, out)
    return out


def awq_reference(model_dir: Path) -> dict[str, np.ndarray]:
    """{HF weight name: (rows, cols) f32}: AutoAWQ's own dequantize_gemm of every GEMM-packed module (the f16
    values its naive forward multiplies with)."""
    import json

    from awq.utils.packing_utils import dequantize_gemm
    from safetensors.torch import load_file

    qcfg = json.loads((model_dir / "config.json").read_text())["quantization_config"]
    assert qcfg["version"] == "gemm", "AutoAWQ dequantizes only its GEMM packing on a CPU"
    state = load_file(model_dir / "model.safetensors")
    out = {}
    for key in [k for k in state if k.endswith(".qweight")]:
        module = key[:-len(".qweight")]
        w = dequantize_gemm(state[key], state[f"{module}.qzeros"], state[f"{module}.scales"], 4, qcfg["group_size"])
        out[f"{module}.weight"] = w.T.float().numpy()  # (in, out) f16 -> (out, in) f32
    return out


def awq_model_logits(model_dir: Path, reference: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
    """transformers' float32 logits of the AWQ model: its config, its unquantized tensors (the norms AWQ
    rescaled, embeddings, head) and AutoAWQ's dequantized weights in every quantized Linear (transformers runs
    AWQ only through GPTQModel; AutoAWQ's own CPU forward is this same dequantize_gemm and a matmul, in f16).
    The GPTQ tests use it too, with GPTQModel's dequantized weights (its torch kernel runs only f16/bf16)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    config.quantization_config = None
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.float() for k, v in load_file(model_dir / "model.safetensors").items()
             if not k.endswith((".qweight", ".qzeros", ".scales", ".g_idx"))}
    state |= {k: torch.from_numpy(v) for k, v in reference.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([list(ids)])).logits[0].float().numpy()


MXFP4_KEEP = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]


@functools.cache
def mxfp4_checkpoint(src: Path) -> Path:
    """A gpt-oss checkpoint with its experts in the released MXFP4 layout (`*_blocks` / `*_scales`, see
    ggufkit/sources/mxfp4.py), quantized by llama.cpp's own MXFP4 reference quantizer (ggml_quantize_chunk) and
    repacked into that layout by this test code: transformers' mxfp4 quantizer needs the triton kernels from the
    hub on every device, so no library writes MXFP4 on this CPU. Its reader (transformers' dequantize on CPU)
    is the reference these files are checked against. -> (checkpoint dir)"""
    import torch
    from ggml_ref import ggml_quantize
    from safetensors.torch import load_file

    state = load_file(src / "model.safetensors")
    for key in [k for k in state if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        w = state.pop(key).float().transpose(1, 2).contiguous().numpy()  # (E, n_in, n_out) -> (E, out, in)
        e, rows, cols = w.shape
        ggml = ggml_quantize(w.reshape(e * rows, cols), gguf_qtype("MXFP4")).reshape(e, rows, cols // 32, 17)
        codes = np.empty((e, rows, cols // 32, 32), dtype=np.uint8)  # ggml: qs[j] = code j | code j+16 << 4
        codes[..., :16], codes[..., 16:] = ggml[..., 1:] & 0xF, ggml[..., 1:] >> 4
        state[f"{key}_blocks"] = torch.from_numpy(codes[..., 0::2] | (codes[..., 1::2] << 4))  # (E, out, G, 16)
        state[f"{key}_scales"] = torch.from_numpy(np.ascontiguousarray(ggml[..., 0]))  # (E, out, G) e8m0
    out = _write_checkpoint(src, OUT_DIR / f"mxfp4-{src.name}", state,
                            {"quant_method": "mxfp4", "modules_to_not_convert": MXFP4_KEEP})
    return out


def gguf_qtype(name: str) -> int:
    import gguf

    return int(gguf.GGMLQuantizationType[name])


def mxfp4_reference(model_dir: Path) -> dict[str, np.ndarray]:
    """{GGUF expert tensor name: (E, rows, cols) f32}: the experts as transformers dequantizes an mxfp4
    checkpoint on the CPU (its Mxfp4Dequantize / convert_moe_packed_tensors), in llama.cpp's layout (gate and up
    de-interleaved, every expert transposed to (out, in))."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, device_map="cpu")
    out = {}
    for i, layer in enumerate(model.model.layers):
        gate_up = layer.mlp.experts.gate_up_proj.detach().float().numpy()  # (E, n_embd, 2 n_ff)
        down = layer.mlp.experts.down_proj.detach().float().numpy()  # (E, n_ff, n_embd)
        out[f"blk.{i}.ffn_gate_exps.weight"] = np.ascontiguousarray(gate_up[:, :, 0::2].transpose(0, 2, 1))
        out[f"blk.{i}.ffn_up_exps.weight"] = np.ascontiguousarray(gate_up[:, :, 1::2].transpose(0, 2, 1))
        out[f"blk.{i}.ffn_down_exps.weight"] = np.ascontiguousarray(down.transpose(0, 2, 1))
    return out


@functools.cache
def ct_nvfp4_checkpoint(demo_dir: Path) -> Path:
    """The demo's linear weights in compressed-tensors' nvfp4-pack-quantized format, made by compressed-tensors
    itself: its NVFP4A16 preset, the global scale from its generate_gparam over the tensor's min/max, the group
    scales from its calculate_qparams over each 16-group's min/max (what llm-compressor's QuantizationModifier
    does without calibration data), quantized and packed by its NVFP4PackedCompressor.compress."""
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES
    from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam

    scheme = QuantizationScheme(targets=["Linear"], **PRESET_SCHEMES["NVFP4A16"])
    state = _demo_state(demo_dir)
    for key in [k for k in state if k.rsplit(".", 2)[-2] in _LINEARS]:
        w = state.pop(key)  # (rows, cols) bf16
        grouped = w.reshape(w.shape[0], -1, 16)
        global_scale = generate_gparam(w.amin().reshape(1), w.amax().reshape(1))  # (1,) f32
        scale, zero = calculate_qparams(grouped.amin(dim=2), grouped.amax(dim=2), scheme.weights,
                                        global_scale=global_scale)
        local = NVFP4PackedCompressor.compress({"weight": w, "weight_scale": scale, "weight_zero_point": zero,
                                                "weight_global_scale": global_scale}, scheme)
        module = key[:-len(".weight")]
        state |= {f"{module}.{k}": v.contiguous() for k, v in local.items()}
    qcfg = {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
            "quantization_status": "compressed",
            "config_groups": {"group_0": {**scheme.model_dump(mode="json"), "format": "nvfp4-pack-quantized"}},
            "ignore": ["lm_head"]}
    return _write_checkpoint(demo_dir, OUT_DIR / "ct-nvfp4", state, qcfg)


def ct_nvfp4_reference(model_dir: Path) -> dict[str, np.ndarray]:
    """{HF weight name: (rows, cols) f32}: compressed-tensors' NVFP4PackedCompressor.decompress of every module."""
    import json

    import torch
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from safetensors.torch import load_file

    qcfg = json.loads((model_dir / "config.json").read_text())["quantization_config"]
    scheme = QuantizationScheme.model_validate(
        {k: v for k, v in qcfg["config_groups"]["group_0"].items() if k != "format"})
    state = load_file(model_dir / "model.safetensors")
    out = {}
    for key in [k for k in state if k.endswith(".weight_packed")]:
        module = key[:-len(".weight_packed")]
        local = {k.rsplit(".", 1)[1]: v for k, v in state.items() if k.rsplit(".", 1)[0] == module}
        out[f"{module}.weight"] = NVFP4PackedCompressor.decompress(local, scheme)["weight"].to(torch.float32).numpy()
    return out


def awq_grid(model_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{HF weight name: (q (rows, cols), scale (rows, groups) f32, zero (rows, groups))} of a GEMM file, unpacked
    by AutoAWQ's own unpack_awq and reverse_awq_order (the AWQ nibble order undone): the exact grid."""
    import json

    import torch
    from awq.utils.packing_utils import reverse_awq_order, unpack_awq
    from safetensors.torch import load_file

    qcfg = json.loads((model_dir / "config.json").read_text())["quantization_config"]
    assert qcfg["version"] == "gemm"
    state = load_file(model_dir / "model.safetensors")
    out = {}
    for key in [k for k in state if k.endswith(".qweight")]:
        module = key[:-len(".qweight")]
        q, z = reverse_awq_order(*unpack_awq(state[key], state[f"{module}.qzeros"], 4), 4)
        q, z = torch.bitwise_and(q, 15), torch.bitwise_and(z, 15)  # (in, out), (groups, out)
        out[f"{module}.weight"] = (q.T.numpy().astype(np.float32), state[f"{module}.scales"].T.float().numpy(),
                                   z.T.numpy().astype(np.float32))
    return out


GPTQMODEL_TOOL = Path(__file__).with_name("gptqmodel_tool.py")


def gptqmodel_missing() -> str | None:
    """Why GPTQModel cannot make fixtures here, or None (`make setup` installs it, see the Makefile)."""
    import importlib.util

    if importlib.util.find_spec("gptqmodel") is None:
        return "gptqmodel is not installed (make setup installs it with --no-deps, see the Makefile)"
    return None


@functools.cache
def gptqmodel_checkpoint(src: Path, bits: int, group_size: int, symmetric: bool, desc_act: bool,
                         fmt: str) -> Path:
    """GPTQModel itself on the CPU (tests/gptqmodel_tool.py, in a subprocess): its GPTQ on a few calibration
    sentences, act-order when desc_act, saved in fmt ("gptq" = v1 zero points, "gptq_v2"), with GPTQModel's own
    dequantization and grid of every quantized Linear beside it (gptqmodel_reference / gptqmodel_grid)."""
    import subprocess
    import sys

    out = OUT_DIR / (f"gptqmodel-{src.name}-int{bits}-g{group_size}-{'sym' if symmetric else 'asym'}"
                     f"{'-act' if desc_act else ''}-{fmt}")
    cmd = [sys.executable, str(GPTQMODEL_TOOL), str(src), str(out), str(bits), str(group_size),
           str(int(symmetric)), str(int(desc_act)), fmt]
    run = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=OUT_DIR)  # it writes logs/ in cwd
    assert run.returncode == 0, f"gptqmodel failed:\n{run.stderr[-3000:]}"
    return out


def _gptqmodel_arrays(model_dir: Path) -> dict[str, np.ndarray]:
    return dict(np.load(f"{model_dir}.ref.npz"))


def gptqmodel_reference(model_dir: Path) -> dict[str, np.ndarray]:
    """{HF weight name: (rows, cols) f32}: GPTQModel's own dequantize_weight of every quantized Linear (f16
    values), as the tool wrote them beside the checkpoint."""
    return {k: v for k, v in _gptqmodel_arrays(model_dir).items() if k.endswith(".weight")}


def gptqmodel_grid(model_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """{HF weight name: (q (rows, cols), scale (rows, groups) f32, zero (rows, groups), g_idx (cols,))}: the codes
    and zero points GPTQModel unpacks (v2 zero points, the ones it subtracts), its scales and g_idx."""
    a = _gptqmodel_arrays(model_dir)
    return {k: tuple(a[f"{k[:-7]}.{p}"] for p in ("q", "scale", "zero", "g_idx")) for k in a if k.endswith(".weight")}
