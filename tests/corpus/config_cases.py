"""Malformed config.json: each case is the tiny llama checkpoint directory with a broken config.json.

`expect` is a substring of ggufkit's one-line error; the file it names is config.json, except where the problem
only shows against the weights (a size that does not match the tensors).
"""
from __future__ import annotations

from pathlib import Path

from corpus.checkpoint_dir import checkpoint, tiny_config
from corpus.framework import case

CONFIG = "config.json"
_REMOVE = object()


def config_case(name: str, expect: str, **changes):
    """Register the tiny config with `changes` applied (a value of _REMOVE deletes the key)."""
    def write(dest: Path) -> None:
        cfg = tiny_config()
        for key, value in changes.items():
            if value is _REMOVE:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        checkpoint(dest, {CONFIG: cfg})
    case("config", name, expect)(write)


def raw_config_case(name: str, expect: str, content: bytes | None):
    def write(dest: Path) -> None:
        checkpoint(dest, {CONFIG: content})
    case("config", name, expect)(write)


# ---- not a config at all

raw_config_case("missing", "missing config.json", None)
raw_config_case("empty", "config.json: not valid JSON", b"")
raw_config_case("not_json", "config.json: not valid JSON", b'{"model_type": "llama", hidden_size: 256}')
raw_config_case("not_utf8", "config.json: not valid JSON", b'{"model_type": "\xff\xfe"}')
raw_config_case("not_object", "config.json: not a JSON object", b'["llama"]')
raw_config_case("deeply_nested", "config.json: not valid JSON", b'{"a": ' * 50_000 + b"1" + b"}" * 50_000)

# ---- model_type

config_case("unknown_model_type", "model_type 'gpt_neox' is not supported", model_type="gpt_neox")
config_case("no_model_type", "model_type None is not supported", model_type=_REMOVE)
config_case("model_type_not_string", "model_type ['llama'] is not supported", model_type=["llama"])

# ---- missing keys, wrong types

config_case("missing_hidden_size", "config.json: missing hidden_size", hidden_size=_REMOVE)
config_case("missing_num_hidden_layers", "config.json: missing num_hidden_layers", num_hidden_layers=_REMOVE)
config_case("missing_vocab_size", "config.json: missing vocab_size", vocab_size=_REMOVE)
config_case("hidden_size_string", "hidden_size = '256' is not a valid positive integer", hidden_size="256")
config_case("hidden_size_fraction", "hidden_size = 256.5 is not a valid positive integer", hidden_size=256.5)
config_case("hidden_size_bool", "hidden_size = True is not a valid positive integer", hidden_size=True)
config_case("heads_zero", "num_attention_heads = 0 is not a valid positive integer", num_attention_heads=0)
config_case("layers_negative", "num_hidden_layers = -1 is not a valid positive integer", num_hidden_layers=-1)
config_case("rms_eps_text", "rms_norm_eps = 'tiny' is not a valid float", rms_norm_eps="tiny")
config_case("heads_not_multiple_of_kv", "num_attention_heads 4 is not a multiple of num_key_value_heads 3",
            num_key_value_heads=3)
config_case("rope_parameters_not_object", "config.json: rope_parameters = 'fast' is not an object",
            rope_parameters="fast")
config_case("rope_theta_text", "config.json: rope_theta = 'big' is not a number",
            rope_parameters={"rope_theta": "big", "rope_type": "default"})

# ---- absurd sizes: none may size an allocation or a loop

config_case("hidden_size_1e12", "hidden_size = 1000000000000 is absurd", hidden_size=10**12)
config_case("vocab_size_1e12", "vocab_size = 1000000000000 is absurd", vocab_size=10**12)
config_case("layers_1e9", "num_hidden_layers = 1000000000 is more than llama.cpp supports (512)",
            num_hidden_layers=10**9)
config_case("context_length_2e40", "max_position_embeddings = 1099511627776 is absurd",
            max_position_embeddings=1 << 40)
config_case("hidden_size_not_matching_weights", "the config implies [49152, 512]", hidden_size=512)
config_case("mixture_of_experts", "num_local_experts=8 (mixture of experts)", num_local_experts=8)
