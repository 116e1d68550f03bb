"""HellaSwag offline: a local copy of the validation split as lm-eval's own `hellaswag` task.

`python -m train.eval RUN --hellaswag-data FILE` reads FILE (.jsonl, .json or .parquet,
one record per item with HellaSwag's standard fields) instead of the hub's `Rowan/hellaswag`.
The task is lm-eval's installed `hellaswag.yaml` itself, included by a one-file task folder
that changes only where the data comes from, so the query and choice preprocessing
(`lm_eval/tasks/hellaswag/utils.py::process_docs`) and the metrics (acc, acc_norm) are the
library's, whatever version is installed.

    >>> check_item({"activity_label": "Baking", "ctx_a": "She mixes.", "ctx_b": "then", "endings": ["a", "b"],
    ...             "label": "1"}, "f.jsonl line 3")
    >>> check_item({"ctx_a": "x", "ctx_b": 2, "endings": ["a"], "label": 4}, "f.jsonl line 3")
    Traceback (most recent call last):
    ...
    train.hellaswag.HellaSwagDataError: f.jsonl line 3: activity_label: missing; ctx_b: expected a string, got int; endings: expected a list of at least 2 strings; label: 4 is not the index of one of the 1 endings
"""
from __future__ import annotations

import json
from pathlib import Path

from sftcli import UserError
from shards.format import sha256_file

SUFFIXES = (".jsonl", ".json", ".parquet")
# The fields lm-eval's hellaswag `process_docs` reads (ctx itself is ctx_a + " " + ctx_b).
TEXT_FIELDS = ("activity_label", "ctx_a", "ctx_b")
TASK_FILE = "hellaswag_local.yaml"


class HellaSwagDataError(UserError):
    """A local HellaSwag file that lm-eval's hellaswag task cannot read as it is."""


def check_item(item, where: str) -> None:
    """Raise one error naming every problem of one record (None when it is usable)."""
    if not isinstance(item, dict):
        raise HellaSwagDataError(f"{where}: expected an object with {', '.join(TEXT_FIELDS)}, endings, label")
    problems = []
    for name in TEXT_FIELDS:
        if name not in item:
            problems.append(f"{name}: missing")
        elif not isinstance(item[name], str):
            problems.append(f"{name}: expected a string, got {type(item[name]).__name__}")
    endings = item.get("endings")
    if not (isinstance(endings, list) and len(endings) >= 2 and all(isinstance(e, str) for e in endings)):
        problems.append("endings: expected a list of at least 2 strings")
        endings = endings if isinstance(endings, list) else []
    label = item.get("label")
    # The hub's copy stores the label as a string ("3"); process_docs reads int(label).
    index = int(label) if isinstance(label, int) and not isinstance(label, bool) or (
        isinstance(label, str) and label.strip().isdigit()) else None
    if index is None or not 0 <= index < len(endings):
        problems.append(f"label: {label!r} is not the index of one of the {len(endings)} endings"
                        if "label" in item else "label: missing")
    if problems:
        raise HellaSwagDataError(f"{where}: " + "; ".join(problems))


def read_items(path: Path) -> list[dict]:
    """Every record of a local HellaSwag file, each checked; errors name the file and the line or row."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise HellaSwagDataError(f"{path}: expected a {', '.join(SUFFIXES)} file of HellaSwag items")
    if not path.is_file():
        raise HellaSwagDataError(f"{path}: no such file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            items = pq.read_table(path).to_pylist()
        except (OSError, ValueError) as e:
            raise HellaSwagDataError(f"{path}: not a readable Parquet file ({e})") from None
        places = [f"{path} row {i}" for i in range(len(items))]
    elif path.suffix == ".json":
        items = _json(path.read_text(encoding="utf-8"), str(path))
        if not isinstance(items, list):
            raise HellaSwagDataError(f"{path}: expected a JSON list of items (or use .jsonl, one item per line)")
        places = [f"{path} item {i}" for i in range(len(items))]
    else:
        lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
        items = [_json(line, f"{path} line {n}") for n, line in lines]
        places = [f"{path} line {n}" for n, _ in lines]
    if not items:
        raise HellaSwagDataError(f"{path}: no items")
    for item, where in zip(items, places):
        check_item(item, where)
    return items


def _json(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise HellaSwagDataError(f"{where}: not valid JSON ({e})") from None


def write_task(data: Path, folder: Path) -> dict:
    """Check `data` and write into `folder` the task that scores it; return its source record.

    The task keeps the name `hellaswag`, so scores land in the same report column as
    the hub's; the source and its sha256 in eval.json say which data gave them.
    """
    import lm_eval.tasks

    data = Path(data).resolve()
    items = read_items(data)
    definition = Path(lm_eval.tasks.__file__).parent / "hellaswag" / "hellaswag.yaml"
    if not definition.is_file():
        raise HellaSwagDataError(f"the installed lm-eval has no {definition}; --hellaswag-data needs lm-eval's "
                                 f"hellaswag task: pip install -e '.[eval]'")
    task = {
        "include": str(definition),  # everything but the data comes from lm-eval's own definition
        "task": "hellaswag",
        "dataset_path": "parquet" if data.suffix == ".parquet" else "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {"validation": str(data)}},
        "training_split": None,  # a validation copy only; zero-shot never reads the train split
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TASK_FILE).write_text(json.dumps(task, indent=2) + "\n")  # JSON is YAML
    return {"source": str(data), "source_fingerprint": "sha256:" + sha256_file(data), "items": len(items)}
