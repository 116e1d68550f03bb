"""`python -m train.eval`: lm-eval's HellaSwag on a tiny checkpoint, checked against the model's own log-likelihoods."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.conftest import ROOT
from tests.train_helpers import chatml_tokenizer, one_thread, subprocess_env  # noqa: F401
from train import eval as train_eval
from train.hellaswag import HellaSwagDataError, read_items

pytestmark = pytest.mark.usefixtures("one_thread")
WORDS = "the a man woman dog ball runs jumps into water cake bakes oven slowly quickly then table".split()


def write_items(path, count: int = 16, seed: int = 0):
    """HellaSwag-format items of random words (labels as the hub stores them: strings, and some ints)."""
    rng = np.random.default_rng(seed)
    words = lambda n: " ".join(rng.choice(WORDS, size=n))  # noqa: E731
    with open(path, "w") as f:
        for i in range(count):
            label = int(rng.integers(4))
            f.write(json.dumps({"ind": i, "activity_label": "Baking cookies", "ctx_a": words(8) + ".",
                                "ctx_b": words(3), "endings": [words(int(rng.integers(3, 9))) for _ in range(4)],
                                "label": str(label) if i % 2 else label}) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder as `python -m train` leaves it, with a random-initialised `tiny` best/."""
    from train.model import load_model

    run = tmp_path_factory.mktemp("eval") / "run"
    tokenizer = chatml_tokenizer()
    model = load_model("tiny", tokenizer, seed=0)
    model.save_pretrained(run / "best")
    tokenizer.save_pretrained(run / "best")
    (run / "summary.json").write_text("{}")
    return run


def direct_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context) summed over the continuation's tokens, straight from the model."""
    context_ids = tokenizer(context).input_ids
    ids = tokenizer(context + continuation).input_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), dim=-1)
    return sum(logprobs[t - 1, ids[t]].item() for t in range(len(context_ids), len(ids)))


@pytest.mark.slow
def test_hellaswag_on_a_tiny_checkpoint_matches_the_models_own_loglikelihoods(tiny_run, tmp_path):
    pytest.importorskip("lm_eval")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = write_items(tmp_path / "hellaswag.jsonl")
    config = train_eval.EvalConfig(hellaswag_data=data, batch_size=8, device="cpu").validate()
    [(target, results)] = train_eval.evaluate([train_eval.resolve_target(str(tiny_run), None)], config,
                                              log_samples=True)
    assert target.out == tiny_run / "eval.json"
    saved = json.loads((tiny_run / "eval.json").read_text())
    by_metric = {e["metric"]: e for e in saved["results"]}
    assert set(by_metric) == {"acc", "acc_norm"} and saved["model"] == str(tiny_run / "best")
    acc_norm = by_metric["acc_norm"]
    assert 0 <= acc_norm["value"] <= 1 and acc_norm["n"] == 16 and acc_norm["task"] == "hellaswag"
    assert acc_norm["stderr"] > 0 and acc_norm["lm_eval_version"] and acc_norm["source"] == str(data.resolve())
    from shards.format import sha256_file

    assert acc_norm["source_fingerprint"] == "sha256:" + sha256_file(data)

    # The same figures straight from the model: the query and choices as lm-eval's hellaswag
    # defines them (these items hold nothing its preprocess would strip), acc over the summed
    # log-likelihood, acc_norm over it divided by each ending's length in characters.
    model = AutoModelForCausalLM.from_pretrained(str(tiny_run / "best")).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_run / "best"))
    items = [json.loads(line) for line in data.read_text().splitlines()]
    samples = {s["doc_id"]: s for s in results["samples"]["hellaswag"]}
    correct = correct_norm = 0
    for i, item in enumerate(items):
        query = f"{item['activity_label']}: {item['ctx_a']} {item['ctx_b'].capitalize()}"
        lls = np.array([direct_loglikelihood(model, tokenizer, query, " " + e) for e in item["endings"]])
        if i == 0:  # one item's choice scoring, choice by choice
            theirs = [resp[0][0] for resp in samples[0]["resps"]]
            np.testing.assert_allclose(theirs, lls, rtol=1e-5, atol=1e-4)
        gold = int(item["label"])
        correct += int(np.argmax(lls) == gold)
        correct_norm += int(np.argmax(lls / np.array([len(e) for e in item["endings"]])) == gold)
    assert by_metric["acc"]["value"] == pytest.approx(correct / 16)
    assert acc_norm["value"] == pytest.approx(correct_norm / 16)


@pytest.mark.slow
def test_apply_chat_template_renders_prompts_with_the_recorded_template_and_options(tmp_path):
    """--apply-chat-template: lm-eval's prompts are the run's template over a user turn, with the kwargs
    and date prep recorded (a template that writes both shows them), and eval.json says so."""
    pytest.importorskip("lm_eval")
    from shards.prompts import set_template_options
    from train.model import load_model

    import copy

    run = tmp_path / "run"
    tokenizer = copy.deepcopy(chatml_tokenizer())  # the shared one stays as other tests expect it
    tokenizer.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }} {{ strftime_now('%Y-%m-%d') }} "
                               "{{ flavour }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    set_template_options(tokenizer, {"flavour": "plain"}, "2026-01-05")
    load_model("tiny", tokenizer, seed=0).save_pretrained(run / "best")
    tokenizer.save_pretrained(run / "best")
    (run / "summary.json").write_text("{}")
    data = write_items(tmp_path / "hellaswag.jsonl", count=2)
    config = train_eval.EvalConfig(hellaswag_data=data, batch_size=8, device="cpu", apply_chat_template=True).validate()
    [(_, results)] = train_eval.evaluate([train_eval.resolve_target(str(run), None)], config, log_samples=True)
    context = results["samples"]["hellaswag"][0]["arguments"][0][0]
    item = json.loads(data.read_text().splitlines()[0])
    assert context.startswith("<|im_start|>user 2026-01-05 plain\n" + item["activity_label"] + ": "), context
    assert context.endswith("<|im_end|>\n<|im_start|>assistant\n"), context
    assert all(e["chat_template"] is True for e in json.loads((run / "eval.json").read_text())["results"])


def test_report_shows_the_scores_with_the_base_row(tiny_run, tmp_path):
    entry = dict(task="hellaswag", metric="acc_norm", value=0.3125, stderr=0.0046, n=16, limit=None,
                 num_fewshot=0, source="h.jsonl", source_fingerprint="sha256:" + "ab" * 32, lm_eval_version="0.4.13",
                 model="m", dtype="float32", device="cpu", batch_size=8, created="2026-11-30T00:00:00+00:00")
    run = tmp_path / "padding"
    run.mkdir()
    train_eval.write_eval(run / "eval.json", "padding/best", [entry])
    base = tmp_path / "base.json"
    train_eval.write_eval(base, "gpt2", [dict(entry, value=0.3114, stderr=0.0046)])
    text = train_eval.eval_section([("padding", run), ("concat", tmp_path / "missing")], base)
    assert "| model | hellaswag acc_norm | n |" in text
    assert "| base: gpt2 | 0.3114 ± 0.0046 | 16 |" in text.splitlines()[4]
    assert "| padding | 0.3125 ± 0.0046 | 16 |" in text and "| concat | - | - |" in text
    assert "guesses scores 0.25" in text
    assert train_eval.eval_section([("concat", tmp_path / "missing")]) is None


def test_eval_json_keeps_other_tasks_and_replaces_the_same_one(tmp_path):
    path = tmp_path / "eval.json"
    entry = dict.fromkeys(train_eval.ENTRY_KEYS, 0)
    train_eval.write_eval(path, "m", [dict(entry, task="arc_easy", value=0.5), dict(entry, task="hellaswag")])
    train_eval.write_eval(path, "m", [dict(entry, task="hellaswag", value=0.3)])
    results = json.loads(path.read_text())["results"]
    assert [(e["task"], e["value"]) for e in results] == [("arc_easy", 0.5), ("hellaswag", 0.3)]


def test_bad_hellaswag_file_names_the_line_and_field(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps({"activity_label": "a", "ctx_a": "b", "ctx_b": "c", "endings": ["x", "y"],
                                "label": 1}) + "\n\n" + json.dumps({"activity_label": "a", "ctx_a": "b"}) + "\n")
    with pytest.raises(HellaSwagDataError, match=r"h.jsonl line 3: ctx_b: missing; endings: .*; label: missing"):
        read_items(path)
    with pytest.raises(HellaSwagDataError, match="expected a .jsonl, .json, .parquet file"):
        read_items(tmp_path / "h.csv")


def test_the_demo_file_does_not_reward_length():
    # acc sums log-likelihoods (favours short endings), acc_norm divides by characters (favours long
    # ones when the right answer is long): a demo file whose answers sit at one end of the length
    # order scores by length, not by what a model learned.
    items = read_items(ROOT / "train" / "assets" / "hellaswag_demo.jsonl")
    longest = shortest = 0
    for item in items:
        correct = len(item["endings"][int(item["label"])])
        others = [len(e) for i, e in enumerate(item["endings"]) if i != int(item["label"])]
        longest += correct >= max(others)
        shortest += correct <= min(others)
    assert longest <= len(items) / 2, f"the correct ending is the longest in {longest} of {len(items)} items"
    assert shortest <= len(items) / 2, f"the correct ending is the shortest in {shortest} of {len(items)} items"


def test_cli_errors_are_one_line(tiny_run, tmp_path, monkeypatch):
    runner = CliRunner()
    result = runner.invoke(train_eval.main, [str(tmp_path / "nothing-here"), "--tasks", "hellaswag"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "not a local folder; to score a hub model give --out" in result.output
    result = runner.invoke(train_eval.main, [str(tiny_run), "--tasks", "arc_easy", "--hellaswag-data", "x.jsonl",
                                             "--limit", "0"])
    assert result.exit_code == 1 and "--hellaswag-data: only used by the hellaswag task" in result.output
    assert "--limit: must be at least 1" in result.output
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if it were not installed
    result = runner.invoke(train_eval.main, [str(tiny_run), "--device", "cpu"])
    assert result.exit_code == 1 and result.output == f"error: {train_eval.INSTALL_HINT}\n"


def test_the_training_loop_never_imports_lm_eval_or_datasets():
    code = ("import sys, train.__main__, train.loop, shards.batch\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('lm_eval', 'datasets', 'prep'))\n"
            "assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
