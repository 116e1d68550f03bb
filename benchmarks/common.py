"""What every benchmark section shares: the input files, timing, one training step, the machine.

Nothing here runs at import time; `benchmarks.suite.run_all` calls it.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

from prep.readers import SAMPLE_PATH

VERSIONED = ("torch", "transformers", "tokenizers", "pyarrow", "numpy", "datasets", "trl", "accelerate", "psutil")


def sample_records(limit: int | None = None) -> list[dict]:
    """The embedded Alpaca sample's records (the first `limit` of them)."""
    records = json.loads(SAMPLE_PATH.read_text(encoding="utf-8"))
    return records[:limit] if limit is not None else records


def write_copies(path: Path, records: list[dict], copies: int) -> Path:
    """`records` repeated `copies` times as a .jsonl file; rewritten only when its content changes."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) * copies
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")
    return path


def remove(folder: Path) -> None:
    """Delete a shard set or run folder before a timed run, so its deletion is not timed."""
    shutil.rmtree(folder, ignore_errors=True)


def median(values) -> float:
    return float(statistics.median(values))


def clock(function, *args, **kwargs) -> tuple[float, object]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def median_seconds(repeats: int, function, *args, warmup: int = 1, **kwargs) -> float:
    """Median wall time of `repeats` calls after `warmup` untimed ones.

    >>> median_seconds(3, sorted, [3, 1, 2]) < 1.0
    True
    """
    for _ in range(warmup):
        function(*args, **kwargs)
    return median(clock(function, *args, **kwargs)[0] for _ in range(repeats))


def train_step(model, optimizer, inputs: dict, supervised_tokens: int, autocast=nullcontext, scaler=None,
               grad_clip: float = 1.0) -> float:
    """One optimizer step of one micro-batch on one process, with the loop's own `backward`
    and `update`; returns the summed loss (`.item()` waits for the device, as the loop's
    logging does)."""
    import torch

    from train.loop import backward, update

    scaler = scaler if scaler is not None else torch.amp.GradScaler(enabled=False)
    loss = backward(model, model, [(inputs, None)], 1 / max(supervised_tokens, 1), autocast, scaler)
    update(model, optimizer, scaler, grad_clip, finite_loss=True)
    return loss.item()


def optimizer_for(model):
    """AdamW with `python -m train`'s defaults (TrainConfig)."""
    import torch

    from train.config import TrainConfig

    defaults = TrainConfig()
    return torch.optim.AdamW(model.parameters(), lr=defaults.learning_rate, eps=defaults.adam_eps,
                             weight_decay=defaults.weight_decay)


def versions() -> dict:
    """Installed versions of the libraries the figures depend on (None: not installed)."""
    found = {}
    for name in VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine() -> dict:
    """Where the figures were measured; the load average says how busy the machine was."""
    info = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_model() or platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None
