"""Score trained runs (and the base model) with lm-eval; the results go to RUN/eval.json.

    python -m train.eval runs/padding runs/packed runs/concat --tasks hellaswag
    python -m train.eval runs/concat --hellaswag-data hellaswag_val.parquet   # offline, same task definition
    python -m train.eval gpt2 --out reports/gpt2-eval.json                     # the "before" row
    # prints one line per task and metric: `runs/concat hellaswag acc_norm 0.3138 ± 0.0046 (n=10042)`

A run folder is scored on its best/ checkpoint; a model folder or hub id as it is. The
scoring is lm-eval's (`lm_eval.simple_evaluate` on an `HFLM` over the loaded model), so the
figures are the ones `lm-eval --model hf --model_args pretrained=RUN/best` gives. lm-eval is
an optional extra (`pip install -e '.[eval]'`); the training loop never imports it.

eval.json holds {"model": ..., "results": [one entry per task and metric]} with the entry keys
of `ENTRY_KEYS`; evaluating other tasks later adds entries, the same task replaces its own.
"""
from __future__ import annotations

import datetime
import json
import logging
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Literal

import click

from sftcli import (ConfigError, UserError, check_config, click_options, flag, main_errors, markdown_table, one_line,
                    opt)
from shards.prompts import fixed_date, template_options
from train.logs import write_json

EVAL_FILE = "eval.json"
ENTRY_KEYS = ("task", "metric", "value", "stderr", "n", "limit", "num_fewshot", "source", "source_fingerprint",
              "lm_eval_version", "model", "dtype", "device", "batch_size", "chat_template", "created")
INSTALL_HINT = "lm-eval is not installed; install it with: pip install -e '.[eval]' (or: pip install lm_eval)"


class EvalError(UserError):
    """A target that cannot be scored as asked."""


@dataclass(frozen=True)
class EvalConfig:
    tasks: str = opt("hellaswag", "lm-eval task names, comma-separated")
    hellaswag_data: Path | None = opt(
        None, "a local copy of HellaSwag's validation split (.jsonl, .json or .parquet with activity_label, ctx_a, "
              "ctx_b, endings, label): the hellaswag task reads it instead of the hub")
    batch_size: int = opt(16, "lm-eval batch size (choices scored per forward pass)")
    device: str = opt("auto", "auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "weights dtype; auto keeps the checkpoint's own, as lm-eval does")
    limit: int | None = opt(None, "score only the first N items of each task (a smoke run, not comparable)")
    apply_chat_template: bool = opt(
        False, "render each prompt as a user turn with the model's chat template and the options prep recorded "
               "(--chat-template-kwargs, --template-date), as lm-eval's --apply_chat_template does; default: raw text")
    out: Path | None = opt(None, "eval.json to write (one target only); default RUN/eval.json or MODEL_FOLDER/eval.json")

    @property
    def task_names(self) -> list[str]:
        return [t.strip() for t in self.tasks.split(",") if t.strip()]

    def validate(self, targets: int = 1) -> "EvalConfig":
        problems = []
        if not self.task_names:
            problems.append(f"{flag('tasks')}: name at least one lm-eval task")
        if self.hellaswag_data is not None and "hellaswag" not in self.task_names:
            problems.append(f"{flag('hellaswag_data')}: only used by the hellaswag task; add it to {flag('tasks')}")
        if self.batch_size < 1:
            problems.append(f"{flag('batch_size')}: must be at least 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            problems.append(f"{flag('limit')}: must be at least 1, got {self.limit}")
        if self.out is not None and targets != 1:
            problems.append(f"{flag('out')}: names one eval.json, so give one target (got {targets})")
        device = self.device.split(":")[0]
        if device not in ("auto", "cpu", "cuda", "mps"):
            problems.append(f"{flag('device')}: must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}")
        check_config(self, problems, "eval")
        return self

    def torch_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"{flag('device')} {self.device}: no CUDA device here; use {flag('device')} cpu")
        return self.device


@dataclass(frozen=True)
class Target:
    """What to score and where its eval.json goes."""

    name: str  # as given on the command line
    model: str  # a checkpoint folder or a hub id
    out: Path


def resolve_target(given: str, out: Path | None) -> Target:
    """A run folder (scored on best/), a model folder, or a hub id (which needs --out).

    >>> resolve_target("org/model", Path("e.json"))
    Target(name='org/model', model='org/model', out=PosixPath('e.json'))
    """
    path = Path(given)
    if (path / "summary.json").is_file() or (path / "config.json").is_file() and (path / "best").exists():
        if not (path / "best" / "config.json").is_file():
            raise EvalError(f"{path}: the run has no best/ checkpoint yet (it saves one at its first evaluation)")
        return Target(given, str(path / "best"), out or path / EVAL_FILE)
    if (path / "config.json").is_file():
        return Target(given, str(path), out or path / EVAL_FILE)
    if path.exists():
        raise EvalError(f"{path}: neither a run folder (with best/) nor a model folder (with config.json)")
    if out is None:
        raise EvalError(f"{given}: not a local folder; to score a hub model give {flag('out')} for its eval.json")
    return Target(given, given, out)


def import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        if getattr(e, "name", "") and str(e.name).split(".")[0] == "lm_eval":
            raise EvalError(INSTALL_HINT) from None
        raise
    # We hand HFLM a model we loaded ourselves, on purpose; its warning about that is noise here.
    logging.getLogger("lm_eval.models.huggingface").addFilter(
        lambda record: "kwarg is not of type `str`" not in record.getMessage())
    return lm_eval, HFLM, TaskManager


def load_for_eval(model_name: str, dtype: str, device: str):
    """The model (eval mode, on `device`) and its own tokenizer, as lm-eval's hf model would load them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name)
        model = AutoModelForCausalLM.from_pretrained(model_name, dtype=dtype if dtype == "auto" else getattr(torch, dtype))
    except (OSError, ValueError) as e:
        raise EvalError(f"cannot load model {model_name!r}: {str(e).splitlines()[0]}") from None
    return model.to(device).eval(), tokenizer


def source_of(task, local: dict | None) -> dict:
    """Where a task's documents came from, with a fingerprint of them."""
    if local is not None and task.config.task == "hellaswag":
        return {"source": local["source"], "source_fingerprint": local["source_fingerprint"]}
    name = task.config.dataset_path + (f"/{task.config.dataset_name}" if task.config.dataset_name else "")
    docs = task.dataset[task.config.test_split or task.config.validation_split]
    return {"source": name, "source_fingerprint": "datasets:" + getattr(docs, "_fingerprint", "unknown")}


def entries_of(results: dict, tasks: dict, local: dict | None, settings: dict) -> list[dict]:
    """One eval.json entry per task and metric of `lm_eval.simple_evaluate`'s results."""
    entries = []
    for task_name, scores in results["results"].items():
        if task_name not in tasks:
            continue  # a group's aggregate row
        common = {"task": task_name, "n": results["n-samples"][task_name]["effective"],
                  "num_fewshot": results.get("n-shot", {}).get(task_name, 0), **source_of(tasks[task_name], local)}
        for key, value in scores.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = scores.get(f"{metric}_stderr,{filter_name}")
            entries.append({**common, "metric": metric if filter_name == "none" else f"{metric},{filter_name}",
                            "value": float(value),
                            "stderr": float(stderr) if isinstance(stderr, (int, float)) else None, **settings})
    return [{key: entry[key] for key in ENTRY_KEYS} for entry in entries]


def evaluate(targets: list[Target], config: EvalConfig, log_samples: bool = False) -> list[tuple[Target, dict]]:
    """Score every target on every task; write each target's eval.json; return (target, raw results) pairs."""
    device = config.torch_device()
    lm_eval, HFLM, TaskManager = import_lm_eval()
    import datasets

    datasets.disable_progress_bars()  # a "Map" bar per task and target drowns lm-eval's own progress
    version = metadata.version("lm_eval")
    out = []
    with tempfile.TemporaryDirectory(prefix="sftpack-eval-") as folder:
        local = None
        if config.hellaswag_data is not None:
            from train.hellaswag import write_task

            local = write_task(config.hellaswag_data, Path(folder))
        # Only the local task needs indexing when it is the only one (lm-eval's full index takes a while).
        only_local = local is not None and config.task_names == ["hellaswag"]
        manager = TaskManager(include_path=folder if local else None, include_defaults=not only_local)
        unknown = [t for t in config.task_names if t not in manager.all_tasks]
        if unknown:
            raise EvalError(f"{flag('tasks')}: lm-eval {version} has no task {', '.join(map(repr, unknown))} "
                            f"(see: lm-eval ls tasks)")
        for target in targets:
            model, tokenizer = load_for_eval(target.model, config.dtype, device)
            # The template options prep recorded in the tokenizer: its kwargs, and the date its strftime_now gives.
            kwargs, date = template_options(tokenizer)
            lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=config.batch_size, chat_template_args=kwargs)
            # Tasks are built per target: lm-eval keeps each target's requests inside its Task objects.
            try:
                tasks = manager.load(config.task_names)["tasks"]  # a group's tasks are scored one by one
            except ConnectionError as e:  # what `datasets` raises when the hub cannot be reached
                raise EvalError(f"{flag('tasks')} {config.tasks}: {one_line(e)}; offline, score HellaSwag from a "
                                f"local copy of its validation split with {flag('hellaswag_data')} FILE") from None
            if config.apply_chat_template and not tokenizer.chat_template:
                raise EvalError(f"{flag('apply_chat_template')}: {target.model} has no chat template; score it "
                                "without the flag")
            with fixed_date(date):
                results = lm_eval.simple_evaluate(model=lm, tasks=list(tasks.values()), limit=config.limit,
                                                  task_manager=manager, log_samples=log_samples,
                                                  apply_chat_template=config.apply_chat_template)
            settings = {"limit": config.limit, "lm_eval_version": version, "model": target.model,
                        "chat_template": config.apply_chat_template,
                        "dtype": str(model.dtype).removeprefix("torch."), "device": device,
                        "batch_size": config.batch_size,
                        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            entries = entries_of(results, tasks, local, settings)
            write_eval(target.out, target.model, entries)
            out.append((target, results))
            for entry in entries:
                click.echo(f"{target.name} {format_entry(entry)}")
    return out


def format_entry(entry: dict) -> str:
    """
    >>> format_entry({"task": "hellaswag", "metric": "acc_norm", "value": 0.31378, "stderr": 0.00463, "n": 10042})
    'hellaswag acc_norm 0.3138 ± 0.0046 (n=10042)'
    """
    return f"{entry['task']} {entry['metric']} {value_text(entry)} (n={entry['n']})"


def value_text(entry: dict) -> str:
    return f"{entry['value']:.4f}" + ("" if entry["stderr"] is None else f" ± {entry['stderr']:.4f}")


def read_eval(path: Path) -> dict:
    """An eval.json, checked enough for the report to use; errors name the file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise EvalError(f"{path}: not a readable eval.json ({e}); rerun python -m train.eval") from None
    for entry in data.get("results", []) if isinstance(data, dict) and isinstance(data.get("results"), list) else []:
        if isinstance(entry, dict):
            entry.setdefault("chat_template", False)  # written before --apply-chat-template: raw text
    if not (isinstance(data, dict) and isinstance(data.get("results"), list)
            and all(isinstance(e, dict) and set(ENTRY_KEYS) <= set(e) for e in data["results"])):
        raise EvalError(f"{path}: not an eval.json of python -m train.eval (results with {', '.join(ENTRY_KEYS)})")
    return data


def write_eval(path: Path, model: str, entries: list[dict]) -> None:
    """Replace the entries of the tasks just scored, keep the others (a file of another model is replaced)."""
    path = Path(path)
    scored = {e["task"] for e in entries}
    kept = []
    if path.is_file():
        try:
            previous = read_eval(path)
            if previous.get("model") == model:
                kept = [e for e in previous["results"] if e["task"] not in scored]
        except EvalError:
            pass  # unreadable: this run's results replace it
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"model": model, "results": kept + entries})


def _shown(source: str) -> str:
    """A data source as a reader would type it: relative to the current folder when it lies inside it
    (eval.json keeps the absolute path lm-eval was given).

    >>> _shown(str(Path.cwd() / "train" / "assets" / "x.jsonl")), _shown("Rowan/hellaswag")
    ('train/assets/x.jsonl', 'Rowan/hellaswag')
    """
    try:
        return str(Path(source).relative_to(Path.cwd()))
    except ValueError:
        return source


def eval_section(runs: list[tuple[str, Path]], base_eval: Path | None = None) -> str | None:
    """The report's lm-eval table: a row per model (the base first, when given), a column per task
    and metric with value ± stderr; None when no run has an eval.json and no base is given.

    `runs` are (name, run folder) pairs; a run without eval.json gets dashes.
    """
    rows = [(f"base: {read_eval(base_eval)['model']}", read_eval(base_eval))] if base_eval is not None else []
    rows += [(name, read_eval(Path(folder) / EVAL_FILE)) for name, folder in runs if (Path(folder) / EVAL_FILE).is_file()]
    if not rows:
        return None
    names = {name for name, _ in rows}
    rows += [(name, {"results": []}) for name, _ in runs if name not in names]
    columns = list(dict.fromkeys((e["task"], e["metric"]) for _, data in rows for e in data["results"]))
    table = []
    for name, data in rows:
        by_column = {(e["task"], e["metric"]): e for e in data["results"]}
        cells = [value_text(by_column[c]) if c in by_column else "-" for c in columns]
        table.append([name, *cells, ", ".join(sorted({str(e["n"]) for e in data["results"]})) or "-"])
    entries = [e for _, data in rows for e in data["results"]]
    sources = sorted({f"{e['task']}: {_shown(e['source'])} ({e['source_fingerprint'][:19]})" for e in entries})
    notes = [f"Scored by lm-eval {', '.join(sorted({e['lm_eval_version'] for e in entries}))} "
             f"(`python -m train.eval`), value ± standard error; data: {'; '.join(sources)}."]
    if any(task == "hellaswag" for task, _ in columns):
        notes.append("A model that guesses scores 0.25 on HellaSwag's four endings.")
    if any(e["limit"] is not None for e in entries):
        notes.append("Rows scored with --limit cover only the first items: a smoke run, not a comparable figure.")
    return "## lm-eval scores\n\n" + markdown_table(["model", *(f"{t} {m}" for t, m in columns), "n"], table) \
        + "\n\n" + " ".join(notes)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.argument("targets", nargs=-1, required=True)
@click_options(EvalConfig)
@main_errors()
def main(targets: tuple[str, ...], **options) -> None:
    """Score run folders (their best/), model folders or hub ids TARGETS with lm-eval; write eval.json."""
    config = EvalConfig(**options).validate(len(targets))
    evaluate([resolve_target(t, config.out) for t in targets], config)


if __name__ == "__main__":
    main()
