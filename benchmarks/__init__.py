"""sftpack's benchmarks: the ratios the issues set goals for, measured side by side in one run.

    python -m benchmarks              # make bench (~10 min on 2 cores): a table, benchmarks/results.json
    python -m benchmarks --quick      # the same code on small inputs (a smoke run)
    python -m benchmarks.gpu          # make bench-gpu: gpt2-124m on a CUDA device

Sections: `prep_speed` (prep, its floor and TRL, each a process), `packing` (rows against the
bound, packing time), `loading` (batch time, memory of a 1 GB epoch against a 100 MB one),
`training` (supervised tokens/s of each layout over whole splits). Shared: `common` (inputs,
timer, memory probe, training set-up), `report` (figures, goals, tables).
"""
