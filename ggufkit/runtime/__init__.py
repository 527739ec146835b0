"""The runtime layer over llama-cpp-python: find (or convert) a model, load it, render its chat template, and
stream generated text. `run`, `chat`, `serve` and `bench` are thin commands on top of this module.

What llama-cpp-python already does well is used as is: `Llama` loads the file and keeps the KV cache (its
`generate` reuses the longest cached prefix, so a chat turn only evaluates the new tokens), and its
`Jinja2ChatFormatter` renders the GGUF chat template in jinja2's ImmutableSandboxedEnvironment (a template is
untrusted input from a downloaded file; the sandbox blocks attribute walks such as `''.__class__.__mro__`).
"""
from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ggufkit import __version__
from ggufkit.errors import InputError, OutputError, RuntimeFailure

GGUF_MAGIC = b"GGUF"
DEFAULT_SCHEME = "q4_k_m"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---- finding the model: a GGUF file, or an HF checkpoint converted once into the cache

def cache_root() -> Path:
    """Where converted models are kept: $GGUFKIT_CACHE, else $XDG_CACHE_HOME/ggufkit, else ~/.cache/ggufkit."""
    if os.environ.get("GGUFKIT_CACHE"):
        return Path(os.environ["GGUFKIT_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "ggufkit"


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _checkpoint_dir(model: str) -> Path:
    """A local HF directory as is; a hub id through huggingface-hub (honours HF_HUB_OFFLINE and its cache)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path.resolve()
    if not HUB_ID.match(model):
        raise InputError("no such GGUF file, checkpoint directory or hub id", model)
    from ggufkit.sources.hf import resolve

    return resolve(model)  # hub errors (not cached while offline, 404, gated) as one line naming the id


def _cache_key(src: Path, scheme: str) -> str:
    """Source identity (path + every file's name, size and mtime) + scheme + ggufkit version, hashed.

    A hub snapshot's path already holds the commit hash; a local directory that changes gets a new key."""
    files = sorted(
        (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in src.iterdir() if p.is_file()
    )
    blob = json.dumps({"src": str(src), "files": files, "scheme": scheme, "ggufkit": __version__})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cached_gguf_path(src: Path, scheme: str) -> Path:
    return cache_root() / "models" / f"{src.name}-{scheme}-{_cache_key(src, scheme)}.gguf"


def resolve_model(model: str, scheme: str | None = None, quiet: bool = False) -> Path:
    """MODEL argument -> a GGUF path. A GGUF file is used directly; an HF directory or hub id is converted to
    `scheme` (default q4_k_m) once into the cache and reused on later calls."""
    path = Path(model).expanduser()
    if path.is_file():
        if not is_gguf(path):
            raise InputError("not a GGUF file (no GGUF magic); pass a GGUF file or an HF checkpoint directory",
                             path)
        if scheme:
            raise InputError("--scheme applies to HF checkpoints only; this is already a GGUF file", path)
        return path
    src = _checkpoint_dir(model)
    scheme = (scheme or DEFAULT_SCHEME).lower()
    out = cached_gguf_path(src, scheme)
    if out.is_file():
        return out
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the model cache: {e.strerror}", out.parent) from e
    import fcntl

    # Two processes asking for the same model at once: the second waits for the first's file.
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.is_file():
            try:
                from ggufkit.conversion import convert
            except ImportError as e:
                raise RuntimeFailure("this ggufkit has no converter (ggufkit.conversion is missing)", src) from e
            if not quiet:
                print(f"converting {src} to {scheme} (once; cached as {out})", flush=True)
            convert(str(src), str(out), scheme=scheme, quiet=quiet)
    return out


# ---- loading

def default_threads() -> int:
    """Threads for llama.cpp when none are given: the physical cores this process may use, minus one.

    ggml's threads spin-wait for each other at every operation, so one thread that has to share its core with
    anything else stalls all of them: with every core in use, generation on a loaded 2-core machine fell from
    ~10 tok/s (1 thread) to a crawl (BENCHMARKS.md, "Threads"). One core left free keeps that from happening
    at the price of at most 1/n of the speed on an idle machine; hyper-threads add nothing to llama.cpp's
    matrix products (llama.cpp's own default is the physical cores too)."""
    return max(1, physical_cores() - 1)


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (Linux sysfs topology; else the CPU count)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topology.joinpath("physical_package_id").read_text().strip(),
                       topology.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def load_check(path: Path | str) -> Path:
    """The path, if it names a well-formed GGUF file; else a one-line InputError naming the problem.

    The whole structure is validated (ggufkit.sources.gguf, ~0.4 s for 135M parameters) before llama.cpp sees the
    file: llama.cpp's own refusal is "Failed to load model" without the reason."""
    from ggufkit.sources.gguf_model import open_gguf_model

    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    open_gguf_model(path)  # names the problem: empty, no magic, ..., a missing or mismatched part of a split set
    return path


def load(path: Path | str, n_ctx: int = 2048, n_threads: int | None = None, seed: int = 0, n_batch: int = 512,
         flash_attn: bool = False, offload: dict | None = None):
    """A GGUF file -> llama_cpp.Llama (quiet, sampling-only logits). Bad files become one-line errors.

    offload: extra Llama kwargs that place layers on other devices (n_gpu_layers, tensor_split; see runtime.rpc).

    flash_attn: off by default, as in llama-cpp-python. llama.cpp's own tools turn it on for CPUs ("auto");
    it makes generation ~10% faster here but changes the numerics enough that the demo model's greedy answer
    to the France question turns from "Paris" into French word salad (bench/runtime_overhead.py, BENCHMARKS.md).
    """
    path = load_check(path)
    import llama_cpp

    from ggufkit.runtime import backends

    backends.ensure()
    threads = n_threads or default_threads()
    offload = dict(offload or {})
    workers = offload.pop("rpc_endpoints", None)
    stall = offload.pop("rpc_timeout", 60.0)
    try:
        llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=n_ctx, n_batch=min(n_batch, n_ctx), n_threads=threads,
            n_threads_batch=threads, seed=seed, logits_all=False, flash_attn=flash_attn, verbose=False,
            **offload,
        )
    except (ValueError, RuntimeError) as e:
        hint = ("; a worker may not have the memory for its layers (its --mem or free RAM: see its log)"
                if workers else "")
        raise RuntimeFailure(f"llama.cpp could not load the model: {e}{hint}", path) from e
    if workers:  # a worker that goes silent or stops answering: an error, not a hang (runtime.rpc)
        from ggufkit.runtime import rpc

        rpc.make_safe({"rpc_endpoints": workers, "rpc_timeout": stall})
    return llm


def context_size(llm) -> int:
    """Usable context in tokens. llama.cpp pads the context it allocates (to a multiple of 256) and
    `Llama.n_ctx()` reports the padded size, but Llama's token buffer has the size that was asked for:
    the smaller of the two is what fits."""
    return min(llm.n_ctx(), len(llm.input_ids))


# ---- chat templates (sandboxed)

class ChatTemplate:
    """The GGUF's `tokenizer.chat_template`, rendered by llama-cpp-python's Jinja2ChatFormatter, which uses
    jinja2.sandbox.ImmutableSandboxedEnvironment (tests/test_chat_template.py holds it to that)."""

    def __init__(self, template: str, bos_token: str, eos_token: str, source: str = "model"):
        from ggufkit.runtime.template_sandbox import BoundedChatFormatter

        self.source = source
        try:  # llama-cpp-python's formatter, sandboxed and also bounded in time and memory
            self._formatter = BoundedChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token)
        except Exception as e:  # jinja2 TemplateSyntaxError and friends
            raise InputError(f"chat template does not parse: {e}", source) from e

    @classmethod
    def from_llama(cls, llm, source: str = "model") -> ChatTemplate:
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise InputError("the GGUF has no tokenizer.chat_template; use plain prompts (without --chat)", source)

        def text(token_id: int) -> str:
            return llm.detokenize([token_id], special=True).decode("utf-8", "replace") if token_id >= 0 else ""

        return cls(template, bos_token=text(llm.token_bos()), eos_token=text(llm.token_eos()), source=source)

    def render(self, messages: list[dict]) -> str:
        """messages [{role, content}] -> the prompt text, ending with the assistant's generation prompt."""
        from jinja2.exceptions import SecurityError, TemplateError

        try:
            return self._formatter(messages=messages).prompt
        except SecurityError as e:
            raise InputError(f"chat template tried an unsafe operation: {e}", self.source) from e
        except (TemplateError, ValueError, TypeError) as e:  # raise_exception() in a template gives ValueError
            raise InputError(f"chat template failed: {e}", self.source) from e


def chat_prompt_tokens(llm, template: ChatTemplate, messages: list[dict]) -> list[int]:
    """Rendered chat prompt -> token ids. Special tokens in the text are parsed; no BOS is added because the
    template writes its own (as llama-cpp-python's chat handler does)."""
    return llm.tokenize(template.render(messages).encode("utf-8"), add_bos=False, special=True)


def prompt_tokens(llm, text: str) -> list[int]:
    """A plain prompt -> token ids, with BOS if the model asks for it (tokenizer.ggml.add_bos_token)."""
    add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "true") != "false"
    return llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)


# ---- generation

@dataclass
class Sampling:
    max_tokens: int = 256
    temp: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0   # prompt tokens whose KV entries were reused from the previous call
    generated_tokens: int = 0
    prompt_seconds: float = 0.0     # start -> first token sampled
    generation_seconds: float = 0.0  # first token -> last token
    stop_reason: str = ""            # "eog", "length", "context", "interrupted"
    token_ids: list[int] = field(default_factory=list)

    def summary(self) -> str:
        pp = self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0
        tg = (self.generated_tokens - 1) / self.generation_seconds if self.generation_seconds else 0.0
        return (f"prompt {self.prompt_tokens} tokens ({self.cached_tokens} cached) {pp:.1f} tok/s, "
                f"generated {self.generated_tokens} tokens {tg:.1f} tok/s, stop: {self.stop_reason}")


def generate(llm, tokens: list[int], sampling: Sampling, stats: GenerationStats | None = None,
             should_stop: Callable[[], bool] | None = None) -> Iterator[str]:
    """Prompt token ids -> text pieces as they are sampled, until an end-of-generation token, max_tokens, a full
    context, or should_stop() turns true (checked between tokens, so llama.cpp is never interrupted mid-call).

    Uses Llama.generate (KV prefix reuse, llama.cpp's sampler chain). Bytes are decoded incrementally, so a
    character split across tokens comes out whole."""
    import llama_cpp

    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = len(tokens)
    stats.cached_tokens = llm.longest_token_prefix(llm.input_ids[: llm.n_tokens].tolist(), tokens)
    room = context_size(llm) - len(tokens)
    if room <= 0:
        raise RuntimeFailure(f"the prompt has {len(tokens)} tokens; the context holds {context_size(llm)}")
    budget = min(sampling.max_tokens, room)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    if sampling.seed is not None:
        llm.set_seed(sampling.seed)
    start = time.perf_counter()
    first = None
    stats.stop_reason = "context" if budget < sampling.max_tokens else "length"
    for token in llm.generate(tokens, top_k=sampling.top_k, top_p=sampling.top_p, min_p=sampling.min_p,
                              temp=sampling.temp, repeat_penalty=sampling.repeat_penalty):
        now = time.perf_counter()
        if first is None:
            first = now
            stats.prompt_seconds = now - start
        stats.generation_seconds = now - first
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            stats.stop_reason = "eog"
            break
        stats.generated_tokens += 1
        stats.token_ids.append(token)
        piece = decoder.decode(llm.detokenize([token]))
        if piece:
            yield piece
        if should_stop is not None and should_stop():
            stats.stop_reason = "interrupted"
            break
        if stats.generated_tokens >= budget:
            break
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


@contextlib.contextmanager
def sigint_as_flag():
    """While active, Ctrl-C sets a flag instead of raising, so generation stops cleanly between tokens."""
    import signal

    state = {"hit": False}

    def handler(signum, frame):
        state["hit"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: state["hit"]
    finally:
        signal.signal(signal.SIGINT, previous)


# ---- conversations that fit the context

class Conversation:
    """A system message plus user/assistant turns; `prompt()` drops the oldest turns until the rendered prompt
    leaves `reserve` tokens of the context for the answer."""

    def __init__(self, llm, template: ChatTemplate, system: str | None = None, reserve: int = 256):
        self.llm, self.template, self.system = llm, template, system
        self.turns: list[tuple[str, str]] = []  # (user, assistant)
        self.reserve = min(reserve, context_size(llm) // 2)

    def messages(self, user: str | None = None) -> list[dict]:
        out = [{"role": "system", "content": self.system}] if self.system else []
        for question, answer in self.turns:
            out += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        if user is not None:
            out.append({"role": "user", "content": user})
        return out

    def prompt(self, user: str) -> tuple[list[int], int]:
        """The next prompt's tokens and how many old turns were dropped to make it fit."""
        dropped = 0
        while True:
            tokens = chat_prompt_tokens(self.llm, self.template, self.messages(user))
            if len(tokens) + self.reserve <= context_size(self.llm) or not self.turns:
                break
            self.turns.pop(0)
            dropped += 1
        if len(tokens) >= context_size(self.llm):
            raise InputError(f"this message alone is {len(tokens)} tokens; the context holds "
                             f"{context_size(self.llm)}",
                             "input")
        return tokens, dropped

    def add(self, user: str, answer: str) -> None:
        self.turns.append((user, answer))

    def reset(self) -> None:
        self.turns.clear()
