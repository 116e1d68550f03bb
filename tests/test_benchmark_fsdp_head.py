"""`python -m benchmarks.fsdp_head`: where the label-only head's weight lives under --fsdp, timed on two processes;
its correctness (both placements train the same losses, each is what it claims), never its timings."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from benchmarks import common, fsdp_head


@pytest.fixture(scope="module")
def records():
    return common.sample_records(40)


@pytest.mark.slow
def test_fsdp_head_times_both_placements_on_two_processes_and_writes_the_docs_table(tmp_path, records):
    """`python -m benchmarks.fsdp_head` end to end on 40 records, one timed step each: two torchrun processes
    build the head with the root and as its own unit (the worker checks which), train the same losses, and the
    table lands between the docs file's markers."""
    docs = tmp_path / "scale.md"
    docs.write_text("before\n<!-- fsdp-head:start -->\nold\n<!-- fsdp-head:end -->\nafter\n")
    outcome = CliRunner().invoke(fsdp_head.main, ["--steps", "1", "--records", "40", "--batch-size", "4",
                                                  "--work", str(tmp_path / "w"), "--out", str(tmp_path / "r.json"),
                                                  "--docs", str(docs)])
    assert outcome.exit_code == 0, outcome.output
    section = json.loads((tmp_path / "r.json").read_text())["sections"]["fsdp_head"]
    assert {name: len(r["seconds"]) for name, r in section.items()} == {"root": 1, "unit": 1}
    found = {f["name"]: f for f in fsdp_head.figures(section)}
    assert found["same_losses"]["passed"] is True and found["unit_over_root"]["value"] > 0
    text = docs.read_text()
    assert text.startswith("before\n<!-- fsdp-head:start -->\n`python -m benchmarks.fsdp_head --docs ")
    assert "| fsdp_head | `unit_over_root` |" in text and "old" not in text and text.endswith("after\n")


def test_fsdp_head_figures_name_the_faster_placement():
    section = {"root": {"seconds": [1.0, 2.0, 1.0], "losses": [3.0, 2.0, 1.0]},
               "unit": {"seconds": [1.5, 2.0, 1.2], "losses": [3.0, 2.0, 1.0 + 1e-3]}}
    found = {f["name"]: f for f in fsdp_head.figures(section)}
    assert found["unit_over_root"]["value"] == 1.2 and found["unit_over_root"]["note"].endswith("faster: the root")
    assert found["same_losses"]["passed"] is False and found["root_step_seconds"]["value"] == 1.0
    section["unit"]["seconds"] = [0.5, 2.5, 1.0]  # rounds 0.5, 1.25, 1.0: on both sides of 1
    assert "faster: neither" in {f["name"]: f for f in fsdp_head.figures(section)}["unit_over_root"]["note"]
