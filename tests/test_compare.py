"""`ggufkit compare` on a tiny checkpoint: the JSON shape, sizes and types as llama.cpp loads them, quality that
falls with the bits, the table, the PNG, the imatrix variants and the errors."""
from __future__ import annotations

import json
import os

import gguf
import pytest
from click.testing import CliRunner
from convert_fixtures import OUT_DIR, SHAKESPEARE

from ggufkit.cli import cli

CTX = 64
SCHEMES = ["q8_0", "q4_k_m", "q2_k"]
ROW_KEYS = {"label", "scheme", "imatrix", "file", "size_bytes", "bits_per_weight", "ppl", "ppl_stderr",
            "delta_ppl", "kld", "top1", "rms_dp", "tg_tok_s"}


@pytest.fixture(scope="module")
def text_file():
    text = SHAKESPEARE.read_text(encoding="utf-8", errors="replace")
    path = OUT_DIR / "compare-hamlet.txt"
    path.write_text(text[len(text) // 3:][:4000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_llama(tiny_checkpoint):
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def json_run(tiny_llama, text_file, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("compare")
    png = out_dir / "quality.png"
    result = CliRunner().invoke(cli, ["compare", str(tiny_llama), "--schemes", ",".join(SCHEMES), "--text",
                                      str(text_file), "--ctx", str(CTX), "--chunks", "2", "--gen-tokens", "4",
                                      "--gen-reps", "1", "--threads", "2", "--plot", str(png), "-o", str(out_dir),
                                      "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), out_dir, png


def llama_cpp_facts(path) -> tuple[int, float]:
    """(general.file_type, bits per weight of the tensors) as llama.cpp's loader reports them."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=1, verbose=False)
    try:
        bpw = 8 * llama_cpp.llama_model_size(llm.model) / llama_cpp.llama_model_n_params(llm.model)
        return int(llm.metadata["general.file_type"]), bpw
    finally:
        llm.close()


def test_json_shape_and_files(json_run):
    from ggufkit.plan.schemes import get_scheme

    data, out_dir, _ = json_run
    assert set(data) == {"model", "text", "ctx", "chunks", "tokens_scored", "reference", "rows"}
    assert data["ctx"] == CTX and data["chunks"] == 2 and data["tokens_scored"] == 2 * (CTX // 2 - 1)
    assert [r["scheme"] for r in data["rows"]] == SCHEMES
    ref = data["reference"]
    assert ref["scheme"] == "bf16" and ref["kld"] is None and ref["delta_ppl"] is None
    for row in [ref, *data["rows"]]:
        assert set(row) == ROW_KEYS
        path = out_dir / os.path.basename(row["file"])
        assert path.is_file() and row["size_bytes"] == path.stat().st_size
        ftype, bpw = llama_cpp_facts(path)
        assert ftype == int(get_scheme(row["scheme"]).file_type)
        assert row["bits_per_weight"] == pytest.approx(bpw, abs=1e-3)
        assert row["tg_tok_s"] > 0 and row["ppl"] > 1
    for row in data["rows"]:
        assert row["delta_ppl"] == pytest.approx(row["ppl"] - ref["ppl"])
        assert 0 <= row["top1"] <= 1 and row["rms_dp"] >= 0


def test_quality_falls_with_the_bits(json_run):
    rows = {r["scheme"]: r for r in json_run[0]["rows"]}
    assert 0 < rows["q8_0"]["kld"] < rows["q4_k_m"]["kld"] < rows["q2_k"]["kld"]
    assert rows["q8_0"]["top1"] > rows["q2_k"]["top1"]
    assert rows["q8_0"]["size_bytes"] > rows["q4_k_m"]["size_bytes"] > rows["q2_k"]["size_bytes"]
    assert json_run[0]["reference"]["size_bytes"] > rows["q8_0"]["size_bytes"]


def test_plot_is_a_png(json_run):
    import matplotlib.image

    png = json_run[2]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    height, width = matplotlib.image.imread(png).shape[:2]
    assert width > 400 and height > 200
    assert not png.with_name(png.name + ".tmp").exists()


def test_table_with_calibration_both_ways(tiny_llama, text_file, tmp_path):
    """--calibration computes an imatrix (kept in -o DIR); --both gives each scheme with and without it."""
    result = CliRunner().invoke(cli, ["compare", str(tiny_llama), "--schemes", "q4_k_m", "--text", str(text_file),
                                      "--ctx", str(CTX), "--chunks", "1", "--calibration", str(SHAKESPEARE),
                                      "--calibration-chunks", "2", "--both", "--gen-tokens", "0", "--quiet",
                                      "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("llama on compare-hamlet.txt: 1 chunks of 64 tokens")
    header, rows = lines[1].split(), [line.split() for line in lines[2:]]
    assert header[:3] == ["scheme", "size", "MiB"] and "KLD" in header
    assert [r[0] for r in rows] == ["BF16", "Q4_K_M", "Q4_K_M"]
    assert rows[1][-1] == "-" and "imatrix" not in lines[3] and "+ imatrix" in lines[4]
    imatrix_file = tmp_path / f"{SHAKESPEARE.stem}.imatrix.gguf"
    r = gguf.GGUFReader(imatrix_file)
    assert bytes(r.fields["general.type"].parts[-1]).decode() == "imatrix"
    plain, weighted = tmp_path / "llama-Q4_K_M.gguf", tmp_path / "llama-Q4_K_M-imatrix.gguf"
    # the same tensors, types and shapes; the weighted file records its imatrix (quantize.imatrix.*, as
    # llama-quantize does) and differs in the tensors the imatrix changed
    a, b = gguf.GGUFReader(plain), gguf.GGUFReader(weighted)
    layout = [[(t.name, t.tensor_type, tuple(t.shape)) for t in r.tensors] for r in (a, b)]
    assert layout[0] == layout[1]
    assert "quantize.imatrix.file" in b.fields and "quantize.imatrix.file" not in a.fields
    assert any(bytes(x.data) != bytes(y.data) for x, y in zip(a.tensors, b.tensors))


def test_temporary_files_are_removed(tiny_llama, text_file):
    import tempfile

    before = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("ggufkit-compare-")}
    result = CliRunner().invoke(cli, ["compare", str(tiny_llama), "--schemes", "q8_0", "--text", str(text_file),
                                      "--ctx", str(CTX), "--chunks", "1", "--gen-tokens", "0", "--json"])
    assert result.exit_code == 0, result.output
    after = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("ggufkit-compare-")}
    assert after <= before
    assert not os.path.exists(json.loads(result.stdout)["rows"][0]["file"])


@pytest.mark.parametrize("args, expected", [
    (["--schemes", "q4_k_m,q9_z"], "--schemes: "),
    (["--schemes", "q4_k_m", "--text", "/nonexistent/words.txt"], "words.txt: no such text file"),
    (["--schemes", "q4_k_m", "--both"], "--both needs --imatrix or --calibration"),
])
def test_bad_input_is_a_one_line_error(tiny_llama, text_file, capsys, args, expected):
    from ggufkit.cli import main

    if "--text" not in args:
        args = [*args, "--text", str(text_file)]
    capsys.readouterr()
    code = main(["compare", str(tiny_llama), *args, "--ctx", str(CTX), "--chunks", "1", "--quiet"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
