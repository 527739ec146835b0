"""llama-quantize's controls on `ggufkit convert`: a checkpoint converted with them equals llama.cpp quantizing
the F32 GGUF of the same checkpoint with the same options (llama_model_quantize for its params, the
llama-quantize program for an imatrix file with filters and --override-kv), and --split-max-* writes what
llama-gguf-split makes of the single file."""
from __future__ import annotations

import pytest
from convert_fixtures import converted
from gguf import GGMLQuantizationType as T
from quantize_ref import llama_quantize, run_tool
from test_quantize_gguf import controls_for, first_difference

from ggufkit.cli import main
from ggufkit.conversion import convert

CASES = [
    ("q4_k_m", {"tensor_types": (("attn_v", T.Q8_0), (r"blk\.0\.ffn_down", T.Q2_K))}),
    ("q3_k_m", {"pure": True, "output_type": T.Q8_0}),
    ("q5_k_s", {"embd_type": T.Q6_K, "leave_output": True}),
]


@pytest.mark.parametrize("scheme,opts", CASES, ids=[c[0] for c in CASES])
def test_convert_with_controls_equals_llama(tiny_checkpoint, scheme, opts, tmp_path):
    src = tiny_checkpoint("llama-untied")
    ref = tmp_path / "ref.gguf"
    llama_quantize(converted(src, "f32"), ref, scheme, **opts)
    ours = convert(src, tmp_path / "ours.gguf", scheme=scheme, quiet=True, controls=controls_for(opts))
    assert ours.read_bytes() == ref.read_bytes(), first_difference(ours.read_bytes(), ref.read_bytes())


def test_convert_cli_imatrix_filters_and_kv_equal_llama_quantize_program(tiny_checkpoint, tmp_path, monkeypatch):
    import numpy as np

    from ggufkit.quant.imatrix import Imatrix, ImatrixEntry
    from ggufkit.sources.gguf import validate_gguf

    src = tiny_checkpoint("llama-untied")
    f32 = converted(src, "f32")
    rng = np.random.default_rng(5)
    im = Imatrix(datasets=["calib.txt"], chunk_count=3, chunk_size=64)
    for t in validate_gguf(f32).tensors:
        if len(t.shape) == 2 and "blk." in t.name:
            im.entries[t.name] = ImatrixEntry(rng.uniform(0.1, 3, (1, t.shape[0])).astype(np.float32),
                                              np.array([192.0]))
    im.save(tmp_path / "m.imatrix.gguf")
    (tmp_path / "types.txt").write_text("ffn_up=q5_k attn_q=q6_k\n")
    opts = ["--imatrix", "m.imatrix.gguf", "--include-weights", "attn", "--include-weights", "ffn_down",
            "--tensor-type-file", "types.txt", "--override-kv", "general.name=str:tiny-controlled"]
    run_tool("llama-quantize", *opts, f32, "ref.gguf", "Q4_K_S", "2", cwd=tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["convert", str(src), *opts, "--scheme", "q4_k_s", "-o", "ours.gguf", "-q"]) == 0
    a, b = (tmp_path / "ours.gguf").read_bytes(), (tmp_path / "ref.gguf").read_bytes()
    assert a == b, first_difference(a, b)
    assert validate_gguf(tmp_path / "ours.gguf").metadata["quantize.imatrix.entries_count"] == \
        sum(("attn" in n or "ffn_down" in n) for n in im.entries)


def test_convert_split_equals_gguf_split(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("llama-untied")
    single = converted(src, "q8_0")
    assert main(["convert", str(src), "--scheme", "q8_0", "-o", str(tmp_path / "ours.gguf"),
                 "--split-max-tensors", "7", "-q"]) == 0
    run_tool("llama-gguf-split", "--split-max-tensors", "7", single, tmp_path / "ref")
    ours, ref = sorted(tmp_path.glob("ours-*")), sorted(tmp_path.glob("ref-*"))
    assert len(ours) == len(ref) > 2
    for a, b in zip(ours, ref):
        assert a.read_bytes() == b.read_bytes(), a.name
