"""Apertus (Apertus-8B / -70B, -Instruct-2509): HF `model_type` "apertus" -> GGUF arch "apertus".

Qwen3's attention (per-head Q/K RMS norms of head_dim, NEOX rope so Q/K rows go out unchanged, free head_dim, no
biases) with Llama-3 rope scaling (a rope_freqs tensor, archs/llama.py) and a gate-less MLP: up_proj -> xIELU ->
down_proj (ffn_up / ffn_down, no ffn_gate). Norm names differ (attention_layernorm / feedforward_layernorm ->
attn_norm / ffn_norm).

xIELU has four learnt scalars per layer, stored as tensors `mlp.act_fn.{alpha_p, alpha_n, beta, eps}` (alpha_p
and alpha_n raw, before the softplus transformers and ggml both apply). llama.cpp takes them as per-layer float
arrays (xielu.alpha_p / alpha_n / beta / eps), so they are read from the checkpoint - four scalars per layer -
when the tensors are listed and written with the hyperparameters; they are not tensors in the GGUF file.
llama.cpp's apertus always reads its own output tensor: tied embeddings are refused.
"""
from __future__ import annotations

import re

import gguf

from ggufkit.archs.qwen3 import Qwen3
from ggufkit.errors import InputError

_XIELU = re.compile(r"model\.layers\.(?P<layer>\d+)\.mlp\.act_fn\.(?P<param>alpha_p|alpha_n|beta|eps)")
XIELU_PARAMS = ("alpha_n", "alpha_p", "beta", "eps")


class _Without:
    """The checkpoint without some tensors."""

    def __init__(self, ckpt, names: set[str]):
        self.weights_file = ckpt.weights_file
        self.tensors = {k: v for k, v in ckpt.tensors.items() if k not in names}


class Apertus(Qwen3):
    model_type = "apertus"
    gguf_arch = gguf.MODEL_ARCH.APERTUS
    rope_types = ("default", "linear", "yarn", "llama3")
    hidden_act = "xielu"

    def __init__(self, config: dict, config_path):
        super().__init__(config, config_path)
        self.xielu: dict[str, list[float]] | None = None  # param -> one value per layer, read by tensors()

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        if self.tied_embeddings:
            found.append("tie_word_embeddings=true (llama.cpp's apertus needs its own output tensor)")
        return found

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        if self.xielu is None:
            raise RuntimeError("Apertus.write_hparams needs the xIELU scalars: call tensors(checkpoint) first")
        w.add_xielu_alpha_n(self.xielu["alpha_n"])
        w.add_xielu_alpha_p(self.xielu["alpha_p"])
        w.add_xielu_beta(self.xielu["beta"])
        w.add_xielu_eps(self.xielu["eps"])

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: shape for name, shape in super().expected_shapes().items()
                if not name.endswith(".ffn_gate.weight")}

    def tensors(self, ckpt) -> list:
        values: dict[str, dict[int, float]] = {p: {} for p in XIELU_PARAMS}
        found = set()
        for name, ref in ckpt.tensors.items():
            if m := _XIELU.fullmatch(name):
                layer = int(m["layer"])
                if layer >= self.n_layer or ref.rows * ref.cols != 1:
                    raise InputError(f"tensor {name} with shape {list(ref.shape)} is not a scalar of one of the "
                                     f"{self.n_layer} layers", ref.file)
                ref.check_dtype()
                values[m["param"]][layer] = float(ref.read().reshape(-1)[0])
                found.add(name)
        for param, by_layer in values.items():
            missing = [i for i in range(self.n_layer) if i not in by_layer]
            if missing:
                raise InputError(f"tensor model.layers.{missing[0]}.mlp.act_fn.{param} is missing (xIELU needs "
                                 f"{', '.join(XIELU_PARAMS)} in every layer)", ckpt.weights_file)
        self.xielu = {p: [values[p][i] for i in range(self.n_layer)] for p in XIELU_PARAMS}
        return super().tensors(_Without(ckpt, found))
