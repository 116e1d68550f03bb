"""sftpack shards feed Hugging Face `Trainer` and TRL's `SFTTrainer`: same rows, same weights, same first loss."""
from __future__ import annotations

import importlib.util
import pickle

import numpy as np
import pytest
import torch

from shards.torch_dataset import ShardCollator, ShardDataset, hf_dataset
from tests.train_helpers import one_thread, open_shards, read_metrics, tiny_config, write_shard_set  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
ROWS = 4  # the first micro-batch of an unshuffled sftpack run


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """A concat shard set and the first-step loss of sftpack's own loop on its first rows."""
    from train import loop

    folder = tmp_path_factory.mktemp("interop")
    shards = write_shard_set(folder / "concat-64", "concat", max_length=64, train_samples=48, val_samples=7)
    config = tiny_config(shards, folder / "run", max_steps=1, batch_size=ROWS, shuffle=False, dropout=0.0,
                         eval_interval=1)
    loop.train(config)
    return shards, config, read_metrics(config.out, "train")[0]["loss"]


def tiny_model(shards, config):
    """The weights sftpack's loop starts from: the same named config, seed and tokenizer."""
    from transformers import AutoTokenizer

    from train.model import load_model

    tokenizer = AutoTokenizer.from_pretrained(str(open_shards(shards).tokenizer_dir))
    return load_model("tiny", tokenizer, seed=config.seed, dropout=0.0), tokenizer


def first_logged_loss(trainer) -> float:
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry][0]


COMMON = dict(per_device_train_batch_size=ROWS, max_steps=2, logging_steps=1, learning_rate=1e-3, report_to="none",
              save_strategy="no", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)


@pytest.mark.slow
@pytest.mark.parametrize("trainer_kind", ["transformers", "transformers-flattened", "trl"])
def test_first_step_loss_equals_sftpacks_own_loop(ours, tmp_path, trainer_kind):
    shards, config, our_loss = ours
    model, tokenizer = tiny_model(shards, config)
    dataset = ShardDataset(shards, "train")
    if trainer_kind == "trl":
        if importlib.util.find_spec("trl") is None:
            pytest.skip("trl is not installed (pip install -e '.[dev]')")
        from trl import SFTConfig, SFTTrainer

        args = SFTConfig(output_dir=str(tmp_path / "trl"), remove_unused_columns=False,
                         dataset_kwargs={"skip_prepare_dataset": True}, **COMMON)
        trainer = SFTTrainer(model=model, args=args, train_dataset=hf_dataset(shards).select(range(ROWS)),
                             data_collator=dataset.collator(), processing_class=tokenizer)
    else:
        from transformers import Trainer, TrainingArguments

        trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "hf"), **COMMON),
                          train_dataset=torch.utils.data.Subset(dataset, range(ROWS)),
                          data_collator=dataset.collator(flatten=trainer_kind.endswith("flattened")))
    # Trainer shuffles the rows; one batch of all four rows gives the same token-weighted mean in any order.
    assert first_logged_loss(trainer) == pytest.approx(our_loss, rel=1e-5, abs=1e-5)


def test_dataset_rows_are_zero_copy_views_and_the_collator_matches_collate(tmp_path):
    from shards.batch import get_rows_batch

    shards = write_shard_set(tmp_path / "concat-64", "concat", max_length=64, train_samples=24, val_samples=4)
    dataset = ShardDataset(shards, "train")
    split = open_shards(shards).split("train")
    assert len(dataset) == split.num_rows and len(ShardDataset(shards, "val")) == 4
    row = dataset[1]
    assert not row.input_ids.flags.owndata and not row.input_ids.flags.writeable  # a view of the memory map
    np.testing.assert_array_equal(row.input_ids, split.row(1).input_ids)
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    rows = np.array([2, 0, 1])
    batch = get_rows_batch(split, rows, dataset.shard_set.manifest.pad_token_id, isolation=True)
    padded = dataset.collator()([dataset[int(r)] for r in rows])
    for name in ("input_ids", "labels", "position_ids"):
        np.testing.assert_array_equal(padded[name].numpy(), getattr(batch, name))
    flat = dataset.collator(flatten=True)([dataset[int(r)] for r in rows])
    real = batch.input_ids != dataset.shard_set.manifest.pad_token_id  # no pad id among these random tokens
    assert flat["input_ids"].shape == (1, int(real.sum()))
    for name in ("input_ids", "labels", "position_ids"):
        np.testing.assert_array_equal(flat[name].numpy()[0], getattr(batch, name)[real])
    as_dicts = hf_dataset(shards).select([2, 0, 1])  # what TRL's SFTTrainer gets: the same rows
    for name, tensor in ShardCollator(dataset.shard_set.manifest.pad_token_id)(list(as_dicts)).items():
        np.testing.assert_array_equal(tensor.numpy(), getattr(batch, name))
    reopened = pickle.loads(pickle.dumps(dataset))  # a spawned DataLoader worker reopens the folder
    assert len(pickle.dumps(dataset)) < 1000
    np.testing.assert_array_equal(reopened[1].input_ids, row.input_ids)
