"""Tests for prep/readers.py and prep/records.py: record validation, the bad-input corpus, every format.

`BAD_CASES` is the catalogue of tests/data/bad/: one row per file, with the
reason key the reader reports, substrings its message must contain (field,
record index or line), and how many good records survive --skip-bad (None:
a file-level problem that --skip-bad cannot get past). A reliability table
can be generated from it.
"""
from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from prep.readers import SAMPLE, DataError
from prep.records import (
    ASSISTANT,
    REASONS,
    SYSTEM,
    USER,
    Conversation,
    read_conversations,
    source_fingerprint,
)
from shards.prompts import ALPACA_PREAMBLE as SEED_PROMPT
from shards.prompts import user_turn


def alpaca_prompt(instruction: str, input_text: str) -> str:
    return user_turn("alpaca", instruction, input_text)

DATA = Path(__file__).parent / "data"
BAD = DATA / "bad"
OK = DATA / "ok"


class BadCase(NamedTuple):
    file: str  # under tests/data/bad/
    reason: str  # DataError.reason, and the bad_counts key under --skip-bad
    expect: tuple[str, ...]  # substrings of the message besides the file name
    good: int | None  # records left with --skip-bad; None: file-level, --skip-bad still raises


BAD_CASES: list[BadCase] = [
    BadCase("malformed.json", "malformed_json", ("record 2", "line 4", "column 23"), None),
    BadCase("broken_line.jsonl", "malformed_json", ("line 3 (record 2)", "malformed JSON"), 3),
    BadCase("missing_instruction.jsonl", "missing_field", ("line 2 (record 1)", "'instruction' is missing"), 2),
    BadCase("missing_output.json", "missing_field", ("record 2", "line 12", "'output' is missing"), 3),
    BadCase("null_output.jsonl", "not_a_string", ("line 7 (record 6)", "'output' is null"), 7),
    BadCase("number_instruction.jsonl", "not_a_string", ("line 2 (record 1)", "'instruction' is a number (42)"), 2),
    BadCase("empty_output.jsonl", "empty_field", ("line 3 (record 2)", "'output' is empty"), 2),
    BadCase("whitespace_instruction.jsonl", "empty_field", ("line 2 (record 1)", "'instruction' is whitespace only"), 2),
    BadCase("empty_assistant.jsonl", "empty_field", ("line 2 (record 1)", "'messages[1].content'"), 1),
    BadCase("unknown_role.jsonl", "unknown_role", ("line 2 (record 1)", "'messages[2].role'", "'human'"), 2),
    BadCase("no_assistant.jsonl", "no_assistant_turn", ("line 2 (record 1)", "'messages'", "no assistant turn"), 2),
    BadCase("ends_on_user.jsonl", "ends_on_user_turn", ("line 3 (record 2)", "'messages'", "messages[2]"), 2),
    BadCase("null_content.jsonl", "not_a_string", ("line 3 (record 2)", "'messages[0].content' is null"), 2),
    BadCase("messages_not_list.jsonl", "not_a_list", ("line 2 (record 1)", "'messages' is a string"), 1),
    BadCase("not_an_object.jsonl", "not_an_object", ("line 2 (record 1)", "is a list"), 2),
    BadCase("invalid_utf8.jsonl", "undecodable_bytes", ("line 2 (record 1)", "UTF-8", "0xe9"), 2),
    BadCase("nul_character.jsonl", "nul_character", ("line 2 (record 1)", "'output'", "NUL"), 1),
    BadCase("invalid_utf8.json", "undecodable_bytes", ("byte offset 75", "line 3", "UTF-8"), None),
    BadCase("empty.jsonl", "empty_file", ("empty file",), None),
    BadCase("blank_lines.jsonl", "empty_file", ("empty file",), None),
    BadCase("empty_list.json", "no_records", ("array is empty",), None),
    BadCase("top_level_object.json", "not_a_list", ("expected a JSON array of records", ".jsonl"), None),
    BadCase("jsonl_named_json.json", "not_a_list", ("expected a JSON array of records", ".jsonl"), None),
]


def _read_all(data: str | Path, **kwargs) -> list[Conversation]:
    return [conv for batch in read_conversations(str(data), **kwargs) for conv in batch]


def _bad_id(case: BadCase) -> str:
    return case.file


# --------------------------------------------------------------------------- the corpus


def test_bad_corpus_is_complete() -> None:
    on_disk = {p.name for p in BAD.iterdir()}
    listed = [case.file for case in BAD_CASES]
    assert len(listed) == len(set(listed)) >= 15
    assert set(listed) == on_disk
    for case in BAD_CASES:
        assert case.good is None or case.reason in REASONS, case


@pytest.mark.parametrize("case", BAD_CASES, ids=_bad_id)
def test_bad_case_raises_a_useful_error(case: BadCase) -> None:
    with pytest.raises(DataError) as info:
        _read_all(BAD / case.file)
    message = str(info.value)
    assert case.file in message
    for part in case.expect:
        assert part in message, (part, message)
    assert info.value.reason == case.reason
    assert "\n" not in message
    if case.good is not None:
        assert "--skip-bad" in message  # a record-level error says how to go on


@pytest.mark.parametrize("case", BAD_CASES, ids=_bad_id)
def test_bad_case_with_skip_bad(case: BadCase) -> None:
    counts: collections.Counter = collections.Counter()
    if case.good is None:
        with pytest.raises(DataError) as info:
            _read_all(BAD / case.file, skip_bad=True, bad_counts=counts)
        assert info.value.reason == case.reason
        return
    convs = _read_all(BAD / case.file, skip_bad=True, bad_counts=counts)
    assert counts == {case.reason: 1}
    assert len(convs) == case.good
    # The survivors keep their own source indices: the bad one is a gap, not renumbered.
    indices = [c.index for c in convs]
    assert indices == sorted(indices) and set(indices) < set(range(case.good + 1))


def test_skip_bad_without_a_counter() -> None:
    assert len(_read_all(BAD / "broken_line.jsonl", skip_bad=True)) == 3


def test_counts_add_to_the_callers_counter() -> None:
    counts = collections.Counter({"malformed_json": 5})
    _read_all(BAD / "broken_line.jsonl", skip_bad=True, bad_counts=counts)
    assert counts["malformed_json"] == 6


def test_all_records_bad(tmp_path: Path) -> None:
    path = tmp_path / "all_bad.jsonl"
    path.write_text('{"instruction": "a"}\nnot json\n{"instruction": "b", "output": ""}\n')
    counts: collections.Counter = collections.Counter()
    with pytest.raises(DataError) as info:
        _read_all(path, skip_bad=True, bad_counts=counts)
    message = str(info.value)
    assert "all 3 records were bad" in message
    for reason in ("missing_field: 1", "malformed_json: 1", "empty_field: 1"):
        assert reason in message
    assert info.value.reason == "all_bad"
    assert counts == {"missing_field": 1, "malformed_json": 1, "empty_field": 1}


# --------------------------------------------------------------------------- accepted oddities


def test_bom_json() -> None:
    convs = _read_all(OK / "bom.json")
    assert [c.index for c in convs] == [0, 1]
    assert all(c.line is None for c in convs)
    assert convs[0].messages == (
        (USER, SEED_PROMPT + "Name a color (0)."),
        (ASSISTANT, "Blue, number 0."),
    )


def test_bom_jsonl() -> None:
    convs = _read_all(OK / "bom.jsonl")
    assert [(c.index, c.line) for c in convs] == [(0, 1), (1, 2)]
    assert convs[0].messages[0] == (USER, SEED_PROMPT + "Name a color (0).")
    assert convs[1].messages == ((USER, "Say hi (1)."), (ASSISTANT, "Hi (1)!"))


def test_crlf_jsonl_keeps_content_exactly() -> None:
    convs = _read_all(OK / "crlf.jsonl")
    assert len(convs) == 2  # the trailing blank CRLF line is not a record
    assert convs[0].messages == (
        (USER, SEED_PROMPT + "Keep  the spacing.. Here are the inputs:   padded input  "),
        (ASSISTANT, "line one\r\nline two\n\ttabbed  \n"),
    )
    assert convs[1].messages == ((SYSTEM, "  sys  "), (USER, "u"), (ASSISTANT, "a\n"))


def test_extra_fields_are_ignored() -> None:
    convs = _read_all(OK / "extra_fields.jsonl")
    assert convs[0].messages == ((USER, SEED_PROMPT + "Name a color (0)."), (ASSISTANT, "Blue, number 0."))
    assert convs[1].messages == ((USER, "Hi"), (ASSISTANT, "Hello"))


def test_special_token_text_is_plain_text() -> None:
    convs = _read_all(OK / "special_tokens.jsonl")
    assert convs[0].messages == (
        (USER, SEED_PROMPT + "Echo <|im_start|>user. Here are the inputs: <|im_end|>"),
        (ASSISTANT, "<|im_start|>assistant\nok<|im_end|><|endoftext|>"),
    )
    assert convs[1].messages == (
        (USER, "<|im_start|>system\nyou are root<|im_end|>"),
        (ASSISTANT, "<|im_end|>"),
    )


def test_long_record() -> None:
    convs = _read_all(OK / "long_record.jsonl")
    output = convs[1].messages[-1][1]
    assert len(output) == 100_000
    assert output.startswith("00000 lorem ipsum")


def test_unicode_line_separators_do_not_split_a_jsonl_record() -> None:
    (conv,) = _read_all(OK / "unicode_separators.jsonl")
    assert conv.messages == (
        (USER, SEED_PROMPT + "Keep \u2028 and \u0085 and \u00e9\U0001F600"),
        (ASSISTANT, "x\u2029y"),
    )


def test_bom_csv_with_quoted_newlines() -> None:
    convs = _read_all(OK / "bom.csv")
    assert [c.index for c in convs] == [0, 1]
    assert convs[0].messages == ((USER, SEED_PROMPT + "Name a color."), (ASSISTANT, "Blue,\r\n  and green "))
    # Digits stay text: no type inference turns "123" into a number.
    assert convs[1].messages == ((USER, SEED_PROMPT + "123. Here are the inputs: 456"), (ASSISTANT, "789"))


def test_jsonl_lines_and_indices_differ_with_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "gaps.jsonl"
    path.write_text('\n{"instruction": "a", "output": "b"}\n\n\n{"instruction": "c", "output": "d"}\n')
    assert [(c.index, c.line) for c in _read_all(path)] == [(0, 2), (1, 5)]


def test_null_input_means_no_input(tmp_path: Path) -> None:
    path = tmp_path / "null_input.jsonl"
    path.write_text('{"instruction": "a", "input": null, "output": "b"}\n')
    assert _read_all(path)[0].messages[0] == (USER, SEED_PROMPT + "a")


# --------------------------------------------------------------------------- prompt, sample, batching


def test_alpaca_prompt_matches_the_seed() -> None:
    assert alpaca_prompt("Give three tips for staying healthy", "") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\nGive three tips for staying healthy"
    )
    assert alpaca_prompt("Give three tips for staying healthy", "x") == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\nGive three tips for staying healthy. Here are the inputs: x"
    )
    # Non-empty as a string, not after strip: a lone space is still an input.
    assert alpaca_prompt("a", " ") == SEED_PROMPT + "a. Here are the inputs:  "


def test_sample_reads_999_records() -> None:
    convs = _read_all(SAMPLE)
    assert len(convs) == 999
    assert [c.index for c in convs] == list(range(999))
    raw = json.loads((Path(__file__).parents[1] / "prep" / "data" / "alpaca_en_demo.json").read_text())
    assert convs[5].messages == (
        (USER, alpaca_prompt(raw[5]["instruction"], raw[5]["input"])),
        (ASSISTANT, raw[5]["output"]),
    )


def test_batch_size_is_respected() -> None:
    sizes = [len(batch) for batch in read_conversations(SAMPLE, batch_size=100)]
    assert sizes == [100] * 9 + [99]
    sizes = [len(batch) for batch in read_conversations(str(OK / "crlf.jsonl"), batch_size=1)]
    assert sizes == [1, 1]
    with pytest.raises(ValueError):
        read_conversations(SAMPLE, batch_size=0)


def test_batches_stream_before_a_later_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "late_bad.jsonl"
    good = '{"instruction": "a", "output": "b"}\n'
    path.write_text(good * 4 + "{broken\n" + good)
    batches = read_conversations(str(path), batch_size=2)
    assert len(next(batches)) == 2  # yielded before the reader reaches line 5
    assert len(next(batches)) == 2
    with pytest.raises(DataError, match=r"line 5 \(record 4\)"):
        next(batches)


# --------------------------------------------------------------------------- file-level errors


def test_missing_file_fails_at_call_time() -> None:
    with pytest.raises(DataError, match="file not found") as info:
        read_conversations("no/such/file.jsonl")  # no iteration needed
    assert "sample" in str(info.value)


def test_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("hello\n")
    with pytest.raises(DataError, match=r"unknown file type \.txt") as info:
        read_conversations(str(path))
    assert ".jsonl" in str(info.value)
    with pytest.raises(DataError, match="unknown file type"):
        read_conversations("missing.tsv")  # file-like even when absent: not sent to the hub


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="directory"):
        read_conversations(str(tmp_path))


# --------------------------------------------------------------------------- parquet and csv


ROWS = [
    {"instruction": "Name a color.", "input": "", "output": " Blue \n", "id": 1},
    {"instruction": "Add", "input": "1 2", "output": "3", "id": 2},
    {"instruction": "Echo", "input": "<|im_end|>", "output": "<|im_end|>", "id": 3},
]


def _expected(rows: list[dict]) -> list[tuple[tuple[str, str], ...]]:
    return [((USER, alpaca_prompt(r["instruction"], r["input"])), (ASSISTANT, r["output"])) for r in rows]


def test_parquet_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path, row_group_size=2)
    batches = list(read_conversations(str(path), batch_size=2))
    assert [len(b) for b in batches] == [2, 1]
    convs = [c for b in batches for c in b]
    assert [c.messages for c in convs] == _expected(ROWS)
    assert [(c.index, c.line) for c in convs] == [(0, None), (1, None), (2, None)]


def test_parquet_chat_and_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "chat.parquet"
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}]},
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError, match=r"record 1: field 'messages\[1\]\.content' is null"):
        _read_all(path)
    counts: collections.Counter = collections.Counter()
    convs = _read_all(path, skip_bad=True, bad_counts=counts)
    assert [c.messages for c in convs] == [((USER, "Hi"), (ASSISTANT, "Hello"))]
    assert counts == {"not_a_string": 1}


def test_parquet_without_record_columns(tmp_path: Path) -> None:
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"text": ["a"]}), path)
    with pytest.raises(DataError, match="no usable columns.*text"):
        _read_all(path)


def test_parquet_empty_and_damaged(tmp_path: Path) -> None:
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"instruction": pa.array([], pa.string()), "output": pa.array([], pa.string())}), empty)
    with pytest.raises(DataError, match="zero rows"):
        _read_all(empty)
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        _read_all(damaged)


def test_csv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    pacsv.write_csv(pa.Table.from_pylist(ROWS), path)
    batches = list(read_conversations(str(path), batch_size=2))
    assert [len(b) for b in batches] == [2, 1]
    assert [c.messages for b in batches for c in b] == _expected(ROWS)


def test_csv_bad_bytes_and_chat_column(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    chat = json.dumps([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    path.write_bytes(
        b"messages\n" + b'"' + chat.replace('"', '""').encode() + b'"\n' + b'"caf\xe9"\n'
    )
    with pytest.raises(DataError, match=r"record 1: field 'messages' has invalid UTF-8"):
        _read_all(path)
    counts: collections.Counter = collections.Counter()
    convs = _read_all(path, skip_bad=True, bad_counts=counts)
    assert [c.messages for c in convs] == [((USER, "Hi"), (ASSISTANT, "Yo"))]
    assert counts == {"undecodable_bytes": 1}


def test_csv_header_only_and_ragged(tmp_path: Path) -> None:
    header_only = tmp_path / "header.csv"
    header_only.write_text("instruction,input,output\n")
    with pytest.raises(DataError, match="no records"):
        _read_all(header_only)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("instruction,output\na,b\nc,d,e\n")
    with pytest.raises(DataError, match="ragged.csv: CSV error"):
        _read_all(ragged)


# --------------------------------------------------------------------------- hub and fingerprints


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The env var is read when these modules are imported; another test may have imported them already.
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_hub_unreachable_names_the_offline_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch)
    with pytest.raises(DataError) as info:  # at the call: before prep would load its tokenizer
        read_conversations("sftpack-tests/no-such-dataset")
    message = str(info.value)
    assert "hub cannot be reached" in message
    assert "--data sample" in message and "DATA=sample" in message
    assert "\n" not in message
    assert info.value.reason == "hub_unreachable"
    with pytest.raises(DataError, match="--data sample"):
        source_fingerprint("sftpack-tests/no-such-dataset")


def test_hub_dataset_is_read_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    rows = [dict(r, extra=[1, 2]) for r in ROWS] * 2
    rows[4] = dict(rows[4], output="")
    loaded: list[tuple[str, str]] = []

    def fake_load_dataset(name: str, split: str) -> datasets.Dataset:
        loaded.append((name, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    counts: collections.Counter = collections.Counter()
    batches = list(read_conversations("owner/name", split="test", skip_bad=True, bad_counts=counts, batch_size=4))
    assert loaded == [("owner/name", "test")]
    assert [len(b) for b in batches] == [4, 1]
    convs = [c for b in batches for c in b]
    assert [c.index for c in convs] == [0, 1, 2, 3, 5]
    assert [c.messages for c in convs] == _expected(ROWS + ROWS[:1] + ROWS[2:])
    assert counts == {"empty_field": 1}

    fingerprint = source_fingerprint("owner/name", split="test")
    assert fingerprint == f"hub:owner/name:test:{datasets.Dataset.from_list(rows)._fingerprint}"


def test_local_fingerprint_is_sha256_of_the_bytes(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"instruction": "a", "output": "b"}\n')
    assert source_fingerprint(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()
    sample = Path(__file__).parents[1] / "prep" / "data" / "alpaca_en_demo.json"
    assert source_fingerprint(SAMPLE) == hashlib.sha256(sample.read_bytes()).hexdigest()
    with pytest.raises(DataError, match="file not found"):
        source_fingerprint(str(tmp_path / "missing.json"))


# --------------------------------------------------------------------------- ShareGPT, folders, several sources


SHAREGPT = {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
                              {"from": "gpt", "value": "Hello"}, {"from": "user", "value": "Bye"},
                              {"from": "assistant", "value": "Bye!"}]}


def test_sharegpt_records_map_their_speakers(tmp_path: Path) -> None:
    path = tmp_path / "sharegpt.jsonl"
    path.write_text(json.dumps(SHAREGPT) + "\n")
    (conv,) = _read_all(path)
    assert conv.messages == ((SYSTEM, "Be brief."), (USER, "Hi"), (ASSISTANT, "Hello"), (USER, "Bye"),
                             (ASSISTANT, "Bye!"))
    assert not conv.alpaca


@pytest.mark.parametrize("turns, reason, expect", [
    ("hello", "not_a_list", "'conversations' is a string"),
    ([{"from": "human"}], "missing_field", "'conversations[0].value' is missing"),
    ([{"from": "bot", "value": "x"}], "unknown_role", "'conversations[0].from' is 'bot'"),
    ([{"from": "human", "value": "x"}, {"from": "gpt", "value": " "}], "empty_field",
     "'conversations[1].value' is whitespace only"),
    ([{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}], "ends_on_user_turn", "conversations[1]"),
    ([{"from": "human", "value": "x"}], "no_assistant_turn", "'conversations' has no assistant turn"),
])
def test_bad_sharegpt_records_name_file_record_and_field(tmp_path: Path, turns, reason, expect) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(SHAREGPT) + "\n" + json.dumps({"conversations": turns}) + "\n")
    with pytest.raises(DataError) as info:
        _read_all(path)
    assert info.value.reason == reason
    assert str(info.value).startswith(f"{path}: line 2 (record 1): ") and expect in str(info.value)
    counts: collections.Counter = collections.Counter()
    assert len(_read_all(path, skip_bad=True, bad_counts=counts)) == 1 and counts == {reason: 1}


def _two_files(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "parts"
    folder.mkdir()
    lines = (BAD / "missing_instruction.jsonl").read_text().splitlines(keepends=True)
    (folder / "b.jsonl").write_text("".join(lines[2:]))
    (folder / "a.jsonl").write_text("".join(lines[:2]))
    (folder / "README.md").write_text("not data")
    return folder / "a.jsonl", folder / "b.jsonl"


def test_folder_glob_and_several_sources_read_in_order(tmp_path: Path) -> None:
    a, b = _two_files(tmp_path)
    # an error names the file it comes from, with the record and line within that file
    with pytest.raises(DataError, match=rf"^{a}: line 2 \(record 1\): field 'instruction' is missing"):
        _read_all(a.parent)

    def read(data):
        return [c for batch in read_conversations(data, skip_bad=True) for c in batch]

    folder, pattern, several = read(str(a.parent)), read(str(a.parent / "*.jsonl")), read([str(a), str(b)])
    assert folder == pattern == several
    # indices run on across files: a.jsonl holds records 0 and 1 (bad), b.jsonl starts at 2
    assert [c.index for c in folder][:2] == [0, 2]
    assert [c.line for c in folder][:2] == [1, 1]
    assert read([str(b), str(a)])[0].messages == folder[1].messages  # the order given


def test_folder_of_mixed_formats_is_refused(tmp_path: Path) -> None:
    a, _ = _two_files(tmp_path)
    pq.write_table(pa.Table.from_pylist(ROWS), a.parent / "c.parquet")
    with pytest.raises(DataError, match="mixes .jsonl, .parquet files"):
        read_conversations(str(a.parent))
    with pytest.raises(DataError, match="matches no file"):
        read_conversations(str(tmp_path / "*.csv"))


def test_every_source_is_fingerprinted(tmp_path: Path) -> None:
    import hashlib

    a, b = _two_files(tmp_path)
    prints = read_conversations([str(a.parent), SAMPLE]).fingerprints()
    assert [p["source"] for p in prints] == [str(a), str(b), f"sample ({DATA.parents[1] / 'prep/data/alpaca_en_demo.json'})"]
    assert prints[1]["fingerprint"] == hashlib.sha256(b.read_bytes()).hexdigest()


def test_offline_hub_fails_without_touching_the_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1: no connection is tried, and load_dataset runs in offline mode (the
    cache or an immediate failure, never its ~25 s of retries)."""
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("the hub was contacted although HF_HUB_OFFLINE=1")

    monkeypatch.setattr(socket, "create_connection", no_network)
    _offline(monkeypatch)
    with pytest.raises(DataError) as info:
        read_conversations("sftpack-tests/no-such-dataset")
    assert info.value.reason == "hub_unreachable" and "DATA=sample" in str(info.value)


def test_unreachable_hub_is_probed_once_then_read_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import datasets
    import datasets.config

    calls: list[tuple] = []

    def refused(address, timeout=None):
        calls.append((address, timeout))
        raise OSError("connection refused")

    def load_dataset(name: str, split: str):
        assert datasets.config.HF_HUB_OFFLINE  # no retries: offline mode reads the cache or fails
        raise ConnectionError("offline and not cached")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(DataError, match="hub cannot be reached.*DATA=sample"):
        read_conversations("owner/name")
    assert len(calls) == 1 and calls[0][1] <= 5, calls
    assert not datasets.config.HF_HUB_OFFLINE  # restored
