"""Chat templates from GGUF files are untrusted programs: render them sandboxed AND bounded.

jinja2's ImmutableSandboxedEnvironment (what llama-cpp-python's Jinja2ChatFormatter uses) already blocks escapes:
`''.__class__.__mro__`, `cycler.__init__.__globals__`, reading files, mutating `messages`. It does not bound
resources: `{{ 'x' * 10**10 }}` allocates 10 GB (at compile time: jinja folds constants), nested
`range(100000)` loops run for hours, a recursive macro raises RecursionError, `range(10**9)` OverflowError.

BoundedChatFormatter is a drop-in Jinja2ChatFormatter (same render context, same `to_chat_handler()` for
llama-cpp-python's server) whose environment
- checks the size a `*`, `+`, `%` or `**` would produce before computing it (intercepted binary operators are
  also never constant-folded at compile time), and the widths / counts given to str methods and filters that
  amplify (ljust, center, zfill, replace, format, indent, ...);
- stops rendering after a time budget (a trace function counts template code events, only during the render),
  and once the output exceeds a size cap;
and every limit, plus the RecursionError / OverflowError / MemoryError a template can provoke, becomes one
TemplateLimitError (a jinja2 SecurityError, so callers that handle SecurityError give a one-line error).
"""
from __future__ import annotations

import math
import operator
import re
import sys
import time
from typing import Any

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

MAX_ITEMS = 1 << 22  # characters of one string / items of one list a template may build (4 Mi)
MAX_OUTPUT = 1 << 22  # characters of the rendered prompt
MAX_SECONDS = 2.0  # a real chat template renders in milliseconds
MAX_POW_BITS = 4096  # `a ** b` results larger than this many bits are refused
_BIG_NUMBER = re.compile(r"\d{7,}")  # a width or precision of 10^6 or more in a format string


class TemplateLimitError(SecurityError):
    """The template tried to use more memory or time than a chat prompt needs."""


def _size(x: Any) -> int | None:
    return len(x) if isinstance(x, (str, bytes, list, tuple)) else None


def _check_items(n: int, what: str) -> None:
    if n > MAX_ITEMS:
        raise TemplateLimitError(f"{what} would build {n} items (limit {MAX_ITEMS})")


def _check_number(n: Any, what: str) -> None:
    if isinstance(n, int) and not isinstance(n, bool) and abs(n) > MAX_ITEMS:
        raise TemplateLimitError(f"{what} {n} is over the limit {MAX_ITEMS}")


def _check_format(fmt: Any, what: str) -> None:
    if isinstance(fmt, str) and _BIG_NUMBER.search(fmt):
        raise TemplateLimitError(f"{what}: a width or precision over 6 digits")


# str methods whose numeric arguments are output widths / counts, and those that can multiply their input
_WIDTH_METHODS = {"ljust", "rjust", "center", "zfill", "expandtabs"}
_FORMAT_METHODS = {"format", "format_map"}


def _check_str_call(obj: Any, args: tuple, kwargs: dict) -> None:
    name = getattr(obj, "__name__", "")
    target = getattr(obj, "__self__", None)
    if not isinstance(target, str):
        return
    if name in _WIDTH_METHODS:
        for a in (*args, *kwargs.values()):
            _check_number(a, f"str.{name} width")
    elif name == "replace" and len(args) >= 2 and isinstance(args[1], str):
        old = args[0] if isinstance(args[0], str) else ""
        count = target.count(old) if old else len(target) + 1
        _check_items(len(target) + count * len(args[1]), "str.replace")
    elif name in _FORMAT_METHODS:
        _check_format(target, f"str.{name}")
    elif name == "join" and args and isinstance(args[0], (list, tuple)):
        _check_items(len(target) * len(args[0]) + sum(len(str(a)) for a in args[0]), "str.join")


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment with size checks on operators and amplifying calls (see module doc)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context, op: str, left: Any, right: Any) -> Any:
        if op == "*":
            for seq, n in ((left, right), (right, left)):
                if _size(seq) is not None and isinstance(n, int):
                    _check_items(_size(seq) * max(n, 0), "repetition")
            return left * right
        if op == "+":
            if _size(left) is not None and _size(right) is not None:
                _check_items(_size(left) + _size(right), "concatenation")
            return left + right
        if op == "%":
            _check_format(left, "% formatting")
            return left % right
        if op == "**":
            if (isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0
                    and right * math.log2(abs(left)) > MAX_POW_BITS):
                raise TemplateLimitError(f"{left} ** {right} is over {MAX_POW_BITS} bits")
            return operator.pow(left, right)
        return super().call_binop(context, op, left, right)

    def call(self, context, obj, /, *args, **kwargs):
        _check_str_call(obj, args, kwargs)
        return super().call(context, obj, *args, **kwargs)


def _bounded_filters(env: jinja2.Environment) -> None:
    """Wrap the built-in filters that can amplify their input with the same checks as the str methods."""
    def center(value, width=80):
        _check_number(width, "center width")
        return original["center"](value, width)

    def indent(s, width=4, *args, **kwargs):
        if isinstance(width, int):
            _check_items(len(str(s)) + (str(s).count("\n") + 1) * width, "indent")
        else:
            _check_items(len(str(s)) * (str(s).count("\n") + 1) * len(str(width)), "indent")
        return original["indent"](s, width, *args, **kwargs)

    def replace(eval_ctx, s, old, new, count=None):
        _check_str_call(str(s).replace, (str(old), str(new)), {})
        return original["replace"](eval_ctx, s, old, new, count)

    def format_(value, *args, **kwargs):
        _check_format(value, "format filter")
        return original["format"](value, *args, **kwargs)

    original = dict(env.filters)
    replace = jinja2.pass_eval_context(replace)
    env.filters.update(center=center, indent=indent, replace=replace, format=format_)


class _BoundedTemplate:
    """A compiled template whose render() stops at the time and output limits."""

    def __init__(self, template: jinja2.Template, seconds: float, max_output: int):
        self.template, self.seconds, self.max_output = template, seconds, max_output

    def render(self, **context) -> str:
        deadline = time.monotonic() + self.seconds
        events = 0

        def tracer(frame, event, arg):
            nonlocal events
            events += 1
            if events & 1023 == 0 and time.monotonic() > deadline:
                raise TemplateLimitError(f"rendering took over {self.seconds:g} s (a runaway loop?)")
            return tracer

        previous = sys.gettrace()
        sys.settrace(tracer)
        try:
            parts, total = [], 0
            for piece in self.template.generate(**context):
                total += len(piece)
                if total > self.max_output:
                    raise TemplateLimitError(f"the rendered prompt is over {self.max_output} characters")
                parts.append(piece)
            return "".join(parts)
        except RecursionError:
            raise TemplateLimitError("the template recursed too deeply") from None
        except (OverflowError, MemoryError) as e:
            raise TemplateLimitError(f"the template asked for too much: {e or type(e).__name__}") from None
        finally:
            sys.settrace(previous)


class BoundedChatFormatter(Jinja2ChatFormatter):
    """llama-cpp-python's Jinja2ChatFormatter (same context: messages, bos/eos, raise_exception, tools, ...)
    rendering in a BoundedSandbox with time and output limits."""

    def __init__(self, template: str, eos_token: str, bos_token: str, add_generation_prompt: bool = True,
                 stop_token_ids=None, seconds: float = MAX_SECONDS, max_output: int = MAX_OUTPUT):
        self.template = template
        self.eos_token, self.bos_token = eos_token, bos_token
        self.add_generation_prompt = add_generation_prompt
        self.stop_token_ids = set(stop_token_ids) if stop_token_ids is not None else None
        env = BoundedSandbox(loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True,
                             extensions=[Jinja2ChatFormatter.IgnoreGenerationTags, jinja2.ext.loopcontrols])
        env.filters["tojson"] = self.tojson
        _bounded_filters(env)
        try:
            compiled = env.from_string(template)
        except (RecursionError, MemoryError, OverflowError) as e:  # deeply nested source, folded constants
            raise TemplateLimitError(f"the template is too complex to compile: {type(e).__name__}") from None
        self._environment = _BoundedTemplate(compiled, seconds, max_output)


def install() -> None:
    """Every llama_cpp.Llama created after this renders its GGUF chat template with BoundedChatFormatter: its
    __init__ builds the template handlers from `llama_chat_format.Jinja2ChatFormatter`, looked up at call time.
    For llama-cpp-python's server (ggufkit serve), whose chat requests go through those handlers."""
    import llama_cpp.llama_chat_format as chat_format

    chat_format.Jinja2ChatFormatter = BoundedChatFormatter
