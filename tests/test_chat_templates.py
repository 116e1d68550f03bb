"""Real models' chat conventions: supervision stops at each turn's end-of-turn token, not at eos."""
from __future__ import annotations

import json

import pytest

from prep.config import PrepConfig
from prep.pipeline import run
from prep.template import ChatFormatError, ConversationEncoder, ensure_chat_format, load_tokenizer
from tests.chat_tokenizers import MODELS, chat_tokenizer, save_chat_tokenizer
from tests.conftest import write_jsonl

SYSTEM_MULTI_TURN = (
    ("system", "Answer in one word."),
    ("user", "Capital of France?"),
    ("assistant", "Paris"),
    ("user", " And of Italy? "),
    ("assistant", " Rome "),
    ("user", "Spain?"),
    ("assistant", "Madrid, of course."),
)
NO_SYSTEM = (("user", "Hi"), ("assistant", "Hello there."), ("user", "Bye"), ("assistant", "Bye!"))


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return request.param, ensure_chat_format(chat_tokenizer(request.param))


def _supervised_spans(tokenizer, ids, mask) -> list[str]:
    """The decoded runs of consecutive supervised tokens."""
    spans, run_ids = [], []
    for token, label in zip(ids.tolist() + [None], mask.tolist() + [0]):
        if label:
            run_ids.append(token)
        elif run_ids:
            spans.append(tokenizer.decode(run_ids))
            run_ids = []
    return spans


@pytest.mark.parametrize("conversation", [SYSTEM_MULTI_TURN, NO_SYSTEM], ids=["system-3-turns", "2-turns"])
def test_supervised_text_is_each_reply_and_its_end_of_turn(model, conversation):
    name, tokenizer = model
    end_of_turn = MODELS[name][5]
    assert tokenizer.eos_token != end_of_turn  # the case the eos-based mask got wrong
    encoder = ConversationEncoder(tokenizer)
    ids, mask, offsets = encoder.encode([conversation])
    trims = name != "qwen2.5"  # the Llama 3 and Gemma templates `| trim` contents
    replies = [content.strip() if trims else content for role, content in conversation if role == "assistant"]
    assert _supervised_spans(tokenizer, ids, mask) == [reply + end_of_turn for reply in replies]
    assert encoder.end_of_turn_id == tokenizer.convert_tokens_to_ids(end_of_turn)
    # the construction gives what the tokenizer gives the whole rendered conversation
    rendered = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in conversation], tokenize=False)
    assert ids.tolist() == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert encoder.check_prompts([conversation], ids, offsets) is None


def test_llama3_template_over_gpt2_regex_is_caught_by_the_prompt_check():
    """GPT-2's regex splits "\\n\\n" + "Hi" differently from "\\n\\n" alone, so a prompt ending
    in the header's "\\n\\n" is not a token prefix of the conversation: refused, never masked wrong."""
    tokenizer = load_tokenizer("gpt2")
    template, specials, eos, bos, _, _ = MODELS["llama3"]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.eos_token, tokenizer.bos_token, tokenizer.chat_template = eos, bos, template
    encoder = ConversationEncoder(ensure_chat_format(tokenizer))
    ids, _, offsets = encoder.encode([NO_SYSTEM])
    assert encoder.check_prompts([NO_SYSTEM], ids, offsets)[0] == 0


# Plain "role: content" lines: no special token anywhere, so nothing ends a reply.
UNCLOSED_TEMPLATE = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
                     "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")


def test_template_without_a_closing_special_token_is_refused_unless_loss_on_all():
    tokenizer = load_tokenizer("gpt2")
    tokenizer.chat_template = UNCLOSED_TEMPLATE
    tokenizer = ensure_chat_format(tokenizer)
    with pytest.raises(ChatFormatError, match="no special token.*--loss-on all"):
        ConversationEncoder(tokenizer)
    ids, mask, _ = ConversationEncoder(tokenizer, loss_on="all").encode([NO_SYSTEM])
    assert mask.all() and len(ids) > 0


def test_prep_records_the_end_of_turn_token_and_train_stops_there(tmp_path):
    from transformers import AutoTokenizer

    from train.model import load_model

    folder = save_chat_tokenizer("llama3", tmp_path / "tok")
    records = [{"messages": [{"role": r, "content": c} for r, c in SYSTEM_MULTI_TURN]}] * 8
    data = write_jsonl(tmp_path / "chat.jsonl", records)
    manifest = run(PrepConfig(data=str(data), tokenizer=str(folder), out=str(tmp_path / "s"), mode="padding",
                              max_length=128, val_ratio=0.25), progress=False)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "s" / "tokenizer"))
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert manifest.end_of_turn_token_id == eot != manifest.eos_token_id
    assert manifest.prompt_format == "none"  # chat data: the user wrote the turns
    model = load_model("tiny", tokenizer, end_of_turn_token_id=manifest.end_of_turn_token_id)
    assert model.generation_config.eos_token_id == [eot, tokenizer.eos_token_id]
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["end_of_turn_token_id"] == eot
