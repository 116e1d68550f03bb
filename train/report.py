"""Compare training runs: loss curves, a table per run, shard statistics, generations.

    python -m train.report runs/demo/padding runs/demo/packed runs/demo/concat --out runs/demo/report
    # writes report.md and loss_curves.png into --out and prints the report's path

Everything in the report is computed from the runs' own files (summary.json,
metrics.jsonl, best/) and their shard sets' manifests; nothing is typed in.
"""
from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path

import click

from sftcli import main_errors, markdown_table
from shards.stats import format_table, shard_set_stats
from train.compare import findings, not_yet_learned
from train.eval import eval_section

README_FIGURE = "docs/demo-loss-curves.png"  # beside the README, so the Markdown picture resolves
SEED_PROMPTS = ("Give three tips for staying healthy.", "Can you tell me the history of Earth")


def load_run(folder: Path) -> dict:
    """summary.json and metrics.jsonl of one run (val records carry the tokens seen so far)."""
    folder = Path(folder)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise click.ClickException(f"{folder}: no summary.json; is it a finished `python -m train` run folder?")
    summary = json.loads(summary_path.read_text())
    config = json.loads((folder / "config.json").read_text())  # the schedule and seed the comparisons need
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val" and r["val_loss"] is not None]
    return {"folder": folder, "name": folder.name, "summary": summary, "config": config, "train": train, "val": val}


def plot_losses(runs: list[dict], path: Path) -> None:
    """Validation (and training) loss against step and against tokens seen, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for i, run in enumerate(runs):
        colour = f"C{i}"
        for ax, x in zip(axes, ("step", "supervised_tokens")):
            ax.plot([r[x] for r in run["val"]], [r["val_loss"] for r in run["val"]], "o-", color=colour,
                    label=f"{run['name']} val")
            ax.plot([r[x] for r in run["train"]], [r["loss"] for r in run["train"]], "-", color=colour, alpha=0.35,
                    label=f"{run['name']} train")
    for value, label in baselines(runs):
        for ax in axes:
            ax.axhline(value, color="black", linestyle="--", linewidth=1, label=label)
    axes[0].set(xlabel="optimizer step", ylabel="loss (nats per supervised token)", title="loss vs step")
    axes[1].set(xlabel="supervised tokens seen", title="loss vs supervised tokens seen")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def baselines(runs: list[dict]) -> list[tuple[float, str]]:
    """The unigram baselines to draw: one line when the runs' shards agree to 0.01 nats, else one per run."""
    values = [(r["unigram_val_loss"], r["name"]) for r in runs if r["unigram_val_loss"] is not None]
    if not values:
        return []
    if max(v for v, _ in values) - min(v for v, _ in values) < 0.01:
        return [(values[0][0], f"unigram baseline {values[0][0]:.2f}")]
    return [(v, f"unigram baseline ({name}) {v:.2f}") for v, name in values]


def run_table(runs: list[dict], stats: list[dict]) -> str:
    header = ["run", "mode", "rows", "fill", "padding fraction", "supervised tokens", "steps", "wall time (s)",
              "tokens/s", "supervised tokens/s", "best val loss", "final val loss", "unigram baseline"]
    rows = []
    for run, s in zip(runs, stats):
        m = run["summary"]
        rows.append([run["name"], m["mode"], s["rows"], f"{s['fill']:.3f}", f"{m['padding_fraction']:.3f}",
                     m["supervised_tokens"], m["steps"], f"{m['wall_seconds']:.0f}", f"{m['tokens_per_second']:.0f}",
                     f"{m['supervised_tokens_per_second']:.0f}", _num(m["best_val_loss"]), _num(m["final_val_loss"]),
                     _num(run["unigram_val_loss"])])
    return markdown_table(header, rows)


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


# Each prompt is answered greedily and by one seeded sample (nanoGPT's sample.py temperature): greedy
# shows the single likeliest reply, which an undertrained model fills with its likeliest token; the
# sample shows what else the model's distribution holds. The sample's repetition penalty (CTRL's 1.3):
# a model this small puts most of its mass on a few frequent tokens (newline, "the", the end of turn),
# and unpenalised its samples repeat them or end at once.
DECODINGS = {"greedy": dict(temperature=0.0),
             "sampled": dict(temperature=0.8, top_p=0.95, repetition_penalty=1.3, seed=0)}


def generations(runs: list[dict], max_new_tokens: int) -> dict[str, dict[tuple[str, str], str]]:
    """Each run's best checkpoint answering the source article's prompts: its reply per (prompt, decoding name)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.generate import reply_ids

    transformers.utils.logging.disable_progress_bar()  # one "Loading weights" bar per run is noise here

    out: dict[str, dict[tuple[str, str], str]] = {}
    for run in runs:
        best = run["folder"] / "best"
        if not (best / "config.json").is_file():
            out[run["name"]] = dict.fromkeys(itertools.product(SEED_PROMPTS, DECODINGS), "(no best checkpoint)")
            continue
        tokenizer = AutoTokenizer.from_pretrained(str(best))
        model = AutoModelForCausalLM.from_pretrained(str(best)).eval()
        out[run["name"]] = {
            (prompt, name): tokenizer.decode(reply_ids(model, tokenizer, prompt, max_new_tokens=max_new_tokens,
                                                       **decoding), skip_special_tokens=True)
            for prompt in SEED_PROMPTS for name, decoding in DECODINGS.items()
        }
    return out


def _cell(text: str) -> str:
    """A reply as a table cell; an empty or all-whitespace reply says so (the decoder's strip would hide it).

    >>> _cell("Hi | there\\n"), _cell(""), _cell("\\n\\n")
    ('Hi \\\\| there', '(empty)', '(whitespace only: 2 characters)')
    """
    if not text.strip():
        return f"(whitespace only: {len(text)} characters)" if text else "(empty)"
    return text.strip().replace("|", "\\|").replace("\n", "<br>")


def update_readme_section(readme: Path, name: str, text: str) -> None:
    """Replace what stands between `<!-- name:start -->` and `<!-- name:end -->` in `readme`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    content = readme.read_text()
    if start not in content or end not in content:
        raise click.ClickException(f"{readme}: no '{start}' ... '{end}' markers to replace")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{text.strip()}\n{end}{tail}")


def generation_section(runs: list[dict], max_new_tokens: int) -> str:
    """The generation table, under a warning for runs that have not beaten counting tokens."""
    replies = generations(runs, max_new_tokens)
    table = markdown_table(["prompt", "decoding", *(r["name"] for r in runs)],
                           [[prompt, name, *(_cell(replies[r["name"]][prompt, name]) for r in runs)]
                            for prompt, name in itertools.product(SEED_PROMPTS, DECODINGS)])
    behind = not_yet_learned(runs)
    warning = (f"**{', '.join(behind)}: the best validation loss is not below the unigram baseline, so the model has "
               "not yet learned beyond token frequencies; its replies show no more than that.**\n\n" if behind else "")
    sampled = DECODINGS["sampled"]
    return (f"## Generations of each best checkpoint (greedy, and one sample at temperature {sampled['temperature']}, "
            f"top-p {sampled['top_p']}, repetition penalty {sampled['repetition_penalty']}, seed {sampled['seed']}; "
            f"at most {max_new_tokens} new tokens)\n\n" + warning + table)


def runs_line(runs: list[dict]) -> str:
    """Which runs, which model, and whether they are compared at equal steps."""
    steps = sorted({r["summary"]["steps"] for r in runs})
    budget = f"{steps[0]} optimizer steps each" if len(steps) == 1 else f"{'/'.join(map(str, steps))} optimizer steps"
    models = sorted({r["summary"]["model"] for r in runs})
    return (f"Runs {', '.join(r['name'] for r in runs)}: model {', '.join(f'`{m}`' for m in models)}, {budget}, "
            "validation loss over the same validation split for every run.")


def write_report(run_folders: list[Path], out: Path, *, max_new_tokens: int = 64, readme: Path | None = None,
                 started: float | None = None, base_eval: Path | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(f) for f in run_folders]
    scores = eval_section([(r["name"], r["folder"]) for r in runs], base_eval)  # None: nothing was scored
    stats = [shard_set_stats(Path(r["summary"]["shards"])) for r in runs]
    for s, r in zip(stats, runs):
        s["path"] = r["name"]  # name the table's columns after the runs
        r["unigram_val_loss"] = s["unigram_val_loss"]
    plot_losses(runs, out / "loss_curves.png")
    sections = {
        "findings": "## What the numbers show\n\n" + runs_line(runs) + "\n\n" + findings(runs),
        "curves": "## Loss curves\n\n![validation (dots) and training loss against step and supervised tokens seen, "
                  "with the unigram baseline dashed](loss_curves.png)",
        "runs": "## Runs\n\n" + run_table(runs, stats),
        "eval": scores,
        "shards": "## Shard statistics (`python -m shards stats`)\n\n" + format_table(stats, markdown=True),
        "generations": generation_section(runs, max_new_tokens),
    }
    wall = None if started is None else f"Wall time from the start of the command to this report: {time.time() - started:.0f} s."
    text = "\n\n".join(["# sftpack report: " + " vs ".join(r["name"] for r in runs), *filter(None, sections.values()),
                         *([wall] if wall else [])])
    path = out / "report.md"
    path.write_text(text + "\n")
    if readme is not None:
        figure = readme.parent / README_FIGURE
        figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "loss_curves.png", figure)
        update_readme_section(readme, "demo-results", "\n\n".join([
            f"Written by `python -m train.report ... --readme {readme.name}`; regenerate with `make demo-readme`. "
            + runs_line(runs) + (" " + wall if wall else ""),
            f"![validation and training loss, unigram baseline dashed]({README_FIGURE})",
            run_table(runs, stats), *([scores.split("\n\n", 1)[1]] if scores else []), findings(runs)]))
    return path


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path), default=Path("reports/latest"), show_default=True,
              help="folder for report.md and loss_curves.png")
@click.option("--max-new-tokens", default=64, show_default=True, help="length of each generation")
@click.option("--readme", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help=f"also put the runs table, findings and loss curves (copied to {README_FIGURE} beside it) "
                   "between the demo-results markers of this file")
@click.option("--started", type=float, help="when the command that made the runs began (`date +%s`): the report "
                                            "states the wall time from then")
@click.option("--base-eval", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="eval.json of the base model (python -m train.eval MODEL --out FILE): its row comes first")
@main_errors()
def main(*, runs: tuple[Path, ...], out: Path, max_new_tokens: int, readme: Path | None, started: float | None,
         base_eval: Path | None) -> None:
    """Write a comparison report of the training runs RUNS (folders of `python -m train`)."""
    path = write_report(list(runs), out, max_new_tokens=max_new_tokens, readme=readme, started=started,
                        base_eval=base_eval)
    click.echo(f"report: {path}")


if __name__ == "__main__":
    main()
