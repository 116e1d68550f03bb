"""sftpack's benchmarks (`make bench`; `make bench-gpu` on CUDA): the ratios the issues set goals for, measured
side by side. A module per section (README, Benchmarks, says what each shows and does not); `common`: what
they share (inputs, the timer, the memory probe, the training set-up); `report`: figures, goals, tables."""
