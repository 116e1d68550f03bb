"""Peak memory of a whole `python -m prep` run at two data sizes.

The issue's claim: prep's memory grows with one batch of records, not with the data set
beyond per-sample lengths. A fresh prep process is polled (/proc/PID/status) for its peak
anonymous memory (heap: what the program holds) and its peak resident set, which also
counts file-backed pages of the memory-mapped spill (page cache the kernel can drop).
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import median


def peak_memory(command: list[str], interval: float = 0.02) -> dict:
    """Run `command`; the peak RssAnon and VmHWM (bytes) seen while it ran."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks = {"RssAnon": 0, "VmHWM": 0}
    while process.poll() is None:
        try:
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in peaks:
                    peaks[key] = max(peaks[key], int(value.split()[0]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(interval)
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {stderr.decode()[-500:]}")
    return {"peak_anon_bytes": peaks["RssAnon"], "peak_rss_bytes": peaks["VmHWM"]}


def measure(smaller: Path, larger: Path, work: Path, max_length: int, repeats: int) -> dict:
    """Peak memory of prep (concat) on `smaller` and on `larger` (twice the records), interleaved."""
    runs: dict[str, list[dict]] = {"smaller": [], "larger": []}
    for _ in range(max(repeats, 1)):
        for name, data in (("smaller", smaller), ("larger", larger)):
            runs[name].append(peak_memory([sys.executable, "-m", "prep", "--data", str(data), "--mode", "concat",
                                           "--max-length", str(max_length), "--out", str(work / f"prep-memory-{name}")]))
    result = {name: {key: median([r[key] for r in rs]) for key in rs[0]} for name, rs in runs.items()}
    result["anon_growth"] = result["larger"]["peak_anon_bytes"] / result["smaller"]["peak_anon_bytes"]
    result["rss_growth"] = result["larger"]["peak_rss_bytes"] / result["smaller"]["peak_rss_bytes"]
    return result
