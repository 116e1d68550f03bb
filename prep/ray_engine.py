"""`--engine ray`: prep's tasks on Ray actors, one tokenizer (and one spill part) an actor.

The driver reads the records and sends batches, as with local workers; the actors append their
batches to their spill parts and, in pass 2, write whole shard files, all in the staging folder next
to --out, which must therefore be on a file system every node mounts. `ray.init()` starts a local
Ray inside this process unless --ray-address (or RAY_ADDRESS) names a cluster to join.
"""
from __future__ import annotations

import itertools
import logging
import os
from typing import Callable, Iterable, Iterator

from prep import workers
from prep.config import PrepConfig


class _Actor:
    def __init__(self, *worker_args):
        workers.start_worker(*worker_args)

    def call(self, fn: Callable, *args):
        return fn(*args)


class RayBackend:
    """`--workers N` actors (0: one a CPU of the cluster); Ray started here is stopped at the end."""

    def __init__(self, config: PrepConfig, worker_args: tuple):
        import ray  # PrepConfig.validate said how to install it where it is missing

        self.ray, self.started_here = ray, not ray.is_initialized()
        if self.started_here:
            local = config.ray_address is None and "RAY_ADDRESS" not in os.environ
            ray.init(address=config.ray_address, num_cpus=(config.workers or workers.usable_cores()) if local else None,
                     include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
        count = config.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        actor = ray.remote(num_cpus=1)(_Actor)
        self.actors = [actor.remote(*worker_args) for _ in range(count)]
        self.next_actor = itertools.cycle(self.actors)

    def _result(self, ref):
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:  # the task's own error, as the local engine raises it
            if isinstance(getattr(e, "cause", None), BaseException):
                raise e.cause from None
            raise

    def map(self, fn: Callable, items: Iterable, args_of: Callable) -> Iterator:
        return workers.ordered(lambda *args: next(self.next_actor).call.remote(fn, *args), self._result, items,
                               args_of, 2 * len(self.actors))

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        if self.started_here:
            self.ray.shutdown()
