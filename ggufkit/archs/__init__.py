"""Model architectures, one module per Hugging Face `model_type` (ggufkit/archs/<model_type>.py).

Each module defines a subclass of `Architecture` with a `model_type` class attribute; defining it registers it.
A derived family subclasses its parent and overrides hooks; the base holds what every decoder-only transformer
shares (the config fields llama.cpp needs, tensor renames through gguf-py's TensorNameMap, shape checks), and
never branches on the architecture.

    arch = for_config(config, config_path)      # InputError for an unknown model_type or unhandled feature
    arch.write_hparams(writer)                  # GGUF hyperparameter keys
    arch.tensors(checkpoint)                    # [OutputTensor] in file order, validated against the config
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import gguf
import numpy as np

from ggufkit.errors import InputError

_MISSING = object()
MAX_LAYERS = 512  # llama.cpp's LLAMA_MAX_LAYERS: it cannot load a model with more blocks
MAX_U32 = 2**32 - 1
# llama.cpp graphs read (src/models/<arch>.cpp, 0.3.36) that multiply every linear weight's matmul by its
# optional `.scale` companion (build_qkv, build_ffn, wo_s, output_s): only there may a lossless tensor need one
TENSOR_SCALE_ARCHS = frozenset({"llama"})


@dataclass
class OutputTensor:
    """A tensor as it goes into the GGUF file, produced lazily in row blocks.

    read_rows(start, stop) -> (stop-start, cols) f32; a 1-D tensor is a single row. Row blocks must start on a
    multiple of row_align (e.g. one attention head, for a permutation that works head by head)."""
    name: str
    shape: tuple[int, ...]  # numpy order: (rows, cols) or (n,)
    read_rows: Callable[[int, int], np.ndarray]
    file: Path | None = None  # where the data comes from, for error messages
    source_name: str = ""
    row_align: int = 1
    source_bytes: int = 0
    source_quant: str = ""  # what a pre-quantized source held, e.g. "gptq int4 g128 sym" ("" for floats)
    # the lossless path: (start, stop) -> (stop-start, row_bytes) u8 blocks of type `lossless`, no rounding
    read_blocks: Callable[[int, int], np.ndarray] | None = None
    lossless: object = None  # gguf.GGMLQuantizationType or None
    # a factor llama.cpp multiplies the lossless tensor's matmul by (NVFP4's global scale): a `.scale` companion
    lossless_scale: float | None = None

    @property
    def rows(self) -> int:
        """Rows as the file lays them out: a 3-D (n_expert, rows, cols) tensor is n_expert * rows rows."""
        n = 1
        for d in self.shape[:-1]:
            n *= d
        return n

    @property
    def cols(self) -> int:
        return self.shape[-1]


@dataclass
class RopeConfig:
    """RoPE settings read from either config style: transformers 5 `rope_parameters`, or transformers 4
    top-level `rope_theta` + `rope_scaling` (where the type key was `type` in older files)."""
    theta: float
    type: str = "default"
    params: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict, config_path: Path | None = None) -> RopeConfig:
        for key in ("rope_scaling", "rope_parameters"):  # untrusted file: say which key is malformed
            if config.get(key) is not None and not isinstance(config[key], dict):
                raise InputError(f"{key} = {config[key]!r} is not an object", config_path)
        params = dict(config.get("rope_scaling") or {})
        new_style = config.get("rope_parameters") or {}
        if isinstance(new_style.get("full_attention"), dict):  # per-layer-type form
            new_style = new_style["full_attention"]
        params.update(new_style)
        theta = params.pop("rope_theta", config.get("rope_theta", 10000.0))
        rope_type = params.pop("rope_type", params.pop("type", "default")) or "default"
        try:
            theta = float(theta)
        except (TypeError, ValueError):
            raise InputError(f"rope_theta = {theta!r} is not a number", config_path) from None
        return cls(theta, str(rope_type).lower(), params)


class Architecture:
    """Base of all architectures: a decoder-only transformer with the usual HF config fields."""
    model_type: ClassVar[str] = ""  # the HF config.json model_type this class handles (registry key)
    gguf_arch: ClassVar[gguf.MODEL_ARCH]
    # HF tensors that carry no weights llama.cpp needs (buffers some exporters save)
    ignored_tensors: ClassVar[tuple[str, ...]] = (r".*\.rotary_emb\.inv_freq",)
    # the llama.cpp tokenizer a SentencePiece-style BPE tokenizer.json becomes: "llama" (pieces scored by merge
    # rank) or "gemma4" (llama.cpp's BPE on "▁" pieces with merges)
    spm_bpe_tokenizer: ClassVar[str] = "llama"

    registry: ClassVar[dict[str, type[Architecture]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("model_type"):
            Architecture.registry[cls.model_type] = cls

    def __init__(self, config: dict, config_path: Path):
        self.config = config
        self.config_path = Path(config_path)
        self.n_layer = self.hparam("num_hidden_layers", int)
        self.n_embd = self.hparam("hidden_size", int)
        self.n_head = self.hparam("num_attention_heads", int)
        self.n_head_kv = self.hparam("num_key_value_heads", int, default=self.n_head)
        self.head_dim = self.hparam("head_dim", int, default=None) or self.n_embd // self.n_head
        self.n_ff = self.hparam("intermediate_size", int)
        self.vocab_size = self.hparam("vocab_size", int)
        self.n_ctx = self.hparam("max_position_embeddings", int)
        self.rms_eps = self.hparam("rms_norm_eps", float)
        self.tied_embeddings = bool(config.get("tie_word_embeddings", False))
        self.rope = RopeConfig.from_config(config, self.config_path)
        if self.n_layer > MAX_LAYERS:  # an absurd count would size the tensor-name tables below
            self.fail(f"num_hidden_layers = {self.n_layer} is more than llama.cpp supports ({MAX_LAYERS})")
        if self.n_head % self.n_head_kv:
            self.fail(f"num_attention_heads {self.n_head} is not a multiple of num_key_value_heads "
                      f"{self.n_head_kv}")
        features = self.unhandled_features()
        if features:
            self.fail(f"{self.model_type}: unsupported config feature(s): {'; '.join(features)}")

    # ---- config reading

    def fail(self, message: str):
        raise InputError(message, self.config_path)

    def hparam(self, key: str, kind: type, default=_MISSING):
        value = self.config.get(key, _MISSING)
        if value is _MISSING or value is None:
            if default is _MISSING:
                self.fail(f"missing {key}")
            return default
        try:
            if kind is int and (isinstance(value, bool) or int(value) != value or value <= 0):
                raise ValueError
            if kind is int and value > MAX_U32:  # GGUF stores these sizes as u32
                self.fail(f"{key} = {value} is absurd (more than 2^32 - 1)")
            value = kind(value)
        except (TypeError, ValueError):
            self.fail(f"{key} = {value!r} is not a valid {'positive integer' if kind is int else kind.__name__}")
        return value

    def unhandled_features(self) -> list[str]:
        """Config features this architecture cannot convert faithfully (an InputError names them)."""
        found = self.expert_features()
        if self.config.get("quantization_config"):
            from ggufkit.sources.prequant import unsupported

            reason = unsupported(self.config["quantization_config"])  # None: sources/prequant.py reads it
            if reason:
                found.append(f"quantization_config ({reason})")
        return found

    def expert_features(self) -> list[str]:
        """A dense architecture refuses expert counts; archs/moe.py's MoE mixin checks them instead."""
        return [f"{key}={self.config[key]} (mixture of experts)"
                for key in ("num_local_experts", "num_experts", "n_routed_experts") if self.config.get(key)]

    # ---- GGUF metadata

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.gguf_arch]

    def head_count_kv(self) -> int | list[int]:
        """KV heads as written: one count, or one per layer (hybrids write 0 for their recurrent layers)."""
        return self.n_head_kv

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        self.write_sizes(w)
        if self.config.get("head_dim"):  # as llama.cpp's converter: only when the config states it
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)

    def write_sizes(self, w: gguf.GGUFWriter) -> None:
        """The sizes every family writes: vocabulary, context, widths, blocks, heads, the norm's epsilon."""
        w.add_vocab_size(self.vocab_size)
        w.add_context_length(self.n_ctx)
        w.add_embedding_length(self.n_embd)
        w.add_block_count(self.n_layer)
        w.add_feed_forward_length(self.n_ff)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.head_count_kv())
        w.add_layer_norm_rms_eps(self.rms_eps)

    # ---- tensors

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """GGUF tensor name -> numpy shape the config implies, in the order tensors go into the file."""
        e, hd, v = self.n_embd, self.head_dim, self.vocab_size
        shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (v, e)}
        for i in range(self.n_layer):
            shapes |= {
                f"blk.{i}.attn_norm.weight": (e,),
                f"blk.{i}.attn_q.weight": (self.n_head * hd, e),
                f"blk.{i}.attn_k.weight": (self.n_head_kv * hd, e),
                f"blk.{i}.attn_v.weight": (self.n_head_kv * hd, e),
                f"blk.{i}.attn_output.weight": (e, self.n_head * hd),
                f"blk.{i}.ffn_norm.weight": (e,),
                f"blk.{i}.ffn_gate.weight": (self.n_ff, e),
                f"blk.{i}.ffn_up.weight": (self.n_ff, e),
                f"blk.{i}.ffn_down.weight": (e, self.n_ff),
            }
        shapes["output_norm.weight"] = (e,)
        if not self.tied_embeddings:
            shapes["output.weight"] = (v, e)
        return shapes

    def gguf_name(self, name_map: gguf.TensorNameMap, hf_name: str) -> str | None:
        """Hook: the GGUF name of a checkpoint tensor (gguf-py's tensor map by default; None if it has none)."""
        return name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))

    def skip_tensor(self, hf_name: str, gguf_name: str | None) -> bool:
        """True for source tensors that are deliberately not written."""
        if any(re.fullmatch(p, hf_name) for p in self.ignored_tensors):
            return True
        # Tied embeddings: llama.cpp reads the output projection from token_embd when output.weight is absent.
        return self.tied_embeddings and gguf_name == "output.weight"

    def transform(self, out: OutputTensor) -> OutputTensor:
        """Hook: rewrite a tensor on its way out (e.g. reorder rows). The base passes it through."""
        return out

    def extra_tensors(self) -> list[OutputTensor]:
        """Hook: tensors computed from the config rather than read (written before the model's own)."""
        return []

    def tensors(self, ckpt) -> list[OutputTensor]:
        """The file's tensors: renamed, checked against the config (every one present, right shape, float
        dtype), transformed, in file order: extras, token_embd, blk.0.* ... blk.N.*, output_norm, output."""
        name_map = gguf.get_tensor_name_map(self.gguf_arch, self.n_layer)
        expected = self.expected_shapes()
        found: dict[str, OutputTensor] = {}
        for hf_name, ref in ckpt.tensors.items():
            gguf_name = self.gguf_name(name_map, hf_name)
            if self.skip_tensor(hf_name, gguf_name):
                continue
            if gguf_name is None or gguf_name not in expected:
                raise InputError(f"unexpected tensor {hf_name} for a {self.model_type} model with "
                                 f"{self.n_layer} layers", ref.file)
            if ref.shape != expected[gguf_name]:
                raise InputError(f"tensor {hf_name} has shape {list(ref.shape)}, the config implies "
                                 f"{list(expected[gguf_name])}", ref.file)
            ref.check_dtype()
            t = OutputTensor(gguf_name, ref.shape, ref.read_rows, ref.file, hf_name, source_bytes=ref.nbytes,
                             source_quant=getattr(ref, "source", ""))
            scaled = getattr(ref, "lossless_scale", None) is not None
            if getattr(ref, "lossless", None) is not None and (not scaled or self.arch_name in TENSOR_SCALE_ARCHS):
                t.lossless = ref.lossless
                t.read_blocks = lambda a, b, ref=ref: ref.read_blocks(a, b, ref.lossless)
                t.lossless_scale = getattr(ref, "lossless_scale", None)
            found[gguf_name] = _keep_lossless_if_rows_only(t, self.transform)
        for gguf_name in expected:
            if gguf_name not in found:
                raise InputError(f"tensor {gguf_name} is missing (no tensor in the checkpoint maps to it)",
                                 ckpt.weights_file)
        return self.extra_tensors() + [found[n] for n in expected]

    def model_info(self):
        from ggufkit.plan.schemes import ModelInfo

        return ModelInfo(arch=self.arch_name, n_layer=self.n_layer, n_head=self.n_head,
                         n_head_kv=self.n_head_kv, n_embd=self.n_embd)


class RenamedCheckpoint:
    """A checkpoint seen through a renaming, for tensors a family stores under names gguf-py's map does not know
    (a bare parameter without `.weight`, a buffer that is a bias): `rename(name, ref) -> (name, ref)` per tensor."""

    def __init__(self, ckpt, rename: Callable):
        self.weights_file = ckpt.weights_file
        self.tensors = dict(rename(name, ref) for name, ref in ckpt.tensors.items())


def _keep_lossless_if_rows_only(t: OutputTensor, transform) -> OutputTensor:
    """Apply an architecture's transform. A transform that rewrites values (not just row order) would make the
    source's blocks wrong: its read_blocks is dropped unless it declares itself a row permutation (row_perm)."""
    if t.read_blocks is None:
        return transform(t)
    reader, blocks = t.read_rows, t.read_blocks
    out = transform(t)
    if out.read_rows is not reader and out.read_blocks is blocks:
        out.read_blocks, out.lossless = None, None
    return out


def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def supported_model_types() -> list[str]:
    _load_all()
    return sorted(Architecture.registry)


def for_config(config: dict, config_path: Path) -> Architecture:
    """The Architecture for a config.json; InputError naming the supported model_types if there is none."""
    _load_all()
    model_type = config.get("model_type")
    cls = Architecture.registry.get(model_type) if isinstance(model_type, str) else None
    if cls is None:
        raise InputError(f"model_type {model_type!r} is not supported (supported: "
                         f"{', '.join(supported_model_types())})", config_path)
    return cls(config, config_path)

