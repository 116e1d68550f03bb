"""`python -m benchmarks.fsdp_head`: under `--fsdp`, where should the label-only head's weight live?

    python -m benchmarks.fsdp_head                        # prints the table, writes benchmarks/work/results-fsdp-head.json
    python -m benchmarks.fsdp_head --docs docs/scale.md   # and puts it between the file's fsdp-head markers

The label-only head reads the LM head's weight directly (train/head.py), not through the head module's
forward. Under `--fsdp` that weight is either sharded with the root (`train.fsdp.HEAD_UNIT` False: gathered
with the embeddings and the final norm when the root's forward starts) or an FSDP unit of its own (True:
gathered around the head's call, a collective of its own). Two CPU processes (torchrun, gloo) build the run
`python -m train --fsdp` builds, once per placement, on `tiny-untied` (its head is most of its parameters),
fp32, dropout 0; rounds of one optimizer step each, taking turns. `unit_over_root` is the median of the
rounds' step-time ratios; the faster placement is the one whose rounds' quartiles both lie on its side of 1.
Both placements must give the same losses.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import click

from benchmarks import common, report
from sftcli import click_options, main_errors, opt

HERE = Path(__file__).resolve().parent
PLACEMENTS = {"root": False, "unit": True}  # name: train.fsdp.HEAD_UNIT


@dataclass(frozen=True)
class HeadSettings:
    out: Path = opt(HERE / "work" / "results-fsdp-head.json", "where the results JSON goes")
    work: Path = opt(HERE / "work" / "fsdp-head", "folder for the shard set")
    steps: int = opt(30, "timed optimizer steps of each placement (after one untimed step each)")
    batch_size: int = opt(8, "rows per step over both processes")
    model: str = opt("tiny-untied", "a model with an untied LM head (a tied head is the embedding: always the root's)")
    records: int | None = opt(None, "records of the embedded sample used (None: all)")
    docs: Path | None = opt(None, "put the table between this file's fsdp-head markers")


def worker(shards: str, out: str, steps: int, batch_size: int, model: str) -> None:
    """One process of the torchrun: both placements built side by side, then timed steps taking turns; rank 0
    writes each placement's step seconds and losses to `out`."""
    import torch
    from torch.distributed.fsdp import FSDPModule

    from benchmarks.common import clock, rounds
    from train import fsdp
    from train.config import TrainConfig
    from train.setup import build
    from train.step import setup_distributed

    dist = setup_distributed()
    runs = {}
    for name, unit in PLACEMENTS.items():
        fsdp.HEAD_UNIT = unit  # read by train.fsdp.shard inside build
        config = TrainConfig(shards=Path(shards), out=Path(tempfile.gettempdir()) / "sftpack-fsdp-head",
                             model=model, batch_size=batch_size, fsdp=True, precision="fp32", dropout=0.0,
                             warmup_steps=0, attention="varlen", progress=False)
        runs[name] = build(config, dist)
        sharded_alone = isinstance(runs[name].model.get_output_embeddings(), FSDPModule)
        assert sharded_alone == unit, f"{name}: the head is {'' if sharded_alone else 'not '}a unit of its own"

    def one_step(run) -> tuple[float, float]:
        batches, *_ = run.draw()
        supervised = dist.sum([sum(b.supervised_tokens for _, b in batches)], run.device)[0]
        seconds, done = clock(run.step, batches, supervised)
        return seconds, dist.sum([done[0].item()], run.device)[0] / supervised

    for run in runs.values():
        one_step(run)  # untimed: the first step allocates the optimizer state
    done = rounds({name: (lambda run=run: one_step(run)) for name, run in runs.items()}, steps)
    if dist.main:
        Path(out).write_text(json.dumps({name: {"seconds": [s for s, _ in r], "losses": [loss for _, loss in r]}
                                         for name, r in done.items()}))
    torch.distributed.destroy_process_group()


def measure(shards: Path, steps: int, batch_size: int, model: str, processes: int = 2) -> dict:
    """Both placements' step seconds and losses from a `torchrun --nproc_per_node processes` of `worker`."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "head.json"
        arguments = dict(shards=str(shards), out=str(out), steps=steps, batch_size=batch_size, model=model)
        common.run_process(common.python_module(
            "torch.distributed.run", "--standalone", "--nproc_per_node", processes, "-m", "benchmarks.common",
            "benchmarks.fsdp_head:worker", json.dumps(arguments)))
        return json.loads(out.read_text())


def figures(section: dict) -> list[dict]:
    """`unit_over_root` (paired, per round) and whether both placements trained the same losses."""
    from benchmarks.training import paired_ratio

    import numpy as np

    ratio = paired_ratio(section["unit"]["seconds"], section["root"]["seconds"])
    faster = ("the root" if ratio["q1"] > 1 else "the head's own unit" if ratio["q3"] < 1
              else "neither beyond the rounds' spread (their quartiles straddle 1)")
    same = bool(np.allclose(section["unit"]["losses"], section["root"]["losses"], rtol=1e-5))
    return [report.figure("fsdp_head", "root_step_seconds", common.median(section["root"]["seconds"]), "s"),
            report.figure("fsdp_head", "unit_step_seconds", common.median(section["unit"]["seconds"]), "s"),
            report.figure("fsdp_head", "unit_over_root", ratio["median"],
                          note=f"rounds' quartiles {ratio['q1']:.3f} to {ratio['q3']:.3f}; faster: {faster}"),
            report.figure("fsdp_head", "same_losses", same, passed=same)]


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click_options(HeadSettings)
@main_errors()
def main(**options) -> None:
    """Time the label-only head's weight sharded with the root against an FSDP unit of its own (2 CPU processes)."""
    from train.report import update_readme_section

    s = HeadSettings(**options)
    results = common.new_results(s)
    data = common.write_copies(s.work / "sample.jsonl", common.sample_records(s.records), 1)
    shards = common.build_shards(data, s.work / "concat-256", "concat", 256)
    results["sections"]["fsdp_head"] = section = measure(shards, s.steps, s.batch_size, s.model)
    results["figures"] = figures(section)
    common.write_results(results, s.out)
    table = report.markdown(results)
    if s.docs:
        update_readme_section(s.docs, "fsdp-head", f"`python -m benchmarks.fsdp_head --docs {s.docs}` "
                                                   f"({s.model}, {s.steps} steps of {s.batch_size} rows):\n\n{table}")
    click.echo(table + f"\n{s.out}")


if __name__ == "__main__":
    main()
