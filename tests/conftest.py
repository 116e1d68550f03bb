"""Shared fixtures: small offline inputs built from the vendored sample."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "prep" / "data" / "alpaca_en_demo.json"
ZH_SAMPLE = ROOT.parent / "shared" / "assets" / "instruction-data" / "alpaca_zh_demo.json"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def small_jsonl(tmp_path) -> Path:
    """The first 120 records of the embedded Alpaca sample as a .jsonl file."""
    records = json.loads(SAMPLE.read_text())[:120]
    return write_jsonl(tmp_path / "small.jsonl", records)
