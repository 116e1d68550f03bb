"""Named model shapes, embedding sizes, special ids, load errors."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from tests.train_helpers import IM_END, IM_START, PAD, VOCAB, chatml_tokenizer
from train.model import NAMED_CONFIGS, ModelError, load_model, vocab_rows


def test_gpt2_124m_is_gpt2_small():
    with torch.device("meta"):  # the shape only: no memory, no init time
        model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=50257, **NAMED_CONFIGS["gpt2-124m"]))
    assert sum(p.numel() for p in model.parameters()) == 124_439_808


@pytest.mark.parametrize("pad_vocab_to, rows", [(1, VOCAB), (64, 50304)])
def test_embeddings_fit_the_tokenizer_and_special_ids_are_set(pad_vocab_to, rows):
    model = load_model("tiny", chatml_tokenizer(), pad_vocab_to=pad_vocab_to)
    assert vocab_rows(model) == model.lm_head.out_features == rows
    for config in (model.config, model.generation_config):
        assert (config.pad_token_id, config.eos_token_id, config.bos_token_id) == (PAD, IM_END, IM_START)


def test_a_saved_model_folder_loads_and_is_resized(tmp_path):
    load_model("tiny", chatml_tokenizer(), pad_vocab_to=64).save_pretrained(tmp_path / "m")
    model = load_model(str(tmp_path / "m"), chatml_tokenizer(), dropout=0.0)
    assert vocab_rows(model) == VOCAB and model.config.resid_pdrop == 0.0


def test_dropout_overrides_the_probabilities_a_llama_has(tmp_path):
    """--dropout on a model without GPT-2's *_pdrop keys sets the ones it has (Llama: attention_dropout)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, attention_dropout=0.1)).save_pretrained(tmp_path / "m")
    assert load_model(str(tmp_path / "m"), chatml_tokenizer()).config.attention_dropout == 0.1
    model = load_model(str(tmp_path / "m"), chatml_tokenizer(), dropout=0.0)
    assert model.config.attention_dropout == 0.0 and not hasattr(model.config, "resid_pdrop")


def test_tiny_untied_has_its_own_output_embedding_through_a_checkpoint(tmp_path):
    """The demo's shape: the LM head is a parameter of its own (in `tiny` it is the input embedding),
    and stays so through save_pretrained and loading, as lm-eval and `train.generate` load it."""
    tied, untied = (load_model(name, chatml_tokenizer()) for name in ("tiny", "tiny-untied"))
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert sum(p.numel() for p in untied.parameters()) == sum(p.numel() for p in tied.parameters()) + VOCAB * 64
    with torch.no_grad():
        untied.lm_head.weight.add_(1.0)  # the two matrices now differ
    untied.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"), chatml_tokenizer())
    assert torch.equal(loaded.lm_head.weight, untied.lm_head.weight)
    assert torch.equal(loaded.transformer.wte.weight, untied.transformer.wte.weight)
    assert not loaded.config.tie_word_embeddings


def test_a_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match=r"cannot load model .*no such folder.*tiny, tiny-untied, gpt2-124m"):
        load_model(str(tmp_path / "nowhere"), chatml_tokenizer())
