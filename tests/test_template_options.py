"""Template options: --chat-template, --chat-template-kwargs, --template-date, --system-message,
all recorded in the manifest and the saved tokenizer, and rebuilds byte-identical on another day."""
from __future__ import annotations

import datetime
import json

import pytest

from prep.config import PrepConfig
from prep.pipeline import run
from prep.template import ChatFormatError, ConversationEncoder, ensure_chat_format, load_tokenizer
from shards.prompts import render_chat
from tests.conftest import write_jsonl

# ChatML with a dated system line (as Llama 3.2 writes one) and an option, both as real templates spell them.
DATED = (
    "{%- set today = strftime_now('%d %b %Y') -%}"
    "{{ '<|im_start|>system\\nToday Date: ' + today + (' (brief)' if brief is defined and brief else '') + '<|im_end|>\\n' }}"
    "{%- for m in messages %}{%- if m['role'] != 'system' %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
RECORDS = [{"messages": [{"role": "system", "content": f"Be brief {i}."}, {"role": "user", "content": f"Hi {i}"},
                         {"role": "assistant", "content": f"Hello {i}."}]} for i in range(12)]


class _Day(datetime.date):
    today_is = datetime.date(2026, 1, 5)

    @classmethod
    def today(cls):
        return cls.today_is


@pytest.fixture
def dated_template(tmp_path):
    path = tmp_path / "dated.jinja"
    path.write_text(DATED)
    return path


def _prep(tmp_path, out, template, **options):
    data = write_jsonl(tmp_path / "chat.jsonl", RECORDS)
    config = PrepConfig(data=str(data), out=str(out), mode="padding", max_length=64, val_ratio=0.25,
                        chat_template=str(template), **options)
    return run(config, progress=False)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.arrow"))}


def test_a_rebuild_on_another_day_is_byte_identical(tmp_path, dated_template, monkeypatch):
    import prep.pipeline

    fake = type("fake_datetime", (), {"date": _Day})
    monkeypatch.setattr(prep.pipeline, "datetime", fake)
    first = _prep(tmp_path, tmp_path / "s", dated_template)
    assert first.template.date == "2026-01-05"
    before = _files(tmp_path / "s")
    _Day.today_is = datetime.date(2026, 7, 9)  # the clock moves on; the output folder remembers its date
    again = _prep(tmp_path, tmp_path / "s", dated_template)
    assert again.template.date == "2026-01-05" and _files(tmp_path / "s") == before
    elsewhere = _prep(tmp_path, tmp_path / "t", dated_template)  # a new output takes today's date
    assert elsewhere.template.date == "2026-07-09" and _files(tmp_path / "t") != before
    pinned = _prep(tmp_path, tmp_path / "u", dated_template, template_date="2026-01-05")
    assert _files(tmp_path / "u") == before


def test_options_are_recorded_and_generation_renders_with_them(tmp_path, dated_template):
    from transformers import AutoTokenizer

    manifest = _prep(tmp_path, tmp_path / "s", dated_template, chat_template_kwargs='{"brief": true}',
                     template_date="2025-03-02")
    assert manifest.template.kwargs == {"brief": True} and manifest.template.date == "2025-03-02"
    assert manifest.args["chat_template"] == str(dated_template)
    saved = AutoTokenizer.from_pretrained(str(tmp_path / "s" / "tokenizer"))
    prompt = render_chat(saved, [{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nToday Date: 02 Mar 2025 (brief)<|im_end|>")
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["template"]["system_message"] == "keep"


def test_system_message_policies(tmp_path, dated_template, capsys):
    """The template drops the system message: keep counts it and says so; fold keeps its words in the
    first user turn; error refuses in one line naming the fix."""
    kept = _prep(tmp_path, tmp_path / "keep", dated_template, template_date="2025-03-02")
    assert kept.template.dropped_messages == {"system": 12}
    assert "leaves out 1 system" in capsys.readouterr().err
    folded = _prep(tmp_path, tmp_path / "fold", dated_template, template_date="2025-03-02", system_message="fold")
    assert folded.template.dropped_messages == {} and folded.template.system_message == "fold"
    with pytest.raises(ChatFormatError, match="drops the system message.*--system-message fold"):
        _prep(tmp_path, tmp_path / "error", dated_template, template_date="2025-03-02", system_message="error")
    assert not (tmp_path / "error").exists()


def test_fold_prepends_the_system_message_to_the_first_user_turn():
    tokenizer = ensure_chat_format(load_tokenizer("gpt2"))
    tokenizer.chat_template = DATED
    encoder = ConversationEncoder(tokenizer, system_message="fold")
    conversation = (("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."))
    assert encoder.prepare(conversation) == (("user", "Be brief.\n\nHi"), ("assistant", "Hello."))
    ids, mask, _ = encoder.encode([conversation])
    assert "Be brief.\n\nHi" in tokenizer.decode(ids) and tokenizer.decode(ids[mask == 1]) == "Hello.<|im_end|>"


def test_a_prompt_that_differs_from_generation_is_recorded_not_refused(tmp_path):
    """The generation prompt opens a think block the conversation does not have (as QwQ's does): masks
    follow the conversation, and the manifest says which shape and turn differ."""
    template = tmp_path / "think.jinja"
    template.write_text(
        "{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}")
    data = write_jsonl(tmp_path / "chat.jsonl", [{"messages": r["messages"][1:]} for r in RECORDS])
    manifest = run(PrepConfig(data=str(data), out=str(tmp_path / "s"), mode="padding", max_length=64,
                              val_ratio=0.25, chat_template=str(template)), progress=False)
    assert manifest.template.prompt_matches_generation is False
    mismatch, = manifest.template.mismatches
    assert (mismatch.roles, mismatch.first_turn, mismatch.conversations) == ("user,assistant", 1, 12)


def test_bad_options_are_one_error_naming_each(tmp_path):
    from sftcli import ConfigError

    with pytest.raises(ConfigError) as error:
        PrepConfig(chat_template=str(tmp_path / "missing.jinja"), chat_template_kwargs="[1]",
                   template_date="5 Jan").validate()
    message = str(error.value)
    assert "--chat-template: " in message and "--chat-template-kwargs: must be a JSON object" in message
    assert "--template-date: expected YYYY-MM-DD" in message
