"""A shortened `make demo` end to end: shards, three runs and a second seed, the report (slow, run by CI)."""
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_shortened_demo_writes_the_report_and_loadable_checkpoints(tmp_path):
    demo = tmp_path / "demo"
    args = "--model tiny --max-steps 2 --warmup-steps 1 --eval-interval 1 --batch-size 4 --no-progress"
    result = subprocess.run(
        ["make", "-s", "demo", f"DEMO_DIR={demo}", f"DEMO_TRAIN_ARGS={args}", "DEMO_MAX_LENGTH=128",
         "DEMO_PREP_ARGS=--limit 200", "DEMO_REPORT_ARGS=--max-new-tokens 8",
         "DEMO_EVAL_ARGS=--hellaswag-data train/assets/hellaswag_demo.jsonl --limit 8",
         f"PY={sys.executable}", "STAMP="],
        cwd=ROOT, capture_output=True, text=True, timeout=1200,  # four runs; generous for a shared machine
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = demo / "report" / "report.md"
    assert f"report: {report}" in result.stdout
    text = report.read_text()
    assert "](loss_curves.png)" in text and (demo / "report" / "loss_curves.png").stat().st_size > 10_000
    for heading in ("## What the numbers show", "## Runs", "## lm-eval scores", "## Shard statistics", "## Generations"):
        assert heading in text
    assert "Give three tips for staying healthy." in text and "Can you tell me the history of Earth" in text
    # the second seed of one layout gives the spread; the baseline and the wall time are stated
    assert "| concat-seed1338 | concat |" in text and "Seed-to-seed spread" in text
    assert "unigram baseline" in text and "Wall time from the start of the command to this report" in text

    from transformers import AutoModelForCausalLM, AutoTokenizer

    for mode in ("padding", "packed", "concat"):
        best = demo / mode / "best"
        model = AutoModelForCausalLM.from_pretrained(str(best))
        tokenizer = AutoTokenizer.from_pretrained(str(best))
        assert model.get_input_embeddings().num_embeddings >= len(tokenizer)
        assert f"| {mode} | {mode} |" in text
        assert json.loads((demo / mode / "eval.json").read_text())["results"][0]["n"] == 8
        # runs go two at a time (DEMO_JOBS), sharing out the cores as torch threads
        summary = json.loads((demo / mode / "summary.json").read_text())
        assert summary["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
