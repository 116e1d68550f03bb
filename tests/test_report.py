"""`train.report` and `train.compare`: the unigram baseline in the report, and claims the numbers can carry."""
import numpy as np
import pytest

from tests.train_helpers import one_thread, tiny_config, to_rows, write_rows_set  # noqa: F401 (fixture)
from train.compare import at_equal_steps, at_equal_tokens, findings, seed_spread


def _run(name, losses, per_step=100, seed=1337, warmup=2, max_steps=30, unigram=7.0, mode="concat"):
    """A run as `train.report.load_run` gives it: val records every 10 steps with the given losses."""
    val = [{"step": 10 * (i + 1), "val_loss": loss, "supervised_tokens": per_step * 10 * (i + 1)}
           for i, loss in enumerate(losses)]
    summary = {"steps": max_steps, "supervised_tokens": per_step * max_steps, "best_val_loss": min(losses),
               "supervised_tokens_per_second": float(per_step), "model": "tiny"}
    config = {"seed": seed, "out": f"runs/{name}", "shards": f"shards/{mode}", "warmup_steps": warmup,
              "max_steps": max_steps, "learning_rate": 1e-3}
    return {"name": name, "summary": summary, "config": config, "val": val, "train": [], "unigram_val_loss": unigram}


def test_differences_are_called_only_beyond_the_seed_spread():
    runs = [_run("padding", [7.0, 6.6, 6.50], mode="padding"), _run("concat", [6.9, 6.4, 6.30]),
            _run("concat-seed2", [6.9, 6.45, 6.34], seed=2), _run("packed", [6.9, 6.4, 6.32], mode="packed")]
    spread, text = seed_spread(runs)
    assert spread == pytest.approx(0.04) and "concat-seed2 (seed 2) 6.3400" in text
    steps = at_equal_steps([runs[0], runs[1], runs[3]], spread)
    assert "step 30" in steps and "concat and packed are indistinguishable" in steps
    assert "padding is 0.200 above concat" in steps
    report = findings(runs)
    assert "concat-seed2" not in report.split("Seed-to-seed")[0].split("against the unigram")[0]
    assert "padding -0.500" in report  # best 6.50 against the baseline 7.0


def test_no_second_seed_calls_no_difference():
    runs = [_run("padding", [6.6], mode="padding"), _run("concat", [6.0])]
    assert seed_spread(runs)[0] is None
    assert "no difference is called" in at_equal_steps(runs, None)


def test_schedules_that_differ_are_not_compared():
    runs = [_run("padding", [6.6], mode="padding"), _run("concat", [6.0], warmup=5)]
    assert at_equal_steps(runs, 0.1).startswith("Not compared at equal steps: the learning-rate schedules differ")
    # same steps, different supervised tokens per step: the schedules do not line up in tokens
    runs = [_run("padding", [6.6, 6.5], per_step=60, mode="padding"), _run("concat", [6.0, 5.9], per_step=100)]
    text = at_equal_tokens(runs, 0.1)
    assert text.startswith("Not compared at equal supervised tokens") and "padding 60" in text
    # a token budget made equal by the steps: compared, interpolated at the tokens both reached
    runs = [_run("padding", [6.6, 6.4], per_step=100, max_steps=20, warmup=4, mode="padding"),
            _run("concat", [6.2, 6.0], per_step=200, max_steps=10, warmup=2)]
    text = at_equal_tokens(runs, 0.1)
    assert text.startswith("At equal supervised tokens seen (2,000") and "padding is 0.200 above concat" in text


def test_report_of_a_one_step_run_shows_the_baseline_and_says_it_has_not_learned(tmp_path, one_thread):
    from train.loop import train
    from train.report import write_report

    rng = np.random.default_rng(0)

    def rows(count):  # few distinct tokens: counting them already gives a low loss
        out = []
        for i in range(count):
            ids = rng.integers(10, 20, size=24)
            out.append((ids, np.r_[np.zeros(6), np.ones(18)].astype(np.uint8), [24], [i]))
        return to_rows(out)

    shards = write_rows_set(tmp_path / "shards", "padding", 32, {"train": [rows(24)], "val": [rows(6)]})
    train(tiny_config(shards, tmp_path / "run", max_steps=1, warmup_steps=0, eval_interval=1))
    text = write_report([tmp_path / "run"], tmp_path / "report", max_new_tokens=2).read_text()
    table = text.split("## Runs")[1].split("##")[0]
    assert "unigram baseline" in table.splitlines()[2]
    assert "run: the best validation loss is not below the unigram baseline" in text
    assert "not yet learned beyond token frequencies" in text.split("## Generations")[1]
    assert (tmp_path / "report" / "loss_curves.png").stat().st_size > 10_000
