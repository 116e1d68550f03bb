"""sftpack's train stage: train a causal LM on a shard set written by `python -m prep`.

    python -m train --shards shards/concat-256 --model tiny --out runs/concat
    torchrun --nproc_per_node 2 -m train --shards shards/concat-256 --model gpt2-124m --out runs/concat
    python -m train.generate runs/concat/best "Give three tips for staying healthy."

It never tokenizes, packs or reads raw data, and imports nothing from `prep` (nor
`datasets`): the shard format in `shards/format.py` is all it shares with prep.
"""
