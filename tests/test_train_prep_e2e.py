"""prep -> train -> generate on CPU, with shard sets that the real prep builds from a tiny .jsonl."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from prep import pipeline
from prep.config import PrepConfig
from tests.train_helpers import ROOT, one_thread, read_metrics, tiny_config  # noqa: F401
from train import loop
from train.generate import generate

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def prep_shards(tmp_path: Path, mode: str, records: list[dict], max_length: int = 128) -> Path:
    data = tmp_path / f"{mode}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / f"{mode}-{max_length}"
    pipeline.run(PrepConfig(data=str(data), mode=mode, max_length=max_length, val_ratio=0.2, out=str(out)),
                 command=f"python -m prep --data {data} --mode {mode} --max-length {max_length} --out {out}",
                 progress=False)
    return out


def test_prep_then_train(tmp_path):
    records = json.loads((ROOT / "prep" / "data" / "alpaca_en_demo.json").read_text())[:40]
    summaries = {}
    for mode in ("padding", "concat"):
        config = tiny_config(prep_shards(tmp_path, mode, records), tmp_path / f"run-{mode}", max_steps=3, eval_interval=3)
        summaries[mode] = loop.train(config)
    padding, concat = summaries["padding"], summaries["concat"]
    assert padding["mode"] == "padding" and concat["mode"] == "concat"
    # the val split is padding rows in every mode: evaluated on the same supervised tokens
    val = {mode: read_metrics(tmp_path / f"run-{mode}", "val")[-1]["val_supervised_tokens"] for mode in summaries}
    assert val["padding"] == val["concat"] > 0
    assert concat["padding_fraction"] < padding["padding_fraction"]


def test_generate_replies_with_a_sample_learned_by_heart(tmp_path):
    """Trained on one short conversation until it knows it by heart, the checkpoint prep -> train
    wrote answers its prompt with exactly that reply: template, masks, labels, eos and generation agree."""
    record = {"messages": [{"role": "user", "content": "What is the capital of France?"},
                           {"role": "assistant", "content": "Paris, on the Seine."}]}
    shards = prep_shards(tmp_path, "padding", [record] * 10, max_length=64)
    loop.train(tiny_config(shards, tmp_path / "run", max_steps=60, warmup_steps=5, learning_rate=1e-2, eval_interval=20))
    assert generate(tmp_path / "run" / "best", "What is the capital of France?", max_new_tokens=16) == "Paris, on the Seine."
