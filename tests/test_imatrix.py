"""Importance matrices: computed from the HF model, written/read in llama.cpp's two formats, and used by convert
exactly as llama-quantize uses them (same bytes as llama_model_quantize given the same imatrix file)."""
from __future__ import annotations

import ctypes
import struct

import gguf
import numpy as np
import pytest
from click.testing import CliRunner
from convert_fixtures import OUT_DIR, SHAKESPEARE, converted

from ggufkit.cli import cli
from ggufkit.conversion import convert
from ggufkit.quant import imatrix as imatrix_files
from ggufkit.quant.imatrix_collect import compute


@pytest.fixture(scope="module")
def tiny_llama(tiny_checkpoint):
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def tiny_imatrix(tiny_llama):
    im = compute(tiny_llama, SHAKESPEARE, ctx=128, chunks=3, progress=False)
    return im.save(OUT_DIR / "tiny-llama.imatrix.gguf")


def independent_activation_sums(model_dir, ids):
    """Σ x^2 of the inputs of layer 0's q/k/v projections, by recomputing them by hand from the HF weights:
    the input is RMSNorm(embedding) * input_layernorm.weight (no hooks, no ggufkit code)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    emb = model.model.embed_tokens.weight[torch.tensor(ids)]  # (tokens, hidden)
    eps = model.config.rms_norm_eps
    normed = emb * torch.rsqrt(emb.pow(2).mean(-1, keepdim=True) + eps) * model.model.layers[0].input_layernorm.weight
    return normed.double().pow(2).sum(0).detach().numpy()


def test_collected_sums_match_a_hand_computation(tiny_llama):
    """Layer 0's attention input is computable without running the model: the collector must agree."""
    from transformers import AutoTokenizer

    im = compute(tiny_llama, SHAKESPEARE, ctx=64, chunks=2, progress=False)
    text = SHAKESPEARE.read_text(encoding="utf-8", errors="replace")
    ids = AutoTokenizer.from_pretrained(tiny_llama)(text)["input_ids"][:128]
    expected = independent_activation_sums(tiny_llama, ids)
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"):
        e = im.entries[name]
        assert e.counts.tolist() == [128.0]
        np.testing.assert_allclose(e.sums[0], expected, rtol=2e-4)
    assert "output.weight" not in im.entries  # llama-imatrix skips it unless asked
    assert im.chunk_count == 2 and im.chunk_size == 64


def test_gguf_file_has_llama_cpp_layout(tiny_imatrix):
    """Read back with gguf-py (independent reader): the keys and tensor layout llama.cpp's loader expects."""
    r = gguf.GGUFReader(tiny_imatrix)
    kv = {f.name: f for f in r.fields.values()}
    assert bytes(kv["general.type"].parts[-1]).decode() == "imatrix"
    assert int(kv["imatrix.chunk_count"].parts[-1][0]) == 3
    assert int(kv["imatrix.chunk_size"].parts[-1][0]) == 128
    tensors = {t.name: t for t in r.tensors}
    sums, counts = tensors["blk.1.ffn_down.weight.in_sum2"], tensors["blk.1.ffn_down.weight.counts"]
    assert sums.tensor_type == gguf.GGMLQuantizationType.F32 and list(sums.shape) == [512, 1]
    assert list(counts.shape) == [1, 1] and float(counts.data.reshape(-1)[0]) == 3 * 128


def test_legacy_dat_round_trip_gives_the_same_weights(tiny_imatrix):
    im = imatrix_files.load(tiny_imatrix)
    dat = im.save(OUT_DIR / "tiny-llama.imatrix.dat")
    raw = dat.read_bytes()
    (n_entries,) = struct.unpack_from("<i", raw)
    assert n_entries == len(im.entries)
    back = imatrix_files.load(dat)
    assert back.legacy and back.chunk_count == 3 and back.datasets == im.datasets
    for name in im.entries:
        np.testing.assert_allclose(back.column_weights(name), im.column_weights(name), rtol=1e-6)


def reference_weights(path) -> dict[str, np.ndarray]:
    """What llama-quantize feeds llama_model_quantize from an imatrix GGUF: per tensor, in_sum2 / counts
    (read here with gguf-py, independently of ggufkit.quant.imatrix)."""
    r = gguf.GGUFReader(path)
    t = {x.name: np.array(x.data, dtype=np.float32) for x in r.tensors}
    out = {}
    for name, sums in t.items():
        if name.endswith(".in_sum2"):
            base = name[: -len(".in_sum2")]
            count = np.float32(t[base + ".counts"].reshape(-1)[0])
            out[base] = (sums.reshape(-1) / count).astype(np.float32)
    return out


def llama_quantize_with_imatrix(src, out, ftype, weights: dict[str, np.ndarray]):
    import llama_cpp

    keep = [np.ascontiguousarray(v, dtype=np.float32) for v in weights.values()]
    names = [k.encode() for k in weights]
    entries = (llama_cpp.llama_model_imatrix_data * (len(weights) + 1))()
    for i, (name, arr) in enumerate(zip(names, keep)):
        entries[i].name = name
        entries[i].data = arr.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = arr.size
    entries[len(weights)].name = None
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    assert rc == 0
    return out


@pytest.mark.parametrize("scheme", ["q4_k_m", "q2_k", "q4_0", "iq4_xs"])
def test_convert_with_imatrix_equals_llama_quantize(tiny_llama, tiny_imatrix, scheme):
    from ggufkit.plan.schemes import get_scheme

    ours = convert(tiny_llama, OUT_DIR / f"tiny-imatrix-{scheme}.gguf", scheme=scheme, quiet=True,
                   imatrix=tiny_imatrix)
    ref = llama_quantize_with_imatrix(converted(tiny_llama, "f32"), OUT_DIR / f"tiny-imatrix-ref-{scheme}.gguf",
                                      int(get_scheme(scheme).file_type), reference_weights(tiny_imatrix))
    a = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    b = {t.name: t for t in gguf.GGUFReader(ref).tensors}
    assert set(a) == set(b)
    differing = [n for n in a if a[n].tensor_type != b[n].tensor_type or
                 not np.array_equal(np.asarray(a[n].data).view(np.uint8), np.asarray(b[n].data).view(np.uint8))]
    assert not differing, f"{len(differing)} tensors differ from llama_model_quantize, first {differing[0]}"
    # and the imatrix changed something: without it the bytes differ
    plain = converted(tiny_llama, scheme)
    c = {t.name: t for t in gguf.GGUFReader(plain).tensors}
    assert any(not np.array_equal(np.asarray(a[n].data), np.asarray(c[n].data)) for n in a if "blk." in n)


def test_imatrix_cli_writes_a_file(tiny_llama, tmp_path):
    out = tmp_path / "x.imatrix.dat"
    result = CliRunner().invoke(cli, ["imatrix", str(tiny_llama), "--text", str(SHAKESPEARE), "--ctx", "64",
                                      "--chunks", "1", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert imatrix_files.load(out).legacy and len(imatrix_files.load(out).entries) == 2 * 7


def test_corrupt_imatrix_is_a_one_line_error(tmp_path):
    from ggufkit.errors import InputError

    bad = tmp_path / "bad.dat"
    bad.write_bytes(struct.pack("<ii", 1, 5) + b"blk.0" + struct.pack("<ii", 1, 10) + b"\0" * 8)
    with pytest.raises(InputError, match="bad.dat: blk.0: 10 values do not fit in the file"):
        imatrix_files.load(bad)
    not_imatrix = tmp_path / "model.gguf"
    import gguf as g

    w = g.GGUFWriter(not_imatrix, arch="llama")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(InputError, match="model.gguf: a GGUF file but not an importance matrix"):
        imatrix_files.load(not_imatrix)


def test_convert_calibration_equals_convert_with_the_same_imatrix(tiny_llama, tmp_path):
    """--calibration computes the imatrix on the way: same bytes as computing it first and passing the file."""
    out = tmp_path / "calibrated.gguf"
    result = CliRunner().invoke(cli, ["convert", str(tiny_llama), "--scheme", "q4_k_m", "-o", str(out), "-q",
                                      "--calibration", str(SHAKESPEARE), "--calibration-chunks", "2",
                                      "--calibration-ctx", "64"])
    assert result.exit_code == 0, result.output
    im = compute(tiny_llama, SHAKESPEARE, ctx=64, chunks=2, progress=False).save(tmp_path / "im.gguf")
    # the file read back, not its path: a path is also recorded in quantize.imatrix.file, as llama-quantize does
    ref = convert(tiny_llama, tmp_path / "ref.gguf", scheme="q4_k_m", quiet=True, imatrix=imatrix_files.load(im))
    assert out.read_bytes() == ref.read_bytes()
    both = CliRunner().invoke(cli, ["convert", str(tiny_llama), "--imatrix", str(im), "--calibration",
                                    str(SHAKESPEARE), "-o", str(tmp_path / "never.gguf")])
    assert both.exit_code == 2 and not (tmp_path / "never.gguf").exists()
