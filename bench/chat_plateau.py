"""Does llama-cpp-python's RSS plateau over many streamed chat completions? (no server, no tracemalloc)

    python bench/chat_plateau.py stream 200         # streamed chat completions, 8 tokens each
    python bench/chat_plateau.py stream-trim 200    # the same with glibc malloc_trim(0) after every request
    python bench/chat_plateau.py compl 200          # plain completions

ggufkit's chat-template sandbox is installed (as serve does). After 8 warm-up requests, prints VmRSS every 50.
If malloc_trim changes nothing, the growth is memory still in use, not freed memory the allocator keeps.
"""
from __future__ import annotations

import ctypes
import gc
import sys

from chat_memory import DEMO, QUESTIONS, rss_mib


def main() -> None:
    mode, n = sys.argv[1], int(sys.argv[2])
    from ggufkit.runtime import backends

    backends.ensure()
    import llama_cpp

    from ggufkit.runtime.template_sandbox import install

    install()
    libc = ctypes.CDLL("libc.so.6")
    llm = llama_cpp.Llama(str(DEMO), n_ctx=2048, n_threads=1, verbose=False)

    def once(i: int) -> None:
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        if mode.startswith("stream"):
            for _ in llm.create_chat_completion(messages, max_tokens=8, stream=True, temperature=0.7):
                pass
        else:
            llm.create_completion(QUESTIONS[i % len(QUESTIONS)], max_tokens=8, temperature=0.7)
        if mode.endswith("trim"):
            libc.malloc_trim(0)

    for i in range(8):
        once(i)
    gc.collect()
    base = rss_mib()
    print(f"after 8 warm-up requests: {base:.1f} MiB", flush=True)
    for i in range(n):
        once(i)
        if (i + 1) % 50 == 0:
            gc.collect()
            print(f"{i + 1}: {rss_mib():.1f} MiB ({100 * (rss_mib() / base - 1):+.1f}%)", flush=True)


if __name__ == "__main__":
    main()
