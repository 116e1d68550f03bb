"""The prep floor: a whole process doing only what `python -m prep` cannot avoid, so prep >= floor by construction.

    python -m benchmarks.prep_floor DATA        # prints each sample's token count, one JSON list

The same imports as `python -m prep` (its pipeline, which imports everything prep runs), reading the same
records with prep's reader in prep's batches, the same tokenizer and chat-template plan, and encoding
exactly the texts prep encodes (`ConversationEncoder.texts`) with the encoder prep picks: tiktoken's batch
API with prep's threads (all the cores), or the fast tokenizer. Nothing else: not prep's check of its
first texts against the fast tokenizer, no loss masks, no prompt checks, no packing, no files (it writes
nothing; it prints the sample lengths, which the benchmark checks against prep's).
"""
from __future__ import annotations

import collections
import json
import os
import sys


def sample_lengths(data: str) -> list[int]:
    """Each sample's tokens, as prep counts them: its encoded texts plus its template's special and fixed ids."""
    from prep.config import PrepConfig
    from prep.records import read_conversations
    from prep.template import ConversationEncoder, ensure_chat_format, load_tokenizer
    from shards.prompts import set_template_options

    config = PrepConfig(data=str(data))  # prep's defaults, as the benchmark runs it
    batches = read_conversations(config.data, split=config.split, skip_bad=config.skip_bad,
                                 bad_counts=collections.Counter(), batch_size=config.batch_size,
                                 prompt_format=config.prompt_format)
    tokenizer = ensure_chat_format(load_tokenizer(config.tokenizer))
    set_template_options(tokenizer, config.template_kwargs, None)  # ChatML asks for no date
    encoder = ConversationEncoder(tokenizer, config.loss_on, config.encoder, config.system_message)
    fast = encoder.text.tiktoken
    lengths: list[int] = []
    for batch in batches:
        plans, texts, continued = encoder.texts([c.messages for c in batch], [c.tools for c in batch])
        encoded = (fast.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1) if fast is not None
                   else encoder.text.encode(texts, continued))
        text_lengths = iter(map(len, encoded))
        for plan in plans:  # per segment, never per token
            lengths.append(sum(1 if kind == "special" else len(plan.const_ids[i]) if i in plan.const_ids
                               else next(text_lengths) for i, (kind, _, _) in enumerate(plan.segments)))
    return lengths


def main() -> None:
    import click  # noqa: F401 - prep's imports, all of them, as `python -m prep` pays for them
    import prep.pipeline  # noqa: F401
    import shards.stats  # noqa: F401

    print(json.dumps(sample_lengths(sys.argv[1])))


if __name__ == "__main__":
    main()
