"""What a set of runs shows, and only what it shows: the findings paragraph of `train.report`.

Runs are compared at equal optimizer steps and at equal supervised tokens seen, each
only where their learning-rate schedules put them at the same point (a run late in its
decay is not comparable with one at its peak). A difference is called only beyond a noise
threshold that a rerun on another machine would not flip: at least `MIN_SEEDS` seeds of one
configuration, and twice their largest pairwise difference. With fewer seeds nothing is called
(two seeds' one difference is a poor scale: the demo's 0.003 nats called a winner that a rerun
elsewhere reversed). Every run is set against the unigram baseline of its shards.

    >>> called({"a": 6.0, "b": 6.02, "c": 6.4}, threshold=0.05)
    'a and b are indistinguishable at this budget (within the noise threshold of 0.050); c is 0.400 above a'
    >>> called({"a": 6.0, "b": 6.4}, threshold=None)
    'indistinguishable at this budget: no difference is called without 3 seeds of one layout'
"""
from __future__ import annotations

import numpy as np

# Config keys that do not change what a run learns from its data, beside the seed itself.
_NOT_THE_SETUP = ("seed", "out", "resume", "stop_after", "verify", "max_nan_steps", "log_interval", "progress")
MIN_SEEDS = 3  # seeds of one configuration before any difference between configurations is called
TOKEN_SCHEDULE_TOLERANCE = 0.05  # relative: schedules whose token positions differ by less are "the same"


def _schedule(run: dict) -> tuple:
    """(warm-up steps, decay-to-0 step, peak learning rate): where the learning rate is at each step."""
    c = run["config"]
    return c["warmup_steps"], c["max_steps"], c["learning_rate"]


def _per_step(run: dict) -> float:
    return run["summary"]["supervised_tokens"] / max(run["summary"]["steps"], 1)


def _at_step(run: dict, step: int, key: str = "val_loss"):
    """`key` of the run's evaluation at `step` (None: not evaluated there)."""
    return next((v[key] for v in run["val"] if v["step"] == step), None)


def seed_groups(runs: list[dict]) -> list[list[dict]]:
    """Runs grouped by everything but the seed (same shards, model, schedule, batch ...), in order."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        key = tuple(sorted((k, str(v)) for k, v in run["config"].items() if k not in _NOT_THE_SETUP))
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def noise_threshold(runs: list[dict]) -> tuple[float | None, str]:
    """Twice the largest pairwise difference of final validation loss between the seeds of one
    configuration (of at least MIN_SEEDS seeds; the largest over such configurations), and a sentence on it."""
    groups = [g for g in seed_groups(runs) if len(g) > 1]
    ranges = []
    for group in groups:
        step = min(r["val"][-1]["step"] for r in group) if all(r["val"] for r in group) else None
        losses = [_at_step(r, step) for r in group] if step is not None else []
        if losses and None not in losses:
            ranges.append((max(losses) - min(losses), group, step, losses))
    how = (f"a difference between layouts is called only beyond twice the largest difference between "
           f"{MIN_SEEDS} or more seeds of one layout")
    if not ranges:
        return None, (f"No configuration was run with several seeds that share an evaluation step, so the noise is "
                      f"unknown and no difference is called ({how}; `make demo DEMO_SEEDS={MIN_SEEDS}` runs them).")
    enough = [r for r in ranges if len(r[1]) >= MIN_SEEDS]
    spread, group, step, losses = max(enough or ranges, key=lambda x: x[0])
    seeds = ", ".join(f"{r['name']} (seed {r['config']['seed']}) {loss:.4f}" for r, loss in zip(group, losses))
    text = (f"Seed-to-seed spread: the same configuration with different seeds gave validation losses {seeds} at "
            f"step {step}, a largest difference of {spread:.3f} nats")
    if not enough:
        return None, (f"{text}. {len(group)} seeds are no scale for the noise: {how}, so no difference is called "
                      f"(`make demo DEMO_SEEDS={MIN_SEEDS}` runs a third seed).")
    return 2 * spread, (f"{text}; {how}: a noise threshold of {2 * spread:.3f} nats (a scale for the noise, not a "
                        "confidence interval).")


def called(losses: dict[str, float], threshold: float | None) -> str:
    """Which differences exceed the noise threshold; the rest are indistinguishable at this budget."""
    if threshold is None:
        return f"indistinguishable at this budget: no difference is called without {MIN_SEEDS} seeds of one layout"
    ranked = sorted(losses.items(), key=lambda kv: kv[1])
    best_name, best = ranked[0]
    tied = [name for name, loss in ranked if loss - best <= threshold]
    if len(tied) > 1:
        parts = [f"{', '.join(tied[:-1])} and {tied[-1]} are indistinguishable at this budget (within the noise "
                 f"threshold of {threshold:.3f})"]
    else:
        parts = [f"{best_name} is lowest by more than the noise threshold of {threshold:.3f}"]
    parts += [f"{name} is {loss - best:.3f} above {best_name}" for name, loss in ranked if name not in tied]
    return "; ".join(parts)


def at_equal_steps(runs: list[dict], threshold: float | None) -> str:
    schedules = {_schedule(r) for r in runs}
    if len(schedules) > 1:
        return ("Not compared at equal steps: the learning-rate schedules differ ("
                + "; ".join(f"{r['name']}: warm-up {_schedule(r)[0]}, decay to 0 at step {_schedule(r)[1]}, "
                            f"peak {_schedule(r)[2]:g}" for r in runs) + ").")
    if any(not r["val"] for r in runs):
        return "Not compared at equal steps: a run has no validation loss."
    step = min(r["val"][-1]["step"] for r in runs)
    losses = {r["name"]: _at_step(r, step) for r in runs}
    if None in losses.values():
        return f"Not compared at equal steps: the runs were not all evaluated at step {step}."
    warmup, decay, _ = schedules.pop()
    return (f"At equal steps (step {step} of the same schedule: warm-up {warmup}, linear decay to 0 at {decay}), "
            "validation loss " + ", ".join(f"{n} {v:.4f}" for n, v in sorted(losses.items(), key=lambda kv: kv[1]))
            + ": " + called(losses, threshold) + ". At that step the runs had seen different supervised tokens ("
            + ", ".join(f"{r['name']} {_at_step(r, step, 'supervised_tokens'):,}" for r in runs) + ").")


def at_equal_tokens(runs: list[dict], threshold: float | None) -> str:
    """Val loss at the largest supervised-token count all runs reached, if their schedules agree in tokens."""
    positions = {r["name"]: (_per_step(r) * _schedule(r)[0], _per_step(r) * _schedule(r)[1]) for r in runs}
    warm, decay = (np.array([p[i] for p in positions.values()]) for i in (0, 1))
    # warm-up ends are judged against the whole schedule: a warm-up of a few steps rounds coarsely
    if decay.max() - decay.min() > TOKEN_SCHEDULE_TOLERANCE * decay.min() or \
            warm.max() - warm.min() > TOKEN_SCHEDULE_TOLERANCE * decay.min():
        return ("Not compared at equal supervised tokens: the learning rate follows steps and the runs see different "
                "supervised tokens per step (" + ", ".join(f"{r['name']} {_per_step(r):,.0f}" for r in runs)
                + "), so at equal tokens they stand at different points of their schedules (decay to 0 after "
                + ", ".join(f"{n} {p[1]:,.0f}" for n, p in positions.items()) + " supervised tokens). To compare "
                "them there, give each layout the --max-steps and --warmup-steps that put its schedule at the same "
                "token counts.")
    if any(len(r["val"]) < 2 for r in runs):
        return "Not compared at equal supervised tokens: a run has fewer than two evaluations to interpolate."
    common = min(r["val"][-1]["supervised_tokens"] for r in runs)
    losses = {r["name"]: float(np.interp(common, [v["supervised_tokens"] for v in r["val"]],
                                         [v["val_loss"] for v in r["val"]])) for r in runs}
    return (f"At equal supervised tokens seen ({common:,}, validation loss interpolated between evaluations), "
            + ", ".join(f"{n} {v:.4f}" for n, v in sorted(losses.items(), key=lambda kv: kv[1]))
            + ": " + called(losses, threshold) + ".")


def not_yet_learned(runs: list[dict]) -> list[str]:
    """Names of runs whose best validation loss is not below their shards' unigram baseline."""
    return [r["name"] for r in runs if r["unigram_val_loss"] is not None
            and (r["summary"]["best_val_loss"] is None or r["summary"]["best_val_loss"] >= r["unigram_val_loss"])]


def against_baseline(runs: list[dict]) -> str:
    parts = []
    for r in runs:
        best, base = r["summary"]["best_val_loss"], r["unigram_val_loss"]
        if best is None or base is None:
            parts.append(f"{r['name']}: no validation loss")
        else:
            parts.append(f"{r['name']} {best - base:+.3f}")
    return ("Best validation loss against the unigram baseline of each run's shards (counting the train split's "
            "supervised tokens, add-0.5; negative is better): " + ", ".join(parts) + ".")


def measured_how(runs: list[dict]) -> str:
    """How the runs' throughputs were measured: one after another, or which of them shared the machine.

    >>> run = lambda name, start, end: {"name": name, "summary": {"started_at": start, "finished_at": end, "threads": 1}}
    >>> measured_how([run("a", 0, 10), run("b", 11, 20)])
    'measured in each run one after another on the same machine'
    >>> measured_how([run("a", 0, 10), run("b", 5, 20), run("c", 21, 30)])
    'measured while a with b ran at the same time on the same machine, 1 torch thread each'
    """
    spans = [(r["name"], r["summary"].get("started_at"), r["summary"].get("finished_at")) for r in runs]
    if any(start is None or end is None for _, start, end in spans):
        return "measured in each run on its own (runs written before runs recorded their times)"
    together = [f"{a} with {b}" for i, (a, a0, a1) in enumerate(spans) for b, b0, b1 in spans[i + 1:]
                if a0 < b1 and b0 < a1]
    if not together:
        return "measured in each run one after another on the same machine"
    threads = sorted({r["summary"].get("threads") for r in runs} - {None})
    each = f", {'/'.join(map(str, threads))} torch thread{'s' if threads != [1] else ''} each" if threads else ""
    return f"measured while {', '.join(together)} ran at the same time on the same machine{each}"


def findings(runs: list[dict]) -> str:
    """The paragraphs under "What the numbers show"."""
    if not any(r["summary"]["best_val_loss"] is not None for r in runs):
        return "No run finished an evaluation, so there is nothing to compare yet."
    threshold, noise_text = noise_threshold(runs)
    compared = [g[0] for g in seed_groups(runs)]  # one run per configuration; its other seeds give the noise
    paragraphs = [against_baseline(runs), noise_text]
    if len(compared) > 1:
        paragraphs += [at_equal_steps(compared, threshold), at_equal_tokens(compared, threshold)]
    least = min(runs, key=lambda r: r["summary"]["supervised_tokens_per_second"])
    paragraphs.append(
        f"Supervised tokens per second of training step, {measured_how(runs)}; a rough figure (`make bench` "
        "measures it side by side, interleaved): "
        + ", ".join(f"{r['name']} {r['summary']['supervised_tokens_per_second']:,.0f} "
                    f"({r['summary']['supervised_tokens_per_second'] / max(least['summary']['supervised_tokens_per_second'], 1e-9):.2f}x)"
                    for r in runs) + ".")
    return "\n\n".join(paragraphs)
