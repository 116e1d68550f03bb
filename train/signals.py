"""Graceful stop: SIGTERM, SIGINT (the first Ctrl-C) and SIGUSR1 end the run after the current step.

    with StopSignals() as stop:
        while ...:
            ...  # one optimizer step
            if stop.agreed(votes):  # every process the same answer: stop.votes() ride on the step's all-reduce
                ...  # save last/, write summary.json with "stopped": stop.name, say how to resume
                break

What a scheduler sends (Slurm's time limit and `--signal=USR1@120`, Kubernetes' eviction, a spot
preemption) becomes a saved `last/` and an exit code it can read: `exit_code` below, 0 after SIGUSR1
(requeue me), 128 + the signal's number otherwise (143 for SIGTERM, 130 for SIGINT). A second
Ctrl-C (more than SAME_PRESS_SECONDS after the first stop signal) raises KeyboardInterrupt where the program is: a save under way is abandoned and the
previous `last/` stays (`shards.folders.staged_folder`). Repeated SIGTERM/SIGUSR1 change nothing:
the stop is already under way.

    >>> exit_code("SIGUSR1"), exit_code("SIGTERM"), exit_code("SIGINT")
    (0, 143, 130)
"""
from __future__ import annotations

import signal
import threading
import time

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# One Ctrl-C under torchrun reaches a worker twice: from the terminal, and passed on by torchrun's agent
# a few milliseconds later. A SIGINT this soon after the first stop signal is that same press.
SAME_PRESS_SECONDS = 1.0


def exit_code(name: str) -> int:
    """The documented exit code of a run stopped by the signal `name`."""
    number = signal.Signals[name]
    return 0 if number == signal.SIGUSR1 else 128 + number


class StopSignals:
    """Records the first stop signal; a second SIGINT interrupts at once. Installed only in the main
    thread (Python delivers signals there); elsewhere it stays empty and never stops a run."""

    def __init__(self):
        self.signum: int | None = None
        self.received_at = 0.0  # time.monotonic() of the first stop signal
        self.previous: dict = {}

    @property
    def name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    def votes(self) -> list[int]:
        """One count per stop signal, 1 for the one this process got: summed over the processes on the step's sync."""
        return [int(self.signum == number) for number in STOP_SIGNALS]

    def agreed(self, votes: list[float] | None) -> bool:
        """Whether the run stops after this step. `votes`: `votes()` summed over the processes at the step's
        all-reduce (None with one process: this process's own flag, read now, after the step). A process
        that got no signal itself stops for the one most processes got, so all exit with the same code."""
        if votes is None:
            return self.signum is not None
        if any(votes) and self.signum is None:
            self.signum = STOP_SIGNALS[max(range(len(votes)), key=lambda i: votes[i])]
        return any(votes)

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum, self.received_at = signum, time.monotonic()
        elif signum == signal.SIGINT and time.monotonic() - self.received_at > SAME_PRESS_SECONDS:
            raise KeyboardInterrupt

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self.previous = {number: signal.signal(number, self._handle) for number in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
