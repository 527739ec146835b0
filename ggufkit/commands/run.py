"""Generate text from a prompt with a GGUF model, streamed to stdout.

MODEL is a GGUF file, or a Hugging Face checkpoint directory / hub id that is converted once (to --scheme,
default q4_k_m) into the cache (~/.cache/ggufkit) and reused. --chat wraps the prompt in the model's own chat
template (from the GGUF metadata). --stats prints token counts and speeds to stderr.

\b
Example:
  ggufkit run SmolLM2-135M-Instruct-Q8_0.gguf --chat -p "What is the capital of France?" --temp 0
"""
from __future__ import annotations

import sys

import click

from ggufkit import runtime
from ggufkit.runtime import rpc as rpc_runtime


def model_options(f):
    """MODEL, --scheme, --ctx, --threads, --flash-attn: shared by run, chat, serve."""
    f = click.option("--flash-attn", is_flag=True,
                     help="Use flash attention (faster; slightly different numerics).")(f)
    f = click.option("--threads", type=click.IntRange(1), default=None,
                     help="CPU threads [default: physical cores - 1, at least 1].")(f)
    f = click.option("--ctx", type=click.IntRange(16), default=2048, show_default=True,
                     help="Context size in tokens.")(f)
    f = click.option("--scheme", default=None,
                     help="For an HF checkpoint: the quant scheme to convert to (default q4_k_m).")(f)
    return click.argument("model")(f)


def sampling_options(f):
    """--max-tokens, --temp, --top-p, --top-k, --min-p, --repeat-penalty, --seed: shared by run and chat."""
    f = click.option("--seed", type=int, default=None, help="Sampling seed (default: random).")(f)
    f = click.option("--repeat-penalty", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
                     help="Penalty for repeating recent tokens (1: none).")(f)
    f = click.option("--min-p", type=click.FloatRange(0, 1), default=0.05, show_default=True,
                     help="Drop tokens less likely than this fraction of the most likely one.")(f)
    f = click.option("--top-k", type=click.IntRange(0), default=40, show_default=True)(f)
    f = click.option("--top-p", type=click.FloatRange(0, 1), default=0.95, show_default=True)(f)
    f = click.option("--temp", type=click.FloatRange(0), default=0.8, show_default=True,
                     help="Temperature; 0 is greedy.")(f)
    return click.option("--max-tokens", "-n", type=click.IntRange(1), default=256, show_default=True,
                        help="Most tokens to generate.")(f)


SAMPLING = ("max_tokens", "temp", "top_p", "top_k", "min_p", "repeat_penalty", "seed")


def make_sampling(params: dict) -> runtime.Sampling:
    """The sampling options among a command's parameters -> runtime.Sampling."""
    return runtime.Sampling(**{k: params[k] for k in SAMPLING})


@click.command("run")
@model_options
@sampling_options
@rpc_runtime.options
@click.option("--prompt", "-p", default=None, help="The prompt (default: read stdin, without its final newline).")
@click.option("--chat", is_flag=True, help="Apply the model's chat template (prompt = one user message).")
@click.option("--system", default=None, help="With --chat: a system message.")
@click.option("--stats", is_flag=True, help="Print token counts and speeds to stderr.")
def command(model, scheme, ctx, threads, flash_attn, prompt, chat, system, stats, rpc=None, split=None, rpc_timeout=60.0,
            **sampling):
    if prompt is None:
        # `echo question | ggufkit run` sends "question\n": the newline is the shell's, not part of the prompt
        prompt = sys.stdin.read().rstrip("\r\n")
    path = runtime.resolve_model(model, scheme)
    llm = runtime.load(path, n_ctx=ctx, n_threads=threads, flash_attn=flash_attn,
                       offload=rpc_runtime.offload_for(path, rpc, split, log=sys.stderr, timeout=rpc_timeout))
    if chat:
        template = runtime.ChatTemplate.from_llama(llm, source=str(path))
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}]
        tokens = runtime.chat_prompt_tokens(llm, template, messages)
    else:
        tokens = runtime.prompt_tokens(llm, prompt)
    info = runtime.GenerationStats()
    out = sys.stdout
    with runtime.sigint_as_flag() as interrupted:
        for piece in runtime.generate(llm, tokens, make_sampling(sampling), info,
                                      should_stop=interrupted):
            out.write(piece)
            out.flush()
    out.write("\n")
    out.flush()
    if stats:
        click.echo(info.summary(), err=True)
    if info.stop_reason == "interrupted":
        raise click.exceptions.Abort()


command.help = __doc__
