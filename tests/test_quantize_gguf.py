"""ggufkit quantize: GGUF in, GGUF out, byte for byte what llama.cpp's llama_model_quantize writes for the same
input and options (schemes x controls x F32/F16/BF16 inputs, dense and 8-expert MoE layouts, the demo model),
what the llama-quantize program writes for its file-level options (imatrix file with exclusions,
--tensor-type-file, --override-kv), and requantization of a quantized input."""
from __future__ import annotations

import functools

import numpy as np
import pytest
from convert_fixtures import OUT_DIR, converted
from gguf import GGMLQuantizationType as T
from llama_quantize_schemes import dense_layout, moe_layout, write_f32_gguf
from quantize_ref import llama_quantize, run_tool

from ggufkit.plan import overrides as ov
from ggufkit.plan.schemes import ModelInfo
from ggufkit.quantization import quantize

LAYOUTS = {
    # 8 layers so that the more-bits layer pattern and the first-eighth rules both show
    "dense": lambda: dense_layout("dense", ModelInfo("llama", 8, 8, 2, 256), 512, tied=False, rows=8),
    # tied embeddings, 576-wide rows: output rules on token_embd, the row-length fallbacks (Q4_K -> Q5_0 ...)
    "tied576": lambda: dense_layout("tied576", ModelInfo("llama", 4, 9, 3, 576), 1536, tied=True, rows=8),
    # Mixtral-like: 3-D expert tensors, layer from the name, the 8-expert bumps
    "moe8": lambda: moe_layout("moe8", ModelInfo("llama", 4, 8, 8, 256, n_expert=8), 512, rows=4),
}

# (scheme, options): options are llama_quantize()'s keywords; "imatrix" is filled in per layout
COMBOS = [
    ("q4_k_m", {}),
    ("q4_k_m", {"pure": True}),
    ("q3_k_m", {"tensor_types": (("attn_v", T.Q8_0), (r"blk\.[0-2]\.ffn_down", T.Q6_K))}),
    # a pattern-decided attn_v does not advance llama.cpp's attn_v counter: the Q5_K of "first two" moves on
    ("q3_k_m", {"tensor_types": ((r"blk\.0\.attn_v", T.Q8_0),)}),
    ("q5_k_m", {"output_type": T.Q8_0, "embd_type": T.Q4_0}),
    ("q2_k", {"leave_output": True}),
    # tied embeddings take --output-tensor-type through the rules (then the fallback), untied output directly
    ("q4_k_m", {"output_type": T.Q5_0}),
    ("q4_k_s", {"imatrix": True}),
    ("q4_0", {"imatrix": True}),
    ("iq4_xs", {"imatrix": True, "tensor_types": (("ffn_up", T.IQ4_NL),)}),
    ("q6_k", {"pure": True, "tensor_types": (("attn_q", T.Q4_K),), "embd_type": T.Q8_0}),
    ("f16", {"tensor_types": (("attn_v", T.Q8_0),), "output_type": T.Q8_0}),
    ("q8_0", {"embd_type": T.F16}),
    ("bf16", {}),
]


@functools.cache
def source(layout: str, dtype: str):
    """A test GGUF of the layout: F32 with random data, or llama.cpp's own F16/BF16 quantization of it."""
    f32 = write_f32_gguf(OUT_DIR / f"q-{layout}-f32.gguf", LAYOUTS[layout]())
    if dtype == "f32":
        return f32
    out = OUT_DIR / f"q-{layout}-{dtype}.gguf"
    llama_quantize(f32, out, dtype)
    return out


def random_imatrix(layout: str) -> dict[str, np.ndarray]:
    """Positive weights for every quantizable matrix: (n_expert * cols,) for expert tensors."""
    rng = np.random.default_rng(7)
    out = {}
    for name, shape in LAYOUTS[layout]().tensors:
        if len(shape) >= 2 and name.endswith(".weight") and "norm" not in name and "gate_inp" not in name:
            n_mat = shape[0] if len(shape) == 3 else 1
            out[name] = rng.uniform(0.1, 4.0, n_mat * shape[-1]).astype(np.float32)
    return out


def controls_for(opts: dict) -> ov.Controls:
    return ov.Controls(tensor_types=tuple(opts.get("tensor_types", ())), output_tensor_type=opts.get("output_type"),
                       token_embedding_type=opts.get("embd_type"), pure=opts.get("pure", False),
                       leave_output_tensor=opts.get("leave_output", False))


def first_difference(a: bytes, b: bytes) -> str:
    if len(a) != len(b):
        return f"sizes differ: {len(a)} vs {len(b)}"
    diff = np.nonzero(np.frombuffer(a, np.uint8) != np.frombuffer(b, np.uint8))[0]
    return f"{len(diff)} bytes differ, first at {diff[0]}" if len(diff) else "identical"


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("scheme,opts", COMBOS, ids=[f"{s}-{'-'.join(o) or 'default'}" for s, o in COMBOS])
def test_bytes_equal_llama_model_quantize(layout, dtype, scheme, opts, tmp_path):
    src = source(layout, dtype)
    opts = dict(opts)
    imatrix = random_imatrix(layout) if opts.pop("imatrix", False) else None
    if layout == "tied576" and opts.get("embd_type") in (T.Q4_K,):
        pytest.skip("a 256-block type on 576-wide rows: llama.cpp asserts")
    ref = tmp_path / "ref.gguf"
    llama_quantize(src, ref, scheme, imatrix=imatrix, **opts)
    ours = quantize(src, tmp_path / "ours.gguf", scheme=scheme, controls=controls_for(opts), imatrix=imatrix,
                    threads=2)
    assert ours == [tmp_path / "ours.gguf"]
    a, b = ours[0].read_bytes(), ref.read_bytes()
    assert a == b, first_difference(a, b)


def test_direct_type_that_does_not_fit_is_a_one_line_error(tmp_path):
    from ggufkit.cli import main

    src = source("tied576", "f32")
    out = tmp_path / "x.gguf"
    assert main(["quantize", str(src), "-o", str(out), "--token-embedding-type", "q4_k"]) == 1
    assert not out.exists() and not list(tmp_path.iterdir())


def test_requantize_q8_0_input_equals_llama(tmp_path):
    """A Q8_0 input (written by llama.cpp) to Q4_K_M: refused without --allow-requantize (nothing written),
    with it the bytes of llama_model_quantize's allow_requantize (dequantized exactly as ggml does)."""
    from ggufkit.errors import InputError

    q8 = tmp_path / "q8.gguf"
    llama_quantize(source("dense", "f32"), q8, "q8_0")
    with pytest.raises(InputError, match="needs --allow-requantize"):
        quantize(q8, tmp_path / "no.gguf", scheme="q4_k_m")
    assert not (tmp_path / "no.gguf").exists()
    for scheme in ("q4_k_m", "q6_k", "f16"):
        ref = tmp_path / f"ref-{scheme}.gguf"
        llama_quantize(q8, ref, scheme, allow_requantize=True)
        ours = quantize(q8, tmp_path / f"ours-{scheme}.gguf", scheme=scheme, allow_requantize=True)[0]
        assert ours.read_bytes() == ref.read_bytes(), (scheme, first_difference(ours.read_bytes(), ref.read_bytes()))


# ---- the demo model (real weights, real tokenizer metadata)

@pytest.fixture(scope="module")
def demo_bf16(demo_dir):
    return converted(demo_dir, "bf16")


@pytest.mark.parametrize("scheme", ["q4_k_m", "q6_k", "iq4_nl"])
def test_demo_bf16_equals_llama(demo_bf16, scheme, tmp_path):
    ref = tmp_path / "ref.gguf"
    llama_quantize(demo_bf16, ref, scheme)
    ours = quantize(demo_bf16, tmp_path / "ours.gguf", scheme=scheme)[0]
    assert ours.read_bytes() == ref.read_bytes(), first_difference(ours.read_bytes(), ref.read_bytes())


def test_demo_cli_options_equal_llama_quantize_program(demo_dir, demo_bf16, tmp_path):
    """The llama-quantize program and `ggufkit quantize` with the same file-level options: an imatrix file with
    --exclude-weights (and the quantize.imatrix.* keys it records), a --tensor-type-file, output and embedding
    types, --override-kv. Same bytes."""
    from ggufkit.cli import main
    from ggufkit.quant.imatrix import Imatrix, ImatrixEntry
    from ggufkit.sources.gguf import validate_gguf

    g = validate_gguf(demo_bf16)
    rng = np.random.default_rng(3)
    im = Imatrix(datasets=["hamlet.txt"], chunk_count=5, chunk_size=512)
    for t in g.tensors:
        if len(t.shape) == 2 and "blk." in t.name:
            im.entries[t.name] = ImatrixEntry(rng.uniform(0.1, 3, (1, t.shape[0])).astype(np.float32),
                                              np.array([5 * 512.0]))
    im.save(tmp_path / "demo.imatrix.gguf")
    types = tmp_path / "types.txt"
    types.write_text("attn_v=q8_0\nblk\\.1[0-9]\\.ffn_down=Q5_K   attn_output=q4_0\n")
    args = ["--imatrix", "demo.imatrix.gguf", "--exclude-weights", "ffn_gate", "--exclude-weights", "blk.3.",
            "--tensor-type-file", "types.txt", "--output-tensor-type", "q8_0", "--token-embedding-type", "q5_0",
            "--override-kv", "general.name=str:demo quantized", "--override-kv", "demo.answer=int:-42",
            "--override-kv", "demo.flag=bool:true", "--override-kv", "demo.ratio=float:0.25"]
    run_tool("llama-quantize", *args, demo_bf16, "ref.gguf", "Q4_K_M", "2", cwd=tmp_path)
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["quantize", *args, str(demo_bf16), "-o", "ours.gguf", "--scheme", "Q4_K_M", "-q"]) == 0
    finally:
        os.chdir(cwd)
    a, b = (tmp_path / "ours.gguf").read_bytes(), (tmp_path / "ref.gguf").read_bytes()
    assert a == b, first_difference(a, b)
    md = validate_gguf(tmp_path / "ours.gguf").metadata
    kept = [n for n in im.entries if "ffn_gate" not in n and "blk.3." not in n]
    assert (md["quantize.imatrix.file"], md["quantize.imatrix.dataset"], md["quantize.imatrix.entries_count"],
            md["quantize.imatrix.chunks_count"]) == ("demo.imatrix.gguf", "hamlet.txt", len(kept), 5)


def test_override_kv_feeds_the_rules_as_in_llama_quantize(demo_bf16, tmp_path):
    """--override-kv on a hyperparameter changes what llama-quantize's rules see (its loader reads through the
    overrides): with head_count_kv 1 the demo's GQA factor is 9, and Q2_K's attn_v becomes Q4_K, not Q3_K (on
    576-wide rows their fallbacks: Q5_0, not Q4_0)."""
    from convert_fixtures import tensor_table

    from ggufkit.cli import main

    args = ["--override-kv", "llama.attention.head_count_kv=int:1"]
    run_tool("llama-quantize", *args, demo_bf16, "ref.gguf", "Q2_K", "2", cwd=tmp_path)
    assert main(["quantize", *args, str(demo_bf16), "-o", str(tmp_path / "ours.gguf"), "--scheme", "q2_k",
                 "-q"]) == 0
    a, b = (tmp_path / "ours.gguf").read_bytes(), (tmp_path / "ref.gguf").read_bytes()
    assert a == b, first_difference(a, b)
    plain = quantize(demo_bf16, tmp_path / "plain.gguf", scheme="q2_k")[0]
    v_types = {name: T(q) for name, q, _ in tensor_table(tmp_path / "ours.gguf") if name.endswith("attn_v.weight")}
    v_plain = {name: T(q) for name, q, _ in tensor_table(plain) if name.endswith("attn_v.weight")}
    assert set(v_types.values()) == {T.Q5_0} and set(v_plain.values()) == {T.Q4_0}


def test_dry_run_lists_the_plan_and_writes_nothing(demo_bf16, tmp_path, capsys):
    import json

    from convert_fixtures import tensor_table

    from ggufkit.cli import main

    out = tmp_path / "o.gguf"
    assert main(["quantize", str(demo_bf16), "-o", str(out), "--scheme", "q4_k_m", "--pure", "--tensor-type",
                 "ffn_down=q6_k", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert not list(tmp_path.iterdir())
    ref = tmp_path / "ref.gguf"
    llama_quantize(demo_bf16, ref, "q4_k_m", pure=True, tensor_types=(("ffn_down", T.Q6_K),))
    table = tensor_table(ref)
    assert [(t["name"], t["type"], t["bytes"]) for t in plan["tensors"]] == \
        [(name, T(qtype).name, data.size) for name, qtype, data in table]


@pytest.mark.parametrize("layout,first,then", [("dense", "q4_k_m", "q8_0"), ("tied576", "q4_k_m", "q6_k"),
                                                ("dense", "iq4_xs", "q5_k_m"), ("moe8", "q3_k_l", "q4_0")])
def test_requantize_k_legacy_and_iq4_inputs_equal_llama(layout, first, then, tmp_path):
    """Inputs mixing K-quant, legacy (the Q5_0/Q8_0 fallbacks of 576-wide rows) and IQ4 types: ggufkit's
    dequantization gives llama.cpp's floats, so the requantized bytes match."""
    mixed = tmp_path / "mixed.gguf"
    llama_quantize(source(layout, "f32"), mixed, first)
    ref = tmp_path / "ref.gguf"
    llama_quantize(mixed, ref, then, allow_requantize=True)
    ours = quantize(mixed, tmp_path / "ours.gguf", scheme=then, allow_requantize=True)[0]
    assert ours.read_bytes() == ref.read_bytes(), first_difference(ours.read_bytes(), ref.read_bytes())


@pytest.mark.parametrize("layout,first,then", [("dense", "tq2_0", "q4_k_m"), ("dense", "tq1_0", "q8_0"),
                                                ("moe8", "mxfp4_moe", "q4_k_m"), ("dense", "iq3_xxs", "q5_k_m"),
                                                ("tied576", "iq3_m", "q4_k_m"), ("dense", "iq2_xs", "q6_k"),
                                                ("dense", "iq1_m", "q4_k_m")])
def test_requantize_iq_ternary_and_fp4_inputs_equal_llama(layout, first, then, tmp_path):
    """Inputs of the i-quant, ternary and MXFP4 types (made by llama.cpp, with an importance matrix where it needs
    one) requantized: ggufkit's dequantization of those types gives ggml's floats, so the bytes match."""
    from ggufkit.plan.schemes import IMATRIX_ONLY_SCHEMES

    mixed = tmp_path / "mixed.gguf"
    needs = first.upper() in IMATRIX_ONLY_SCHEMES
    llama_quantize(source(layout, "f32"), mixed, first, imatrix=random_imatrix(layout) if needs else None)
    ref = tmp_path / "ref.gguf"
    llama_quantize(mixed, ref, then, allow_requantize=True)
    ours = quantize(mixed, tmp_path / "ours.gguf", scheme=then, allow_requantize=True)[0]
    assert ours.read_bytes() == ref.read_bytes(), first_difference(ours.read_bytes(), ref.read_bytes())


def test_cli_requantize_warns_and_conflicts_are_usage_errors(tmp_path, capsys):
    from ggufkit.cli import main

    q8 = tmp_path / "q8.gguf"
    llama_quantize(source("dense", "f32"), q8, "q8_0")
    assert main(["quantize", str(q8), "-o", str(tmp_path / "a.gguf"), "--allow-requantize"]) == 0
    err = capsys.readouterr().err
    n_matrices = sum(len(shape) == 2 for _, shape in LAYOUTS["dense"]().tensors)  # every one changes type
    assert f"warning: requantizing {n_matrices} tensor(s) already quantized as Q8_0" in err, err
    for extra in (["--include-weights", "a", "--exclude-weights", "b"], ["--keep-split", "--split-max-tensors", "3"],
                  ["--tensor-type", "attn_v"], ["--tensor-type", "attn_v=q9_9"], ["--override-kv", "k=int:x"],
                  ["--split-max-size", "2T"]):
        out = tmp_path / "never.gguf"
        assert main(["quantize", str(q8), "-o", str(out), *extra]) == 2, extra
        assert not out.exists()
    capsys.readouterr()


def test_failure_midway_leaves_no_part_behind(tmp_path):
    """A NaN in a late tensor: a one-line error naming it, and none of the split set's parts (or temp files)."""
    import gguf

    from ggufkit.errors import InputError

    layout = LAYOUTS["dense"]()
    bad = tmp_path / "in" / "nan.gguf"
    bad.parent.mkdir()
    write_f32_gguf(bad, layout)
    reader = gguf.GGUFReader(bad, "r+")
    t = next(t for t in reader.tensors if t.name == "blk.6.ffn_up.weight")
    t.data[3, 5] = np.nan
    del reader
    with pytest.raises(InputError, match=r"nan.gguf: tensor blk.6.ffn_up.weight: x has 1 non-finite"):
        quantize(bad, tmp_path / "out.gguf", scheme="q4_k_m", split_max_tensors=10)
    assert not list(tmp_path.glob("*out*")) and not list(tmp_path.glob(".*"))


def test_values_beyond_f16_are_refused_like_llama(tmp_path):
    """A weight of 1e6 cannot be F16: llama_model_quantize refuses the row (its check of converted data), and so
    does ggufkit, with a one-line error and no output."""
    import gguf

    from ggufkit.errors import InputError

    src = tmp_path / "big.gguf"
    write_f32_gguf(src, LAYOUTS["dense"]())
    reader = gguf.GGUFReader(src, "r+")
    next(t for t in reader.tensors if t.name == "blk.2.attn_q.weight").data[1, 7] = 1e6
    del reader
    with pytest.raises(RuntimeError, match="failed"):
        llama_quantize(src, tmp_path / "ref.gguf", "f16")
    with pytest.raises(InputError, match=r"tensor blk.2.attn_q.weight: x has values beyond F16's range"):
        quantize(src, tmp_path / "ours.gguf", scheme="f16")
    assert not (tmp_path / "ours.gguf").exists()


def test_library_call_equals_the_cli(tmp_path):
    import ggufkit
    from ggufkit.cli import main

    src = source("moe8", "bf16")
    opts = {"tensor_types": ["ffn_down_exps=q6_k"], "token_embedding_type": "q8_0", "override_kv": ["a.b=int:3"],
            "split_max_tensors": 20}
    lib = ggufkit.quantize(src, tmp_path / "lib.gguf", scheme="q3_k_s", **opts)
    assert main(["quantize", str(src), "-o", str(tmp_path / "cli.gguf"), "--scheme", "q3_k_s", "--tensor-type",
                 "ffn_down_exps=q6_k", "--token-embedding-type", "q8_0", "--override-kv", "a.b=int:3",
                 "--split-max-tensors", "20", "-q"]) == 0
    cli = sorted(tmp_path.glob("cli-*.gguf"))
    assert len(lib) == len(cli) == 3
    assert [p.read_bytes() for p in lib] == [p.read_bytes() for p in cli]
