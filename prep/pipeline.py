"""The prep pipeline: records -> ids and loss masks -> row layout -> shard set.

Two passes keep memory bounded by a few batches of records:
1. stream the records in batches; workers tokenize them and spill each sample's ids and mask to
   their own part of the staging folder (prep.spill; only per-sample numbers come back, in order);
2. split train/val, apply the length policy, lay the rows out with the pure packing functions
   (prep.packing) and write the shard files, each gathered from the memory-mapped spill (prep.rows).
Both passes run on the same workers (prep.workers: local processes or Ray); the driver reads the
records and writes the manifest. The staging folder becomes the shard set by one rename
(shards.folders.staged_folder).
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import itertools
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from prep.config import PrepConfig
from prep.readers import Bad, DataError
from prep.records import combined_fingerprint, read_conversations
from prep import workers
from prep.rows import PrepError, write_rows
from prep.spill import Spill
from prep.template import ChatFormatError, ConversationEncoder, Tally, ensure_chat_format, load_tokenizer
from sftcli import command_line
from shards import format as fmt
from shards.folders import on_disk_full, staged_folder
from shards.lock import folder_lock
from shards.manifest import Manifest, PromptMismatch, SourceEntry, TemplateRecord
from shards.prompts import set_prompt_format, set_template_options, template_options

DISK_FIX = "the previous shard set (if any) is intact; free some space or choose another --out"


def run(config: PrepConfig, command: str | None = None, progress: bool = True) -> Manifest:
    """Build the shard set described by `config`; returns its manifest. One prep writes an --out at a time."""
    config.validate()
    with folder_lock(config.out_dir, "prep", fix="or choose another --out"):
        return _run(config, command, progress)


def _run(config: PrepConfig, command: str | None, progress: bool) -> Manifest:
    bad_counts: collections.Counter = collections.Counter()
    # Before the tokenizer (seconds of imports): a missing file or an offline hub fails at once.
    batches = read_conversations(config.data, split=config.split, skip_bad=config.skip_bad, bad_counts=bad_counts,
                                 batch_size=config.batch_size, prompt_format=config.prompt_format,
                                 deferred=True)
    tokenizer = _tokenizer(config, lambda template: _template_date(config, template))
    encoder = ConversationEncoder(tokenizer, config.loss_on, config.encoder, config.system_message)
    token_dtype = fmt.token_dtype_for(len(tokenizer))
    # a failure anywhere below leaves the previous set as it was, and stops every worker
    with staged_folder(config.out_dir) as staging, workers.Pool(config, lambda: (
            config, workers.share(tokenizer, staging), encoder.text.name, staging, token_dtype)) as pool:
        workers.use(workers.Worker(encoder, staging, token_dtype, config))  # the driver's own batches
        with on_disk_full(config.out_dir, DISK_FIX):
            spill = _tokenize_to_spill(config, batches, encoder, staging, token_dtype, pool, progress)
        need = _check_disk_space(staging, spill, token_dtype, _tokenizer_bytes(tokenizer))
        with on_disk_full(config.out_dir, DISK_FIX, need):
            files, stats = write_rows(config, spill, staging, token_dtype, len(tokenizer), pool, progress)
            spill.remove()
            prompt_format = config.prompt_format if spill.alpaca else "none"
            set_prompt_format(tokenizer, prompt_format)  # generation renders questions as training did
            tokenizer.save_pretrained(str(staging / fmt.TOKENIZER_DIR))
            stats = dataclasses.replace(stats, dropped={**stats.dropped, **bad_counts})
            fmt.write_manifest(staging, _manifest(config, command, tokenizer, encoder, batches, prompt_format,
                                                  token_dtype, staging, files, stats))
    return fmt.read_manifest(config.out_dir)


def _tokenizer(config: PrepConfig, date_for: Callable[[str], str | None]):
    """The tokenizer prep renders with: ChatML added where it has no template, --chat-template, and the
    template options (--chat-template-kwargs, the date `date_for(template)` gives)."""
    tokenizer = ensure_chat_format(load_tokenizer(config.tokenizer))
    if config.chat_template is not None:  # after ChatML's tokens are added to a tokenizer without a template
        tokenizer.chat_template = Path(config.chat_template).read_text(encoding="utf-8")
    set_template_options(tokenizer, config.template_kwargs, date_for(tokenizer.chat_template))
    return tokenizer


def _manifest(config, command, tokenizer, encoder, batches, prompt_format, token_dtype, staging, files,
              stats) -> Manifest:
    prints = batches.fingerprints()
    return Manifest(
        format_version=fmt.FORMAT_VERSION, mode=config.mode, max_length=config.max_length,
        packer=config.packer if config.mode == "concat" else None, loss_on=config.loss_on,
        token_dtype=token_dtype.name, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        end_of_turn_token_id=encoder.end_of_turn_id, prompt_format=prompt_format, encoder=encoder.text.name,
        template=_template_record(config, tokenizer, encoder),
        tokenizer_fingerprint=fmt.tokenizer_fingerprint(staging / fmt.TOKENIZER_DIR),
        source=_data_name(config), source_fingerprint=combined_fingerprint(prints),
        sources=[SourceEntry(**entry) for entry in prints],
        args=asdict(config), command=command or command_line("python -m prep", config), files=files, stats=stats,
    )


def _template_date(config: PrepConfig, template: str) -> str | None:
    """The date a template's strftime_now gives: --template-date, else the one the first build of this
    --out recorded (a rebuild is byte-identical on another day), else today; None if it never asks."""
    if "strftime_now" not in template:
        return None
    if config.template_date is not None:
        return config.template_date
    try:
        recorded = json.loads((config.out_dir / fmt.MANIFEST).read_text())["template"]["date"]
        return datetime.date.fromisoformat(recorded).isoformat()
    except (OSError, ValueError, KeyError, TypeError):
        return datetime.date.today().isoformat()


def _template_record(config: PrepConfig, tokenizer, encoder: ConversationEncoder) -> TemplateRecord:
    kwargs, date = template_options(tokenizer)
    mismatches = [PromptMismatch(roles=",".join(roles), first_turn=turn, conversations=n)
                  for roles, (turn, n) in sorted(encoder.mismatches.items())]
    return TemplateRecord(
        sha256=hashlib.sha256(tokenizer.chat_template.encode()).hexdigest(), kwargs=kwargs, date=date,
        system_message=config.system_message, dropped_messages=dict(sorted(encoder.dropped.items())),
        closed_replies=dict(sorted(encoder.closed.items())),
        prompt_matches_generation=not mismatches, mismatches=mismatches)


def _data_name(config: PrepConfig) -> str:
    return ", ".join(config.data)


# --------------------------------------------------------------------------- pass 1


def _limited(batches, limit: int | None):
    """The batches, cut after `limit` records."""
    read = 0
    for batch in batches:
        if limit is not None:
            batch = batch[: limit - read]
        if not batch:
            return
        read += len(batch)
        yield batch
        if limit is not None and read >= limit:
            return


def _encoded(config, batches, encoder, pool):
    """(batch, Encoded) for every batch, in order: in this process until the encoder's choice is final
    (prep.encoders checks the first texts both ways), then on the pool's workers."""
    inputs = lambda batch: ([pending.record for pending in batch],)  # noqa: E731
    batches = iter(_limited(batches, config.limit))
    for batch in batches:
        yield batch, workers.spill_batch(*inputs(batch))
        if encoder.text.verified:
            break
    following = next(batches, None)
    if following is not None:  # a small run (no batch after the check) starts no worker
        yield from pool.map(workers.spill_batch, itertools.chain([following], batches), inputs)


def _tokenize_to_spill(config, batches, encoder, staging, token_dtype, pool, progress) -> Spill:
    lengths, parts, starts, sources, heads = [], [], [], [], []
    names: dict[str, int] = {}
    alpaca = False
    tally, said = Tally(), set()
    # disable=None: tqdm hides the bar when stderr is not a terminal (a log file, make -j's output sync)
    with tqdm(desc="tokenize", unit=" records", disable=None if progress else True, file=sys.stderr) as bar:
        for batch, out in _encoded(config, batches, encoder, pool):
            for position, reason, detail in out.rejected:  # stop at the first, or count them with --skip-bad
                batches.reject(batch[position].index, batch[position].line, Bad(reason, detail))
            bar.update(len(batch))
            for line in out.notices:  # each worker says what it found; the run says it once
                if line not in said:
                    said.add(line)
                    print(line, file=sys.stderr)
            if out.error is not None:  # name the record whose shape the template cannot take
                raise ChatFormatError(f"{batches.locate(batch[out.error[0]].index)}: {out.error[1]}")
            if out.bad is not None:  # the template on real contents must agree
                raise PrepError(
                    f"{batches.locate(batch[out.bad[0]].index)}: with tokenizer {config.tokenizer!r}, {out.bad[1]}, "
                    "so its loss mask would not match what the template and generation give; use a tokenizer whose "
                    "chat template ends prompts on a token boundary and renders contents as they are"
                )
            tally.add(out.tally)
            if not out.kept:
                continue
            alpaca = alpaca or out.alpaca
            lengths.append(out.lengths)
            parts.append(np.full(len(out.kept), names.setdefault(out.part, len(names)), dtype=np.int32))
            starts.append(out.start + np.cumsum(out.lengths) - out.lengths)
            sources.append(np.array([batch[position].index for position in out.kept], dtype=np.int64))
            heads.append(out.supervised_head)
    batches.finish()
    if not lengths:
        raise DataError(f"{_data_name(config)}: no records to prepare")
    encoder.tally = tally  # the run's, over every process
    cat = np.concatenate
    return Spill(staging, token_dtype, list(names), cat(lengths), cat(parts), cat(starts), cat(sources), cat(heads),
                 alpaca, batches.locate)


def _check_disk_space(staging: Path, spill: Spill, token_dtype: np.dtype, tokenizer_bytes: int) -> int:
    """Refuse before writing the rows when the file system is too small; return the bytes needed."""
    # Tokens + mask + offsets, plus segment columns and Arrow framing (padding mode is the largest);
    # the manifest; the tokenizer.
    need = spill.tokens * (token_dtype.itemsize + 1) + len(spill) * 32 + (1 << 20) + tokenizer_bytes
    free = shutil.disk_usage(staging).free
    if free < need:
        raise PrepError(
            f"{staging.parent}: {free / 2**20:.1f} MiB free, the shard set needs about {need / 2**20:.1f} MiB; "
            "free some space or choose another --out"
        )
    return need


def _tokenizer_bytes(tokenizer) -> int:
    """About what `save_pretrained` writes: tokenizer.json as it is saved (indented), and room for the rest."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    saved = len(backend.to_str(pretty=True).encode()) if backend is not None else 16 << 20
    return saved + (1 << 20)
