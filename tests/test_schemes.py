"""ggufkit.plan.schemes against llama.cpp: for every scheme and a set of model layouts, the type and byte size of every
tensor in the plan equal what llama_model_quantize (llama-cpp-python) writes from an F32 GGUF of that layout."""
from __future__ import annotations

import re
from pathlib import Path

import gguf
import pytest
from llama_quantize_schemes import (
    Layout,
    dense_layout,
    falcon_layout,
    llama_quantize,
    moe_layout,
    write_f32_gguf,
)

from ggufkit.plan.schemes import (
    IMATRIX_ONLY_SCHEMES,
    SCHEMES,
    ModelInfo,
    format_plan,
    get_scheme,
    plan,
    plan_rows,
    quantize_order,
    summarize,
)

T = gguf.GGMLQuantizationType

LAYOUTS: dict[str, Layout] = {lay.label: lay for lay in (
    # every row length a multiple of 256; GQA 4; a rope_freqs vector like Llama 3's
    dense_layout("llama-16L-gqa4-untied", ModelInfo("llama", 16, 8, 2, 256), 512, tied=False,
                 extra=(("rope_freqs.weight", (16,)),)),
    dense_layout("llama-12L-gqa2-tied", ModelInfo("llama", 12, 8, 4, 256), 768, tied=True),
    # the demo model's widths (576: K-quant fallbacks) untied; the tied demo itself is DEMO below
    dense_layout("demo576-30L-untied", ModelInfo("llama", 30, 9, 3, 576), 1536, tied=False),
    # rows of 80 and 160: not a multiple of 32 either -> F16
    dense_layout("odd80-3L", ModelInfo("llama", 3, 5, 1, 80), 160, tied=False),
    moe_layout("moe-8x-8L", ModelInfo("llama", 8, 8, 2, 256, n_expert=8), 512),
    moe_layout("moe-4x-8L", ModelInfo("llama", 8, 8, 2, 256, n_expert=4), 512),
    # 80 layers: llama.cpp sizes a GQA llama as 70B (attn_v bump), an MHA one as 65B (none), qwen2 always 70B
    dense_layout("llama-80L-gqa8", ModelInfo("llama", 80, 8, 1, 256), 256, tied=False, rows=2),
    dense_layout("llama-80L-mha", ModelInfo("llama", 80, 4, 4, 256), 256, tied=False, rows=2),
    dense_layout("qwen2-80L-mha", ModelInfo("qwen2", 80, 4, 4, 256), 256, tied=False, rows=2),
    falcon_layout("falcon-16L", ModelInfo("falcon", 16, 8, 1, 256), 512),
)}

# The demo checkpoint's real tensor list (SmolLM2-135M: 576 wide, tied), as ggufkit's llama architecture names it.
DEMO = "smollm2-135m-real"

# all quantized schemes with an importance matrix on these layouts (the imatrix changes Q4_0/Q5_0/IQ4 rules)
IMATRIX_LAYOUTS = ("llama-16L-gqa4-untied", DEMO, "moe-8x-8L")

CASES = [(lay, name, False) for lay in [*LAYOUTS, DEMO] for name in SCHEMES if name not in IMATRIX_ONLY_SCHEMES]
CASES += [(lay, name, True) for lay in IMATRIX_LAYOUTS for name in SCHEMES if SCHEMES[name].quantized]


@pytest.fixture(scope="session")
def demo_tensors(demo_dir) -> tuple[list[tuple[str, tuple[int, ...]]], ModelInfo, int]:
    """The demo checkpoint's GGUF tensor list at full size, its ModelInfo and FFN width (headers only)."""
    from ggufkit.archs import for_config
    from ggufkit.sources.hf import open_checkpoint

    ckpt = open_checkpoint(demo_dir)
    arch = for_config(ckpt.config, ckpt.config_path)
    return ([(t.name, tuple(t.shape)) for t in arch.tensors(ckpt)], arch.model_info(),
            int(ckpt.config["intermediate_size"]))


@pytest.fixture(scope="session")
def layouts(demo_tensors) -> dict[str, Layout]:
    tensors, info, n_ff = demo_tensors
    # rows cut to 2 (types depend on row length, not row count; 2 keeps every matrix 2-D)
    small = tuple((n, shape if len(shape) == 1 else (min(shape[0], 2), *shape[1:])) for n, shape in tensors)
    return {**LAYOUTS, DEMO: Layout(DEMO, info, n_ff, small)}


@pytest.fixture(scope="session")
def f32_gguf(tmp_path_factory, layouts):
    """Factory: layout label -> Path of its F32 GGUF (written once per session)."""
    root = tmp_path_factory.mktemp("schemes")
    made: dict[str, Path] = {}

    def get(label: str) -> Path:
        if label not in made:
            made[label] = write_f32_gguf(root / f"{label}.gguf", layouts[label])
        return made[label]

    return get


@pytest.fixture(scope="session")
def reference(f32_gguf, tmp_path_factory, layouts):
    """Factory: (layout, scheme, imatrix) -> llama_model_quantize's result (cached per session)."""
    root = tmp_path_factory.mktemp("quantized")
    done = {}

    def get(label: str, scheme_name: str, imatrix: bool):
        key = (label, scheme_name, imatrix)
        if key not in done:
            layout = layouts[label]
            # one importance value per input column, per expert for 3-D expert tensors
            names = [(n, shape[-1] * (shape[0] if len(shape) == 3 else 1))
                     for n, shape in layout.tensors if len(shape) >= 2] if imatrix else None
            dst = root / f"{label}-{scheme_name}{'-imat' if imatrix else ''}.gguf"
            try:
                done[key] = llama_quantize(f32_gguf(label), dst, SCHEMES[scheme_name].file_type, names)
            except RuntimeError as e:   # e.g. Q1_0 / NVFP4 rows that no block fits: llama.cpp has no fallback
                done[key] = e
            dst.unlink(missing_ok=True)
        return done[key]

    return get


@pytest.mark.parametrize("label,scheme_name,imatrix", CASES,
                         ids=[f"{lay}-{s}{'-imatrix' if im else ''}" for lay, s, im in CASES])
def test_plan_matches_llama_quantize(label, scheme_name, imatrix, reference, layouts):
    layout = layouts[label]
    ref = reference(label, scheme_name, imatrix)
    if isinstance(ref, RuntimeError):
        assert "no tensor type fallback" in str(ref), ref
        with pytest.raises(ValueError, match="no fallback type"):
            plan_rows(get_scheme(scheme_name), layout.tensors, layout.info, has_imatrix=imatrix)
        return
    rows = plan_rows(get_scheme(scheme_name), layout.tensors, layout.info, has_imatrix=imatrix)

    assert [r.name for r in rows] == [n for n, _ in layout.tensors]
    assert sorted(ref.tensors) == sorted(r.name for r in rows)
    wrong = [f"{r.name} {r.shape}: ours {r.type.name} ({r.nbytes} B), llama.cpp {ref.tensors[r.name][0].name} "
             f"({ref.tensors[r.name][1]} B)" for r in rows if (r.type, r.nbytes) != ref.tensors[r.name]]
    assert not wrong, f"{len(wrong)} of {len(rows)} tensors differ:\n" + "\n".join(wrong[:20])
    # llama-quantize writes tensors in its own visiting order, which the layer counters follow
    assert list(ref.tensors) == quantize_order(n for n, _ in layout.tensors)
    # the dry-run summary: bits per weight as llama.cpp reports them (2 decimals)
    assert f"{summarize(rows).bits_per_weight:.2f}" == f"{ref.quant_bpw():.2f}"


def _types_by_role(ref, role: str) -> set[str]:
    return {t.name for name, (t, _) in ref.tensors.items() if name.endswith(f".{role}.weight")}


def test_layouts_exercise_the_rules(reference):
    """The layouts above are only worth something if llama.cpp treats their tensors differently; check that it
    does where the comparison above relies on it (these are facts about llama.cpp's output, not our plan)."""
    q4km = reference("llama-16L-gqa4-untied", "Q4_K_M", False)
    assert _types_by_role(q4km, "attn_v") == {"Q4_K", "Q6_K"}        # layer-pattern promotion
    assert _types_by_role(q4km, "ffn_down") == {"Q4_K", "Q6_K"}
    assert q4km.tensors["output.weight"][0] == T.Q6_K and q4km.tensors["token_embd.weight"][0] == T.Q4_K
    assert q4km.tensors["rope_freqs.weight"][0] == T.F32
    demo = reference(DEMO, "Q4_K_M", False)
    assert demo.tensors["token_embd.weight"][0] == T.Q8_0             # tied: output rule; 576 % 256 != 0
    assert _types_by_role(demo, "attn_q") == {"Q5_0"}                 # Q4_K fallback
    assert _types_by_role(demo, "attn_v") == {"Q5_0", "Q8_0"}         # Q4_K / Q6_K fallbacks
    assert _types_by_role(reference("odd80-3L", "Q4_K_M", False), "attn_q") == {"F16"}
    assert _types_by_role(reference("llama-80L-gqa8", "Q3_K_M", False), "attn_v") == {"Q5_K"}
    assert _types_by_role(reference("llama-80L-mha", "Q3_K_M", False), "attn_v") == {"Q4_K", "Q5_K"}
    assert _types_by_role(reference("moe-8x-8L", "Q4_K_M", False), "attn_k") == {"Q8_0"}
    q2 = [_types_by_role(reference("llama-16L-gqa4-untied", "Q2_K", False), "attn_v"),
          _types_by_role(reference("llama-12L-gqa2-tied", "Q2_K", False), "attn_v")]
    assert q2 == [{"Q4_K"}, {"Q3_K"}]                                 # GQA-dependent
    q40 = [_types_by_role(reference("llama-16L-gqa4-untied", "Q4_0", im), "ffn_down") for im in (False, True)]
    assert q40 == [{"Q4_0"}, {"Q4_0", "Q4_1"}]                        # imatrix-dependent
    falcon = reference("falcon-16L", "Q3_K_L", False)
    assert _types_by_role(falcon, "attn_output") == {"Q4_K"} and _types_by_role(falcon, "attn_qkv") == {"Q5_K"}


# ---- API

def test_get_scheme_is_case_insensitive_and_lists_known_names():
    assert get_scheme("q4_k_m") is get_scheme("Q4_K_M") is SCHEMES["Q4_K_M"]
    assert get_scheme("bf16").file_type == gguf.LlamaFileType.MOSTLY_BF16
    assert get_scheme("Q5_K_S").base_type == T.Q5_K
    with pytest.raises(ValueError, match=r"unknown scheme 'q4_k_x'.*q8_0.*q4_k_m"):
        get_scheme("q4_k_x")


def test_imatrix_only_schemes_are_refused_like_llama_cpp_refuses_them(tiny_checkpoint):
    """Each scheme ggufkit names as imatrix-only is one llama_model_quantize refuses without an imatrix (checked
    on a real F32 file), and ggufkit refuses it with that reason."""
    import ctypes

    import llama_cpp
    from convert_fixtures import OUT_DIR, converted

    from ggufkit.conversion import convert
    from ggufkit.errors import InputError

    src = converted(tiny_checkpoint("llama"), "f32")
    for name in IMATRIX_ONLY_SCHEMES:
        if name in SCHEMES:   # offered: convert refuses it without an imatrix, naming the way to give one
            out = OUT_DIR / f"refused-ours-{name}.gguf"
            with pytest.raises(InputError, match=r"needs an importance matrix.*--imatrix FILE or --calibration TEXT"):
                convert(tiny_checkpoint("llama"), out, scheme=name.lower(), quiet=True)
            assert not out.exists() and not list(OUT_DIR.glob(f"refused-ours-{name}*"))
        else:
            with pytest.raises(ValueError, match="only with an importance matrix"):
                get_scheme(name.lower())
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = int(gguf.LlamaFileType[f"MOSTLY_{name}"])
        params.nthread = 2
        out = OUT_DIR / f"refused-{name}.gguf"
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
        assert rc != 0, f"llama.cpp quantized {name} without an imatrix"


def test_required_schemes_exist():
    required = "f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q2_k q3_k_s q3_k_m q3_k_l q4_k_s q4_k_m q5_k_s q5_k_m q6_k"
    for name in required.split():
        scheme = get_scheme(name)
        assert scheme.file_type.name.endswith(scheme.name)


def test_demo_plan_at_full_size_equals_the_cut_down_one(demo_tensors, layouts, reference):
    """The comparison above runs on the demo's tensor list with rows cut to 2; at full size (which is what convert
    plans) the types are the same, and llama.cpp's bits per weight for the real model match ours."""
    tensors, info, _ = demo_tensors
    for name, scheme in SCHEMES.items():
        if name == "Q1_0":   # rows of 576 fit no Q1_0 block (128) and Q1_0 has no fallback, in llama.cpp too
            with pytest.raises(ValueError, match="no fallback type for Q1_0"):
                plan(scheme, tensors, info)
            continue
        assert plan(scheme, tensors, info) == plan(scheme, layouts[DEMO].tensors, info), name
    rows = plan_rows(get_scheme("Q4_K_M"), tensors, info)
    ref = reference(DEMO, "Q4_K_M", False)
    assert {r.name: r.type for r in rows} == {n: t for n, (t, _) in ref.tensors.items()}
    reported = re.search(r"(\d+) of \d+ tensor\(s\) required fallback", ref.log)
    assert reported and summarize(rows).n_fallback == int(reported.group(1)) > 0


def test_plan_keeps_input_order_and_format_plan_prints_totals():
    layout = LAYOUTS["demo576-30L-untied"]
    types = plan(get_scheme("q8_0"), layout.tensors, layout.info)
    assert list(types) == [n for n, _ in layout.tensors]
    rows = plan_rows(get_scheme("q4_k_m"), layout.tensors, layout.info)
    text = format_plan(rows, get_scheme("q4_k_m"))
    lines = text.splitlines()
    assert len(lines) == len(rows) + 2
    assert "blk.0.attn_q.weight" in text and "fallback from Q4_K" in text
    s = summarize(rows)
    assert lines[-1].startswith(f"Q4_K_M: {len(rows)} tensors") and f"{s.bits_per_weight:.2f} bits per weight" in text


def test_plan_rejects_duplicate_names():
    with pytest.raises(ValueError, match="duplicate"):
        plan(get_scheme("q8_0"), [("a.weight", (4, 32)), ("a.weight", (4, 32))], ModelInfo("llama", 1, 1, 1, 32))
