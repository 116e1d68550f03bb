"""The model: a named random-initialised GPT-2 shape, a local folder, or a hub id; fitted to the shards' tokenizer.

    >>> sorted(NAMED_CONFIGS)
    ['gpt2-124m', 'tiny', 'tiny-untied']
    >>> padded_vocab_size(50259, 64), padded_vocab_size(50259, 1)
    (50304, 50259)
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import (AutoConfig, AutoModelForCausalLM, GPT2Config, PretrainedConfig, PreTrainedModel,
                          PreTrainedTokenizerBase)

from sftcli import UserError

# Random-initialised shapes that need no network. `tiny` is for CPU tests (positions as long as
# GPT-2's, so any max_length up to 1024 fits); `tiny-untied`, the demo's, is `tiny` with an output
# embedding of its own (GPT-2 ties it to the input one): at 64 dimensions one matrix serving both
# learned slower (Makefile, the demo's trials); `gpt2-124m` is GPT-2 small, for throughput runs. All
# use transformers' fused tanh GELU: GPT-2's own `gelu_new` is the same function (within 5e-7 in fp32)
# written as five elementwise ops, each of which keeps its input for backward (four extra activations
# of width 4 x n_embd per layer) and runs ~4x slower on CPU.
_TINY = dict(n_layer=2, n_head=2, n_embd=64, n_positions=1024, activation_function="gelu_pytorch_tanh")
NAMED_CONFIGS = {
    "tiny": _TINY,
    "tiny-untied": {**_TINY, "tie_word_embeddings": False},
    "gpt2-124m": dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, activation_function="gelu_pytorch_tanh"),
}


class ModelError(UserError):
    """A model that cannot be loaded or cannot read these shards."""


class _NoPaddingWarning(logging.Filter):  # installed by load_model, not at import
    # Padding here needs no attention mask: it sits after every real token (causal
    # attention never looks forward) and its labels are ignored; isolation comes from
    # position ids. transformers cannot know that and would warn once per process.
    def filter(self, record: logging.LogRecord) -> bool:
        return "strongly recommend passing in an `attention_mask`" not in record.getMessage()


_NO_PADDING_WARNING = _NoPaddingWarning()


def padded_vocab_size(num_tokens: int, multiple: int) -> int:
    return -(-num_tokens // multiple) * multiple


def _overrides(dropout: float | None) -> dict:
    return {} if dropout is None else dict(resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)


def _cannot_load(name: str, error: Exception) -> ModelError:
    local = " (no such folder)" if not Path(name).exists() and "/" in name else ""
    return ModelError(f"cannot load model {name!r}{local}: {str(error).splitlines()[0]}; use a local folder, a hub id "
                      f"reachable from here, or a named config: {', '.join(NAMED_CONFIGS)}")


def model_config(name: str, dropout: float | None = None) -> PretrainedConfig:
    """The configuration `load_model(name, dropout=dropout)` gives its model, read without the weights
    (the attention plan checks the model's dropout before the model is built)."""
    if name in NAMED_CONFIGS:
        return GPT2Config(**NAMED_CONFIGS[name], **_overrides(dropout))
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise _cannot_load(name, e) from None
    for key, value in config.to_dict().items():  # GPT-2's *_pdrop, Llama's attention_dropout, ...: what it has
        if dropout is not None and key.endswith(("pdrop", "dropout")) and type(value) in (int, float):
            setattr(config, key, dropout)
    return config


def load_model(name: str, tokenizer: PreTrainedTokenizerBase, *, pad_vocab_to: int = 1, seed: int = 0,
               dropout: float | None = None, attention: str = "sdpa",
               end_of_turn_token_id: int | None = None) -> PreTrainedModel:
    """Build or load the model in fp32, size its embeddings to the tokenizer, set its special ids."""
    logging.getLogger("transformers.modeling_utils").addFilter(_NO_PADDING_WARNING)  # a set: adding twice is a no-op
    vocab_size = padded_vocab_size(len(tokenizer), pad_vocab_to)
    if name in NAMED_CONFIGS:
        torch.manual_seed(seed)  # the random init is part of the run, like the data order
        config = GPT2Config(vocab_size=vocab_size, **NAMED_CONFIGS[name], **_overrides(dropout))
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attention, dtype=torch.float32)
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, attn_implementation=attention,
                                                         config=model_config(name, dropout))
        except (OSError, ValueError) as e:
            raise _cannot_load(name, e) from None
        if model.get_input_embeddings().num_embeddings != vocab_size:
            model.resize_token_embeddings(vocab_size)
    set_special_tokens(model, tokenizer, end_of_turn_token_id)
    return model


def empty_model(name: str, tokenizer: PreTrainedTokenizerBase, *, pad_vocab_to: int = 1, seed: int = 0,
                dropout: float | None = None, attention: str = "sdpa",
                end_of_turn_token_id: int | None = None) -> PreTrainedModel:
    """`load_model`'s model without weights, on the meta device (no memory): what every process but rank 0
    builds under --fsdp; its shards are allocated and filled from rank 0's weights after sharding
    (`train.fsdp.spread_weights`). `seed`: unused, as no weights are drawn."""
    config = model_config(name, dropout)
    config.vocab_size = padded_vocab_size(len(tokenizer), pad_vocab_to)  # what load_model resizes to
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation=attention, dtype=torch.float32)
    set_special_tokens(model, tokenizer, end_of_turn_token_id)
    return model


def set_special_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                       end_of_turn_token_id: int | None = None) -> None:
    """pad/eos/bos ids into the model and generation configs, as TRL's `setup_chat_format` does.

    Generation stops at the template's end of turn (the shard manifest's `end_of_turn_token_id`:
    `<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`) as well as at eos, which many templates never emit.
    """
    for config in (model.config, model.generation_config):
        if config is None:
            continue
        config.pad_token_id = tokenizer.pad_token_id
        config.eos_token_id = tokenizer.eos_token_id
        config.bos_token_id = tokenizer.bos_token_id
    if model.generation_config is not None and end_of_turn_token_id not in (None, tokenizer.eos_token_id):
        model.generation_config.eos_token_id = [end_of_turn_token_id, tokenizer.eos_token_id]


def vocab_rows(model: PreTrainedModel) -> int:
    return model.get_input_embeddings().num_embeddings


def max_positions(model: PreTrainedModel) -> int | None:
    return getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
