"""Section 1, prep throughput: the whole `prep` against a bare tokenizer call, and against TRL.

Three ways to turn the same rows into token ids, timed in interleaved rounds so that the
ratios compare runs under the same machine load:

* prep: `prep.pipeline.run` in concat mode (read, template, loss masks, bfd packing, Arrow
  shards with hashes), with `--val-ratio 0` so it packs every row, as TRL does;
* the floor: one `encode_batch_fast` call of the Rust tokenizer over the chat-template-rendered
  texts, ids extracted; no masks, no packing, no files. Rendering is not timed. Because one call
  over all the texts is slower than the same calls over slices (it holds every `Encoding` at
  once), the floor is also timed per 1,000 texts, prep's `--batch-size`: the stricter figure;
* TRL (when installed): `SFTTrainer`'s dataset preparation (`_prepare_dataset`, the code path its
  constructor runs) with the same tokenizer, template, assistant-only loss and bfd packing.

The correctness side (`check_*`) is what `tests/test_benchmarks.py` asserts: all three see the
same rows and the same tokens.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from benchmarks.common import clock, median, remove, versions

# prep's ChatML (prep.template.CHATML_TEMPLATE) with TRL's {% generation %} markers around what
# prep supervises: the assistant's content and its <|im_end|>. It renders the same text.
CHATML_GENERATION_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{'<|im_start|>assistant\n'}}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{'\n'}}"
    "{% else %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tokenizer():
    """The tokenizer prep uses: the vendored GPT-2 BPE with its ChatML set-up."""
    from prep.template import ensure_chat_format, load_tokenizer

    return ensure_chat_format(load_tokenizer("gpt2"))


def conversations(data: Path) -> list[tuple]:
    """Every conversation of a data file, as prep reads it."""
    from prep.records import read_conversations

    return [c.messages for batch in read_conversations(str(data), batch_size=10_000) for c in batch]


def as_messages(conversation: tuple) -> list[dict]:
    return [{"role": role, "content": content} for role, content in conversation]


def render(tok, convs: list[tuple], chat_template: str | None = None) -> list[str]:
    """The chat-template-rendered texts of the conversations (what the floor tokenizes)."""
    return [tok.apply_chat_template(as_messages(c), tokenize=False, chat_template=chat_template) for c in convs]


def floor(tok, texts: list[str]) -> list[list[int]]:
    """The floor: one batched call of the fast tokenizer, ids extracted."""
    return [e.ids for e in tok.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]


def floor_batched(tok, texts: list[str], batch_size: int) -> list[list[int]]:
    """The floor per slice of `batch_size` texts, as prep tokenizes them."""
    backend = tok.backend_tokenizer
    return [e.ids for i in range(0, len(texts), batch_size)
            for e in backend.encode_batch_fast(texts[i:i + batch_size], add_special_tokens=False)]


def sample_lengths(tok, convs: list[tuple]) -> np.ndarray:
    """Each sample's token count as prep computes it (prep.template.ConversationEncoder)."""
    from prep.template import ConversationEncoder

    _, _, offsets = ConversationEncoder(tok).encode(convs)
    return np.diff(offsets)


def run_prep(data: Path, out: Path, max_length: int) -> dict:
    """The whole prep, concat mode, every row in the train split; returns the manifest."""
    from prep.config import PrepConfig
    from prep.pipeline import run

    remove(out)
    return run(PrepConfig(data=str(data), out=str(out), mode="concat", max_length=max_length, val_ratio=0.0),
               progress=False)


class TrlPreparer:
    """SFTTrainer's dataset preparation, for the same rows, template, loss and packing as prep.

    The trainer is built once around a tiny random GPT-2 (built on a few rows, which warms its
    code up); `prepare` then runs the method the constructor runs on a dataset.
    """

    def __init__(self, tok, max_length: int, work: Path, warmup_rows: list[dict]):
        import datasets
        import transformers
        import torch
        from trl import SFTConfig, SFTTrainer

        from train.model import load_model

        datasets.disable_progress_bars()
        transformers.utils.logging.set_verbosity_error()
        logging.getLogger("trl").setLevel(logging.ERROR)
        self.tokenizer = tok.__class__.from_pretrained(str(_saved(tok, work / "tokenizer")))
        self.tokenizer.chat_template = CHATML_GENERATION_TEMPLATE
        with warnings.catch_warnings():  # deprecations inside transformers' TrainingArguments
            warnings.simplefilter("ignore", FutureWarning)
            self.args = SFTConfig(
                output_dir=str(work / "trl-out"), max_length=max_length, packing=True, packing_strategy="bfd",
                assistant_only_loss=True, report_to="none", bf16=False, fp16=False,
                use_cpu=not torch.cuda.is_available(),
            )
        self.trainer = SFTTrainer(model=load_model("tiny", self.tokenizer), args=self.args,
                                  train_dataset=self._dataset(warmup_rows), processing_class=self.tokenizer)

    @staticmethod
    def _dataset(rows: list[dict]):
        from datasets import Dataset

        return Dataset.from_list(rows)

    def prepare(self, rows: list[dict]):
        """rows: [{"messages": [...]}, ...] -> TRL's packed dataset (input_ids, labels, seq_lengths)."""
        return self.trainer._prepare_dataset(self._dataset(rows), self.tokenizer, self.args, self.args.packing,
                                             None, "train")


def _saved(tok, folder: Path) -> Path:
    tok.save_pretrained(str(folder))
    return folder


def trl_counts(dataset) -> dict:
    """Rows, samples, tokens and supervised tokens of TRL's packed dataset."""
    table = dataset.with_format("arrow")[:]
    labels = table.column("labels").combine_chunks().values.to_numpy(zero_copy_only=False)
    return {
        "rows": table.num_rows,
        "samples": len(table.column("seq_lengths").combine_chunks().values),
        "tokens": len(table.column("input_ids").combine_chunks().values),
        "supervised_tokens": int((labels != -100).sum()),
    }


def trl_available() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


def measure(data: Path, warmup_data: Path, work: Path, max_length: int = 256, repeats: int = 3,
            with_trl: bool = True) -> tuple[dict, np.ndarray]:
    """Median seconds of prep, the floor and TRL over `data`, in `repeats` interleaved rounds;
    also each sample's token count as prep computes it (before truncation).

    The warm-up runs each once over `warmup_data` (small): imports, tokenizer caches, page cache.
    """
    from prep.config import PrepConfig

    tok = tokenizer()
    convs = conversations(data)
    texts = render(tok, convs)
    lengths = sample_lengths(tok, convs)
    rows = [{"messages": as_messages(c)} for c in convs]
    warm_convs = conversations(warmup_data)

    run_prep(warmup_data, work / "shards" / "prep-warmup", max_length)
    floor(tok, render(tok, warm_convs))
    trl = None
    if with_trl and trl_available():
        trl = TrlPreparer(tok, max_length, work / "trl", [{"messages": as_messages(c)} for c in warm_convs])
        trl.prepare([{"messages": as_messages(c)} for c in warm_convs])

    out = work / "shards" / f"prep-concat-{max_length}"
    times: dict[str, list[float]] = {"prep": [], "floor": [], "floor_batched": [], "trl": []}
    batch_size = PrepConfig().batch_size
    manifest = trl_dataset = None
    for _ in range(repeats):
        seconds, manifest = clock(run_prep, data, out, max_length)
        times["prep"].append(seconds)
        seconds, floor_ids = clock(floor, tok, texts)
        times["floor"].append(seconds)
        floor_lengths = np.fromiter(map(len, floor_ids), dtype=np.int64, count=len(floor_ids))
        del floor_ids
        times["floor_batched"].append(clock(floor_batched, tok, texts, batch_size)[0])
        if trl is not None:
            seconds, trl_dataset = clock(trl.prepare, rows)
            times["trl"].append(seconds)

    stats = manifest.stats
    result = {
        "data": str(data), "max_length": max_length, "repeats": repeats,
        "samples": len(convs), "sample_tokens": int(lengths.sum()),
        "prep_seconds": median(times["prep"]), "floor_seconds": median(times["floor"]),
        "prep_rows": stats.rows, "prep_tokens": stats.tokens, "prep_supervised_tokens": stats.supervised_tokens,
        "times": times,
        # Each round's ratio compares runs a few seconds apart: the machine's load mostly cancels.
        "prep_over_tokenizer_floor": median(p / f for p, f in zip(times["prep"], times["floor"])),
        "floor_batch_size": batch_size, "floor_batched_seconds": median(times["floor_batched"]),
        "prep_over_batched_floor": median(p / f for p, f in zip(times["prep"], times["floor_batched"])),
        "checks": check_prep_and_floor(texts, floor_lengths, lengths, manifest, max_length, len(convs)),
    }
    result["prep_samples_per_second"] = len(convs) / result["prep_seconds"]
    result["prep_tokens_per_second"] = int(lengths.sum()) / result["prep_seconds"]
    result["floor_tokens_per_second"] = int(lengths.sum()) / result["floor_seconds"]
    if trl is None:
        result["trl"] = {"skipped": "trl is not installed (pip install -e '.[bench]')" if with_trl else "--no-trl"}
    else:
        counts = trl_counts(trl_dataset)
        result["trl"] = {
            "version": versions()["trl"], "seconds": median(times["trl"]), **{f"trl_{k}": v for k, v in counts.items()},
            "trl_over_prep": median(t / p for t, p in zip(times["trl"], times["prep"])),
            "checks": check_trl(counts, manifest, len(convs)),
        }
    return result, lengths


def check_prep_and_floor(texts, floor_lengths, lengths, manifest, max_length, samples) -> dict:
    """The floor and prep saw the same rows and the same tokens (True everywhere, or a figure is void)."""
    stats = manifest.stats
    return {
        "same_rows": len(texts) == samples == stats.records_read == stats.samples,
        # The floor tokenizes whole texts, prep segment by segment: the same tokens either way.
        "same_sample_tokens": bool(np.array_equal(floor_lengths, lengths)),
        "prep_tokens_are_truncated_samples": int(np.minimum(lengths, max_length).sum()) == stats.tokens,
    }


def check_trl(counts: dict, manifest: dict, samples: int) -> dict:
    """TRL packed the same samples into rows holding the same tokens and the same supervised tokens as prep."""
    stats = manifest.stats
    return {
        "same_samples": counts["samples"] == samples == stats.samples,
        "same_tokens": counts["tokens"] == stats.tokens,
        "same_supervised_tokens": counts["supervised_tokens"] == stats.supervised_tokens,
    }

