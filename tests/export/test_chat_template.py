"""The bundle's chat template renderer (generate.py, no transformers) against transformers' apply_chat_template.

The templates below are written here in the shapes of the families users ship (Llama-3.2: BOS, a dated system
block, trim; Qwen2.5: a default system message, ChatML; SmolLM2: ChatML with its own default; a Gemma-style one
that refuses a system message and non-alternating roles; one using tojson, loop controls and a generation
block): what matters is that both renderers give the same tokens, or the same refusal.
"""

from __future__ import annotations

import pytest
from transformers import PreTrainedTokenizerFast

from compress.tasks.causal_lm.bundle_template import generate as bundle_generate
from tests.lm_fixtures import tiny_tokenizer

SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|im_start|>",
            "<|im_end|>", "<start_of_turn>", "<end_of_turn>"]  # fmt: skip

LLAMA3 = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- for tool in tools %}
        {{- tool | tojson }}
    {%- endfor %}
    {{- '<|im_end|>\\n' }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first)
           or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

GEMMA_STYLE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

FEATURES = """{%- set ns = namespace(turns=0) %}
{%- for message in messages %}
    {%- if loop.index > 3 %}{% break %}{% endif %}
    {%- set ns.turns = ns.turns + 1 %}
    {%- if message.role == 'assistant' %}
<|im_start|>assistant
{% generation %}{{ message.content }}{% endgeneration %}<|im_end|>
    {%- else %}
<|im_start|>{{ message.role }} {{ message | tojson }}<|im_end|>
    {%- endif %}
{%- endfor %}
{{ eos_token if ns.turns > 2 else '' }}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

TEMPLATES = {"llama3": LLAMA3, "qwen2.5": QWEN25, "smollm2": SMOLLM2, "gemma-style": GEMMA_STYLE, "features": FEATURES}

CONVERSATIONS = [
    [{"role": "user", "content": "How do I open a file?"}],
    [{"role": "system", "content": "  Answer briefly.  "}, {"role": "user", "content": " How do I open a file? "}],
    [
        {"role": "user", "content": "Name a sorting algorithm."},
        {"role": "assistant", "content": "Merge sort."},
        {"role": "user", "content": 'Its complexity, with "quotes" & <tags>, café ✓?'},
    ],
    [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "Then I answer."}],
]


@pytest.fixture(scope="module")
def hf_tokenizer():
    return PreTrainedTokenizerFast(
        tokenizer_object=tiny_tokenizer(400).backend_tokenizer,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        additional_special_tokens=SPECIALS,
    )


@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_the_bundle_renders_the_prompt_tokens_transformers_renders(hf_tokenizer, name, conversation,
                                                                    add_generation_prompt):  # fmt: skip
    messages = CONVERSATIONS[conversation]
    template = TEMPLATES[name]
    try:
        want = hf_tokenizer.apply_chat_template(
            messages, chat_template=template, add_generation_prompt=add_generation_prompt, tokenize=True
        )
    except Exception as e:  # noqa: BLE001 - the template's own refusal
        want = e
    ours = bundle_generate.ChatTemplate(template, hf_tokenizer.special_tokens_map)
    if isinstance(want, Exception):
        with pytest.raises(bundle_generate.PromptError, match="refuses this conversation"):
            ours.render(messages, add_generation_prompt)
        return
    text = ours.render(messages, add_generation_prompt)
    got = hf_tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids
    assert list(got) == list(want)
    assert len(want) > 5


def test_the_refusals_are_the_templates_own(hf_tokenizer):
    ours = bundle_generate.ChatTemplate(GEMMA_STYLE, hf_tokenizer.special_tokens_map)
    with pytest.raises(bundle_generate.PromptError, match="System role not supported"):
        ours.render(CONVERSATIONS[1])
    with pytest.raises(bundle_generate.PromptError, match="roles must alternate"):
        ours.render(CONVERSATIONS[3])
