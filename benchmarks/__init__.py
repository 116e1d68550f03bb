"""sftpack's benchmarks: the ratios the issue sets goals for, measured side by side in one run.

    python -m benchmarks              # make bench: about 10 minutes on 2 CPU cores; prints a table,
                                      # writes benchmarks/results.json
    python -m benchmarks --quick      # the same code on small inputs (a smoke run)
    python -m benchmarks --markdown benchmarks/results.json   # the README table
    python -m benchmarks.gpu          # make bench-gpu: gpt2-124m on a CUDA device (see benchmarks/gpu.py)

Sections (each figure the median of several repetitions after a warm-up):

1. prep (`benchmarks.prep_speed`): the whole prep of the sample repeated 52 times against one
   batched fast-tokenizer call over the same texts, and against TRL's SFTTrainer preparation;
2. packing (`benchmarks.bench_packing`): rows of each layout and the bin-packing bound, packing time;
3. loading (`benchmarks.loading`): one collated batch against one training step; resident memory
   of a whole epoch of a 10x larger shard set;
4. training (`benchmarks.training`): supervised tokens/s of concat and packed over padding.
"""
