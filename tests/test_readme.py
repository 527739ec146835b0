"""The README's examples use the file names ggufkit writes: `<model>-<SCHEME>.gguf` from convert (and
`<model>.imatrix.gguf` from imatrix), never llama.cpp's `model.Q4_K_M.gguf` style that convert does not produce."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_example_file_names_are_what_convert_writes(tiny_checkpoint, tmp_path, monkeypatch):
    from ggufkit.conversion import default_output, make_plan
    from ggufkit.plan.schemes import SCHEMES

    monkeypatch.chdir(tmp_path)
    src = tiny_checkpoint("llama")
    written = default_output(make_plan(src, "q4_k_m")).name  # what convert names its output
    assert written == f"{src.name}-Q4_K_M.gguf"
    # <model>-<SCHEME>.gguf, <model>.imatrix.gguf, or a split set's part: <OUT>-00001-of-0000N.gguf (gguf-split's)
    pattern = re.compile(r"^[\w.-]+-\d{5}-of-(\d{5}|0000N)\.gguf$"
                         r"|^(?P<model>[\w.-]+?)-(?P<scheme>[A-Z0-9_]+)\.gguf$|^[\w.-]+\.imatrix\.gguf$")
    text = README.read_text()
    code = "\n".join(re.findall(r"```sh\n(.*?)```", text, re.DOTALL)) + "\n".join(re.findall(r"`([^`\n]+)`", text))
    names = set(re.findall(r"[\w.-]+\.gguf\b", code))
    assert names, "the README shows no GGUF file names"
    for name in sorted(names):
        m = pattern.match(name)
        assert m, name
        if m.group("scheme"):
            assert m.group("scheme") in SCHEMES, name
