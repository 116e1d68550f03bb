"""prep over several sources, validation rows under --overlong, and the prompt format generation follows."""
import hashlib
import json
import subprocess
import sys

from prep.config import PrepConfig
from prep.pipeline import run
from shards.prompts import ALPACA_PREAMBLE, prompt_format_of
from tests.conftest import ROOT, SAMPLE, write_jsonl


def _arrow_files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.arrow"))}


def test_a_folder_and_two_sources_give_the_shards_of_their_concatenation(tmp_path):
    records = json.loads(SAMPLE.read_text())[:90]
    whole = write_jsonl(tmp_path / "whole.jsonl", records)
    parts = tmp_path / "parts"
    parts.mkdir()
    first = write_jsonl(parts / "part-0.jsonl", records[:40])
    second = write_jsonl(parts / "part-1.jsonl", records[40:])
    options = dict(mode="concat", max_length=128, val_ratio=0.1)
    run(PrepConfig(data=str(whole), out=str(tmp_path / "whole"), **options), progress=False)
    folder = run(PrepConfig(data=str(parts), out=str(tmp_path / "folder"), **options), progress=False)
    reference = _arrow_files(tmp_path / "whole")
    assert reference and _arrow_files(tmp_path / "folder") == reference
    assert [s.to_json() for s in folder.sources] == [
        {"source": str(parts / name), "fingerprint": hashlib.sha256((parts / name).read_bytes()).hexdigest()}
        for name in ("part-0.jsonl", "part-1.jsonl")
    ]
    # the same two files as two --data options, on the command line
    cli = subprocess.run([sys.executable, "-m", "prep", "--data", str(first), "--data", str(second), "--mode", "concat",
                          "--max-length", "128", "--out", str(tmp_path / "cli")], capture_output=True, text=True, cwd=ROOT)
    assert cli.returncode == 0, cli.stderr
    assert _arrow_files(tmp_path / "cli") == reference
    manifest = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert manifest["command"].count("--data ") == 2 and manifest["args"]["data"] == [str(first), str(second)]


def test_validation_rows_follow_overlong_drop(tmp_path):
    records = [{"instruction": "a", "output": "b"}] * 8 + [{"instruction": "a", "output": "b " * 100}] * 2
    data = write_jsonl(tmp_path / "d.jsonl", records)
    m = run(PrepConfig(data=str(data), out=str(tmp_path / "s"), mode="padding", max_length=32, overlong="drop",
                       val_ratio=0.3), progress=False)
    assert m.stats.val.dropped == {"too_long": 2}
    assert m.stats.val.samples == 1 and m.stats.val.truncated == 0


def test_the_shard_set_records_the_prompt_format_and_generation_follows_it(tmp_path):
    from transformers import AutoTokenizer

    from train.generate import render

    data = write_jsonl(tmp_path / "d.jsonl", json.loads(SAMPLE.read_text())[:20])
    m = run(PrepConfig(data=str(data), out=str(tmp_path / "s"), mode="padding", max_length=128), progress=False)
    assert m.prompt_format == "alpaca"
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "s" / "tokenizer"))
    assert prompt_format_of(tokenizer) == "alpaca"
    tokenizer.save_pretrained(str(tmp_path / "best"))  # as train saves it with every checkpoint
    saved = AutoTokenizer.from_pretrained(str(tmp_path / "best"))
    question = "Give three tips for staying healthy."
    rendered = saved.decode(render(saved, question)["input_ids"][0])
    assert rendered == f"<|im_start|>user\n{ALPACA_PREAMBLE}{question}<|im_end|>\n<|im_start|>assistant\n"
    raw = saved.decode(render(saved, question, raw=True)["input_ids"][0])
    assert raw == f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    plain = run(PrepConfig(data=str(data), out=str(tmp_path / "p"), mode="padding", max_length=128,
                           prompt_format="none"), progress=False)
    assert plain.prompt_format == "none"


def test_an_error_past_the_first_source_names_its_file_and_record(tmp_path):
    import pytest

    from prep.pipeline import PrepError

    short = write_jsonl(tmp_path / "short.jsonl", [{"instruction": "a", "output": "b"}] * 3)
    long = write_jsonl(tmp_path / "long.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "a", "output": "b " * 100}])
    with pytest.raises(PrepError, match=rf"^{long}: record 1 is \d+ tokens, over --max-length 32"):
        run(PrepConfig(data=(str(short), str(long)), out=str(tmp_path / "s"), mode="padding", max_length=32,
                       overlong="error", val_ratio=0.0), progress=False)
