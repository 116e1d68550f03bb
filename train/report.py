"""Compare training runs: loss curves, a table per run, shard statistics, generations.

    python -m train.report runs/demo/padding runs/demo/packed runs/demo/concat --out runs/demo/report
    # writes report.md and loss_curves.png into --out and prints the report's path

Everything in the report is computed from the runs' own files (summary.json,
metrics.jsonl, best/) and their shard sets' manifests; nothing is typed in.
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import numpy as np

from sftcli import main_errors
from shards.stats import format_table, shard_set_stats
from train.eval import eval_section

SEED_PROMPTS = ("Give three tips for staying healthy.", "Can you tell me the history of Earth")


def load_run(folder: Path) -> dict:
    """summary.json and metrics.jsonl of one run (val records carry the tokens seen so far)."""
    folder = Path(folder)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise click.ClickException(f"{folder}: no summary.json; is it a finished `python -m train` run folder?")
    summary = json.loads(summary_path.read_text())
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val" and r["val_loss"] is not None]
    return {"folder": folder, "name": folder.name, "summary": summary, "train": train, "val": val}


def plot_losses(runs: list[dict], path: Path) -> None:
    """Validation (and training) loss against step and against tokens seen, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for i, run in enumerate(runs):
        colour = f"C{i}"
        for ax, x in zip(axes, ("step", "tokens")):
            ax.plot([r[x] for r in run["val"]], [r["val_loss"] for r in run["val"]], "o-", color=colour,
                    label=f"{run['name']} val")
            ax.plot([r[x] for r in run["train"]], [r["loss"] for r in run["train"]], "-", color=colour, alpha=0.35,
                    label=f"{run['name']} train")
    axes[0].set(xlabel="optimizer step", ylabel="loss (nats per supervised token)", title="loss vs step")
    axes[1].set(xlabel="tokens seen", title="loss vs tokens seen")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_table(runs: list[dict], stats: list[dict]) -> str:
    header = ["run", "mode", "rows", "fill", "padding fraction", "supervised tokens", "steps", "wall time (s)",
              "tokens/s", "supervised tokens/s", "best val loss", "final val loss"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run, s in zip(runs, stats):
        m = run["summary"]
        cells = [run["name"], m["mode"], s["rows"], f"{s['fill']:.3f}", f"{m['padding_fraction']:.3f}",
                 m["supervised_tokens"], m["steps"], f"{m['wall_seconds']:.0f}", f"{m['tokens_per_second']:.0f}",
                 f"{m['supervised_tokens_per_second']:.0f}", _num(m["best_val_loss"]), _num(m["final_val_loss"])]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def findings(runs: list[dict]) -> str:
    """One paragraph of what the numbers show, computed from them."""
    done = [r for r in runs if r["summary"]["best_val_loss"] is not None]
    if not done:
        return "No run finished an evaluation, so there is nothing to compare yet."
    best = min(done, key=lambda r: r["summary"]["best_val_loss"])
    fastest = max(runs, key=lambda r: r["summary"]["supervised_tokens_per_second"])
    most = max(runs, key=lambda r: r["summary"]["supervised_tokens"])
    parts = [f"After {best['summary']['steps']} optimizer steps, **{best['name']}** reached the lowest validation loss ({best['summary']['best_val_loss']:.4f})"]
    others = [r for r in done if r is not best]
    if others:
        parts[-1] += ", ahead of " + ", ".join(
            f"{r['name']} ({r['summary']['best_val_loss']:.4f})" for r in sorted(others, key=lambda r: r['summary']['best_val_loss']))
    parts[-1] += "."
    least = min(runs, key=lambda r: r["summary"]["supervised_tokens"])
    steps = sorted({r["summary"]["steps"] for r in runs})
    when = "At the same number of steps" if len(steps) == 1 else f"Over their runs ({'/'.join(map(str, steps))} steps)"
    parts.append(
        f"{when} {most['name']} trained on {most['summary']['supervised_tokens'] / max(least['summary']['supervised_tokens'], 1):.2f}x "
        f"the supervised tokens of {least['name']} ({most['summary']['supervised_tokens']:,} vs {least['summary']['supervised_tokens']:,}), "
        f"because its rows carry {1 - most['summary']['padding_fraction']:.0%} real tokens against {1 - least['summary']['padding_fraction']:.0%}.")
    slowest = min(runs, key=lambda r: r["summary"]["supervised_tokens_per_second"])
    parts.append(
        f"{fastest['name']} processed {fastest['summary']['supervised_tokens_per_second']:.0f} supervised tokens/s, "
        f"{fastest['summary']['supervised_tokens_per_second'] / max(slowest['summary']['supervised_tokens_per_second'], 1e-9):.2f}x "
        f"{slowest['name']} ({slowest['summary']['supervised_tokens_per_second']:.0f}/s) on the same machine.")
    by_tokens = _loss_at_equal_tokens(done, best["name"])
    if by_tokens:
        parts.append(by_tokens)
    return " ".join(parts)


def _loss_at_equal_tokens(runs: list[dict], best_at_steps: str) -> str | None:
    """Validation loss of each run interpolated at the largest token count every run reached."""
    if len(runs) < 2 or any(len(r["val"]) < 2 for r in runs):
        return None
    common = min(r["val"][-1]["tokens"] for r in runs)
    if common <= max(r["val"][0]["tokens"] for r in runs):
        return None
    at = {r["name"]: float(np.interp(common, [v["tokens"] for v in r["val"]], [v["val_loss"] for v in r["val"]]))
          for r in runs}
    ranked = sorted(at.items(), key=lambda kv: kv[1])
    verdict = (f"{best_at_steps} leads both per step and per token seen."
               if ranked[0][0] == best_at_steps else
               f"Per token seen {ranked[0][0]} is ahead, so {best_at_steps}'s lead at equal steps comes from "
               "the tokens it feeds per step, not from learning more from each token.")
    return (f"Compared at equal tokens seen ({common:,.0f}, validation loss interpolated), the order is "
            + ", ".join(f"{name} {loss:.4f}" for name, loss in ranked) + ". " + verdict)


def generations(runs: list[dict], max_new_tokens: int) -> dict[str, list[str]]:
    """Each run's best checkpoint answering the seed's prompts (greedy)."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.generate import reply_ids

    transformers.utils.logging.disable_progress_bar()  # one "Loading weights" bar per run is noise here

    out: dict[str, list[str]] = {}
    for run in runs:
        best = run["folder"] / "best"
        if not (best / "config.json").is_file():
            out[run["name"]] = ["(no best checkpoint)"] * len(SEED_PROMPTS)
            continue
        tokenizer = AutoTokenizer.from_pretrained(str(best))
        model = AutoModelForCausalLM.from_pretrained(str(best)).eval()
        out[run["name"]] = [
            tokenizer.decode(reply_ids(model, tokenizer, prompt, max_new_tokens=max_new_tokens),
                             skip_special_tokens=True).strip()
            for prompt in SEED_PROMPTS
        ]
    return out


def _cell(text: str) -> str:
    return (text or "(empty)").replace("|", "\\|").replace("\n", "<br>")


def update_readme_section(readme: Path, name: str, text: str) -> None:
    """Replace what stands between `<!-- name:start -->` and `<!-- name:end -->` in `readme`."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    content = readme.read_text()
    if start not in content or end not in content:
        raise click.ClickException(f"{readme}: no '{start}' ... '{end}' markers to replace")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{text.strip()}\n{end}{tail}")


def write_report(run_folders: list[Path], out: Path, max_new_tokens: int = 64, readme: Path | None = None,
                 base_eval: Path | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(f) for f in run_folders]
    scores = eval_section([(r["name"], r["folder"]) for r in runs], base_eval)  # None: nothing was scored
    stats = [shard_set_stats(Path(r["summary"]["shards"])) for r in runs]
    for s, r in zip(stats, runs):
        s["path"] = r["name"]  # name the table's columns after the runs
    plot_losses(runs, out / "loss_curves.png")
    replies = generations(runs, max_new_tokens)
    gen_lines = ["| prompt | " + " | ".join(r["name"] for r in runs) + " |", "|" + "---|" * (len(runs) + 1)]
    for i, prompt in enumerate(SEED_PROMPTS):
        gen_lines.append(f"| {prompt} | " + " | ".join(_cell(replies[r['name']][i]) for r in runs) + " |")
    text = "\n\n".join([
        "# sftpack report: " + " vs ".join(r["name"] for r in runs),
        "## What the numbers show\n\n" + findings(runs),
        "## Loss curves\n\n![validation and training loss against step and tokens seen](loss_curves.png)",
        "## Runs\n\n" + run_table(runs, stats),
        *([scores] if scores else []),
        "## Shard statistics (`python -m shards stats`)\n\n" + format_table(stats, markdown=True),
        f"## Generations of each best checkpoint (greedy, at most {max_new_tokens} new tokens)\n\n" + "\n".join(gen_lines),
        "Models: " + ", ".join(f"{r['name']}: `{r['summary']['model']}`" for r in runs)
        + ". Validation loss is the token-weighted mean over the same validation split for every run.",
    ])
    path = out / "report.md"
    path.write_text(text + "\n")
    if readme is not None:
        update_readme_section(readme, "demo-results", "\n\n".join([
            f"Written by `python -m train.report ... --readme {readme.name}` from the runs "
            f"{', '.join(r['name'] for r in runs)} (model `{runs[0]['summary']['model']}`, "
            f"{runs[0]['summary']['steps']} steps each); regenerate with `make demo-readme`.",
            run_table(runs, stats), *([scores.split("\n\n", 1)[1]] if scores else []), findings(runs)]))
    return path


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--out", type=click.Path(path_type=Path), default=Path("reports/latest"), show_default=True,
              help="folder for report.md and loss_curves.png")
@click.option("--max-new-tokens", default=64, show_default=True, help="length of each generation")
@click.option("--readme", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="also put the runs table and findings between the demo-results markers of this file")
@click.option("--base-eval", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="eval.json of the base model (python -m train.eval MODEL --out FILE): its row comes first")
@main_errors()
def main(runs: tuple[Path, ...], out: Path, max_new_tokens: int, readme: Path | None, base_eval: Path | None) -> None:
    """Write a comparison report of the training runs RUNS (folders of `python -m train`)."""
    path = write_report(list(runs), out, max_new_tokens, readme, base_eval)
    click.echo(f"report: {path}")


if __name__ == "__main__":
    main()
