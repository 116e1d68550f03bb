"""Where prep's work runs: in this process, on `--workers N` local processes, or on Ray (`--engine ray`).

Pass 1's task tokenizes one batch of records and appends it to the process's own spill part
(prep.spill); pass 2's task writes one whole shard file (prep.rows). A task's output depends on its
arguments alone (which conversations the prompt check renders, what its tally counts, the plan of each
shape), so the shard set is the same bytes for any N and either engine. The one choice a run makes from
its data, tiktoken or the fast tokenizer (prep.encoders checks the first texts both ways), is made by
the driver on the first batches before any worker starts, and binds the workers. Small runs (one batch
after that) start no worker at all.

Hand-written over `concurrent.futures` (and Ray actors) rather than `datasets.map(num_proc=)`: the
results must come back in order, with at most 2N tasks in flight (memory bounded by batches, not by
the data), and the same workers serve both passes.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import io
import multiprocessing
import os
import pickle
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from prep.config import PrepConfig
from prep.readers import Bad
from prep.records import decode
from prep.spill import FOLDER, Part, forget as forget_spill_maps
from prep.template import ChatFormatError, ConversationEncoder, Tally


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class Encoded:
    """One batch of pass 1: which records it kept, where their tokens went and their per-sample numbers;
    the bad records; or where the template failed. Positions are the batch's."""

    kept: list[int]  # the positions of the good records, the samples below
    rejected: list[tuple[int, str, str]]  # bad records: (position, reason, detail); only the first without skip_bad
    alpaca: bool  # some kept record is an Alpaca record
    lengths: np.ndarray | None
    supervised_head: np.ndarray | None  # supervised tokens among each sample's first max_length
    part: str | None  # the spill part the batch was appended to
    start: int  # its first token's offset there
    bad: tuple[int, str] | None  # the prompt check's (position, reason)
    error: tuple[int, str] | None  # a ChatFormatError's (position, message)
    tally: Tally
    notices: list[str]  # the "prep: ..." lines it printed


class Worker:
    """A process's tokenizer and its own spill part."""

    def __init__(self, encoder: ConversationEncoder, staging: Path, token_dtype: np.dtype, config: PrepConfig):
        self.encoder, self.part, self.token_dtype = encoder, Part(staging), np.dtype(token_dtype)
        self.config = config

    def _decode(self, records: list) -> tuple[list, list, list, list, bool]:
        kept, conversations, tools, rejected, alpaca = [], [], [], [], False
        for position, record in enumerate(records):
            try:
                messages, is_alpaca, record_tools = decode(record, self.config.prompt_format)
            except Bad as bad:
                rejected.append((position, bad.reason, bad.detail))
                if not self.config.skip_bad:
                    break  # the run stops at this one
                continue
            kept.append(position)
            conversations.append(messages)
            tools.append(record_tools)
            alpaca = alpaca or is_alpaca
        return kept, conversations, tools, rejected, alpaca

    def spill(self, records: list) -> Encoded:
        kept, conversations, tools, rejected, alpaca = self._decode(records)
        encoder, notices = self.encoder, io.StringIO()
        result = functools.partial(Encoded, kept, rejected, alpaca)
        if not kept or (rejected and not self.config.skip_bad):
            return result(None, None, None, 0, None, None, encoder.take_tally(), [])
        with contextlib.redirect_stderr(notices):
            try:
                ids, mask, offsets = encoder.encode(conversations, tools)
            except ChatFormatError as e:
                if getattr(e, "position", None) is None:
                    raise
                return result(None, None, None, 0, None, (kept[e.position], str(e)), encoder.take_tally(),
                              notices.getvalue().splitlines())
            bad = encoder.check_prompts(conversations, ids, offsets, tools, mask)
        if bad is not None:
            return result(None, None, None, 0, (kept[bad[0]], bad[1]), None, encoder.take_tally(),
                          notices.getvalue().splitlines())
        start = self.part.append(ids.astype(self.token_dtype), mask)
        cumsum = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
        head = cumsum[np.minimum(offsets[1:], offsets[:-1] + self.config.max_length)] - cumsum[offsets[:-1]]
        return result(np.diff(offsets), head, self.part.name, start, None, None, encoder.take_tally(),
                      notices.getvalue().splitlines())


_WORKER: Worker | None = None  # this process's (the driver's own until a pool starts)


def use(worker: Worker) -> None:
    global _WORKER
    _WORKER = worker


def spill_batch(records: list) -> Encoded:
    """Pass 1's task: records as read (prep.records.Pending's) -> checked, tokenized, spilled."""
    return _WORKER.spill(records)


def _exit_with(parent: int) -> None:
    """A worker ends when its driver does, even by SIGKILL (which nothing can catch): a thread watches
    the parent's pid (hand-written: concurrent.futures leaves idle workers of a killed driver waiting)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def share(tokenizer, staging: Path) -> Path:
    """The driver's tokenizer, pickled into the staging folder for the workers. A file, not an argument:
    a spawned process's arguments go down a pipe that the driver blocks on until the child has started,
    which would start the workers one after another. Loading it anew in each worker would import torch."""
    path = Path(staging) / FOLDER / "tokenizer.pickle"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(pickle.dumps(tokenizer))
    return path


def start_worker(config: PrepConfig, tokenizer_file: Path, encoder_name: str, staging: Path, token_dtype,
                 parent: int | None = None) -> None:
    """A worker process's start: the driver's tokenizer (`share`), its own encoder and spill part."""
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    with contextlib.redirect_stderr(io.StringIO()):  # the driver said it all already
        tokenizer = pickle.loads(Path(tokenizer_file).read_bytes())
        encoder = ConversationEncoder(tokenizer, config.loss_on, encoder_name, config.system_message,
                                      verify_encoder=False)
    use(Worker(encoder, staging, token_dtype, config))


def ordered(submit: Callable, result: Callable, items: Iterable, args_of: Callable, limit: int) -> Iterator:
    """(item, result) for every item, in order, with at most `limit` tasks in flight."""
    in_flight: collections.deque = collections.deque()
    for item in items:
        in_flight.append((item, submit(*args_of(item))))
        if len(in_flight) >= limit:
            item, task = in_flight.popleft()
            yield item, result(task)
    while in_flight:
        item, task = in_flight.popleft()
        yield item, result(task)


class Pool:
    """The processes a prep run's tasks go to, started on first use: `--workers` local processes, or
    Ray actors with `--engine ray`. `worker_args()` gives start_worker's arguments when they start."""

    def __init__(self, config: PrepConfig, worker_args: Callable[[], tuple]):
        self.config, self.worker_args = config, worker_args
        self.local = config.workers or usable_cores()
        self._backend = None

    @property
    def started(self) -> bool:
        return self._backend is not None

    def map(self, fn: Callable, items: Iterable, args_of: Callable, start: bool = True) -> Iterator:
        """(item, fn(*args_of(item))) in order: on the workers if they are (or, with `start`, may be)
        started, else in this process."""
        if not self.started and (not start or (self.config.engine == "local" and self.local <= 1)):
            return ((item, fn(*args_of(item))) for item in items)
        if not self.started:
            self._backend = self._start()
        return self._backend.map(fn, items, args_of)

    def _start(self):
        if self.config.engine == "ray":
            from prep.ray_engine import RayBackend

            return RayBackend(self.config, self.worker_args())
        return LocalBackend(self.local, self.worker_args())

    def close(self) -> None:
        """Stop the workers, and forget this process's own (the driver's encoder, its maps of the spill)."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        use(None)
        forget_spill_maps()

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalBackend:
    """`--workers N` processes on this machine (spawned: no fork of the driver's tokenizer threads)."""

    def __init__(self, processes: int, worker_args: tuple):
        self.processes = processes
        self.pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=start_worker, initargs=(*worker_args, os.getpid()))

    def map(self, fn: Callable, items: Iterable, args_of: Callable) -> Iterator:
        return ordered(lambda *args: self.pool.submit(fn, *args), lambda future: future.result(), items, args_of,
                       2 * self.processes)

    def close(self) -> None:  # an error (or the end): nothing queued runs; running tasks finish and the workers exit
        self.pool.shutdown(wait=True, cancel_futures=True)
