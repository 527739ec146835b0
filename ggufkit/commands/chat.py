"""Chat with a GGUF model in the terminal, using the chat template from its metadata.

Answers stream as they are generated. Commands: /reset forgets the conversation, /system TEXT sets the system
message (/system alone clears it), /exit quits (so does Ctrl-D). Ctrl-C stops the current answer, not the
program. When the conversation outgrows the context (--ctx), the oldest turns are dropped, with a notice.

\b
Example:
  ggufkit chat model.Q8_0.gguf --system "You are a terse assistant." --temp 0.7
"""
from __future__ import annotations

import sys

import click

from ggufkit import runtime
from ggufkit.commands.run import make_sampling, model_options, sampling_options
from ggufkit.errors import GgufkitError
from ggufkit.runtime import rpc as rpc_runtime

HELP = "commands: /reset, /system TEXT, /exit (Ctrl-D); Ctrl-C stops an answer"


def _read_line(prompt: str) -> str | None:
    """One line of input; None at end of input. Ctrl-C at the prompt only clears the line."""
    while True:
        try:
            return input(prompt)
        except EOFError:
            return None
        except KeyboardInterrupt:
            print("\n(/exit or Ctrl-D quits)")


def _handle_command(line: str, conversation: runtime.Conversation) -> bool:
    """A /command line -> False when the chat should end."""
    name, _, arg = line.partition(" ")
    if name in ("/exit", "/quit"):
        return False
    if name == "/reset":
        conversation.reset()
        print("[conversation reset]")
    elif name == "/system":
        conversation.system = arg.strip() or None
        print("[system message set]" if conversation.system else "[system message cleared]")
    else:
        print(f"[unknown command {name}; {HELP}]")
    return True


@click.command("chat")
@model_options
@sampling_options
@rpc_runtime.options
@click.option("--system", default=None, help="The system message to start with.")
def command(model, scheme, ctx, threads, flash_attn, max_tokens, temp, top_p, top_k, seed, system, rpc=None,
            split=None):
    path = runtime.resolve_model(model, scheme)
    llm = runtime.load(path, n_ctx=ctx, n_threads=threads, flash_attn=flash_attn,
                       offload=rpc_runtime.offload_for(path, rpc, split, log=sys.stderr))
    template = runtime.ChatTemplate.from_llama(llm, source=str(path))
    conversation = runtime.Conversation(llm, template, system=system, reserve=max_tokens)
    sampling = make_sampling(max_tokens, temp, top_p, top_k, seed)
    try:
        import readline  # noqa: F401  (line editing and history for input(), where available)
    except ImportError:
        pass
    print(f"ggufkit chat: {path.name}, context {runtime.context_size(llm)} tokens; {HELP}")
    while True:
        line = _read_line(">>> ")
        if line is None:
            print()
            break
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not _handle_command(line, conversation):
                break
            continue
        try:
            tokens, dropped = conversation.prompt(line)
        except GgufkitError as e:  # e.g. one message longer than the context: say so, keep chatting
            print(f"[error: {e}]")
            continue
        if dropped:
            print(f"[context full: dropped the {dropped} oldest turn{'s' if dropped > 1 else ''}]")
        pieces = []
        info = runtime.GenerationStats()
        with runtime.sigint_as_flag() as interrupted:
            for piece in runtime.generate(llm, tokens, sampling, info, should_stop=interrupted):
                pieces.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        if info.stop_reason == "interrupted":
            print("\n[stopped]")
        elif info.stop_reason == "length":
            print(f"\n[answer cut at --max-tokens {max_tokens}]")
        elif info.stop_reason == "context":
            print("\n[answer cut: the context is full]")
        else:
            print()
        conversation.add(line, "".join(pieces))


command.help = __doc__
