"""GPTQModel itself, run in a subprocess by prequant_fixtures (it sets process-wide environment variables and
patches transformers on import, so it stays out of the test process):

    python tests/gptqmodel_tool.py SRC OUT BITS GROUP SYM DESC_ACT FORMAT

quantizes the checkpoint SRC with GPTQModel's GPTQ on the CPU (its Hessian-based rounding on a few calibration
sentences; act-order when DESC_ACT is 1), saves it to OUT in FORMAT ("gptq" = v1 zero points, "gptq_v2"), then
loads OUT back with GPTQModel (its torch kernel) and writes OUT.ref.npz: {HF weight name: (out, in) f32} of every
quantized Linear, the values GPTQModel's own dequantize_weight gives (f16, as its torch kernel multiplies with),
and the grid it unpacks on the way: `<module>.q` (out, in) codes, `.zero` and `.scale` (out, groups), `.g_idx`.
"""
from __future__ import annotations

import os
import sys

CALIBRATION = ["The capital of France is Paris, a city on the Seine with many museums and old bridges.",
               "A quick brown fox jumps over the lazy dog while the farmer counts his sheep at dusk.",
               "Water boils at one hundred degrees Celsius at sea level, and freezes at zero degrees.",
               "She opened the old book, and the smell of dust and paper filled the quiet library."]


def quantize(src: str, out: str, bits: int, group: int, sym: bool, desc_act: bool, fmt: str) -> None:
    from gptqmodel import GPTQModel, QuantizeConfig

    kw = {"bits": bits, "group_size": group, "sym": sym, "desc_act": desc_act, "format": fmt,
          "offload_to_disk": False}
    if desc_act:
        kw["act_group_aware"] = False  # GPTQModel's default group-aware reordering excludes desc_act
    model = GPTQModel.load(src, QuantizeConfig(**kw), device="cpu")
    model.quantize(CALIBRATION * 4, batch_size=1)
    model.save(out)


def reference(out: str) -> None:
    import numpy as np
    import torch
    from gptqmodel import BACKEND, GPTQModel
    from gptqmodel.nn_modules.qlinear import PackableQuantLinear

    model = GPTQModel.load(out, device="cpu", backend=BACKEND.TORCH, dtype=torch.float16)
    arrays = {}
    for name, module in model.model.named_modules():
        if not isinstance(module, PackableQuantLinear):
            continue
        # the generic unpack + scale * (q - zero) of every GPTQModel kernel (the torch kernel's own override
        # compiles it with inductor first); its unpacked codes and zero points are caught on the way
        grid = {}
        finish = module._dequantize_from_codes
        module._dequantize_from_codes = (lambda q, z, num_itr=1, f=finish, g=grid:
                                         g.update(q=q, z=z) or f(q, z, num_itr))
        w = PackableQuantLinear.dequantize_weight(module)  # (in, out) f16
        arrays[f"{name}.weight"] = w.T.float().numpy()  # (out, in) f32
        arrays[f"{name}.q"] = grid["q"].T.numpy().astype(np.uint8)  # (out, in) codes
        arrays[f"{name}.zero"] = grid["z"].T.float().numpy()  # (out, groups), v2: as subtracted
        arrays[f"{name}.scale"] = module.scales.T.float().numpy()  # (out, groups)
        arrays[f"{name}.g_idx"] = module.g_idx.numpy().astype(np.int64)  # (in,)
    np.savez(out + ".ref.npz", **arrays)


if __name__ == "__main__":
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")  # its default of half the cores is 1 here, below its loader's 2
    src, out, bits, group, sym, desc_act, fmt = sys.argv[1:8]
    quantize(src, out, int(bits), int(group), sym == "1", desc_act == "1", fmt)
    reference(out)
