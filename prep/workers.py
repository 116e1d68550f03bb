"""Pass 1 of prep on several processes (`--workers N`): records -> ids and loss masks, batch by batch.

The driver reads the records and writes the spill, in input order; workers tokenize whole batches,
each with its own tokenizer. A batch's output is a function of the batch alone (which conversations
the prompt check renders, what its tally counts, the plan of each shape), so the spill, and so the
shard set, are the same bytes for any N. The one choice a run makes from its data, tiktoken or the
fast tokenizer (prep.encoders checks the first texts both ways), is made by the driver on the first
batches before any worker starts, and binds the workers. Small runs (one batch after that) start no
worker at all.

Hand-written over `concurrent.futures` rather than `datasets.map(num_proc=)`: the batches must come back
in order into one spill, with at most 2N in flight (memory bounded by batches, not by the data).
"""
from __future__ import annotations

import collections
import contextlib
import io
import itertools
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from prep.config import PrepConfig
from prep.template import ChatFormatError, ConversationEncoder, Tally, ensure_chat_format, load_tokenizer
from shards.prompts import set_template_options


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def prep_tokenizer(config: PrepConfig, date_for: Callable[[str], str | None]):
    """The tokenizer prep renders with: ChatML added where it has no template, --chat-template, and the
    template options (--chat-template-kwargs, the date `date_for(template)` gives)."""
    tokenizer = ensure_chat_format(load_tokenizer(config.tokenizer))
    if config.chat_template is not None:  # after ChatML's tokens are added to a tokenizer without a template
        tokenizer.chat_template = Path(config.chat_template).read_text(encoding="utf-8")
    set_template_options(tokenizer, config.template_kwargs, date_for(tokenizer.chat_template))
    return tokenizer


@dataclass
class Encoded:
    """One batch: flat ids (the shard dtype) and mask, sample offsets; or where the template failed."""

    ids: np.ndarray | None
    mask: np.ndarray | None
    offsets: np.ndarray | None
    bad: tuple[int, str] | None  # the prompt check's (position, reason)
    error: tuple[int, str] | None  # a ChatFormatError's (position, message)
    tally: Tally
    notices: list[str]  # the "prep: ..." lines it printed


def encode_batch(encoder: ConversationEncoder, conversations: list, tools: list, token_dtype) -> Encoded:
    notices = io.StringIO()
    with contextlib.redirect_stderr(notices):
        try:
            ids, mask, offsets = encoder.encode(conversations, tools)
        except ChatFormatError as e:
            if getattr(e, "position", None) is None:
                raise
            return Encoded(None, None, None, None, (e.position, str(e)), encoder.take_tally(),
                           notices.getvalue().splitlines())
        bad = encoder.check_prompts(conversations, ids, offsets, tools, mask)
    return Encoded(ids.astype(token_dtype), mask, offsets, bad, None, encoder.take_tally(),
                   notices.getvalue().splitlines())


_ENCODER: ConversationEncoder | None = None  # a worker's own


def _exit_with(parent: int) -> None:
    """A worker ends when its driver does, even by SIGKILL (which nothing can catch): a thread watches
    the parent's pid (hand-written: concurrent.futures leaves idle workers of a killed driver waiting)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _start_worker(config: PrepConfig, date: str | None, encoder_name: str, parent: int) -> None:
    global _ENCODER
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    with contextlib.redirect_stderr(io.StringIO()):  # the driver said it all already
        tokenizer = prep_tokenizer(config, lambda template: date)
        _ENCODER = ConversationEncoder(tokenizer, config.loss_on, encoder_name, config.system_message,
                                       verify_encoder=False)


def _encode_in_worker(conversations: list, tools: list, token_dtype) -> Encoded:
    return encode_batch(_ENCODER, conversations, tools, token_dtype)


def _inputs(batch) -> tuple[list, list]:
    return [c.messages for c in batch], [c.tools for c in batch]


def encode_all(config: PrepConfig, batches, encoder: ConversationEncoder, token_dtype,
               date: str | None) -> Iterator[tuple[list, Encoded]]:
    """(batch, Encoded) for every batch, in order: in this process until the encoder's choice is final,
    then on `config.workers` processes (0: the usable cores; if more than one, and batches remain)."""
    batches = iter(batches)
    for batch in batches:
        yield batch, encode_batch(encoder, *_inputs(batch), token_dtype)
        if encoder.text.verified:
            break
    following = next(batches, None)
    if following is None:
        return
    batches = itertools.chain([following], batches)
    processes = config.workers or usable_cores()
    if processes <= 1:
        for batch in batches:
            yield batch, encode_batch(encoder, *_inputs(batch), token_dtype)
        return
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(config, date, encoder.text.name, os.getpid()))
    try:
        in_flight: collections.deque = collections.deque()
        for batch in batches:
            in_flight.append((batch, pool.submit(_encode_in_worker, *_inputs(batch), token_dtype)))
            if len(in_flight) >= 2 * processes:
                batch, future = in_flight.popleft()
                yield batch, future.result()
        while in_flight:
            batch, future = in_flight.popleft()
            yield batch, future.result()
    finally:  # an error (or the end): nothing queued runs; running batches finish and the workers exit
        pool.shutdown(wait=True, cancel_futures=True)
