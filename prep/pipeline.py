"""The prep pipeline: records -> ids and loss masks -> row layout -> shard set.

Two passes keep memory bounded by one batch of records:
1. stream the records in batches, tokenize them, and spill each sample's ids and
   mask to `samples.ids` / `samples.mask` in the staging folder (only per-sample lengths stay in RAM);
2. split train/val, apply the length policy, lay the rows out with the pure packing
   functions (prep.packing), and write the rows by gathering from the memory-mapped spill.
The staging folder becomes the shard set by one rename (shards.folders.staged_folder).
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from prep import packing
from prep.config import PrepConfig
from prep.readers import DataError
from prep.records import combined_fingerprint, read_conversations
from prep import workers
from prep.template import ChatFormatError, ConversationEncoder, Tally
from sftcli import UserError, command_line
from shards import format as fmt
from shards.folders import on_disk_full, staged_folder
from shards.lock import folder_lock
from shards.manifest import Manifest, PromptMismatch, ShardStats, SourceEntry, SplitStats, TemplateRecord
from shards.prompts import set_prompt_format, template_options
from shards.stats import row_stats, sample_stats

SPILL_IDS, SPILL_MASK = "samples.ids", "samples.mask"
DISK_FIX = "the previous shard set (if any) is intact; free some space or choose another --out"
ROWS_PER_WRITE = 8192


class PrepError(UserError):
    """A prep run that cannot produce a correct shard set; the message says how to fix it."""


def run(config: PrepConfig, command: str | None = None, progress: bool = True) -> Manifest:
    """Build the shard set described by `config`; returns its manifest. One prep writes an --out at a time."""
    config.validate()
    with folder_lock(config.out_dir, "prep", fix="or choose another --out"):
        return _run(config, command, progress)


def _run(config: PrepConfig, command: str | None, progress: bool) -> Manifest:
    bad_counts: collections.Counter = collections.Counter()
    # Before the tokenizer (seconds of imports): a missing file or an offline hub fails at once.
    batches = read_conversations(config.data, split=config.split, skip_bad=config.skip_bad, bad_counts=bad_counts,
                                 batch_size=config.batch_size, prompt_format=config.prompt_format)
    tokenizer = workers.prep_tokenizer(config, lambda template: _template_date(config, template))
    encoder = ConversationEncoder(tokenizer, config.loss_on, config.encoder, config.system_message)
    token_dtype = fmt.token_dtype_for(len(tokenizer))
    with staged_folder(config.out_dir) as staging:  # a failure anywhere below leaves the previous set as it was
        with on_disk_full(config.out_dir, DISK_FIX):
            spill = _tokenize_to_spill(config, batches, encoder, staging, token_dtype, progress)
        need = _check_disk_space(staging, spill, token_dtype, _tokenizer_bytes(tokenizer))
        with on_disk_full(config.out_dir, DISK_FIX, need):
            files, stats = _write_rows(config, spill, staging, token_dtype, len(tokenizer), progress)
            spill.remove(staging)
            prompt_format = config.prompt_format if spill.alpaca else "none"
            set_prompt_format(tokenizer, prompt_format)  # generation renders questions as training did
            tokenizer.save_pretrained(str(staging / fmt.TOKENIZER_DIR))
            stats = dataclasses.replace(stats, dropped={**stats.dropped, **bad_counts})
            fmt.write_manifest(staging, _manifest(config, command, tokenizer, encoder, batches, prompt_format,
                                                  token_dtype, staging, files, stats))
    return fmt.read_manifest(config.out_dir)


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


class _Spill:
    """Per-sample ids and masks of every valid record, memory-mapped from the staging folder.

    A private scratch format (two flat files), so plain numpy memmaps do: nothing of it
    is held in RAM but the per-sample arrays.
    """

    def __init__(self, folder: Path, token_dtype: np.dtype, lengths: np.ndarray, sources: np.ndarray,
                 supervised_head: np.ndarray, alpaca: bool, locate):
        self.ids = np.memmap(folder / SPILL_IDS, dtype=token_dtype, mode="r")
        self.mask = np.memmap(folder / SPILL_MASK, dtype=np.uint8, mode="r")
        self.lengths = lengths
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.sources = sources
        self.supervised_head = supervised_head  # supervised tokens among each sample's first max_length
        self.alpaca = alpaca  # some user turn was rendered from an Alpaca record
        self.locate = locate  # source index -> "FILE: record K", for messages

    def __len__(self) -> int:
        return len(self.lengths)

    def remove(self, folder: Path) -> None:
        del self.ids, self.mask
        (folder / SPILL_IDS).unlink()
        (folder / SPILL_MASK).unlink()


def _supervised_head(mask: np.ndarray, offsets: np.ndarray, limit: int) -> np.ndarray:
    """Supervised tokens among the first `limit` tokens of each sample of a batch."""
    cumsum = np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])
    return cumsum[np.minimum(offsets[1:], offsets[:-1] + limit)] - cumsum[offsets[:-1]]


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


def _tokenize_to_spill(config, batches, encoder, folder, token_dtype, progress) -> _Spill:
    lengths: list[np.ndarray] = []
    sources: list[np.ndarray] = []
    supervised_head: list[np.ndarray] = []
    alpaca = False
    tally, said = Tally(), set()
    date = template_options(encoder.tokenizer)[1]
    # disable=None: tqdm hides the bar when stderr is not a terminal (a log file, make -j's output sync)
    with tqdm(desc="tokenize", unit=" records", disable=None if progress else True, file=sys.stderr) as bar, \
            open(folder / SPILL_IDS, "wb") as ids_file, open(folder / SPILL_MASK, "wb") as mask_file:
        for batch, out in workers.encode_all(config, _limited(batches, config.limit), encoder, token_dtype, date):
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
            alpaca = alpaca or any(c.alpaca for c in batch)
            out.ids.tofile(ids_file)
            out.mask.tofile(mask_file)
            lengths.append(np.diff(out.offsets))
            sources.append(np.fromiter((c.index for c in batch), dtype=np.int64, count=len(batch)))
            supervised_head.append(_supervised_head(out.mask, out.offsets, config.max_length))
            bar.update(len(batch))
    if not lengths:
        raise DataError(f"{_data_name(config)}: no records to prepare")
    encoder.tally = tally  # the run's, over every process
    return _Spill(folder, token_dtype, np.concatenate(lengths), np.concatenate(sources),
                  np.concatenate(supervised_head), alpaca, batches.locate)


def _check_disk_space(staging: Path, spill: _Spill, token_dtype: np.dtype, tokenizer_bytes: int) -> int:
    """Refuse before writing the rows when the file system is too small; return the bytes needed."""
    # Tokens + mask + offsets, plus segment columns and Arrow framing (padding mode is the largest);
    # the manifest; the tokenizer.
    need = int(spill.offsets[-1]) * (token_dtype.itemsize + 1) + len(spill) * 32 + (1 << 20) + tokenizer_bytes
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


# --------------------------------------------------------------------------- pass 2


def _apply_length_policy(config: PrepConfig, spill: _Spill, samples: np.ndarray, policy: str,
                         dropped: collections.Counter) -> tuple[np.ndarray, np.ndarray, int]:
    """Samples kept and their lengths after truncation; counts what was dropped."""
    lengths = spill.lengths[samples]
    over = lengths > config.max_length
    if policy == "error" and over.any():
        first = samples[np.argmax(over)]
        raise PrepError(
            f"{spill.locate(int(spill.sources[first]))} is {spill.lengths[first]} tokens, over --max-length "
            f"{config.max_length}; raise --max-length, or pass --overlong truncate or --overlong drop"
        )
    keep = np.ones(len(samples), dtype=bool)
    if policy == "drop":
        keep &= ~over
        dropped["too_long"] += int(over.sum())
    lengths = np.minimum(lengths, config.max_length)
    no_labels = keep & (spill.supervised_head[samples] == 0)
    dropped["no_supervised_tokens_after_truncation"] += int(no_labels.sum())
    keep &= ~no_labels
    truncated = int((over & keep).sum())
    return samples[keep], lengths[keep], truncated


def _layout(config: PrepConfig, mode: str, lengths: np.ndarray) -> packing.Layout:
    if mode == "padding":
        return packing.pack_padding(lengths, config.max_length)
    if mode == "packed":
        return packing.pack_packed(lengths, config.max_length)
    layout = packing.pack_concat(lengths, config.max_length, packer=config.packer)
    # Packers emit rows grouped by size; shuffle so training does not see all long rows first.
    return packing.shuffle_rows(layout, config.seed)


def _gather(spill: _Spill, samples: np.ndarray, layout: packing.Layout, rows: slice) -> fmt.Rows:
    """Rows [rows] of `layout` as flat token arrays, gathered from the spill."""
    p0, p1 = layout.row_offsets[rows.start], layout.row_offsets[rows.stop]
    sample = samples[layout.sample[p0:p1]]
    start, stop = layout.start[p0:p1], layout.stop[p0:p1]
    piece_lengths = stop - start
    piece_offsets = np.concatenate([[0], np.cumsum(piece_lengths)])
    # index of every token: its piece's first token in the spill plus its place in the piece
    index = np.repeat(spill.offsets[sample] + start - piece_offsets[:-1], piece_lengths) + np.arange(piece_offsets[-1])
    row_piece_offsets = layout.row_offsets[rows.start:rows.stop + 1] - p0
    return fmt.Rows(
        tokens=spill.ids[index], loss_mask=spill.mask[index],
        row_offsets=piece_offsets[row_piece_offsets],
        segment_lengths=piece_lengths, segment_sources=spill.sources[sample],
        segment_offsets=row_piece_offsets,
    )


def _write_split(config, spill, staging, split, mode, samples, lengths, token_dtype, vocab_size, progress):
    layout = _layout(config, mode, lengths)
    writer = fmt.SplitWriter(staging, split, token_dtype, vocab_size)
    row_lengths, row_supervised, segments = [], [], []
    dropped_rows = 0
    for start in tqdm(range(0, layout.num_rows, ROWS_PER_WRITE), desc=f"write {split}", unit=" blocks",
                      disable=None if progress else True, file=sys.stderr):
        rows = _gather(spill, samples, layout, slice(start, min(start + ROWS_PER_WRITE, layout.num_rows)))
        supervised = fmt.per_row_sum(rows.loss_mask, rows.row_offsets)
        if mode == "packed" and (supervised == 0).any():
            # A cut can leave a row of prompt tokens only: it would give a 0/0 loss.
            rows, supervised, n = _drop_unsupervised_rows(rows, supervised)
            dropped_rows += n
        writer.write(rows)
        row_lengths.append(np.diff(rows.row_offsets))
        row_supervised.append(supervised)
        segments.append(np.diff(rows.segment_offsets))
    files = writer.finish()
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64)  # noqa: E731
    stats = row_stats(cat(row_lengths), cat(row_supervised), cat(segments), config.max_length, config.stats_batch_size)
    return files, dict(stats, rows_without_supervised_tokens_dropped=dropped_rows, split=layout.samples_split())


def _drop_unsupervised_rows(rows: fmt.Rows, supervised: np.ndarray) -> tuple[fmt.Rows, np.ndarray, int]:
    keep = supervised > 0
    token_keep = np.repeat(keep, np.diff(rows.row_offsets))
    segment_keep = np.repeat(keep, np.diff(rows.segment_offsets))
    lengths = np.diff(rows.row_offsets)[keep]
    segs = np.diff(rows.segment_offsets)[keep]
    kept = fmt.Rows(
        tokens=rows.tokens[token_keep], loss_mask=rows.loss_mask[token_keep],
        row_offsets=np.concatenate([[0], np.cumsum(lengths)]),
        segment_lengths=rows.segment_lengths[segment_keep], segment_sources=rows.segment_sources[segment_keep],
        segment_offsets=np.concatenate([[0], np.cumsum(segs)]),
    )
    return kept, supervised[keep], int((~keep).sum())


def _write_rows(config, spill, staging, token_dtype, vocab_size, progress) -> tuple[list, ShardStats]:
    n = len(spill)
    n_val = int(round(n * config.val_ratio))
    if config.val_ratio > 0 and n_val == 0 and n > 1:
        n_val = 1
    all_samples = np.arange(n, dtype=np.int64)
    train_samples, val_samples = all_samples[: n - n_val], all_samples[n - n_val:]
    dropped: collections.Counter = collections.Counter()
    if config.mode == "packed":
        kept, lengths, truncated = train_samples, spill.lengths[train_samples], 0
    else:
        kept, lengths, truncated = _apply_length_policy(config, spill, train_samples, config.overlong, dropped)
    if len(kept) == 0:
        raise PrepError(
            f"{_data_name(config)}: no training sample is left after the length policy ({dict(dropped)}); "
            "raise --max-length or use --overlong truncate"
        )
    val_dropped: collections.Counter = collections.Counter()
    # Validation rows are one sample each whatever the mode, so they follow --overlong (packed
    # training rows have no such policy: there they are truncated, as padding rows must be).
    val_policy = "truncate" if config.mode == "packed" else config.overlong
    val_kept, val_lengths, val_truncated = _apply_length_policy(config, spill, val_samples, val_policy, val_dropped)
    train_files, train_stats = _write_split(config, spill, staging, "train", config.mode, kept, lengths,
                                            token_dtype, vocab_size, progress)
    val_files, val_stats = _write_split(config, spill, staging, "val", "padding", val_kept, val_lengths,
                                        token_dtype, vocab_size, progress)
    val = SplitStats(**val_stats, samples=int(len(val_kept)), truncated=val_truncated,
                         dropped={k: v for k, v in val_dropped.items() if v})
    stats = ShardStats(
        **train_stats, samples=int(len(kept)), truncated=truncated, dropped={k: v for k, v in dropped.items() if v},
        records_read=int(n), sample_length=sample_stats(lengths),
        lower_bound_rows=packing.lower_bound_rows(np.minimum(lengths, config.max_length), config.max_length),
        val=val,
    )
    return train_files + val_files, stats
