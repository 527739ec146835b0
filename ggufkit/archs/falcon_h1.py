"""Falcon-H1 (TII, 0.5B-34B): HF `model_type` "falcon_h1" -> GGUF arch "falcon-h1".

A parallel hybrid: every layer runs grouped-query attention and a Mamba-2 mixer side by side on the same normed
input and adds their outputs, then a SwiGLU FFN. What llama.cpp's falcon-h1 reads:
- attention: NEOX rope (Q/K rows unchanged), no biases; the norm before the FFN (`pre_ff_layernorm`) is
  llama.cpp's `blk.N.ffn_norm`, a name without the `.weight` suffix;
- Mamba-2 (archs/recurrent.py mamba2_tensor): in_proj rows [z | x | B | C | dt] (d_ssm, d_ssm, groups * state,
  groups * state, heads) -> ssm_in, conv1d (+ bias) -> ssm_conv1d, dt_bias, A = -exp(A_log), D, out_proj; the
  gated RMS norm only with `mamba_rms_norm` (applied after the gate, as llama.cpp does: norm_before_gate false);
  keys ssm.conv_kernel / state_size / group_count / inner_size (`mamba_d_ssm`) / time_step_rank (heads);
- Falcon-H1's muP multipliers, which llama.cpp has no keys for, folded into the weights as llama.cpp's converter
  does: embedding_multiplier into token_embd, lm_head_multiplier into output, mlp_multipliers into ffn_gate and
  ffn_down, attention_in_multiplier into attn_q/k/v (key_multiplier too into attn_k), attention_out_multiplier
  into attn_output, ssm_in_multiplier and the five ssm_multipliers (one per in_proj row block) into ssm_in,
  ssm_out_multiplier into ssm_out.
Tied embeddings with different embedding / lm_head multipliers cannot be one tensor: the output projection is
then written as its own tensor (the embeddings times lm_head_multiplier), where llama.cpp's converter leaves it
to llama.cpp to reuse token_embd with the embedding multiplier in it.
"""
from __future__ import annotations

import gguf
import numpy as np

from ggufkit.archs import OutputTensor
from ggufkit.archs.llama import Llama
from ggufkit.archs.recurrent import default_time_step_limit, mamba2_a, mamba2_tensor


class _Prepared:
    """The checkpoint with the Mamba-2 tensors in llama.cpp's shapes."""

    def __init__(self, ckpt, n_group: int, untie: bool):
        self.weights_file = ckpt.weights_file
        self.tensors = dict(mamba2_tensor(name, ref, n_group) for name, ref in ckpt.tensors.items())
        if untie and "lm_head.weight" not in self.tensors and "model.embed_tokens.weight" in self.tensors:
            self.tensors["lm_head.weight"] = self.tensors["model.embed_tokens.weight"]  # scaled on its own


class FalconH1(Llama):
    model_type = "falcon_h1"
    gguf_arch = gguf.MODEL_ARCH.FALCON_H1
    rope_types = ("default",)

    def __init__(self, config: dict, config_path):
        super().__init__(config, config_path)
        self.d_ssm = self.hparam("mamba_d_ssm", int, default=None) or \
            self.hparam("mamba_expand", int, default=2) * self.n_embd
        self.n_ssm_head = self.hparam("mamba_n_heads", int)
        self.n_group = self.hparam("mamba_n_groups", int, default=1)
        self.d_state = self.hparam("mamba_d_state", int)
        self.d_conv = self.hparam("mamba_d_conv", int, default=4)
        # tied embeddings with two different multipliers: output.weight is written separately (module docstring)
        self.untie = self.tied_embeddings and self.multiplier("embedding_multiplier") != \
            self.multiplier("lm_head_multiplier")
        if self.untie:
            self.tied_embeddings = False

    def multiplier(self, key: str) -> float:
        value = self.config.get(key)
        return 1.0 if value is None else float(value)

    def unhandled_features(self) -> list[str]:
        found = super().unhandled_features()
        c = self.config
        for key in ("mamba_proj_bias", "projectors_bias"):
            if c.get(key):
                found.append(f"{key}=true (llama.cpp's falcon-h1 folds the multipliers into bias-free weights)")
        limit = c.get("time_step_limit")
        if limit is not None and not default_time_step_limit(limit):
            found.append(f"time_step_limit={limit!r} (llama.cpp's Mamba-2 scan does not clamp the time step)")
        if c.get("mamba_rms_norm") and c.get("mamba_norm_before_gate", True):
            found.append("mamba_rms_norm with mamba_norm_before_gate=true (llama.cpp norms after the gate)")
        for key, n in (("mlp_multipliers", 2), ("ssm_multipliers", 5)):
            if c.get(key) is not None and (not isinstance(c[key], list) or len(c[key]) != n):
                found.append(f"{key}={c[key]!r} (expected {n} numbers)")
        return found

    # ---- GGUF metadata

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_ssm_conv_kernel(self.d_conv)
        w.add_ssm_inner_size(self.d_ssm)
        w.add_ssm_state_size(self.d_state)
        w.add_ssm_time_step_rank(self.n_ssm_head)
        w.add_ssm_group_count(self.n_group)

    # ---- tensors

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        e, d, gs, nh = self.n_embd, self.d_ssm, self.n_group * self.d_state, self.n_ssm_head
        shapes: dict[str, tuple[int, ...]] = {}
        for name, shape in super().expected_shapes().items():
            if name.endswith(".ffn_norm.weight"):
                name = name[: -len(".weight")]  # llama.cpp's falcon-h1 loads blk.N.ffn_norm (gguf-py maps it so)
            shapes[name] = shape
            if name.endswith(".attn_norm.weight"):
                b = name.rsplit(".", 2)[0]
                shapes |= {f"{b}.ssm_in.weight": (2 * d + 2 * gs + nh, e),
                           f"{b}.ssm_conv1d.weight": (d + 2 * gs, self.d_conv)}
                if self.config.get("mamba_conv_bias", True):
                    shapes[f"{b}.ssm_conv1d.bias"] = (d + 2 * gs,)
                shapes |= {f"{b}.ssm_dt.bias": (nh,), f"{b}.ssm_a": (nh, 1), f"{b}.ssm_d": (nh, 1)}
                if self.config.get("mamba_rms_norm"):
                    shapes[f"{b}.ssm_norm.weight"] = (self.n_group, d // self.n_group)
                shapes[f"{b}.ssm_out.weight"] = (e, d)
        return shapes

    def tensors(self, ckpt) -> list:
        return super().tensors(_Prepared(ckpt, self.n_group, self.untie))

    def row_scales(self, name: str) -> tuple:
        """The multipliers folded into a tensor, applied one after the other in f32 in the order llama.cpp's
        converter applies them (so the F32 files agree to the bit): scalars, or an array with one value per row
        (ssm_in's row blocks). Empty for none."""
        c, m = self.config, self.multiplier
        mlp = c.get("mlp_multipliers") or [1.0, 1.0]
        kind = name.split(".")[-2] if name.endswith((".weight", ".bias")) else name.split(".")[-1]
        if name == "token_embd.weight":
            return (m("embedding_multiplier"),)
        if name == "output.weight":
            return (m("lm_head_multiplier"),)
        if not name.endswith(".weight"):
            return ()
        if kind == "ssm_in":
            d, gs = self.d_ssm, self.n_group * self.d_state
            zxbcdt = [float(x) for x in (c.get("ssm_multipliers") or [1.0] * 5)]
            sizes = (d, d, gs, gs, self.n_ssm_head)
            return (m("ssm_in_multiplier"), np.repeat(np.array(zxbcdt, dtype=np.float32), sizes))  # (rows,) f32
        return {"ffn_gate": (float(mlp[0]),), "ffn_down": (float(mlp[1]),),
                "attn_q": (m("attention_in_multiplier"),),
                "attn_k": (m("key_multiplier"), m("attention_in_multiplier")),
                "attn_v": (m("attention_in_multiplier"),), "attn_output": (m("attention_out_multiplier"),),
                "ssm_out": (m("ssm_out_multiplier"),)}.get(kind, ())

    def transform(self, out: OutputTensor) -> OutputTensor:
        if out.name.endswith(".ssm_a"):
            out.read_rows = mamba2_a(out.read_rows)
            return out
        scales = self.row_scales(out.name)
        if not scales:
            return out  # NEOX rope: no Q/K reordering
        source = out.read_rows

        def read_rows(a: int, b: int) -> np.ndarray:
            x = source(a, b)  # (b-a, cols) f32
            for s in scales:
                x = x * (s[a:b, None] if isinstance(s, np.ndarray) else np.float32(s))
            return x

        out.read_rows = read_rows
        return out
