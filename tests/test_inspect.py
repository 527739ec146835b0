"""`ggufkit inspect` on the demo package's real Q4_1 GGUF, every value cross-checked with llama.cpp (through
llama-cpp-python) and the HF config; and every malformed corpus file gives a one-line error with exit 1."""
from __future__ import annotations

import ctypes
import json
import subprocess
import sys

import pytest
from corpus.framework import load_cases, write_corpus
from test_gguf_file import demo_gguf

from ggufkit.cli import main
from ggufkit.sources.gguf import GGUFArray, validate_gguf

GGUF_CASES = load_cases(["gguf"])


@pytest.fixture(scope="module")
def llama():
    """The demo GGUF loaded by llama.cpp itself (tiny context: only its metadata and sizes are used)."""
    import llama_cpp

    model = llama_cpp.Llama(str(demo_gguf()), n_ctx=32, n_threads=1, verbose=False)
    yield model
    model.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return {c.name: path for c, path in write_corpus(tmp_path_factory.mktemp("corpus"), kinds=["gguf"])}


def run_inspect(capsys, *args) -> tuple[int, str, str]:
    code = main(["inspect", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def llama_metadata_string(value) -> str:
    """A value formatted the way llama.cpp's llama_model_meta_val_str prints it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:f}"
    return str(value)


def test_every_scalar_key_equals_llama_cpp_metadata(llama):
    ours = validate_gguf(demo_gguf()).metadata
    scalars = {k: llama_metadata_string(v) for k, v in ours.items() if not isinstance(v, GGUFArray)}
    assert scalars == llama.metadata


def test_json_summary_matches_llama_cpp(capsys, llama):
    import llama_cpp

    code, out, err = run_inspect(capsys, demo_gguf(), "--json")
    assert code == 0 and err == ""
    s = json.loads(out)
    meta = llama.metadata
    assert s["architecture"] == meta["general.architecture"] == "llama"
    desc = ctypes.create_string_buffer(128)
    llama_cpp.llama_model_desc(llama.model, desc, len(desc))
    assert desc.value.decode().endswith(" " + s["file_type"])  # "llama 256M Q4_1"
    h = s["hyperparameters"]
    for key in ("context_length", "embedding_length", "block_count", "feed_forward_length",
                "attention.head_count", "attention.head_count_kv", "rope.dimension_count"):
        assert str(h[key]) == meta[f"llama.{key}"], key
    assert h["rope.freq_base"] == pytest.approx(float(meta["llama.rope.freq_base"]))
    t = s["tokenizer"]
    assert t["vocab_size"] == llama.n_vocab()
    assert (t["bos_token_id"], t["eos_token_id"]) == (llama.token_bos(), llama.token_eos())
    assert t["bos_token"].encode() == llama.detokenize([llama.token_bos()], special=True)
    assert t["eos_token"].encode() == llama.detokenize([llama.token_eos()], special=True)
    assert t["chat_template"] is True and "tokenizer.chat_template" in meta
    assert s["parameters"] == llama_cpp.llama_model_n_params(llama.model)
    assert s["tensor_bytes"] == llama_cpp.llama_model_size(llama.model)
    assert s["bits_per_weight"] == pytest.approx(8 * llama_cpp.llama_model_size(llama.model)
                                                 / llama_cpp.llama_model_n_params(llama.model), abs=1e-4)
    hist = s["tensor_types"]
    assert sum(row["count"] for row in hist.values()) == s["tensor_count"]
    assert sum(row["bytes"] for row in hist.values()) == s["tensor_bytes"]
    assert s["file_size"] == demo_gguf().stat().st_size
    assert "tensors" not in s


def test_tensor_list_shapes_follow_the_hf_config(capsys, demo_dir):
    """The demo checkpoint (models/smollm2-135m-instruct) was built from this GGUF: its config.json is an
    independent statement of the shapes."""
    c = json.loads((demo_dir / "config.json").read_text())
    code, out, _ = run_inspect(capsys, demo_gguf(), "--json", "--tensors")
    assert code == 0
    tensors = {t["name"]: t for t in json.loads(out)["tensors"]}
    head_dim = c["hidden_size"] // c["num_attention_heads"]
    assert len(tensors) == 2 + 9 * c["num_hidden_layers"]  # token_embd, output_norm; 9 per layer (tied output)
    assert tensors["blk.0.ffn_up.weight"]["shape"] == [c["hidden_size"], c["intermediate_size"]]
    assert tensors["token_embd.weight"]["shape"] == [c["hidden_size"], c["vocab_size"]]
    assert tensors["blk.0.attn_k.weight"]["shape"] == [c["hidden_size"], head_dim * c["num_key_value_heads"]]
    assert tensors["blk.29.attn_norm.weight"]["shape"] == [c["hidden_size"]]
    assert {t["type"] for t in tensors.values()} == {"Q4_1", "Q8_0", "F32"}


def test_text_report(capsys):
    code, out, err = run_inspect(capsys, demo_gguf(), "--tensors")
    assert code == 0 and err == ""
    assert "architecture      llama" in out and "file type         Q4_1" in out
    assert "heads             9 (kv 3)" in out
    assert "49152 tokens" in out and "bos 1 '<|im_start|>'" in out and "chat template: yes" in out
    assert "5.74 bits per weight" in out
    assert "blk.29.ffn_down.weight" in out


@pytest.mark.parametrize("case", GGUF_CASES, ids=[c.name for c in GGUF_CASES])
def test_corpus_file_gives_one_line_error(case, corpus, capsys):
    path = corpus[case.name]
    code, out, err = run_inspect(capsys, path, "--json")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: ") and case.expect in err, err


def cut_copy(src, dest, size: int):
    with open(src, "rb") as f:
        dest.write_bytes(f.read(size))
    return dest


@pytest.mark.parametrize("where", ["key-values", "tensor infos"])
def test_truncated_real_file(where, tmp_path, capsys):
    src = demo_gguf()
    size = 5_000 if where == "key-values" else validate_gguf(src).data_offset - 10
    cut = cut_copy(src, tmp_path / "cut.gguf", size)
    code, out, err = run_inspect(capsys, cut)
    assert code == 1 and out == "" and err.startswith(f"error: {cut}: ") and err.count("\n") == 1, err


def test_truncated_real_file_through_the_console_entry_point(tmp_path):
    """The real demo file cut in its tensor data, run as a user would: exit 1, one line, no traceback."""
    src = demo_gguf()
    cut = cut_copy(src, tmp_path / "cut.gguf", validate_gguf(src).data_offset + 40_000_000)
    proc = subprocess.run([sys.executable, "-m", "ggufkit.cli", "inspect", str(cut)], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 1 and proc.stdout == "", proc
    assert proc.stderr.startswith(f"error: {cut}: tensor ") and "beyond the end of the file" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
