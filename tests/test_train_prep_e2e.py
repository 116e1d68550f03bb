"""prep -> train -> generate on CPU, with shard sets that the real prep builds from a tiny .jsonl."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train_helpers import ROOT, one_thread, read_metrics, tiny_config  # noqa: F401
from train import loop
from train.generate import generate

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
pipeline = pytest.importorskip("prep.pipeline", reason="prep is not written yet")


def prep_shards(tmp_path: Path, mode: str) -> Path:
    from prep.config import PrepConfig

    records = json.loads((ROOT / "prep" / "data" / "alpaca_en_demo.json").read_text())[:40]
    data = tmp_path / "small.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / f"{mode}-128"
    pipeline.run(PrepConfig(data=str(data), mode=mode, max_length=128, val_ratio=0.2, out=str(out)),
                 command=f"python -m prep --data {data} --mode {mode} --max-length 128 --out {out}", progress=False)
    return out


def test_prep_then_train_then_generate(tmp_path):
    summaries = {}
    for mode in ("padding", "concat"):
        config = tiny_config(prep_shards(tmp_path, mode), tmp_path / f"run-{mode}", max_steps=3, eval_interval=3)
        summaries[mode] = loop.train(config)
    padding, concat = summaries["padding"], summaries["concat"]
    assert padding["mode"] == "padding" and concat["mode"] == "concat"
    # the val split is padding rows in every mode: evaluated on the same supervised tokens
    val = {mode: read_metrics(tmp_path / f"run-{mode}", "val")[-1]["val_supervised_tokens"] for mode in summaries}
    assert val["padding"] == val["concat"] > 0
    assert concat["padding_fraction"] < padding["padding_fraction"]
    reply = generate(tmp_path / "run-concat" / "best", "Give three tips for staying healthy.", max_new_tokens=4)
    assert isinstance(reply, str)
