"""Chat with a GGUF model in the terminal, using the chat template from its metadata.

Answers stream as they are generated. Commands: /help lists them, /reset forgets the conversation, /system TEXT
sets the system message (/system alone clears it), /exit quits (so does Ctrl-D). Ctrl-C stops the current answer, not the
program. When the conversation outgrows the context (--ctx), the oldest turns are dropped, with a notice.

\b
Example:
  ggufkit chat SmolLM2-135M-Instruct-Q8_0.gguf --system "You are a terse assistant." --temp 0.7
"""
from __future__ import annotations

import sys

import click

from ggufkit import runtime
from ggufkit.commands.run import make_sampling, model_options, sampling_options
from ggufkit.errors import GgufkitError, Terminated
from ggufkit.runtime import rpc as rpc_runtime

HELP = "commands: /help, /reset, /system TEXT, /exit (Ctrl-D); Ctrl-C stops an answer"
HELP_LONG = """/help         this list
/reset        forget the conversation (the system message stays)
/system TEXT  set the system message; /system alone clears it
/exit, /quit  leave (so does Ctrl-D)
Ctrl-C stops the answer being written, not the chat."""


def _read_line(prompt: str) -> str | None:
    """One line of input; None at end of input. Ctrl-C at the prompt only clears the line."""
    while True:
        try:
            return input(prompt)
        except EOFError:
            return None
        except Terminated:
            raise
        except KeyboardInterrupt:
            print("\n(/exit or Ctrl-D quits)")


def _handle_command(line: str, conversation: runtime.Conversation) -> bool:
    """A /command line -> False when the chat should end."""
    name, _, arg = line.partition(" ")
    if name in ("/exit", "/quit"):
        return False
    if name in ("/help", "/?"):
        print(HELP_LONG)
    elif name == "/reset":
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
def command(model, scheme, ctx, threads, flash_attn, system, rpc=None, split=None, rpc_timeout=60.0,
            **sampling_params):
    max_tokens = sampling_params["max_tokens"]
    path = runtime.resolve_model(model, scheme)
    llm = runtime.load(path, n_ctx=ctx, n_threads=threads, flash_attn=flash_attn,
                       offload=rpc_runtime.offload_for(path, rpc, split, log=sys.stderr, timeout=rpc_timeout))
    template = runtime.ChatTemplate.from_llama(llm, source=str(path))
    conversation = runtime.Conversation(llm, template, system=system, reserve=max_tokens)
    sampling = make_sampling(sampling_params)
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
