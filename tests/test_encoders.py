"""prep.encoders: tiktoken gives the fast tokenizer's ids, or prep falls back to the fast tokenizer."""
import json

import pytest

from prep.config import PrepConfig
from prep.encoders import EncoderError, TextEncoder
from prep.pipeline import run
from prep.records import read_conversations
from prep.template import ConversationEncoder, ensure_chat_format, load_tokenizer
from tests.conftest import SAMPLE, ZH_SAMPLE, write_jsonl


@pytest.fixture(scope="module")
def tok():
    return ensure_chat_format(load_tokenizer("gpt2"))


def test_tiktoken_ids_equal_the_fast_tokenizers_on_the_whole_sample(tok):
    conversations = [c.messages for batch in read_conversations("sample") for c in batch]
    assert len(conversations) == 999
    fast = ConversationEncoder(tok, encoder="tokenizers")
    tiktoken = ConversationEncoder(tok, encoder="tiktoken")
    ids, mask, offsets = tiktoken.encode(conversations)
    assert tiktoken.text.name == "tiktoken"
    expected = fast.encode(conversations)
    assert ids.tolist() == expected[0].tolist() and (mask == expected[1]).all() and (offsets == expected[2]).all()


def test_special_strings_chinese_and_whitespace_are_plain_text_both_ways(tok):
    texts = ["<|im_start|>user\n<|endoftext|>", "  two  spaces \n\n\n", "\t\u00e9\U0001F600 x's", ""]
    texts += [r["instruction"] + r["output"] for r in json.loads(ZH_SAMPLE.read_text())]
    assert TextEncoder(tok, "tiktoken").encode(texts) == TextEncoder(tok, "tokenizers").encode(texts)


def test_both_encoders_write_byte_identical_shards(tok, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", json.loads(SAMPLE.read_text())[:80])
    files = {}
    for encoder in ("tiktoken", "tokenizers"):
        manifest = run(PrepConfig(data=str(data), out=str(tmp_path / encoder), mode="concat", max_length=128,
                                  encoder=encoder), progress=False)
        assert manifest.encoder == encoder
        files[encoder] = {p.name: p.read_bytes() for p in sorted((tmp_path / encoder).glob("*.arrow"))}
    assert files["tiktoken"] and files["tiktoken"] == files["tokenizers"]


def test_a_tokenizer_tiktoken_cannot_express_falls_back_with_one_line(capsys):
    tokenizer = ensure_chat_format(load_tokenizer("gpt2"))
    tokenizer.add_tokens(["helloworld"])  # matched inside text by the fast tokenizer only
    encoder = TextEncoder(tokenizer)
    assert encoder.name == "tokenizers"
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("prep: encoding with the fast tokenizer") and "non-special" in line
    with pytest.raises(EncoderError, match="--encoder tiktoken"):
        TextEncoder(tokenizer, "tiktoken")


def test_ids_that_differ_at_the_start_switch_to_the_fast_tokenizer(tok, capsys):
    class OffByOne:
        def encode_ordinary_batch(self, texts, num_threads):
            return [[i + 1 for i in ids] for ids in TextEncoder(tok, "tokenizers").encode(texts)]

    encoder = TextEncoder(tok)
    encoder._tiktoken = OffByOne()
    ids = encoder.encode(["Hello world", "again"])
    assert ids == TextEncoder(tok, "tokenizers").encode(["Hello world", "again"])
    assert encoder.name == "tokenizers"
    assert "tiktoken's ids differ on text 'Hello world'" in capsys.readouterr().err
