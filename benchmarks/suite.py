"""The whole CPU benchmark: build its inputs, run the four sections, collect figures against goals.

`run_all(Settings())` is what `python -m benchmarks` (`make bench`) runs; `Settings.quick()` is
the same code on small inputs (a smoke run, not comparable figures).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks import common, report

HERE = Path(__file__).resolve().parent
SECTIONS = ("prep", "packing", "loading", "training")


def _opt(default, help: str):  # noqa: A002 - mirrors click's keyword
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    out: Path = _opt(HERE / "results.json", "where the results JSON goes")
    work: Path = _opt(HERE / "work", "folder for generated data, shard sets and runs (git-ignored)")
    quick: bool = _opt(False, "small inputs, one repetition: a smoke run whose figures mean nothing")
    records: int | None = _opt(None, "records of the embedded sample to use (default: all 999)")
    copies: int = _opt(52, "times the sample is repeated for the prep and packing sections (52: 51,948 rows)")
    max_length: int = _opt(256, "max-length of the prep section and of the training comparison")
    max_lengths: tuple[int, ...] = _opt((256, 1024), "max-lengths of the packing and loading sections")
    repeats: int = _opt(3, "timed repetitions of each slow measurement, after a warm-up")
    batch_size: int = _opt(16, "rows per batch in the loading and training sections")
    train_steps: int = _opt(5, "timed training steps per layout (interleaved), after a warm-up step")
    synthetic_count: int = _opt(10_000_000, "synthetic lengths packed in the packing section")
    rss_scale: int = _opt(10, "how many times larger the shard set of the memory comparison is")
    trl: bool = _opt(True, "time TRL's dataset preparation when trl is installed")
    sections: tuple[str, ...] = _opt(SECTIONS, "sections to run")

    @classmethod
    def quick_settings(cls, **overrides) -> "Settings":
        return cls(**{**dict(quick=True, out=HERE / "work" / "results-quick.json", records=120, copies=2, repeats=1,
                             batch_size=2, train_steps=1, synthetic_count=20_000), **overrides})

    def validate(self) -> "Settings":
        problems = []
        for name in ("copies", "repeats", "batch_size", "train_steps", "synthetic_count", "rss_scale"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.records is not None and not 1 <= self.records <= 999:
            problems.append(f"--records must be between 1 and 999, got {self.records}")
        unknown = sorted(set(self.sections) - set(SECTIONS))
        if unknown:
            problems.append(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
        if problems:
            raise ValueError("invalid benchmark options:\n  " + "\n  ".join(problems))
        return self

    def to_json(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


def build_shards(data: Path, out: Path, mode: str, max_length: int) -> Path:
    """A shard set made by prep with its defaults (10% validation), rebuilt every run."""
    from prep.config import PrepConfig
    from prep.pipeline import run

    run(PrepConfig(data=str(data), out=str(out), mode=mode, max_length=max_length), progress=False)
    return out


def run_all(settings: Settings, log=print) -> dict:
    """Run the chosen sections; return (and write to settings.out) the results."""
    settings.validate()
    started, clock0 = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    results: dict = {
        "started": started.isoformat(timespec="seconds"), "machine": common.machine(), "versions": common.versions(),
        "load_average": {"start": common.load_average()}, "settings": settings.to_json(),
        "sections": {}, "figures": [], "skipped": {},
    }
    work = Path(settings.work)
    records = common.sample_records(settings.records)
    data = work / "data"
    sample = common.write_copies(data / "sample-x1.jsonl", records, 1)
    repeated = common.write_copies(data / f"sample-x{settings.copies}.jsonl", records, settings.copies)
    lengths = None
    sections = results["sections"]

    if "prep" in settings.sections:
        from benchmarks import prep_speed

        log(f"prep: {len(records) * settings.copies:,} rows, prep vs tokenizer floor"
            f"{' vs TRL' if settings.trl and prep_speed.trl_available() else ''}, {settings.repeats} rounds ...")
        section, lengths = prep_speed.measure(repeated, sample, work, settings.max_length, settings.repeats,
                                              with_trl=settings.trl)
        sections["prep"] = section
        if "skipped" in section["trl"]:
            results["skipped"]["trl"] = section["trl"]["skipped"]
        from benchmarks import prep_memory

        doubled = common.write_copies(data / f"sample-x{2 * settings.copies}.jsonl", records, 2 * settings.copies)
        log(f"prep memory: peak of a prep process on x{settings.copies} and x{2 * settings.copies} copies ...")
        section["memory"] = prep_memory.measure(repeated, doubled, work, settings.max_length, settings.repeats)

    if "packing" in settings.sections:
        from benchmarks import bench_packing, prep_speed

        if lengths is None:
            tok = prep_speed.tokenizer()
            lengths = prep_speed.sample_lengths(tok, prep_speed.conversations(repeated))
        log(f"packing: {len(lengths):,} real lengths and {settings.synthetic_count:,} synthetic ones ...")
        sections["packing"] = bench_packing.run(lengths, max_lengths=settings.max_lengths, repeats=5,
                                                synthetic_count=settings.synthetic_count,
                                                synthetic_repeats=settings.repeats)

    shards = work / "shards"
    if "loading" in settings.sections:
        from benchmarks import loading

        log("loading: one batch vs one tiny-model step; resident memory of a whole epoch ...")
        by_length = {L: build_shards(sample, shards / f"concat-{L}", "concat", L) for L in settings.max_lengths}
        larger = common.write_copies(data / f"sample-x{settings.rss_scale}.jsonl", records, settings.rss_scale)
        small = by_length.get(settings.max_length) or build_shards(sample, shards / f"concat-{settings.max_length}",
                                                                    "concat", settings.max_length)
        large = build_shards(larger, shards / f"concat-{settings.max_length}-x{settings.rss_scale}", "concat",
                             settings.max_length)
        sections["loading"] = loading.measure(by_length, small, large, settings.batch_size, settings.repeats)

    if "training" in settings.sections:
        from benchmarks import training

        log(f"training: padding / packed / concat at {settings.max_length}, tiny model, "
            f"{settings.train_steps} interleaved steps each ...")
        by_mode = {mode: build_shards(sample, shards / f"{mode}-{settings.max_length}", mode, settings.max_length)
                   for mode in training.MODES}
        sections["training"] = training.measure(by_mode, settings.batch_size, settings.train_steps)

    results["figures"] = figures(results)
    finished = datetime.datetime.now(datetime.timezone.utc)
    results.update(finished=finished.isoformat(timespec="seconds"), seconds=time.perf_counter() - clock0)
    results["load_average"]["end"] = common.load_average()
    out = Path(settings.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_jsonable(results), indent=2) + "\n")
    return results


def figures(results: dict) -> list[dict]:
    """The reported figures, each with its goal where the issue set one."""
    f = report.figure
    sections = results["sections"]
    found = []
    if "prep" in sections:
        p = sections["prep"]
        found += [
            f("prep", "prep_samples_per_second", p["prep_samples_per_second"], "samples/s"),
            f("prep", "prep_tokens_per_second", p["prep_tokens_per_second"], "tokens/s"),
            f("prep", "floor_tokens_per_second", p["floor_tokens_per_second"], "tokens/s"),
            f("prep", "prep_over_tokenizer_floor", p["prep_over_tokenizer_floor"], goal=("<=", 1.3),
              note="the floor: one encode_batch_fast call over all the texts"),
            f("prep", "prep_over_batched_floor", p["prep_over_batched_floor"], goal=("<=", 1.3),
              note=f"the floor per {p['floor_batch_size']:,} texts, prep's --batch-size (stricter)"),
        ]
        trl = p["trl"]
        if "skipped" not in trl:
            found += [
                f("prep", "trl_over_prep", trl["trl_over_prep"], goal=(">=", 2.5)),
                f("prep", "trl_rows", trl["trl_rows"], note="bfd rows of TRL (it packs per 1,000-row map batch)"),
                f("prep", "prep_rows", p["prep_rows"]),
            ]
        found.append(_checks("prep", {**p["checks"], **trl.get("checks", {})}))
        if "memory" in p:
            copies = results["settings"]["copies"]
            memory = p["memory"]
            found += [
                f("prep", f"prep_peak_anon_mib_x{copies}", memory["smaller"]["peak_anon_bytes"] / 2**20, "MiB"),
                f("prep", f"prep_peak_anon_mib_x{2 * copies}", memory["larger"]["peak_anon_bytes"] / 2**20, "MiB"),
                f("prep", "prep_anon_growth", memory["anon_growth"], goal=("<", 1.1),
                  note="peak heap of prep on twice the records; our goal for 'grows with one batch, not the data'"),
                f("prep", "prep_rss_growth", memory["rss_growth"],
                  note="peak RSS incl. the memory-mapped spill's page cache (file-backed, reclaimable)"),
            ]
    if "packing" in sections:
        for max_length, r in sections["packing"].items():
            found += [
                f("packing", f"concat_rows_over_bound_{max_length}", r["concat_rows_over_bound"], goal=("<", 0.005)),
                f("packing", f"concat_seconds_{max_length}", r["concat_bfd_seconds"], "s", goal=("<", 0.1),
                  note=f"bfd over the {r['samples']:,} real lengths"),
                f("packing", f"synthetic_concat_seconds_{max_length}", r["synthetic_concat_bfd_seconds"], "s",
                  goal=("<", 10), note=f"bfd over {r['synthetic_samples']:,} synthetic lengths"),
            ]
    if "loading" in sections:
        loading = sections["loading"]
        for max_length, r in loading["by_max_length"].items():
            found += [
                f("loading", f"batch_ms_{max_length}", r["batch_seconds"] * 1000, "ms"),
                f("loading", f"step_seconds_{max_length}", r["step_seconds"], "s"),
                f("loading", f"load_over_step_{max_length}", r["load_over_step"], goal=("<", 0.01)),
            ]
        memory = loading["memory"]
        found += [
            f("loading", "peak_rss_mib_sample", memory["small"]["peak_rss_bytes"] / 2**20, "MiB"),
            f("loading", f"peak_rss_mib_x{results['settings']['rss_scale']}", memory["large"]["peak_rss_bytes"] / 2**20,
              "MiB"),
            f("loading", "rss_growth", memory["rss_growth"], goal=("<", 1.1)),
            f("loading", "anon_rss_growth", memory["anon_rss_growth"]),
        ]
    if "training" in sections:
        t = sections["training"]
        for mode, r in t["by_mode"].items():
            found.append(f("training", f"{mode}_supervised_tokens_per_second", r["supervised_tokens_per_second"],
                           "tokens/s"))
        found += [
            f("training", "concat_over_padding", t.get("concat_over_padding"), goal=(">=", 1.4)),
            f("training", "packed_over_padding", t.get("packed_over_padding")),
            _checks("training", t["checks"]),
        ]
    return found


def _checks(section: str, checks: dict) -> dict:
    """One figure for a section's correctness checks: it passes when every check holds."""
    failed = [name for name, ok in checks.items() if not ok]
    entry = report.figure(section, "same_rows_and_tokens", not failed)
    entry["passed"] = not failed
    if failed:
        entry["note"] = "failed: " + ", ".join(failed)
    return entry


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
