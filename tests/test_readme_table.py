"""README.md's table of model types is the registry's (ggufkit/archs/table.py generates it), and every
registered model type is exercised by the shared architecture runner (tests/test_archs.py)."""
from __future__ import annotations

from pathlib import Path

import gguf

from ggufkit.archs import Architecture, supported_model_types
from ggufkit.archs.table import markdown_table, readme_table

README = Path(__file__).resolve().parent.parent / "README.md"
# model types the shared runner reaches through another test than a FAMILIES line
TESTED_ELSEWHERE = {"gemma3": "test_archs.py::test_gemma3_wrapper_converts_to_its_text_model",
                    "qwen3_5": "test_wrappers.py", "qwen3_5_moe": "test_wrappers.py",
                    "gemma3n": "test_archs.py::test_gemma3n_wrapper_converts_to_its_text_model"}


def test_readme_table_is_the_registry():
    table = readme_table(README.read_text(encoding="utf-8"))
    assert table is not None, "README.md has no model-types table markers"
    assert table == markdown_table(), "README.md's table is stale: run python -m ggufkit.archs.table"
    for model_type in supported_model_types():
        assert f"| `{model_type}` |" in table


def test_a_new_model_type_makes_the_table_disagree():
    table = readme_table(README.read_text(encoding="utf-8"))

    class Extra(Architecture):
        """A model type registered only by this test"""
        model_type = "zz_extra_for_test"
        gguf_arch = gguf.MODEL_ARCH.LLAMA

    try:
        assert "zz_extra_for_test" in markdown_table() and table != markdown_table()
    finally:
        del Architecture.registry["zz_extra_for_test"]
    assert table == markdown_table()


def test_every_model_type_has_a_tiny_checkpoint_in_the_runner():
    import tiny
    from test_archs import FAMILIES

    def model_type(name: str) -> str:  # a multimodal wrapper's entry is its wrapper type, not its text part's
        return (tiny.TINY_WRAPPERS.get(name) or tiny.TINY_TOWER_WRAPPERS.get(name) or tiny.TINY_CONFIGS[name])[0]

    covered = {model_type(name) for name, _ in FAMILIES} | set(TESTED_ELSEWHERE)
    missing = sorted(set(supported_model_types()) - covered)
    assert not missing, f"model types without a tiny checkpoint in test_archs.FAMILIES: {missing}"
