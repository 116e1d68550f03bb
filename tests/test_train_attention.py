"""The fast paths give the reference's numbers: varlen and flex against sdpa's dense mask, the
label-only head against full logits, flattened rows against padded ones (fp32, CPU, 1e-5)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from shards.batch import collate
from tests.train_helpers import (PAD, chatml_tokenizer, cli_args, one_thread, pack, synthetic_samples,  # noqa: F401
                                 tiny_config, write_shard_set)
from train.__main__ import main
from train.attention import IMPLEMENTATIONS, document_ids, register_attention, varlen_index
from train.head import LabelLossModel, token_losses
from train.model import load_model, set_special_tokens

pytestmark = pytest.mark.usefixtures("one_thread")


def samples_with_edge_cases() -> list:
    samples = synthetic_samples(14, seed=5, min_length=2, max_length=40)
    ids, mask = samples[3]
    samples.insert(4, (ids[:1], mask[:1]))  # a sample of one token (no label of its own)
    return samples


def gpt2(attention: str):
    register_attention()
    return load_model("tiny", chatml_tokenizer(), seed=0, attention=IMPLEMENTATIONS[attention]).eval()


def llama(attention: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    register_attention()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50259, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM._from_config(config, attn_implementation=IMPLEMENTATIONS[attention]).eval()
    set_special_tokens(model, chatml_tokenizer())
    return model


def batch_of(rows: list, isolation: bool = True, **options):
    return collate([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], PAD, isolation=isolation, **options)


def inputs_of(batch, varlen: bool, flex: bool = False) -> dict:
    inputs = {k: torch.from_numpy(getattr(batch, k)) for k in ("input_ids", "position_ids", "labels")}
    if flex:
        inputs["flex_documents"] = torch.from_numpy(document_ids(batch.sequence_starts, batch.sequence_lengths,
                                                                 *batch.input_ids.shape))
    if varlen:
        index = varlen_index(batch.sequence_starts, batch.sequence_lengths, *batch.input_ids.shape)
        inputs["varlen_index"] = index and index.to(torch.device("cpu"))
    return inputs


def full_head_loss(model, batch) -> torch.Tensor:
    """The reference: the whole model's logits, every position, then the loss."""
    inputs = inputs_of(batch, varlen=False)
    logits = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"], use_cache=False).logits
    return token_losses(logits, inputs["labels"]).sum()


def loss_and_grads(model, loss: torch.Tensor) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_same(a: tuple, b: tuple) -> None:
    assert a[0] == pytest.approx(b[0], rel=1e-6)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("make_model", [gpt2, llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("mode", ["padding", "packed", "concat"])
def test_varlen_with_the_label_head_equals_sdpa_with_full_logits(make_model, mode):
    rows = pack(samples_with_edge_cases(), mode, 72)
    if mode == "concat":
        rows = rows[:1] + [r for r in rows if len(r[2]) == 1][:1] + rows[1:]  # a row of one sample among many
    batch = batch_of(rows)
    index = varlen_index(batch.sequence_starts, batch.sequence_lengths, *batch.input_ids.shape)
    per_row = [len(r[2]) for r in rows]
    if mode == "padding":
        assert index is None  # every row one sample: no regrouping at all
    else:
        assert max(per_row) >= 3 and index.samples == sum(n for n in per_row if n > 1)
        assert len(index.groups) > 1  # samples of different lengths: several passes
        assert (batch.input_ids == PAD).any()  # a padded row
    if mode == "concat":
        assert 1 in per_row and 2 in per_row and len(index.single_rows) >= 1  # rows of one, two and many
    reference = make_model("sdpa")
    varlen = make_model("varlen")
    varlen.load_state_dict(reference.state_dict())
    expected = loss_and_grads(reference, full_head_loss(reference, batch))
    got = loss_and_grads(varlen, LabelLossModel(varlen)(**inputs_of(batch, varlen=True)))
    assert_same(got, expected)


def test_the_label_head_equals_the_full_head_under_sdpa():
    model = gpt2("sdpa")
    batch = batch_of(pack(samples_with_edge_cases(), "concat", 72))
    expected = loss_and_grads(model, full_head_loss(model, batch))
    assert_same(loss_and_grads(model, LabelLossModel(model)(**inputs_of(batch, varlen=False))), expected)
    with torch.no_grad():  # validation: the loss alone, no gradients computed
        assert LabelLossModel(model)(**inputs_of(batch, varlen=False)).item() == pytest.approx(expected[0], rel=1e-6)


def test_the_label_head_works_in_chunks(monkeypatch):
    from train import head

    model = gpt2("sdpa")
    batch = batch_of(pack(samples_with_edge_cases(), "concat", 72))
    expected = loss_and_grads(model, full_head_loss(model, batch))
    monkeypatch.setitem(head.CHUNK_POSITIONS, "cpu", 7)
    assert batch.supervised_tokens > 3 * 7
    assert_same(loss_and_grads(model, LabelLossModel(model)(**inputs_of(batch, varlen=False))), expected)


@pytest.mark.parametrize("attention", ["sdpa", "varlen"])
@pytest.mark.parametrize("isolation", [True, False])
def test_flattened_rows_give_the_loss_of_padded_rows(attention, isolation):
    model = gpt2(attention)
    rows = pack(samples_with_edge_cases(), "concat", 72)
    padded, flat = batch_of(rows, isolation), batch_of(rows, isolation, flatten=True, pad_to_multiple_of=64)
    assert flat.input_ids.shape[0] == 1 and flat.tokens == padded.tokens
    assert flat.supervised_tokens == padded.supervised_tokens
    varlen = attention == "varlen"
    expected = loss_and_grads(model, LabelLossModel(model)(**inputs_of(padded, varlen)))
    assert_same(loss_and_grads(model, LabelLossModel(model)(**inputs_of(flat, varlen))), expected)


def test_flex_equals_sdpa_in_the_forward_pass_on_cpu():
    rows = pack(samples_with_edge_cases(), "concat", 64)
    batch = batch_of(rows)
    reference, flex = gpt2("sdpa"), gpt2("flex")
    flex.load_state_dict(reference.state_dict())
    with torch.no_grad():
        expected = LabelLossModel(reference)(**inputs_of(batch, varlen=False))
        got = LabelLossModel(flex)(**inputs_of(batch, varlen=False, flex=True))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_flash_on_torchs_varlen_kernel_gets_each_sample_as_one_sequence(monkeypatch):
    """torch's varlen kernel runs on CUDA only: here a per-span causal SDPA stands in for it, so what
    is checked is what we hand it (flat tokens, cumulative lengths of samples and padding runs)."""
    import torch.nn.attention.varlen as varlen_module

    from train.attention import TORCH_FLASH, cumulative_lengths

    def reference_kernel(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        assert window_size == (-1, 0) and torch.equal(cu_q, cu_k) and max_q == int(cu_q.diff().max())
        spans = [(int(a), int(b)) for a, b in zip(cu_q[:-1], cu_q[1:])]
        return torch.cat([torch.nn.functional.scaled_dot_product_attention(
            *(x[a:b].transpose(0, 1) for x in (q, k, v)), is_causal=True, scale=scale).transpose(0, 1)
            for a, b in spans])

    monkeypatch.setattr(varlen_module, "varlen_attn", reference_kernel)
    register_attention()
    batch = batch_of(pack(samples_with_edge_cases(), "concat", 72))
    reference = gpt2("sdpa")
    flash = load_model("tiny", chatml_tokenizer(), seed=0, attention=TORCH_FLASH).eval()
    flash.load_state_dict(reference.state_dict())
    bounds, longest = cumulative_lengths(document_ids(batch.sequence_starts, batch.sequence_lengths,
                                                      *batch.input_ids.shape))
    inputs = {**inputs_of(batch, varlen=False), "flash_cu_seqlens": torch.from_numpy(bounds),
              "flash_max_length": longest}
    expected = loss_and_grads(reference, full_head_loss(reference, batch))
    assert_same(loss_and_grads(flash, LabelLossModel(flash)(**inputs)), expected)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shard_set(tmp_path_factory.mktemp("shards") / "concat-64", "concat", max_length=64,
                           train_samples=24, val_samples=4)


@pytest.mark.parametrize("attention, message", [
    ("flex", "error: --attention flex: torch 2.13's flex_attention has no backward on CPU, so it cannot train here"),
    ("flash", "error: --attention flash: needs a CUDA device and the flash-attn package (pip install flash-attn) "
              "or a torch with torch.nn.attention.varlen"),
])
def test_paths_that_cannot_train_on_cpu_say_so_in_one_line(shards, tmp_path, attention, message):
    result = CliRunner().invoke(main, cli_args(tiny_config(shards, tmp_path / "run", attention=attention)))
    assert result.exit_code == 1 and result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_length_groups_is_the_least_cost_cut():
    import itertools

    from train.attention import GROUPS, length_groups

    def cost(lengths, cuts):
        return sum(len(part) * int(part[-1]) ** 2 for part in np.split(lengths, cuts))

    rng = np.random.default_rng(0)
    for _ in range(40):
        lengths = np.sort(rng.integers(1, 300, size=int(rng.integers(1, 9))))
        every = [list(c) for k in range(GROUPS) for c in itertools.combinations(range(1, len(lengths)), k)]
        cuts = length_groups(lengths)
        assert len(cuts) < GROUPS and cuts == sorted(cuts)
        assert cost(lengths, cuts) == min(cost(lengths, c) for c in every)


def test_varlen_index_regroups_only_rows_of_several_samples():
    # rows [3 | 2 | pad] and [4 | pad pad], width 6: row 1 keeps its own causal pass over the row
    index = varlen_index(np.array([0, 3, 6]), np.array([3, 2, 4]), rows=2, width=6)
    assert index.single_rows.tolist() == [[6, 7, 8, 9, 10, 11]] and index.samples == 2
    assert [g.tolist() for g in index.groups] == [[[3, 4]], [[0, 1, 2]]]  # shortest first, one pass each
    assert index.squares == 6**2 + 2**2 + 3**2
    # row 0's tokens read the regrouped slots (after the 6 of the single row), its padding the zero slot (11)
    assert index.token_slot.tolist() == [8, 9, 10, 6, 7, 11, 0, 1, 2, 3, 4, 5]
    assert varlen_index(np.array([0, 5]), np.array([3, 4]), rows=2, width=5) is None
