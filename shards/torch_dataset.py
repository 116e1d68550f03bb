"""sftpack shards for other trainers: a torch Dataset over a split and a collator for Hugging Face models.

    from shards.torch_dataset import ShardDataset
    train = ShardDataset("shards/concat-256", "train")          # rows are zero-copy views of the memory map
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train, data_collator=train.collator())
    loader = DataLoader(train, batch_size=16, sampler=train.sampler(16, group_by_length=True),
                        collate_fn=train.collator())  # python -m train's batches, epoch by epoch (set_epoch)

The collator is `shards.batch.collate` (the one way sftpack batches rows) returning torch
tensors: `input_ids`, `labels` (-100 where the loss mask is 0 and at each sample's first
token) and `position_ids` restarting at every sample, with no attention mask, so transformers
keeps the samples of a packed row apart, exactly as `python -m train` does. `flatten=True`
gives one padding-free row per batch, the shape of transformers' `DataCollatorWithFlattening`.
Labels are not shifted: Hugging Face models shift them inside their loss. The only module of
`shards` that imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.utils.data

from shards.batch import collate
from shards.format import SPLITS, Row, ShardError, ShardSet
from shards.order import epoch_rows


class ShardDataset(torch.utils.data.Dataset):
    """One split of a shard set, one item per stored row (a `shards.format.Row` of zero-copy views).

    Items are not dicts, so `Trainer`'s unused-column filter passes them to the collator untouched.
    """

    def __init__(self, shards: str | Path | ShardSet, split: str = "train", verify: bool = False):
        if split not in SPLITS:
            raise ShardError(f"split {split!r}: a shard set has the splits {', '.join(SPLITS)}")
        self.shard_set = shards if isinstance(shards, ShardSet) else ShardSet.open(Path(shards), verify=verify)
        self.split_name = split
        self.split = self.shard_set.split(split)

    def __len__(self) -> int:
        return self.split.num_rows

    def __getitem__(self, index: int) -> Row:
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} of a {self.split_name} split of {len(self)} rows")
        return self.split.row(int(index) % len(self))

    def sampler(self, batch_size: int, *, seed: int = 1337, shuffle: bool = True,
                group_by_length: bool = False) -> "ShardSampler":
        """The rows in the order `python -m train` draws them with these options (`shards.order.epoch_rows`)."""
        return ShardSampler(self.split.row_lengths(), batch_size, seed, shuffle, group_by_length)

    def collator(self, flatten: bool = False) -> "ShardCollator":
        return ShardCollator(self.shard_set.manifest.pad_token_id, flatten)

    def __getstate__(self) -> dict:
        # DataLoader workers started by spawn get the folder and reopen the memory map, instead
        # of a pickled copy of every token.
        return {"folder": self.shard_set.folder, "split": self.split_name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"], state["split"])


class ShardSampler(torch.utils.data.Sampler):
    """Row indices of one epoch, `len(lengths) // batch_size` whole batches, in `python -m train`'s order:
    a seeded permutation, grouped by length with `group_by_length` (Hugging Face's LengthGroupedSampler
    idea: mega-batches of 50 batches sorted by length, batches shuffled). Call `set_epoch` before each
    epoch, as with DistributedSampler (Hugging Face's Trainer does); the order is a function of
    (seed, epoch), so a resumed trainer that skips the batches it drew gets the same ones.

    >>> sampler = ShardSampler(np.array([1, 8, 1, 8, 1, 8, 1, 8]), 2, seed=0, shuffle=True, group_by_length=True)
    >>> rows = list(sampler)
    >>> sorted(rows), len(sampler), [len({i % 2 for i in rows[b:b + 2]}) for b in range(0, 8, 2)]
    ([0, 1, 2, 3, 4, 5, 6, 7], 8, [1, 1, 1, 1])
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, shuffle: bool, group_by_length: bool):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.shuffle, self.group_by_length, self.epoch = shuffle, group_by_length, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths) // self.batch_size * self.batch_size

    def __iter__(self):
        rows = epoch_rows(self.lengths, self.batch_size, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle,
                          grouped=self.group_by_length)
        return iter(rows.tolist())


@dataclass(frozen=True)
class ShardCollator:
    """Rows (`Row`s, or dicts with input_ids, loss_mask, segment_lengths) -> Hugging Face model inputs.

    >>> rows = [Row(np.array([5, 6, 7, 8, 9]), np.array([0, 1, 1, 0, 1]), np.array([3, 2]), np.array([0, 1])),
    ...         {"input_ids": [3, 4], "loss_mask": [1, 1], "segment_lengths": [2]}]
    >>> padded = ShardCollator(pad_token_id=0)(rows)
    >>> padded["labels"].tolist(), padded["position_ids"].tolist()
    ([[-100, 6, 7, -100, 9], [-100, 4, -100, -100, -100]], [[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]])
    >>> flat = ShardCollator(pad_token_id=0, flatten=True)(rows)
    >>> flat["input_ids"].tolist(), flat["labels"].tolist(), flat["position_ids"].tolist()
    ([[5, 6, 7, 8, 9, 3, 4]], [[-100, 6, 7, -100, 9, -100, 4]], [[0, 1, 2, 0, 1, 0, 1]])
    """

    pad_token_id: int
    flatten: bool = False  # one padding-free row per batch (DataCollatorWithFlattening's shape)

    def __call__(self, rows: list) -> dict[str, torch.Tensor]:
        ids, masks, segments = zip(*(_fields(row) for row in rows))
        batch = collate(ids, masks, segments, pad_token_id=self.pad_token_id, flatten=self.flatten)
        return {name: torch.from_numpy(getattr(batch, name)) for name in ("input_ids", "labels", "position_ids")}


def _fields(row) -> tuple:
    if isinstance(row, dict):  # a row of a `datasets.Dataset` (see `hf_dataset`)
        return (np.asarray(row["input_ids"]), np.asarray(row["loss_mask"]), np.asarray(row["segment_lengths"]))
    return row.input_ids, row.loss_mask, row.segment_lengths


def hf_dataset(shards: str | Path | ShardSet, split: str = "train"):
    """The split as a `datasets.Dataset` over the same memory-mapped Arrow buffers (no copy, no cache files).

    For trainers that accept only those, such as TRL's `SFTTrainer`; pass `ShardCollator` as
    its data collator, `remove_unused_columns=False` (the collator needs loss_mask and
    segment_lengths) and `dataset_kwargs={"skip_prepare_dataset": True}` (the rows are final).
    """
    import datasets
    import pyarrow as pa

    shard_set = shards if isinstance(shards, ShardSet) else ShardSet.open(Path(shards))
    parts = shard_set.split(split).parts()
    table = pa.Table.from_batches([part["batch"] for part in parts])
    return datasets.Dataset(datasets.table.InMemoryTable(table))
