"""Shared fixtures: small offline inputs built from the vendored sample."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "prep" / "data" / "alpaca_en_demo.json"
# First 50 rows of alpaca_zh_demo.json (llamafactory==0.9.5 data/, Alpaca-style rows, CC BY-NC 4.0).
ZH_SAMPLE = ROOT / "tests" / "data" / "alpaca_zh_50.json"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def small_jsonl(tmp_path) -> Path:
    """The first 120 records of the embedded Alpaca sample as a .jsonl file."""
    records = json.loads(SAMPLE.read_text())[:120]
    return write_jsonl(tmp_path / "small.jsonl", records)
