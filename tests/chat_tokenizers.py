"""Local tokenizers with real models' chat conventions, built offline from the vendored GPT-2 BPE.

Each adds its model's special tokens and sets eos as the model's *base* tokenizer does,
where eos is not the token that ends a turn, with a Jinja template modelled on the real one:

    qwen2.5   ChatML, default system prompt; eos <|endoftext|>, turns end with <|im_end|>
    llama3    header tokens, contents trimmed, Llama 3's pre-tokenizer regex (its newline runs
              end a word, which GPT-2's regex does not); eos <|end_of_text|>, turns end with <|eot_id|>
    gemma     roles user/model, system folded into the first user turn, contents trimmed;
              eos <eos>, turns end with <end_of_turn>
"""
from __future__ import annotations

from pathlib import Path

QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}"
    "{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

# Llama 3's split pattern (tokenizer.json of Meta-Llama-3-8B), over the same byte-level BPE.
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# name: (template, special tokens added, eos, bos, pad, end of turn)
MODELS = {
    "qwen2.5": (QWEN25_TEMPLATE, ["<|im_start|>", "<|im_end|>"], "<|endoftext|>", None, "<|endoftext|>",
                "<|im_end|>"),
    "llama3": (LLAMA3_TEMPLATE, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                 "<|end_header_id|>", "<|eot_id|>"],
               "<|end_of_text|>", "<|begin_of_text|>", None, "<|eot_id|>"),
    "gemma": (GEMMA_TEMPLATE, ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"],
              "<eos>", "<bos>", "<pad>", "<end_of_turn>"),
}


def chat_tokenizer(name: str):
    """The vendored GPT-2 BPE dressed as `name` (a key of MODELS)."""
    from prep.template import load_tokenizer

    template, specials, eos, bos, pad, _ = MODELS[name]
    tokenizer = load_tokenizer("gpt2")
    if name == "llama3":
        # As Llama 3 ships it: a plain fast tokenizer whose tokenizer.json holds the regex
        # (GPT2Tokenizer would rebuild GPT-2's pre-tokenizer when loaded again).
        from tokenizers import Regex, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        backend = tokenizer.backend_tokenizer
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=1024)
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token = eos, bos, pad
    tokenizer.chat_template = template
    return tokenizer


def save_chat_tokenizer(name: str, folder: Path) -> Path:
    """`chat_tokenizer(name)` saved where `--tokenizer FOLDER` can load it."""
    chat_tokenizer(name).save_pretrained(str(folder))
    return folder
